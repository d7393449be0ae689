"""The threat model a run actually enforces, as written to results.json."""

from __future__ import annotations

import dataclasses

SERVER_SEES = ("masked uploads", "cleartext uploads", "noisy sum")
NOISE_PLACEMENTS = ("distributed discrete (Skellam)", "central trusted server", "client float shares", "none")


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """server_sees: what the (honest-but-curious) server receives per client;
    noise_placement: who adds the DP noise; tolerated_dropout_fraction: the fraction of a
    share group (complete graph: of the cohort) that may drop after key sharing with the sum
    still recovered; collusion_threshold: clients that may collude with the server without
    learning an honest client's upload (t - 1; None: nothing is hidden); min_cohort:
    uploaders below which clients refuse to unmask (isolation defence)."""

    server_sees: str
    noise_placement: str
    tolerated_dropout_fraction: float | None
    collusion_threshold: int | None
    min_cohort: int | None
    isolation_defence: str
    protocol: str
    adversary: str = "honest-but-curious server"
    limitations: tuple[str, ...] = ()

    def __post_init__(self):
        if self.server_sees not in SERVER_SEES:
            raise ValueError(f"server_sees must be one of {SERVER_SEES}, got {self.server_sees!r}")
        if self.noise_placement not in NOISE_PLACEMENTS:
            raise ValueError(f"noise_placement must be one of {NOISE_PLACEMENTS}, got {self.noise_placement!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["limitations"] = list(self.limitations)
        return d


def secure_aggregation(n: int, degree: int, threshold: int, min_cohort: int, noise_placement: str) -> ThreatModel:
    """The model of fedjax_gen.secure.secagg with a resolved ProtocolConfig."""
    complete = degree == n - 1
    if complete:
        drop = (n - max(threshold, min_cohort)) / n
        proto = f"SecAgg (Bonawitz et al. 2017), complete graph, t={threshold} of n={n}"
    else:
        drop = min((degree + 1 - threshold) / (degree + 1), (n - min_cohort) / n)
        proto = f"SecAgg+ (Bell et al. 2020), Harary graph degree k={degree}, t={threshold} of k+1={degree + 1}"
    lim = ["the server could announce different uploader sets to different clients (no signed consistency round)",
           "colluding clients can withhold their noise shares: the noise assumes honest uploaders",
           "server-controlled sybil clients count toward min_cohort (needs authenticated client identities)"]
    if not complete:
        lim.insert(0, "sparse graph: privacy and dropout tolerance hold with high probability over the random graph "
                      "(Bell et al.), per share group, not for every adversarial dropout pattern")
    return ThreatModel("masked uploads", noise_placement, drop, threshold - 1, min_cohort,
                       f"clients refuse to unmask if fewer than {min_cohort} uploaded (abort, detected)",
                       proto, limitations=tuple(lim))


def cleartext(noise_placement: str) -> ThreatModel:
    """No secure aggregation: the server reads every upload (the attacks' default view)."""
    return ThreatModel("cleartext uploads", noise_placement, None, None, None, "none", "none")


def trusted_sum() -> ThreatModel:
    """Secure aggregation assumed, not run (the float 'central noise' option): the server sees the noisy sum."""
    return ThreatModel("noisy sum", "central trusted server", None, None, None, "assumed", "assumed, not run",
                       limitations=("nothing in the run enforces it",))
