"""Metric writers behind one interface: `write(record)` with a "round" (and maybe "step")
entry, `close()`. metrics.jsonl (strict JSON) always; TensorBoard event files when asked
for, through tensorboardX (an optional extra: `pip install -e '.[tensorboard]'`), so
curves can be watched live with `tensorboard --logdir RUN_DIR/tensorboard`."""

from __future__ import annotations

import math

from fedjax_gen.errors import InvalidValue
from fedjax_gen.run_dir import RunDir


class JsonlWriter:
    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir

    def write(self, record: dict) -> None:
        self.run_dir.append_metrics(record)

    def close(self) -> None:
        pass


class TensorBoardWriter:
    def __init__(self, run_dir: RunDir):
        check_available(True)
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(run_dir.output("tensorboard"))
        self._step = 0

    def write(self, record: dict) -> None:
        # One global step across phases: rounds, then server steps after them.
        self._step += 1
        for k, v in record.items():
            if k not in ("round", "step", "phase") and isinstance(v, (int, float)) and math.isfinite(v):
                prefix = record.get("phase", "round")
                self._writer.add_scalar(f"{prefix}/{k}", v, self._step)

    def close(self) -> None:
        self._writer.close()


class MetricWriters:
    """Fans each record out to every writer."""

    def __init__(self, writers):
        self.writers = list(writers)

    def write(self, record: dict) -> None:
        for w in self.writers:
            w.write(record)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def writers_for(run_dir: RunDir, tensorboard: bool) -> MetricWriters:
    return MetricWriters([JsonlWriter(run_dir)] + ([TensorBoardWriter(run_dir)] if tensorboard else []))


def check_available(tensorboard: bool) -> None:
    """Fails before anything is written when TensorBoard is asked for but not installed."""
    if tensorboard:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise InvalidValue("tensorboard", "{tensorboard} needs tensorboardX: pip install tensorboardX "
                                              "(or drop {tensorboard})") from None
