"""Scoring names its phases: every step that can take more than a few seconds says what it
is (`scoring: real-data ceiling (cached)`) or shows a bar (`scoring: TSTR seed 2/3`) on
stderr. `Progress(False)` (a run's --no-progress, and every library default) is silent."""

from __future__ import annotations

import contextlib
import dataclasses
import sys

from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True)
class Progress:
    enabled: bool = True

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"scoring: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def bar(self, name: str, total: int):
        """Yields advance(k); the bar is drawn only when enabled."""
        bar = tqdm(total=total, desc=f"scoring: {name}", unit="step", disable=not self.enabled,
                   dynamic_ncols=True, mininterval=2, leave=False, file=sys.stderr)
        try:
            yield bar.update
        finally:
            bar.close()
        if self.enabled:
            self.say(f"{name} done")


SILENT = Progress(False)
