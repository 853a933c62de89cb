"""Out-of-range targets never become NaN or a silently wrong loss (issue 13, item 3).

Eagerly applied models raise ValueError naming the argument; under jit the losses leave invalid entries
out (the loss is that of the valid entries, finite), and `losses.invalid_counts` counts them per field so a
training loop can stop naming the field and the step. QA positions keep transformers' clamping.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bert_jax
from bert_jax.modeling import dummy_inputs, losses
from tests import cases

B, L, C = cases.BATCH, cases.SEQ, cases.CHOICES
V, K = cases.TINY["vocab_size"], cases.TINY["num_labels"]


@pytest.fixture(scope="module")
def models():
    """{head name: (model, params)} for the tiny config (regression: num_labels=1)."""
    out = {}
    for name, cls, extra in [("seq", bert_jax.BertForSequenceClassification, {}),
                             ("reg", bert_jax.BertForSequenceClassification, {"num_labels": 1}),
                             ("multi", bert_jax.BertForSequenceClassification,
                              {"problem_type": "multi_label_classification"}),
                             ("mlm", bert_jax.BertForMaskedLM, {}), ("pre", bert_jax.BertForPreTraining, {}),
                             ("mc", bert_jax.BertForMultipleChoice, {}),
                             ("tok", bert_jax.BertForTokenClassification, {}),
                             ("nsp", bert_jax.BertForNextSentencePrediction, {}),
                             ("qa", bert_jax.BertForQuestionAnswering, {"num_labels": 2})]:
        model = cls(bert_jax.BertConfig(**{**cases.TINY, "hidden_dropout_prob": 0.0,
                                           "attention_probs_dropout_prob": 0.0, **extra}))
        out[name] = (model, _random_params(model))
    return out


def _random_params(model):
    """Small random params of the right structure (eval_shape: no initialiser compiled per model)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(model))["params"])
    r = np.random.RandomState(0)
    return jax.tree.map(lambda s: jnp.asarray(r.normal(0, 0.02, s.shape).astype(s.dtype)), nn.meta.unbox(shapes))


def _inputs(multiple_choice=False):
    inputs = cases.base_inputs(shape=(B, C, L) if multiple_choice else (B, L))
    return {k: jnp.asarray(v, jnp.int32) for k, v in inputs.items()}


def _mlm_sparse(positions, ids):
    return dict(masked_positions=jnp.asarray(positions, jnp.int32), labels=jnp.asarray(ids, jnp.int32))


# (head, targets with one invalid entry, the same with that entry made valid-and-ignored, message)
BAD = [
    ("seq", {"labels": [3, 0]}, {"labels": [-100, 0]}, r"labels contains 3 .*\[0, 3\) \(num_labels=3\)"),
    ("seq", {"labels": [-1, 0]}, {"labels": [-100, 0]}, "labels contains -1"),
    ("reg", {"labels": [np.nan, 0.5]}, None, "labels contains nan"),
    ("reg", {"labels": [np.inf, 0.5]}, None, "labels contains inf"),
    ("multi", {"labels": [[0.0, 2.0, 1.0], [1.0, 0.0, 0.0]]}, None, r"labels contains 2.0 .*\[0, 1\]"),
    ("mlm", {"labels": "vocab"}, {"labels": "ignored"}, rf"labels contains {V} .*vocab_size={V}"),
    ("mlm", {"labels": "below"}, {"labels": "ignored"}, "labels contains -101"),
    ("mlm", _mlm_sparse([[1, L], [2, 3]], [[5, 6], [7, 8]]), _mlm_sparse([[1, 0], [2, 3]], [[5, -100], [7, 8]]),
     rf"masked_positions contains {L} .*sequence length {L}"),
    ("mlm", _mlm_sparse([[1, -1], [2, 3]], [[5, 6], [7, 8]]), _mlm_sparse([[1, 0], [2, 3]], [[5, -100], [7, 8]]),
     "masked_positions contains -1"),
    ("pre", dict(_mlm_sparse([[1, L + 5], [2, 3]], [[5, 6], [7, 8]]), next_sentence_label=[0, 1]),
     dict(_mlm_sparse([[1, 0], [2, 3]], [[5, -100], [7, 8]]), next_sentence_label=[0, 1]), "masked_positions contains"),
    ("pre", dict(_mlm_sparse([[1, 4], [2, 3]], [[5, V + 1], [7, 8]]), next_sentence_label=[0, 1]),
     dict(_mlm_sparse([[1, 4], [2, 3]], [[5, -100], [7, 8]]), next_sentence_label=[0, 1]), f"labels contains {V + 1}"),
    ("pre", dict(_mlm_sparse([[1, 4], [2, 3]], [[5, 6], [7, 8]]), next_sentence_label=[2, 1]),
     dict(_mlm_sparse([[1, 4], [2, 3]], [[5, 6], [7, 8]]), next_sentence_label=[-100, 1]),
     "next_sentence_label contains 2"),
    ("mc", {"labels": [C, 0]}, {"labels": [-100, 0]}, rf"labels contains {C} .*num_choices={C}"),
    ("tok", {"labels": "token_k"}, {"labels": "ignored"}, f"labels contains {K}"),
    ("nsp", {"labels": [0, 2]}, {"labels": [0, -100]}, "labels contains 2"),
]


def _targets(head, spec, inputs):
    """Concrete arrays for a BAD entry ("vocab"/"below"/"token_k"/"ignored": dense [B, L] token labels)."""
    out = {}
    for k, v in spec.items():
        if isinstance(v, str):
            dense = np.full((B, L), -100, np.int32)
            dense[0, 2], dense[1, 4] = 2, 1
            dense[0, 3] = {"vocab": V, "below": -101, "token_k": K, "ignored": -100}[v]
            v = dense
        out[k] = jnp.asarray(v, jnp.float32 if head in ("reg", "multi") else jnp.int32)
    return out


@pytest.mark.parametrize("head, bad, _, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_eager_apply_raises_naming_the_argument(models, head, bad, _, message):
    model, params = models[head]
    inputs = _inputs(head == "mc")
    with pytest.raises(ValueError, match=message):
        model.apply({"params": params}, **inputs, **_targets(head, bad, inputs))


@pytest.mark.parametrize("head, bad, good, _", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_jitted_loss_leaves_invalid_entries_out(models, head, bad, good, _):
    """Under jit (no raising possible) the loss is finite and equals the loss with the invalid entry ignored
    (before: NaN, or a wrapped index's finite but wrong loss)."""
    model, params = models[head]
    inputs = _inputs(head == "mc")
    apply = jax.jit(lambda p, batch: model.apply({"params": p}, **batch))
    out = apply(params, {**inputs, **_targets(head, bad, inputs)})
    assert np.isfinite(float(out.loss))
    for logits in jax.tree.leaves([out.logits if hasattr(out, "logits") else out.prediction_logits]):
        assert np.isfinite(np.asarray(logits)).all()
    if good is not None:
        reference = model.apply({"params": params}, **inputs, **_targets(head, good, inputs)).loss
        np.testing.assert_allclose(float(out.loss), float(reference), rtol=1e-6)
    else:  # float targets: the loss of the valid rows/entries only
        t = _targets(head, bad, inputs)["labels"]
        logits = np.asarray(out.logits, np.float64)
        valid = np.isfinite(np.asarray(t)) & (np.asarray(t) >= 0) & ((np.asarray(t) <= 1) | (head == "reg"))
        y = np.where(valid, np.asarray(t), 0.0)
        if head == "reg":
            expected = np.mean(((logits[:, 0] - y) ** 2)[valid])
        else:
            bce = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
            expected = bce[valid].mean()
        np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5)


@pytest.mark.parametrize("head, bad, _, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_counts_names_the_field_under_jit(models, head, bad, _, message):
    model, _params = models[head]
    inputs = _inputs(head == "mc")
    batch = {**inputs, **_targets(head, bad, inputs)}
    counts = jax.jit(lambda b: losses.invalid_counts(b, model.config, model))(batch)
    field = message.split(" contains")[0]
    assert {k: int(v) for k, v in counts.items() if int(v)} == {field: 1}
    assert all(v.dtype == jnp.int32 and v.shape == () for v in counts.values())
    assert set(counts) == set(batch) - {"attention_mask"}


def test_invalid_counts_counts_every_field():
    config = bert_jax.BertConfig(**cases.TINY)
    batch = {"input_ids": jnp.array([[1, V, -3, 4]]), "token_type_ids": jnp.array([[0, 3, 0, 0]]),
             "position_ids": jnp.array([[0, 1, 2, 64]]), "masked_positions": jnp.array([[0, 4, -1]]),
             "labels": jnp.array([[5, V, -100]]), "next_sentence_label": jnp.array([7])}
    counts = jax.jit(lambda b: losses.invalid_counts(b, config, "pretraining"))(batch)
    assert {k: int(v) for k, v in counts.items()} == {"input_ids": 2, "token_type_ids": 1, "position_ids": 1,
                                                      "masked_positions": 2, "labels": 1, "next_sentence_label": 1}
    clean = {k: jnp.clip(v, 0, 1) for k, v in batch.items()}
    assert all(int(v) == 0 for v in losses.invalid_counts(clean, config, bert_jax.BertForPreTraining).values())
    # the same "labels" field means different things per head
    seq = {"input_ids": jnp.ones((2, 4), jnp.int32), "labels": jnp.array([2, 3])}
    assert int(losses.invalid_counts(seq, config, "sequence_classification")["labels"]) == 1
    assert int(losses.invalid_counts(seq, config, "masked_lm")["labels"]) == 0
    regression = {"labels": jnp.array([0.5, jnp.nan, jnp.inf])}
    assert int(losses.invalid_counts(regression, config.replace(num_labels=1), "sequence_classification")
               ["labels"]) == 2
    with pytest.raises(ValueError, match="head must be one of"):
        losses.invalid_counts(seq, config, "ranking")
    with pytest.raises(TypeError, match="labels must be integers"):
        losses.invalid_counts({"labels": jnp.array([0.5])}, config, "token_classification")


def test_question_answering_positions_keep_transformers_clamping(models):
    """Out-of-range QA positions are not errors: clamped to [0, L], L ignored (transformers' rule)."""
    model, params = models["qa"]
    inputs = _inputs()
    out = model.apply({"params": params}, **inputs, start_positions=jnp.array([2, 100]),
                      end_positions=jnp.array([-5, 3]))
    same = model.apply({"params": params}, **inputs, start_positions=jnp.array([2, L]),
                       end_positions=jnp.array([0, 3]))
    assert np.isfinite(float(out.loss)) and float(out.loss) == float(same.loss)
    assert losses.invalid_counts({**inputs, "start_positions": jnp.array([100, 0])}, model.config, model) \
        .keys() == {"input_ids", "token_type_ids"}


@pytest.mark.parametrize("change, message", [
    (lambda b: dict(b, input_ids=b["input_ids"][:, :, None]), r"input_ids must be \[batch, num_choices, seq\]"),
    (lambda b: dict(b, input_ids=b["input_ids"][:, 0]), r"input_ids must be \[batch, num_choices, seq\]"),
    (lambda b: dict(b, attention_mask=b["attention_mask"][:, :, :-1]), "attention_mask has shape"),
    (lambda b: dict(b, token_type_ids=b["token_type_ids"][:, 0]), "token_type_ids has shape"),
    (lambda b: dict(b, labels=jnp.zeros((B, C), jnp.int32)), "labels has shape"),
    (lambda b: dict(b, inputs_embeds=jnp.zeros((B, C, L, 32))), "pass exactly one of input_ids"),
])
def test_multiple_choice_shapes_name_the_argument(models, change, message):
    model, params = models["mc"]
    with pytest.raises(ValueError, match=message):
        model.apply({"params": params}, **change(_inputs(multiple_choice=True)))


def test_label_shape_and_dtype_errors(models):
    model, params = models["seq"]
    inputs = _inputs()
    with pytest.raises(ValueError, match="labels has shape"):
        model.apply({"params": params}, **inputs, labels=jnp.zeros((B, 2), jnp.int32))
    with pytest.raises(ValueError, match="labels has shape"):
        models["multi"][0].apply({"params": models["multi"][1]}, **inputs, labels=jnp.zeros((B, 2), jnp.float32))
    with pytest.raises(TypeError, match="labels must be integers"):
        models["tok"][0].apply({"params": models["tok"][1]}, **inputs, labels=jnp.zeros((B, L), jnp.float32))
