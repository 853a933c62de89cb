"""The transformers architectures the one bert_jax encoder reads and writes: BERT, RoBERTa,
RoBERTa-PreLayerNorm, ELECTRA, NomicBERT and ModernBERT.

Each is a `Family`: the `BertConfig` switches its architecture implies (RoBERTa: positions from
padding_idx + 1 that skip padding, a GELU MLM head; RoBERTa-PreLayerNorm: that plus pre-LN; ELECTRA:
a GELU MLM head and `embedding_size`), the renames between transformers' state-dict keys and the
BERT-named keys `bert_jax.hf` maps onto params (`roberta.` <-> `bert.`, `lm_head.layer_norm` <->
`cls.predictions.transform.LayerNorm`, ...; `{i}` in a rename stands for a layer index), fused
projections split at load and joined at save (ModernBERT's `Wqkv` = query|key|value and `Wi` =
activated|linear branch, concatenated on the output axis), and which transformers class each bert_jax
class is written as. `config.model_type` picks the family. Sequence classification has each family's
head (`Family.classifier_head` -> `BertConfig.classifier_head`): BERT's pooler + classifier, RoBERTa's
dense + tanh + out_proj on the first token (`classifier.dense` / `classifier.out_proj`, no pooler),
ELECTRA's the same with GELU.

A config whose switches no transformers class of its `model_type` can represent (RMSNorm with
model_type "bert", a gated MLP, no biases, ALiBi, a sliding window outside ModernBERT, ...) raises
ValueError naming the field on export rather than writing a checkpoint transformers would read as
something else.

NomicBERT: post-LN, SwiGLU (a GLU with `hidden_act`), RoPE over the whole head, no projection biases,
no pooler in its base model; transformers 5 writes nomic-ai's original tensor names (`emb_ln`,
`attn.Wqkv`, `mlp.fc11`/`fc12`), both those and its in-memory names are read. ModernBERT: pre-LN with
no attention norm in layer 0 (`first_layer_attention_norm=False`; bert_jax keeps an unused identity
norm there so scanned layers are alike, left out on export), GeGLU/SwiGLU, RoPE with `rope_theta`
(global) and `local_rope_theta`, `local_attention` = `local_attention_window`, `layer_types` =
global every `global_attn_every_n_layers`, no token types, a final norm, and an MLM head whose dense
bias is `classifier_bias` (`mlm_head_bias`). Its three dropouts sit elsewhere than BERT's two
(training only): read as hidden_dropout_prob = max(embedding, mlp dropout), written back as both.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import flax.linen as nn
import numpy as np

from bert_jax.config import ARCHITECTURE_FIELDS, BertConfig
from bert_jax.modeling import (MODEL_CLASSES, BertForMaskedLM, BertForQuestionAnswering,
                               BertForSequenceClassification, BertForTokenClassification, BertModel)
from bert_jax.modeling.rtd import BertForReplacedTokenDetection

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    title: str
    prefix: str  # transformers' base-model attribute (`roberta`, `electra`, ...)
    # (BERT-named key prefix, transformers key prefix): head renames, most specific first. The base
    # prefix `bert.` <-> `<prefix>.` is applied after them.
    renames: Tuple[Tuple[str, Optional[str]], ...]
    classes: Mapping[type, str]  # bert_jax class -> transformers class name
    implied: Callable[[Mapping[str, Any]], Dict[str, Any]]  # switches implied, from the HF config dict
    free: frozenset = frozenset()  # architecture fields the family represents with any value
    has_pooler: bool = True
    # (transformers module, (BERT-named modules...)): one fused Linear whose output axis concatenates them.
    fused: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    token_types: bool = True  # transformers' embeddings have a token-type table (ModernBERT: none)
    position_types: Tuple[str, ...] = ("absolute", "relative_key", "relative_key_query")
    # Rewrites the config.json dict bert_jax writes into the one transformers' config class reads.
    export: Optional[Callable[[BertConfig, Dict[str, Any]], Dict[str, Any]]] = None
    # BertConfig.classifier_head of its ForSequenceClassification class (set on load, checked on export).
    classifier_head: str = "pooler"


_ROBERTA_LM_HEAD = (("cls.predictions.transform.dense.", "lm_head.dense."),
                    ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
                    ("cls.predictions.decoder.", "lm_head.decoder."),
                    ("cls.predictions.bias", "lm_head.bias"))


def _classes(name: str, **extra: type) -> Dict[type, str]:
    """bert_jax class -> transformers class name for the heads every family shares with BERT (the same
    modules: token classification's dropout + `classifier`, QA's `qa_outputs`) and sequence
    classification, whose head is the family's `classifier_head` (RoBERTa's and ELECTRA's: dense +
    tanh / GELU + out_proj on the first token, not BERT's pooler + classifier)."""
    return {BertModel: f"{name}Model", BertForMaskedLM: f"{name}ForMaskedLM",
            BertForSequenceClassification: f"{name}ForSequenceClassification",
            BertForTokenClassification: f"{name}ForTokenClassification",
            BertForQuestionAnswering: f"{name}ForQuestionAnswering", **{v: k for k, v in extra.items()}}


def _roberta_implied(hf: Mapping[str, Any]) -> Dict[str, Any]:
    # fairseq positions: the k-th real token at padding_idx + k, pads at padding_idx (RobertaConfig's pad is 1).
    pad = hf.get("pad_token_id", 1)
    pad = 1 if pad is None else pad
    return {"pad_token_id": pad, "position_offset": pad + 1, "skip_padding_positions": True, "mlm_head_act": "gelu"}


def _gated_mlp(act: Optional[str]) -> str:
    """The gated MLP type of a GLU with activation `act` (NomicBERT and ModernBERT gate with any)."""
    return "swiglu" if act in ("silu", "swish") else "geglu"


def _rope_theta(hf: Mapping[str, Any], layer_type: Optional[str], default: float) -> float:
    """rope_theta of transformers 5's `rope_parameters` (per layer type for ModernBERT), or the older
    top-level keys, or the config class's default."""
    params = hf.get("rope_parameters") or {}
    if layer_type is not None:
        params = params.get(layer_type) or {}
    legacy = {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta", None: "rope_theta"}
    return float(params.get("rope_theta", hf.get(legacy[layer_type], default)))


def _nomic_implied(hf: Mapping[str, Any]) -> Dict[str, Any]:
    # NomicBertConfig: SwiGLU (with hidden_act), no attention/MLP biases, RoPE on the whole head (theta 1000).
    if hf.get("model_type") == "nomic_bert" or "rope_parameters" in hf:  # a transformers config.json
        theta = _rope_theta(hf, None, 1000.0)
    else:  # bert_jax's own field names (check_representable)
        theta = hf.get("rope_theta", 1000.0)
    return {"position_embedding_type": "rotary", "rope_theta": theta, "mlp_type": _gated_mlp(hf.get("hidden_act", "silu")),
            "attention_bias": False, "mlp_bias": False, "hidden_act": hf.get("hidden_act", "silu")}


def _global_every(layer_types) -> int:
    """ModernBERT's layer_types list -> n with layer i global iff i % n == 0 (ValueError if none fits)."""
    globals_ = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    n = globals_[1] if len(globals_) > 1 else max(len(layer_types), 1)
    if [("full_attention" if i % n == 0 else "sliding_attention") for i in range(len(layer_types))] != list(layer_types):
        raise ValueError(f"ModernBERT layer_types {list(layer_types)} is not 'global every n layers from layer 0', "
                         f"the only pattern BertConfig.global_attn_every_n_layers expresses")
    return n


def _modernbert_implied(hf: Mapping[str, Any]) -> Dict[str, Any]:
    if "hidden_activation" not in hf and "model_type" in hf and hf.get("model_type") != "modernbert":
        return {}
    ours = "local_attention_window" in hf  # bert_jax's own field names (check_representable)
    act = hf.get("hidden_act" if ours else "hidden_activation", "gelu")
    out = {"norm_position": "pre", "first_layer_attention_norm": False, "type_vocab_size": 0,
           "position_embedding_type": "rotary", "mlp_type": _gated_mlp(act), "hidden_act": act}
    if ours:
        return out
    out.update(
        layer_norm_eps=hf.get("norm_eps", 1e-5), norm_bias=hf.get("norm_bias", False),
        attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
        decoder_bias=hf.get("decoder_bias", True), mlm_head_act=hf.get("classifier_activation", "gelu"),
        mlm_head_bias=hf.get("classifier_bias", False),
        rope_theta=_rope_theta(hf, "full_attention", 160_000.0),
        local_rope_theta=_rope_theta(hf, "sliding_attention", 10_000.0),
        local_attention_window=hf.get("local_attention", 128),
        # layer_types is what transformers runs; global_attn_every_n_layers only makes it when absent.
        global_attn_every_n_layers=(_global_every(hf["layer_types"]) if hf.get("layer_types")
                                    else hf.get("global_attn_every_n_layers") or 3),
        # ModernBERT drops after the embedding norm, inside the MLP and on the attention output;
        # BERT's hidden dropout sits after each sublayer (same rate, other places: training only).
        hidden_dropout_prob=max(hf.get("embedding_dropout", 0.0), hf.get("mlp_dropout", 0.0)),
        attention_probs_dropout_prob=hf.get("attention_dropout", 0.0),
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        pad_token_id=hf.get("pad_token_id", 50283))
    return out


def _nomic_export(config: BertConfig, out: Dict[str, Any]) -> Dict[str, Any]:
    for name in ("position_embedding_type", "is_decoder", "add_cross_attention", "use_cache"):
        out.pop(name, None)
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    return out


def _modernbert_export(config: BertConfig, out: Dict[str, Any]) -> Dict[str, Any]:
    for name in ("position_embedding_type", "is_decoder", "add_cross_attention", "use_cache", "type_vocab_size",
                 "hidden_act", "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        out.pop(name, None)
    layers = config.num_hidden_layers
    window = config.local_attention_window or 128  # window 0: every layer is full_attention, the window unused
    out.update(
        hidden_activation=config.hidden_act, norm_eps=config.layer_norm_eps, norm_bias=config.norm_bias,
        attention_bias=config.attention_bias, mlp_bias=config.mlp_bias, decoder_bias=config.decoder_bias,
        classifier_activation=config.mlm_head_act or config.hidden_act, classifier_bias=config.mlm_head_bias,
        local_attention=window,
        layer_types=["full_attention" if config.is_global_layer(i) else "sliding_attention" for i in range(layers)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": float(config.rope_theta)},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": float(config.local_rope_theta or config.rope_theta)}},
        embedding_dropout=config.hidden_dropout_prob, mlp_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob, classifier_dropout=config.classifier_dropout or 0.0)
    return out


_NOMIC_LAYER = "nomic_bert.layers.{i}."
_NOMIC_DISK = "nomic_bert.encoder.layers.{i}."
_MODERN_LAYER = "model.layers.{i}."

FAMILIES: Dict[str, Family] = {
    "bert": Family("bert", "BERT", "bert", (), {cls: name for name, cls in MODEL_CLASSES.items()}, lambda hf: {}),
    "roberta": Family("roberta", "RoBERTa", "roberta", _ROBERTA_LM_HEAD,
                      _classes("Roberta"), _roberta_implied, classifier_head="roberta"),
    "roberta-prelayernorm": Family(
        "roberta-prelayernorm", "RoBERTa-PreLayerNorm", "roberta_prelayernorm",
        (("bert.encoder.final_norm.", "roberta_prelayernorm.LayerNorm."),) + _ROBERTA_LM_HEAD,
        _classes("RobertaPreLayerNorm"),
        lambda hf: {**_roberta_implied(hf), "norm_position": "pre"}, classifier_head="roberta"),
    "electra": Family(
        "electra", "ELECTRA", "electra",
        (("cls.predictions.transform.dense.", "generator_predictions.dense."),
         ("cls.predictions.transform.LayerNorm.", "generator_predictions.LayerNorm."),
         ("cls.predictions.decoder.weight", "generator_lm_head.weight"),
         ("cls.predictions.decoder.bias", None),  # ELECTRA's decoder has one bias, generator_lm_head.bias
         ("cls.predictions.bias", "generator_lm_head.bias")),
        _classes("Electra", ElectraForPreTraining=BertForReplacedTokenDetection),
        lambda hf: {"mlm_head_act": "gelu", "embedding_size": hf.get("embedding_size", 128)},
        free=frozenset({"embedding_size"}), has_pooler=False, classifier_head="electra"),
    "nomic_bert": Family(
        "nomic_bert", "NomicBERT", "nomic_bert",
        # What transformers 5 writes (nomic-ai's original names; its conversion mapping renames them at
        # load) first, then the in-memory names it renames them to, read as well.
        (("bert.embeddings.LayerNorm.", "nomic_bert.emb_ln."),
         ("bert.encoder.layer.{i}.attention.output.dense.", _NOMIC_DISK + "attn.out_proj."),
         ("bert.encoder.layer.{i}.attention.output.LayerNorm.", _NOMIC_DISK + "norm1."),
         ("bert.encoder.layer.{i}.intermediate.dense.", _NOMIC_DISK + "mlp.fc12."),  # gate (activated) branch
         ("bert.encoder.layer.{i}.intermediate.up.", _NOMIC_DISK + "mlp.fc11."),
         ("bert.encoder.layer.{i}.output.dense.", _NOMIC_DISK + "mlp.fc2."),
         ("bert.encoder.layer.{i}.output.LayerNorm.", _NOMIC_DISK + "norm2."),
         ("bert.embeddings.LayerNorm.", "nomic_bert.embeddings.LayerNorm."),
         ("bert.encoder.layer.{i}.attention.self.query.", _NOMIC_LAYER + "self_attn.q_proj."),
         ("bert.encoder.layer.{i}.attention.self.key.", _NOMIC_LAYER + "self_attn.k_proj."),
         ("bert.encoder.layer.{i}.attention.self.value.", _NOMIC_LAYER + "self_attn.v_proj."),
         ("bert.encoder.layer.{i}.attention.output.dense.", _NOMIC_LAYER + "self_attn.o_proj."),
         ("bert.encoder.layer.{i}.attention.output.LayerNorm.", _NOMIC_LAYER + "post_attention_layernorm."),
         ("bert.encoder.layer.{i}.intermediate.dense.", _NOMIC_LAYER + "mlp.gate_proj."),
         ("bert.encoder.layer.{i}.intermediate.up.", _NOMIC_LAYER + "mlp.up_proj."),
         ("bert.encoder.layer.{i}.output.dense.", _NOMIC_LAYER + "mlp.down_proj."),
         ("bert.encoder.layer.{i}.output.LayerNorm.", _NOMIC_LAYER + "post_mlp_layernorm."),
         ("cls.predictions.transform.LayerNorm.", "cls.predictions.transform.layer_norm.")),
        {BertModel: "NomicBertModel", BertForMaskedLM: "NomicBertForMaskedLM",
         BertForTokenClassification: "NomicBertForTokenClassification"},
        _nomic_implied, free=frozenset({"rope_theta"}), has_pooler=False,
        fused=((_NOMIC_DISK + "attn.Wqkv", ("bert.encoder.layer.{i}.attention.self.query",
                                            "bert.encoder.layer.{i}.attention.self.key",
                                            "bert.encoder.layer.{i}.attention.self.value")),),
        position_types=("rotary",), export=_nomic_export),
    "modernbert": Family(
        "modernbert", "ModernBERT", "model",
        (("bert.embeddings.word_embeddings.", "model.embeddings.tok_embeddings."),
         ("bert.embeddings.LayerNorm.", "model.embeddings.norm."),
         ("bert.encoder.layer.{i}.attention.LayerNorm.", _MODERN_LAYER + "attn_norm."),
         ("bert.encoder.layer.{i}.attention.output.dense.", _MODERN_LAYER + "attn.Wo."),
         ("bert.encoder.layer.{i}.intermediate.LayerNorm.", _MODERN_LAYER + "mlp_norm."),
         ("bert.encoder.layer.{i}.output.dense.", _MODERN_LAYER + "mlp.Wo."),
         ("bert.encoder.final_norm.", "model.final_norm."),
         ("cls.predictions.transform.dense.", "head.dense."),
         ("cls.predictions.transform.LayerNorm.", "head.norm."),
         ("cls.predictions.decoder.weight", "decoder.weight"),
         ("cls.predictions.decoder.bias", None),  # one decoder bias, decoder.bias
         ("cls.predictions.bias", "decoder.bias")),
        {BertModel: "ModernBertModel", BertForMaskedLM: "ModernBertForMaskedLM"},
        _modernbert_implied,
        free=frozenset({"rope_theta", "local_rope_theta", "local_attention_window", "global_attn_every_n_layers",
                        "mlm_head_act", "mlm_head_bias", "norm_bias", "attention_bias", "mlp_bias", "decoder_bias"}),
        has_pooler=False,
        fused=((_MODERN_LAYER + "attn.Wqkv", ("bert.encoder.layer.{i}.attention.self.query",
                                              "bert.encoder.layer.{i}.attention.self.key",
                                              "bert.encoder.layer.{i}.attention.self.value")),
               (_MODERN_LAYER + "mlp.Wi", ("bert.encoder.layer.{i}.intermediate.dense",
                                           "bert.encoder.layer.{i}.intermediate.up"))),
        token_types=False, position_types=("rotary",), export=_modernbert_export),
}

# transformers class name -> bert_jax class, for every family (`load_hf_checkpoint(path, "RobertaForMaskedLM")`).
HF_CLASS_NAMES: Dict[str, type] = {name: cls for family in FAMILIES.values() for cls, name in family.classes.items()}


def family_config_defaults(model_type: str, hf_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The BertConfig fields `model_type`'s architecture implies, read off its config.json dict
    (explicit keys of the dict override them in `BertConfig.from_hf`)."""
    family = FAMILIES[model_type]
    return {"model_type": model_type, "classifier_head": family.classifier_head, **family.implied(hf_config)}


def resolve_model_class(model_class: Union[str, Type[nn.Module]]) -> Union[str, Type[nn.Module]]:
    """A transformers class name of any family (e.g. 'RobertaForMaskedLM') -> the bert_jax class; other
    values unchanged (build_model resolves BERT names)."""
    return HF_CLASS_NAMES.get(model_class, model_class) if isinstance(model_class, str) else model_class


# ------------------------------------------------------------------------------------------------ export
def _expected(config: BertConfig, family: Family) -> Dict[str, Any]:
    """Each architecture field's value the family can write: the implied one, else BERT's default
    (`classifier_head` aside: only the sequence classifier has that head, see `check_representable`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(BertConfig)}
    implied = family.implied(config.to_hf())
    return {name: implied.get(name, defaults[name]) for name in ARCHITECTURE_FIELDS - family.free - {"classifier_head"}}


def check_representable(config: BertConfig, model: Optional[nn.Module] = None) -> None:
    """Raises ValueError naming the first field (or the model class) transformers' classes of
    `config.model_type` cannot represent."""
    family = FAMILIES[config.model_type]
    where = f"a transformers {family.title} checkpoint (model_type={config.model_type!r})"
    if family.token_types and config.type_vocab_size == 0:
        raise ValueError(f"BertConfig.type_vocab_size=0 (no token types) cannot be written as {where}: transformers' "
                         f"embeddings always add a token-type table (use type_vocab_size=1 for one unused type)")
    if not family.token_types and config.type_vocab_size != 0:
        raise ValueError(f"BertConfig.type_vocab_size={config.type_vocab_size} cannot be written as {where}, whose "
                         f"embeddings have no token-type table (needs type_vocab_size=0)")
    if config.position_embedding_type not in family.position_types:
        raise ValueError(f"BertConfig.position_embedding_type={config.position_embedding_type!r} cannot be written as "
                         f"{where}, which takes position_embedding_type in {family.position_types}")
    expected = _expected(config, family)
    for name in sorted(expected):
        value, want = getattr(config, name), expected[name]
        if name == "mlm_head_act":  # compare the activation the head applies
            value, want = value or config.hidden_act, want or config.hidden_act
        if name == "embedding_size":  # None is hidden_size
            value, want = value or config.hidden_size, want or config.hidden_size
        if value != want:
            raise ValueError(f"BertConfig.{name}={value!r} cannot be written as {where}, which needs {name}={want!r}: "
                             f"no transformers class of that model_type has this architecture (keep such models in "
                             f"bert_jax's own checkpoints)")
    if model is not None and type(model) not in family.classes:
        raise ValueError(f"{type(model).__name__} cannot be written as {where}: its classes here are "
                         f"{sorted(family.classes.values())}")
    if isinstance(model, BertForSequenceClassification) and config.classifier_head != family.classifier_head:
        raise ValueError(f"BertConfig.classifier_head={config.classifier_head!r} cannot be written as {where}, whose "
                         f"{family.classes[type(model)]} has the head classifier_head={family.classifier_head!r}: no "
                         f"transformers class of that model_type has this head (keep such models in bert_jax's own "
                         f"checkpoints)")


def hf_config(config: BertConfig, model: nn.Module) -> dict:
    """config.json for `model` as transformers' class of `config.model_type` reads it (checked first)."""
    check_representable(config, model)
    family = FAMILIES[config.model_type]
    out = config.to_hf(architectures=[family.classes[type(model)]])
    for name in ARCHITECTURE_FIELDS:
        out.pop(name, None)  # implied by model_type (checked above), unknown to transformers
    if config.model_type == "electra":
        out["embedding_size"] = config.embedding_size or config.hidden_size
    return family.export(config, out) if family.export else out


# ------------------------------------------------------------------------------------------------ keys
@functools.lru_cache(maxsize=None)
def _layer_pattern(prefix: str) -> "re.Pattern":
    """A key prefix with `{i}` (a layer index) as a regex capturing the index."""
    return re.compile("^" + re.escape(prefix).replace(r"\{i\}", r"(\d+)"))


def _rename(key: str, pairs) -> Optional[str]:
    """The first matching (old prefix, new prefix) pair applied to key; `{i}` matches a layer index and
    is carried over; new None drops the key."""
    for old, new in pairs:
        if "{i}" in old:
            match = _layer_pattern(old).match(key)
            if match:
                return None if new is None else new.replace("{i}", match.group(1)) + key[match.end():]
        elif key.startswith(old):
            return None if new is None else new + key[len(old):]
    return key


def _split_fused(state: Dict[str, np.ndarray], family: Family) -> Dict[str, np.ndarray]:
    """Fused transformers Linears (PyTorch layout [out, in], bias [out]) -> their BERT-named parts, cut
    into equal pieces along the output axis."""
    for fused, parts in family.fused:
        pattern = _layer_pattern(fused + ".")
        for key in [k for k in state if pattern.match(k)]:
            index, leaf = pattern.match(key).group(1), key[pattern.match(key).end():]
            pieces = np.split(state.pop(key), len(parts), axis=0)
            for part, piece in zip(parts, pieces):
                state[part.replace("{i}", index) + "." + leaf] = np.ascontiguousarray(piece)
    return state


def _join_fused(state: Dict[str, np.ndarray], family: Family) -> Dict[str, np.ndarray]:
    """The inverse of `_split_fused`: BERT-named parts concatenated into the fused transformers key."""
    for fused, parts in family.fused:
        pattern = _layer_pattern(parts[0] + ".")
        for key in [k for k in state if pattern.match(k)]:
            index, leaf = pattern.match(key).group(1), key[pattern.match(key).end():]
            names = [part.replace("{i}", index) + "." + leaf for part in parts]
            state[fused.replace("{i}", index) + "." + leaf] = np.concatenate([state.pop(n) for n in names], axis=0)
    return state


def _skipped_first_norm(config: BertConfig) -> Tuple[str, ...]:
    """Keys of layer 0's attention norm when `first_layer_attention_norm=False`: bert_jax keeps the
    (unused) params so that every layer, scanned or not, has the same tree; transformers has none."""
    if config.first_layer_attention_norm:
        return ()
    prefix = "bert.encoder.layer.0.attention.LayerNorm."
    return (prefix + "weight",) + ((prefix + "bias",) if config.norm_bias else ())


def to_bert_keys(state: Mapping[str, np.ndarray], config: BertConfig, source: str = "the checkpoint"
                 ) -> Dict[str, np.ndarray]:
    """transformers' keys of `config.model_type` -> the BERT-named keys `bert_jax.hf` maps onto params.
    A base-model checkpoint (keys without `<prefix>.`) is read as well. Raises ValueError when the
    tensors are named for another architecture than config.json's model_type says."""
    family = FAMILIES[config.model_type]
    if family.model_type == "bert":
        return dict(state)
    base = f"{family.prefix}."
    others = sorted({f.prefix for f in FAMILIES.values() if f is not family
                     and any(k.startswith(f"{f.prefix}.") for k in state)})
    if others and not any(k.startswith(base) for k in state):
        raise ValueError(f"{source}: config.json says model_type={config.model_type!r}, but its tensors are named "
                         f"{others[0]}.* (a {others[0]} checkpoint with a wrong model_type?)")
    if not any(k.startswith(base) for k in state):  # saved from the base model: no prefix
        state = {base + k: v for k, v in state.items()}
    state = _split_fused(dict(state), family)
    pairs = tuple((new, old) for old, new in family.renames if new is not None) + ((base, "bert."),)
    out = {_rename(k, pairs): v for k, v in state.items()}
    for key in _skipped_first_norm(config):  # an identity norm where transformers has none
        dtype = out["bert.embeddings.word_embeddings.weight"].dtype if "bert.embeddings.word_embeddings.weight" in out \
            else np.float32
        out.setdefault(key, (np.ones if key.endswith("weight") else np.zeros)(config.hidden_size, dtype))
    return out


def from_bert_keys(state: Mapping[str, np.ndarray], config: BertConfig, model: nn.Module) -> Dict[str, np.ndarray]:
    """BERT-named keys (`bert_jax.hf.to_torch_state_dict`) -> transformers' keys of `config.model_type`
    for `model` (a base model's keys carry no prefix, as transformers saves them)."""
    family = FAMILIES[config.model_type]
    if family.model_type == "bert":
        return dict(state)
    is_base = isinstance(model, BertModel)
    if is_base:
        state = {"bert." + k: v for k, v in state.items()}
    if not family.has_pooler:
        pooler = [k for k in state if k.startswith("bert.pooler.")]
        if pooler:
            logger.warning("%s has no pooler: not writing %s", family.title, pooler)
        state = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}
    for key in _skipped_first_norm(config):
        state.pop(key, None)
    state = _join_fused(dict(state), family)
    pairs = family.renames + (("bert.", f"{family.prefix}."),)
    out = {}
    for key, value in state.items():
        new = _rename(key, pairs)
        if new is not None:
            out[new[len(family.prefix) + 1:] if is_base and new.startswith(f"{family.prefix}.") else new] = value
    return out
