"""Pretraining (MLM + NSP, MLM alone, or ELECTRA's replaced-token detection: `config.objective`) as a
task of the training loop: `train_and_evaluate(config,
workdir)`, `evaluate_checkpoint`, and fill-mask with the result.

The loop (`training/loop.py`) owns the mesh, state, jitted step and loop body; this module brings the
model, the MLM/NSP step, the input pipeline (`training/data.py`) and the held-out evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from bert_jax import flops, sharding
from bert_jax.config import BertConfig
from bert_jax.modeling import BertForMaskedLM, BertForPreTraining, losses
from bert_jax.training import (checkpoints, data as training_data, electra, loop, metrics as metrics_lib, paths,
                               steps)
from bert_jax.training.loop import NonFiniteError, nonfinite_steps  # noqa: F401  (part of this module's API)
from bert_jax.training.optim import make_optimizer

logger = logging.getLogger(__name__)


def flops_per_token(config: BertConfig, seq_len: int, mlm_fraction: float) -> float:
    """Training FLOPs per token (`bert_jax.flops`: the benchmark's count, so the loop's MFU and the
    benchmark's agree)."""
    return flops.flops_per_token(config, seq_len, mlm_fraction, training=True)


OBJECTIVES = ("mlm_nsp", "mlm", "electra")


def electra_options(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """`config.electra` (absent keys: the paper's values), checked: generator_size_divisor, rtd_weight."""
    block = config.get("electra") or {}
    divisor = block.get("generator_size_divisor", electra.DEFAULT_GENERATOR_SIZE_DIVISOR)
    weight = block.get("rtd_weight", electra.DEFAULT_RTD_WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"config.electra.rtd_weight must be a number >= 0, got {weight!r}")
    return {"generator_size_divisor": divisor, "rtd_weight": float(weight)}


def build_model(config: ml_collections.ConfigDict, model_config: BertConfig):
    """The model the objective trains: BertForPreTraining (mlm_nsp), BertForMaskedLM (mlm), or the ELECTRA
    generator + discriminator (`model_config` is the discriminator's)."""
    if config.objective == "electra":
        divisor = electra_options(config)["generator_size_divisor"]
        return electra.ElectraPretrainingModel(model_config, electra.generator_config(model_config, divisor))
    return BertForPreTraining(model_config) if config.objective == "mlm_nsp" else BertForMaskedLM(model_config)


def build_model_config(config: ml_collections.ConfigDict, vocab_size: int, pad_token_id: int) -> BertConfig:
    """`config.model` sized to the vocab, with positions for `config.data.seq_len` (ELECTRA: the
    discriminator's, model_type "electra" so that it exports as transformers' ElectraForPreTraining, with
    ELECTRA's sequence-classification head for the classifiers fine-tuned from it)."""
    model_config = BertConfig(**{**config.model.to_dict(), "vocab_size": vocab_size, "pad_token_id": pad_token_id,
                                 "max_position_embeddings": max(config.model.max_position_embeddings,
                                                                config.data.seq_len)})
    if config.objective == "electra":
        return model_config.replace(model_type="electra", classifier_head="electra")
    return model_config


def make_train_step(model, tx, schedule, micro_batches: int, skip_nonfinite: bool, rtd_weight: Optional[float] = None):
    """The pretraining step (`steps.make_train_step`, or `electra.make_train_step` for the ELECTRA model) in
    the loop's `make_train_step` signature."""
    if isinstance(model, electra.ElectraPretrainingModel):
        return electra.make_train_step(model, tx, schedule, micro_batches=micro_batches, skip_nonfinite=skip_nonfinite,
                                       rtd_weight=electra.DEFAULT_RTD_WEIGHT if rtd_weight is None else rtd_weight)
    return steps.make_train_step(model, tx, schedule, micro_batches=micro_batches, skip_nonfinite=skip_nonfinite)


# The pretraining batch's fields under the names `losses.invalid_counts` checks for the pretraining head.
_CHECKED_AS = {"input_ids": "input_ids", "token_type_ids": "token_type_ids", "position_ids": "position_ids",
               "masked_lm_positions": "masked_positions", "masked_lm_ids": "labels",
               "next_sentence_labels": "next_sentence_label"}


def pretraining_invalid_counts(model_config: BertConfig, batch) -> Dict[str, jax.Array]:
    """{pretraining batch field: invalid entries} (jit-safe): ids and labels out of range, masked
    positions outside the sequence. Padding rows of masked_lm_ids (weight 0) must still be in range."""
    checked = {_CHECKED_AS[k]: v for k, v in batch.items() if k in _CHECKED_AS}
    counts = losses.invalid_counts(checked, model_config, "pretraining")
    names = {v: k for k, v in _CHECKED_AS.items()}
    return {names[k]: v for k, v in counts.items()}


def pretraining_requirements(model_config: BertConfig, seq_len: int) -> Dict[str, str]:
    """{pretraining batch field: what a valid value is} for the data checks' error messages."""
    shapes = {name: jax.ShapeDtypeStruct((1, seq_len), jnp.int32) for name in _CHECKED_AS.values()}
    names = {v: k for k, v in _CHECKED_AS.items()}
    return {names[k]: v for k, v in losses.requirements(shapes, model_config, "pretraining").items()}


def write_model_files(workdir: paths.PathLike, config: ml_collections.ConfigDict, model_config: BertConfig,
                      tokenizer: Optional[Any]) -> None:
    """What `bert_jax.export` reads besides the checkpoints: `model_config.json` (the HF config, with
    the pretraining architecture) and `tokenizer/` (kept if already there: the run's own trained
    vocab, or the one from an earlier start of this run)."""
    # ELECTRA: the discriminator is what is exported (transformers' ElectraForPreTraining).
    architecture = {"mlm_nsp": "BertForPreTraining", "electra": "ElectraForPreTraining"}.get(config.objective,
                                                                                            "BertForMaskedLM")
    workdir = paths.workdir_path(workdir)
    paths.write_json(workdir / "model_config.json", model_config.to_hf([architecture]))
    saved = workdir / "tokenizer"
    if tokenizer is not None and not (saved / "vocab.txt").is_file():
        tokenizer.save(saved)


def _check_config(config: ml_collections.ConfigDict) -> None:
    loop.check_config(config)
    if config.objective not in OBJECTIVES:
        raise ValueError(f"config.objective must be one of {OBJECTIVES}, got {config.objective!r}")
    if config.objective == "electra":
        electra_options(config)
    training_data.masking_options(config)
    training_data.eval_overrides(config)
    if config.checkpoint_every <= 0:
        raise ValueError(f"config.checkpoint_every must be > 0, got {config.checkpoint_every}")
    if config.get("best_metric") and not config.eval_every:
        raise ValueError(f"config.best_metric={config.best_metric!r} needs evaluations: set config.eval_every > 0")


def step_flops_and_rtd_weight(config: ml_collections.ConfigDict, model_config: BertConfig, model):
    """Model FLOPs of one pretraining step over the global batch, and ELECTRA's RTD loss weight (None for
    the other objectives): what the loop's MFU and `bert_jax.aot`'s report count, and the step's loss."""
    d = config.data
    step_flops = flops.pretraining_step_flops(model_config, d.seq_len, d.max_predictions, d.global_batch_size)
    if not isinstance(model, electra.ElectraPretrainingModel):
        return step_flops, None
    # Generator (MLM at the masked positions) + discriminator (counted with an MLM decoder instead of
    # the per-token RTD head: an approximation for MFU, a little high).
    step_flops += flops.pretraining_step_flops(model.generator_config, d.seq_len, d.max_predictions, d.global_batch_size)
    return step_flops, electra_options(config)["rtd_weight"]


class PretrainingTask(loop.LoopTask):
    """MLM (+ NSP) on `training/data.py`'s loaders; evaluation on the held-out batches."""

    def __init__(self, config: ml_collections.ConfigDict, data: training_data.PretrainingData, mesh, rules):
        self.config, self.data, self.mesh, self.rules = config, data, mesh, rules
        self.model_config = build_model_config(config, data.vocab_size, data.pad_token_id)
        self.model = build_model(config, self.model_config)
        self.total_steps = config.total_steps
        self.eval_every = config.eval_every
        self.eval_at_end = bool(config.eval_every)
        self.best_metric = config.get("best_metric", "") or None
        self.best_mode = config.get("best_mode", "max")
        self.step_flops, self.rtd_weight = step_flops_and_rtd_weight(config, self.model_config, self.model)
        self.peak_flops = metrics_lib.peak_flops_per_second(list(mesh.devices.flat),
                                                            config.get("peak_tflops_per_device", 0.0))
        is_electra = isinstance(self.model, electra.ElectraPretrainingModel)
        eval_step = (electra.make_eval_step if is_electra else steps.make_eval_step)(self.model)
        self.summarise_eval = (lambda totals: electra.summarise_eval(totals, self.rtd_weight)) if is_electra \
            else steps.summarise_eval
        self.eval_step = jax.jit(lambda params, batch: dict(eval_step(params, batch), **{
            loop.INVALID + field: count for field, count in self.invalid_counts(batch).items()}))
        self._train_iter = None

    def make_train_step(self, tx, schedule, micro_batches, skip_nonfinite):
        return make_train_step(self.model, tx, schedule, micro_batches, skip_nonfinite, self.rtd_weight)

    def invalid_counts(self, batch):
        return pretraining_invalid_counts(self.model_config, batch)

    def requirement(self, field: str) -> str:
        return pretraining_requirements(self.model_config, self.config.data.seq_len).get(field, "")

    def initial_params(self, mesh, rules, shardings):
        return _initial_params(self.config, self.model, mesh, rules, shardings)

    @property
    def train_iter(self):
        if self._train_iter is None:
            self._train_iter = iter(self.data.train_loader)
        return self._train_iter

    def next_batch(self):
        return next(self.train_iter)

    def data_state(self) -> dict:
        return training_data.gather_iterator_states(self.train_iter)

    def restore_data_state(self, data_state: dict) -> None:
        training_data.restore_iterator_state(self.train_iter, data_state)

    def evaluate(self, params, step: int) -> Dict[str, float]:
        return evaluate(self.eval_step, params, self.data, self.mesh, self.rules,
                        lambda counts: loop.check_eval_data(counts, self.config.get("on_invalid_data", "stop"), self),
                        self.summarise_eval)

    def train_summary(self, means, done, steps_per_s, skipped):
        batch_size, seq_len = self.config.data.global_batch_size, self.config.data.seq_len
        return dict(means, seq_per_s=steps_per_s * batch_size, tokens_per_s=steps_per_s * batch_size * seq_len,
                    skipped_steps=float(skipped), **metrics_lib.utilisation(self.step_flops, steps_per_s,
                                                                            self.peak_flops))


@dataclasses.dataclass
class Run:
    """Everything a pretraining run computes with (what benchmarks/loop_overhead.py times)."""
    mesh: jax.sharding.Mesh
    rules: Any
    data: training_data.PretrainingData
    model_config: BertConfig
    model: Any  # BertForPreTraining | BertForMaskedLM | electra.ElectraPretrainingModel
    state: Optional[steps.TrainState]  # fresh (or from config.init_from), sharded on `mesh`; None: not built
    train_step: Callable  # jitted (state, global batch) -> (state, metrics); donates the state
    eval_step: Callable  # jitted (params, global batch) -> sums
    step_flops: float  # model FLOPs of one training step (global batch)
    task: PretrainingTask
    built: loop.Built


def build_run(config: ml_collections.ConfigDict, workdir: paths.PathLike, fresh_state: bool = True) -> Run:
    """Mesh, input pipeline, model, optimizer, the jitted steps and (with `fresh_state`) the step-0
    state for `config` (shared by `train_and_evaluate` and benchmarks/loop_overhead.py)."""
    mesh, rules = loop.make_mesh(config)
    data = training_data.build_pretraining_data(config, workdir)
    task = PretrainingTask(config, data, mesh, rules)
    tx, schedule = make_optimizer(config.optim)
    built = loop.build(config, task.model, tx, schedule, task.make_train_step, mesh, rules, task.invalid_counts)
    state = None
    if fresh_state:
        state = loop.fresh_state(built, task.initial_params(mesh, rules, loop.shardings_of(built.abstract.params)),
                                 config.seed)
    return Run(mesh, rules, data, task.model_config, task.model, state, built.train_step, task.eval_step,
               task.step_flops, task, built)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> Dict[str, Any]:
    """Evaluates the latest checkpoint in `workdir` on the held-out batches."""
    return train_and_evaluate(config, workdir, eval_only=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike, eval_only: bool = False) -> Dict[str, Any]:
    """Runs (or resumes) the run in `workdir`; returns the final train and eval metrics.

    Writes into `workdir` (a local directory or a gs:// URL, see `paths`): config.json (the effective
    config), model_config.json + tokenizer/ (for export), checkpoints/, metrics.jsonl, tensorboard/
    and, at the end, final_metrics.json."""
    _check_config(config)
    sharding.maybe_initialize_distributed()
    workdir = paths.workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        paths.write_json(workdir / "config.json", config.to_dict())

    run = build_run(config, workdir, fresh_state=False)
    task = run.task
    if is_main:
        write_model_files(workdir, config, run.model_config, run.data.tokenizer)
    ckpt = loop.make_checkpointer(config, workdir, task)
    state = loop.init_or_restore(config, task, run.built, ckpt, fresh=not eval_only)
    if state is None:
        ckpt.close()
        raise FileNotFoundError(f"no checkpoint to evaluate in {ckpt.directory}")
    start_step = int(state.step)

    if eval_only:
        with sharding.activation_context(run.mesh, run.rules):
            eval_metrics = task.evaluate(state.params, start_step)
        ckpt.close()
        logger.info("eval of step %d: %s", start_step, eval_metrics)
        return {"step": start_step, "train": {}, "eval": eval_metrics, "preempted": False, "state": state,
                "model": run.model, "data": run.data}

    result = loop.train(config, workdir, task, run.built, ckpt, state)
    final_path = workdir / "final_metrics.json"
    finished = start_step >= config.total_steps or (result.budget_spent and int(result.state.step) == start_step)
    if finished and final_path.is_file():
        # Rerun of a finished run (all steps, or its wall-clock budget, spent): nothing trained, so the
        # finished run's metrics stay as they are.
        final = paths.read_json(final_path)
    else:
        final = {"step": int(result.state.step), "train": result.train, "eval": result.eval,
                 "preempted": result.preempted}
        if task.best_metric:
            final["best_step"] = result.best_step
        if is_main:
            paths.write_json(final_path, final)
    return dict(final, state=result.state, model=run.model, data=run.data)


def evaluate(eval_step, params, data, mesh, rules, check_invalid: Optional[Callable] = None,
             summarise: Callable = steps.summarise_eval) -> Dict[str, float]:
    """MLM/NSP (or ELECTRA's) losses and accuracies on the held-out batches (`summarise` of the summed
    `eval_step` outputs), plus the accuracy of always predicting the most frequent masked token (the
    unigram baseline MLM accuracy should beat). Invalid entries the step counted (`invalid_<field>`
    sums) go to `check_invalid({field: count})`."""
    totals, target_counts = None, {}
    for batch in data.eval_batches():
        sums = eval_step(params, sharding.make_global_batch(batch, mesh, rules))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        ids, weights = np.asarray(batch["masked_lm_ids"]), np.asarray(batch["masked_lm_weights"])
        for token in ids[weights > 0].tolist():
            target_counts[token] = target_counts.get(token, 0) + 1
    if totals is None:
        return {}
    totals = jax.device_get(totals)
    invalid = {k[len(loop.INVALID):]: int(totals.pop(k)) for k in list(totals) if k.startswith(loop.INVALID)}
    if check_invalid is not None:
        check_invalid(invalid)
    result = summarise(totals)
    result["unigram_baseline_accuracy"] = max(target_counts.values()) / max(sum(target_counts.values()), 1)
    return result


def _initial_params(config, model, mesh, rules, shardings):
    source = config.get("init_from") or ""
    if not source:
        return sharding.sharded_init(model, mesh, rules, jax.random.PRNGKey(config.seed), shardings=shardings)
    source_dir = paths.workdir_path(source)  # a local HF directory, or a bert_jax workdir (local or gs://)
    if (source_dir / "config.json").is_file() and not (source_dir / "checkpoints").is_dir():
        if isinstance(model, electra.ElectraPretrainingModel):
            raise ValueError(f"config.init_from={source!r} is a Hugging Face directory; objective=electra starts from "
                             "scratch or from a bert_jax ELECTRA workdir (generator and discriminator)")
        # Host arrays, each leaf put straight onto its shards; what the checkpoint lacks (e.g. the heads)
        # is initialised sharded, with the values `load_hf_checkpoint`'s own init (key 0) gives it.
        from bert_jax.hf import load_hf_checkpoint
        hf_config, params = load_hf_checkpoint(source, type(model), host_arrays=True,
                                               **{"scan_layers": model.config.scan_layers})
        flat, flat_shardings = traverse_util.flatten_dict(params), traverse_util.flatten_dict(shardings)
        placed = {path: jax.device_put(value, flat_shardings[path]) for path, value in flat.items()}
        missing = [path for path in flat_shardings if path not in placed]
        if missing:
            placed.update(sharding.sharded_init(type(model)(hf_config), mesh, rules, jax.random.PRNGKey(0),
                                                shardings=shardings, only=missing))
        return traverse_util.unflatten_dict(placed)
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
    if isinstance(model, electra.ElectraPretrainingModel):  # the generator is the masked LM
        positions = np.argmax(np.asarray(enc["input_ids"]) == tokenizer.mask_token_id, axis=1)[:, None]
        out = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                          positions, np.zeros_like(positions), np.ones(positions.shape, np.float32),
                          rngs={"sample": jax.random.PRNGKey(0)})
        logits = np.zeros(np.shape(enc["input_ids"]) + (out.generator_logits.shape[-1],), np.float32)
        logits[np.arange(len(positions)), positions[:, 0]] = np.asarray(out.generator_logits[:, 0])
    else:
        out = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        logits = np.asarray(getattr(out, "prediction_logits", None) if hasattr(out, "prediction_logits")
                            else out.logits)
    predictions = []
    for row, text in enumerate(texts):
        position = int(np.argmax(enc["input_ids"][row] == tokenizer.mask_token_id))
        best = np.argsort(-logits[row, position])[:top_k]
        tokens = tokenizer.convert_ids_to_tokens([int(i) for i in best])
        predictions.append(tokens)
        print(f"fill-mask: {text!r} -> {tokens}")
    return predictions
