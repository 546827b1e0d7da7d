"""Predictions on a user's own pictures.

An image file of any size and mode becomes what the model was trained on: 32x32 RGB, normalised
with the seed's mean and standard deviation. Transparent pixels are laid over the training set's
mean colour (the colour the seed's augmentation fills with, 0 after normalisation), 16-bit and
float grey images are scaled to 0..255, a JPEG's EXIF rotation is applied, and any other size is
resized to 32x32 with Pillow's bicubic filter (antialiased when shrinking; the aspect ratio is
not kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..augment import SEED_MEAN
from ..engine.evaluate import logits_in_batches
from ..errors import ImageError
from ..models import AlexNetConfig, probabilities

__all__ = ["ImageError", "LoadedImage", "Prediction", "load_image", "predict_images"]


@dataclass
class LoadedImage:
    pixels: np.ndarray  # uint8 (size, size, 3): the model's input side
    original_size: tuple[int, int]  # (width, height)
    mode: str

    @property
    def resized(self) -> bool:
        height, width = self.pixels.shape[:2]
        return self.original_size != (width, height)


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


def load_image(path: str | Path, size: int = AlexNetConfig.image_size) -> LoadedImage:
    """A picture file as uint8 RGB of ``size`` x ``size`` (the model's ``config.image_size``,
    32 for every preset); ImageError when it is not an image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise ImageError(f"{path}: not a regular file (a pipe or a device is not read)")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            img = ImageOps.exif_transpose(img) or img
            original_size = img.size
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
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return LoadedImage(np.asarray(rgb, dtype=np.uint8).copy(), original_size, mode)


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
    return probabilities(logits.double().cpu()).numpy()
