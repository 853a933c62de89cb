"""Fine-tuning any `bert_jax.tasks.Task` as a task of the training loop: `train_and_evaluate`,
`evaluate`, `predict`.

    run = setup(config, workdir)               # task, tokenizer, model, mesh (finetune_setup.py)
    train_and_evaluate(config, workdir)        # trains, evaluates every dev split, keeps the best

Data flows one way as in pretraining: the task's host features -> a seeded permutation per epoch ->
global batches on the mesh -> jitted step; eval batches come back as the model's outputs for every
dev feature, which the task turns into predictions and its reference metrics.

The model is the task's head (`HEAD_MODELS`) over the encoder of `config.init_from` (see
`training/finetune_setup.py`); the loop itself (`training/loop.py`) is the pretraining one.

Resume is exact: the batch of every step is a function of (seed, epoch, position), and the iterator
position, the best-so-far and its metrics are saved with each checkpoint. SIGTERM saves and exits.

Workdir: config.json, model_config.json (HF config with `architectures` and the task's labels),
tokenizer/, checkpoints/ (latest `keep_checkpoints` + the best on dev), metrics.jsonl, tensorboard/,
final_metrics.json; evaluate writes eval_metrics.json, predict the task's predictions file.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.modeling import losses
from bert_jax.tasks import Features, Task
from bert_jax.training import checkpoints, loop, paths, steps
from bert_jax.training.finetune_setup import (INPUT_KEYS, BertTokenizer, Run, load_features,  # noqa: F401  (API)
                                              setup)
from bert_jax.training.optim import make_optimizer

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- data
class EpochSampler:
    """Global batches of feature indices: epoch e visits a permutation seeded by (seed, e); a batch
    that crosses an epoch's end continues into the next epoch. The position (epoch, offset into the
    epoch) is the whole iterator state."""

    def __init__(self, num_features: int, batch_size: int, seed: int, epoch: int = 0, position: int = 0):
        if num_features < 1:
            raise ValueError("the training split has no features")
        self.num_features, self.batch_size, self.seed = num_features, batch_size, seed
        self.epoch, self.position = epoch, position
        self._cache: Dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_features)}
        return self._cache[epoch]

    def next(self) -> np.ndarray:
        """Indices [batch_size] of the next global batch."""
        out = []
        while len(out) < self.batch_size:
            take = min(self.batch_size - len(out), self.num_features - self.position)
            out.extend(self.permutation(self.epoch)[self.position:self.position + take])
            self.position += take
            if self.position == self.num_features:
                self.epoch, self.position = self.epoch + 1, 0
        return np.asarray(out, np.int64)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


def _local_rows(global_rows: np.ndarray, process_index: Optional[int] = None,
                process_count: Optional[int] = None) -> np.ndarray:
    """This process's contiguous block [len(global_rows) // process_count] of a global batch
    (processes in order, as make_global_batch expects when the batch axes span processes). The
    process defaults to this one (arguments: for tests that play several processes)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    per_process = len(global_rows) // process_count
    start = process_index * per_process
    return global_rows[start:start + per_process]


def _check_batch(size: int, mesh, rules, name: str) -> None:
    shards = math.prod(mesh.shape[a] for a in _batch_axes(rules))
    if size % shards or size % jax.process_count():
        raise ValueError(f"config.data.{name}={size} must be divisible by the {shards} data shards and "
                         f"{jax.process_count()} processes")


def _batch_axes(rules) -> Tuple[str, ...]:
    spec = sharding.batch_spec(rules)[0]
    return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


# ----------------------------------------------------------------------------------------- steps
def make_train_step(model, tx: optax.GradientTransformation, schedule, micro_batches: int = 1,
                    skip_nonfinite: bool = False):
    """`train_step(state, batch) -> (state, metrics)`: the head's own loss on `batch` (inputs and
    labels as the head's keyword arguments), averaged over `micro_batches` equal slices (the big
    batch's loss exactly for per-example means; token classification weighs each slice equally)."""

    def loss_fn(params, batch, rng):
        return model.apply({"params": params}, **batch, deterministic=False, rngs={"dropout": rng}).loss

    def train_step(state: steps.TrainState, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        loss_and_grads = lambda micro, index: jax.value_and_grad(loss_fn)(state.params, micro,
                                                                          jax.random.fold_in(step_rng, index))
        loss, grads = jax.tree.map(lambda x: x / micro_batches,
                                   steps.sum_over_micro_batches(loss_and_grads, batch, micro_batches))
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "finite": finite.astype(jnp.float32)}
        return steps.apply_gradients(state, grads, tx, finite, skip_nonfinite), metrics

    return train_step


def make_predict_step(model, output_keys: Tuple[str, ...]):
    def predict_step(params, inputs):
        out = model.apply({"params": params}, **inputs, deterministic=True)
        return {k: getattr(out, k).astype(jnp.float32) for k in output_keys}
    return predict_step


def jit_predict_step(run: Run):
    """`make_predict_step` for the run's head, jitted; outputs replicated (every host gets them all)."""
    replicated = NamedSharding(run.mesh, PartitionSpec())
    return jax.jit(make_predict_step(run.model, run.output_keys), out_shardings=replicated)


def model_outputs(run: Run, predict_step, params, features: Features) -> Dict[str, np.ndarray]:
    """The model's outputs for every feature (host float32 [N, ...]). The last partial batch is
    padded with copies of row 0 whose outputs are dropped."""
    batch_size = run.config.data.eval_batch_size
    n = len(features)
    padded = np.concatenate([np.arange(n), np.zeros((-n) % batch_size, np.int64)])
    outputs: Dict[str, list] = collections.defaultdict(list)
    for start in range(0, len(padded), batch_size):
        rows = _local_rows(padded[start:start + batch_size])
        inputs = {k: v[rows] for k, v in features.inputs.items() if k in INPUT_KEYS}
        out = jax.device_get(predict_step(params, sharding.make_global_batch(inputs, run.mesh, run.rules)))
        for k, v in out.items():
            outputs[k].append(np.asarray(v))
    return {k: np.concatenate(v)[:n] for k, v in outputs.items()}


def _scalars(metrics: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float, np.number)) or (isinstance(v, np.ndarray) and v.ndim == 0):
            out[k] = float(v)
    return out


def evaluate_splits(run: Run, predict_step, params, dev: Dict[str, Tuple[list, Features]]) -> Dict[str, dict]:
    """{split: task metrics} for every dev split."""
    results = {}
    for split, (examples, features) in dev.items():
        outputs = model_outputs(run, predict_step, params, features)
        predictions = run.task.postprocess(outputs, features, examples)
        results[split] = run.task.metrics(predictions, examples)
    return results


def _flat_eval(results: Dict[str, dict]) -> Dict[str, float]:
    return {f"{split}/{k}": v for split, metrics in results.items() for k, v in _scalars(metrics).items()}


# -------------------------------------------------------------------------------------- schedule
def plan_steps(config, num_features: int) -> Tuple[int, int, int]:
    """(total steps, steps per epoch, eval interval) from the config and the training features."""
    batch = config.data.global_batch_size
    per_epoch = max(1, math.ceil(num_features / batch))
    total = config.total_steps if config.get("total_steps", -1) > 0 else math.ceil(config.num_epochs * num_features
                                                                                  / batch)
    if total < 1:
        raise ValueError(f"no training steps: num_epochs={config.num_epochs} over {num_features} features")
    every = config.get("eval_every", -1)
    eval_every = per_epoch if every < 0 else every  # 0: only at the end
    return total, per_epoch, eval_every


def _optimizer(config, total_steps: int):
    optim = ml_collections.ConfigDict(config.optim.to_dict())
    optim.total_steps = total_steps
    return make_optimizer(optim)


# ------------------------------------------------------------------------------------------ modes
class FineTuningTask(loop.LoopTask):
    """A fine-tuning task for the loop: the head's own loss on a seeded permutation of the training
    features per epoch; evaluation = the task's metrics on every dev split, tracking the best."""

    def __init__(self, run: Run, train: Features, dev: Dict[str, Tuple[list, Features]], total: int,
                 per_epoch: int, eval_every: int):
        config, task = run.config, run.task
        self.run, self.dev, self.per_epoch = run, dev, per_epoch
        self.model, self.total_steps, self.eval_every, self.eval_at_end = run.model, total, eval_every, True
        self.best_metric = f"{task.eval_splits[0]}/{task.metric_for_best}" if task.eval_splits else None
        self.best_mode = task.metric_mode
        self.train_arrays = {**{k: v for k, v in train.inputs.items() if k in INPUT_KEYS}, **train.labels}
        self.sampler = EpochSampler(len(train), config.data.global_batch_size, config.seed)
        self.tracker = {"best_step": None, "best_value": None, "best": {}}
        self.predict_step = jit_predict_step(run)
        self.results: Dict[str, dict] = {}  # of the latest evaluation

    def make_train_step(self, tx, schedule, micro_batches, skip_nonfinite):
        return make_train_step(self.model, tx, schedule, micro_batches, skip_nonfinite)

    def invalid_counts(self, batch):
        return losses.invalid_counts(batch, self.model.config, self.model)

    def requirement(self, field: str) -> str:
        shapes = {k: jax.ShapeDtypeStruct((1,) + v.shape[1:], v.dtype) for k, v in self.train_arrays.items()}
        return losses.requirements(shapes, self.model.config, self.model).get(field, "")

    def initial_params(self, mesh, rules, shardings):
        return self.run.initial_params()

    def next_batch(self):
        rows = _local_rows(self.sampler.next())
        return {k: v[rows] for k, v in self.train_arrays.items()}

    def data_state(self) -> dict:
        return dict(self.sampler.state(), **self.tracker)

    def restore_data_state(self, data_state: dict) -> None:
        self.sampler.epoch, self.sampler.position = int(data_state["epoch"]), int(data_state["position"])
        self.tracker.update({k: data_state[k] for k in self.tracker if k in data_state})
        logger.info("resuming at epoch %d, position %d", self.sampler.epoch, self.sampler.position)

    def evaluate(self, params, step: int) -> Dict[str, float]:
        self.results = evaluate_splits(self.run, self.predict_step, params, self.dev)
        flat = _flat_eval(self.results)
        _update_best(self.tracker, step, self.results, flat, self.best_metric, self.best_mode)
        return flat

    def eval_note(self) -> str:
        return f" (best: step {self.tracker['best_step']})"

    def train_summary(self, means, done, steps_per_s, skipped):
        summary = {k: v for k, v in means.items() if k != "finite"}
        summary.update(seq_per_s=steps_per_s * self.run.config.data.global_batch_size, epoch=done / self.per_epoch)
        return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> Dict[str, Any]:
    """Fine-tunes (or resumes) in `workdir`; returns {step, best_step, best, final, train,
    preempted, state, run}."""
    loop.check_config(config)
    run = setup(config, workdir, write_files=True)
    task, is_main = run.task, jax.process_index() == 0
    _check_batch(config.data.global_batch_size, run.mesh, run.rules, "global_batch_size")
    _check_batch(config.data.eval_batch_size, run.mesh, run.rules, "eval_batch_size")
    micro = config.get("micro_batches", 1)
    if micro < 1 or config.data.global_batch_size % micro:
        raise ValueError(f"config.data.global_batch_size={config.data.global_batch_size} must divide by "
                         f"config.micro_batches={micro}")
    _, train = load_features(run, task.train_split)
    if not train.labels:
        raise ValueError(f"task {task.name!r}: training split {task.train_split!r} has no labels")
    dev = {split: load_features(run, split) for split in task.eval_splits}
    total, per_epoch, eval_every = plan_steps(config, len(train))
    tx, schedule = _optimizer(config, total)
    plug = FineTuningTask(run, train, dev, total, per_epoch, eval_every)
    built = loop.build(config, run.model, tx, schedule, plug.make_train_step, run.mesh, run.rules, plug.invalid_counts)
    ckpt = loop.make_checkpointer(config, run.workdir, plug)
    state = loop.init_or_restore(config, plug, built, ckpt)  # resume: nothing to load from init_from
    logger.info("fine-tuning %s: %d train features, %d steps (%d per epoch), eval every %s", task.name, len(train),
                total, per_epoch, eval_every or "run (at the end)")

    result = loop.train(config, run.workdir, plug, built, ckpt, state)
    state, final_results = result.state, plug.results
    preempted = result.preempted and int(state.step) < total
    if not final_results and not preempted:  # resumed after the last step: report the saved run
        with sharding.activation_context(run.mesh, run.rules):
            final_results = evaluate_splits(run, plug.predict_step, state.params, dev)
    tracker = plug.tracker
    final = {"step": int(state.step), "total_steps": total, "best_step": tracker["best_step"],
             "best_metric": plug.best_metric, "best": tracker["best"], "final": _jsonable(final_results),
             "train": result.train, "preempted": preempted}
    if is_main and not preempted:
        paths.write_json(run.workdir / "final_metrics.json", final)
    return dict(final, state=state, run=run)


def _update_best(tracker: dict, step: int, results: Dict[str, dict], flat: Dict[str, float], key: Optional[str],
                 mode: str) -> None:
    if key is None:
        return
    if key not in flat:
        raise KeyError(f"metric_for_best {key!r} is not among the eval metrics {sorted(flat)}")
    value, best = checkpoints.rank_value(flat[key], mode), tracker["best_value"]
    # A tie goes to the later step, as in orbax's BestN (a stable sort, last wins): the step recorded
    # here is then the one the checkpoint manager keeps and `evaluate`/`predict`/export restore. A NaN
    # metric (e.g. STS-B's correlation of constant predictions) ranks worst, as in the checkpointer.
    if best is None or (value >= best if mode == "max" else value <= best):
        tracker.update(best_step=step, best_value=value, best=_jsonable(results))


def _jsonable(results: Dict[str, dict]) -> Dict[str, dict]:
    return {split: _scalars(metrics) for split, metrics in results.items()}


def _restore_params_of(run: Run, step: Optional[int]) -> Tuple[int, Any]:
    """(step, params) of checkpoint `step` in the run's workdir; default: the best, else the latest."""
    ckpt_dir = run.workdir / "checkpoints"
    task = run.task
    best_key = f"{task.eval_splits[0]}/{task.metric_for_best}" if task.eval_splits else None
    ckpt = checkpoints.Checkpointer(ckpt_dir, best_metric=best_key, best_mode=task.metric_mode)
    available = ckpt.all_steps()
    if not available:
        ckpt.close()
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: fine-tune first (config.mode=finetune)")
    if step is None or step < 0:
        step = ckpt.best_step() or available[-1]
    elif step not in available:
        ckpt.close()
        raise ValueError(f"no checkpoint at step {step} in {ckpt_dir}; available: {available}")
    ckpt.close()
    return step, checkpoints.restore_params(ckpt_dir, run.abstract_params(), step=step)


def evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike, step: Optional[int] = None) -> Dict[str, Any]:
    """Task metrics of a checkpoint in `workdir` (`step`, else `config.eval_step`, else the best) on
    every dev split; written to workdir/eval_metrics.json."""
    run = setup(config, workdir)
    step, params = _restore_params_of(run, step if step is not None else config.get("eval_step", -1))
    dev = {split: load_features(run, split) for split in run.task.eval_splits}
    predict_step = jit_predict_step(run)
    with sharding.activation_context(run.mesh, run.rules):
        results = _jsonable(evaluate_splits(run, predict_step, params, dev))
    logger.info("eval of step %d: %s", step, results)
    if jax.process_index() == 0:
        paths.write_json(run.workdir / "eval_metrics.json", {"step": step, "eval": results})
    return {"step": step, "eval": results, "run": run}


def predict_splits(task: Task) -> Tuple[str, ...]:
    """The splits predict mode writes: `task.predict_splits` (GLUE MNLI: test_matched, ...),
    else `task.predict_split`, else (tasks with hidden test sets, e.g. SQuAD) the dev splits."""
    splits = tuple(getattr(task, "predict_splits", None) or ())
    if not splits:
        splits = (task.predict_split,) if task.predict_split else tuple(task.eval_splits)
    return splits


def predict(config: ml_collections.ConfigDict, workdir: paths.PathLike, step: Optional[int] = None) -> Dict[str, Any]:
    """Writes the task's predictions file for each of `predict_splits(task)` (e.g. the GLUE test
    TSVs) from the best checkpoint (or `step` / `config.eval_step`) into the workdir; returns
    {step, paths, predictions, run}."""
    run = setup(config, workdir)
    splits = predict_splits(run.task)
    if not splits:
        raise ValueError(f"task {run.task.name!r} has no split to predict")
    step, params = _restore_params_of(run, step if step is not None else config.get("eval_step", -1))
    predict_step = jit_predict_step(run)
    written, all_predictions = {}, {}
    for split in splits:
        examples, features = load_features(run, split)
        with sharding.activation_context(run.mesh, run.rules):
            outputs = model_outputs(run, predict_step, params, features)
        predictions = run.task.postprocess(outputs, features, examples)
        path = run.workdir / run.task.predictions_filename(split)
        if jax.process_index() == 0:
            # Task writers use open(): on a gs:// workdir they write a local file that is copied over.
            with paths.staged_dir(path.parent) as local_dir:
                run.task.write_predictions(predictions, examples, os.path.join(local_dir, path.name))
        logger.info("wrote predictions of step %d for %s/%s to %s", step, run.task.name, split, path)
        written[split], all_predictions[split] = os.fspath(path), predictions
    return {"step": step, "paths": written, "predictions": all_predictions, "run": run}
