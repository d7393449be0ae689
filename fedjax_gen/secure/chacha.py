"""The masks' PRG: the ChaCha20 keystream (RFC 8439) written in jnp, so a whole cohort's
masks are one jitted, vectorised XLA computation.

Why not jax.random: threefry2x32 keys are 64 bits, so a mask seed derived from a 256-bit
X25519 secret would be brute-forceable in principle (2^64). ChaCha20 has 256-bit keys, is
counter-based (block b of the stream depends only on (key, b), so it vectorises over
blocks and keys with no sequential state), and is a standard stream cipher, so its
output is checked word for word against `cryptography`'s ChaCha20 in the tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_CONSTANTS = np.array([0x61707865, 0x3320646E, 0x79622D32, 0x6B206574], np.uint32)  # "expand 32-byte k"


def key_words(key: bytes) -> np.ndarray:
    """32-byte key -> uint32 [8] (little-endian words, as RFC 8439 loads them)."""
    if len(key) != 32:
        raise ValueError(f"ChaCha20 keys are 32 bytes, got {len(key)}")
    return np.frombuffer(key, dtype="<u4").astype(np.uint32)


def _rotl(x, n):
    return (x << jnp.uint32(n)) | (x >> jnp.uint32(32 - n))


def _quarter(s, a, b, c, d):
    s[a] = s[a] + s[b]; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = s[c] + s[d]; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = s[a] + s[b]; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = s[c] + s[d]; s[b] = _rotl(s[b] ^ s[c], 7)


def _double_round(s):
    s = list(s)
    _quarter(s, 0, 4, 8, 12); _quarter(s, 1, 5, 9, 13); _quarter(s, 2, 6, 10, 14); _quarter(s, 3, 7, 11, 15)
    _quarter(s, 0, 5, 10, 15); _quarter(s, 1, 6, 11, 12); _quarter(s, 2, 7, 8, 13); _quarter(s, 3, 4, 9, 14)
    return tuple(s)


def _blocks(keys, num_blocks: int):
    """keys uint32 [P, 8] -> keystream uint32 [P, num_blocks, 16] (counter 0.., nonce 0)."""
    p = keys.shape[0]
    counter = jnp.broadcast_to(jnp.arange(num_blocks, dtype=jnp.uint32), (p, num_blocks))
    zero = jnp.zeros((p, num_blocks), jnp.uint32)
    init = [jnp.full((p, num_blocks), c, jnp.uint32) for c in _CONSTANTS]
    init += [jnp.broadcast_to(keys[:, i : i + 1], (p, num_blocks)) for i in range(8)]
    init += [counter, zero, zero, zero]
    # 20 rounds = 10 (column, diagonal) double rounds; a loop, not unrolled: same speed on
    # XLA:CPU, a fraction of the compile time
    s = jax.lax.fori_loop(0, 10, lambda _, s: _double_round(s), tuple(init))
    return jnp.stack([x + y for x, y in zip(s, init)], axis=-1)


@functools.partial(jax.jit, static_argnames="dim")
def keystream(keys, dim: int):
    """keys uint32 [P, 8] -> the first `dim` keystream words of each key: uint32 [P, dim]."""
    nb = -(-dim // 16)
    return _blocks(keys, nb).reshape(keys.shape[0], nb * 16)[:, :dim]


@functools.partial(jax.jit, static_argnames=("dim", "batch_size"))
def signed_mask_sums(keys, signs, dim: int, batch_size: int = 8):
    """Per-row signed sums of keystreams, modulo 2^32.

    keys uint32 [R, M, 8], signs int32 [R, M] (+1, -1, or 0 for a padding slot) ->
    uint32 [R, dim] with row r = sum_m signs[r, m] * keystream(keys[r, m]) mod 2^32.
    lax.map over rows in vmapped groups of batch_size bounds the live keystreams to
    batch_size * M * dim words (a 1000-client cohort's masks would not fit at once)."""

    def row(k, s):
        return jnp.sum(keystream(k, dim) * s.astype(jnp.uint32)[:, None], axis=0, dtype=jnp.uint32)

    return jax.lax.map(lambda a: row(*a), (keys, signs), batch_size=batch_size)
