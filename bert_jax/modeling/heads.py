"""BERT with task heads: pretraining (MLM + NSP), masked LM, causal LM, NSP, sequence
classification, multiple choice, token classification, question answering.

Each model holds the encoder under `bert` and its head under the transformers name (`cls`,
`classifier`, `qa_outputs`), takes the encoder's inputs plus optional labels, and returns an
output dataclass whose `loss` is filled when labels are given (see `losses.py`).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.modeling import losses
from bert_jax.modeling.common import ACT_FNS, dense, layer_norm, zeros_init
from bert_jax.modeling.model import BertModel
from bert_jax.modeling.outputs import (BertForPreTrainingOutput, CausalLMOutputWithCrossAttentions, MaskedLMOutput,
                                       MultipleChoiceModelOutput, NextSentencePredictorOutput,
                                       QuestionAnsweringModelOutput, SequenceClassifierOutput, TokenClassifierOutput)

Array = jax.Array


class BertPredictionHeadTransform(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        cfg = self.config
        hidden = ACT_FNS[cfg.hidden_act](dense(cfg, cfg.hidden_size, ("embed", None), "dense")(hidden))
        return layer_norm(cfg)(hidden)


class BertLMPredictionHead(nn.Module):
    """transform -> decoder (tied to the word embeddings unless `tie_word_embeddings=False`) + bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Optional[Array]) -> Array:
        """hidden [B, L, H] -> logits [B, L, V]; `word_embeddings` [V, H] when tied."""
        cfg = self.config
        hidden = BertPredictionHeadTransform(cfg, name="transform")(hidden)
        if cfg.tie_word_embeddings:
            logits = jnp.einsum("...h,vh->...v", hidden, word_embeddings.astype(hidden.dtype))
        else:
            logits = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                                     param_dtype=jnp.dtype(cfg.param_dtype),
                                     kernel_init=nn.with_logical_partitioning(
                                         nn.initializers.normal(cfg.initializer_range), ("embed", "vocab")),
                                     name="decoder")(hidden)
        bias = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
        return nn.with_logical_constraint(logits + bias.astype(logits.dtype), ("batch", "length", "vocab"))


class BertOnlyMLMHead(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, word_embeddings):
        return BertLMPredictionHead(self.config, name="predictions")(hidden, word_embeddings)


class BertOnlyNSPHead(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, pooled):
        return dense(self.config, 2, ("embed", None), "seq_relationship")(pooled)


class BertPreTrainingHeads(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, pooled, word_embeddings):
        logits = BertLMPredictionHead(self.config, name="predictions")(hidden, word_embeddings)
        return logits, dense(self.config, 2, ("embed", None), "seq_relationship")(pooled)


def _word_embeddings(bert: BertModel) -> Array:
    """The encoder's word-embedding table [V, H] (unboxed during init)."""
    return nn.meta.unbox(bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


def _gather_positions(hidden: Array, masked_positions: Optional[Array]) -> Array:
    """[B, L, H] -> [B, P, H] at `masked_positions` [B, P] (google-research's gather_indexes)."""
    if masked_positions is None:
        return hidden
    return jnp.take_along_axis(hidden, masked_positions[..., None].astype(jnp.int32), axis=1)


def _classifier(config: BertConfig, num_outputs: int, name: str = "classifier") -> nn.DenseGeneral:
    return dense(config, num_outputs, ("embed", None), name)


def _classifier_dropout(config: BertConfig) -> nn.Dropout:
    rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(rate)


class _BertTaskModel(nn.Module):
    """A task model: `bert` encoder + a head; subclasses set whether the pooler exists."""

    config: BertConfig
    add_pooling_layer = True  # class constant, not a field

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
               deterministic, output_attentions, output_hidden_states, **extra):
        """Runs the `bert` submodule; called from the subclass's compact `__call__`."""
        return _encode(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                       deterministic, output_attentions, output_hidden_states, **extra)


def _encode(model, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            deterministic, output_attentions, output_hidden_states, **extra):
    bert = BertModel(model.config, add_pooling_layer=model.add_pooling_layer, name="bert")
    out = bert(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
               deterministic=deterministic, output_attentions=output_attentions,
               output_hidden_states=output_hidden_states, **extra)
    return bert, out


class BertForPreTraining(_BertTaskModel):
    """MLM + NSP. With `masked_positions` [B, P] only those positions are projected onto the
    vocabulary (`prediction_logits` [B, P, V]); labels are then [B, P] (masked_lm_ids).

    Packed rows: `sequence_ids` [B, L] and `cls_positions` [B, S] give one NSP prediction per packed
    sequence (`seq_relationship_logits` [B, S, 2], `next_sentence_label` [B, S] with -100 for
    empty slots); the same pair makes the classification heads per-sequence."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, masked_positions=None, labels=None, next_sentence_label=None,
                 masked_lm_weights=None, sequence_ids=None, cls_positions=None, *, deterministic=True,
                 output_attentions=False, output_hidden_states=False):
        bert, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                                deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids, cls_positions=cls_positions)
        hidden = _gather_positions(out.last_hidden_state, masked_positions)
        logits, nsp_logits = BertPreTrainingHeads(self.config, name="cls")(hidden, out.pooler_output,
                                                                          _word_embeddings(bert))
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = losses.pretraining_loss(logits, labels, nsp_logits, next_sentence_label, masked_lm_weights)
        return BertForPreTrainingOutput(loss=loss, prediction_logits=logits, seq_relationship_logits=nsp_logits,
                                        hidden_states=out.hidden_states, attentions=out.attentions)


class BertForMaskedLM(_BertTaskModel):
    """MLM head; `masked_positions` [B, P] gives the sparse form ([B, P, V] logits, [B, P] labels)."""

    add_pooling_layer = False

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, masked_positions=None, labels=None, masked_lm_weights=None,
                 sequence_ids=None, *, deterministic=True, output_attentions=False, output_hidden_states=False):
        bert, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                                deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids)
        hidden = _gather_positions(out.last_hidden_state, masked_positions)
        logits = BertOnlyMLMHead(self.config, name="cls")(hidden, _word_embeddings(bert))
        loss = None if labels is None else losses.masked_lm_loss(logits, labels, masked_lm_weights)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


class BertForCausalLM(_BertTaskModel):
    """Left-to-right LM (`config.is_decoder=True`), optionally with cross-attention; see
    `bert_jax.init_cache` and `bert_jax.generate` for incremental decoding."""

    add_pooling_layer = False

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 labels=None, *, deterministic=True, output_attentions=False, output_hidden_states=False,
                 init_cache=False):
        if not self.config.is_decoder:
            raise ValueError("BertForCausalLM needs a config with is_decoder=True")
        bert, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                                deterministic, output_attentions, output_hidden_states,
                                encoder_hidden_states=encoder_hidden_states,
                                encoder_attention_mask=encoder_attention_mask, init_cache=init_cache)
        logits = BertOnlyMLMHead(self.config, name="cls")(out.last_hidden_state, _word_embeddings(bert))
        loss = None if labels is None else losses.causal_lm_loss(logits, labels)
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                                 attentions=out.attentions, cross_attentions=out.cross_attentions)


class BertForNextSentencePrediction(_BertTaskModel):

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, sequence_ids=None, cls_positions=None, *,
                 deterministic=True, output_attentions=False, output_hidden_states=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids, cls_positions=cls_positions)
        logits = BertOnlyNSPHead(self.config, name="cls")(out.pooler_output)
        loss = None if labels is None else losses.next_sentence_loss(logits, labels)
        return NextSentencePredictorOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                           attentions=out.attentions)


class BertForSequenceClassification(_BertTaskModel):
    """Pooled output -> dropout -> classifier [B, num_labels]; loss by `config.problem_type`."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, sequence_ids=None, cls_positions=None, *,
                 deterministic=True, output_attentions=False, output_hidden_states=False):
        cfg = self.config
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids, cls_positions=cls_positions)
        pooled = _classifier_dropout(cfg)(out.pooler_output, deterministic=deterministic)
        logits = _classifier(cfg, cfg.num_labels)(pooled)
        loss = None if labels is None else losses.sequence_classification_loss(logits, labels, cfg.problem_type)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


class BertForMultipleChoice(_BertTaskModel):
    """Inputs [B, C, L] (embeds [B, C, L, H]) -> logits [B, C]."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, *, deterministic=True, output_attentions=False,
                 output_hidden_states=False):
        cfg = self.config
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None or ref.ndim < 3:
            raise ValueError("BertForMultipleChoice expects input_ids [batch, num_choices, seq] "
                             "or inputs_embeds [batch, num_choices, seq, hidden]")
        batch, choices = ref.shape[:2]
        flat = lambda x, keep: None if x is None else x.reshape((-1,) + x.shape[2:] if keep else (-1, x.shape[-1]))
        _, out = self.encode(flat(input_ids, False), flat(attention_mask, attention_mask is not None
                                                          and attention_mask.ndim == 4),
                             flat(token_type_ids, False), flat(position_ids, False), head_mask,
                             flat(inputs_embeds, True), deterministic, output_attentions, output_hidden_states)
        pooled = _classifier_dropout(cfg)(out.pooler_output, deterministic=deterministic)
        logits = _classifier(cfg, 1)(pooled).reshape(batch, choices)
        loss = None if labels is None else losses.multiple_choice_loss(logits, labels)
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                         attentions=out.attentions)


class BertForTokenClassification(_BertTaskModel):
    """Per-token logits [B, L, num_labels]."""

    add_pooling_layer = False

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, sequence_ids=None, *,
                 deterministic=True, output_attentions=False, output_hidden_states=False):
        cfg = self.config
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids)
        hidden = _classifier_dropout(cfg)(out.last_hidden_state, deterministic=deterministic)
        logits = _classifier(cfg, cfg.num_labels)(hidden)
        loss = None if labels is None else losses.token_classification_loss(logits, labels)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                     attentions=out.attentions)


class BertForQuestionAnswering(_BertTaskModel):
    """Span start/end logits [B, L] from `qa_outputs`."""

    add_pooling_layer = False

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, start_positions=None, end_positions=None,
                 sequence_ids=None, *, deterministic=True, output_attentions=False, output_hidden_states=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids)
        logits = _classifier(self.config, 2, "qa_outputs")(out.last_hidden_state)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = losses.question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=out.hidden_states, attentions=out.attentions)
