"""Losses as pure functions, matching PyTorch's (and so transformers') definitions exactly on valid
targets, and the checks that keep invalid targets from turning into NaN or a silently wrong loss.

All reductions are computed in float32 whatever the logits' dtype. Where PyTorch would divide by
zero (every label ignored) these return 0 instead of NaN, so a batch with no targets cannot poison a
training run.

Invalid targets (a class id outside [0, num_classes) other than the ignore index -100, a non-finite
regression target, a multi-label target outside [0, 1]) are where PyTorch raises (or, on GPU, asserts
or returns NaN). Here they are handled in three places:
  * eagerly applied models raise ValueError naming the argument (`validate_targets`, called by every
    head), as `BertModel` does for out-of-range token ids;
  * under `jax.jit` values cannot raise, so every loss leaves invalid entries out, exactly like ignored
    ones: the loss stays finite and is the loss of the valid entries;
  * `invalid_counts(batch, config, head)` counts invalid ids, labels and positions per batch with cheap
    integer reductions (jit-safe) so a training loop can stop and say which field, at which step, how many.
Question-answering start/end positions are not "invalid" out of range: as in transformers, they are
clamped to [0, L] and L is ignored (an answer truncated out of the window does not count).
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX,
                  weights: Optional[jax.Array] = None) -> jax.Array:
    """Mean cross entropy over the positions whose label is not `ignore_index`.

    Args:
      logits: [..., C] unnormalised scores.
      labels: [...] integer classes; `ignore_index` marks positions left out, and so do ids outside
        [0, C) (invalid: see the module docstring).
      weights: optional [...] per-position weights (google-research's `masked_lm_weights`); the
        result is then sum(w * nll) / sum(w) over non-ignored positions.
    Returns:
      scalar float32 loss.
    """
    logits = logits.astype(jnp.float32)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {tuple(logits.shape[:-1])}, the shape of "
                         f"the logits {tuple(logits.shape)} without the class axis")
    if weights is not None and tuple(weights.shape) != tuple(labels.shape):
        raise ValueError(f"masked_lm_weights has shape {tuple(weights.shape)}; expected that of the labels "
                         f"{tuple(labels.shape)}")
    # Out-of-range ids are left out like ignored ones (they would index past the classes: NaN, or wrap).
    valid = (labels != ignore_index) & (labels >= 0) & (labels < logits.shape[-1])
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
    (multi-label). `problem_type` None is inferred as transformers does. Invalid targets (class ids
    outside [0, C) other than -100, non-finite regression targets, multi-label targets that are not
    finite numbers in [0, 1]) are left out of the mean."""
    num_labels = logits.shape[-1]
    problem_type = problem_type or infer_problem_type(num_labels, labels)
    logits = logits.astype(jnp.float32)
    if problem_type == "regression":
        if labels.size != logits.size:
            raise ValueError(f"labels has shape {tuple(labels.shape)}; regression needs one target per logit, "
                             f"logits {tuple(logits.shape)}")
        if num_labels == 1:
            logits, labels = jnp.squeeze(logits), jnp.squeeze(labels)
        labels = labels.astype(jnp.float32)
        valid = jnp.isfinite(labels)
        error = jnp.where(valid, (logits - jnp.where(valid, labels, 0.0)) ** 2, 0.0)
        return _masked_mean(error, jnp.broadcast_to(valid, error.shape))
    if problem_type == "single_label_classification":
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"labels must be integer class ids for single_label_classification, got dtype "
                            f"{labels.dtype}")
        if labels.size * num_labels != logits.size:
            raise ValueError(f"labels has shape {tuple(labels.shape)}: one class id per row of logits "
                             f"{tuple(logits.shape)} expected")
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    if problem_type == "multi_label_classification":
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; multi_label_classification needs one 0/1 "
                             f"target per class, the shape of logits {tuple(logits.shape)}")
        labels = labels.astype(jnp.float32)
        valid = jnp.isfinite(labels) & (labels >= 0) & (labels <= 1)
        labels = jnp.where(valid, labels, 0.0)
        # BCEWithLogits in its numerically stable form.
        loss = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        return _masked_mean(loss, valid)
    raise ValueError(f"unknown problem_type {problem_type!r}")


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of `values` where `valid` (the plain mean when all are valid; 0 when none is)."""
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def question_answering_loss(start_logits: jax.Array, end_logits: jax.Array, start_positions: jax.Array,
                            end_positions: jax.Array) -> jax.Array:
    """Mean of start and end cross entropies. `*_logits` [B, L]; positions [B]. As transformers does,
    positions are clamped to [0, L] and L is ignored: a position past the window (an answer truncated
    away) does not count, and a negative one counts as position 0 ([CLS], "no answer"). They are never
    invalid data (not validated, not counted by `invalid_counts`)."""
    seq_len = start_logits.shape[-1]
    for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)):
        if positions.size != start_logits.size // seq_len:
            raise ValueError(f"{name} has shape {tuple(positions.shape)}; expected one position per row "
                             f"({start_logits.size // seq_len})")
        if not jnp.issubdtype(positions.dtype, jnp.integer):
            raise TypeError(f"{name} must be integers, got dtype {positions.dtype}")
    start = jnp.clip(start_positions.reshape(-1), 0, seq_len)
    end = jnp.clip(end_positions.reshape(-1), 0, seq_len)
    return (cross_entropy(start_logits, start, ignore_index=seq_len)
            + cross_entropy(end_logits, end, ignore_index=seq_len)) / 2


# ------------------------------------------------------------------------------------------------
# Invalid targets: counted under jit, raised eagerly
HEADS = ("pretraining", "masked_lm", "causal_lm", "next_sentence", "sequence_classification", "multiple_choice",
         "token_classification", "question_answering")
_HEAD_OF_CLASS = {"BertForPreTraining": "pretraining", "BertForMaskedLM": "masked_lm",
                  "BertForCausalLM": "causal_lm", "BertLMHeadModel": "causal_lm",
                  "BertForNextSentencePrediction": "next_sentence",
                  "BertForSequenceClassification": "sequence_classification",
                  "BertForMultipleChoice": "multiple_choice", "BertForTokenClassification": "token_classification",
                  "BertForQuestionAnswering": "question_answering"}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """What a valid value of one batch field is: an integer in [low, high) (or `ignore`), or a finite
    float (in [0, 1] when `unit`)."""

    field: str
    low: int = 0
    high: int = 0
    what: str = ""  # what `high` is, for the message: "vocab_size=30522"
    ignore: Optional[int] = None
    floats: bool = False
    unit: bool = False

    def invalid(self, x, xp) -> Any:
        """Boolean mask of the invalid entries of `x` (numpy or jax.numpy as `xp`)."""
        if self.floats:
            bad = ~xp.isfinite(x)
            return bad | (x < 0) | (x > 1) if self.unit else bad
        bad = (x < self.low) | (x >= self.high)
        return bad & (x != self.ignore) if self.ignore is not None else bad

    def describe(self) -> str:
        if self.floats:
            return "must be finite numbers in [0, 1]" if self.unit else "must be finite numbers"
        ignored = f" or {self.ignore} (ignored)" if self.ignore is not None else ""
        return f"must be in [{self.low}, {self.high}) ({self.what}){ignored}"


def head_kind(head) -> str:
    """One of `HEADS` from a head name, a model class or instance ("BertForMaskedLM" -> "masked_lm")."""
    if isinstance(head, str):
        kind = _HEAD_OF_CLASS.get(head, head)
    else:
        cls = head if isinstance(head, type) else type(head)
        kind = next((_HEAD_OF_CLASS[c.__name__] for c in cls.__mro__ if c.__name__ in _HEAD_OF_CLASS), None)
    if kind not in HEADS:
        raise ValueError(f"head must be one of {HEADS} or a bert_jax task model, got {head!r}")
    return kind


def _input_shape(batch: Mapping[str, Any]):
    if batch.get("input_ids") is not None:
        return tuple(batch["input_ids"].shape)
    if batch.get("inputs_embeds") is not None:
        return tuple(batch["inputs_embeds"].shape[:-1])
    return None


def _rules(batch: Mapping[str, Any], config, kind: str, input_shape=None) -> list:
    """The rules for the fields of `batch` that `kind`'s model reads, for `config`."""
    shape = input_shape if input_shape is not None else _input_shape(batch)
    seq = shape[-1] if shape else None
    rules = [_Rule("input_ids", 0, config.vocab_size, f"vocab_size={config.vocab_size}"),
             # type_vocab_size=0 (no token types): all-zero types are what a generic pipeline passes.
             _Rule("token_type_ids", 0, max(config.type_vocab_size, 1), f"type_vocab_size={config.type_vocab_size}"),
             _Rule("position_ids", 0, config.max_position_embeddings,
                   f"max_position_embeddings={config.max_position_embeddings}")]
    if seq is not None:
        if kind in ("pretraining", "masked_lm"):
            rules.append(_Rule("masked_positions", 0, seq, f"the sequence length {seq}"))
        if kind in ("pretraining", "next_sentence", "sequence_classification"):
            rules.append(_Rule("cls_positions", 0, seq, f"the sequence length {seq}"))
    vocab = f"vocab_size={config.vocab_size}"
    if kind in ("pretraining", "masked_lm", "causal_lm"):
        rules.append(_Rule("labels", 0, config.vocab_size, vocab, IGNORE_INDEX))
    if kind in ("pretraining", "next_sentence"):
        field = "next_sentence_label" if kind == "pretraining" else "labels"
        rules.append(_Rule(field, 0, 2, "0 = is next, 1 = random", IGNORE_INDEX))
    if kind == "token_classification":
        rules.append(_Rule("labels", 0, config.num_labels, f"num_labels={config.num_labels}", IGNORE_INDEX))
    if kind == "multiple_choice" and shape is not None and len(shape) >= 2:
        rules.append(_Rule("labels", 0, shape[1], f"num_choices={shape[1]}", IGNORE_INDEX))
    if kind == "sequence_classification" and batch.get("labels") is not None:
        problem = config.problem_type or infer_problem_type(config.num_labels, batch["labels"])
        if problem == "single_label_classification":
            rules.append(_Rule("labels", 0, config.num_labels, f"num_labels={config.num_labels}", IGNORE_INDEX))
        else:
            rules.append(_Rule("labels", floats=True, unit=problem == "multi_label_classification"))
    return [r for r in rules if batch.get(r.field) is not None]


def invalid_counts(batch: Mapping[str, Any], config, head) -> Dict[str, jax.Array]:
    """Number of invalid entries of each checked field of `batch`: {field: int32 scalar}.

    Pure and jit-safe (integer reductions only), for a training loop to call inside its step and stop
    on a non-zero count naming the field and the step. `batch` holds the model's keyword arguments
    (input_ids [B, L] or [B, C, L] for multiple choice, labels, masked_positions [B, P], ...); `head`
    is one of `HEADS` or the model (class or instance). Checked: input_ids, token_type_ids,
    position_ids (the embedding gathers clamp them silently under jit), masked_positions and
    cls_positions (in [0, L)), labels / next_sentence_label by head (class ids in range or -100;
    regression targets finite; multi-label targets in [0, 1]). Fields absent from `batch` are absent
    from the result. QA start/end positions are clamped as transformers does, never counted.
    """
    counts = {}
    for rule in _rules(batch, config, head_kind(head)):
        x = jnp.asarray(batch[rule.field])
        if not rule.floats and not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{rule.field} must be integers, got dtype {x.dtype}")
        counts[rule.field] = jnp.sum(rule.invalid(x, jnp), dtype=jnp.int32)
    return counts


def requirements(batch: Mapping[str, Any], config, head) -> Dict[str, str]:
    """{field: what a valid value is} for the fields `invalid_counts` checks in `batch` (arrays or
    `jax.ShapeDtypeStruct`s: only shapes and dtypes are read), for error messages."""
    return {rule.field: rule.describe() for rule in _rules(batch, config, head_kind(head))}


def validate_targets(config, head, targets: Mapping[str, Any], input_shape) -> None:
    """Raises ValueError naming the first target field (labels, masked_positions, ...) holding an
    invalid value, with the value, how many are invalid and the valid range. Concrete arrays only:
    under `jit` (tracers) it checks nothing; the losses then leave invalid entries out and
    `invalid_counts` reports them. `input_shape` is that of input_ids ([B, L] or [B, C, L])."""
    from bert_jax.modeling.inputs import is_concrete
    for rule in _rules(targets, config, head_kind(head), input_shape):
        x = targets[rule.field]
        if not rule.floats and not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{rule.field} must be integers, got dtype {x.dtype}")
        if not is_concrete(x):
            continue
        x = np.asarray(x)
        bad = rule.invalid(x, np)
        if bad.any():
            raise ValueError(f"{rule.field} contains {x[bad].flat[0].item()!r} ({int(bad.sum())} of {x.size} entries "
                             f"invalid); {rule.field} {rule.describe()}")
