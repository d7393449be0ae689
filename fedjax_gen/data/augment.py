"""Label-preserving random image transforms applied to a synthetic set after it is drawn.

  Augment(rotate=, scale=, shift=, elastic=, smooth=, min_side=)   frozen; sizes are fractions of the side
  parse_augment("rotate:20,scale:0.2,shift:0.07,elastic:0.05") -> Augment | None ("none")
  parse_augment("auto") -> AUTO (that spec on images of side >= 16 px, none below)
  applies(spec, image_shape) -> bool
  augment_images(x uint8 [N, H, W, C], key, spec) -> uint8 [N, H, W, C]

Why: a synthetic set is a private release's post-processing, so transforming it costs no
privacy. A small random rotation, zoom, translation and smooth elastic warp (Simard et al.,
2003) is a generic prior of images (a digit, a garment or an object keeps its class) that a
sampler of a few statistics cannot express; on MNIST validation it lifted dct_gmm's TSTR by
+4.0 points at eps 0.2, +2.7 to +3.5 at eps 1 and +1.1 at eps 10, but on the 8x8 digits it cost 4 points (bilinear resampling of 8
pixels blurs away what the transform adds): hence `min_side`, and AUTO's 16 px, a threshold
between the two sizes measured (docs/dct_gmm.md, "The synthetic-set transform"). On the FEMNIST
writer subset (28 px, characters not centred) it cost dct_gmm 15 points, so no method uses it by
default. It is a run option for every method
(RunConfig.augment), so a comparison can give each method the same transform.

One bilinear resampling per image: the output pixel p reads the input at
A (p - c) + c + t + e(p), with A = rotation(a) / zoom, c the centre, t the shift and e a
Gaussian-smoothed white-noise field of rms `elastic` (fractions of the side). Outside the
image reads 0 (the background of pixels in [0, 1]). Written with jax.scipy.ndimage rather
than a library (none of optax / tfds / flax offers a jittable, keyed, per-image warp).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_gen.errors import InvalidValue


@dataclasses.dataclass(frozen=True)
class Augment:
    """rotate: degrees, uniform in [-rotate, rotate]; scale: zoom uniform in [1 - scale, 1 + scale];
    shift: per axis, uniform in [-shift, shift] x the side; elastic: rms displacement x the side;
    smooth: the elastic field's Gaussian correlation length x the side; min_side: images whose
    smaller side is below it are left unchanged. All of rotate .. elastic zero: identity."""

    rotate: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    elastic: float = 0.0
    smooth: float = 4.0 / 28.0
    min_side: int = 0

    @property
    def is_identity(self) -> bool:
        return self.rotate == self.scale == self.shift == self.elastic == 0.0

    def spec(self) -> str:
        """The parse_augment string of this spec (fields at their default left out)."""
        return ",".join(f"{f.name}:{getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != f.default)


_LIMITS = {"rotate": (0.0, 180.0), "scale": (0.0, 0.9), "shift": (0.0, 0.5), "elastic": (0.0, 0.5),
           "smooth": (1e-3, 1.0), "min_side": (0, 4096)}
# Chosen on MNIST validation (28x28); off on the 8x8 digits, where it was measured to hurt.
AUTO = Augment(rotate=20.0, scale=0.2, shift=0.07, elastic=0.05, min_side=16)


def applies(spec: "Augment | None", image_shape) -> bool:
    return spec is not None and not spec.is_identity and min(image_shape[:2]) >= spec.min_side


def parse_augment(text: str | None) -> Augment | None:
    """'none' (or empty) -> None; 'auto' -> AUTO; 'rotate:R,scale:S,shift:T,elastic:E[,smooth:L]
    [,min_side:P]' -> Augment. A bad spec is a one-line InvalidValue naming the accepted form."""
    text = (text or "none").strip()
    if text == "none":
        return None
    if text == "auto":
        return AUTO
    values = {}
    for part in text.split(","):
        name, _, value = part.partition(":")
        name = name.strip()
        try:
            v = float(value)
        except ValueError:
            v = math.nan
        lo, hi = _LIMITS.get(name, (0.0, -1.0))
        if not lo <= v <= hi or name in values:
            raise InvalidValue("augment", "{augment} " + repr(text) + " is not none, auto or a comma list of "
                               + ", ".join(f"{k}:V ({a:g}..{b:g})" for k, (a, b) in _LIMITS.items())
                               + ", each at most once, e.g. rotate:20,scale:0.2,shift:0.07,elastic:0.05")
        values[name] = int(v) if name == "min_side" else v
    return Augment(**values)


def _gaussian_kernel(sigma: float, n: int) -> np.ndarray:
    r = max(1, min(int(math.ceil(3 * sigma)), (n - 1) // 2))  # 'same' convolution keeps n only if len(k) <= n
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _smooth_field(key, shape, sigma: float):
    """Two independent white-noise planes smoothed by a separable Gaussian and rescaled to unit
    rms (in the interior: divided by the kernel's exact L2 norm)."""
    k = _gaussian_kernel(sigma, min(shape))
    along_last = jax.vmap(jax.vmap(lambda v: jnp.convolve(v, k, mode="same")))  # [2, A, B]: each row
    noise = jax.random.normal(key, (2,) + shape)
    smooth = jnp.swapaxes(along_last(jnp.swapaxes(along_last(noise), 1, 2)), 1, 2)
    return smooth / float(np.sum(k ** 2))  # the 2-D kernel k (x) k has L2 norm sum(k^2): unit-variance output


def warp(image, matrix, offset, displacement=None):
    """image [H, W, C] -> float [H, W, C]: output pixel p reads image at matrix (p - c) + c + offset
    (+ displacement[:, p]), bilinear, 0 outside; c the centre. scipy.ndimage.affine_transform's
    map with its offset written about the centre (tested against it)."""
    h, w = image.shape[:2]
    c = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0], jnp.float32)
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                                  indexing="ij"))  # [2, H, W]
    src = jnp.einsum("ij,jhw->ihw", matrix, grid - c[:, None, None]) + (c + offset)[:, None, None]
    if displacement is not None:
        src = src + displacement
    return jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(ch, list(src), order=1, mode="constant", cval=0.0),
                    in_axes=-1, out_axes=-1)(image.astype(jnp.float32))


def _one(spec: Augment, image, key):
    h, w = image.shape[:2]
    k_rot, k_zoom, k_shift, k_el = jax.random.split(key, 4)
    a = jnp.deg2rad(spec.rotate) * jax.random.uniform(k_rot, minval=-1.0, maxval=1.0)
    zoom = 1.0 + spec.scale * jax.random.uniform(k_zoom, minval=-1.0, maxval=1.0)
    t = spec.shift * jnp.array([h, w], jnp.float32) * jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0)
    rot = jnp.array([[jnp.cos(a), -jnp.sin(a)], [jnp.sin(a), jnp.cos(a)]]) / zoom
    disp = None
    if spec.elastic > 0:
        side = jnp.array([h, w], jnp.float32)[:, None, None]
        disp = spec.elastic * side * _smooth_field(k_el, (h, w), spec.smooth * math.sqrt(h * w))
    out = warp(image, rot, t, disp)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("spec",))
def _batch(spec: Augment, x, keys):
    return jax.vmap(functools.partial(_one, spec))(x, keys)


def augment_images(x: np.ndarray, key: jax.Array, spec: Augment | None, chunk: int = 5000) -> np.ndarray:
    """Each image of x (uint8 [N, H, W, C]) gets its own transform drawn from fold_in(key, i);
    spec None, all-zero or above the images' size (min_side) returns x unchanged. Chunks bound
    the device memory."""
    x = np.asarray(x)
    if len(x) == 0 or not applies(spec, x.shape[1:]):
        return x
    if x.dtype != np.uint8:
        raise TypeError(f"augment_images expects uint8 images, got {x.dtype}")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(x)))
    return np.concatenate([np.asarray(_batch(spec, jnp.asarray(x[i:i + chunk]), keys[i:i + chunk]))
                           for i in range(0, len(x), chunk)])
