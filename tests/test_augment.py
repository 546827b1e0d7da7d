import numpy as np
import pytest
import torch
from scipy import ndimage

from alexnet_cifar import augment
from alexnet_cifar.augment import (
    draw_seed_augmentation,
    hflip,
    normalize,
    seed_augment,
    translate,
    translate_flip,
)


def _scipy_translate(x: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """What Keras' ImageDataGenerator computes for a pure shift, channel by channel."""
    out = np.empty_like(x, dtype=np.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[n, c] = ndimage.affine_transform(
                x[n, c].astype(np.float64),
                np.eye(2),
                offset=(float(dy[n]), float(dx[n])),
                order=1,
                mode="constant",
                cval=0.0,
            )
    return out


EDGE_SHIFTS = [
    0.0,
    4.0,
    -4.0,
    1.0,
    -1.0,
    0.5,
    -0.5,
    31.0,
    -31.0,
    30.999,
    -30.999,
    32.0,
    -32.0,
    3.75,
    -3.75,
    1e-6,
    -1e-6,
    40.0,
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_translate_matches_scipy_on_random_fractional_shifts(seed):
    g = torch.Generator().manual_seed(seed)
    n = 24
    x = torch.randn(n, 3, 32, 32, generator=g) * 2
    dy = (torch.rand(n, generator=g) * 2 - 1) * 5
    dx = (torch.rand(n, generator=g) * 2 - 1) * 5
    got = translate(x, dy, dx).numpy()
    want = _scipy_translate(x.numpy(), dy.numpy(), dx.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_translate_edges_and_integer_shifts():
    g = torch.Generator().manual_seed(3)
    shifts = torch.tensor(EDGE_SHIFTS, dtype=torch.float32)
    n = len(shifts)
    x = torch.rand(n, 2, 32, 32, generator=g) + 0.5  # strictly positive: a 0 means "outside"
    dy, dx = shifts, shifts.roll(3)
    got = translate(x, dy, dx).numpy()
    want = _scipy_translate(x.numpy(), dy.numpy(), dx.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # exactly zero where scipy leaves the constant, nonzero elsewhere
    np.testing.assert_array_equal(got == 0, want == 0)


def test_translate_non_square_images():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 1, 5, 9, generator=g)
    dy = torch.tensor([0.3, -1.7, 4.0, -4.0, 2.5, 0.0])
    dx = torch.tensor([-0.3, 8.0, 1.25, -8.5, 0.0, 7.9])
    np.testing.assert_allclose(
        translate(x, dy, dx).numpy(),
        _scipy_translate(x.numpy(), dy.numpy(), dx.numpy()),
        atol=2e-6,
    )


def test_translate_float64_is_exact_to_scipy():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    dy = (torch.rand(8, generator=g, dtype=torch.float64) * 2 - 1) * 4
    dx = (torch.rand(8, generator=g, dtype=torch.float64) * 2 - 1) * 4
    np.testing.assert_allclose(
        translate(x, dy, dx).numpy(),
        _scipy_translate(x.numpy(), dy.numpy(), dx.numpy()),
        rtol=0,
        atol=1e-12,
    )


def test_zero_shift_is_identity_and_integer_shift_moves_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.equal(translate(x, torch.zeros(2), torch.zeros(2)), x)
    out = translate(x, torch.tensor([2.0, 0.0]), torch.tensor([0.0, -3.0]))
    # out[i, j] = x[i + dy, j + dx]
    assert torch.equal(out[0, :, :6], x[0, :, 2:])
    assert torch.equal(out[0, :, 6:], torch.zeros(3, 2, 8))
    assert torch.equal(out[1, :, :, 3:], x[1, :, :, :5])
    assert torch.equal(out[1, :, :, :3], torch.zeros(3, 8, 3))


def test_translate_flip_is_translate_then_flip():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 3, 32, 32, generator=g)
    dy, dx, flip = draw_seed_augmentation(10, g)
    flip[:2] = torch.tensor([True, False])
    want = hflip(translate(x, dy, dx), flip)
    assert torch.allclose(translate_flip(x, dy, dx, flip), want, atol=1e-6)
    assert torch.equal(hflip(x, torch.ones(10, dtype=torch.bool)), x.flip(-1))


def test_seed_policy_draws():
    g = torch.Generator().manual_seed(7)
    dy, dx, flip = draw_seed_augmentation(20000, g)
    for s in (dy, dx):
        assert s.min() >= -4 and s.max() <= 4
        assert s.min() < -3.99 and s.max() > 3.99
        assert abs(float(s.mean())) < 0.05
        assert abs(float(s.std()) - 8 / np.sqrt(12)) < 0.03
    assert abs(float(flip.float().mean()) - 0.5) < 0.02
    # Same seed, same draws, wherever they are put.
    again = draw_seed_augmentation(20000, torch.Generator().manual_seed(7))
    assert torch.equal(dy, again[0]) and torch.equal(flip, again[2])


def test_seed_augment_keeps_shape_and_fills_with_zero():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(16, 3, 32, 32) + 1
    out = seed_augment(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    # every image shifted by a fraction of a pixel at least somewhere leaves zero rows/cols
    assert (out == 0).any()


def test_normalize_matches_seed_numpy_arithmetic():
    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    # The seed's NumPy code: float32 array, per-channel (x - mean) / std with Python floats.
    want = img.astype("float32")
    for i in range(3):
        want[:, :, :, i] = (want[:, :, :, i] - augment.SEED_MEAN[i]) / augment.SEED_STD[i]
    got = normalize(torch.from_numpy(img))
    assert got.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), want)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        translate(torch.zeros(2, 3, 4), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError):
        translate(torch.zeros(2, 3, 4, 4), torch.zeros(3), torch.zeros(2))


def test_the_draws_default_to_the_seed_recipe():
    """Drawn without a shift or flip rate, the draws are those of the seed recipe's."""
    from alexnet_cifar.recipe import Recipe

    seed = Recipe()
    plain = draw_seed_augmentation(500, torch.Generator().manual_seed(3))
    given = draw_seed_augmentation(
        500, torch.Generator().manual_seed(3), None, seed.max_shift, seed.flip_p
    )
    other = draw_seed_augmentation(500, torch.Generator().manual_seed(3), None, 2.0, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(plain, given))
    assert not all(torch.equal(a, b) for a, b in zip(plain, other))
