"""The per-deployment privacy ledger against direct dp-accounting computations; the ledger file
as a locked transaction charged before any release, and noise that never repeats under it."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_gen import cli
from fedjax_gen.algorithms import dct_gmm as fm
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
    cfg = fm.DctGmmConfig((8, 8, 1), 2, dct_k=3, rounds=1, budget_split=(1.0,))
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


def test_dct_gmm_ledger_entries_carry_each_rounds_sensitivity():
    cfg = fm.DctGmmConfig((8, 8, 1), 2, dct_k=3, count_weight=0.3)
    z = fm.calibrate(cfg, 1.0, 1e-5)
    entries = fm.ledger_releases(cfg, z)
    assert [e.sensitivity for e in entries] == [cfg.round_sensitivity(r) for r in range(3)]
    assert entries[0].sensitivity > entries[1].sensitivity  # round 1 also carries the second moment
    led = L.charge(L.Ledger("d", "example", 1e-5, 1.0), *entries)
    assert L.epsilon(led) == pytest.approx(_direct(list(z)), rel=1e-6) and L.epsilon(led) <= 1.0


def test_the_private_clip_is_charged_with_the_rounds_and_they_compose_to_the_epsilon():
    """The clip's histogram is a release of its own (sensitivity 1, multiplier z / sqrt(share));
    with the rounds' it composes to exactly the requested epsilon (dp_accounting's PLD)."""
    cfg = fm.DctGmmConfig((8, 8, 1), 2, dct_k=3, count_weight=0.3, clip_quantile=0.5, clip_share=0.1,
                          budget_split=(2.0, 1.0, 1.0))
    z_eff = fm.accounting.calibrate_noise_multiplier(1.0, 1e-5, 1.0, 1, "pld")
    rounds = fm.calibrate(cfg, 1.0, 1e-5)
    entries = fm.ledger_releases(cfg, rounds, z_eff / math.sqrt(0.1))
    assert [e.name for e in entries] == ["dct_gmm clip histogram"] + [f"dct_gmm round {r}" for r in (1, 2, 3)]
    assert entries[0].sensitivity == 1.0
    assert sum(e.noise_multiplier ** -2 for e in entries) == pytest.approx(z_eff ** -2)  # the shares sum to 1
    led = L.charge(L.Ledger("d", "example", 1e-5, 2.0), *entries)
    assert L.epsilon(led) == pytest.approx(1.0, abs=0.02)
    assert L.epsilon(led) == pytest.approx(_direct([e.noise_multiplier for e in entries]), rel=1e-6)


# --- the ledger file as a transaction --------------------------------------------------------
def _request(path, eps_alone: float, budget: float = 2.0, name="r"):
    """A one-release request whose epsilon alone is `eps_alone` (pld, delta 1e-5)."""
    z = fm.accounting.calibrate_noise_multiplier(eps_alone, 1e-5, 1.0, 1, "pld")
    return L.Request(str(path), (L.Release(name, z, 1.0),), "example", 1e-5, budget)


def test_transaction_records_every_attempt_and_charges_a_run_once(tmp_path):
    path = tmp_path / "l.json"
    req = _request(path, 1.5)
    led = L.transact(req, run="/runs/a", run_id="A")
    assert [(a.status, a.run_id) for a in led.attempts] == [("charged", "A")]
    assert L.epsilon(led) == pytest.approx(_direct([req.releases[0].noise_multiplier]), rel=1e-6)
    assert L.transact(req, run="/runs/a", run_id="A") == L.load(path)  # a resumed run: not charged twice
    assert len(L.load(path).releases) == 1
    before = L.load(path)
    with pytest.raises(L.BudgetExceeded):
        L.transact(req, run="/runs/b", run_id="B")
    after = L.load(path)
    assert after.releases == before.releases  # nothing spent ...
    assert [(a.status, a.run_id) for a in after.attempts] == [("charged", "A"), ("refused", "B")]  # ... on record
    assert after.attempts[1].epsilon > 2.0 and after.attempts[1].pid == os.getpid()
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))  # strict JSON


def test_preflight_refuses_unusable_paths_before_anything_is_written(tmp_path):
    missing = tmp_path / "nope" / "l.json"
    with pytest.raises(L.LedgerError, match="does not exist"):
        L.preflight(_request(missing, 0.5))
    for text, needle in (("{not json", "not JSON"), ('{"hello": 1}', "not a fedjax_gen ledger"),
                         ("[1, 2]", "not a fedjax_gen ledger"), ('{"deployment": "d", "unit": "galaxy", '
                                                                   '"delta": 1e-5, "budget": 1}', "not a fedjax_gen")):
        p = tmp_path / "bad.json"
        p.write_text(text)
        with pytest.raises(L.LedgerError, match=needle) as e:
            L.preflight(_request(p, 0.5))
        assert "\n" not in str(e.value) and e.value.param == "ledger"
        assert p.read_text() == text
    with pytest.raises(L.LedgerError, match="not a file"):
        L.preflight(_request(tmp_path, 0.5))
    assert sorted(os.listdir(tmp_path)) == ["bad.json"]  # no lock file, no temporary
    # a request that fits writes nothing; one that does not is refused, and on record
    ok = tmp_path / "ok.json"
    L.preflight(_request(ok, 1.5))
    assert not ok.exists()
    L.transact(_request(ok, 1.5), run_id="A")
    with pytest.raises(L.BudgetExceeded):
        L.preflight(_request(ok, 1.5), run="/runs/b")
    assert [a.status for a in L.load(ok).attempts] == ["charged", "refused"]


_WORKER = textwrap.dedent("""
    import sys, time
    from fedjax_gen.privacy import ledger as L
    path, z, start, run = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    req = L.Request(path, (L.Release("r", z, 1.0),), "example", 1e-5, 2.0)
    while time.time() < start:  # every process asks at the same instant
        time.sleep(0.001)
    try:
        L.transact(req, run=run, run_id=run)
        print("charged")
    except L.BudgetExceeded:
        print("refused")
""")


def test_concurrent_processes_never_overspend_and_every_attempt_is_on_record(tmp_path):
    """Four processes ask at once for a release of epsilon 1.5 each against a budget of 2:
    exactly one is charged, the other three are refused, and all four are in the ledger."""
    path = tmp_path / "l.json"
    z = _request(path, 1.5).releases[0].noise_multiplier
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), repr(z), repr(start), f"run{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    said = sorted(o[0].strip() for o in outs)
    assert said == ["charged", "refused", "refused", "refused"]
    led = L.load(path)
    assert len(led.releases) == 1 and L.epsilon(led) <= 2.0
    assert sorted(a.status for a in led.attempts) == said
    assert sorted(a.run for a in led.attempts) == [f"run{i}" for i in range(4)]


# --- through dct_gmm's CLI: noise that never repeats, a charge before any release ----------------
DCT_GMM = cli.main_for("dct_gmm")
TINY_DCT_GMM = ["--dataset", "digits", "--clients", "10", "--max-train", "300", "--em-rounds", "1",
               "--num-synthetic", "200", "--eval", "none", "--no-progress", "--save-uploads", "0", "--dp", "example"]
EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "dct_gmm.py")


def _dct_gmm(tmp_path, name, extra, capsys=None):
    out = tmp_path / name
    code = cli.run(DCT_GMM, TINY_DCT_GMM + ["--out", str(out)] + extra)
    err = capsys.readouterr().err.strip() if capsys is not None else ""
    if code:
        return code, err, None, None
    return code, err, np.load(out / "synthetic.npz")["x"], json.loads((out / "results.json").read_text())


def test_ledger_releases_never_repeat_noise_and_a_study_stays_reproducible(tmp_path):
    ledger = ["--epsilon", "0.5", "--ledger", str(tmp_path / "site.json"), "--budget", "2"]
    _, _, xa, ra = _dct_gmm(tmp_path, "a", ledger)
    _, _, xb, rb = _dct_gmm(tmp_path, "b", ledger)
    assert not np.array_equal(xa, xb)  # same --seed, same data: only the release's noise differs
    assert ra["privacy"]["noise_source"].startswith("fresh") and rb["privacy"]["noise_source"].startswith("fresh")
    assert [a.status for a in L.load(tmp_path / "site.json").attempts] == ["charged", "charged"]
    _, _, xs, rs = _dct_gmm(tmp_path, "s1", ["--epsilon", "0.5"])
    _, _, xt, _ = _dct_gmm(tmp_path, "s2", ["--epsilon", "0.5"])
    np.testing.assert_array_equal(xs, xt)  # a study: the noise derives from --seed
    assert rs["privacy"]["noise_source"].startswith("seeded")
    for name in ("a", "b", "s1"):  # --seed keeps governing the partition
        np.testing.assert_array_equal(np.load(tmp_path / name / "membership.npz")["train_client"],
                                      np.load(tmp_path / "a" / "membership.npz")["train_client"])


def test_ledger_problems_are_refused_before_anything_runs(tmp_path, capsys):
    for path, needle in ((tmp_path / "nope" / "l.json", "does not exist"), (tmp_path / "x.json", "not JSON")):
        if path.name == "x.json":
            path.write_text("{oops")
        code, err, _, _ = _dct_gmm(tmp_path, "r", ["--epsilon", "0.5", "--ledger", str(path), "--budget", "2"],
                                  capsys)
        assert code == 2 and len(err.splitlines()) == 1 and needle in err and "--ledger" in err, err
        assert not (tmp_path / "r").exists()
    assert (tmp_path / "x.json").read_text() == "{oops"


def test_a_charge_lost_after_the_preflight_removes_the_run_and_is_on_record(tmp_path, capsys, monkeypatch):
    """Another process spends the budget between this run's preflight and its charge: the
    transaction refuses before round 1, the run directory goes, the refusal is in the ledger."""
    path = tmp_path / "l.json"
    L.transact(_request(path, 1.9), run="other", run_id="other")
    monkeypatch.setattr(L, "preflight", lambda req, **kw: L.open_ledger(
        req.path, deployment="d", unit=req.unit, delta=req.delta, budget=req.budget))
    code, err, _, _ = _dct_gmm(tmp_path, "late", ["--epsilon", "1", "--ledger", str(path), "--budget", "2"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "remaining budget" in err, err
    assert not (tmp_path / "late").exists()
    led = L.load(path)
    assert len(led.releases) == 1 and [a.status for a in led.attempts] == ["charged", "refused"]
    assert led.attempts[1].run == str(tmp_path / "late")


def test_two_cli_requests_at_once_never_exceed_the_budget(tmp_path):
    """The issue's race: two --epsilon 1.5 --budget 2 requests at once. One runs, the other is
    refused with one line and leaves no run directory; both attempts are in the ledger."""
    path = tmp_path / "l.json"
    argv = TINY_DCT_GMM + ["--epsilon", "1.5", "--ledger", str(path), "--budget", "2", "--accountant", "pld"]
    procs = [subprocess.Popen([sys.executable, EXPERIMENT] + argv + ["--out", str(tmp_path / f"run{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-800:] for o in outs]
    refused = next(o for p, o in zip(procs, outs) if p.returncode == 2)
    assert len(refused[1].strip().splitlines()) == 1 and "budget" in refused[1]
    led = L.load(path)
    assert L.epsilon(led) <= 2.0 and len(led.releases) == 2  # the winner's clip histogram and round 1
    assert [r.name for r in led.releases] == ["dct_gmm clip histogram", "dct_gmm round 1"]
    assert sorted(a.status for a in led.attempts) == ["charged", "refused"]
    assert sorted(os.path.exists(tmp_path / f"run{i}" / "results.json") for i in range(2)) == [False, True]
    assert sum(os.path.exists(tmp_path / f"run{i}") for i in range(2)) == 1


def test_a_resumed_ledger_run_is_charged_once(tmp_path, capsys):
    """The ledger is full after the run; resuming it (killed before its export) is not a new
    request: no second charge, no refusal."""
    path = tmp_path / "l.json"
    argv = ["--epsilon", "1.5", "--ledger", str(path), "--budget", "2", "--accountant", "pld"]
    assert _dct_gmm(tmp_path, "a", argv)[0] == 0
    os.remove(tmp_path / "a" / "results.json")
    assert cli.run(DCT_GMM, TINY_DCT_GMM + argv + ["--out", str(tmp_path / "a"), "--resume"]) == 0
    assert (tmp_path / "a" / "results.json").exists()
    assert [a.status for a in L.load(path).attempts] == ["charged"]
    code, err, _, _ = _dct_gmm(tmp_path, "b", argv, capsys)  # a new request: refused, on record
    assert code == 2 and "remaining budget" in err
    assert [a.status for a in L.load(path).attempts] == ["charged", "refused"]


def test_a_request_cannot_raise_the_deployments_budget(tmp_path):
    """The budget is fixed when the ledger is created: a request with a larger (or smaller)
    --budget is refused, the file unchanged, instead of silently moving the promise."""
    path = tmp_path / "site.json"
    L.transact(_request(path, 1.0, budget=2.0))
    before = path.read_bytes()
    for other in (100.0, 1.0):
        with pytest.raises(L.LedgerError, match="budget 2"):
            L.preflight(_request(path, 0.5, budget=other))
    assert path.read_bytes() == before
    L.preflight(_request(path, 0.5, budget=2.0))  # the same budget still fits
