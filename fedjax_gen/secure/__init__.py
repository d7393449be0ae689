"""Secure aggregation with dropouts and distributed discrete DP noise that composes with it.

  SecAggConfig, secure_sum      end to end: float uploads [n, dim] -> decoded sum, server view, bytes, threat model
  ProtocolConfig                the SecAgg / SecAgg+ protocol (bits, degree, threshold, min_cohort)
  calibrate_skellam, skellam_plan   distributed Skellam noise for a requested epsilon / a given mu
  ThreatModel                   what the server sees, dropout tolerance, collusion threshold, noise placement
  SecAggAbort, DropoutError, UnmaskRefused   the protocol's loud failures
"""

from fedjax_gen.secure.pipeline import SecAggConfig, SecureSumResult, bytes_summary, quantise_cohort, round_cohort, secure_sum
from fedjax_gen.secure.quantize import QuantisationError, upload_bytes
from fedjax_gen.secure.secagg import DropoutError, ProtocolConfig, SecAggAbort, UnmaskRefused
from fedjax_gen.secure.skellam import SkellamPlan, calibrate_skellam, skellam_epsilon, skellam_plan
from fedjax_gen.secure import threat
from fedjax_gen.secure.threat import ThreatModel, cleartext, trusted_sum

__all__ = [
    "DropoutError", "ProtocolConfig", "QuantisationError", "SecAggAbort", "SecAggConfig", "SecureSumResult",
    "SkellamPlan", "ThreatModel", "UnmaskRefused", "bytes_summary", "calibrate_skellam", "cleartext",
    "quantise_cohort", "round_cohort", "secure_sum", "skellam_epsilon", "skellam_plan", "trusted_sum", "upload_bytes",
]
