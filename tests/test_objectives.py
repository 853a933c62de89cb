"""Pretraining objective switches: the masking rate, the [MASK]/random/keep split, whole-word masking (dynamic
and static paths, wired from `config.data`), and ELECTRA replaced-token detection (`config.objective="electra"`)."""

import os
import random
import sys

import numpy as np
import pytest

from bert_jax.data import pretraining
from bert_jax.data.dynamic import DynamicMasker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, MASK_ID, SPECIALS = 1000, 4, (0, 1, 2, 3, 4)
CONTINUATIONS = tuple(range(900, 1000))  # ids of '##' pieces in the synthetic vocab


def _pretrain_config(arg="size=tiny,runlocal"):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import pretrain
    return pretrain.get_config(arg)


def _synthetic_examples(n=1500, seq=64, seed=0):
    """Rows of [CLS] w ... [SEP] pad...: ids in [5, 900) start words, ids in [900, 1000) continue them."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        length = int(rng.integers(seq // 2, seq + 1))
        ids = np.zeros(seq, np.int32)
        ids[0], ids[length - 1] = 2, 3
        ids[1:length - 1] = rng.integers(5, VOCAB, length - 2)
        ids[1] = rng.integers(5, 900)  # a row starts with a word, not a continuation
        mask = np.zeros(seq, np.int32)
        mask[:length] = 1
        examples.append({"input_ids": ids, "attention_mask": mask})
    return examples


def _masker(**kwargs):
    kwargs.setdefault("max_predictions_per_seq", 20)
    return DynamicMasker(VOCAB, MASK_ID, SPECIALS, continuation_token_ids=CONTINUATIONS, **kwargs)


def _split_counts(masker, examples):
    """(number predicted, became [MASK], kept, other) over all examples."""
    total = became_mask = kept = 0
    for i, e in enumerate(examples):
        out = masker(e, index=i)
        w = out["masked_lm_weights"] > 0
        positions, labels = out["masked_lm_positions"][w], out["masked_lm_ids"][w]
        now = out["input_ids"][positions]
        total += len(positions)
        became_mask += int(np.sum(now == MASK_ID))
        kept += int(np.sum(now == labels))
    return total, became_mask, kept, total - became_mask - kept


@pytest.mark.parametrize("mask_fraction,random_fraction", [(0.8, 0.1), (0.5, 0.3), (1.0, 0.0), (0.0, 0.0)])
def test_dynamic_split_matches_the_fractions(mask_fraction, random_fraction):
    examples = _synthetic_examples(800)
    total, became_mask, kept, other = _split_counts(
        _masker(mask_token_fraction=mask_fraction, random_token_fraction=random_fraction), examples)
    assert total > 5_000
    # A random draw equals the label or [MASK] with probability 1/VOCAB each: shifts of at most 2/VOCAB.
    keep_fraction = 1 - mask_fraction - random_fraction
    for count, p, slack in ((became_mask, mask_fraction, random_fraction / VOCAB),
                            (kept, keep_fraction, random_fraction / VOCAB),
                            (other, random_fraction, 2 * random_fraction / VOCAB)):
        sigma = np.sqrt(total * p * (1 - p))
        assert abs(count / total - p) <= (5 * sigma) / total + slack + 1e-12, (count / total, p)


def test_static_split_matches_the_fractions():
    rng = random.Random(3)
    words = [f"w{i}" for i in range(500)]
    vocab_words = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"] + words
    total = became_mask = kept = 0
    for _ in range(600):
        tokens = ["[CLS]"] + [rng.choice(words) for _ in range(60)] + ["[SEP]"]
        out, positions, labels = pretraining.create_masked_lm_predictions(
            tokens, 0.15, 20, vocab_words, rng, mask_token_fraction=0.6, random_token_fraction=0.3)
        total += len(positions)
        became_mask += sum(out[p] == "[MASK]" for p in positions)
        kept += sum(out[p] == label for p, label in zip(positions, labels))
    for count, p in ((became_mask, 0.6), (kept, 0.1)):
        assert abs(count / total - p) <= 5 * np.sqrt(p * (1 - p) / total) + 2 / len(vocab_words)


def test_default_split_is_the_original_draws():
    """The defaults reproduce the 80/10/10 draws the masker made before the fractions were switches."""
    masker = _masker(seed=7)
    for i, e in enumerate(_synthetic_examples(50, seed=1)):
        out = masker(e, index=i)
        rng = np.random.default_rng([7, 0, i])
        ids = e["input_ids"]
        candidates = np.flatnonzero((e["attention_mask"] != 0) & ~np.isin(ids, SPECIALS))
        k = min(20, max(1, int(round(int(e["attention_mask"].sum()) * 0.15))))
        positions = np.sort(rng.permutation(candidates)[:k])
        labels = ids[positions]
        u1, u2, random_ids = rng.random(k), rng.random(k), rng.integers(0, VOCAB, k)
        expected = np.where(u1 < 0.8, MASK_ID, np.where(u2 < 0.5, labels, random_ids))
        np.testing.assert_array_equal(out["input_ids"][positions], expected)
        np.testing.assert_array_equal(out["masked_lm_positions"][:k], positions)
    assert pretraining.validate_mask_fractions(0.8, 0.1) == 0.5


@pytest.mark.parametrize("prob", [0.15, 0.3])
def test_masking_rate(prob):
    masker = _masker(masked_lm_prob=prob, max_predictions_per_seq=64)
    for i, e in enumerate(_synthetic_examples(200)):
        out = masker(e, index=i)
        expected = min(64, max(1, int(round(int(e["attention_mask"].sum()) * prob))))
        assert int(out["masked_lm_weights"].sum()) == expected


def _words(ids, attention):
    """[positions of one word] for the non-special attended tokens (a word: a start + its '##' pieces)."""
    words = []
    for position in np.flatnonzero((attention != 0) & ~np.isin(ids, SPECIALS)):
        if ids[position] in CONTINUATIONS and words and words[-1][-1] == position - 1:
            words[-1].append(int(position))
        else:
            words.append([int(position)])
    return words


def test_whole_word_masking_never_splits_a_word():
    masker = _masker(whole_word_mask=True, masked_lm_prob=0.2)
    multi_piece_words_masked = 0
    for i, e in enumerate(_synthetic_examples(300)):
        out = masker(e, index=i)
        chosen = set(out["masked_lm_positions"][out["masked_lm_weights"] > 0].tolist())
        for word in _words(e["input_ids"], e["attention_mask"]):
            hit = [p in chosen for p in word]
            assert all(hit) or not any(hit), (word, sorted(chosen))
            multi_piece_words_masked += len(word) > 1 and all(hit)
    assert multi_piece_words_masked > 100  # the synthetic rows do have multi-piece words, and they get masked
    # ... whereas token masking does split them.
    token_masker = _masker(masked_lm_prob=0.2)
    split = 0
    for i, e in enumerate(_synthetic_examples(300)):
        out = token_masker(e, index=i)
        chosen = set(out["masked_lm_positions"][out["masked_lm_weights"] > 0].tolist())
        split += sum(0 < sum(p in chosen for p in w) < len(w) for w in _words(e["input_ids"], e["attention_mask"]))
    assert split > 0


def test_same_seed_same_masks():
    examples = _synthetic_examples(20)
    for whole in (False, True):
        a, b, c = (_masker(seed=s, whole_word_mask=whole, mask_token_fraction=0.5, random_token_fraction=0.2)
                   for s in (11, 11, 12))
        outs = [[m(e, index=i)["input_ids"] for i, e in enumerate(examples)] for m in (a, b, c)]
        assert all(np.array_equal(x, y) for x, y in zip(outs[0], outs[1]))
        assert not all(np.array_equal(x, y) for x, y in zip(outs[0], outs[2]))


@pytest.mark.parametrize("kwargs,named", [
    (dict(mask_token_fraction=1.2), "mask_token_fraction"),
    (dict(random_token_fraction=-0.1), "random_token_fraction"),
    (dict(mask_token_fraction=0.7, random_token_fraction=0.4), "must be <= 1"),
    (dict(mask_token_fraction="0.8"), "mask_token_fraction"),
])
def test_bad_fractions_are_named(kwargs, named):
    with pytest.raises(ValueError, match=named):
        _masker(**kwargs)
    with pytest.raises(ValueError, match=named):
        pretraining.create_masked_lm_predictions(["[CLS]", "a", "[SEP]"], 0.15, 2, ["a"], random.Random(0), **kwargs)
    if any(isinstance(v, str) for v in kwargs.values()):
        return  # (a ConfigDict refuses a string for a float key itself)
    from bert_jax.training.data import masking_options
    c = _pretrain_config()
    c.data.update(kwargs)
    with pytest.raises(ValueError, match="config.data." + (named if "fraction" in named else "")):
        masking_options(c)


def test_config_switches_reach_the_text_pipeline(tmp_path):
    """config.data.{whole_word_mask, mask_token_fraction, random_token_fraction} reach the masker the trainer
    builds (the text path), and the defaults are today's masker."""
    from bert_jax.data import pipeline
    from bert_jax.tokenization import train_wordpiece
    from bert_jax.training import data as training_data
    c = _pretrain_config()
    assert (c.data.mask_token_fraction, c.data.random_token_fraction, c.data.whole_word_mask) == (0.8, 0.1, False)
    seen = []
    real = pipeline.make_text_mlm_loader

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("whole_word_mask", "mask_token_fraction", "random_token_fraction")})
        return real(*args, **kwargs)

    docs = [["the quick brown fox jumps", "over the lazy dog"], ["a second document here", "with two lines"],
            ["and a third one", "to split off for eval"]]
    text = tmp_path / "c.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    tokenizer = train_wordpiece([s for d in docs for s in d], vocab_size=60)
    tokenizer.save(str(tmp_path / "vocab"))
    c.objective = "mlm"
    c.data.update(source=f"text:{text}", vocab=str(tmp_path / "vocab"), seq_len=16, max_predictions=4,
                  global_batch_size=2, eval_fraction=0.3, whole_word_mask=True, mask_token_fraction=0.6,
                  random_token_fraction=0.2)
    pipeline_attr = training_data.pipeline.make_text_mlm_loader
    training_data.pipeline.make_text_mlm_loader = spy
    try:
        training_data.build_pretraining_data(c, tmp_path / "work")
    finally:
        training_data.pipeline.make_text_mlm_loader = pipeline_attr
    assert seen[0] == dict(whole_word_mask=True, mask_token_fraction=0.6, random_token_fraction=0.2)
