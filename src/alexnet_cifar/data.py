"""CIFAR-10 from its official files: the binary or the python version, checked before it is trusted.

``load_cifar10`` looks in ``data_dir``, else ``$CIFAR10_DIR``, else a per-user cache directory;
it accepts the folder that holds ``cifar-10-batches-bin`` / ``cifar-10-batches-py`` or that folder
itself. When nothing is found it downloads the official binary archive into that place, checks
its md5 and extracts it atomically. It only ever reads a folder that already holds the data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import DataError, DataNotFoundError, SettingError, param
from .safe_pickle import unpickle

__all__ = [
    "CIFAR10",
    "CLASSES",
    "IMAGE_SHAPE",
    "TEST_IMAGES",
    "TRAIN_IMAGES",
    "DataError",
    "DataNotFoundError",
    "balanced_subset",
    "default_cache_dir",
    "download_cifar10",
    "find_cifar10",
    "load_cifar10",
]

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
#: CIFAR-10's sizes: its images (height, width, RGB) and how many each official split holds.
IMAGE_SHAPE = (32, 32, 3)
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000
PIXELS = 32 * 32 * 3  # the bytes of one image, channel-major in the files
RECORD_BYTES = 1 + PIXELS  # the binary files' records: a label byte, then the image
OFFICIAL_RECORDS = 10_000  # per official file: five training batches and the test batch

# Published md5 of every official file (binary release; python release as torchvision lists it).
BINARY_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
PYTHON_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"

HOW_TO_GET = (
    "Get the official binary version (cifar-10-binary.tar.gz, from the CIFAR-10 page of the "
    "University of Toronto) and extract it so that <DIR>/cifar-10-batches-bin exists, then pass "
    f"DIR as {param('data_dir')} or set CIFAR10_DIR=DIR. The python version (cifar-10-batches-py) "
    "works too."
)


@dataclass
class CIFAR10:
    """The whole data set in memory: images uint8 (N, 32, 32, 3) RGB, labels int64 in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    path: Path | None = None
    format: str = "binary"
    # Training images held out for validation (``subset(..., val_split=N)``); None: no split.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def subset(self, limit_train, limit_test, seed: int, val_split=None) -> CIFAR10:
        """A class-balanced subset of each split, fixed by ``seed`` (None keeps a split whole).
        With ``val_split``, that many training images are held out first (:meth:`hold_out`)."""
        out = self if val_split is None else self.hold_out(val_split, seed)
        return out._limit(limit_train, limit_test, seed)

    def hold_out(self, n: int, seed: int) -> CIFAR10:
        """``n`` class-balanced training images, fixed by ``seed``, moved into the validation
        set; the training set keeps the others."""
        total = len(self.y_train)
        if not 1 <= n < total:
            raise SettingError(
                f"{param('val_split')} must lie between 1 and {total - 1} (the training images "
                f"less at least one to train on), not {n}"
            )
        held = balanced_subset(self.y_train, n, seed, stream=3, name="val_split")
        rest = np.setdiff1d(np.arange(total), held, assume_unique=True)
        return replace(
            self,
            x_train=self.x_train[rest],
            y_train=self.y_train[rest],
            x_val=self.x_train[held],
            y_val=self.y_train[held],
        )

    def _limit(self, limit_train: int | None, limit_test: int | None, seed: int) -> CIFAR10:
        for name, limit, n, what in (
            ("limit_train", limit_train, len(self.y_train), "training"),
            ("limit_test", limit_test, len(self.y_test), "test"),
        ):
            if limit is not None and not 1 <= limit <= n:
                raise SettingError(
                    f"{param(name)} must lie between 1 and {n:,} (the {what} set's size), "
                    f"not {limit:,}"
                )
        out = self
        if limit_train is not None and limit_train < len(self.y_train):
            i = balanced_subset(self.y_train, limit_train, seed, stream=1, name="limit_train")
            out = replace(out, x_train=self.x_train[i], y_train=self.y_train[i])
        if limit_test is not None and limit_test < len(self.y_test):
            i = balanced_subset(self.y_test, limit_test, seed, stream=2, name="limit_test")
            out = replace(out, x_test=self.x_test[i], y_test=self.y_test[i])
        return out

    def check_classes(self, num_classes: int, what: str = "the model") -> None:
        """Refuse a model whose class count is not this data set's, naming both."""
        if num_classes != len(self.classes):
            raise SettingError(
                f"{what} predicts {num_classes} classes but the data has {len(self.classes)} "
                f"({', '.join(self.classes)}); it can only be evaluated on data with "
                f"{num_classes} classes"
            )


def balanced_subset(
    labels: np.ndarray, n: int, seed: int, stream: int = 0, name: str = "n"
) -> np.ndarray:
    """Sorted indices of ``n`` samples, as evenly spread over the classes as ``n`` allows.

    Each class gives ``n // k`` samples (the first ``n % k`` classes one more), drawn at random
    by a generator fixed by (seed, stream). ``name``: the setting ``n`` came from, named in a
    SettingError when it cannot be met.
    """
    classes = np.unique(labels)
    k = len(classes)
    if not 1 <= n <= len(labels):
        raise SettingError(f"{param(name)} must lie between 1 and {len(labels)}, not {n}")
    rng = np.random.default_rng([seed, stream])
    picked = []
    for rank, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        want = n // k + (1 if rank < n % k else 0)
        if want > len(members):
            raise SettingError(
                f"class {c} has only {len(members)} samples; cannot take {want} for a balanced "
                f"subset of {param(name)} {n}"
            )
        picked.append(rng.choice(members, size=want, replace=False))
    return np.sort(np.concatenate(picked))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alexnet-cifar"


def _root_candidates(data_dir: str | os.PathLike | None) -> tuple[Path, str]:
    """The folder to use, and where its choice came from (for messages)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), param("data_dir")
    env = os.environ.get("CIFAR10_DIR")
    if env:
        return Path(env).expanduser(), "CIFAR10_DIR"
    return default_cache_dir(), "the cache directory"


def _places(root: Path) -> list[tuple[Path, str]]:
    """Where a root may hold the data: (batches folder, format), in the order looked at."""
    return [
        (root / BINARY_DIR, "binary"),
        (root / PYTHON_DIR, "python"),
        (root, "binary"),
        (root, "python"),
    ]


def _holds(folder: Path, fmt: str) -> bool:
    first, test = (
        ("data_batch_1.bin", "test_batch.bin")
        if fmt == "binary"
        else (
            "data_batch_1",
            "test_batch",
        )
    )
    return (folder / first).exists() or (folder / test).exists()


def find_cifar10(data_dir: str | os.PathLike | None = None) -> tuple[Path, str] | None:
    """(batches folder, "binary" | "python") found for ``data_dir``, or None."""
    root, _ = _root_candidates(data_dir)
    for folder, fmt in _places(root):
        if _holds(folder, fmt):
            return folder, fmt
    return None


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    progress: bool = True,
) -> CIFAR10:
    """Load CIFAR-10 (train 50,000 and test 10,000 images for the official files).

    ``verify`` checks every official file against its published md5 before reading it. Any file
    that is missing, truncated, of the wrong size, not a CIFAR-10 pickle, or holding a label
    outside 0..9 raises :class:`DataError` naming the file. Pickles are read by an unpickler
    that admits only numpy array reconstruction and plain containers: nothing in them runs.

    A folder given (``data_dir`` or ``$CIFAR10_DIR``) must exist: a mistyped one is an error,
    never created. Only the per-user cache is created, to download the data into.
    """
    found = find_cifar10(data_dir)
    if found is not None:
        folder, fmt = found
        return _load_binary(folder, verify) if fmt == "binary" else _load_python(folder, verify)
    root, origin = _root_candidates(data_dir)
    looked = ", ".join(dict.fromkeys(str(folder) for folder, _ in _places(root)))
    if origin != "the cache directory" and not root.is_dir():
        raise DataNotFoundError(
            f"the data folder {root} (from {origin}) does not exist. Looked for CIFAR-10 in: "
            f"{looked}. {HOW_TO_GET}"
        )
    if not download:
        raise DataNotFoundError(
            f"no CIFAR-10 in {root} (from {origin}); looked in: {looked}. {HOW_TO_GET}"
        )
    download_cifar10(root, progress=progress, looked=looked)
    found = find_cifar10(root)
    assert found is not None
    folder, fmt = found
    return _load_binary(folder, verify) if fmt == "binary" else _load_python(folder, verify)


# --------------------------------------------------------------------------- reading files


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_checked(path: Path, expected_md5: str | None, verify: bool) -> bytes:
    if not path.is_file():
        raise DataError(
            f"missing file {path}: a CIFAR-10 folder holds data_batch_1..5 and test_batch. "
            + HOW_TO_GET
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if verify and expected_md5 is not None:
        digest = _md5(data)
        if digest != expected_md5:
            raise DataError(
                f"{path} is not the official file: md5 {digest}, published {expected_md5}. "
                "The file is damaged or was changed; download it again "
                f"(or pass {param('verify', False)} to read it anyway)."
            )
    return data


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))[0])
        raise DataError(
            f"{path}: record {bad} has label {int(labels[bad])}, outside 0..9; "
            "this is not a CIFAR-10 file or it is damaged"
        )
    return labels.astype(np.int64)


def _binary_records(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    if path.is_file():
        size = path.stat().st_size
        expected = OFFICIAL_RECORDS * RECORD_BYTES
        if size == 0 or size % RECORD_BYTES:
            raise DataError(
                f"{path} is truncated or of the wrong size: {size} bytes is not a whole number "
                f"of {RECORD_BYTES}-byte records (the official file has {expected} bytes)"
            )
        if verify and size != expected:
            raise DataError(f"{path} has {size} bytes; the official file has {expected}")
    data = _read_checked(path, BINARY_MD5.get(path.name), verify)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = _check_labels(records[:, 0], path)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC
    return np.ascontiguousarray(images), labels


def _load_binary(folder: Path, verify: bool) -> CIFAR10:
    train = [_binary_records(folder / f"data_batch_{i}.bin", verify) for i in range(1, 6)]
    _check_same_counts(train, [folder / f"data_batch_{i}.bin" for i in range(1, 6)])
    x_test, y_test = _binary_records(folder / "test_batch.bin", verify)
    classes = list(CLASSES)
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        names = [n.strip() for n in meta.read_text(errors="replace").splitlines() if n.strip()]
        if len(names) != len(CLASSES):
            raise DataError(f"{meta} should list 10 class names, one a line; it lists {len(names)}")
        classes = names
    return _assemble(train, x_test, y_test, classes, folder, "binary")


def _assemble(train, x_test, y_test, classes, folder: Path, fmt: str) -> CIFAR10:
    """The five training batches joined, with the test batch: the loaded data set."""
    return CIFAR10(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        x_test,
        y_test,
        classes,
        folder,
        fmt,
    )


def _check_same_counts(batches: list[tuple[np.ndarray, np.ndarray]], paths: list[Path]) -> None:
    counts = [len(y) for _, y in batches]
    common = max(set(counts), key=counts.count)
    for n, path in zip(counts, paths):
        if n != common:
            raise DataError(
                f"{path} holds {n} records but the other training batches hold {common}: "
                "the file was truncated or resized"
            )


def _python_records(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle(_read_checked(path, PYTHON_MD5.get(path.name), verify), path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks 'data' or 'labels': not a CIFAR-10 batch")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: 'data' should be an N x {PIXELS} array, found {shape}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' should be uint8, found {data.dtype}")
    try:
        raw = np.asarray(batch["labels"]).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'labels' is not a list of integers") from e
    if raw.size and raw.dtype.kind not in "iu":  # floats would be truncated, strings misread
        raise DataError(
            f"{path}: 'labels' should hold whole numbers 0..9, not {raw.dtype} values "
            f"(the first is {raw[0]!r})"
        )
    labels = raw.astype(np.int64)
    if len(labels) != len(data):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels")
    labels = _check_labels(labels, path)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _load_python(folder: Path, verify: bool) -> CIFAR10:
    paths = [folder / f"data_batch_{i}" for i in range(1, 6)]
    train = [_python_records(p, verify) for p in paths]
    _check_same_counts(train, paths)
    x_test, y_test = _python_records(folder / "test_batch", verify)
    classes = list(CLASSES)
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        meta = unpickle(_read_checked(meta_path, PYTHON_MD5["batches.meta"], verify), meta_path)
        names = meta.get("label_names")
        if not isinstance(names, list) or len(names) != len(CLASSES):
            raise DataError(f"{meta_path}: 'label_names' should list 10 class names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return _assemble(train, x_test, y_test, classes, folder, "python")


# --------------------------------------------------------------------------- download


def download_cifar10(
    root: str | os.PathLike,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    looked: str | None = None,
) -> Path:
    """Download the official binary archive into ``root``, check its md5, extract it atomically.

    The archive goes to a temporary file and is unpacked into a temporary folder beside the
    destination; only a complete, checked ``cifar-10-batches-bin`` is renamed into place.
    """
    # A mirror can stand in for the official address (the md5 check still applies).
    url = url or os.environ.get("ALEXNET_CIFAR_DATA_URL") or ARCHIVE_URL
    md5 = md5 or ARCHIVE_MD5
    root = Path(root)
    dest = root / BINARY_DIR
    where = f"looked in: {looked}" if looked else f"looked in {root}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".cifar10-download-", dir=root))
    except OSError as e:
        raise DataNotFoundError(
            f"no CIFAR-10 ({where}), and cannot download into {root} ({e.strerror or e}). "
            + HOW_TO_GET
        ) from e
    try:
        archive = workdir / "cifar-10-binary.tar.gz"
        _fetch(url, archive, md5, progress, where)
        with tarfile.open(archive, "r:gz") as tar:
            _safe_extract(tar, workdir / "x")
        extracted = workdir / "x" / BINARY_DIR
        if not (extracted / "data_batch_1.bin").is_file():
            raise DataError(f"the archive from {url} holds no {BINARY_DIR}/data_batch_1.bin")
        try:
            os.rename(extracted, dest)
        except OSError:
            if not (dest / "data_batch_1.bin").is_file():  # not merely a concurrent download
                raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dest


def _fetch(url: str, out: Path, md5: str, progress: bool, where: str = "") -> None:
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataNotFoundError(
            f"CIFAR-10 is not here ({where}) and the download from {url} failed ({reason}). "
            + HOW_TO_GET
        ) from e
    digest = hashlib.md5(usedforsecurity=False)
    total = int(response.headers.get("Content-Length") or 0) or None
    from tqdm.auto import tqdm

    with (
        response,
        open(out, "wb") as f,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="downloading CIFAR-10",
            disable=not progress,
        ) as bar,
    ):
        while chunk := response.read(1 << 20):
            f.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != md5:
        raise DataError(
            f"the download from {url} is damaged: md5 {digest.hexdigest()}, published {md5}; "
            "try again"
        )


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    dest.mkdir()
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():  # pragma: no cover - Python without extraction filters
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or dest.resolve() not in target.parents:
            raise DataError(f"refused archive member {member.name!r}")
    tar.extractall(dest)  # pragma: no cover
