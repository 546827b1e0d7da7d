import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from alexnet_cifar import data as data_mod
from alexnet_cifar import load_cifar10
from alexnet_cifar.cli.flags import flag_name
from alexnet_cifar.data import (
    BINARY_MD5,
    CLASSES,
    DataError,
    DataNotFoundError,
    balanced_subset,
)
from alexnet_cifar.errors import SettingError

from .helpers import write_binary_folder

README_MD5 = {  # the published sums, as the data folder's README lists them
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


# ---------------------------------------------------------------------- the real files


@pytest.mark.real_data
def test_real_files_shapes_and_md5(cifar10, cifar10_dir):
    d = cifar10
    assert d.x_train.shape == (50000, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (10000, 32, 32, 3) and d.x_test.dtype == np.uint8
    assert d.y_train.shape == (50000,) and d.y_train.dtype == np.int64
    assert d.y_test.shape == (10000,) and d.y_test.dtype == np.int64
    assert list(d.classes) == list(CLASSES)
    assert BINARY_MD5 == README_MD5
    folder = cifar10_dir / "cifar-10-batches-bin"
    for name, md5 in README_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == md5


@pytest.mark.real_data
def test_real_files_class_balance_and_statistics(cifar10):
    d = cifar10
    assert np.bincount(d.y_train).tolist() == [5000] * 10
    assert np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    # exact per-channel mean and std from the histogram of each channel's 256 values
    v = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(3):
        h = np.bincount(d.x_train[..., c].ravel(), minlength=256).astype(np.float64)
        m = (h * v).sum() / h.sum()
        mean.append(m)
        std.append(np.sqrt((h * (v - m) ** 2).sum() / h.sum()))
    np.testing.assert_allclose(mean, [125.307, 122.950, 113.865], atol=5e-4)
    np.testing.assert_allclose(std, [62.993, 62.089, 66.705], atol=5e-4)


@pytest.mark.real_data
def test_real_files_found_through_env_and_batches_folder(cifar10_dir, cifar10, monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(cifar10_dir))
    a = load_cifar10(verify=False)
    b = load_cifar10(cifar10_dir / "cifar-10-batches-bin", verify=False)
    for d in (a, b):
        assert np.array_equal(d.x_test, cifar10.x_test) and np.array_equal(
            d.y_train, cifar10.y_train
        )


@pytest.mark.real_data
def test_real_md5_mismatch_names_the_file(cifar10_dir, tmp_path):
    src = cifar10_dir / "cifar-10-batches-bin"
    dst = tmp_path / "cifar-10-batches-bin"
    dst.mkdir()
    for name in README_MD5:
        if name != "data_batch_3.bin":
            (dst / name).symlink_to(src / name)
    raw = bytearray((src / "data_batch_3.bin").read_bytes())
    raw[123_456] ^= 0xFF  # one pixel changed: same size, wrong md5
    (dst / "data_batch_3.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data_batch_3\.bin.*md5"):
        load_cifar10(tmp_path)
    # without verification the file reads, and the changed byte shows
    d = load_cifar10(tmp_path, verify=False)
    assert d.x_train.shape == (50000, 32, 32, 3)


@pytest.mark.real_data
def test_real_official_size_enforced_when_verifying(cifar10_dir, tmp_path):
    src = cifar10_dir / "cifar-10-batches-bin"
    dst = tmp_path / "cifar-10-batches-bin"
    dst.mkdir()
    for name in README_MD5:
        if name != "test_batch.bin":
            (dst / name).symlink_to(src / name)
    (dst / "test_batch.bin").write_bytes((src / "test_batch.bin").read_bytes()[: 3073 * 9999])
    with pytest.raises(DataError, match=r"test_batch\.bin has 30726927 bytes"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------------- synthetic folders


def test_binary_layout_is_decoded_to_nhwc(tmp_path):
    held = write_binary_folder(tmp_path, n_per_file=7)
    d = load_cifar10(tmp_path, verify=False)
    labels, pixels = held["test_batch.bin"]
    assert np.array_equal(d.y_test, labels)
    # record layout: 1024 red, then 1024 green, then 1024 blue, each 32x32 row-major
    for n, i, j, c in [(0, 0, 0, 0), (3, 5, 17, 1), (6, 31, 31, 2), (2, 0, 31, 2)]:
        assert d.x_test[n, i, j, c] == pixels[n, c * 1024 + i * 32 + j]
    assert d.x_train.shape == (35, 32, 32, 3) and d.format == "binary"
    assert np.array_equal(d.y_train[:7], held["data_batch_1.bin"][0])


def _write_python_folder(root: Path, held: dict, protocol: int, bytes_keys: bool, meta=True):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    for name, (labels, pixels) in held.items():
        obj = {
            k("batch_label"): k("synthetic"),
            k("labels"): [int(v) for v in labels],
            k("data"): pixels,
            k("filenames"): [k(f"img{i}.png") for i in range(len(labels))],
        }
        (folder / name.removesuffix(".bin")).write_bytes(pickle.dumps(obj, protocol=protocol))
    if meta:
        m = {k("label_names"): [k(c) for c in CLASSES], k("num_cases_per_batch"): 7}
        (folder / "batches.meta").write_bytes(pickle.dumps(m, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol, bytes_keys", [(2, True), (2, False), (4, False), (5, True)])
def test_python_version_equals_binary_version(tmp_path, protocol, bytes_keys):
    held = write_binary_folder(tmp_path / "bin", n_per_file=7)
    _write_python_folder(tmp_path / "py", held, protocol, bytes_keys)
    a = load_cifar10(tmp_path / "bin", verify=False)
    b = load_cifar10(tmp_path / "py", verify=False)
    assert b.format == "python"
    for f in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(b, f), getattr(a, f)
        assert got.dtype == want.dtype and np.array_equal(got, want), f
    assert b.classes == list(CLASSES)


def test_binary_preferred_when_both_present(tmp_path):
    held = write_binary_folder(tmp_path, n_per_file=3)
    _write_python_folder(tmp_path, held, 2, True)
    assert load_cifar10(tmp_path, verify=False).format == "binary"


def test_truncated_binary_file_is_named(tmp_path):
    write_binary_folder(tmp_path, n_per_file=5)
    f = tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_4\.bin is truncated"):
        load_cifar10(tmp_path, verify=False)


def test_resized_batch_is_named(tmp_path):
    write_binary_folder(tmp_path, n_per_file=5)
    f = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[: 3073 * 3])
    with pytest.raises(DataError, match=r"data_batch_2\.bin holds 3 records"):
        load_cifar10(tmp_path, verify=False)


def test_label_out_of_range_is_named(tmp_path):
    write_binary_folder(tmp_path, n_per_file=5)
    f = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(f.read_bytes())
    raw[3073 * 2] = 12
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch\.bin: record 2 has label 12"):
        load_cifar10(tmp_path, verify=False)


def test_missing_batch_is_named(tmp_path):
    write_binary_folder(tmp_path, n_per_file=5)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match=r"missing file .*data_batch_5\.bin"):
        load_cifar10(tmp_path, verify=False)


def test_md5_checked_by_default(tmp_path):
    write_binary_folder(tmp_path, n_per_file=10_000 // 1000)  # wrong size for the official file
    with pytest.raises(DataError, match=r"data_batch_1\.bin"):
        load_cifar10(tmp_path)


def test_python_md5_checked_by_default(tmp_path):
    held = write_binary_folder(tmp_path / "bin", n_per_file=4)
    _write_python_folder(tmp_path / "py", held, 2, True)
    with pytest.raises(DataError, match=r"data_batch_1 is not the official file: md5"):
        load_cifar10(tmp_path / "py")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("verify", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, verify):
    held = write_binary_folder(tmp_path / "bin", n_per_file=4)
    folder = _write_python_folder(tmp_path / "py", held, 2, True)
    marker = tmp_path / "pwned"
    evil = {b"data": _Payload(marker), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path / "py", verify=verify)
    assert not marker.exists()
    # the payload really would have run with a plain unpickler
    pickle.loads((folder / "data_batch_1").read_bytes())
    assert marker.exists()


def test_refused_global_is_named(tmp_path):
    held = write_binary_folder(tmp_path / "bin", n_per_file=4)
    folder = _write_python_folder(tmp_path / "py", held, 4, False)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": print, "labels": []}))
    with pytest.raises(DataError, match=r"test_batch: refused to load builtins\.print"):
        load_cifar10(tmp_path / "py", verify=False)


def test_garbled_and_truncated_pickles(tmp_path):
    held = write_binary_folder(tmp_path / "bin", n_per_file=4)
    folder = _write_python_folder(tmp_path / "py", held, 2, True)
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"data_batch_1 is truncated or not a pickle"):
        load_cifar10(tmp_path / "py", verify=False)
    (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r"data_batch_1 holds a list"):
        load_cifar10(tmp_path / "py", verify=False)


def test_float_labels_are_refused_not_truncated(tmp_path):
    held = write_binary_folder(tmp_path / "bin", n_per_file=4)
    folder = _write_python_folder(tmp_path / "py", held, 2, False)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"] = [2.7, 1.0, 0.5, 9.9]  # int() would make these 2, 1, 0, 9
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: 'labels' should hold whole numbers"):
        load_cifar10(tmp_path / "py", verify=False)


def test_loader_writes_nothing_beside_the_data(tmp_path):
    write_binary_folder(tmp_path, n_per_file=3)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    load_cifar10(tmp_path, verify=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == mtimes


def test_nothing_found_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-bin"):
        load_cifar10(tmp_path / "empty", download=False)


# ---------------------------------------------------------------------- download


@pytest.fixture
def archive_server(tmp_path):
    """A local HTTP server serving a synthetic cifar-10-binary.tar.gz."""
    src = tmp_path / "src"
    held = write_binary_folder(src, n_per_file=4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    payload = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield (
        f"http://127.0.0.1:{server.server_port}/cifar-10-binary.tar.gz",
        hashlib.md5(payload).hexdigest(),
        held,
    )
    server.shutdown()


def test_download_checks_md5_and_extracts(tmp_path, archive_server, monkeypatch):
    url, md5, held = archive_server
    monkeypatch.setattr(data_mod, "ARCHIVE_URL", url)
    monkeypatch.setattr(data_mod, "ARCHIVE_MD5", md5)
    root = tmp_path / "dl"
    root.mkdir()  # a folder given must exist; the data is downloaded into it
    d = load_cifar10(root, verify=False, progress=False)
    assert np.array_equal(d.y_test, held["test_batch.bin"][0])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-bin"]


def test_download_with_bad_md5_leaves_nothing(tmp_path, archive_server, monkeypatch):
    url, _, _ = archive_server
    monkeypatch.setattr(data_mod, "ARCHIVE_URL", url)
    monkeypatch.setattr(data_mod, "ARCHIVE_MD5", "0" * 32)
    root = tmp_path / "dl"
    root.mkdir()
    with pytest.raises(DataError, match="damaged"):
        load_cifar10(root, verify=False, progress=False)
    assert list(root.iterdir()) == []


def test_download_failure_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "ARCHIVE_URL", "http://127.0.0.1:9/cifar-10-binary.tar.gz")
    (tmp_path / "dl").mkdir()
    with pytest.raises(DataNotFoundError, match="download .* failed.*data_dir") as e:
        load_cifar10(tmp_path / "dl", progress=False)
    assert "looked in: " in str(e.value) and str(tmp_path / "dl" / "cifar-10-batches-bin") in str(
        e.value
    )


def test_a_mistyped_data_folder_is_named_and_never_created(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "ARCHIVE_URL", "http://127.0.0.1:9/cifar-10-binary.tar.gz")
    typo = tmp_path / "no" / "such" / "folder"
    with pytest.raises(
        DataNotFoundError, match=r"folder .*folder \(from data_dir\) does not exist"
    ):
        load_cifar10(typo, progress=False)
    monkeypatch.setenv("CIFAR10_DIR", str(typo))
    with pytest.raises(DataNotFoundError, match=r"\(from CIFAR10_DIR\) does not exist") as e:
        load_cifar10(progress=False)
    assert str(typo / "cifar-10-batches-bin") in str(e.value)  # every place looked at
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------- subsets


def test_balanced_subset_is_balanced_and_fixed_by_seed():
    labels = np.repeat(np.arange(10), 500)
    np.random.default_rng(0).shuffle(labels)
    a = balanced_subset(labels, 1005, seed=3)
    assert len(a) == len(set(a)) == 1005
    counts = np.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1005
    assert np.array_equal(a, balanced_subset(labels, 1005, seed=3))
    assert not np.array_equal(a, balanced_subset(labels, 1005, seed=4))
    with pytest.raises(SettingError) as e:
        balanced_subset(labels, 0, seed=0, name="limit_train")
    assert e.value.render(flag_name).startswith("--limit-train must lie between 1 and 5000")
    with pytest.raises(SettingError) as e:  # a class too small for its share
        balanced_subset(np.repeat(np.arange(10), [5] + [500] * 9), 1000, seed=0, name="val_split")
    assert "balanced subset of --val-split 1000" in e.value.render(flag_name)


# ---------------------------------------------------------------------- the validation split


def _indexed(labels: np.ndarray, n_test: int = 30):
    """A data set whose 'images' are their own indices: what was held out is easy to see."""
    from alexnet_cifar.data import CIFAR10

    return CIFAR10(
        np.arange(len(labels)), labels, np.arange(n_test), labels[:n_test], list(CLASSES)
    )


def test_hold_out_is_balanced_disjoint_and_fixed_by_seed():
    labels = np.repeat(np.arange(10), 600)
    np.random.default_rng(1).shuffle(labels)
    data = _indexed(labels)
    split = data.hold_out(250, seed=3)
    val, train = split.x_val, split.x_train
    assert len(val) == 250 and len(train) == len(labels) - 250
    assert not set(val) & set(train) and set(val) | set(train) == set(range(len(labels)))
    assert np.array_equal(split.y_val, labels[val]) and np.array_equal(split.y_train, labels[train])
    assert np.bincount(split.y_val, minlength=10).tolist() == [25] * 10  # class-balanced
    again = data.hold_out(250, seed=3)
    assert np.array_equal(again.x_val, val) and np.array_equal(again.x_train, train)
    assert not np.array_equal(data.hold_out(250, seed=4).x_val, val)
    # the test set is untouched, and without a split nothing is held out
    assert np.array_equal(split.x_test, data.x_test)
    assert data.subset(None, None, 3).x_val is None


def test_limit_train_takes_its_subset_from_the_images_not_held_out():
    labels = np.repeat(np.arange(10), 100)
    data = _indexed(labels)
    both = data.subset(200, 20, seed=7, val_split=100)
    assert len(both.x_train) == 200 and len(both.x_val) == 100 and len(both.x_test) == 20
    assert not set(both.x_train) & set(both.x_val)
    assert np.array_equal(both.x_val, data.hold_out(100, seed=7).x_val)  # the same held-out set
    assert np.bincount(both.y_train, minlength=10).tolist() == [20] * 10


@pytest.mark.parametrize(
    "kw, says",
    [
        (dict(val_split=0), "val_split must lie between 1 and 999"),
        (dict(val_split=1000), "val_split must lie between 1 and 999"),
        (dict(val_split=900, limit_train=101), "limit_train must lie between 1 and 100"),
    ],
)
def test_impossible_splits_are_setting_errors(kw, says):
    from alexnet_cifar.errors import SettingError

    data = _indexed(np.repeat(np.arange(10), 100))
    with pytest.raises(SettingError, match=says):
        data.subset(kw.get("limit_train"), None, 0, kw["val_split"])
