"""`config.data.dynamic_masking` for the text sources and for array_record shards, through the pipeline the
training loop builds (`bert_jax.training.data.build_pretraining_data`): on, every epoch masks each example
afresh (reproducibly from the seed); off, every epoch sees the shard's masks (array_record) or the first
pass's (text)."""

import os
import sys

import numpy as np
import pytest

from bert_jax.data import pipeline, pretraining
from bert_jax.training.data import build_pretraining_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, P, BATCH = 32, 5, 8


def _config(source, vocab="", dynamic=True, objective="mlm"):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import pretrain
    c = pretrain.get_config("size=tiny,runlocal")
    c.objective = objective
    c.data.update(source=source, vocab=vocab, seq_len=SEQ, max_predictions=P, global_batch_size=BATCH,
                  dynamic_masking=dynamic, vocab_size=300, eval_fraction=0.2, dupe_factor=1)
    return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A text corpus (one sentence per line, blank line between documents), its vocab and array_record shards
    of the same text with static masks (seed 123)."""
    from bert_jax.data import corpus as stdlib
    from bert_jax.tokenization import train_wordpiece
    root = tmp_path_factory.mktemp("dynmask")
    documents = stdlib.stdlib_documents(max_documents=12)
    text = root / "corpus.txt"
    text.write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")
    tokenizer = train_wordpiece([s for d in documents for s in d], vocab_size=300)
    tokenizer.save(str(root / "vocab"))
    examples = pipeline.text_mlm_examples(documents, tokenizer, seq_len=SEQ, max_predictions=P)
    masker = pretraining.DynamicMasker.from_tokenizer(tokenizer, max_predictions_per_seq=P, seed=123)
    pretraining.write_examples([masker(e, index=i) for i, e in enumerate(examples)], str(root / "shards") + "/",
                               num_shards=2)
    return dict(text=f"text:{text}", vocab=str(root / "vocab"), shards=f"array_record:{root / 'shards'}/*",
                examples=examples, static=[masker(e, index=i) for i, e in enumerate(examples)])


def _masks_by_example(loader, batches):
    """{unmasked input_ids bytes: [masked positions, one tuple per time the example was seen]} over `batches`."""
    seen = {}
    it = iter(loader)
    for _ in range(batches):
        batch = next(it)
        for row in range(batch["input_ids"].shape[0]):
            features = {k: batch[k][row] for k in ("input_ids", "masked_lm_positions", "masked_lm_ids",
                                                   "masked_lm_weights")}
            key = pretraining.unmask(features).tobytes()
            positions = features["masked_lm_positions"][features["masked_lm_weights"] > 0]
            seen.setdefault(key, []).append(tuple(positions.tolist()))
    return seen


def _two_epochs(data):
    """The masks of 30 batches: over two epochs of the corpus's ~80-100 training examples."""
    return _masks_by_example(data.train_loader, 30)


@pytest.mark.parametrize("kind", ["text", "shards"])
def test_dynamic_masking_changes_masks_across_epochs(corpus, kind, tmp_path):
    data = build_pretraining_data(_config(corpus[kind], corpus["vocab"], dynamic=True), tmp_path)
    seen = _two_epochs(data)
    repeated = [masks for masks in seen.values() if len(masks) >= 2]
    assert len(repeated) >= 10, "each example should be seen in several epochs"
    changed = sum(len(set(masks)) > 1 for masks in repeated)
    assert changed >= 0.8 * len(repeated), f"only {changed}/{len(repeated)} examples got new masks"
    # Reproducible from the seed: a second pipeline gives the very same masks.
    again = _two_epochs(build_pretraining_data(_config(corpus[kind], corpus["vocab"], dynamic=True), tmp_path))
    assert again == seen


@pytest.mark.parametrize("kind", ["text", "shards"])
def test_static_masking_keeps_masks(corpus, kind, tmp_path):
    data = build_pretraining_data(_config(corpus[kind], corpus["vocab"], dynamic=False), tmp_path)
    seen = _two_epochs(data)
    repeated = [masks for masks in seen.values() if len(masks) >= 2]
    assert len(repeated) >= 10
    assert all(len(set(masks)) == 1 for masks in repeated)
    if kind == "shards":  # exactly the masks written into the shards
        written = {pretraining.unmask(s).tobytes(): tuple(s["masked_lm_positions"][s["masked_lm_weights"] > 0])
                   for s in corpus["static"]}
        assert all(masks[0] == written[key] for key, masks in seen.items())


def test_dynamic_masking_of_shards_needs_a_vocab(corpus, tmp_path):
    with pytest.raises(ValueError, match="dynamic_masking=True with an array_record source needs config.data.vocab"):
        build_pretraining_data(_config(corpus["shards"], vocab="", dynamic=True), tmp_path)


def test_unmask_restores_the_original_ids(corpus):
    for original, masked in zip(corpus["examples"], corpus["static"]):
        np.testing.assert_array_equal(pretraining.unmask(masked), original["input_ids"])
    bad = dict(corpus["static"][0], masked_lm_positions=np.full(P, SEQ, np.int32))
    with pytest.raises(ValueError, match="do not fit input_ids of length 32"):
        pretraining.unmask(bad)
