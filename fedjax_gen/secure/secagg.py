"""Secure aggregation of integer vectors mod 2^b: Bonawitz et al. (CCS 2017), with the
sparse neighbour graph of SecAgg+ (Bell et al., CCS 2020). Honest-but-curious server;
every client is simulated here, one Python object per client for the key material and one
jitted call for the whole cohort's masking.

Rounds (client i, neighbours N(i) in a k-regular graph; k = n - 1 is the original SecAgg):
  0 advertise  two X25519 key pairs: c_i (encrypts shares), s_i (agrees mask seeds).
  1 share      a self-mask seed b_i; t-of-(k+1) Shamir shares of s_i's private key and of
               b_i to H(i) = {i} + N(i); each neighbour's pair of shares is encrypted with
               ChaCha20-Poly1305 under HKDF(X25519(c_i, c_j)) and routed by the server,
               which cannot read it.
  2 upload     y_i = x_i + PRG(b_i) + sum_{j in N(i)} sign(i, j) PRG(s_ij) mod 2^b, with
               s_ij = HKDF(X25519(s_i, s_j)) = s_ji and sign(i, j) = +1 if i < j else -1,
               so pairwise masks cancel between two uploaders.
  3 unmask     the server announces who uploaded (U2). A responding client refuses if
               |U2| < min_cohort (a server cannot isolate a target by claiming the others
               dropped); otherwise, for each client whose shares it holds, it returns the
               b share if that client uploaded, else the s share -- never both, so the
               server never learns both secrets of one client. The server reconstructs
               b_i for every uploader and s_i for every client that dropped before upload,
               removes PRG(b_i) and the orphaned pairwise masks, and has sum_{U2} x_i.
               It needs t responders in every H(i) concerned: otherwise DropoutError.
Dropout tolerance: any clients may drop as long as every needed H(i) keeps t responders
(complete graph: up to n - t dropouts). Privacy: the server plus fewer than t colluding
clients learns nothing about an honest uploader's x_i beyond the sum (each masked upload is
uniform on Z_{2^b}^dim given everything they hold), provided the graph connects honest
clients -- for k < n - 1, with high probability over a random graph as Bell et al. analyse
(not re-derived here: choose k from their tables). The server announcing different U2 to
different clients is not detected (that needs the signed consistency round of the
malicious-server variant, not implemented).
PRG: ChaCha20 keystreams (chacha.py) keyed by the 32-byte seeds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import struct

import jax
import jax.numpy as jnp
import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedjax_gen.secure import chacha, shamir
from fedjax_gen.secure.quantize import modulus_mask, ring_sum, upload_bytes

PUBLIC_KEY_BYTES = 32
ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
SHARE_PLAINTEXT_BYTES = 2 * ID_BYTES + 2 * shamir.SHARE_BYTES
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SecAggAbort(RuntimeError):
    """The protocol cannot (or must not) produce the sum."""


class DropoutError(SecAggAbort):
    """Too many clients dropped: some secret has fewer than t share holders responding."""


class UnmaskRefused(SecAggAbort):
    """Honest clients refused to unmask: the server announced fewer than min_cohort uploaders."""


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """bits: the ring Z_{2^b}; degree k: neighbours per client (None or n - 1: complete
    graph, SecAgg; even k < n - 1: SecAgg+ Harary graph on a random relabelling);
    threshold t: shares (of k + 1) that reconstruct a secret (None: a strict majority,
    (k + 1) // 2 + 1); min_cohort: uploaders below which clients refuse to unmask (None: t);
    prg: "xla" (jitted ChaCha20 over the cohort), "openssl" (cryptography's ChaCha20, one
    key at a time; same keystream), or "auto": openssl on the CPU backend (its SIMD
    ChaCha20 measured 5-16x faster than XLA:CPU's, benchmarks/README.md), xla on accelerators."""

    bits: int = 32
    degree: int | None = None
    threshold: int | None = None
    min_cohort: int | None = None
    prg: str = "auto"
    mask_batch: int = 8  # clients per vmapped group in the masking call (memory)

    def resolved(self, n: int) -> "ProtocolConfig":
        k = n - 1 if self.degree is None else int(self.degree)
        if not 1 <= k <= n - 1:
            raise ValueError(f"degree must be in [1, {n - 1}] for {n} clients, got {k}")
        if k < n - 1 and k % 2:
            raise ValueError(f"a SecAgg+ Harary graph needs an even degree < n - 1, got {k}")
        t = (k + 1) // 2 + 1 if self.threshold is None else int(self.threshold)
        if not 1 <= t <= k + 1:
            raise ValueError(f"threshold must be in [1, {k + 1}] (degree + 1 shares), got {t}")
        m = t if self.min_cohort is None else int(self.min_cohort)
        if self.prg not in ("auto", "xla", "openssl"):
            raise ValueError(f"prg must be auto, xla or openssl, got {self.prg!r}")
        prg = self.prg if self.prg != "auto" else ("openssl" if jax.default_backend() == "cpu" else "xla")
        modulus_mask(self.bits)
        return dataclasses.replace(self, degree=k, threshold=t, min_cohort=m, prg=prg)


def neighbour_graph(n: int, degree: int, seed: int) -> np.ndarray:
    """[n, k] neighbour ids, symmetric. k = n - 1: everyone else; else a Harary graph
    H(k, n) (ring positions p +- 1..k/2) on a random permutation of the clients, as in
    Bell et al. The permutation's seed must not be the server's choice alone in a real
    deployment (public randomness)."""
    if degree == n - 1:
        return np.array([[j for j in range(n) if j != i] for i in range(n)], np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    pos = np.empty(n, np.int64)
    pos[perm] = np.arange(n)
    offs = np.concatenate([np.arange(1, degree // 2 + 1), -np.arange(1, degree // 2 + 1)])
    return perm[(pos[:, None] + offs[None, :]) % n]


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


class _Rand:
    """Secret randomness: the OS CSPRNG, or a seeded generator for reproducible tests
    (NOT secure: anyone with the seed has every key)."""

    def __init__(self, seed: int | None):
        self._r = None if seed is None else random.Random(seed)

    def bytes(self, n: int) -> bytes:
        return os.urandom(n) if self._r is None else self._r.getrandbits(8 * n).to_bytes(n, "little")

    def field(self) -> int:
        while True:  # rejection: a uniform element of [0, 2^255 - 19)
            v = int.from_bytes(self.bytes(32), "little") & ((1 << 255) - 1)
            if v < shamir.P:
                return v

    def shamir_rng(self):
        return self._r


@dataclasses.dataclass
class Client:
    """One client's key material (mutable: filled in round by round)."""

    index: int
    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    s_raw: int  # s_sk's private scalar bytes as a field element (what is Shamir-shared)
    b: int  # self-mask seed (field element)
    c_pk: bytes = b""
    s_pk: bytes = b""
    held: dict = dataclasses.field(default_factory=dict)  # owner id -> (s share, b share) this client holds


@dataclasses.dataclass
class Cohort:
    cfg: ProtocolConfig
    neighbours: np.ndarray  # [n, k]
    clients: list
    ciphertexts: dict  # (sender, receiver) -> nonce + ciphertext, what the server routed

    @property
    def n(self) -> int:
        return len(self.clients)


def _private_key(rand: _Rand) -> tuple[X25519PrivateKey, int]:
    while True:
        raw = bytearray(rand.bytes(32))
        raw[31] &= 0x7F  # X25519 clamps bit 255 away anyway; keeps the scalar a field element
        v = int.from_bytes(raw, "little")
        if v < shamir.P:
            return X25519PrivateKey.from_private_bytes(bytes(raw)), v


def advertise(n: int, cfg: ProtocolConfig, graph_seed: int = 0, secret_seed: int | None = None) -> Cohort:
    """Round 0: every client's key pairs and self-mask seed; the neighbour graph."""
    cfg = cfg.resolved(n)
    rand = _Rand(secret_seed)
    clients = []
    for i in range(n):
        c_sk, _ = _private_key(rand)
        s_sk, s_raw = _private_key(rand)
        cl = Client(i, c_sk, s_sk, s_raw, rand.field())
        cl.c_pk = c_sk.public_key().public_bytes(*_RAW)
        cl.s_pk = s_sk.public_key().public_bytes(*_RAW)
        clients.append(cl)
    cohort = Cohort(cfg, neighbour_graph(n, cfg.degree, graph_seed), clients, {})
    cohort._rand = rand
    return cohort


def _enc_key(own: X25519PrivateKey, peer_pk: bytes) -> bytes:
    return _hkdf(own.exchange(X25519PublicKey.from_public_bytes(peer_pk)), b"fedjax_gen secagg share encryption")


def client_share(cohort: Cohort, i: int) -> dict:
    """Round 1, client i's side: Shamir shares of (s_i, b_i) to H(i) (its own kept locally),
    each neighbour's encrypted: {(i, j): nonce + ciphertext} for the server to route."""
    t, rand, cl = cohort.cfg.threshold, cohort._rand, cohort.clients[i]
    holders = [i] + [int(j) for j in cohort.neighbours[i]]
    xs = [h + 1 for h in holders]  # nonzero, distinct evaluation points
    s_sh = shamir.share(cl.s_raw, t, xs, rand.shamir_rng())
    b_sh = shamir.share(cl.b, t, xs, rand.shamir_rng())
    cl.held[i] = (s_sh[0], b_sh[0])
    out = {}
    for h, ss, bs in zip(holders[1:], s_sh[1:], b_sh[1:]):
        plain = struct.pack("<II", i, h) + shamir.to_bytes(ss) + shamir.to_bytes(bs)
        nonce = rand.bytes(NONCE_BYTES)
        out[(i, h)] = nonce + ChaCha20Poly1305(_enc_key(cl.c_sk, cohort.clients[h].c_pk)).encrypt(nonce, plain, None)
    return out


def client_receive(cohort: Cohort, sender: int, receiver: int, blob: bytes) -> None:
    """Round 1, the receiver's side: decrypt (authenticating both ids) and keep the shares."""
    rc = cohort.clients[receiver]
    key = _enc_key(rc.c_sk, cohort.clients[sender].c_pk)
    plain = ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
    i, j = struct.unpack("<II", plain[: 2 * ID_BYTES])
    if (i, j) != (sender, receiver):
        raise SecAggAbort(f"share routed to the wrong client: says {(i, j)}, arrived as {(sender, receiver)}")
    off = 2 * ID_BYTES
    rc.held[sender] = (shamir.from_bytes(plain[off : off + 32]), shamir.from_bytes(plain[off + 32 :]))


def share_keys(cohort: Cohort) -> None:
    """Round 1 for the whole cohort: every client shares, the server routes, every receiver decrypts."""
    for i in range(cohort.n):
        cohort.ciphertexts.update(client_share(cohort, i))
    for (sender, receiver), blob in cohort.ciphertexts.items():
        client_receive(cohort, sender, receiver, blob)


def _mask_seed(own: X25519PrivateKey, peer_pk: bytes) -> bytes:
    return _hkdf(own.exchange(X25519PublicKey.from_public_bytes(peer_pk)), b"fedjax_gen secagg pairwise mask")


def _self_seed(b: int) -> bytes:
    return _hkdf(shamir.to_bytes(b), b"fedjax_gen secagg self mask")


def _sign(i: int, j: int) -> int:
    return 1 if i < j else -1


def client_mask_keys(cohort: Cohort, i: int) -> tuple[np.ndarray, np.ndarray]:
    """What client i derives for its mask: keys uint32 [k + 1, 8] (self first), signs [k + 1]."""
    cl = cohort.clients[i]
    keys = [chacha.key_words(_self_seed(cl.b))]
    signs = [1]
    for j in cohort.neighbours[i]:
        keys.append(chacha.key_words(_mask_seed(cl.s_sk, cohort.clients[int(j)].s_pk)))
        signs.append(_sign(i, int(j)))
    return np.stack(keys), np.asarray(signs, np.int32)


def _signed_sums(keys: np.ndarray, signs: np.ndarray, dim: int, cfg: ProtocolConfig) -> np.ndarray:
    """[R, M, 8], [R, M] -> uint32 [R, dim] signed keystream sums (either PRG backend)."""
    if cfg.prg == "xla":
        return np.asarray(chacha.signed_mask_sums(jnp.asarray(keys), jnp.asarray(signs), dim, cfg.mask_batch))
    out = np.zeros((keys.shape[0], dim), np.uint32)
    zeros = bytes(4 * dim)
    for r in range(keys.shape[0]):
        for m in range(keys.shape[1]):
            if signs[r, m]:
                enc = Cipher(algorithms.ChaCha20(keys[r, m].astype("<u4").tobytes(), bytes(16)), mode=None).encryptor()
                out[r] += np.frombuffer(enc.update(zeros), "<u4") * np.uint32(int(signs[r, m]) % 2**32)
    return out


def mask_inputs(cohort: Cohort, inputs, uploaded: np.ndarray) -> np.ndarray:
    """Round 2: y_i for every client (rows of non-uploaders are zero): uint32 [n, dim].
    inputs: uint32 [n, dim] residues mod 2^b. Key derivation per client on the host, then
    one vectorised call masks the whole cohort."""
    inputs = np.asarray(inputs, np.uint32)
    n, dim = inputs.shape
    ks, ss = zip(*(client_mask_keys(cohort, i) for i in range(n)))
    masks = _signed_sums(np.stack(ks), np.stack(ss), dim, cohort.cfg)
    y = (inputs + masks) & np.uint32(modulus_mask(cohort.cfg.bits))
    return np.where(np.asarray(uploaded, bool)[:, None], y, np.uint32(0))


def unmask(cohort: Cohort, masked: np.ndarray, announced_uploaded, responders) -> np.ndarray:
    """Round 3: the server's sum over the announced uploaders U2, mod 2^b: uint32 [dim].

    announced_uploaded: the U2 the server tells clients (an honest server: who uploaded);
    responders: the clients still online (U3). Raises UnmaskRefused if |U2| < min_cohort,
    DropoutError if some needed secret has fewer than t responding holders."""
    cfg, n = cohort.cfg, cohort.n
    u2 = sorted(set(int(i) for i in announced_uploaded))
    u3 = set(int(i) for i in responders) & set(range(n))
    if len(u2) < cfg.min_cohort:
        raise UnmaskRefused(f"the server announced {len(u2)} uploaders, fewer than the {cfg.min_cohort} "
                            "clients require before unmasking: no client responds")
    u2set = set(u2)
    # each responder j answers for every owner whose shares it holds: b if uploaded, else s
    answers: dict[int, list] = {}
    for j in sorted(u3):
        for owner, (s_sh, b_sh) in cohort.clients[j].held.items():
            answers.setdefault(owner, []).append((j + 1, b_sh if owner in u2set else s_sh))
    keys, signs = [], []
    for i in u2:
        pts = answers.get(i, [])
        if len(pts) < cfg.threshold:
            raise DropoutError(f"client {i}'s self-mask seed has {len(pts)} responding share holders, "
                               f"threshold {cfg.threshold}: too many dropouts to unmask")
        keys.append(chacha.key_words(_self_seed(shamir.reconstruct(pts, cfg.threshold))))
        signs.append(-1)
    for i in sorted(set(range(n)) - u2set):
        live = [int(j) for j in cohort.neighbours[i] if int(j) in u2set]
        if not live:
            continue  # none of its pairwise masks is in the sum
        pts = answers.get(i, [])
        if len(pts) < cfg.threshold:
            raise DropoutError(f"dropped client {i}'s mask key has {len(pts)} responding share holders, "
                               f"threshold {cfg.threshold}: too many dropouts to unmask")
        raw = shamir.reconstruct(pts, cfg.threshold).to_bytes(32, "little")
        s_i = X25519PrivateKey.from_private_bytes(raw)
        for j in live:  # uploader j added sign(j, i) PRG(s_ji); remove it
            keys.append(chacha.key_words(_mask_seed(s_i, cohort.clients[j].s_pk)))
            signs.append(-_sign(j, i))
    total = ring_sum(jnp.asarray(masked[u2]), cfg.bits)
    m = 16  # keys per row of the correction call
    pad = -len(keys) % m
    k_arr = np.concatenate([np.stack(keys), np.zeros((pad, 8), np.uint32)]).reshape(-1, m, 8)
    s_arr = np.concatenate([np.asarray(signs, np.int32), np.zeros(pad, np.int32)]).reshape(-1, m)
    corr = ring_sum(jnp.asarray(_signed_sums(k_arr, s_arr, masked.shape[1], cfg)), cfg.bits)
    return np.asarray((total + corr) & modulus_mask(cfg.bits))


def protocol_bytes(cohort: Cohort, dim: int, uploaded, responders) -> dict[str, np.ndarray]:
    """Bytes each client sends (up) and receives (down) per round: int64 [n] arrays,
    counted from the objects exchanged (ciphertext lengths) plus fixed-size fields."""
    n, cfg = cohort.n, cohort.cfg
    uploaded, u3 = np.asarray(uploaded, bool), set(int(i) for i in responders)
    deg = np.array([len(r) for r in cohort.neighbours])
    up_sh, down_sh = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for (s, r), blob in cohort.ciphertexts.items():
        up_sh[s] += ID_BYTES + len(blob)  # receiver id + nonce + ciphertext + tag
        down_sh[r] += ID_BYTES + len(blob)
    held = np.array([len(c.held) for c in cohort.clients])  # shares it holds, its own included
    resp = np.array([i in u3 for i in range(n)])
    out = {
        "advertise_up": np.full(n, 2 * PUBLIC_KEY_BYTES, np.int64),
        "advertise_down": deg * (ID_BYTES + 2 * PUBLIC_KEY_BYTES),
        "shares_up": up_sh,
        "shares_down": down_sh,
        "masked_up": np.where(uploaded, upload_bytes(dim, cfg.bits), 0),
        "unmask_down": np.where(resp, -(-n // 8), 0),  # the uploader bitmap
        "unmask_up": np.where(resp, held * (ID_BYTES + shamir.SHARE_BYTES), 0),  # incl. its own
    }
    out["total_up"] = sum(v for k, v in out.items() if k.endswith("_up"))
    out["total_down"] = sum(v for k, v in out.items() if k.endswith("_down") and k != "total_up")
    return out
