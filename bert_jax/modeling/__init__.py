"""BERT modules, heads, losses and the helpers that initialise them."""

from typing import Optional, Tuple, Type, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.modeling import losses
from bert_jax.modeling.heads import (BertForCausalLM, BertForMaskedLM, BertForMultipleChoice,
                                     BertForNextSentencePrediction, BertForPreTraining, BertForQuestionAnswering,
                                     BertForSequenceClassification, BertForTokenClassification)
from bert_jax.modeling.model import BertModel
from bert_jax.modeling.rtd import BertForReplacedTokenDetection

# transformers' PyTorch class name for each of ours (checkpoint `architectures` field).
MODEL_CLASSES = {
    "BertModel": BertModel,
    "BertForPreTraining": BertForPreTraining,
    "BertForMaskedLM": BertForMaskedLM,
    "BertLMHeadModel": BertForCausalLM,
    "BertForNextSentencePrediction": BertForNextSentencePrediction,
    "BertForSequenceClassification": BertForSequenceClassification,
    "BertForMultipleChoice": BertForMultipleChoice,
    "BertForTokenClassification": BertForTokenClassification,
    "BertForQuestionAnswering": BertForQuestionAnswering,
}
# Classes with no BERT counterpart in transformers (written as other architectures, see bert_jax.architectures).
EXTRA_CLASSES = {"BertForReplacedTokenDetection": BertForReplacedTokenDetection}


def build_model(model_class: Union[str, Type[nn.Module]], config: BertConfig, **kwargs) -> nn.Module:
    """`model_class` is one of our classes or a name (ours or transformers', e.g. 'BertLMHeadModel')."""
    if isinstance(model_class, str):
        by_name = {**MODEL_CLASSES, **{cls.__name__: cls for cls in MODEL_CLASSES.values()}, **EXTRA_CLASSES}
        if model_class not in by_name:
            raise ValueError(f"unknown model class {model_class!r}; choose from {sorted(by_name)}")
        model_class = by_name[model_class]
    return model_class(config, **kwargs)


def dummy_inputs(model: nn.Module, batch: int = 1, seq: int = 8) -> dict:
    """Smallest inputs that create every parameter of `model` (cross-attention included)."""
    cfg = model.config
    shape = (batch, 2, seq) if isinstance(model, BertForMultipleChoice) else (batch, seq)
    inputs = {"input_ids": jnp.zeros(shape, jnp.int32)}
    if cfg.add_cross_attention:
        inputs["encoder_hidden_states"] = jnp.zeros((batch, seq, cfg.hidden_size), jnp.dtype(cfg.dtype))
    return inputs


def init_params(model: nn.Module, rng: Optional[jax.Array] = None, *, boxed: bool = False):
    """Randomly initialised params of `model` (jitted; transformers' init scheme).

    With `boxed=True` the leaves stay wrapped in `nn.LogicallyPartitioned` (for sharding rules)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    params = jax.jit(lambda r: model.init(r, **dummy_inputs(model))["params"])(rng)
    return params if boxed else nn.meta.unbox(params)


def init_cache(model: nn.Module, params, batch_size: int, max_length: int,
               encoder_hidden_states: Optional[jax.Array] = None):
    """Zero KV cache for incremental decoding of up to `max_length` tokens, to pass as
    `{"params": params, "cache": cache}` with `mutable=["cache"]`."""
    if not model.config.is_decoder:
        raise ValueError("init_cache needs a decoder model (config.is_decoder=True)")
    kwargs = {}
    if encoder_hidden_states is not None:
        kwargs["encoder_hidden_states"] = encoder_hidden_states
    _, variables = model.apply({"params": params}, jnp.zeros((batch_size, max_length), jnp.int32),
                               init_cache=True, mutable=["cache"], **kwargs)
    return variables["cache"]


__all__ = ["BertConfig", "BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForCausalLM",
           "BertForNextSentencePrediction", "BertForSequenceClassification", "BertForMultipleChoice",
           "BertForTokenClassification", "BertForQuestionAnswering", "BertForReplacedTokenDetection", "MODEL_CLASSES",
           "EXTRA_CLASSES", "build_model", "init_params",
           "init_cache", "losses"]
