"""What every registered attack is handed: the opened run (and --reference), the balanced
member / non-member queries, and buffers for what it writes, so a failing attack leaves the
run directory as it was (grids are written with attack_results.json, not before)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


def draw_queries(target, n: int, seed: int):
    """((x, y) members, (x, y) non-members): up to n of each, without replacement."""
    rng = np.random.default_rng(seed)
    mem, non = target.membership["members"], target.membership["nonmembers"]
    mi = rng.choice(mem, min(n, len(mem)), replace=False)
    ni = rng.choice(non, min(n, len(non)), replace=False)
    ds = target.dataset
    return (ds.x_train[mi], ds.y_train[mi]), (ds.x_test[ni], ds.y_test[ni])


def member_overlap(member_queries, ref) -> float:
    """Fraction of the target's member queries that are (byte-identical) training members of
    the reference run: calibration assumes this is 0."""
    digest = lambda a: hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()  # noqa: E731
    ref_members = {digest(x) for x in ref.dataset.x_train[ref.membership["members"]]}
    return float(np.mean([digest(x) in ref_members for x in member_queries]))


@dataclasses.dataclass
class AttackContext:
    target: object  # run_target.RunTarget
    reference: object | None
    queries: tuple  # (members (x, y), non-members (x, y))
    num_queries: int
    seed: int
    extra: dict = dataclasses.field(default_factory=dict)  # result name -> report (e.g. fbb_cal)
    grids: dict = dataclasses.field(default_factory=dict)  # file name -> uint8 grid rows
    _memo: dict = dataclasses.field(default_factory=dict)

    @property
    def num_members(self) -> int:
        return len(self.queries[0][1])

    def split(self, scores):
        """Scores over members then non-members -> (member scores, non-member scores)."""
        return scores[: self.num_members], scores[self.num_members:]

    def emit(self, name: str, report: dict) -> None:
        """A further result besides the attack's own (a calibrated variant)."""
        self.extra[name] = report

    def save_grid(self, name: str, rows) -> None:
        self.grids[name] = rows

    def memo(self, name: str, make):
        """What several attacks of one invocation share (built on first use)."""
        if name not in self._memo:
            self._memo[name] = make()
        return self._memo[name]
