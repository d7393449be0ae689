"""The synthetic set's transforms (fedjax_gen.data.augment): the warp against scipy, the spec
parser, identity and determinism, and the magnitudes the spec promises."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from fedjax_gen.data import augment as A
from fedjax_gen.errors import InvalidValue


@pytest.mark.parametrize("angle, zoom, offset", [(0.0, 1.0, (0.0, 0.0)), (0.3, 1.1, (1.3, -2.2)),
                                                   (-0.5, 0.8, (0.4, 3.0))])
def test_warp_equals_scipy_affine_transform(angle, zoom, offset):
    img = np.random.default_rng(0).uniform(0, 255, (28, 20, 1)).astype(np.float32)
    m = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
    c, t = np.array([13.5, 9.5]), np.array(offset)
    # grid-constant: bilinear against a zero background, as map_coordinates' constant mode
    ref = ndi.affine_transform(img[..., 0].astype(np.float64), m, c - m @ c + t, order=1, mode="grid-constant")
    out = np.asarray(A.warp(jnp.asarray(img), jnp.asarray(m, jnp.float32), jnp.asarray(t, jnp.float32)))
    np.testing.assert_allclose(out[..., 0], ref, atol=2e-3)


def test_warp_adds_the_displacement_field():
    img = np.random.default_rng(1).uniform(0, 255, (12, 12, 2)).astype(np.float32)
    disp = np.random.default_rng(2).normal(0, 1.5, (2, 12, 12)).astype(np.float32)
    out = np.asarray(A.warp(jnp.asarray(img), jnp.eye(2), jnp.zeros(2), jnp.asarray(disp)))
    grid = np.stack(np.meshgrid(np.arange(12.0), np.arange(12.0), indexing="ij")) + disp
    for ch in range(2):
        ref = ndi.map_coordinates(img[..., ch].astype(np.float64), grid, order=1, mode="grid-constant")
        np.testing.assert_allclose(out[..., ch], ref, atol=2e-3)


def test_parse_augment():
    assert A.parse_augment("none") is None and A.parse_augment(None) is None
    spec = A.parse_augment("rotate:20, scale:0.2,shift:0.07,elastic:0.05")
    assert spec == A.Augment(rotate=20.0, scale=0.2, shift=0.07, elastic=0.05)
    assert A.parse_augment(spec.spec()) == spec
    assert A.parse_augment("auto") == A.AUTO and A.parse_augment("shift:0.1,min_side:16").min_side == 16
    for bad in ("spin:3", "rotate:-1", "rotate:x", "shift:0.7", "rotate:1,rotate:2", "rotate", ""):
        with pytest.raises(InvalidValue, match="augment"):
            A.parse_augment(bad or ",")


def test_identity_and_determinism():
    x = np.random.default_rng(3).integers(0, 256, (6, 28, 28, 1)).astype(np.uint8)
    key = jax.random.key(0)
    assert A.augment_images(x, key, None) is x or np.array_equal(A.augment_images(x, key, None), x)
    np.testing.assert_array_equal(A.augment_images(x, key, A.Augment()), x)
    spec = A.Augment(rotate=20, scale=0.2, shift=0.07, elastic=0.05)
    a, b = A.augment_images(x, key, spec), A.augment_images(x, key, spec, chunk=4)
    np.testing.assert_array_equal(a, b)  # chunking does not change the per-image keys
    assert a.dtype == np.uint8 and a.shape == x.shape
    assert not np.array_equal(a, A.augment_images(x, jax.random.key(1), spec))
    same = np.repeat(x[:1], 4, axis=0)
    out = A.augment_images(same, key, spec)
    assert len({o.tobytes() for o in out}) == 4  # every image draws its own transform


def test_min_side_leaves_small_images_alone():
    x8 = np.random.default_rng(9).integers(0, 256, (5, 8, 8, 1)).astype(np.uint8)
    x28 = np.random.default_rng(9).integers(0, 256, (5, 28, 28, 1)).astype(np.uint8)
    assert not A.applies(A.AUTO, x8.shape[1:]) and A.applies(A.AUTO, x28.shape[1:])
    np.testing.assert_array_equal(A.augment_images(x8, jax.random.key(0), A.AUTO), x8)
    assert not np.array_equal(A.augment_images(x28, jax.random.key(0), A.AUTO), x28)


def _blob(h=28, w=28, cy=13.5, cx=13.5, r=4.0):
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2)))[None, ..., None].astype(np.uint8)


def test_shift_moves_the_centre_of_mass_within_the_bound():
    x = np.repeat(_blob(), 200, axis=0)
    out = A.augment_images(x, jax.random.key(4), A.Augment(shift=0.1)).astype(np.float64)[..., 0]
    yy, xx = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    mass = out.sum((1, 2))
    cy, cx = (out * yy).sum((1, 2)) / mass, (out * xx).sum((1, 2)) / mass
    # the output at p reads the input at p + t: the content moves by -t, |t| <= 0.1 x 28
    assert np.all(np.abs(cy - 13.5) <= 2.8 + 0.05) and np.all(np.abs(cx - 13.5) <= 2.8 + 0.05)
    assert np.std(cy) > 1.0 and np.std(cx) > 1.0  # uniform on [-2.8, 2.8]: std 1.6
    np.testing.assert_allclose(mass, x[0].astype(np.float64).sum(), rtol=0.02)


def test_rotation_leaves_a_centred_disk_and_zoom_scales_its_mass():
    x = np.repeat(_blob(), 50, axis=0)
    rot = A.augment_images(x, jax.random.key(5), A.Augment(rotate=45)).astype(np.float64)
    np.testing.assert_allclose(rot, np.repeat(x, 1, 0).astype(np.float64), atol=3)
    zoomed = A.augment_images(x, jax.random.key(6), A.Augment(scale=0.3)).astype(np.float64).sum((1, 2, 3))
    ratio = zoomed / x[0].astype(np.float64).sum()  # area scales with zoom^2, zoom in [0.7, 1.3]
    assert 0.7 ** 2 - 0.03 < ratio.min() and ratio.max() < 1.3 ** 2 + 0.03 and np.ptp(ratio) > 0.5


def test_elastic_field_has_unit_rms_in_the_interior():
    fields = jax.vmap(lambda k: A._smooth_field(k, (64, 64), 4.0))(jax.random.split(jax.random.key(7), 64))
    rms = float(jnp.sqrt(jnp.mean(fields[:, :, 16:48, 16:48] ** 2)))
    assert 0.9 < rms < 1.1
    assert A._smooth_field(jax.random.key(8), (8, 8), 1.14).shape == (2, 8, 8)  # kernel cut to the image
