"""Model outputs: `flax.struct` dataclasses (pytrees) with Hugging Face's field names.

Shapes use B = batch, L = sequence length, H = hidden size, N = heads, K = key length,
P = number of predicted (masked) positions for the sparse MLM head.
"""

from typing import Optional, Tuple

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class BertModelOutput:
    """`last_hidden_state` [B, L, H]; `pooler_output` [B, H]; `hidden_states`: embeddings + one per
    layer, each [B, L, H]; `attentions` / `cross_attentions`: one per layer, [B, N, L, K]."""

    last_hidden_state: Array
    pooler_output: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None
    cross_attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class BertForPreTrainingOutput:
    """`prediction_logits` [B, L, V] (or [B, P, V] with `masked_positions`); `seq_relationship_logits` [B, 2]."""

    loss: Optional[Array] = None
    prediction_logits: Optional[Array] = None
    seq_relationship_logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class MaskedLMOutput:
    """`logits` [B, L, V] (or [B, P, V] with `masked_positions`)."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class CausalLMOutputWithCrossAttentions:
    """`logits` [B, L, V]."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None
    cross_attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class NextSentencePredictorOutput:
    """`logits` [B, 2] (index 0: B continues A; 1: B is random)."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class SequenceClassifierOutput:
    """`logits` [B, num_labels]."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class MultipleChoiceModelOutput:
    """`logits` [B, num_choices]; hidden states/attentions are over the flattened [B * num_choices] batch."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class TokenClassifierOutput:
    """`logits` [B, L, num_labels]."""

    loss: Optional[Array] = None
    logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class QuestionAnsweringModelOutput:
    """`start_logits` / `end_logits` [B, L]."""

    loss: Optional[Array] = None
    start_logits: Optional[Array] = None
    end_logits: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None
