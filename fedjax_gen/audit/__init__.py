"""Empirical privacy auditing: canaries in the real DP code paths, one-run epsilon lower bounds.

one_run: Steinke, Nasr & Jagielski (NeurIPS 2023) statistics. canaries: canary clients in the
engine's user-level DP-FedAvg round. example_canaries: canary examples in one client's
Poisson DP-SGD (poisson_sum + clipped_grad_sum + Gaussian noise).
"""

from fedjax_gen.audit import example_canaries
from fedjax_gen.audit.canaries import CanaryAudit, canary_scores, plan_for_audit, run_audit
from fedjax_gen.audit.one_run import audit, epsilon_lower_bound, guess_and_count, p_value

__all__ = ["CanaryAudit", "audit", "canary_scores", "epsilon_lower_bound", "example_canaries", "guess_and_count",
           "p_value", "plan_for_audit", "run_audit"]
