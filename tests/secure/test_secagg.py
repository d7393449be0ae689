"""SecAgg / SecAgg+: exact sums mod 2^b with and without dropouts, loud failure beyond the
threshold, the isolation defence, and a masked upload that is uniform and input-blind."""

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from scipy import stats

from fedjax_gen.secure import secagg

DIM, BITS = 21, 16


def _run(n, cfg, x, before=(), after=(), announced=None, seed=0):
    co = secagg.advertise(n, cfg, graph_seed=seed, secret_seed=seed)
    secagg.share_keys(co)
    up = np.ones(n, bool)
    up[list(before)] = False
    y = secagg.mask_inputs(co, x, up)
    resp = [i for i in range(n) if up[i] and i not in after]
    u2 = np.flatnonzero(up) if announced is None else announced
    return co, y, secagg.unmask(co, y, u2, resp), up


def _inputs(n, seed=0):
    return np.random.default_rng(seed).integers(0, 2**BITS, (n, DIM)).astype(np.uint32)


def _expected(x, up):
    return x[up].astype(np.int64).sum(0) % 2**BITS


@pytest.mark.parametrize("prg", ["xla", "openssl"])
def test_complete_graph_sum_is_exact_mod_2b(prg):
    x = _inputs(6)
    co, y, s, up = _run(6, secagg.ProtocolConfig(bits=BITS, threshold=4, prg=prg), x)
    np.testing.assert_array_equal(s, _expected(x, up))
    assert not np.array_equal(y, x)  # the server did not receive the inputs


def test_dropouts_up_to_n_minus_t_are_recovered_and_beyond_fail_loudly():
    x = _inputs(6)
    cfg = secagg.ProtocolConfig(bits=BITS, threshold=4)
    # one drops before upload (its pairwise masks are unmasked via its key), one after
    # (its self mask via its seed): 2 = n - t dropouts
    _, _, s, up = _run(6, cfg, x, before=[1], after=[4])
    np.testing.assert_array_equal(s, _expected(x, up))
    _, _, s, up = _run(6, cfg, x, after=[0, 5])
    np.testing.assert_array_equal(s, _expected(x, up))
    with pytest.raises(secagg.DropoutError, match="threshold 4"):
        _run(6, cfg, x, before=[1], after=[2, 3])


def test_sparse_secagg_plus_graph_is_regular_symmetric_and_sums_exactly():
    g = secagg.neighbour_graph(12, 4, seed=3)
    assert g.shape == (12, 4) and all(i in g[j] for i in range(12) for j in g[i]) and all(i not in g[i] for i in range(12))
    x = _inputs(12, 1)
    cfg = secagg.ProtocolConfig(bits=BITS, degree=4, threshold=3)
    _, _, s, up = _run(12, cfg, x, before=[g[0][0]], after=[g[5][1]], seed=3)
    np.testing.assert_array_equal(s, _expected(x, up))
    # a client with two of its five share holders (itself and 4 neighbours) gone can still be
    # unmasked (t = 3); with three gone it cannot
    with pytest.raises(secagg.DropoutError):
        _run(12, cfg, x, before=[0], after=list(g[0][:3]), seed=3)


def test_isolating_a_target_is_refused_by_the_clients():
    x = _inputs(6)
    cfg = secagg.ProtocolConfig(bits=BITS, threshold=4, min_cohort=4)
    with pytest.raises(secagg.UnmaskRefused):  # server claims only client 2 uploaded
        _run(6, cfg, x, announced=[2])


def test_pairwise_seeds_agree_and_shares_are_authenticated():
    co = secagg.advertise(4, secagg.ProtocolConfig(bits=BITS), secret_seed=0)
    a, b = co.clients[0], co.clients[3]
    assert secagg._mask_seed(a.s_sk, b.s_pk) == secagg._mask_seed(b.s_sk, a.s_pk)
    secagg.share_keys(co)
    blob = bytearray(co.ciphertexts[(0, 3)])
    blob[-1] ^= 1
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    with pytest.raises(InvalidTag):
        ChaCha20Poly1305(secagg._enc_key(b.c_sk, a.c_pk)).decrypt(bytes(blob[:12]), bytes(blob[12:]), None)


def test_one_masked_upload_is_uniform_and_independent_of_its_input():
    dim, bits, n = 8192, 8, 5
    cfg = secagg.ProtocolConfig(bits=bits)
    views = []
    for value in (0, 200):  # the same client, all-zero input vs a constant input
        x = np.zeros((n, dim), np.uint32)
        x[2] = value
        co = secagg.advertise(n, cfg, secret_seed=7 + value)
        secagg.share_keys(co)
        views.append(secagg.mask_inputs(co, x, np.ones(n, bool))[2])
    for v in views:  # chi-square goodness of fit to uniform on Z_256
        counts = np.bincount(v, minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-3
    table = np.stack([np.bincount(v, minlength=256) for v in views])
    assert stats.chi2_contingency(table).pvalue > 1e-3  # same law whatever the input
    # and no correlation with the input across coordinates either
    x = np.random.default_rng(0).integers(0, 256, dim)
    xs = np.zeros((n, dim), np.uint32)
    xs[2] = x
    co = secagg.advertise(n, cfg, secret_seed=11)
    secagg.share_keys(co)
    y = secagg.mask_inputs(co, xs, np.ones(n, bool))[2]
    assert abs(stats.pearsonr(x, y.astype(float))[0]) < 4 / np.sqrt(dim)


def test_protocol_bytes_are_the_objects_exchanged():
    n, k = 6, 5
    co = secagg.advertise(n, secagg.ProtocolConfig(bits=BITS, threshold=4), secret_seed=0)
    secagg.share_keys(co)
    b = secagg.protocol_bytes(co, DIM, np.ones(n, bool), range(n))
    ct = secagg.ID_BYTES + secagg.NONCE_BYTES + secagg.SHARE_PLAINTEXT_BYTES + secagg.TAG_BYTES
    assert set(b["shares_up"]) == {k * ct} and set(b["advertise_down"]) == {k * 68}
    assert set(b["masked_up"]) == {-(-DIM * BITS // 8)} and set(b["unmask_up"]) == {(k + 1) * 36}
    assert set(b["total_up"]) == {64 + k * ct + 42 + (k + 1) * 36}
