"""The transformers architectures the one bert_jax encoder reads and writes: BERT, RoBERTa,
RoBERTa-PreLayerNorm and ELECTRA.

Each is a `Family`: the `BertConfig` switches its architecture implies (RoBERTa: positions from
padding_idx + 1 that skip padding, a GELU MLM head; RoBERTa-PreLayerNorm: that plus pre-LN; ELECTRA:
a GELU MLM head and `embedding_size`), the renames between transformers' state-dict keys and the
BERT-named keys `bert_jax.hf` maps onto params (`roberta.` <-> `bert.`, `lm_head.layer_norm` <->
`cls.predictions.transform.LayerNorm`, ...), and which transformers class each bert_jax class is
written as. `config.model_type` picks the family.

A config whose switches no transformers class of its `model_type` can represent (RMSNorm with
model_type "bert", a gated MLP, no biases, ...) raises ValueError naming the field on export rather
than writing a checkpoint transformers would read as something else.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import flax.linen as nn
import numpy as np

from bert_jax.config import ARCHITECTURE_FIELDS, BertConfig
from bert_jax.modeling import (MODEL_CLASSES, BertForMaskedLM, BertForQuestionAnswering, BertForTokenClassification,
                               BertModel)
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


_ROBERTA_LM_HEAD = (("cls.predictions.transform.dense.", "lm_head.dense."),
                    ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
                    ("cls.predictions.decoder.", "lm_head.decoder."),
                    ("cls.predictions.bias", "lm_head.bias"))


def _classes(name: str, **extra: type) -> Dict[type, str]:
    """bert_jax class -> transformers class name for the heads every family shares with BERT (the same
    modules: token classification's dropout + `classifier`, QA's `qa_outputs`). Sequence
    classification is not among them: RoBERTa's and ELECTRA's heads are dense + tanh/gelu + out_proj
    on the first token, not BERT's pooler + classifier."""
    return {BertModel: f"{name}Model", BertForMaskedLM: f"{name}ForMaskedLM",
            BertForTokenClassification: f"{name}ForTokenClassification",
            BertForQuestionAnswering: f"{name}ForQuestionAnswering", **{v: k for k, v in extra.items()}}


def _roberta_implied(hf: Mapping[str, Any]) -> Dict[str, Any]:
    # fairseq positions: the k-th real token at padding_idx + k, pads at padding_idx (RobertaConfig's pad is 1).
    pad = hf.get("pad_token_id", 1)
    pad = 1 if pad is None else pad
    return {"pad_token_id": pad, "position_offset": pad + 1, "skip_padding_positions": True, "mlm_head_act": "gelu"}


FAMILIES: Dict[str, Family] = {
    "bert": Family("bert", "BERT", "bert", (), {cls: name for name, cls in MODEL_CLASSES.items()}, lambda hf: {}),
    "roberta": Family("roberta", "RoBERTa", "roberta", _ROBERTA_LM_HEAD,
                      _classes("Roberta"), _roberta_implied),
    "roberta-prelayernorm": Family(
        "roberta-prelayernorm", "RoBERTa-PreLayerNorm", "roberta_prelayernorm",
        (("bert.encoder.final_norm.", "roberta_prelayernorm.LayerNorm."),) + _ROBERTA_LM_HEAD,
        _classes("RobertaPreLayerNorm"),
        lambda hf: {**_roberta_implied(hf), "norm_position": "pre"}),
    "electra": Family(
        "electra", "ELECTRA", "electra",
        (("cls.predictions.transform.dense.", "generator_predictions.dense."),
         ("cls.predictions.transform.LayerNorm.", "generator_predictions.LayerNorm."),
         ("cls.predictions.decoder.weight", "generator_lm_head.weight"),
         ("cls.predictions.decoder.bias", None),  # ELECTRA's decoder has one bias, generator_lm_head.bias
         ("cls.predictions.bias", "generator_lm_head.bias")),
        _classes("Electra", ElectraForPreTraining=BertForReplacedTokenDetection),
        lambda hf: {"mlm_head_act": "gelu", "embedding_size": hf.get("embedding_size", 128)},
        free=frozenset({"embedding_size"}), has_pooler=False),
}

# transformers class name -> bert_jax class, for every family (`load_hf_checkpoint(path, "RobertaForMaskedLM")`).
HF_CLASS_NAMES: Dict[str, type] = {name: cls for family in FAMILIES.values() for cls, name in family.classes.items()}


def family_config_defaults(model_type: str, hf_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The BertConfig fields `model_type`'s architecture implies, read off its config.json dict
    (explicit keys of the dict override them in `BertConfig.from_hf`)."""
    return {"model_type": model_type, **FAMILIES[model_type].implied(hf_config)}


def resolve_model_class(model_class: Union[str, Type[nn.Module]]) -> Union[str, Type[nn.Module]]:
    """A transformers class name of any family (e.g. 'RobertaForMaskedLM') -> the bert_jax class; other
    values unchanged (build_model resolves BERT names)."""
    return HF_CLASS_NAMES.get(model_class, model_class) if isinstance(model_class, str) else model_class


# ------------------------------------------------------------------------------------------------ export
def _expected(config: BertConfig, family: Family) -> Dict[str, Any]:
    """Each architecture field's value the family can write: the implied one, else BERT's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(BertConfig)}
    implied = family.implied(config.to_hf())
    return {name: implied.get(name, defaults[name]) for name in ARCHITECTURE_FIELDS - family.free}


def check_representable(config: BertConfig, model: Optional[nn.Module] = None) -> None:
    """Raises ValueError naming the first field (or the model class) transformers' classes of
    `config.model_type` cannot represent."""
    family = FAMILIES[config.model_type]
    where = f"a transformers {family.title} checkpoint (model_type={config.model_type!r})"
    if config.type_vocab_size == 0:
        raise ValueError(f"BertConfig.type_vocab_size=0 (no token types) cannot be written as {where}: transformers' "
                         f"embeddings always add a token-type table (use type_vocab_size=1 for one unused type)")
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


def hf_config(config: BertConfig, model: nn.Module) -> dict:
    """config.json for `model` as transformers' class of `config.model_type` reads it (checked first)."""
    check_representable(config, model)
    family = FAMILIES[config.model_type]
    out = config.to_hf(architectures=[family.classes[type(model)]])
    for name in ARCHITECTURE_FIELDS:
        out.pop(name, None)  # implied by model_type (checked above), unknown to transformers
    if config.model_type == "electra":
        out["embedding_size"] = config.embedding_size or config.hidden_size
    return out


# ------------------------------------------------------------------------------------------------ keys
def _rename(key: str, pairs) -> Optional[str]:
    for old, new in pairs:
        if key.startswith(old):
            return None if new is None else new + key[len(old):]
    return key


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
    pairs = tuple((new, old) for old, new in family.renames if new is not None) + ((base, "bert."),)
    return {_rename(k, pairs): v for k, v in state.items()}


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
    pairs = family.renames + (("bert.", f"{family.prefix}."),)
    out = {}
    for key, value in state.items():
        new = _rename(key, pairs)
        if new is not None:
            out[new[len(family.prefix) + 1:] if is_base and new.startswith(f"{family.prefix}.") else new] = value
    return out
