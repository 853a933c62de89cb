"""BertConfig: model hyperparameters as a frozen, hashable dataclass.

Every field of Hugging Face's `BertConfig` with the same name and default, the architecture
switches (BERT's values by default) and the JAX-side fields (compute/param dtype, attention kernel,
remat, scan). Reads and writes HF `config.json` (RoBERTa's and ELECTRA's too) and google-research's
original `bert_config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Optional, Union

import numpy as np
from flax.core import FrozenDict

logger = logging.getLogger(__name__)

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish", "tanh")
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query", "rotary", "alibi", "none")
# The position types that keep a learned absolute table (relative ones keep it unused, as transformers does).
LEARNED_POSITION_TYPES = ("absolute", "relative_key", "relative_key_query")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
DTYPES = ("float32", "bfloat16", "float16", "float64")
ATTENTION_IMPLS = ("xla", "dot_product", "cudnn", "pallas_tpu", "pallas_gpu", "flash", "xla_counter", "auto")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "minimal")
# Architecture switches (research ablations; see `bert_jax.architectures` for the transformers classes
# each model_type maps to).
MODEL_TYPES = ("bert", "roberta", "roberta-prelayernorm", "electra", "nomic_bert", "modernbert")
NORM_POSITIONS = ("post", "pre")
NORM_TYPES = ("layernorm", "rmsnorm")
MLP_TYPES = ("dense", "geglu", "swiglu")
# The activation a gated MLP applies to its gate branch must be of its family (geglu: a GELU, swiglu: SiLU).
GATED_ACTIVATIONS = {"geglu": ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"), "swiglu": ("silu", "swish")}
# The sequence classifier's head: "pooler" (BERT: tanh(dense(h[CLS])) -> dropout -> classifier),
# "roberta" (RoBERTa / RoBERTa-PreLayerNorm: h[CLS] -> dropout -> dense -> tanh -> dropout -> out_proj, no
# pooler), "electra" (the same with GELU instead of tanh).
CLASSIFIER_HEADS = ("pooler", "roberta", "electra")

# Keys HF writes into config.json that describe the checkpoint or generation, not the model.
_HF_BOOKKEEPING_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "bos_token_id", "eos_token_id", "gradient_checkpointing", "directionality",
    "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head",
    "pooler_type", "_attn_implementation_autoset", "tokenizer_class", "finetuning_task",
    "torchscript", "use_return_dict", "pruned_heads", "tie_encoder_decoder", "cross_attention_hidden_size",
    "add_pooling_layer", "prefix", "task_specific_params", "sep_token_id", "decoder_start_token_id",
})


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyperparameters; field names and defaults are those of HF `transformers.BertConfig`,
    plus architecture switches (norm placement and type, biases, gated MLP, token types, embedding
    norm and width, position ids, `model_type`) whose defaults are BERT's: a config that leaves them
    alone is exactly BERT. `model_type` names the transformers architecture (BERT, RoBERTa,
    RoBERTa-PreLayerNorm, ELECTRA, NomicBERT, ModernBERT) checkpoints are read from and written to
    (`bert_jax.architectures`). Positions may act inside attention instead of as a learned table
    (`position_embedding_type` "rotary" with `rope_theta` / `local_rope_theta`, "alibi", "none"), and
    layers may attend in a sliding window (`local_attention_window`, global every
    `global_attn_every_n_layers` layers from layer 0). `classifier_head` picks the sequence classifier's
    head: BERT's pooler + classifier, or RoBERTa's / ELECTRA's dense + tanh / GELU + out_proj on the
    first token (no pooler).

    Dict-valued fields (`id2label`, `label2id`) are stored as `FrozenDict` so the config stays
    hashable (Flax modules and `jax.jit` static arguments need that).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: Optional[int] = 0
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    use_cache: bool = True
    classifier_dropout: Optional[float] = None
    num_labels: int = 2
    id2label: Optional[Mapping[int, str]] = None
    label2id: Optional[Mapping[str, int]] = None
    problem_type: Optional[str] = None
    tie_word_embeddings: bool = True
    # Architecture switches; every default is BERT's, so a config that leaves them alone is BERT.
    model_type: str = "bert"  # which transformers architecture this config reads from / writes to
    norm_position: str = "post"  # "post": LN(x + f(x)) (BERT); "pre": x + f(LN(x)), plus a final norm
    norm_type: str = "layernorm"  # "layernorm" or "rmsnorm" (x / sqrt(mean(x^2) + eps) * scale)
    attention_bias: bool = True  # biases of the Q/K/V projections and the attention output dense
    mlp_bias: bool = True  # biases of the MLP's dense layers
    norm_bias: bool = True  # bias (beta) of every norm
    decoder_bias: bool = True  # the MLM decoder's output bias [vocab]
    mlp_type: str = "dense"  # "dense": act(x W_i) W_o (BERT); "geglu"/"swiglu": (act(x W_i) * (x W_up)) W_o
    embedding_norm: bool = True  # the norm after word + position + token-type embeddings
    embedding_size: Optional[int] = None  # width of the embedding tables; != hidden_size adds a projection (ELECTRA)
    position_offset: int = 0  # added to default position ids (RoBERTa: pad_token_id + 1)
    skip_padding_positions: bool = False  # positions count only non-pad tokens; pads get position_offset - 1
    mlm_head_act: Optional[str] = None  # activation of the MLM head transform (None: hidden_act)
    mlm_head_bias: bool = True  # bias of the MLM head transform's dense (ModernBERT: classifier_bias=False)
    # BertForSequenceClassification's head (CLASSIFIER_HEADS); loading a RoBERTa / ELECTRA checkpoint sets its own.
    classifier_head: str = "pooler"
    # Positions: position_embedding_type "rotary" rotates queries and keys by their position_ids (RoPE,
    # rotate-half convention); "alibi" adds -slope_h * |pos_q - pos_k| to the scores; "none" uses no positions.
    rope_theta: float = 10000.0  # RoPE base of global layers
    local_rope_theta: Optional[float] = None  # RoPE base of local-window layers (None: rope_theta)
    # Sliding-window attention (ModernBERT): 0 = every layer global; W > 0: a local layer's query at
    # position q sees keys k with |q - k| <= W // 2. Layer i is global iff i % global_attn_every_n_layers == 0.
    local_attention_window: int = 0
    global_attn_every_n_layers: int = 1
    first_layer_attention_norm: bool = True  # pre-LN only: False skips layer 0's attention norm (ModernBERT)
    # JAX-side fields (not part of HF's config).
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # storage dtype of parameters
    attention_impl: str = "xla"  # named dot-product-attention kernel, see bert_jax.modeling.attention
    remat_policy: str = "none"  # rematerialisation of each encoder layer in the backward pass
    scan_layers: bool = False  # stack layers under nn.scan

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        self._check_types(set_)
        # Normalise dtype spellings (jnp.float32, np.dtype('bfloat16'), 'bf16') to canonical names.
        for name in ("dtype", "param_dtype"):
            set_(name, _dtype_name(getattr(self, name), name))
        id2label = self.id2label
        if id2label is not None:
            if not isinstance(id2label, Mapping):
                raise ValueError(f"BertConfig.id2label must map integer ids to label names, got {id2label!r}")
            id2label = {_int_key("id2label", k): str(v) for k, v in id2label.items()}
            if self.num_labels != len(id2label):
                if self.num_labels == BertConfig.num_labels:
                    set_("num_labels", len(id2label))  # num_labels left at its default: id2label decides
                else:
                    raise ValueError(
                        f"BertConfig.num_labels={self.num_labels} disagrees with id2label, which has {len(id2label)} labels")
        else:
            id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is not None and not isinstance(self.label2id, Mapping):
            raise ValueError(f"BertConfig.label2id must map label names to integer ids, got {self.label2id!r}")
        label2id = dict(self.label2id) if self.label2id is not None else {v: k for k, v in id2label.items()}
        set_("id2label", FrozenDict(id2label))
        set_("label2id", FrozenDict({str(k): _int_value("label2id", k, v) for k, v in label2id.items()}))
        self.validate()

    def _check_types(self, set_) -> None:
        """ValueError naming the field whose value has the wrong type (before anything uses it):
        booleans must be bools (a JSON "false" string would be truthy), integer fields ints (numpy
        integers are converted), pad_token_id an int or None."""
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, np.bool_):
                set_(name, value := bool(value))
            if not isinstance(value, bool):
                raise ValueError(f"BertConfig.{name} must be true or false, got {value!r} ({type(value).__name__})")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in ("pad_token_id", "embedding_size"):
                continue
            if isinstance(value, np.integer):
                set_(name, value := int(value))
            if isinstance(value, bool) or not isinstance(value, int):
                kind = ("an integer or null" if name in ("pad_token_id", "embedding_size") else
                        "a non-negative integer" if name in ("type_vocab_size", "position_offset",
                                                     "local_attention_window") else
                        "a positive integer")
                raise ValueError(f"BertConfig.{name} must be {kind}, got {value!r} ({type(value).__name__})")

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.type_vocab_size < 0:  # 0: no token-type embeddings (RoBERTa-style inputs, ModernBERT)
            raise ValueError(f"BertConfig.type_vocab_size must be 0 (no token types) or a positive integer, "
                             f"got {self.type_vocab_size}")
        if self.embedding_size is not None and self.embedding_size < 1:
            raise ValueError(f"BertConfig.embedding_size must be a positive integer or null, got {self.embedding_size!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be a probability in [0, 1), got {value!r}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive number, got {value!r}")
        _check_choice("hidden_act", self.hidden_act, ACTIVATIONS)
        _check_choice("position_embedding_type", self.position_embedding_type, POSITION_EMBEDDING_TYPES)
        _check_choice("problem_type", self.problem_type, PROBLEM_TYPES)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("norm_type", self.norm_type, NORM_TYPES)
        _check_choice("mlp_type", self.mlp_type, MLP_TYPES)
        _check_choice("classifier_head", self.classifier_head, CLASSIFIER_HEADS)
        if self.mlm_head_act is not None:
            _check_choice("mlm_head_act", self.mlm_head_act, ACTIVATIONS)
        if self.mlp_type in GATED_ACTIVATIONS and self.hidden_act not in GATED_ACTIVATIONS[self.mlp_type]:
            raise ValueError(f"BertConfig.mlp_type={self.mlp_type!r} gates with hidden_act, which must be one of "
                             f"{GATED_ACTIVATIONS[self.mlp_type]}, got hidden_act={self.hidden_act!r}")
        if self.position_offset < 0 or self.position_offset >= self.max_position_embeddings:
            raise ValueError(f"BertConfig.position_offset={self.position_offset} must be in [0, "
                             f"max_position_embeddings={self.max_position_embeddings})")
        if self.skip_padding_positions and (self.pad_token_id is None or self.position_offset < 1):
            raise ValueError("BertConfig.skip_padding_positions=True needs a pad_token_id and position_offset >= 1 "
                             "(padding tokens take position position_offset - 1)")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id={self.pad_token_id} is outside the vocabulary "
                             f"[0, {self.vocab_size})")
        for name in ("rope_theta", "local_rope_theta"):
            value = getattr(self, name)
            if value is None and name == "local_rope_theta":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive number, got {value!r}")
        if self.local_attention_window < 0:
            raise ValueError(f"BertConfig.local_attention_window must be 0 (all layers global) or a positive window, "
                             f"got {self.local_attention_window}")
        if self.global_attn_every_n_layers < 1:
            raise ValueError(f"BertConfig.global_attn_every_n_layers must be a positive integer, "
                             f"got {self.global_attn_every_n_layers}")
        if self.position_embedding_type == "rotary" and self.head_dim % 2:
            raise ValueError(f"BertConfig.position_embedding_type='rotary' needs an even head dim, got "
                             f"hidden_size / num_attention_heads = {self.head_dim}")
        if not self.first_layer_attention_norm and self.norm_position != "pre":
            raise ValueError("BertConfig.first_layer_attention_norm=False needs norm_position='pre' (a post-LN layer's "
                             "attention norm is its residual norm)")
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("BertConfig.add_cross_attention=True requires is_decoder=True "
                             "(cross-attention layers only exist in the decoder)")
        if len(self.id2label) != self.num_labels:
            raise ValueError(f"BertConfig.id2label has {len(self.id2label)} labels but num_labels={self.num_labels}")

    # ----------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_local_layers(self) -> bool:
        """Whether any layer attends within a sliding window."""
        return self.local_attention_window > 0 and any(not self.is_global_layer(i)
                                                       for i in range(self.num_hidden_layers))

    def is_global_layer(self, index: int) -> bool:
        """Layer `index` attends globally (ModernBERT: every `global_attn_every_n_layers`-th layer from 0)."""
        return self.local_attention_window == 0 or index % self.global_attn_every_n_layers == 0

    def replace(self, **changes: Any) -> "BertConfig":
        """Returns a copy with `changes` applied (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"BertConfig has no field(s) {sorted(unknown)}")
        if "num_labels" in changes and "id2label" not in changes:
            if changes["num_labels"] == self.num_labels:
                del changes["num_labels"]  # same count: keep the label names
            else:
                changes.update(id2label=None, label2id=None)
        if changes.get("id2label") is not None:
            changes.setdefault("num_labels", len(changes["id2label"]))
            changes.setdefault("label2id", None)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, config: Union[Mapping[str, Any], str, os.PathLike], *, allow_other_model_type: bool = False,
                **overrides: Any) -> "BertConfig":
        """Builds a config from an HF `config.json` (dict, file or directory) or google-research's
        `bert_config.json`. `overrides` set JAX-side or any other fields (e.g. dtype="bfloat16").

        A config whose `model_type` is not "bert" (RoBERTa, ELECTRA, ...: other weights, other
        embeddings) raises ValueError unless `allow_other_model_type=True` (then it is read as BERT,
        with a warning). Wrongly typed values raise ValueError naming the field (see `BertConfig`)."""
        source = "config"
        if isinstance(config, (str, os.PathLike)):
            path = os.fspath(config)
            if os.path.isdir(path):
                for name in ("config.json", "bert_config.json"):
                    if os.path.isfile(os.path.join(path, name)):
                        path = os.path.join(path, name)
                        break
                else:
                    raise FileNotFoundError(f"no config.json or bert_config.json in {path}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config file {path} does not exist")
            source = path
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except UnicodeDecodeError as e:
                raise ValueError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(config, Mapping):
            raise ValueError(f"BertConfig.from_hf expects a dict or a path, got {type(config).__name__}"
                             + (f" (the JSON in {source})" if source != "config" else ""))
        model_type = config.get("model_type", "bert")
        family_defaults = {}
        if model_type in MODEL_TYPES:
            # Another architecture of the one encoder (RoBERTa, ELECTRA, ...): its config.json does not
            # spell out the switches its architecture implies, so they come from its family.
            from bert_jax.architectures import family_config_defaults
            family_defaults = family_config_defaults(model_type, config)
        else:
            if not allow_other_model_type:
                raise ValueError(f"{source} has model_type={model_type!r}, which bert_jax cannot read (it reads "
                                 f"{', '.join(MODEL_TYPES)}; pass allow_other_model_type=True, or allow_missing=True "
                                 f"when loading weights, to read it as BERT anyway)")
            logger.warning("%s has model_type=%r; reading it as BERT", source, model_type)
            # Only BERT's own fields: another architecture's `embedding_size` (ALBERT) is not ours to apply.
            config = {k: v for k, v in config.items() if k != "model_type" and k not in ARCHITECTURE_FIELDS}
        field_names = {f.name for f in dataclasses.fields(cls)} - _JAX_FIELDS
        kwargs = {**family_defaults, **{k: v for k, v in config.items() if k in field_names}}
        unknown = sorted(set(config) - field_names - _HF_BOOKKEEPING_KEYS)
        if unknown:
            logger.info("BertConfig.from_hf ignores keys %s", unknown)
        if "num_labels" not in kwargs and isinstance(kwargs.get("id2label"), Mapping):
            kwargs["num_labels"] = len(kwargs["id2label"])
        # Older configs leave these out; None means "HF default" there, not "no value".
        for name in ("layer_norm_eps", "pad_token_id", "position_embedding_type", "use_cache", "tie_word_embeddings"):
            if name in kwargs and kwargs[name] is None and name != "pad_token_id":
                del kwargs[name]
        try:
            config = cls(**kwargs)
        except ValueError as e:
            if source == "config":
                raise
            raise ValueError(f"{source}: {e}") from None
        # replace() re-derives the label maps when num_labels/id2label change.
        return config.replace(**overrides) if overrides else config

    def to_hf(self, architectures: Optional[list] = None) -> dict:
        """Returns an HF `config.json` dict (JAX-side fields left out) that `from_hf` reads back to this
        config. A default BERT config gives exactly transformers' BertConfig keys; `save_hf_checkpoint`
        writes the config.json of other architectures (`bert_jax.architectures.hf_config`)."""
        # The switches: all of them for another model_type (from_hf would otherwise fill the ones left
        # out from that architecture's defaults), only those that differ from BERT's for BERT.
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _JAX_FIELDS
               and (f.name not in ARCHITECTURE_FIELDS or self.model_type != "bert" or getattr(self, f.name) != f.default)}
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        out["model_type"] = self.model_type
        if architectures:
            out["architectures"] = list(architectures)
        return out

    def to_json_file(self, path: Union[str, os.PathLike], **kwargs: Any) -> None:
        with open(path, "w") as f:
            json.dump(self.to_hf(**kwargs), f, indent=2, sort_keys=True)


_JAX_FIELDS = frozenset({"dtype", "param_dtype", "attention_impl", "remat_policy", "scan_layers"})
# The switches added for other architectures; `to_hf` writes them only when they differ from BERT's
# value, so a BERT config.json stays exactly what transformers' BertConfig writes.
ARCHITECTURE_FIELDS = frozenset({
    "norm_position", "norm_type", "attention_bias", "mlp_bias", "norm_bias", "decoder_bias", "mlp_type",
    "embedding_norm", "embedding_size", "position_offset", "skip_padding_positions", "mlm_head_act", "mlm_head_bias",
    "classifier_head", "rope_theta", "local_rope_theta", "local_attention_window", "global_attn_every_n_layers",
    "first_layer_attention_norm"})
_BOOL_FIELDS = ("is_decoder", "add_cross_attention", "use_cache", "tie_word_embeddings", "scan_layers",
                "attention_bias", "mlp_bias", "norm_bias", "decoder_bias", "embedding_norm", "skip_padding_positions",
                "mlm_head_bias", "first_layer_attention_norm")
_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "num_labels", "pad_token_id", "embedding_size",
               "position_offset", "local_attention_window", "global_attn_every_n_layers")


def _int_key(field: str, key: Any) -> int:
    """An id2label key as int: ints, numpy ints and decimal strings ("3", JSON's only key type)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    raise ValueError(f"BertConfig.{field} must map integer ids to label names; key {key!r} is not an integer")


def _int_value(field: str, key: Any, value: Any) -> int:
    """A label2id value as int (ints, numpy ints, decimal strings)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"BertConfig.{field} must map label names to integer ids; {key!r} maps to {value!r}")

_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                  "f16": "float16", "fp64": "float64", "float": "float32"}


def _dtype_name(value: Any, field: str) -> str:
    if value is None:  # np.dtype(None) would be float64
        raise ValueError(f"BertConfig.{field} must be one of {DTYPES}, got None")
    try:
        name = value if isinstance(value, str) else np.dtype(value).name
    except TypeError as e:
        raise ValueError(f"BertConfig.{field} must be one of {DTYPES}, got {value!r}") from e
    name = _DTYPE_ALIASES.get(name, name)
    _check_choice(field, name, DTYPES)
    return name


def _check_choice(field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"BertConfig.{field}={value!r} is not one of {choices}")
