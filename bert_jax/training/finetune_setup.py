"""What a fine-tuning run is built from before it trains: the task, the tokenizer, the model config
and head model, the mesh, and the encoder weights of `config.init_from`.

`init_from` is a Hugging Face BERT directory (config.json + weights + vocab) or a bert_jax workdir
(model_config.json, tokenizer/, checkpoints/; the `bert` subtree of its latest checkpoint); the head
is initialised fresh. With no `init_from` the whole model is fresh (`config.model`) and the vocab is
`config.vocab` or, for tasks that bring text (`Task.vocab_texts`, the embedded demo), a WordPiece
vocab trained on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from bert_jax import sharding
from bert_jax.config import BertConfig
from bert_jax.modeling import (BertForMultipleChoice, BertForQuestionAnswering, BertForSequenceClassification,
                               BertForTokenClassification, BertModel)
from bert_jax.tasks import Features, Task, get_task
from bert_jax.tokenization import BertTokenizer
from bert_jax.wordpiece import train_wordpiece
from bert_jax.training import checkpoints, loop, paths

logger = logging.getLogger(__name__)

# Task head -> (transformers architecture name, model class, output fields gathered at eval).
HEAD_MODELS = {
    "sequence_classification": ("BertForSequenceClassification", BertForSequenceClassification, ("logits",)),
    "token_classification": ("BertForTokenClassification", BertForTokenClassification, ("logits",)),
    "multiple_choice": ("BertForMultipleChoice", BertForMultipleChoice, ("logits",)),
    "question_answering": ("BertForQuestionAnswering", BertForQuestionAnswering, ("start_logits", "end_logits")),
}
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


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
        """Params at step 0: encoder (+ pooler) from `init_from`, everything else fresh; each leaf
        goes straight to its sharding, and only the leaves `init_from` lacks are initialised."""
        source = self.config.get("init_from") or ""
        rng = jax.random.PRNGKey(self.config.seed)
        if not source:
            return sharding.sharded_init(self.model, self.mesh, self.rules, rng, shardings=self.params_shardings)
        encoder = (_restore_bert_jax_encoder(source, self) if _is_bert_jax_workdir(source)
                   else _load_hf_encoder(source, self))
        placed = _place_encoder(self.abstract_params(), encoder, source)
        fresh_paths = [path for path in traverse_util.flatten_dict(self.params_shardings) if path not in placed]
        fresh = sharding.sharded_init(self.model, self.mesh, self.rules, rng, shardings=self.params_shardings,
                                      only=fresh_paths)
        return traverse_util.unflatten_dict({**fresh, **placed})

    def abstract_params(self):
        """The params as sharded ShapeDtypeStructs (a restore target; nothing materialised)."""
        return sharding.abstract_params(self.model, self.mesh, self.rules)


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
    mesh, rules = loop.make_mesh(config)
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
    # Unset (None) placeholders leave the checkpoint's value.
    changes.update({k: v for k, v in (overrides.to_dict() if overrides is not None else {}).items() if v is not None})
    return base.replace(**changes)


# -------------------------------------------------------------------------------- encoder weights
def _load_hf_encoder(source: str, run: Run) -> dict:
    """The `bert` subtree (BertModel params, pooler included) of an HF checkpoint: what it holds as
    host arrays, what it lacks (e.g. the pooler) initialised sharded, with the values a BertModel
    init from `config.seed` gives them."""
    from bert_jax.hf import load_hf_checkpoint
    jax_side = {k: getattr(run.model_config, k) for k in ("param_dtype", "scan_layers")}
    hf_config, params = load_hf_checkpoint(source, BertModel, host_arrays=True, **jax_side)
    flat = traverse_util.flatten_dict(params)
    encoder = BertModel(hf_config)
    missing = [path for path in traverse_util.flatten_dict(sharding.abstract_params(encoder, run.mesh, run.rules))
               if path not in flat]
    if missing:
        flat.update(sharding.sharded_init(encoder, run.mesh, run.rules, jax.random.PRNGKey(run.config.seed),
                                          only=missing))
    return traverse_util.unflatten_dict(flat)


def _restore_bert_jax_encoder(source: str, run: Run) -> dict:
    """The `bert` subtree of the latest checkpoint of a bert_jax workdir (pooler only if it has one),
    in this model's layer layout: restored onto its shardings, or, when the layout differs, as host
    arrays converted on the host (placed by `_place_encoder`)."""
    directory = paths.workdir_path(source) / "checkpoints"
    step, saved = checkpoints.saved_params_metadata(directory)
    if step is None:
        raise FileNotFoundError(f"config.init_from={source!r}: no checkpoint in {directory}")
    if "bert" not in saved:
        raise ValueError(f"config.init_from={source!r}: the checkpoint's params have no `bert` encoder "
                         f"(top-level keys {sorted(saved)})")
    saved_keys = set(traverse_util.flatten_dict(_plain(saved["bert"])))
    wanted = run.abstract_params()["bert"]
    scanned = run.model_config.scan_layers
    if not set(traverse_util.flatten_dict(_without_pooler(wanted))) <= saved_keys:
        # The checkpoint has the other layer layout: restore in that one to host memory, convert there.
        other = BertModel(run.model_config.replace(scan_layers=not scanned))
        target = nn.meta.unbox(jax.eval_shape(lambda: other.init(jax.random.PRNGKey(0),
                                                                 jnp.zeros((1, 8), jnp.int32))["params"]))
    else:
        target = wanted
    flat = {k: v for k, v in traverse_util.flatten_dict(target).items() if k in saved_keys}
    restored = checkpoints.restore_params(directory, {"bert": traverse_util.unflatten_dict(flat)},
                                          step=step, host=target is not wanted)["bert"]
    if target is not wanted:
        from bert_jax.hf import stack_layers, unstack_layers
        layers, flat = run.model_config.num_hidden_layers, traverse_util.flatten_dict(restored)
        restored = traverse_util.unflatten_dict(stack_layers(flat, layers) if scanned
                                                else unstack_layers(flat, layers))
    return restored


def _plain(metadata) -> dict:
    """Orbax metadata tree -> nested dict (its leaves are metadata objects)."""
    if isinstance(metadata, dict) or hasattr(metadata, "items"):
        return {k: _plain(v) for k, v in metadata.items()}
    return metadata


def _without_pooler(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "pooler"}


def _place_encoder(abstract, encoder, source: str) -> dict:
    """{param path: array on its sharding} for every `bert/...` leaf of `abstract` that `encoder` has
    (host arrays are put straight onto the target sharding: no full copy on one device)."""
    placed, missing, flat_encoder = {}, [], traverse_util.flatten_dict(encoder)
    for path, target in traverse_util.flatten_dict(abstract).items():
        if path[0] != "bert":
            continue
        value = flat_encoder.get(path[1:])
        if value is None:
            missing.append("/".join(path))
            continue
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{'/'.join(path)}: init_from {source!r} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(target.shape)}")
        if isinstance(value, jax.Array):
            value = value.astype(target.dtype)
        else:
            value = np.asarray(value).astype(target.dtype)
        placed[path] = jax.device_put(value, target.sharding)
    if missing:
        logger.warning("initialised %d encoder parameter(s) that %s lacks: %s", len(missing), source, missing)
    return placed


def load_features(run: Run, split: str) -> Tuple[List[Any], Features]:
    examples = run.task.load_split(split)
    if not examples:
        raise ValueError(f"task {run.task.name!r}: split {split!r} is empty")
    features = run.task.featurize(examples, run.tokenizer, run.config.data.max_seq_length, split=split)
    logger.info("%s/%s: %d examples -> %d features", run.task.name, split, len(examples), len(features))
    return examples, features
