"""Empirical privacy auditing: canaries in a real DP code path, one-run epsilon lower bounds."""

from fedjax_gen.audit.canaries import CanaryAudit, canary_scores, plan_for_audit, run_audit
from fedjax_gen.audit.one_run import audit, epsilon_lower_bound, guess_and_count, p_value

__all__ = ["CanaryAudit", "audit", "canary_scores", "epsilon_lower_bound", "guess_and_count", "p_value",
           "plan_for_audit", "run_audit"]
