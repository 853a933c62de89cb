"""Replaced-token detection (ELECTRA's discriminator): a per-token binary head on the encoder.

Param names follow transformers' `ElectraForPreTraining` (`discriminator_predictions/dense`,
`discriminator_predictions/dense_prediction`) so ELECTRA checkpoints map by name (see
`bert_jax.architectures`).
"""

from typing import Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.modeling.common import ACT_FNS, dense
from bert_jax.modeling.heads import _BertTaskModel, _input_shape

Array = jax.Array


@flax.struct.dataclass
class ReplacedTokenDetectionOutput:
    """`logits` [B, L]: > 0 means "this token was replaced"."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


def replaced_token_detection_loss(logits: Array, labels: Array, attention_mask: Optional[Array] = None) -> Array:
    """Mean binary cross-entropy with logits over the tokens (those with attention_mask == 1 when a
    [B, L] mask is given, as transformers' ElectraForPreTraining): logits, labels (0 original,
    1 replaced) [B, L] -> scalar."""
    x, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
    # max(x, 0) - x y + log(1 + exp(-|x|)): BCE(sigmoid(x), y) without overflow.
    per_token = jnp.maximum(x, 0.0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    if attention_mask is None or attention_mask.ndim != 2:
        return jnp.mean(per_token)
    active = (attention_mask == 1).astype(jnp.float32)
    return jnp.sum(per_token * active) / jnp.maximum(jnp.sum(active), 1.0)


class ElectraDiscriminatorPredictions(nn.Module):
    """dense_prediction(act(dense(h))): [B, L, H] -> [B, L] (act = hidden_act)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        cfg = self.config
        hidden = ACT_FNS[cfg.hidden_act](dense(cfg, cfg.hidden_size, ("embed", None), "dense")(hidden))
        return dense(cfg, 1, ("embed", None), "dense_prediction")(hidden)[..., 0]


class BertForReplacedTokenDetection(_BertTaskModel):
    """The encoder with ELECTRA's discriminator head (transformers' `ElectraForPreTraining`): per-token
    logits [B, L]; `labels` [B, L] (1 = replaced) give the loss."""

    add_pooling_layer = False

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, sequence_ids=None, *,
                 deterministic=True, output_attentions=False, output_hidden_states=False):
        shape = _input_shape(input_ids, inputs_embeds)
        if labels is not None and shape is not None and tuple(labels.shape) != tuple(shape):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {tuple(shape)} (1 = replaced token)")
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states, sequence_ids=sequence_ids)
        logits = ElectraDiscriminatorPredictions(self.config, name="discriminator_predictions")(out.last_hidden_state)
        mask = attention_mask if sequence_ids is None else (sequence_ids != 0)
        loss = None if labels is None else replaced_token_detection_loss(logits, labels, mask)
        return ReplacedTokenDetectionOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                            attentions=out.attentions)
