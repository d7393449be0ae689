"""The per-deployment privacy ledger against direct dp-accounting computations."""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen.algorithms import fedmix as fm
from fedjax_gen.privacy import ledger as L


def _direct(zs, delta=1e-5):
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in zs]))
    return acc.get_epsilon(delta)


def test_epsilon_matches_dp_accounting_and_composes():
    led = L.Ledger("d", "example", 1e-5, 10.0)
    led = L.charge(led, L.Release("r1", 4.0, 1.7, count=2))
    assert L.epsilon(led) == pytest.approx(_direct([4.0, 4.0]), rel=1e-6)
    led = L.charge(led, L.Release("r2", 2.0, 1.7))  # an extra release composes with the spent
    assert L.epsilon(led) == pytest.approx(_direct([4.0, 4.0, 2.0]), rel=1e-6)
    assert L.remaining(led) == pytest.approx(10.0 - _direct([4.0, 4.0, 2.0]), rel=1e-6)
    rdp = L.Ledger("d", "example", 1e-5, 10.0, accountant="rdp", releases=led.releases)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(4.0), 2)
    acc.compose(dp_accounting.GaussianDpEvent(2.0))
    assert L.epsilon(rdp) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_refuses_over_budget_with_remaining_in_message_and_accepts_a_fit():
    led = L.charge(L.Ledger("d", "example", 1e-5, 1.5), L.Release("r1", 5.0, 1.0))
    left = 1.5 - _direct([5.0])
    with pytest.raises(L.BudgetExceeded) as e:
        L.charge(led, L.Release("big", 1.0, 1.0))
    assert f"{left:.4g}" in str(e.value) and e.value.remaining == pytest.approx(left, rel=1e-6)
    # the largest release that fits: calibrated to the remaining budget via the equivalence
    # of composed Gaussians (z_total^-2 = sum z_i^-2)
    z_tot = fm.accounting.calibrate_noise_multiplier(1.5, 1e-5, 1.0, 1, "pld")
    z_new = (z_tot ** -2 - 5.0 ** -2) ** -0.5 * 1.001
    led2 = L.charge(led, L.Release("fits", z_new, 1.0))
    assert L.epsilon(led2) <= 1.5
    with pytest.raises(L.UserError):
        L.charge(led, L.Release("x", 5.0, 1.0), unit="user")


def test_save_load_roundtrip_and_sampling_leaves_ledger_unchanged(tmp_path):
    path = tmp_path / "ledger.json"
    cfg = fm.FedmixConfig((8, 8, 1), 2, dct_k=3, rounds=1, budget_split=(1.0,))
    z = fm.calibrate(cfg, 1.0, 1e-5)
    led = L.open_ledger(path, deployment="dep", unit="example", delta=1e-5, budget=2.0)
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1)).astype(np.uint8)
    y = np.arange(20) % 2
    b = jnp.asarray(fm.basis(cfg))
    led = L.charge(led, L.Release("round1", z[0], cfg.sensitivity))
    rel = fm.release(fm.client_stat(cfg, b, None, x, y, jnp.ones(20, bool)), z[0] * cfg.sensitivity, jax.random.key(0))
    L.save(led, path)
    before = path.read_bytes()
    m = fm.fit(cfg, rel, 1)
    for s in range(3):  # any number of synthetic sets: post-processing
        fm.sample(cfg, b, m, np.arange(10) % 2, jax.random.key(s))
    assert path.read_bytes() == before
    again = L.open_ledger(path, deployment="dep", unit="example", delta=1e-5, budget=2.0)
    assert again == led and L.epsilon(again) == pytest.approx(_direct(list(z)), rel=1e-6)
    with pytest.raises(L.UserError):
        L.open_ledger(path, deployment="dep", unit="user", delta=1e-5, budget=2.0)


def test_fedmix_ledger_entries_carry_each_rounds_sensitivity():
    cfg = fm.FedmixConfig((8, 8, 1), 2, dct_k=3, count_weight=0.3)
    z = fm.calibrate(cfg, 1.0, 1e-5)
    entries = fm.ledger_releases(cfg, z)
    assert [e.sensitivity for e in entries] == [cfg.round_sensitivity(r) for r in range(3)]
    assert entries[0].sensitivity > entries[1].sensitivity  # round 1 also carries the second moment
    led = L.charge(L.Ledger("d", "example", 1e-5, 1.0), *entries)
    assert L.epsilon(led) == pytest.approx(_direct(list(z)), rel=1e-6) and L.epsilon(led) <= 1.0
