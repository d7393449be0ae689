"""Checkpoints of any state pytree with orbax's CheckpointManager (async saves).

A run's checkpoints live in RUN_DIR/checkpoints/<round>/. Restores go into an abstract
state from `jax.eval_shape(init, key)`, so the restored pytree has the run's exact
structure, dtypes and (when given) shardings.
"""

from __future__ import annotations

import os
import sys

import orbax.checkpoint as ocp

from fedjax_gen.errors import UserError


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int | None = 3, create: bool = True):
        self.directory = os.path.abspath(directory)
        if not create and not os.path.isdir(self.directory):
            raise UserError(f"no checkpoints at {self.directory}: check the run directory path")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state) -> None:
        """Starts an asynchronous save; `wait()` (or the next save) finishes it."""
        self._manager.save(int(step), args=ocp.args.StandardSave(state))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, step: int | None, abstract_state):
        """Restore `step` (latest if None) into the structure of `abstract_state`."""
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self.steps():
            raise UserError(
                f"no checkpoint for round {step} in {self.directory} (have {self.steps()}): "
                "pick one of those rounds or start a fresh run"
            )
        _drop_orphaned_reads()  # before: a failing restore's orphans can report before its exception
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # orbax raises many types for unreadable/mismatched files
            raise UserError(
                f"checkpoint {self.directory}/{step} is unreadable or does not match this "
                f"model ({type(e).__name__}: {str(e).splitlines()[0][:160]}): delete it, pick "
                "another round, or use the flags it was saved with"
            ) from None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _drop_orphaned_reads() -> None:
    """When a restore fails, the other arrays' tensorstore reads still complete into orbax's
    asyncio loop, which the failure closed: each reports `RuntimeError: Event loop is closed`
    through sys.unraisablehook (a traceback each, around the one-line error). Those, and only
    those, are dropped from the first restore on; anything else goes to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orphaned_reads", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    hook._drops_orphaned_reads = True
    sys.unraisablehook = hook


