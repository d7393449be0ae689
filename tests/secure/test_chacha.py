"""The jnp ChaCha20 keystream against `cryptography`'s (OpenSSL) ChaCha20."""

import os

import jax.numpy as jnp
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedjax_gen.secure import chacha, secagg


def _reference(key: bytes, words: int) -> np.ndarray:
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(4 * words)), "<u4")


def test_keystream_equals_openssl_chacha20():
    keys = [os.urandom(32) for _ in range(3)]
    ours = np.asarray(chacha.keystream(jnp.asarray(np.stack([chacha.key_words(k) for k in keys])), 37))
    for k, row in zip(keys, ours):
        np.testing.assert_array_equal(row, _reference(k, 37))


def test_signed_sums_match_numpy_and_the_openssl_backend():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**32, (3, 4, 8), dtype=np.uint64).astype(np.uint32)
    signs = np.array([[1, -1, 0, 1], [-1, -1, 1, 0], [0, 0, 0, 1]], np.int32)
    ref = np.zeros((3, 37), np.uint64)
    for r in range(3):
        for m in range(4):
            ks = _reference(keys[r, m].astype("<u4").tobytes(), 37).astype(np.uint64)
            ref[r] += ks * (int(signs[r, m]) % 2**32)
    ref = (ref % 2**32).astype(np.uint32)
    xla = np.asarray(chacha.signed_mask_sums(jnp.asarray(keys), jnp.asarray(signs), 37, 2))
    np.testing.assert_array_equal(xla, ref)
    ossl = secagg._signed_sums(keys, signs, 37, secagg.ProtocolConfig(prg="openssl"))
    np.testing.assert_array_equal(ossl, ref)
