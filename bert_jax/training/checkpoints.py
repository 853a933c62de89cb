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

import functools
import logging
import math
import sys
import warnings
import time
from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from bert_jax.training import paths
from bert_jax.training.paths import read_json, write_json  # noqa: F401  (the loops' JSON files, local or gs://)

logger = logging.getLogger(__name__)

STATE, DATA = "state", "data"


class Checkpointer:
    """A thin layer over `orbax.checkpoint.CheckpointManager` for (train state, iterator state).

    Retention: the newest `keep` checkpoints (exact resume always has the latest; `keep <= 0` keeps
    all) and, with `best_metric`, also the best one by that metric among the checkpoints saved with
    metrics (orbax's `AnyPreservationPolicy(LatestN, BestN)`). orbax's own `max_to_keep` + `best_fn`
    would instead keep the `keep` best, so a newer but worse checkpoint could be deleted and resume
    would go back in time."""

    def __init__(self, directory: paths.PathLike, *, save_every: int = 1000, keep: int = 3, best_metric: Optional[str] = None,
                 best_mode: str = "max", async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = paths.workdir_path(directory)  # local (absolute) or a gs:// URL
        self.best_metric = best_metric or None
        latest = ocp.checkpoint_managers.LatestN(n=keep if keep and keep > 0 else None)
        policy = latest
        best_fn = None
        if self.best_metric:
            best_fn = functools.partial(_metric_value, self.best_metric, mode=best_mode)
            policy = ocp.checkpoint_managers.AnyPreservationPolicy([latest, ocp.checkpoint_managers.BestN(
                get_metric_fn=best_fn, reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every, enable_async_checkpointing=async_save, preservation_policy=policy,
            best_fn=best_fn, best_mode=best_mode, create=True)  # best_fn/best_mode: for best_step()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

    # -------------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: Optional[dict] = None, metrics: Optional[dict] = None,
             force: bool = False) -> bool:
        """Starts an (async) save if `step` is due (or `force`). Returns whether it saved.

        `metrics` (e.g. the eval metrics of this step) rank the checkpoint for best-keeping; without
        them a checkpoint is kept only while it is among the newest `keep`."""
        if metrics is not None and self.best_metric:
            _metric_value(self.best_metric, metrics)  # a clear error now, not inside orbax's cleanup
            metrics = {k: float(v) for k, v in metrics.items()}
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                     DATA: ocp.args.JsonSave(data_state or {})})
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def best_step(self) -> Optional[int]:
        """Step of the best checkpoint by `best_metric` (None without best tracking or metrics yet)."""
        if not self.best_metric:
            return None
        return self.manager.best_step()

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
        _silence_failed_restore_leftovers()  # installed first: the leftovers start before orbax raises
        for candidate in steps:
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
            except Exception as e:  # orbax raises many types for missing/corrupt files
                _leftovers.restore_failed = True
                errors.append(f"step {candidate}: {_short_error(e)}")
                logger.warning("checkpoint at step %d in %s cannot be restored (%s); trying an older one",
                               candidate, self.directory, errors[-1])
                continue
            if errors:
                logger.warning("restored step %d after skipping %d unreadable checkpoint(s)", candidate, len(errors))
                self._set_aside([s for s in steps if s > candidate])
            return candidate, restored[STATE], dict(restored[DATA] or {})
        raise RuntimeError(f"{self.directory} holds checkpoints {steps} but none could be restored; refusing to "
                           "start over (move them away, or use another workdir, to train from scratch). Errors:\n" + "\n".join(errors))

    def _set_aside(self, unreadable: list) -> None:
        """Renames unreadable checkpoints newer than the restored one to `<step>.unreadable-<time>`: the
        run retrains those steps and must be able to save them again (orbax refuses to overwrite a step,
        and skips a due save at an existing one), while the damaged files stay for inspection."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        if jax.process_index() == 0:
            for step in unreadable:
                source = self.directory / str(step)
                if source.exists():
                    target = self.directory / f"{step}.unreadable-{stamp}"
                    source.rename(target)
                    logger.warning("moved the unreadable checkpoint %s to %s; its step will be trained and saved "
                                   "again", source, target)
        if jax.process_count() > 1:  # every process sees the renames before anyone saves
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("bert_jax_checkpoints_set_aside")
        self.manager.reload()

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


def _short_error(error: Exception) -> str:
    """One line for a failed restore: orbax's messages carry a multi-line TensorStore spec dump."""
    text = str(error).split("See full TensorStore details")[0].strip()
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


class _Leftovers:
    silenced = False  # the filters below are installed (once per process)
    restore_failed = False  # a restore has failed in this process: abandoned reads may report later


_leftovers = _Leftovers()


def _silence_failed_restore_leftovers() -> None:
    """After a failed restore, orbax's other array reads are still in flight on an event loop that is
    already closed: TensorStore's threads and the coroutines' finalizers then report "Event loop is
    closed" and the same read error as unraisable exceptions, hundreds of tracebacks (some at
    interpreter exit), burying the error this module reports. Those, and only those, are dropped
    (counted in a debug log line); every other unraisable exception reaches the previous hook."""
    if _leftovers.silenced:
        return
    _leftovers.silenced = True
    previous = sys.unraisablehook
    dropped = [0]

    def hook(unraisable):
        message = str(unraisable.exc_value)
        if ((isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in message)
                or message.startswith("Encountered error while reading array index")):
            dropped[0] += 1
            if dropped[0] == 1:
                logger.debug("dropping orbax's leftover errors of a failed restore (%s)", message[:80])
            return
        previous(unraisable)

    sys.unraisablehook = hook
    warnings.filterwarnings("ignore", message=r"coroutine '_read_array_index_and_device_put' was never awaited")
    logging.getLogger("asyncio").addFilter(_drop_failed_read_tasks)


def _drop_failed_read_tasks(record: logging.LogRecord) -> bool:
    """asyncio's "Task/Future exception was never retrieved" for orbax's abandoned array reads (see
    above; bert_jax runs no asyncio of its own, so after a failed restore these are those reads)."""
    return not (_leftovers.restore_failed and "exception was never retrieved" in record.getMessage())


def rank_value(value: float, mode: str) -> float:
    """`value` for ranking checkpoints: NaN (a metric undefined at this step) ranks worst, where a plain
    comparison would make every later value lose against it."""
    value = float(value)
    if math.isnan(value):
        return -math.inf if mode == "max" else math.inf
    return value


def _metric_value(name: str, metrics: Mapping[str, Any], mode: str = "max") -> float:
    if name not in metrics:
        raise KeyError(f"best_metric {name!r} is not among the eval metrics {sorted(metrics)}")
    return rank_value(metrics[name], mode)


def abstract_like(tree: Any) -> Any:
    """Tree of ShapeDtypeStructs (with shardings) for a tree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def restore_params(directory: paths.PathLike, abstract_params: Any, step: Optional[int] = None,
                   host: bool = False) -> Any:
    """Params only from a bert_jax checkpoint directory, local or gs:// (to initialise a fine-tuning run).

    Onto the shardings `abstract_params` carries; with `host`, as numpy arrays (whole, in host memory,
    on no device: for a caller that converts them before placing each leaf on its shards)."""
    manager = ocp.CheckpointManager(paths.workdir_path(directory), item_names=(STATE, DATA))
    steps = [step] if step is not None else sorted(manager.all_steps())[-1:]
    if not steps:
        raise FileNotFoundError(f"no bert_jax checkpoint in {directory}")
    # Restore only the params subtree; everything else stays on disk. (item_metadata is None here: the
    # manager has no handler registered for `state` until restore names one.)
    item = {"params": abstract_params}
    # Onto the target's shardings when it has them (orbax's fallback, the saved sharding file, is only safe on
    # the topology that saved it).
    sharded = all(getattr(x, "sharding", None) is not None for x in jax.tree.leaves(abstract_params))
    if host:
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    else:
        restore_args = ocp.checkpoint_utils.construct_restore_args(item) if sharded else None
    restored = manager.restore(steps[0], args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        item=item, partial_restore=True, restore_args=restore_args)}))
    manager.close()
    return restored[STATE]["params"]


def saved_params_metadata(directory: paths.PathLike) -> Tuple[Optional[int], Any]:
    """(latest step, the metadata tree of its saved params) of a bert_jax checkpoint directory, without
    reading any array; (None, None) when it holds no checkpoint."""
    manager = ocp.CheckpointManager(paths.workdir_path(directory), item_handlers={
        STATE: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()})
    try:
        all_steps = sorted(manager.all_steps())
        if not all_steps:
            return None, None
        return all_steps[-1], manager.item_metadata(all_steps[-1])[STATE]["params"]
    finally:
        manager.close()


def saved_state_metadata(directory: paths.PathLike, step: int) -> Any:
    """The metadata tree (shapes, dtypes; no array read) of the train state saved at `step`."""
    return ocp.PyTreeCheckpointHandler().metadata(paths.workdir_path(directory) / str(step) / STATE).tree


PreemptionFlag = Callable[[], bool]
