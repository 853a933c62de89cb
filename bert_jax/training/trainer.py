"""`train_and_evaluate(config, workdir)`: the pretraining loop.

Data flows one way: loader (per host) -> global arrays on the mesh -> jitted train step -> metrics /
Orbax. The loop never syncs with the device except to log, evaluate and checkpoint, so it adds
little over the bare step.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.config import BertConfig
from bert_jax.modeling import BertForMaskedLM, BertForPreTraining
from bert_jax.training import checkpoints, data as training_data, metrics as metrics_lib, paths, steps
from bert_jax.training.optim import make_optimizer

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (then saves and exits cleanly)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logger.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def flops_per_token(config: BertConfig, seq_len: int, mlm_fraction: float) -> float:
    """Training FLOPs per token: 6·N_non-embedding + 12·L·hidden·seq + 6·hidden·vocab·f (the
    benchmark's count, so the loop's MFU and the benchmark's agree)."""
    from bert_jax.benchmark import flops_per_token as benchmark_flops_per_token
    return benchmark_flops_per_token(config, seq_len, mlm_fraction, training=True)


def build_model(config: ml_collections.ConfigDict, model_config: BertConfig):
    return BertForPreTraining(model_config) if config.objective == "mlm_nsp" else BertForMaskedLM(model_config)


def write_model_files(workdir: paths.PathLike, config: ml_collections.ConfigDict, model_config: BertConfig,
                      tokenizer: Optional[Any]) -> None:
    """What `bert_jax.export` reads besides the checkpoints: `model_config.json` (the HF config, with
    the pretraining architecture) and `tokenizer/` (kept if already there: the run's own trained
    vocab, or the one from an earlier start of this run)."""
    architecture = "BertForPreTraining" if config.objective == "mlm_nsp" else "BertForMaskedLM"
    workdir = paths.workdir_path(workdir)
    paths.write_json(workdir / "model_config.json", model_config.to_hf([architecture]))
    saved = workdir / "tokenizer"
    if tokenizer is not None and not (saved / "vocab.txt").is_file():
        tokenizer.save(saved)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> Dict[str, Any]:
    """Evaluates the latest checkpoint in `workdir` on the held-out batches."""
    return train_and_evaluate(config, workdir, eval_only=True)


def _check_loop_config(config: ml_collections.ConfigDict) -> None:
    for key in ("log_every", "checkpoint_every"):
        if config[key] <= 0:
            raise ValueError(f"config.{key} must be > 0, got {config[key]}")
    if config.get("best_metric") and not config.eval_every:
        raise ValueError(f"config.best_metric={config.best_metric!r} needs evaluations: set config.eval_every > 0")
    if config.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"config.on_nonfinite must be 'stop' or 'skip', got {config.on_nonfinite!r}")


@dataclasses.dataclass
class Run:
    """Everything a pretraining run computes with, before any checkpoint is restored."""
    mesh: jax.sharding.Mesh
    rules: Any
    data: training_data.PretrainingData
    model_config: BertConfig
    model: Any  # BertForPreTraining | BertForMaskedLM
    state: steps.TrainState  # freshly initialised (or from config.init_from), sharded on `mesh`
    train_step: Callable  # jitted (state, global batch) -> (state, metrics); donates the state
    eval_step: Callable  # jitted (params, global batch) -> sums
    step_flops: float  # model FLOPs of one training step (global batch)


def build_run(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> Run:
    """Mesh, input pipeline, model, optimizer, initial state and the jitted steps for `config`
    (shared by `train_and_evaluate` and benchmarks/loop_overhead.py, which times the bare step)."""
    mesh = sharding.create_mesh(sharding.MeshConfig(ici_parallelism=tuple(config.mesh.ici_parallelism),
                                                    dcn_parallelism=tuple(config.mesh.dcn_parallelism)))
    rules = sharding.rules_from_config(config.mesh.get("rules") or None)
    data = training_data.build_pretraining_data(config, workdir)
    model_config = BertConfig(**{**config.model.to_dict(), "vocab_size": data.vocab_size,
                                 "pad_token_id": data.pad_token_id,
                                 "max_position_embeddings": max(config.model.max_position_embeddings,
                                                                config.data.seq_len)})
    model = build_model(config, model_config)
    tx, schedule = make_optimizer(config.optim)

    params_shardings = sharding.param_shardings(model, mesh, rules)
    params = _initial_params(config, model, mesh, rules, params_shardings)
    opt_state = sharding.sharded_optimizer_init(tx, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = steps.TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                             opt_state=opt_state, rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    train_step = jax.jit(steps.make_train_step(model, tx, schedule, micro_batches=config.get("micro_batches", 1),
                                               skip_nonfinite=config.on_nonfinite == "skip"),
                         in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
                         out_shardings=(state_shardings, None), donate_argnums=0)
    eval_step = jax.jit(steps.make_eval_step(model))
    seq_len = config.data.seq_len
    step_flops = (flops_per_token(model_config, seq_len, config.data.max_predictions / seq_len)
                  * seq_len * config.data.global_batch_size)
    return Run(mesh, rules, data, model_config, model, state, train_step, eval_step, step_flops)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike, eval_only: bool = False) -> Dict[str, Any]:
    """Runs (or resumes) the run in `workdir`; returns the final train and eval metrics.

    Writes into `workdir` (a local directory or a gs:// URL, see `paths`): config.json (the effective
    config), model_config.json + tokenizer/ (for export), checkpoints/, metrics.jsonl, tensorboard/
    and, at the end, final_metrics.json."""
    _check_loop_config(config)
    sharding.maybe_initialize_distributed()
    workdir = paths.workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        paths.write_json(workdir / "config.json", config.to_dict())

    run = build_run(config, workdir)
    if is_main:
        write_model_files(workdir, config, run.model_config, run.data.tokenizer)
    mesh, rules, data, model, state = run.mesh, run.rules, run.data, run.model, run.state

    best_metric = config.get("best_metric", "") or None
    ckpt = checkpoints.Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                                    keep=config.keep_checkpoints, async_save=config.get("async_checkpointing", True),
                                    best_metric=best_metric, best_mode=config.get("best_mode", "max"))
    train_iter = iter(data.train_loader)
    restored = ckpt.restore(checkpoints.abstract_like(state))
    if restored is not None:
        start, state, data_state = restored
        if data_state:
            training_data.restore_iterator_state(train_iter, data_state)
        logger.info("resumed from step %d in %s", start, workdir)
    elif eval_only:
        raise FileNotFoundError(f"no checkpoint to evaluate in {ckpt.directory}")
    start_step = int(state.step)

    train_step, eval_step, step_flops = run.train_step, run.eval_step, run.step_flops
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
    seq_len, batch_size = config.data.seq_len, config.data.global_batch_size
    peak_flops = metrics_lib.peak_flops_per_second(list(mesh.devices.flat), config.get("peak_tflops_per_device", 0.0))

    if eval_only:
        with sharding.activation_context(mesh, rules):
            eval_metrics = evaluate(eval_step, state.params, data, mesh, rules)
        ckpt.close()
        logger.info("eval of step %d: %s", start_step, eval_metrics)
        return {"step": start_step, "train": {}, "eval": eval_metrics, "preempted": False, "state": state,
                "model": model, "data": data}

    pending = []  # metrics of steps in flight (device arrays), fetched at log/eval/save points
    window = collections.deque(maxlen=config.log_every)  # fetched metrics of the latest steps
    synced, skipped = start_step, 0  # steps whose metrics were fetched; skipped (non-finite) since the last log
    last_log, paused = time.perf_counter(), 0.0  # paused: eval seconds, left out of seq/s
    last_good = ckpt.latest_step()
    train_metrics: Dict[str, float] = {}
    eval_metrics: Dict[str, float] = {}
    profile_at = config.get("profile_steps", 0)
    progress = metrics_lib.ProgressBar(config.total_steps, initial=start_step,
                                       enabled=is_main and config.get("progress_bar", True))
    with sharding.activation_context(mesh, rules), _Preemption() as preemption, progress:
        for step in range(start_step, config.total_steps):
            if profile_at and step == start_step + 2:
                jax.profiler.start_trace(os.fspath(workdir / "profile"))
            batch = sharding.make_global_batch(next(train_iter), mesh, rules)
            state, step_metrics = train_step(state, batch)
            pending.append(step_metrics)
            progress.advance()
            if profile_at and step == start_step + 2 + profile_at:
                jax.profiler.stop_trace()
            done = step + 1
            is_last = done == config.total_steps
            is_log = done % config.log_every == 0 or is_last
            is_eval = bool(config.eval_every) and (done % config.eval_every == 0 or is_last)
            rank = is_eval and best_metric is not None  # every evaluated state is a best candidate: save it
            must_save = is_last or preemption.requested or rank
            is_save = must_save or done % config.checkpoint_every == 0
            if not (is_log or is_save or is_eval):
                continue  # the step stays in flight: no host sync between log points
            fetched = jax.device_get(pending)
            bad = nonfinite_steps(fetched, synced, config.on_nonfinite, ckpt, last_good)
            window.extend(fetched)
            synced, skipped, pending = synced + len(fetched), skipped + len(bad), []
            if is_log:
                now = time.perf_counter()
                elapsed, last_log, paused = max(now - last_log - paused, 1e-9), now, 0.0
                train_metrics = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                steps_per_s = _steps_since_last_log(done, config.log_every, start_step) / elapsed
                train_metrics.update(seq_per_s=steps_per_s * batch_size,
                                     tokens_per_s=steps_per_s * batch_size * seq_len, skipped_steps=float(skipped),
                                     **metrics_lib.utilisation(step_flops, steps_per_s, peak_flops))
                skipped = 0
                writer.write(done, train_metrics)
                progress.show(train_metrics)
                if is_main:
                    logger.info(metrics_lib.format_metrics(done, config.total_steps, train_metrics))
            if is_eval:
                eval_start = time.perf_counter()
                eval_metrics = evaluate(eval_step, state.params, data, mesh, rules)
                writer.write(done, eval_metrics, prefix="eval")
                if is_main:
                    logger.info("eval at step %d: %s", done, {k: round(v, 4) for k, v in eval_metrics.items()})
                paused += time.perf_counter() - eval_start
            if is_save and ckpt.save(done, state, training_data.gather_iterator_states(train_iter),
                                     metrics=eval_metrics if rank else None, force=must_save):
                last_good = done
            if preemption.requested:
                if last_good != done:  # SIGTERM arrived after this step's save check
                    unchecked = jax.device_get(pending)
                    pending = []
                    if config.on_nonfinite == "skip" or all(m["finite"] for m in unchecked):
                        ckpt.save(done, state, training_data.gather_iterator_states(train_iter), force=True)
                        last_good = done
                break
    ckpt.wait()
    final_path = workdir / "final_metrics.json"
    if start_step >= config.total_steps and final_path.is_file():
        # Rerun of a finished run: nothing trained, so the finished run's metrics stay as they are.
        final = paths.read_json(final_path)
    else:
        final = {"step": int(state.step), "train": train_metrics, "eval": eval_metrics,
                 "preempted": preemption.requested}
        if best_metric:
            final["best_step"] = ckpt.best_step()
        if is_main:
            paths.write_json(final_path, final)
    ckpt.close()
    writer.close()
    return dict(final, state=state, model=model, data=data)


def nonfinite_steps(fetched: list, synced: int, on_nonfinite: str, ckpt, last_good: Optional[int]) -> list:
    """Steps (1-based) among the just-fetched step metrics whose loss or gradients were not finite;
    with `on_nonfinite="stop"` the first one raises `NonFiniteError` naming the last good checkpoint."""
    bad = [synced + i + 1 for i, m in enumerate(fetched) if not m["finite"]]
    if bad and on_nonfinite == "stop":
        ckpt.wait()
        raise NonFiniteError(f"non-finite loss or gradients at step {bad[0]}; last good checkpoint: "
                             f"{last_good if last_good is not None else 'none'} in {ckpt.directory}")
    return bad


def _steps_since_last_log(done: int, log_every: int, start_step: int) -> int:
    """Steps run since the previous log line (the first line after a (re)start counts from the start)."""
    previous = max(start_step, (done - 1) // log_every * log_every)
    return max(done - previous, 1)


def evaluate(eval_step, params, data, mesh, rules) -> Dict[str, float]:
    """MLM/NSP loss and accuracy on the held-out batches, plus the accuracy of always predicting the
    most frequent masked token (the unigram baseline MLM accuracy should beat)."""
    totals, target_counts = None, {}
    for batch in data.eval_batches():
        sums = eval_step(params, sharding.make_global_batch(batch, mesh, rules))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        ids, weights = np.asarray(batch["masked_lm_ids"]), np.asarray(batch["masked_lm_weights"])
        for token in ids[weights > 0].tolist():
            target_counts[token] = target_counts.get(token, 0) + 1
    if totals is None:
        return {}
    result = steps.summarise_eval(jax.device_get(totals))
    result["unigram_baseline_accuracy"] = max(target_counts.values()) / max(sum(target_counts.values()), 1)
    return result


def _initial_params(config, model, mesh, rules, shardings):
    source = config.get("init_from") or ""
    if not source:
        return sharding.sharded_init(model, mesh, rules, jax.random.PRNGKey(config.seed), shardings=shardings)
    source_dir = paths.workdir_path(source)  # a local HF directory, or a bert_jax workdir (local or gs://)
    if (source_dir / "config.json").is_file() and not (source_dir / "checkpoints").is_dir():
        from bert_jax.hf import load_hf_checkpoint
        _, params = load_hf_checkpoint(source, type(model), **{"scan_layers": model.config.scan_layers})
        return sharding.shard_params(params, shardings)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(lambda: sharding.sharded_init(model, mesh, rules, shardings=shardings)),
                            shardings)
    directory = source_dir / "checkpoints" if (source_dir / "checkpoints").is_dir() else source_dir
    return checkpoints.restore_params(directory, abstract)


def print_fill_mask(result: Dict[str, Any], texts, top_k: int = 5) -> list:
    """Prints the top-k fillers of the first [MASK] in each text with the trained model."""
    tokenizer = result["data"].tokenizer
    if tokenizer is None:
        logger.warning("no tokenizer for this data source: skipping fill-mask")
        return []
    model, params = result["model"], jax.device_get(result["state"].params)
    enc = tokenizer(list(texts), padding=True)
    out = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    logits = np.asarray(getattr(out, "prediction_logits", None) if hasattr(out, "prediction_logits") else out.logits)
    predictions = []
    for row, text in enumerate(texts):
        position = int(np.argmax(enc["input_ids"][row] == tokenizer.mask_token_id))
        best = np.argsort(-logits[row, position])[:top_k]
        tokens = tokenizer.convert_ids_to_tokens([int(i) for i in best])
        predictions.append(tokens)
        print(f"fill-mask: {text!r} -> {tokens}")
    return predictions
