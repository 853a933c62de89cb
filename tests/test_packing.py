"""Packing: several sequences per row give the same per-sequence outputs as running each alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bert_jax
from bert_jax.data.packing import SequencePacker, pack_examples, packing_efficiency
from bert_jax.modeling.model import packed_positions
from tests import cases

LENGTHS = [5, 9, 3, 7, 4, 6]


def _examples():
    rs = np.random.RandomState(0)
    out = []
    for i, n in enumerate(LENGTHS):
        ids = rs.randint(5, cases.TINY["vocab_size"], n)
        ids[0], ids[-1] = 2, 3  # [CLS] ... [SEP]
        types = np.zeros(n, np.int64)
        types[n // 2:] = 1
        positions = np.array([1, n - 2])
        out.append({"input_ids": ids, "token_type_ids": types, "next_sentence_label": i % 2, "label": i % 3,
                    "masked_lm_positions": positions, "masked_lm_ids": ids[positions],
                    "masked_lm_weights": np.ones(2, np.float32)})
    return out


@pytest.fixture(scope="module")
def packed():
    return pack_examples(_examples(), max_length=16, max_sequences_per_row=3, max_predictions=6,
                         sequence_keys=("next_sentence_label", "label"))


def test_packer_layout(packed):
    rows = packed["input_ids"].shape[0]
    assert packed["input_ids"].shape == (rows, 16) and packed["cls_positions"].shape == (rows, 3)
    assert packed["sequence_mask"].sum() == len(LENGTHS)
    assert packed["attention_mask"].sum() == sum(LENGTHS)  # every token placed exactly once
    assert rows < len(LENGTHS) and packing_efficiency(packed) > 0.6
    for r in range(rows):
        for s in np.flatnonzero(packed["sequence_mask"][r]):
            start = packed["cls_positions"][r, s]
            assert packed["input_ids"][r, start] == 2 and packed["sequence_ids"][r, start] == s + 1
    np.testing.assert_array_equal(packed_positions(jnp.asarray(packed["sequence_ids"])) * packed["attention_mask"],
                                  packed["position_ids"])


def test_packed_equals_unpacked(packed):
    config = bert_jax.BertConfig(**dict(cases.TINY, num_labels=3))
    pretrain = bert_jax.BertForPreTraining(config)
    params = bert_jax.init_params(pretrain, jax.random.PRNGKey(0))
    apply = jax.jit(pretrain.apply)
    out = apply({"params": params}, packed["input_ids"], packed["attention_mask"],
                         packed["token_type_ids"], sequence_ids=packed["sequence_ids"],
                         cls_positions=packed["cls_positions"], masked_positions=packed["masked_lm_positions"])
    worst = 0.0
    examples = _examples()
    placed = [(r, s) for r in range(packed["input_ids"].shape[0]) for s in np.flatnonzero(packed["sequence_mask"][r])]
    prediction_index = {r: 0 for r in range(packed["input_ids"].shape[0])}
    # Examples are placed in order within a row; recover each one by its [CLS] offset and length.
    for r, s in placed:
        start = packed["cls_positions"][r, s]
        length = int((packed["sequence_ids"][r] == s + 1).sum())
        ids = packed["input_ids"][r, start:start + length]
        example = next(e for e in examples if len(e["input_ids"]) == length and np.array_equal(e["input_ids"], ids))
        alone = apply({"params": params}, example["input_ids"][None], None, example["token_type_ids"][None],
                               masked_positions=example["masked_lm_positions"][None])
        worst = max(worst, float(np.abs(out.seq_relationship_logits[r, s] - alone.seq_relationship_logits[0]).max()))
        k = prediction_index[r]
        got = out.prediction_logits[r, k:k + 2]
        prediction_index[r] += 2
        worst = max(worst, float(np.abs(got - alone.prediction_logits[0]).max()))
        assert packed["next_sentence_label"][r, s] == example["next_sentence_label"]
    assert worst < 1e-5, worst


@pytest.mark.parametrize("head", ["pooler", "roberta", "electra"])
def test_packed_sequence_classification_loss(packed, head):
    """One prediction per packed sequence, from its [CLS], whichever the classifier head."""
    config = bert_jax.BertConfig(**dict(cases.TINY, num_labels=3, classifier_head=head))
    model = bert_jax.BertForSequenceClassification(config)
    params = bert_jax.init_params(model)
    out = jax.jit(model.apply)({"params": params}, packed["input_ids"], packed["attention_mask"],
                               packed["token_type_ids"],
                      sequence_ids=packed["sequence_ids"], cls_positions=packed["cls_positions"],
                      labels=packed["label"])
    assert out.logits.shape == packed["cls_positions"].shape + (3,)
    valid = packed["sequence_mask"].astype(bool)
    logp = jax.nn.log_softmax(out.logits[valid])
    expected = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(packed["label"][valid])[:, None], 1))
    np.testing.assert_allclose(out.loss, expected, rtol=1e-6)


def test_packer_errors():
    with pytest.raises(ValueError, match="max_length=4"):
        list(SequencePacker(4).pack([{"input_ids": np.ones(6), "token_type_ids": np.ones(6)}]))
    with pytest.raises(ValueError, match="lacks the keys"):
        list(SequencePacker(8).pack([{"input_ids": np.ones(3)}]))
    with pytest.raises(ValueError, match="different lengths"):
        list(SequencePacker(8).pack([{"input_ids": np.ones(3), "token_type_ids": np.ones(2)}]))
    with pytest.raises(ValueError, match="max_predictions"):
        pack_examples(_examples()[:2], 16, max_predictions=1)
