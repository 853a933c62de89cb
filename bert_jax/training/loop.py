"""The one training loop: mesh, sharded train state (fresh or restored), the jitted donating step and
the loop body (log, evaluate, checkpoint, preemption, non-finite check) for any `LoopTask`.

Pretraining (`training/trainer.py`) and fine-tuning (`training/finetune.py`) are tasks; `bert_jax.aot`
compiles the step `build` returns. Data flows one way: the task's host batches -> global arrays on
the mesh -> jitted train step -> metrics / Orbax. The loop syncs with the device only to log,
evaluate and checkpoint, so it adds little over the bare step.

    mesh, rules = make_mesh(config)
    task = MyTask(...)                       # a LoopTask: model, loss, batches, evaluation
    built = build(config, task.model, tx, schedule, task.make_train_step, mesh, rules)
    ckpt = make_checkpointer(config, workdir, task)
    state = init_or_restore(config, task, built, ckpt)   # restores onto built.abstract, else fresh
    result = train(config, workdir, task, built, ckpt, state)
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.training import checkpoints, metrics as metrics_lib, paths, steps
from bert_jax.training.preemption import Preemption

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


class InvalidDataError(ValueError):
    pass


INVALID = "invalid_"  # step metrics `invalid_<field>`: invalid entries of that batch field (not logged)
# Key of the loop's own entry in a checkpoint's data state (the task's entries sit beside it); present only
# in runs with a wall-clock budget (`config.train_seconds`), so other runs' checkpoints are unchanged.
LOOP_STATE = "_loop"


# ------------------------------------------------------------------------------------ the contract
class LoopTask(abc.ABC):
    """What a task (pretraining, a fine-tuning head) brings to the loop. The loop owns the mesh, the
    state, the jitted step and when to log / evaluate / save; the task owns the model, its loss, its
    data and what its metrics mean."""

    model: nn.Module
    total_steps: int
    eval_every: int = 0  # evaluate every N steps (0: never, except at the end with `eval_at_end`)
    eval_at_end: bool = True
    best_metric: Optional[str] = None  # eval metric that ranks checkpoints (an evaluated state is then saved)
    best_mode: str = "max"
    # Training seconds spent before the checkpoint this run resumed from (set by `init_or_restore` when a
    # wall-clock budget is on), so that a resumed run continues the budget instead of starting it again.
    resumed_train_seconds: float = 0.0

    @abc.abstractmethod
    def make_train_step(self, tx: optax.GradientTransformation, schedule: Callable, micro_batches: int,
                        skip_nonfinite: bool) -> Callable[[steps.TrainState, Dict[str, jax.Array]], Tuple[Any, Dict]]:
        """`train_step(state, global batch) -> (state, metrics)`; metrics include `finite` (0/1)."""

    @abc.abstractmethod
    def initial_params(self, mesh, rules, shardings) -> Any:
        """Params at step 0, placed on `shardings` (only called when there is nothing to resume)."""

    @abc.abstractmethod
    def next_batch(self) -> Dict[str, np.ndarray]:
        """This process's rows of the next global batch (host arrays)."""

    @abc.abstractmethod
    def data_state(self) -> dict:
        """JSON-able input position (and anything else resume needs); all processes call it together."""

    @abc.abstractmethod
    def restore_data_state(self, data_state: dict) -> None:
        """Continues from a `data_state()` saved with the checkpoint being resumed."""

    @abc.abstractmethod
    def evaluate(self, params, step: int) -> Dict[str, float]:
        """Flat {metric: value} of `params` on the held-out data (inside the mesh context)."""

    @abc.abstractmethod
    def train_summary(self, means: Dict[str, float], done: int, steps_per_s: float, skipped: int) -> Dict[str, float]:
        """The logged train metrics from the means of the step metrics since the last log line."""

    def eval_note(self) -> str:
        """Appended to the eval log line (e.g. the best step so far)."""
        return ""

    def invalid_counts(self, batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
        """{batch field: number of invalid entries} of a global batch, jit-safe (`losses.invalid_counts`:
        ids, labels, positions out of range); {} checks nothing."""
        return {}

    def requirement(self, field: str) -> str:
        """What a valid value of batch `field` is, for the error that names it."""
        return ""


# ------------------------------------------------------------------------------------- the builder
def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Tuple[jax.sharding.Mesh, Any]:
    """(mesh, logical axis rules) from `config.mesh` (over `devices`, default all)."""
    mesh = sharding.create_mesh(sharding.MeshConfig(ici_parallelism=tuple(config.mesh.ici_parallelism),
                                                    dcn_parallelism=tuple(config.mesh.dcn_parallelism)), devices)
    return mesh, sharding.rules_from_config(config.mesh.get("rules") or None)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh, rules, seed: int = 0) -> steps.TrainState:
    """The train state as ShapeDtypeStructs carrying their shardings (`jax.eval_shape`: nothing is
    allocated): a restore target, the jitted step's shardings, an AOT compile argument."""
    params = sharding.abstract_params(model, mesh, rules)
    params_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = sharding.opt_state_shardings(tx, params_shardings, params)
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             jax.eval_shape(tx.init, params), opt_shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(seed))
    return steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=params,
                            opt_state=opt_state, rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated))


def shardings_of(tree) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


@dataclasses.dataclass
class Built:
    """What `build` returns: everything the loop computes with, before any state exists."""
    mesh: jax.sharding.Mesh
    rules: Any
    tx: optax.GradientTransformation
    abstract: steps.TrainState  # sharded ShapeDtypeStructs
    train_step: Callable  # jitted (state, global batch) -> (state, metrics); donates the state
    batch_sharding: NamedSharding


PRNG_IMPLS = {"threefry": "threefry2x32", "threefry2x32": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}


def set_prng_impl(name: str) -> str:
    """Makes `name` the process's default PRNG implementation (what `jax.random.PRNGKey` and every key
    derived from the run's seed use; JAX_DEFAULT_PRNG_IMPL does the same from the environment).

    "threefry" (JAX's default): the same seed gives the same dropout masks on any backend and any mesh.
    "rbg" / "unsafe_rbg": XLA's RngBitGenerator, cheaper dropout masks; "rbg" keeps JAX's split/fold_in
    semantics, "unsafe_rbg" also derives keys with it (fastest; key streams are not guaranteed
    independent). Masks of the rbg variants may differ across backends, XLA versions and shardings.
    A run resumes only under the implementation it started with (its checkpointed key has that shape)."""
    if name not in PRNG_IMPLS:
        raise ValueError(f"config.prng_impl={name!r}: choose one of {sorted(PRNG_IMPLS)}")
    jax.config.update("jax_default_prng_impl", PRNG_IMPLS[name])
    return PRNG_IMPLS[name]


def build(config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation, schedule: Callable,
          make_train_step: Callable, mesh, rules, count_invalid: Optional[Callable] = None) -> Built:
    """The abstract sharded state and the jitted donating train step of `make_train_step(tx,
    schedule, micro_batches, skip_nonfinite)` (what the loop runs and `bert_jax.aot` compiles), with
    `count_invalid(batch)` (a task's `invalid_counts`) checking each batch inside the step. Sets the
    process's PRNG implementation from `config.prng_impl` (`set_prng_impl`) first."""
    set_prng_impl(config.get("prng_impl", "threefry"))
    abstract = abstract_state(model, tx, mesh, rules, config.seed)
    state_shardings = shardings_of(abstract)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    step_fn = make_train_step(tx, schedule, config.get("micro_batches", 1), config.on_nonfinite == "skip")
    if count_invalid is not None:
        step_fn = with_data_checks(step_fn, count_invalid, config.get("on_invalid_data", "stop") == "skip")
    train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, None), donate_argnums=0)
    return Built(mesh, rules, tx, abstract, train_step, batch_sharding)


def with_data_checks(step_fn: Callable, count_invalid: Callable, skip: bool) -> Callable:
    """`step_fn` that also reports `invalid_<field>` counts of its batch (integer reductions, no host
    sync: the loop reads them with the other metrics). With `skip`, a step whose batch has any invalid
    entry leaves params and optimizer state as they were (the step counter advances, the batch is
    consumed); otherwise the loop stops at its next sync point, before anything is saved."""

    def step(state: steps.TrainState, batch):
        counts = count_invalid(batch)
        new_state, metrics = step_fn(state, batch)
        metrics = dict(metrics, **{INVALID + field: count for field, count in counts.items()})
        if skip and counts:
            clean = sum(counts.values()) == 0
            kept = jax.tree.map(lambda new, old: jnp.where(clean, new, old), (new_state.params, new_state.opt_state),
                                (state.params, state.opt_state))
            new_state = new_state.replace(params=kept[0], opt_state=kept[1])
        return new_state, metrics

    return step


def fresh_state(built: Built, params, seed: int) -> steps.TrainState:
    """Step 0 from `params` (already placed): optimizer state born sharded, the run's RNG."""
    replicated = NamedSharding(built.mesh, PartitionSpec())
    return steps.TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                            opt_state=sharding.sharded_optimizer_init(built.tx, params,
                                                                      shardings_of(built.abstract.opt_state)),
                            rng=jax.device_put(jax.random.PRNGKey(seed), replicated))


def check_prng_impl(config, directory, step: int, key_shape: Tuple[int, ...]) -> None:
    """ValueError naming `config.prng_impl` when the checkpoint at `step` holds a key of another PRNG
    implementation (threefry keys are 2 words, rbg keys 4): resuming must not mix the two."""
    try:
        saved = tuple(checkpoints.saved_state_metadata(directory, step)["rng"].shape)
    except Exception:  # unreadable metadata: the restore itself reports (and handles) that checkpoint
        return
    if saved != tuple(key_shape):
        by_words = {2: "threefry", 4: "rbg or unsafe_rbg"}
        raise ValueError(
            f"config.prng_impl={config.get('prng_impl', 'threefry')!r} makes keys of shape {tuple(key_shape)}, but "
            f"the checkpoint at step {step} in {directory} holds a key of shape {saved} "
            f"(prng_impl {by_words.get(saved[0] if saved else 0, 'unknown')}); resume with the run's prng_impl")


def init_or_restore(config, task: LoopTask, built: Built, ckpt: checkpoints.Checkpointer,
                    fresh: bool = True) -> Optional[steps.TrainState]:
    """The latest readable checkpoint restored onto the abstract state (and the task's data position),
    else (with `fresh`) a fresh state from `task.initial_params`, else None."""
    latest = ckpt.latest_step()
    if latest is not None:
        check_prng_impl(config, ckpt.directory, latest, built.abstract.rng.shape)
    restored = ckpt.restore(built.abstract) if latest is not None else None
    if restored is not None:
        start, state, data_state = restored
        data_state = dict(data_state or {})
        task.resumed_train_seconds = float(data_state.pop(LOOP_STATE, {}).get("train_seconds", 0.0))
        if data_state:
            task.restore_data_state(data_state)
        logger.info("resumed from step %d in %s", start, ckpt.directory)
        return state
    if not fresh:
        return None
    params = task.initial_params(built.mesh, built.rules, shardings_of(built.abstract.params))
    return fresh_state(built, params, config.seed)


def make_checkpointer(config, workdir: paths.PathLike, task: LoopTask) -> checkpoints.Checkpointer:
    return checkpoints.Checkpointer(paths.workdir_path(workdir) / "checkpoints",
                                    save_every=max(config.checkpoint_every, 1), keep=config.keep_checkpoints,
                                    async_save=config.get("async_checkpointing", True),
                                    best_metric=task.best_metric, best_mode=task.best_mode)


# ---------------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class LoopResult:
    state: steps.TrainState
    start_step: int
    train: Dict[str, float]  # the last logged train metrics
    eval: Dict[str, float]  # the last evaluation
    preempted: bool  # SIGTERM was received (the state was saved)
    best_step: Optional[int]
    # The wall-clock budget (`config.train_seconds`) ended training before total_steps (or had already been
    # spent by the run this one resumed, which then trained nothing).
    budget_spent: bool = False


def train(config, workdir: paths.PathLike, task: LoopTask, built: Built, ckpt: checkpoints.Checkpointer,
          state: steps.TrainState) -> LoopResult:
    """Runs `state` to `task.total_steps`; logs every `config.log_every` steps (and at the end),
    evaluates as the task asks, saves every `config.checkpoint_every` steps (> 0), at every ranked
    evaluation, at the end and on SIGTERM (at a step every process agrees on, see `preemption`).
    Closes `ckpt`.

    With a wall-clock budget `config.train_seconds` > 0, the first step at which the training clock has
    reached it is the last: it is logged, evaluated (with `eval_at_end`) and saved as the end of the run.
    The clock counts seconds spent in this loop after the first step of this start (which compiles) minus
    evaluations, carried over a resume through the checkpoint; it is read on the host after each step is
    dispatched, so steps still in flight then finish too. `inf` logs the clock (`train_seconds` in the train and eval lines) without a
    budget. 0 (the default) neither stops nor logs anything new."""
    workdir = paths.workdir_path(workdir)
    is_main = jax.process_index() == 0
    mesh, rules, total = built.mesh, built.rules, task.total_steps
    start_step = int(state.step)
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
    pending = []  # metrics of steps in flight (device arrays), fetched at log/eval/save points
    window = collections.deque(maxlen=config.log_every)  # fetched metrics of the latest steps
    synced, skipped = start_step, 0  # steps whose metrics were fetched; skipped (non-finite or invalid data) since the last log
    last_log, paused = time.perf_counter(), 0.0  # paused: eval seconds, left out of seq/s
    last_good = ckpt.latest_step()
    train_metrics: Dict[str, float] = {}
    eval_metrics: Dict[str, float] = {}
    profile_at = config.get("profile_steps", 0)
    every = config.checkpoint_every
    progress = metrics_lib.ProgressBar(total, initial=start_step, enabled=is_main and config.get("progress_bar", True))
    preemption = Preemption(config.get("preemption_check_every", 10))
    budget = float(config.get("train_seconds", 0.0) or 0.0)
    clock = TrainingClock(task.resumed_train_seconds if start_step else 0.0) if budget > 0 else None
    # Process 0's clock decides here too: every process must agree whether there is anything to train.
    budget_spent = clock is not None and start_step < total and _agreed(clock.seconds() >= budget)
    if budget_spent:
        logger.info("the wall-clock budget of %.1f s was spent before step %d: nothing to train", budget, start_step)
    with sharding.activation_context(mesh, rules), preemption, progress:
        for step in range(start_step, total if not budget_spent else start_step):
            if profile_at and step == start_step + 2:
                jax.profiler.start_trace(os.fspath(workdir / "profile"))
            batch = sharding.make_global_batch(task.next_batch(), mesh, rules)
            state, step_metrics = built.train_step(state, batch)
            pending.append(step_metrics)
            if clock is not None and step == start_step:  # compilation is not training: start the clock after it
                jax.block_until_ready(step_metrics)
                clock.restart()
            progress.advance()
            if profile_at and step == start_step + 2 + profile_at:
                jax.profiler.stop_trace()
            done = step + 1
            stop = preemption.should_stop(done)  # the same on every process: they save and stop together
            # Every process must agree on the last step: process 0's clock decides for all of them, at the
            # preemption agreement's cadence (a collective every step would sync the host with the devices).
            over_budget = (clock is not None and math.isfinite(budget)  # inf: the clock is only logged
                           and (jax.process_count() == 1 or done % preemption.check_every == 0)
                           and _agreed(clock.seconds() >= budget))
            is_last = done == total or over_budget
            is_log = done % config.log_every == 0 or is_last
            is_eval = (is_last and task.eval_at_end) or bool(task.eval_every) and done % task.eval_every == 0
            rank = is_eval and task.best_metric is not None  # every evaluated state is a best candidate: save it
            is_save = is_last or stop or rank or (every > 0 and done % every == 0)
            if not (is_log or is_save or is_eval):
                continue  # the step stays in flight: no host sync between log points
            fetched = jax.device_get(pending)
            # Invalid data first: it is the more specific cause when both fire.
            invalid = invalid_data_steps(fetched, synced, config.get("on_invalid_data", "stop"), task, ckpt, last_good)
            bad = sorted(set(invalid) | set(nonfinite_steps(fetched, synced, config.on_nonfinite, ckpt, last_good)))
            window.extend({k: v for k, v in m.items() if not k.startswith(INVALID)} for m in fetched)
            synced, skipped, pending = synced + len(fetched), skipped + len(bad), []
            if is_log:
                now = time.perf_counter()
                elapsed, last_log, paused = max(now - last_log - paused, 1e-9), now, 0.0
                means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                steps_per_s = _steps_since_last_log(done, config.log_every, start_step) / elapsed
                train_metrics = task.train_summary(means, done, steps_per_s, skipped)
                if clock is not None:
                    train_metrics = dict(train_metrics, train_seconds=clock.seconds())
                skipped = 0
                writer.write(done, train_metrics)
                progress.show(train_metrics)
                if is_main:
                    logger.info(metrics_lib.format_metrics(done, total, train_metrics))
            if is_eval:
                eval_start = time.perf_counter()
                trained_seconds = clock.seconds() if clock is not None else None
                eval_metrics = task.evaluate(state.params, done)
                writer.write(done, eval_metrics if clock is None else dict(eval_metrics, train_seconds=trained_seconds),
                             prefix="eval")
                if is_main:
                    logger.info("eval at step %d: %s%s", done, {k: round(v, 4) for k, v in eval_metrics.items()},
                                task.eval_note())
                paused += time.perf_counter() - eval_start
                if clock is not None:
                    clock.pause(time.perf_counter() - eval_start)
            if is_save and ckpt.save(done, state, _data_state(task, clock), metrics=eval_metrics if rank else None,
                                     force=True):
                last_good = done
            if preemption.should_stop(done):  # one process: also a SIGTERM that came during this eval/save
                if last_good != done:  # SIGTERM arrived after this step's save check
                    unchecked = jax.device_get(pending)
                    pending = []
                    clean = all(not any(v for k, v in m.items() if k.startswith(INVALID)) for m in unchecked)
                    if ((config.on_nonfinite == "skip" or all(m["finite"] for m in unchecked))
                            and (config.get("on_invalid_data", "stop") == "skip" or clean)):
                        ckpt.save(done, state, _data_state(task, clock), force=True)
                        last_good = done
                break
            if over_budget:
                budget_spent = True
                logger.info("wall-clock budget of %.1f s reached at step %d of %d", budget, done, total)
                break
    ckpt.wait()
    result = LoopResult(state, start_step, train_metrics, eval_metrics, preemption.requested, ckpt.best_step(),
                        budget_spent)
    ckpt.close()
    writer.close()
    return result


class TrainingClock:
    """Seconds of training: wall-clock since construction (or `restart`), plus the seconds before a
    resume, minus the pauses (evaluations) reported with `pause`."""

    def __init__(self, before: float = 0.0):
        self.start, self.before, self.paused = time.perf_counter(), before, 0.0

    def restart(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start - self.paused


def _agreed(flag: bool) -> bool:
    """Process 0's `flag` on every process (a collective on multi-process runs: all must call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def _data_state(task: LoopTask, clock: Optional[TrainingClock]) -> dict:
    """What a checkpoint saves besides the state: the task's data position and, with a wall-clock
    budget, the training seconds so far (for the resumed run's clock)."""
    data_state = task.data_state()
    if clock is None:
        return data_state
    return dict(data_state, **{LOOP_STATE: {"train_seconds": clock.seconds()}})


def nonfinite_steps(fetched: list, synced: int, on_nonfinite: str, ckpt, last_good: Optional[int]) -> list:
    """Steps (1-based) among the just-fetched step metrics whose loss or gradients were not finite;
    with `on_nonfinite="stop"` the first one raises `NonFiniteError` naming the last good checkpoint."""
    bad = [synced + i + 1 for i, m in enumerate(fetched) if not m["finite"]]
    if bad and on_nonfinite == "stop":
        ckpt.wait()
        raise NonFiniteError(f"non-finite loss or gradients at step {bad[0]}; last good checkpoint: "
                             f"{last_good if last_good is not None else 'none'} in {ckpt.directory}")
    return bad


def invalid_data_steps(fetched: list, synced: int, on_invalid_data: str, task: LoopTask, ckpt,
                       last_good: Optional[int]) -> list:
    """Steps (1-based) among the just-fetched step metrics whose batch held invalid entries; with
    `on_invalid_data="stop"` the first one raises `InvalidDataError` naming the step, the field, the
    count and what a valid value is; with "skip" each is logged (those steps did not update)."""
    found = []
    for i, m in enumerate(fetched):
        counts = {k[len(INVALID):]: int(v) for k, v in m.items() if k.startswith(INVALID) and int(v)}
        if not counts:
            continue
        step = synced + i + 1
        found.append(step)
        what = _describe_invalid(counts, task)
        if on_invalid_data == "stop":
            ckpt.wait()
            raise InvalidDataError(f"invalid data in the batch of step {step}: {what}. Last good checkpoint: "
                                   f"{last_good if last_good is not None else 'none'} in {ckpt.directory}; "
                                   f"--config.on_invalid_data=skip skips such steps instead")
        logger.warning("step %d skipped (params not updated): %s", step, what)
    return found


def check_eval_data(counts: Dict[str, int], on_invalid_data: str, task: LoopTask) -> None:
    """Invalid entries counted over an evaluation: "stop" raises `InvalidDataError` naming each field,
    "skip" logs them (the eval losses and accuracies leave those entries out)."""
    counts = {field: count for field, count in counts.items() if count}
    if not counts:
        return
    what = _describe_invalid(counts, task)
    if on_invalid_data == "stop":
        raise InvalidDataError(f"invalid data in the evaluation batches: {what}; --config.on_invalid_data=skip "
                               "leaves those entries out instead")
    logger.warning("evaluation: invalid entries left out: %s", what)


def _describe_invalid(counts: Dict[str, int], task: LoopTask) -> str:
    """"masked_lm_ids: 2 invalid entries (must be in [0, 300) (vocab_size=300)); ..." """
    parts = []
    for field, count in counts.items():
        requirement = task.requirement(field)
        parts.append(f"{field}: {count} invalid entr{'y' if count == 1 else 'ies'}"
                     + (f" ({requirement})" if requirement else ""))
    return "; ".join(parts)


def _steps_since_last_log(done: int, log_every: int, start_step: int) -> int:
    """Steps run since the previous log line (the first line after a (re)start counts from the start)."""
    previous = max(start_step, (done - 1) // log_every * log_every)
    return max(done - previous, 1)


def check_config(config: ml_collections.ConfigDict) -> None:
    if config.log_every <= 0:
        raise ValueError(f"config.log_every must be > 0, got {config.log_every}")
    budget = config.get("train_seconds", 0.0)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
        raise ValueError(f"config.train_seconds must be a number of seconds >= 0 (0: no wall-clock budget; inf: "
                         f"log the training clock without one), got {budget!r}")
    for name in ("on_nonfinite", "on_invalid_data"):
        if config.get(name, "stop") not in ("stop", "skip"):
            raise ValueError(f"config.{name} must be 'stop' or 'skip', got {config.get(name)!r}")
