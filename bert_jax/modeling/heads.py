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
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling import losses
from bert_jax.modeling.common import ACT_FNS, dense, layer_norm, zeros_init
from bert_jax.modeling.encoder import first_tokens
from bert_jax.modeling.model import BertModel
from bert_jax.modeling.outputs import (BertForPreTrainingOutput, CausalLMOutputWithCrossAttentions, MaskedLMOutput,
                                       MultipleChoiceModelOutput, NextSentencePredictorOutput,
                                       QuestionAnsweringModelOutput, SequenceClassifierOutput, TokenClassifierOutput)

Array = jax.Array


class BertPredictionHeadTransform(nn.Module):
    """norm(act(dense(h))): [..., H] -> [..., E] (E = embedding_size, the word-embedding width the tied
    decoder projects from; hidden_size by default). act is `mlm_head_act` (RoBERTa and ELECTRA fix it
    to GELU) or `hidden_act`."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        cfg = self.config
        act = ACT_FNS[cfg.mlm_head_act or cfg.hidden_act]
        hidden = act(dense(cfg, cfg.embedding_size or cfg.hidden_size, ("embed", None), "dense",
                           use_bias=cfg.mlm_head_bias)(hidden))
        return layer_norm(cfg)(hidden)


class BertLMPredictionHead(nn.Module):
    """transform -> decoder (tied to the word embeddings unless `tie_word_embeddings=False`) + bias
    (left out with `decoder_bias=False`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Optional[Array]) -> Array:
        """hidden [B, L, H] -> logits [B, L, V]; `word_embeddings` [V, E] when tied."""
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
        if cfg.decoder_bias:
            bias = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
            logits = logits + bias.astype(logits.dtype)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


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
    """[B, L, H] -> [B, P, H] at `masked_positions` [B, P] (google-research's gather_indexes).

    Positions outside [0, L) (invalid; eagerly applied models raise before this) are clamped, so they
    gather a real row instead of NaN or a wrapped index; `_mask_invalid_positions` drops their labels."""
    if masked_positions is None:
        return hidden
    positions = jnp.clip(masked_positions.astype(jnp.int32), 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, positions[..., None], axis=1)


def _mask_invalid_positions(labels: Optional[Array], masked_positions: Optional[Array], seq: int) -> Optional[Array]:
    """`labels` [B, P] with IGNORE_INDEX where `masked_positions` [B, P] is outside [0, seq)."""
    if labels is None or masked_positions is None:
        return labels
    if tuple(labels.shape) != tuple(masked_positions.shape):
        raise ValueError(f"labels has shape {tuple(labels.shape)}; with masked_positions "
                         f"{tuple(masked_positions.shape)} the labels are the ids at those positions, of the same shape")
    valid = (masked_positions >= 0) & (masked_positions < seq)
    return jnp.where(valid, labels, losses.IGNORE_INDEX).astype(labels.dtype)


def _input_shape(input_ids, inputs_embeds):
    """Shape of the tokens: input_ids' ([B, L] or [B, C, L]), or inputs_embeds' without the hidden axis."""
    if input_ids is not None:
        return tuple(input_ids.shape)
    return None if inputs_embeds is None else tuple(inputs_embeds.shape[:-1])


def _classifier(config: BertConfig, num_outputs: int, name: str = "classifier") -> nn.DenseGeneral:
    return dense(config, num_outputs, ("embed", None), name)


def _classifier_dropout(config: BertConfig) -> Dropout:
    rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return Dropout(rate)


class ClassificationHead(nn.Module):
    """RoBERTa's and ELECTRA's sequence-classification head (`config.classifier_head` "roberta" /
    "electra"), on the first token rather than BERT's pooler: dropout -> dense [H -> H] -> tanh
    (RoBERTa) or exact GELU (ELECTRA) -> dropout -> out_proj [H -> num_labels]. Its params are
    transformers' `classifier.dense` / `classifier.out_proj`."""

    config: BertConfig

    @nn.compact
    def __call__(self, first: Array, deterministic: bool) -> Array:
        """first [..., H] (the first token of each row or packed sequence) -> logits [..., num_labels]."""
        cfg = self.config
        act = ACT_FNS["tanh" if cfg.classifier_head == "roberta" else "gelu"]
        drop = _classifier_dropout(cfg)
        hidden = drop(first, deterministic=deterministic)
        hidden = act(dense(cfg, cfg.hidden_size, ("embed", None), "dense")(hidden))
        hidden = drop(hidden, deterministic=deterministic)
        return dense(cfg, cfg.num_labels, ("embed", None), "out_proj")(hidden)


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
        losses.validate_targets(self.config, "pretraining", dict(
            labels=labels, next_sentence_label=next_sentence_label, masked_positions=masked_positions,
            cls_positions=cls_positions), _input_shape(input_ids, inputs_embeds))
        bert, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                                deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids, cls_positions=cls_positions)
        hidden = _gather_positions(out.last_hidden_state, masked_positions)
        logits, nsp_logits = BertPreTrainingHeads(self.config, name="cls")(hidden, out.pooler_output,
                                                                          _word_embeddings(bert))
        loss = None
        if labels is not None and next_sentence_label is not None:
            labels = _mask_invalid_positions(labels, masked_positions, out.last_hidden_state.shape[1])
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
        losses.validate_targets(self.config, "masked_lm", dict(labels=labels, masked_positions=masked_positions),
                                _input_shape(input_ids, inputs_embeds))
        bert, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                                deterministic, output_attentions, output_hidden_states,
                                sequence_ids=sequence_ids)
        hidden = _gather_positions(out.last_hidden_state, masked_positions)
        logits = BertOnlyMLMHead(self.config, name="cls")(hidden, _word_embeddings(bert))
        labels = _mask_invalid_positions(labels, masked_positions, out.last_hidden_state.shape[1])
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
        losses.validate_targets(self.config, "causal_lm", dict(labels=labels), _input_shape(input_ids, inputs_embeds))
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
        losses.validate_targets(self.config, "next_sentence", dict(labels=labels, cls_positions=cls_positions),
                                _input_shape(input_ids, inputs_embeds))
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states,
                             sequence_ids=sequence_ids, cls_positions=cls_positions)
        logits = BertOnlyNSPHead(self.config, name="cls")(out.pooler_output)
        loss = None if labels is None else losses.next_sentence_loss(logits, labels)
        return NextSentencePredictorOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                           attentions=out.attentions)


class BertForSequenceClassification(_BertTaskModel):
    """Pooled output -> dropout -> classifier [B, num_labels]; loss by `config.problem_type`. With
    `config.classifier_head` "roberta" / "electra" there is no pooler: the first token goes through
    `ClassificationHead` (transformers' RobertaClassificationHead / ElectraClassificationHead)."""

    @property
    def add_pooling_layer(self) -> bool:
        return self.config.classifier_head == "pooler"

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 head_mask=None, inputs_embeds=None, labels=None, sequence_ids=None, cls_positions=None, *,
                 deterministic=True, output_attentions=False, output_hidden_states=False):
        cfg = self.config
        losses.validate_targets(cfg, "sequence_classification", dict(labels=labels, cls_positions=cls_positions),
                                _input_shape(input_ids, inputs_embeds))
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                             deterministic, output_attentions, output_hidden_states,
                             sequence_ids=sequence_ids, cls_positions=cls_positions)
        if cfg.classifier_head == "pooler":
            pooled = _classifier_dropout(cfg)(out.pooler_output, deterministic=deterministic)
            logits = _classifier(cfg, cfg.num_labels)(pooled)
        else:
            logits = ClassificationHead(cfg, name="classifier")(first_tokens(out.last_hidden_state, cls_positions),
                                                                deterministic)
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
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("BertForMultipleChoice: pass exactly one of input_ids [batch, num_choices, seq] or "
                             "inputs_embeds [batch, num_choices, seq, hidden]")
        if input_ids is not None and input_ids.ndim != 3:
            raise ValueError(f"BertForMultipleChoice: input_ids must be [batch, num_choices, seq], got shape "
                             f"{tuple(input_ids.shape)}")
        if inputs_embeds is not None and inputs_embeds.ndim != 4:
            raise ValueError(f"BertForMultipleChoice: inputs_embeds must be [batch, num_choices, seq, hidden], got "
                             f"shape {tuple(inputs_embeds.shape)}")
        batch, choices, seq = _input_shape(input_ids, inputs_embeds)
        if seq == 0:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"BertForMultipleChoice: {name} has sequence length 0; every choice needs at least one "
                             f"token ([CLS])")
        allowed = {"attention_mask": ((batch, choices, seq), (batch, choices, seq, seq)),
                   "token_type_ids": ((batch, choices, seq),), "position_ids": ((batch, choices, seq), (1, seq))}
        for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("position_ids", position_ids)):
            if x is not None and tuple(x.shape) not in allowed[name]:
                raise ValueError(f"BertForMultipleChoice: {name} has shape {tuple(x.shape)}; expected "
                                 f"{' or '.join(str(list(a)) for a in allowed[name])} ([batch, num_choices, seq])")
        if labels is not None and tuple(labels.shape) != (batch,):
            raise ValueError(f"BertForMultipleChoice: labels has shape {tuple(labels.shape)}; expected [batch={batch}] "
                             f"(the index of the right choice)")
        losses.validate_targets(cfg, "multiple_choice", dict(labels=labels), (batch, choices, seq))
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
        losses.validate_targets(cfg, "token_classification", dict(labels=labels),
                                _input_shape(input_ids, inputs_embeds))
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
        """Start/end positions outside [0, L] are clamped to L and ignored, negative ones to 0, as
        transformers does (see `losses.question_answering_loss`)."""
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
