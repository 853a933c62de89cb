"""Losses as pure functions, matching PyTorch's (and so transformers') definitions exactly.

All reductions are computed in float32 whatever the logits' dtype. Where PyTorch would divide by
zero (every label ignored) these return 0 instead of NaN, so a batch with no targets cannot poison a
training run; that is the one deliberate difference.
"""

from typing import Optional

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                  weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean cross entropy over the positions whose label is not `ignore_index`.

    Args:
      logits: [..., C] unnormalised scores.
      labels: [...] integer classes; `ignore_index` marks positions left out.
      weights: optional [...] per-position weights (google-research's `masked_lm_weights`); the
        result is then sum(w * nll) / sum(w) over non-ignored positions.
    Returns:
      scalar float32 loss.
    """
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = valid.astype(jnp.float32)
    if weights is not None:
        w = w * weights.astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1e-12 if weights is not None else 1.0)


def masked_lm_loss(logits: jax.Array, labels: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """MLM loss. `logits` [B, L, V] with `labels` [B, L] (-100 = not predicted), or the sparse
    form: `logits` [B, P, V] with `labels` = masked_lm_ids [B, P] and optional `weights` [B, P]."""
    return cross_entropy(logits, labels, weights=weights)


def token_classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """`logits` [B, L, C], `labels` [B, L] with -100 on positions not scored (sub-words, padding)."""
    return cross_entropy(logits, labels)


def next_sentence_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """`logits` [B, 2], `labels` [B] (0 = B continues A, 1 = random)."""
    return cross_entropy(logits, labels)


def pretraining_loss(prediction_logits: jax.Array, labels: jax.Array, seq_relationship_logits: jax.Array,
                     next_sentence_label: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """MLM + NSP, as `BertForPreTraining` sums them."""
    return masked_lm_loss(prediction_logits, labels, weights) + next_sentence_loss(seq_relationship_logits,
                                                                                  next_sentence_label)


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Next-token loss: position t predicts labels[t + 1]. `logits` [B, L, V], `labels` [B, L]."""
    return cross_entropy(logits[:, :-1], labels[:, 1:])


def multiple_choice_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """`logits` [B, num_choices], `labels` [B]."""
    return cross_entropy(logits, labels)


def infer_problem_type(num_labels: int, labels: jax.Array) -> str:
    """HF's rule: one label is regression; integer labels are single-label; else multi-label."""
    if num_labels == 1:
        return "regression"
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(logits: jax.Array, labels: jax.Array, problem_type: Optional[str] = None) -> jax.Array:
    """`logits` [B, C]. `labels`: [B] floats (regression), [B] ints (single label) or [B, C] 0/1
    (multi-label). `problem_type` None is inferred as transformers does."""
    num_labels = logits.shape[-1]
    problem_type = problem_type or infer_problem_type(num_labels, labels)
    logits = logits.astype(jnp.float32)
    if problem_type == "regression":
        if num_labels == 1:
            logits, labels = jnp.squeeze(logits), jnp.squeeze(labels)
        return jnp.mean((logits - labels.astype(jnp.float32)) ** 2)
    if problem_type == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    if problem_type == "multi_label_classification":
        labels = labels.astype(jnp.float32)
        # BCEWithLogits in its numerically stable form.
        loss = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        return jnp.mean(loss)
    raise ValueError(f"unknown problem_type {problem_type!r}")


def question_answering_loss(start_logits: jax.Array, end_logits: jax.Array, start_positions: jax.Array,
                            end_positions: jax.Array) -> jax.Array:
    """Mean of start and end cross entropies. `*_logits` [B, L]; positions [B]. Positions outside
    the sequence are clamped to L and then ignored, as transformers does."""
    seq_len = start_logits.shape[-1]
    start = jnp.clip(start_positions.reshape(-1), 0, seq_len)
    end = jnp.clip(end_positions.reshape(-1), 0, seq_len)
    return (cross_entropy(start_logits, start, ignore_index=seq_len)
            + cross_entropy(end_logits, end, ignore_index=seq_len)) / 2
