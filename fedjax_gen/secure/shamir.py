"""Shamir t-of-m secret sharing over the prime field F_p, p = 2^255 - 19.

Written here (python ints) because it is twenty lines of textbook algebra and
`cryptography` does not ship it; the field is Curve25519's, so a 32-byte secret (a
self-mask seed, or an X25519 private key with its top bit cleared, which X25519's clamping
clears anyway) is one field element and a share is 32 bytes.

share(secret, t, xs): a random polynomial f of degree t - 1 with f(0) = secret; share j
is f(xs[j]). Any t shares determine f(0) by Lagrange interpolation; any t - 1 shares are
uniformly distributed whatever the secret (perfect secrecy).
"""

from __future__ import annotations

import secrets as _secrets
from typing import Sequence

P = 2**255 - 19
SHARE_BYTES = 32


class NotEnoughShares(ValueError):
    """Fewer than the threshold t shares were given: the secret is information-theoretically hidden."""


def share(secret: int, threshold: int, xs: Sequence[int], rng=None) -> list[int]:
    """Shares f(x) for x in xs (distinct, nonzero mod p) of a degree threshold-1 polynomial
    with f(0) = secret. rng: a `random.Random`-like object with getrandbits (tests only:
    reproducible); None uses the OS CSPRNG."""
    if not 0 <= secret < P:
        raise ValueError("secret must be a field element in [0, p)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}] shares, got {threshold}")
    draw = (lambda: rng.getrandbits(256) % P) if rng is not None else (lambda: _secrets.randbelow(P))
    coeffs = [secret] + [draw() for _ in range(threshold - 1)]
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % P
        out.append(acc)
    return out


def reconstruct(points: Sequence[tuple[int, int]], threshold: int) -> int:
    """f(0) from (x, f(x)) pairs; uses the first `threshold` of them."""
    if len(points) < threshold:
        raise NotEnoughShares(f"{len(points)} shares given, {threshold} needed")
    pts = list(points)[:threshold]
    total = 0
    for j, (xj, yj) in enumerate(pts):
        num, den = 1, 1
        for m, (xm, _) in enumerate(pts):
            if m != j:
                num = num * xm % P
                den = den * (xm - xj) % P
        total = (total + yj * num * pow(den, -1, P)) % P
    return total


def to_bytes(v: int) -> bytes:
    return v.to_bytes(SHARE_BYTES, "little")


def from_bytes(b: bytes) -> int:
    return int.from_bytes(b, "little")
