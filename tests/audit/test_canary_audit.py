"""The canary audit of the engine's user-level DP-FedAvg path is a check that can fail: it
stays below the accountant's epsilon for the correct mechanism and exceeds it when the
noise or the clipping is switched off."""

import json

import pytest

from fedjax_gen.audit import CanaryAudit, plan_for_audit, run_audit
from fedjax_gen.audit.command import main

CLAIM = 1.0  # epsilon the noise is calibrated for (delta 1e-5, 10 rounds, q = 1/2, Poisson)


@pytest.fixture(scope="module")
def plan():
    return plan_for_audit(CanaryAudit(), delta=1e-5, epsilon=CLAIM)


def test_correct_run_stays_below_the_reported_epsilon(plan):
    out = run_audit(CanaryAudit(), plan)
    assert out["reported_epsilon"] <= CLAIM and out["privacy"]["sampling"] == "poisson"
    assert out["epsilon_lower_bound"] < out["reported_epsilon"]
    assert out["canaries"] == 500 and out["guesses"] == 100 and out["confidence"] == 0.95


@pytest.mark.parametrize("broken", ["no_noise", "no_clip"])
def test_broken_run_is_detected(plan, broken):
    out = run_audit(CanaryAudit(broken=broken), plan)
    assert out["epsilon_lower_bound"] > out["reported_epsilon"], out


def test_command_writes_audit_json_beside_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    block = plan_for_audit(CanaryAudit(clients=200, canaries=100, clients_per_round=100, rounds=4), delta=1e-5,
                           noise_multiplier=2.0).report(4)
    (run / "results.json").write_text(json.dumps({"clients": 200, "clients_per_round": 100, "rounds": 4,
                                                  "privacy": block}))
    out = main(["--run", str(run), "--dim", "512"])
    written = json.loads((run / "audit.json").read_text())
    assert written["epsilon_lower_bound"] == out["epsilon_lower_bound"] < written["reported_epsilon"]
    assert written["reported_epsilon"] == pytest.approx(block["epsilon"]) == written["run_reported_epsilon"]
    assert written["canaries"] == 100


@pytest.fixture(scope="module")
def example_plan():
    from fedjax_gen.audit.example_canaries import ExampleCanaryAudit, plan_for_audit as example_plan_for

    return example_plan_for(ExampleCanaryAudit(), delta=1e-5, epsilon=CLAIM)


@pytest.mark.parametrize("broken", [None, "no_noise", "no_clip"])
def test_example_level_audit_of_poisson_dp_sgd(example_plan, broken):
    """Canary examples in one client's DP-SGD (poisson_sum + clipped_grad_sum + noise):
    below the accountant's epsilon when correct, above it when noise or clipping is off."""
    from fedjax_gen.audit.example_canaries import ExampleCanaryAudit, run_audit as example_run_audit

    out = example_run_audit(ExampleCanaryAudit(broken=broken), example_plan)
    assert out["privacy"]["neighboring"] == "add_remove" and out["reported_epsilon"] <= CLAIM
    if broken is None:
        assert out["epsilon_lower_bound"] < out["reported_epsilon"]
    else:
        assert out["epsilon_lower_bound"] > out["reported_epsilon"], out
