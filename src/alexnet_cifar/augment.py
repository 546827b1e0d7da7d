"""Normalisation and the seed's augmentation, batched, on whatever device the batch is on.

The seed used Keras 2's ``ImageDataGenerator(width_shift_range=0.125, height_shift_range=0.125,
horizontal_flip=True, fill_mode="constant", cval=0)`` on normalised images. Per image it draws a
shift dy, dx from U(-4, 4) pixels, resamples with ``scipy.ndimage.affine_transform(order=1,
mode="constant", cval=0)`` (bilinear; a sample whose source lies outside the image is exactly 0,
with no blending at the border), then flips horizontally with probability 0.5.

Here that is a handful of gathers and multiply-adds over the whole batch: bilinear sampling at a
whole-image shift is separable, so each axis needs two taps and two weights per output line.
"""

from __future__ import annotations

import torch

from .recipe import Recipe

__all__ = [
    "SEED_MEAN",
    "SEED_STD",
    "draw_seed_augmentation",
    "hflip",
    "normalize",
    "seed_augment",
    "translate",
    "translate_flip",
]

# The seed's per-channel statistics on the 0..255 scale (the training set's own).
SEED_MEAN = (125.307, 122.95, 113.865)
SEED_STD = (62.9932, 62.0887, 66.7048)


def normalize(
    images: torch.Tensor, mean=SEED_MEAN, std=SEED_STD, channels_last_input: bool = True
) -> torch.Tensor:
    """uint8 images (a tensor or a NumPy array) -> float32 NCHW, ``(x - mean) / std`` per
    channel, as the seed computed it.

    ``images`` is (N, H, W, C) when ``channels_last_input`` (the data set's layout; the result is
    then an NCHW view in channels_last memory) or (N, C, H, W).
    """
    images = torch.as_tensor(images)  # a NumPy array (load_cifar10's) works as well
    x = images.permute(0, 3, 1, 2) if channels_last_input else images
    m, s = _channel_stats(tuple(mean), tuple(std), x.device)
    # float32 subtract then divide: the same roundings as the seed's NumPy code.
    return (x.to(torch.float32) - m) / s


_STATS: dict = {}


def _channel_stats(mean: tuple, std: tuple, device: torch.device):
    """The statistics as device tensors, made once per device: a copy from the host inside a
    CUDA graph capture is not allowed, and per batch it would be wasted work."""
    key = (mean, std, str(device))
    if key not in _STATS:
        _STATS[key] = tuple(
            torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            for v in (mean, std)
        )
    return _STATS[key]


def _axis_taps(shift: torch.Tensor, size: int):
    """For output lines 0..size-1 and per-image shifts: two source indices, two weights.

    Output line i samples position p = i + shift. Inside [0, size-1] it is
    (1 - t) * src[floor(p)] + t * src[floor(p) + 1] with t = p - floor(p); outside, both weights
    are 0. The inside test compares the shift with integers, so it is exact in any float type.
    """
    if not shift.is_floating_point():
        shift = shift.to(torch.float32)
    lines = torch.arange(size, device=shift.device)
    floor = torch.floor(shift)
    frac = (shift - floor)[:, None]
    inside = (shift[:, None] >= -lines) & (shift[:, None] <= (size - 1) - lines)
    base = (
        lines[None, :]
        + torch.nan_to_num(floor, nan=0.0, posinf=0.0, neginf=0.0).to(torch.long)[:, None]
    )
    i0 = base.clamp(0, size - 1)
    i1 = (base + 1).clamp(0, size - 1)
    zero = torch.zeros((), device=shift.device)
    w0 = torch.where(inside, 1.0 - frac, zero)
    w1 = torch.where(inside, frac, zero)
    return i0, i1, w0, w1


def _resample_rows(x: torch.Tensor, i0, i1, w0, w1) -> torch.Tensor:
    n, c, h, w = x.shape
    shape = (n, c, h, w)
    a = x.gather(2, i0[:, None, :, None].expand(shape))
    b = x.gather(2, i1[:, None, :, None].expand(shape))
    return a * w0[:, None, :, None].to(x.dtype) + b * w1[:, None, :, None].to(x.dtype)


def _resample_cols(x: torch.Tensor, i0, i1, w0, w1) -> torch.Tensor:
    n, c, h, w = x.shape
    shape = (n, c, h, w)
    a = x.gather(3, i0[:, None, None, :].expand(shape))
    b = x.gather(3, i1[:, None, None, :].expand(shape))
    return a * w0[:, None, None, :].to(x.dtype) + b * w1[:, None, None, :].to(x.dtype)


def translate_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """``translate(x, dy, dx)``, then a horizontal flip of the images where ``flip`` is True.

    The flip is folded into the column taps (output column j reads the taps of W-1-j), so the
    pair costs no more than the shift alone.
    """
    if x.dim() != 4:
        raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    dy = torch.as_tensor(dy, device=x.device).reshape(-1)
    dx = torch.as_tensor(dx, device=x.device).reshape(-1)
    if dy.numel() != n or dx.numel() != n:
        raise ValueError(f"need one dy and one dx per image ({n}), got {dy.numel()}, {dx.numel()}")
    rows = _axis_taps(dy, h)
    cols = _axis_taps(dx, w)
    if flip is not None:
        f = torch.as_tensor(flip, device=x.device).reshape(-1, 1).to(torch.bool)
        cols = tuple(torch.where(f, t.flip(-1), t) for t in cols)
    return _resample_cols(_resample_rows(x, *rows), *cols)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image of a float batch by a fractional (dy[n], dx[n]).

    ``out[n, c, i, j]`` is the bilinear sample of ``x[n, c]`` at ``(i + dy[n], j + dx[n])``, and
    exactly 0 where that point lies outside ``[0, H-1] x [0, W-1]``: the result of
    ``scipy.ndimage.affine_transform(x[n, c], identity, offset=(dy, dx), order=1,
    mode="constant", cval=0)``, which is what Keras' ``ImageDataGenerator`` computes.
    """
    return translate_flip(x, dy, dx, None)


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images of the batch where ``flip`` is True (left-right)."""
    f = torch.as_tensor(flip, device=x.device).reshape(-1, 1, 1, 1).to(torch.bool)
    return torch.where(f, x.flip(-1), x)


def draw_seed_augmentation(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    max_shift: float = Recipe.max_shift,
    flip_p: float = Recipe.flip_p,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's random draws for ``n`` images: dy, dx ~ U(-max_shift, max_shift), flip ~ B(p).
    The defaults are the seed recipe's (``Recipe.max_shift``, ``Recipe.flip_p``).

    Drawn on the generator's device (CPU by default) and moved to ``device``: the same seed
    gives the same draws whatever device trains.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(3, n, generator=generator, device=gen_device, dtype=torch.float64)
    dy = (u[0] * 2 - 1) * max_shift
    dx = (u[1] * 2 - 1) * max_shift
    flip = u[2] < flip_p
    dev = device if device is not None else gen_device
    return dy.to(dev, torch.float32), dx.to(dev, torch.float32), flip.to(dev)


def seed_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The seed's augmentation on a normalised float batch: random shift, then random flip."""
    dy, dx, flip = draw_seed_augmentation(x.shape[0], generator, x.device)
    return translate_flip(x, dy, dx, flip)
