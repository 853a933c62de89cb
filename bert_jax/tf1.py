"""Google's original TF1 BERT checkpoints (google-research/bert) -> bert_jax params.

A release directory holds `bert_model.ckpt.index` + `bert_model.ckpt.data-*` (a TensorFlow tensor
bundle), `bert_config.json` and `vocab.txt`. Reading the bundle needs TensorFlow (`pip install
tensorflow-cpu`, or the `bert_jax[tf]` extra): no package in bert_jax's own dependencies reads that
format (tensorstore, orbax, array_record and tfds' non-TF paths do not).

Each TF1 variable name is mapped to the PyTorch key transformers uses for the same tensor and put in
PyTorch layout, and `bert_jax.hf.params_from_state_dict` does the rest, so the two importers share
one name/layout mapping. google-research's layouts:

  bert/embeddings/word_embeddings                      [vocab, hidden]   (as is)
  bert/.../LayerNorm/gamma|beta                        [hidden]          (as is)
  bert/encoder/layer_N/.../kernel, bert/pooler/dense/kernel,
  cls/predictions/transform/dense/kernel               [in, out]         (dense layers: transposed)
  cls/predictions/output_bias                          [vocab]           (the MLM decoder bias)
  cls/seq_relationship/output_weights                  [2, hidden]       (already [out, in])
  output_weights / output_bias (run_classifier.py)     [labels, hidden]  (-> classifier)
  cls/squad/output_weights / output_bias (run_squad.py) [2, hidden]       (-> qa_outputs; start, end)

Optimizer slots (`adam_m`, `adam_v`) and `global_step` are skipped.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional, Tuple, Union

import jax
import numpy as np

from bert_jax.config import BertConfig
from bert_jax.hf import ModelClass, params_from_state_dict
from bert_jax.modeling import BertModel

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "bert_model.ckpt"
INSTALL_HINT = "pip install tensorflow-cpu  (or pip install 'bert_jax[tf]')"

# Variables that are not model weights: optimizer slots and bookkeeping (google-research's AdamWeightDecay
# writes `<var>/adam_m|adam_v`; NVIDIA's mixed-precision runs add loss-scale counters).
_SKIPPED = re.compile(r"(^|/)(adam_m|adam_v|global_step|loss_scale|good_steps|current_loss_scale)(/|$)")

# TF1 name -> transformers key for the tensors whose names do not follow the generic rule. Their TF
# layout is already PyTorch's ([out, in] for the output_weights).
_HEAD_KEYS = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "output_weights": "classifier.weight",
    "output_bias": "classifier.bias",
    "cls/squad/output_weights": "qa_outputs.weight",
    "cls/squad/output_bias": "qa_outputs.bias",
}
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def torch_key_and_tensor(name: str, value: np.ndarray) -> Optional[Tuple[str, np.ndarray]]:
    """One TF1 variable -> (transformers key, tensor in PyTorch layout), or None for optimizer slots and
    bookkeeping. Names outside google-research's scheme map by the generic rule and end up reported as
    unused by the loader."""
    if _SKIPPED.search(name):
        return None
    if name in _HEAD_KEYS:
        return _HEAD_KEYS[name], value
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in name.split("/")]
    leaf = parts[-1]
    if leaf in _EMBEDDINGS:
        parts.append("weight")
    elif leaf == "kernel":  # tf.layers.dense keeps [in, out]; PyTorch Linear.weight is [out, in]
        parts[-1], value = "weight", value.T
    elif leaf in ("gamma", "beta"):
        parts[-1] = {"gamma": "weight", "beta": "bias"}[leaf]
    return ".".join(parts), value


def resolve_checkpoint(path_or_dir: Union[str, os.PathLike]) -> Tuple[str, str]:
    """(checkpoint prefix, its directory) for a release directory or a prefix such as
    `dir/bert_model.ckpt` or `dir/model.ckpt-1000` (a `.index` path is accepted too)."""
    path = os.fspath(path_or_dir)
    if path.endswith(".index"):
        path = path[:-len(".index")]
    elif re.search(r"\.data-\d+-of-\d+$", path):
        path = re.sub(r"\.data-\d+-of-\d+$", "", path)
    if os.path.isdir(path):
        directory = path
        indices = sorted(f[:-len(".index")] for f in os.listdir(directory) if f.endswith(".index"))
        if DEFAULT_PREFIX in indices:
            prefix = DEFAULT_PREFIX
        elif len(indices) == 1:
            prefix = indices[0]
        elif indices:  # a training directory: the `checkpoint` state file names the newest
            prefix = _latest_from_state_file(directory)
            if prefix not in indices:
                raise ValueError(f"{directory} holds several TF checkpoints {indices}; pass the prefix of one, "
                                 f"e.g. {os.path.join(directory, indices[-1])}")
        else:
            raise FileNotFoundError(f"no TF checkpoint ({DEFAULT_PREFIX}.index or another *.index) in {directory}")
        path = os.path.join(directory, prefix)
    directory = os.path.dirname(path) or "."
    if not os.path.isfile(path + ".index"):
        raise FileNotFoundError(f"TF checkpoint {path}: {path}.index does not exist")
    return path, directory


def _latest_from_state_file(directory: str) -> Optional[str]:
    state_file = os.path.join(directory, "checkpoint")
    if not os.path.isfile(state_file):
        return None
    with open(state_file) as f:
        match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', f.read(), flags=re.M)
    return os.path.basename(match.group(1)) if match else None


def _import_tensorflow():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"reading a Google TF1 BERT checkpoint needs TensorFlow, which is not installed: "
                          f"{INSTALL_HINT}") from e
    return tf


def read_tf1_variables(prefix: str) -> Dict[str, np.ndarray]:
    """All variables of the TF checkpoint bundle at `prefix` as numpy arrays (needs TensorFlow)."""
    tf = _import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(prefix)
        return {name: np.asarray(reader.get_tensor(name)) for name in sorted(reader.get_variable_to_shape_map())}
    except Exception as e:  # the reader maps TF statuses to OpError, ValueError, IndexError, ... by kind
        raise ValueError(f"cannot read TF checkpoint {prefix} (corrupt, truncated or a data shard missing?): "
                         f"{type(e).__name__}: {str(e).strip()[:500]}") from e


def load_tf1_checkpoint(path_or_dir: Union[str, os.PathLike], model_class: ModelClass = BertModel,
                        rng: Optional[jax.Array] = None, config: Union[BertConfig, str, os.PathLike, None] = None,
                        *, allow_missing: bool = False, **config_overrides) -> Tuple[BertConfig, dict]:
    """Reads a google-research TF1 checkpoint into `(config, params)` for `model_class`.

    path_or_dir: the release directory (with `bert_model.ckpt.*` and `bert_config.json`) or a checkpoint
      prefix (`.../model.ckpt-1000`), in which case the config is looked for beside it.
    config: a BertConfig or the path of a `bert_config.json` / `config.json` (default: the one in the
      checkpoint's directory). `config_overrides` set BertConfig fields (num_labels=3, dtype=...).

    Missing params (a new head) are initialised from `rng` and logged; tensors the model does not use
    are logged. Missing embedding/encoder-layer tensors raise ValueError unless `allow_missing=True`
    (see `bert_jax.hf.load_hf_checkpoint`).
    The vocabulary is the directory's `vocab.txt`: `BertTokenizer.from_vocab(path,
    lowercase=...)` (lowercase for the `uncased_*` releases).
    """
    prefix, directory = resolve_checkpoint(path_or_dir)
    if isinstance(config, BertConfig):
        config = config.replace(**config_overrides) if config_overrides else config
    else:
        config = BertConfig.from_hf(directory if config is None else config, allow_other_model_type=allow_missing,
                                    **config_overrides)
    variables = read_tf1_variables(prefix)
    state, skipped = {}, []
    for name, value in variables.items():
        mapped = torch_key_and_tensor(name, value)
        if mapped is None:
            skipped.append(name)
        else:
            state[mapped[0]] = mapped[1]
    if not state:
        raise ValueError(f"TF checkpoint {prefix} holds no model weights (only {skipped[:10]})")
    logger.info("skipped %d optimizer/bookkeeping variables of %s", len(skipped), prefix)
    return config, params_from_state_dict(state, config, model_class, rng=rng, source=prefix,
                                          allow_missing=allow_missing)
