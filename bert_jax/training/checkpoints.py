"""Orbax checkpointing of the whole training state: params, optimizer state, step, RNG and the
input pipeline's iterator state.

- Saves are asynchronous every `save_every` steps; the last `keep` are kept (and, with `best_metric`,
  the best by that eval metric too).
- Restores onto whatever mesh the run has: the restore target carries this run's shardings, so a
  checkpoint written on 8 devices restores on 1 and vice versa.
- A checkpoint that cannot be read (interrupted write, corrupt file) is skipped with a warning and
  the previous one is used; if checkpoints exist and none can be read, restoring raises instead of
  silently starting over.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional, Tuple

import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

STATE, DATA = "state", "data"


class Checkpointer:
    """A thin layer over `orbax.checkpoint.CheckpointManager` for (train state, iterator state)."""

    def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3, best_metric: Optional[str] = None,
                 best_mode: str = "max", async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save,
            best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
            best_mode=best_mode, keep_checkpoints_without_metrics=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

    # -------------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: Optional[dict] = None, metrics: Optional[dict] = None,
             force: bool = False) -> bool:
        """Starts an (async) save if `step` is due (or `force`). Returns whether it saved."""
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                     DATA: ocp.args.JsonSave(data_state or {})})
        if self.best_metric and metrics is None:
            metrics = None  # orbax keeps checkpoints without metrics (keep_checkpoints_without_metrics)
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def all_steps(self) -> list:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> Optional[int]:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Optional[Tuple[int, Any, dict]]:
        """Restores (step, state, data_state) from `step` or the newest readable checkpoint.

        `abstract_state`: the state's tree of `jax.ShapeDtypeStruct`s with this run's shardings.
        Returns None when the directory holds no checkpoint."""
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            return None
        errors = []
        for candidate in steps:
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
            except Exception as e:  # orbax raises many types for missing/corrupt files
                errors.append(f"step {candidate}: {type(e).__name__}: {str(e)[:300]}")
                logger.warning("checkpoint at step %d in %s cannot be restored (%s); trying an older one",
                               candidate, self.directory, errors[-1])
                continue
            if errors:
                logger.warning("restored step %d after skipping %d unreadable checkpoint(s)", candidate, len(errors))
            return candidate, restored[STATE], dict(restored[DATA] or {})
        raise RuntimeError(f"{self.directory} holds checkpoints {steps} but none could be restored; refusing to "
                           "start over. Errors:\n" + "\n".join(errors))

    def read(self, step: Optional[int] = None) -> Tuple[Any, dict]:
        """(state, data_state) of `step` (default newest) as saved, without a restore target
        (arrays on the default device; for inspection and tests)."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.PyTreeRestore(), DATA: ocp.args.JsonRestore()}))
        return restored[STATE], dict(restored[DATA] or {})

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Tree of ShapeDtypeStructs (with shardings) for a tree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def restore_params(directory: str, abstract_params: Any, step: Optional[int] = None) -> Any:
    """Params only from a bert_jax checkpoint directory (to initialise a fine-tuning run)."""
    manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=(STATE, DATA))
    steps = [step] if step is not None else sorted(manager.all_steps())[-1:]
    if not steps:
        raise FileNotFoundError(f"no bert_jax checkpoint in {directory}")
    metadata = manager.item_metadata(steps[0])[STATE]
    # Restore only the params subtree; everything else stays on disk.
    target = jax.tree.map(lambda m: m, dict(metadata))
    restored = manager.restore(steps[0], args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(item={"params": abstract_params}, partial_restore=True)}))
    manager.close()
    del target
    return restored[STATE]["params"]


def write_json(path: str, value: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


PreemptionFlag = Callable[[], bool]
