"""Predictions on a user's own pictures, and flip-averaged (test-time augmentation) evaluation.

An image file of any size and mode becomes what the model was trained on: 32x32 RGB, normalised
with the seed's mean and standard deviation. Transparent pixels are laid over the training set's
mean colour (the colour the seed's augmentation fills with, 0 after normalisation), 16-bit and
float grey images are scaled to 0..255, a JPEG's EXIF rotation is applied, and any other size is
resized to 32x32 with Pillow's bicubic filter (antialiased when shrinking; the aspect ratio is
not kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .augment import SEED_MEAN
from .evaluate import (
    EvalResult,
    flip_averaged,
    heldout_logits,
    logits_in_batches,
    result_from_logits,
)

__all__ = [
    "ImageError",
    "Prediction",
    "add_parsers",
    "class_names",
    "evaluate_with_tta",
    "load_image",
    "predict_images",
]

IMAGE_SIZE = 32


class ImageError(ValueError):
    """A file that is not an image this tool can read."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # uint8 (32, 32, 3)
    original_size: tuple[int, int]  # (width, height)
    mode: str

    @property
    def resized(self) -> bool:
        return self.original_size != (IMAGE_SIZE, IMAGE_SIZE)


def _to_rgb(img):
    """Any Pillow mode -> RGB, transparency laid over the seed's mean colour."""
    from PIL import Image

    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        peak = a.max() if a.size else 0.0
        if mode == "F":  # floats on 0..1, else on 0..255
            top = 1.0 if peak <= 1.0 else 255.0
        else:  # 16-bit (or 32-bit holding 16-bit) grey; an "I" image within 0..255 is 8-bit
            top = 255.0 if mode == "I" and peak <= 255 else 65535.0
        a = np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(a)
        mode = "L"
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, tuple(int(round(m)) for m in SEED_MEAN))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def load_image(path: str | Path) -> LoadedImage:
    """A picture file as uint8 32x32x3 RGB; ImageError when it is not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            img = ImageOps.exif_transpose(img) or img
            size = img.size
            rgb = _to_rgb(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image (PNG, JPEG or another format Pillow reads)"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: damaged or unreadable image ({e})") from None
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return LoadedImage(np.asarray(rgb, dtype=np.uint8).copy(), size, mode)


def class_names(path: str | Path, num_classes: int, meta: dict | None = None) -> list[str]:
    """The run's class names (result.json, config.json), else CIFAR-10's, else '0', '1', ..."""
    from .data import CLASSES

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for name in ("result.json", "config.json"):
        try:
            names = json.loads((folder / name).read_text()).get("classes")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(names, list) and len(names) == num_classes:
            return [str(n) for n in names]
    names = (meta or {}).get("classes")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == len(CLASSES):
        return list(CLASSES)
    return [str(i) for i in range(num_classes)]


@dataclass
class Prediction:
    file: str
    probabilities: np.ndarray
    original_size: tuple[int, int]
    mode: str
    resized: bool

    def top_k(self, classes: list[str], k: int) -> list[dict]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [
            {"class": classes[i], "index": int(i), "probability": float(self.probabilities[i])}
            for i in order
        ]


@torch.no_grad()
def predict_images(model, images: list[LoadedImage], batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (float64 rows summing to 1) for loaded images."""
    if not images:
        return np.zeros((0, model.config.num_classes))
    x = torch.from_numpy(np.stack([im.pixels for im in images]))
    logits = logits_in_batches(model.eval(), x, batch_size)
    return torch.softmax(logits.double().cpu(), dim=1).numpy()


# ---------------------------------------------------------------------- TTA evaluation


@torch.no_grad()
def evaluate_with_tta(
    model,
    images,
    labels,
    *,
    classes: list[str] | None = None,
    batch_size: int = 500,
    loss_clip_eps: float = 1e-7,
    channels_last: bool = False,
) -> tuple[EvalResult, EvalResult]:
    """(plain, flip-averaged) results on uint8 NHWC images, dropout off, each image run once.

    The flip-averaged prediction is the mean of the softmax of each image and of its mirror
    image; its loss is the cross-entropy of that mean (clipped as Keras clips), plus the model's
    L2 term. Both are what ``evaluate_model`` gives with and without ``tta_flip``.
    """
    plain, flipped, labels = heldout_logits(
        model, images, labels, batch_size=batch_size, channels_last=channels_last, mirrored=True
    )
    return (
        result_from_logits(model, plain, labels, classes, loss_clip_eps),
        result_from_logits(model, flip_averaged(plain, flipped), labels, classes, loss_clip_eps),
    )


# ---------------------------------------------------------------------- command


def add_parsers(sub) -> None:
    from .cli import _device, _int_at_least

    p = sub.add_parser(
        "predict",
        help="the top classes of your own pictures (PNG, JPEG, ...)",
        description="Predict the classes of image files with a trained model. Any size and "
        "mode (RGBA, grey, palette, 16-bit) is converted to RGB (transparency over the "
        "training mean colour) and resized to 32x32 (bicubic, aspect ratio not kept), then "
        "normalised as in training. A file that cannot be read is reported and the others "
        "are still predicted; the exit status is then 2.",
    )
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint or model.pt")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument(
        "--top-k", type=_int_at_least(1, "--top-k"), default=3, help="classes to show (3)"
    )
    p.add_argument("--device", type=_device, default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per file")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    import sys

    from .checkpoint import read_state
    from .evaluate import load_model, resolve_weights_file
    from .train import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.path, device=device)
    meta = read_state(resolve_weights_file(args.path)).get("meta") or {}
    classes = class_names(args.path, model.config.num_classes, meta)
    k = min(args.top_k, len(classes))

    loaded: list[tuple[Path, LoadedImage]] = []
    errors: dict[int, str] = {}
    for i, f in enumerate(args.images):
        try:
            loaded.append((f, load_image(f)))
        except ImageError as e:
            errors[i] = str(e)
            print(f"error: {e}", file=sys.stderr)
    probs = predict_images(model, [im for _, im in loaded])
    by_index = {}
    it = iter(zip(loaded, probs))
    for i in range(len(args.images)):
        if i not in errors:
            (f, im), p = next(it)
            by_index[i] = Prediction(str(f), p, im.original_size, im.mode, im.resized)

    records = []
    for i, f in enumerate(args.images):
        if i in errors:
            records.append({"file": str(f), "error": errors[i]})
            continue
        pr = by_index[i]
        top = pr.top_k(classes, k)
        records.append(
            {
                "file": pr.file,
                "predicted": top[0]["class"],
                "top_k": top,
                "resized": pr.resized,
                "original_size": list(pr.original_size),
                "mode": pr.mode,
            }
        )
        if pr.resized and args.json:
            w, h = pr.original_size
            print(f"note: {f} resized from {w}x{h} to 32x32", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            if "error" in r:
                continue
            w, h = r["original_size"]
            note = f"  (resized from {w}x{h} to 32x32)" if r["resized"] else ""
            print(f"{r['file']}: {r['predicted']}{note}")
            for t in r["top_k"]:
                print(f"  {t['class']:<12}{t['probability']:.4f}")
    if errors:
        print(
            f"error: {len(errors)} of {len(args.images)} files could not be read as images",
            file=sys.stderr,
        )
        return 2
    return 0
