"""Fine-tuning loop for any `bert_jax.tasks.Task`: `train_and_evaluate`, `evaluate`, `predict`.

    run = setup(config, workdir)               # task, tokenizer, model, mesh, (abstract) params
    train_and_evaluate(config, workdir)        # trains, evaluates every dev split, keeps the best

Data flows one way as in pretraining: the task's host features -> a seeded permutation per epoch ->
global batches on the mesh -> jitted step; eval batches come back as the model's outputs for every
dev feature, which the task turns into predictions and its reference metrics.

The model is the task's head (`HEAD_MODELS`) over the encoder of `config.init_from`: a Hugging Face
BERT directory (config.json + weights + vocab) or a bert_jax workdir (model_config.json, tokenizer/,
checkpoints/; the `bert` subtree of its latest checkpoint); the head is initialised fresh. With no
`init_from` the whole model is fresh (`config.model`) and the vocab is `config.vocab` or, for tasks
that bring text (`Task.vocab_texts`, the embedded demo), a WordPiece vocab trained on it.

Resume is exact: the batch of every step is a function of (seed, epoch, position), and the iterator
position, the best-so-far and its metrics are saved with each checkpoint. SIGTERM saves and exits.

Workdir: config.json, model_config.json (HF config with `architectures` and the task's labels),
tokenizer/, checkpoints/ (latest `keep_checkpoints` + the best on dev), metrics.jsonl, tensorboard/,
final_metrics.json; evaluate writes eval_metrics.json, predict the task's predictions file.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import sharding
from bert_jax.config import BertConfig
from bert_jax.modeling import (BertForMultipleChoice, BertForQuestionAnswering, BertForSequenceClassification,
                               BertForTokenClassification, BertModel)
from bert_jax.tasks import Features, Task, get_task
from bert_jax.tokenization import BertTokenizer, train_wordpiece
from bert_jax.training import checkpoints, metrics as metrics_lib, paths, steps
from bert_jax.training.optim import make_optimizer
from bert_jax.training.trainer import _Preemption, nonfinite_steps

logger = logging.getLogger(__name__)

# Task head -> (transformers architecture name, model class, output fields gathered at eval).
HEAD_MODELS = {
    "sequence_classification": ("BertForSequenceClassification", BertForSequenceClassification, ("logits",)),
    "token_classification": ("BertForTokenClassification", BertForTokenClassification, ("logits",)),
    "multiple_choice": ("BertForMultipleChoice", BertForMultipleChoice, ("logits",)),
    "question_answering": ("BertForQuestionAnswering", BertForQuestionAnswering, ("start_logits", "end_logits")),
}
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


# ------------------------------------------------------------------------------------------ setup
@dataclasses.dataclass
class Run:
    """Everything the three modes share; built by `setup`."""

    config: ml_collections.ConfigDict
    workdir: epath.Path  # local (absolute) or a gs:// URL
    task: Task
    tokenizer: BertTokenizer
    model_config: BertConfig
    model: nn.Module
    mesh: Any
    rules: Any
    params_shardings: Any

    @property
    def output_keys(self) -> Tuple[str, ...]:
        return HEAD_MODELS[self.task.head][2]

    def initial_params(self):
        """Params at step 0: encoder (+ pooler) from `init_from`, everything else fresh."""
        fresh = sharding.sharded_init(self.model, self.mesh, self.rules, jax.random.PRNGKey(self.config.seed),
                                      shardings=self.params_shardings)
        source = self.config.get("init_from") or ""
        if not source:
            return fresh
        encoder = (_restore_bert_jax_encoder(source, self) if _is_bert_jax_workdir(source)
                   else _load_hf_encoder(source, self))
        return _merge_encoder(fresh, encoder, self.params_shardings, source)

    def abstract_params(self):
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(lambda: sharding.sharded_init(self.model, self.mesh, self.rules,
                                                                         shardings=self.params_shardings)),
                            self.params_shardings)


def setup(config: ml_collections.ConfigDict, workdir: paths.PathLike, write_files: bool = False) -> Run:
    """Task, tokenizer, model config and model, mesh. With `write_files` (fine-tuning) writes
    config.json, model_config.json and tokenizer/ into `workdir` (process 0)."""
    if "task" not in config:
        raise ValueError("not a fine-tuning config: config.task is missing (see configs/finetune.py)")
    sharding.maybe_initialize_distributed()
    workdir = paths.workdir_path(workdir)
    _check_init_from(config.get("init_from") or "")
    task = get_task(config.task)
    if task.head not in HEAD_MODELS:
        raise ValueError(f"task {task.name!r} has head {task.head!r}; the loop knows {sorted(HEAD_MODELS)}")
    tokenizer = load_tokenizer(config, workdir, task)
    model_config = build_model_config(config, task, tokenizer)
    max_len = config.data.max_seq_length
    if max_len > model_config.max_position_embeddings:
        raise ValueError(f"config.data.max_seq_length={max_len} exceeds the model's max_position_embeddings="
                         f"{model_config.max_position_embeddings}")
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model_config.vocab_size}: the vocab does not belong to this checkpoint")
    model = HEAD_MODELS[task.head][1](model_config)
    mesh = sharding.create_mesh(sharding.MeshConfig(ici_parallelism=tuple(config.mesh.ici_parallelism),
                                                    dcn_parallelism=tuple(config.mesh.dcn_parallelism)))
    rules = sharding.rules_from_config(config.mesh.get("rules") or None)
    if write_files and jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        paths.write_json(workdir / "config.json", config.to_dict())
        paths.write_json(workdir / "model_config.json", model_config.to_hf([HEAD_MODELS[task.head][0]]))
        if not (workdir / "tokenizer" / "vocab.txt").is_file():
            tokenizer.save(workdir / "tokenizer")
    return Run(config, workdir, task, tokenizer, model_config, model, mesh, rules,
               sharding.param_shardings(model, mesh, rules))


def _is_bert_jax_workdir(path: paths.PathLike) -> bool:
    return (paths.workdir_path(path) / "checkpoints").is_dir()


def _check_init_from(source: str) -> None:
    """init_from: a local HF directory or a bert_jax workdir (local or gs://)."""
    if not source:
        return
    if not paths.workdir_path(source).is_dir():
        raise FileNotFoundError(f"config.init_from={source!r} is not a directory (expected a Hugging Face BERT "
                                "directory or a bert_jax workdir)")
    if not _is_bert_jax_workdir(source) and not (paths.workdir_path(source) / "config.json").is_file():
        raise FileNotFoundError(f"config.init_from={source!r} is neither a Hugging Face BERT directory (no "
                                "config.json) nor a bert_jax workdir (no checkpoints/)")


def load_tokenizer(config, workdir: paths.PathLike, task: Task) -> BertTokenizer:
    """`config.vocab` (vocab.txt or tokenizer dir), else the run's own `workdir/tokenizer`, else
    `init_from`'s (a bert_jax workdir's tokenizer/, an HF directory's files), else, without
    `init_from`, a WordPiece vocab trained on `task.vocab_texts()`."""
    lowercase = config.get("lowercase", True)
    if config.get("vocab"):
        path = config.vocab
        if os.path.isfile(path):
            return BertTokenizer.from_vocab(path, lowercase=lowercase)
        if os.path.isdir(path):
            return BertTokenizer.from_pretrained(path)
        raise FileNotFoundError(f"config.vocab={path!r} does not exist (a vocab.txt or a tokenizer directory)")
    own = paths.workdir_path(workdir) / "tokenizer"
    if (own / "vocab.txt").is_file():
        return BertTokenizer.from_pretrained(own)
    source = config.get("init_from") or ""
    if source:
        for directory in (paths.workdir_path(source) / "tokenizer", paths.workdir_path(source)):
            if any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
                return BertTokenizer.from_pretrained(directory)  # local or gs://
            if (directory / "vocab.txt").is_file():
                return BertTokenizer.from_vocab(os.fspath(directory / "vocab.txt"), lowercase=lowercase)
        raise FileNotFoundError(f"no vocab.txt / tokenizer.json in config.init_from={source!r} (or its "
                                "tokenizer/): set config.vocab")
    texts = task.vocab_texts()
    if texts is None:
        raise ValueError(f"no vocab: set config.vocab (a vocab.txt) or config.init_from (a checkpoint with its "
                         f"vocab); task {task.name!r} brings no text to train one on")
    logger.info("training a WordPiece vocab of %d on the task's text", config.get("vocab_size", 8000))
    return train_wordpiece(list(texts), vocab_size=config.get("vocab_size", 8000), lowercase=lowercase)


def build_model_config(config, task: Task, tokenizer: BertTokenizer) -> BertConfig:
    """The encoder's architecture (init_from's config, else `config.model` sized to the vocab), the
    task's labels and `config.model_overrides` on top. With `init_from` the JAX-side fields (dtype,
    attention_impl, scan_layers, ...) are BertConfig's defaults unless overridden: they describe the
    hardware of this run, not the checkpoint (whose layer layout is converted when it differs)."""
    source = config.get("init_from") or ""
    if not source:
        model = config.model.to_dict()
        base = BertConfig(**{**model, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id,
                             "max_position_embeddings": max(model.get("max_position_embeddings", 512),
                                                            config.data.max_seq_length)})
    elif _is_bert_jax_workdir(source):
        saved = paths.workdir_path(source) / "model_config.json"
        if saved.is_file():
            base = BertConfig.from_hf(paths.read_json(saved))
        else:  # workdirs written before model_config.json existed: the experiment's model section
            experiment = paths.read_json(paths.workdir_path(source) / "config.json")
            model = dict(experiment["model"])
            base = BertConfig(**{**model, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id,
                                 "max_position_embeddings": max(model.get("max_position_embeddings", 512),
                                                                experiment["data"]["seq_len"])})
    else:
        base = BertConfig.from_hf(source)
    labels = task.label_names()
    changes = dict(num_labels=task.num_labels(), problem_type=task.problem_type())
    if labels is not None:
        if len(labels) != task.num_labels():
            raise ValueError(f"task {task.name!r}: {len(labels)} label names for num_labels={task.num_labels()}")
        changes["id2label"] = {i: str(name) for i, name in enumerate(labels)}
        changes["label2id"] = {str(name): i for i, name in enumerate(labels)}
    else:
        changes.update(id2label={i: f"LABEL_{i}" for i in range(task.num_labels())}, label2id=None)
    overrides = config.get("model_overrides")
    changes.update(overrides.to_dict() if overrides is not None else {})
    return base.replace(**changes)


# -------------------------------------------------------------------------------- encoder weights
def _load_hf_encoder(source: str, run: Run) -> dict:
    """The `bert` subtree (BertModel params, pooler included) of an HF checkpoint, host arrays."""
    from bert_jax.hf import load_hf_checkpoint
    jax_side = {k: getattr(run.model_config, k) for k in ("param_dtype", "scan_layers")}
    _, params = load_hf_checkpoint(source, BertModel, rng=jax.random.PRNGKey(run.config.seed), **jax_side)
    return params


def _restore_bert_jax_encoder(source: str, run: Run) -> dict:
    """The `bert` subtree of the latest checkpoint of a bert_jax workdir (pooler only if it has one),
    in this model's layer layout."""
    import orbax.checkpoint as ocp
    directory = paths.workdir_path(source) / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_handlers={
        checkpoints.STATE: ocp.StandardCheckpointHandler(), checkpoints.DATA: ocp.JsonCheckpointHandler()})
    all_steps = sorted(manager.all_steps())
    if not all_steps:
        manager.close()
        raise FileNotFoundError(f"config.init_from={source!r}: no checkpoint in {directory}")
    saved = manager.item_metadata(all_steps[-1])[checkpoints.STATE]["params"]
    manager.close()
    if "bert" not in saved:
        raise ValueError(f"config.init_from={source!r}: the checkpoint's params have no `bert` encoder "
                         f"(top-level keys {sorted(saved)})")
    saved_keys = set(traverse_util.flatten_dict(_plain(saved["bert"])))
    wanted = run.abstract_params()["bert"]
    scanned = run.model_config.scan_layers
    if not set(traverse_util.flatten_dict(_without_pooler(wanted))) <= saved_keys:
        # The checkpoint has the other layer layout: restore in that one, convert on the host.
        other = BertModel(run.model_config.replace(scan_layers=not scanned))
        shapes = nn.meta.unbox(jax.eval_shape(lambda: other.init(jax.random.PRNGKey(0),
                                                                 jnp.zeros((1, 8), jnp.int32))["params"]))
        replicated = NamedSharding(run.mesh, PartitionSpec())
        target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)
    else:
        target = wanted
    flat = {k: v for k, v in traverse_util.flatten_dict(target).items() if k in saved_keys}
    restored = checkpoints.restore_params(directory, {"bert": traverse_util.unflatten_dict(flat)},
                                          step=all_steps[-1])["bert"]
    if target is not wanted:
        from bert_jax.hf import convert_layer_layout
        restored = convert_layer_layout(jax.device_get(restored), run.model_config.num_hidden_layers, scanned)
    return restored


def _plain(metadata) -> dict:
    """Orbax metadata tree -> nested dict (its leaves are metadata objects)."""
    if isinstance(metadata, dict) or hasattr(metadata, "items"):
        return {k: _plain(v) for k, v in metadata.items()}
    return metadata


def _without_pooler(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "pooler"}


def _merge_encoder(fresh, encoder, shardings, source: str):
    """`fresh` with every `bert/...` leaf that `encoder` has replaced (placed like `fresh`)."""
    flat_fresh = traverse_util.flatten_dict(fresh)
    flat_shardings = traverse_util.flatten_dict(shardings)
    flat_encoder = traverse_util.flatten_dict(encoder)
    missing = []
    for path in flat_fresh:
        if path[0] != "bert":
            continue
        value = flat_encoder.get(path[1:])
        if value is None:
            missing.append("/".join(path))
            continue
        if tuple(value.shape) != tuple(flat_fresh[path].shape):
            raise ValueError(f"{'/'.join(path)}: init_from {source!r} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(flat_fresh[path].shape)}")
        flat_fresh[path] = jax.device_put(jnp.asarray(value, flat_fresh[path].dtype), flat_shardings[path])
    if missing:
        logger.warning("initialised %d encoder parameter(s) that %s lacks: %s", len(missing), source, missing)
    return traverse_util.unflatten_dict(flat_fresh)


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


def _local_rows(global_rows: np.ndarray) -> np.ndarray:
    """This process's contiguous block of a global batch (processes in order, as make_global_batch
    expects when the batch axes span processes)."""
    per_process = len(global_rows) // jax.process_count()
    start = jax.process_index() * per_process
    return global_rows[start:start + per_process]


def _check_batch(size: int, mesh, rules, name: str) -> None:
    shards = math.prod(mesh.shape[a] for a in _batch_axes(rules))
    if size % shards or size % jax.process_count():
        raise ValueError(f"config.data.{name}={size} must be divisible by the {shards} data shards and "
                         f"{jax.process_count()} processes")


def _batch_axes(rules) -> Tuple[str, ...]:
    spec = sharding.batch_spec(rules)[0]
    return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def load_features(run: Run, split: str) -> Tuple[List[Any], Features]:
    examples = run.task.load_split(split)
    if not examples:
        raise ValueError(f"task {run.task.name!r}: split {split!r} is empty")
    features = run.task.featurize(examples, run.tokenizer, run.config.data.max_seq_length, split=split)
    logger.info("%s/%s: %d examples -> %d features", run.task.name, split, len(examples), len(features))
    return examples, features


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
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> Dict[str, Any]:
    """Fine-tunes (or resumes) in `workdir`; returns {step, best_step, best, final, train,
    preempted, state, run}."""
    if config.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"config.on_nonfinite must be 'stop' or 'skip', got {config.on_nonfinite!r}")
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
    train_arrays = {**{k: v for k, v in train.inputs.items() if k in INPUT_KEYS}, **train.labels}
    dev = {split: load_features(run, split) for split in task.eval_splits}
    total, per_epoch, eval_every = plan_steps(config, len(train))
    tx, schedule = _optimizer(config, total)

    ckpt_dir = run.workdir / "checkpoints"
    best_key = f"{task.eval_splits[0]}/{task.metric_for_best}" if task.eval_splits else None
    ckpt = checkpoints.Checkpointer(ckpt_dir, save_every=max(config.checkpoint_every, 1),
                                    keep=config.keep_checkpoints, best_metric=best_key, best_mode=task.metric_mode,
                                    async_save=config.get("async_checkpointing", True))
    replicated = NamedSharding(run.mesh, PartitionSpec())

    def make_state(params):
        return steps.TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                                opt_state=sharding.sharded_optimizer_init(tx, params),
                                rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated))

    sampler = EpochSampler(len(train), config.data.global_batch_size, config.seed)
    tracker = {"best_step": None, "best_value": None, "best": {}}
    if ckpt.latest_step() is not None:  # resume: nothing to load from init_from
        start, state, data_state = ckpt.restore(_abstract_state(run, tx, config.seed, replicated))
        sampler.epoch, sampler.position = int(data_state["epoch"]), int(data_state["position"])
        tracker.update({k: data_state[k] for k in tracker if k in data_state})
        logger.info("resumed from step %d in %s (epoch %d, position %d)", start, run.workdir, sampler.epoch,
                    sampler.position)
    else:
        state = make_state(run.initial_params())
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    start_step = int(state.step)

    train_step = jax.jit(make_train_step(run.model, tx, schedule, micro, config.on_nonfinite == "skip"),
                         in_shardings=(state_shardings, sharding.batch_sharding(run.mesh, run.rules)),
                         out_shardings=(state_shardings, None), donate_argnums=0)
    predict_step = jax.jit(make_predict_step(run.model, run.output_keys), out_shardings=replicated)
    writer = metrics_lib.MetricsWriter(run.workdir, enabled=is_main)
    batch_size = config.data.global_batch_size
    logger.info("fine-tuning %s: %d train features, %d steps (%d per epoch), eval every %s", task.name, len(train),
                total, per_epoch, eval_every or "run (at the end)")

    pending, window = [], collections.deque(maxlen=config.log_every)
    synced, last_log, paused = start_step, time.perf_counter(), 0.0
    last_good = ckpt.latest_step()
    train_metrics: Dict[str, float] = {}
    final_results: Dict[str, dict] = {}
    progress = metrics_lib.ProgressBar(total, initial=start_step, enabled=is_main and config.get("progress_bar", True))
    with sharding.activation_context(run.mesh, run.rules), _Preemption() as preemption, progress:
        for step in range(start_step, total):
            rows = _local_rows(sampler.next())
            batch = sharding.make_global_batch({k: v[rows] for k, v in train_arrays.items()}, run.mesh, run.rules)
            state, step_metrics = train_step(state, batch)
            pending.append(step_metrics)
            progress.advance()
            done = step + 1
            is_last = done == total
            is_log = done % config.log_every == 0 or is_last
            is_eval = is_last or bool(eval_every) and done % eval_every == 0
            is_save = (is_eval or is_last or preemption.requested
                       or (config.checkpoint_every > 0 and done % config.checkpoint_every == 0))
            if not (is_log or is_save):
                continue
            fetched = jax.device_get(pending)
            nonfinite_steps(fetched, synced, config.on_nonfinite, ckpt, last_good)
            window.extend(fetched)
            synced, pending = synced + len(fetched), []
            if is_log:
                now = time.perf_counter()
                elapsed, last_log, paused = max(now - last_log - paused, 1e-9), now, 0.0
                train_metrics = {k: float(np.mean([m[k] for m in window])) for k in window[0] if k != "finite"}
                recent = min(config.log_every, done - start_step)
                train_metrics.update(seq_per_s=recent * batch_size / elapsed, epoch=done / per_epoch)
                writer.write(done, train_metrics)
                progress.show(train_metrics)
                if is_main:
                    logger.info(metrics_lib.format_metrics(done, total, train_metrics))
            eval_flat = None
            if is_eval:
                eval_start = time.perf_counter()
                final_results = evaluate_splits(run, predict_step, state.params, dev)
                eval_flat = _flat_eval(final_results)
                writer.write(done, eval_flat, prefix="eval")
                _update_best(tracker, done, final_results, eval_flat, best_key, task.metric_mode)
                if is_main:
                    logger.info("eval at step %d: %s (best: step %s)", done,
                                {k: round(v, 4) for k, v in eval_flat.items()}, tracker["best_step"])
                paused += time.perf_counter() - eval_start
            if is_save:
                data_state = dict(sampler.state(), **tracker)
                if ckpt.save(done, state, data_state, metrics=eval_flat if best_key else None, force=True):
                    last_good = done
            if preemption.requested:
                break
    ckpt.wait()
    preempted = preemption.requested and int(state.step) < total
    if not final_results and not preempted:  # resumed after the last step: report the saved run
        with sharding.activation_context(run.mesh, run.rules):
            final_results = evaluate_splits(run, predict_step, state.params, dev)
    final = {"step": int(state.step), "total_steps": total, "best_step": tracker["best_step"],
             "best_metric": best_key, "best": tracker["best"], "final": _jsonable(final_results),
             "train": train_metrics, "preempted": preempted}
    ckpt.close()
    writer.close()
    if is_main and not preempted:
        paths.write_json(run.workdir / "final_metrics.json", final)
    return dict(final, state=state, run=run)


def _update_best(tracker: dict, step: int, results: Dict[str, dict], flat: Dict[str, float], key: Optional[str],
                 mode: str) -> None:
    if key is None:
        return
    if key not in flat:
        raise KeyError(f"metric_for_best {key!r} is not among the eval metrics {sorted(flat)}")
    value, best = flat[key], tracker["best_value"]
    # A tie goes to the later step, as in orbax's BestN (a stable sort, last wins): the step recorded
    # here is then the one the checkpoint manager keeps and `evaluate`/`predict`/export restore.
    if best is None or (value >= best if mode == "max" else value <= best):
        tracker.update(best_step=step, best_value=value, best=_jsonable(results))


def _jsonable(results: Dict[str, dict]) -> Dict[str, dict]:
    return {split: _scalars(metrics) for split, metrics in results.items()}


def _abstract_state(run: Run, tx, seed: int, replicated) -> steps.TrainState:
    """The train state as sharded ShapeDtypeStructs (a restore target; nothing materialised)."""
    params = run.abstract_params()
    opt_shardings = sharding.opt_state_shardings(tx, run.params_shardings, params)
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             jax.eval_shape(tx.init, params), opt_shardings)
    rng = jax.eval_shape(lambda: jax.random.PRNGKey(seed))
    return steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=params,
                            opt_state=opt_state, rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated))


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
    predict_step = jax.jit(make_predict_step(run.model, run.output_keys),
                           out_shardings=NamedSharding(run.mesh, PartitionSpec()))
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
    predict_step = jax.jit(make_predict_step(run.model, run.output_keys),
                           out_shardings=NamedSharding(run.mesh, PartitionSpec()))
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
