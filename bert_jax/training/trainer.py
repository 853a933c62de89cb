"""`train_and_evaluate(config, workdir)`: the pretraining loop.

Data flows one way: loader (per host) -> global arrays on the mesh -> jitted train step -> metrics /
Orbax. The loop never syncs with the device except to log, evaluate and checkpoint, so it adds
little over the bare step.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.config import BertConfig
from bert_jax.modeling import BertForMaskedLM, BertForPreTraining
from bert_jax.training import checkpoints, data as training_data, metrics as metrics_lib, steps
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
    """Training FLOPs per token: 6·N_non-embedding + 12·L·hidden·seq + 6·hidden·vocab·f."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 4 * h * h + 2 * h * inter
    non_embedding = layers * per_layer + h * h  # + the MLM transform dense
    return 6 * non_embedding + 12 * layers * h * seq_len + 6 * h * config.vocab_size * mlm_fraction


def build_model(config: ml_collections.ConfigDict, model_config: BertConfig):
    return BertForPreTraining(model_config) if config.objective == "mlm_nsp" else BertForMaskedLM(model_config)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
    """Evaluates the latest checkpoint in `workdir` on the held-out batches."""
    return train_and_evaluate(config, workdir, eval_only=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, eval_only: bool = False) -> Dict[str, Any]:
    """Runs (or resumes) the run in `workdir`; returns the final train and eval metrics."""
    sharding.maybe_initialize_distributed()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        checkpoints.write_json(os.path.join(workdir, "config.json"), config.to_dict())

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
                             opt_state=opt_state,
                             rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=config.checkpoint_every,
                                    keep=config.keep_checkpoints, async_save=config.get("async_checkpointing", True))
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

    micro = config.get("micro_batches", 1)
    train_step = jax.jit(steps.make_train_step(model, tx, schedule, micro_batches=micro,
                                               skip_nonfinite=config.on_nonfinite == "skip"),
                         in_shardings=(state_shardings, sharding.batch_sharding(mesh, rules)),
                         out_shardings=(state_shardings, None), donate_argnums=0)
    eval_step = jax.jit(steps.make_eval_step(model))
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
    seq_len, batch_size = config.data.seq_len, config.data.global_batch_size
    model_flops = flops_per_token(model_config, seq_len, config.data.max_predictions / seq_len) * seq_len * batch_size

    if eval_only:
        with sharding.activation_context(mesh, rules):
            eval_metrics = evaluate(eval_step, state.params, data, mesh, rules)
        ckpt.close()
        logger.info("eval of step %d: %s", start_step, eval_metrics)
        return {"step": start_step, "train": {}, "eval": eval_metrics, "preempted": False, "state": state,
                "model": model, "data": data}
    history, pending, last_log = [], [], time.time()
    last_good = ckpt.latest_step()
    train_metrics: Dict[str, float] = {}
    eval_metrics: Dict[str, float] = {}
    profile_at = config.get("profile_steps", 0)
    with sharding.activation_context(mesh, rules), _Preemption() as preemption:
        for step in range(start_step, config.total_steps):
            if profile_at and step == start_step + 2:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
            batch = sharding.make_global_batch(next(train_iter), mesh, rules)
            state, step_metrics = train_step(state, batch)
            pending.append(step_metrics)
            if profile_at and step == start_step + 2 + profile_at:
                jax.profiler.stop_trace()
            done = step + 1
            is_log = done % config.log_every == 0 or done == config.total_steps
            is_save = done % config.checkpoint_every == 0 or done == config.total_steps or preemption.requested
            if is_log or is_save:
                fetched = jax.device_get(pending)
                bad = [start_step + len(history) + i + 1 for i, m in enumerate(fetched) if not m["finite"]]
                history.extend(fetched)
                pending = []
                if bad and config.on_nonfinite == "stop":
                    ckpt.wait()
                    raise NonFiniteError(f"non-finite loss or gradients at step {bad[0]}; last good checkpoint: "
                                         f"{last_good if last_good is not None else 'none'} in {ckpt.directory}")
                if is_log:
                    elapsed, last_log = time.time() - last_log, time.time()
                    recent = fetched[-min(len(fetched), config.log_every):]
                    train_metrics = {k: float(np.mean([m[k] for m in recent])) for k in recent[0]}
                    train_metrics.update(seq_per_s=len(fetched) * batch_size / max(elapsed, 1e-9),
                                         tokens_per_s=len(fetched) * batch_size * seq_len / max(elapsed, 1e-9),
                                         skipped_steps=float(len(bad)))
                    train_metrics["model_tflops_per_s"] = train_metrics["seq_per_s"] / batch_size * model_flops / 1e12
                    writer.write(done, train_metrics)
                    if is_main:
                        logger.info(metrics_lib.format_metrics(done, config.total_steps, train_metrics))
                if config.eval_every and (done % config.eval_every == 0 or done == config.total_steps):
                    eval_metrics = evaluate(eval_step, state.params, data, mesh, rules)
                    writer.write(done, eval_metrics, prefix="eval")
                    if is_main:
                        logger.info("eval at step %d: %s", done, {k: round(v, 4) for k, v in eval_metrics.items()})
                if is_save and ckpt.save(done, state, training_data.gather_iterator_states(train_iter), force=preemption.requested
                                         or done == config.total_steps):
                    last_good = done
            if preemption.requested:
                if last_good != done:  # SIGTERM arrived after this step's save check
                    unchecked = jax.device_get(pending)
                    history.extend(unchecked)
                    pending = []
                    if config.on_nonfinite == "skip" or all(m["finite"] for m in unchecked):
                        ckpt.save(done, state, training_data.gather_iterator_states(train_iter), force=True)
                        last_good = done
                break
    ckpt.close()
    writer.close()
    result = {"step": int(state.step), "train": train_metrics, "eval": eval_metrics,
              "preempted": preemption.requested, "state": state, "model": model, "data": data}
    if is_main:
        checkpoints.write_json(os.path.join(workdir, "final_metrics.json"),
                               {"step": result["step"], "train": train_metrics, "eval": eval_metrics,
                                "preempted": preemption.requested})
    return result


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
    if os.path.isfile(os.path.join(source, "config.json")) and not os.path.isdir(os.path.join(source, "checkpoints")):
        from bert_jax.hf import load_hf_checkpoint
        _, params = load_hf_checkpoint(source, type(model), **{"scan_layers": model.config.scan_layers})
        return sharding.shard_params(params, shardings)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(lambda: sharding.sharded_init(model, mesh, rules, shardings=shardings)),
                            shardings)
    directory = os.path.join(source, "checkpoints") if os.path.isdir(os.path.join(source, "checkpoints")) else source
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
