"""Tests for bert_jax.data.pretraining (google-research create_pretraining_data port + dynamic masking)."""

import collections
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from bert_jax.data import pretraining as P
from bert_jax.data import create_pretraining_data as cli

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
STEMS = ["ka", "lo", "mi", "nu", "pe", "ra", "su", "ti", "vo", "ze"]
SUFFIXES = ["ba", "do", "gi", "ju", "ko", "le", "mo", "ny", "pu", "wa"]
VOCAB = SPECIALS + STEMS + ["##" + s for s in SUFFIXES]
MAX_LEN, MAX_PRED = 128, 20


def _word(rng):
    return rng.choice(STEMS) + "".join(rng.choice(SUFFIXES) for _ in range(rng.choice([0, 0, 1, 2])))


def _corpus_text(num_docs, seed, sentences=(3, 30), words=(3, 12)):
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        docs.append("\n".join(" ".join(_word(rng) for _ in range(rng.randint(*words)))
                              for _ in range(rng.randint(*sentences))))
    return docs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pretraining")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    docs = _corpus_text(300, seed=0)
    # Two files; the original also treats each file's text as continuing the previous document unless a blank
    # line separates them, so both files end with a blank line.
    (d / "corpus-a.txt").write_text("\n\n".join(docs[:150]) + "\n\n", encoding="utf-8")
    (d / "corpus-b.txt").write_text("\n\n".join(docs[150:]) + "\n", encoding="utf-8")
    small = _corpus_text(30, seed=1)
    (d / "small.txt").write_text("\n\n".join(small) + "\n", encoding="utf-8")
    return d


class _HFAdapter:
    """Same duck-typed interface as bert_jax.tokenization.BertTokenizer (used only if that is missing)."""

    def __init__(self, vocab_path):
        from transformers import BertTokenizerFast
        self._tok = BertTokenizerFast(vocab_file=str(vocab_path), do_lower_case=True)
        self.vocab = self._tok.get_vocab()

    def tokenize(self, text):
        return self._tok.tokenize(text)

    def convert_tokens_to_ids(self, tokens):
        return self._tok.convert_tokens_to_ids(tokens)


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    try:
        from bert_jax.tokenization import BertTokenizer
    except ImportError:  # pragma: no cover - only while tokenization.py is being written
        return _HFAdapter(data_dir / "vocab.txt")
    return BertTokenizer.from_vocab(str(data_dir / "vocab.txt"), lowercase=True)


def _files(data_dir):
    return [str(data_dir / "corpus-a.txt"), str(data_dir / "corpus-b.txt")]


def _make(data_dir, tokenizer, seed=12345, files=None, dupe_factor=2, short_seq_prob=0.1, wwm=False,
          max_len=MAX_LEN, max_pred=MAX_PRED):
    return P.create_training_instances(files or _files(data_dir), tokenizer, max_len, dupe_factor, short_seq_prob,
                                       0.15, max_pred, random.Random(seed), do_whole_word_mask=wwm)


@pytest.fixture(scope="module")
def instances(data_dir, tokenizer):
    return _make(data_dir, tokenizer)


@pytest.fixture(scope="module")
def wwm_instances(data_dir, tokenizer):
    return _make(data_dir, tokenizer, wwm=True, dupe_factor=1)


def _original_tokens(inst):
    tokens = list(inst.tokens)
    for p, label in zip(inst.masked_lm_positions, inst.masked_lm_labels):
        tokens[p] = label
    return tokens


def _words(tokens):
    """Index groups of whole words (a piece plus following '##' pieces), excluding [CLS]/[SEP]."""
    groups = []
    for i, t in enumerate(tokens):
        if t in ("[CLS]", "[SEP]"):
            continue
        if t.startswith("##") and groups and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# ------------------------------------------------------------------------------------------ reference port
def _ref_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob, masked_lm_prob,
                                 max_predictions_per_seq, vocab_words, rng, wwm):
    """google-research/bert create_pretraining_data.py (master), transcribed independently, as a golden model."""
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances, current_chunk, current_length, i = [], [], 0, 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = [t for j in range(a_end) for t in current_chunk[j]]
                tokens_b = []
                is_random_next = False
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(current_chunk) - a_end
                else:
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                while True:
                    if len(tokens_a) + len(tokens_b) <= max_num_tokens:
                        break
                    trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                    if rng.random() < 0.5:
                        del trunc[0]
                    else:
                        trunc.pop()
                tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                cand = []
                for k, token in enumerate(tokens):
                    if token == "[CLS]" or token == "[SEP]":
                        continue
                    if wwm and len(cand) >= 1 and token.startswith("##"):
                        cand[-1].append(k)
                    else:
                        cand.append([k])
                rng.shuffle(cand)
                output_tokens = list(tokens)
                num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
                masked, covered = [], set()
                for index_set in cand:
                    if len(masked) >= num_to_predict:
                        break
                    if len(masked) + len(index_set) > num_to_predict:
                        continue
                    if any(ix in covered for ix in index_set):
                        continue
                    for ix in index_set:
                        covered.add(ix)
                        if rng.random() < 0.8:
                            masked_token = "[MASK]"
                        else:
                            if rng.random() < 0.5:
                                masked_token = tokens[ix]
                            else:
                                masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
                        output_tokens[ix] = masked_token
                        masked.append((ix, tokens[ix]))
                masked.sort(key=lambda x: x[0])
                instances.append((output_tokens, segment_ids, is_random_next, [m[0] for m in masked],
                                  [m[1] for m in masked]))
            current_chunk, current_length = [], 0
        i += 1
    return instances


@pytest.mark.parametrize("wwm", [False, True])
def test_matches_reference_transcription(data_dir, tokenizer, wwm):
    files = [str(data_dir / "small.txt")]
    ours = P.create_training_instances(files, tokenizer, 64, 3, 0.3, 0.15, 10, random.Random(3),
                                       do_whole_word_mask=wwm)
    rng = random.Random(3)
    docs = [[]]
    for line in open(files[0], encoding="utf-8").read().split("\n"):  # file has only "\n" line ends
        line = line.strip()
        if not line:
            docs.append([])
        elif tokenizer.tokenize(line):
            docs[-1].append(tokenizer.tokenize(line))
    docs = [d for d in docs if d]
    rng.shuffle(docs)
    vocab_words = [t for t, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])]
    ref = []
    for _ in range(3):
        for di in range(len(docs)):
            ref.extend(_ref_instances_from_document(docs, di, 64, 0.3, 0.15, 10, vocab_words, rng, wwm))
    rng.shuffle(ref)
    assert [(i.tokens, i.segment_ids, i.is_random_next, i.masked_lm_positions, i.masked_lm_labels)
            for i in ours] == ref


# ---------------------------------------------------------------------------------------- static recipe
def test_deterministic_for_seed(data_dir, tokenizer):
    files = [str(data_dir / "small.txt")]
    a = _make(data_dir, tokenizer, seed=7, files=files)
    b = _make(data_dir, tokenizer, seed=7, files=files)
    c = _make(data_dir, tokenizer, seed=8, files=files)
    assert a == b
    assert a != c and len(a) > 10


def test_lengths_segments_and_specials(instances):
    assert len(instances) > 1000
    for inst in instances:
        tokens = _original_tokens(inst)
        n = len(tokens)
        assert 5 <= n <= MAX_LEN and len(inst.segment_ids) == n
        seps = [i for i, t in enumerate(tokens) if t == "[SEP]"]
        assert tokens[0] == "[CLS]" and len(seps) == 2 and seps[1] == n - 1 and "[CLS]" not in tokens[1:]
        assert inst.segment_ids == [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1)
        assert seps[0] >= 2 and seps[1] - seps[0] >= 2  # A and B non-empty
        assert inst.masked_lm_positions == sorted(set(inst.masked_lm_positions))
        for p in inst.masked_lm_positions:
            assert 0 < p < n and p not in seps


def test_masking_rate_counts_and_80_10_10(instances):
    masked = non_special = 0
    kinds = collections.Counter()
    for inst in instances:
        n = len(inst.tokens)
        k = len(inst.masked_lm_positions)
        assert k == min(MAX_PRED, max(1, int(round(n * 0.15))))  # no '##' grouping -> always exactly this many
        masked += k
        non_special += n - 3
        for p, label in zip(inst.masked_lm_positions, inst.masked_lm_labels):
            t = inst.tokens[p]
            kinds["mask" if t == "[MASK]" else "keep" if t == label else "random"] += 1
    rate = masked / non_special
    assert abs(rate - 0.15) < 0.01, rate
    total = sum(kinds.values())
    assert total > 20000
    # Random replacement picks the original token 1/len(VOCAB) of the time (as in the original).
    p_same = 0.1 / len(VOCAB)
    assert abs(kinds["mask"] / total - 0.8) < 0.015, kinds
    assert abs(kinds["keep"] / total - (0.1 + p_same)) < 0.01, kinds
    assert abs(kinds["random"] / total - (0.1 - p_same)) < 0.01, kinds


def test_whole_word_mask_never_splits_words(instances, wwm_instances):
    def split_words(insts):
        n_split = 0
        for inst in insts:
            masked = set(inst.masked_lm_positions)
            for group in _words(_original_tokens(inst)):
                hit = [i in masked for i in group]
                n_split += any(hit) and not all(hit)
        return n_split

    assert split_words(wwm_instances) == 0
    assert split_words(instances) > 100  # without WWM, words do get split: the check above has teeth
    for inst in wwm_instances:
        n = len(inst.tokens)
        assert 1 <= len(inst.masked_lm_positions) <= min(MAX_PRED, max(1, int(round(n * 0.15))))


def _one_token_sentence_docs(num_docs=20, length=300, seed=0):
    rng = random.Random(seed)
    return [[[rng.choice(STEMS)] for _ in range(length)] for _ in range(num_docs)]


def test_nsp_random_next_rate():
    # One-token sentences: every chunk has >= 2 segments, so the only source of randomness is the coin flip.
    docs = _one_token_sentence_docs()
    rng = random.Random(0)
    labels = [inst.is_random_next for _ in range(100) for d in range(len(docs))
              for inst in P.create_instances_from_document(docs, d, 32, 0.0, 0.15, 5, VOCAB, rng)[:1]]
    assert len(labels) == 2000
    assert abs(np.mean(labels) - 0.5) < 0.04, np.mean(labels)  # sigma = 0.011


def test_nsp_rate_on_corpus(instances):
    # Chunks made of a single sentence are always random-next (as in the original), so the corpus rate is a bit
    # above 50%.
    rate = np.mean([inst.is_random_next for inst in instances])
    assert 0.5 < rate < 0.62, rate


def test_short_seq_prob_rate():
    # One-token sentences: an actual-next first instance has exactly target_seq_length + 3 tokens.
    docs = _one_token_sentence_docs(length=130)
    rng = random.Random(1)
    lengths = {0.1: [], 0.0: []}
    for prob in lengths:
        for _ in range(150):
            for d in range(len(docs)):
                first = P.create_instances_from_document(docs, d, MAX_LEN, prob, 0.15, MAX_PRED, VOCAB, rng)[0]
                if not first.is_random_next:
                    lengths[prob].append(len(first.tokens))
    assert all(n == MAX_LEN for n in lengths[0.0])
    short = np.array([n for n in lengths[0.1] if n < MAX_LEN])
    frac = len(short) / len(lengths[0.1])
    # P(short) = 0.1 * P(target < max_num_tokens) = 0.1 * 123/124.
    assert abs(frac - 0.1 * 123 / 124) < 0.025, frac
    assert short.min() >= 5 and abs(short.mean() - (2 + 124) / 2 - 3) < 12, short.mean()


def test_truncate_seq_pair():
    rng = random.Random(0)
    fronts = backs = 0
    for _ in range(200):
        a, b = list(range(30)), list(range(100, 110))
        P.truncate_seq_pair(a, b, 25, rng)
        assert len(a) + len(b) == 25 and b == list(range(100, 110))  # only the longer one shrinks
        fronts += a[0] > 0
        backs += a[-1] < 29
    assert fronts > 150 and backs > 150
    a, b = [1, 2, 3], [4, 5, 6]
    P.truncate_seq_pair(a, b, 5, rng)
    assert a == [1, 2, 3] and len(b) == 2  # ties truncate B


def test_instance_to_features(instances, tokenizer):
    inst = instances[0]
    f = P.instance_to_features(inst, tokenizer, MAX_LEN, MAX_PRED)
    n, k = len(inst.tokens), len(inst.masked_lm_positions)
    assert set(f) == set(P.FEATURE_NAMES)
    assert f["input_ids"].dtype == np.int32 and f["masked_lm_weights"].dtype == np.float32
    assert f["input_ids"].shape == (MAX_LEN,) and f["masked_lm_ids"].shape == (MAX_PRED,)
    assert f["input_ids"][:n].tolist() == [tokenizer.vocab[t] for t in inst.tokens]
    assert not f["input_ids"][n:].any() and f["attention_mask"].sum() == n
    assert f["masked_lm_weights"].tolist() == [1.0] * k + [0.0] * (MAX_PRED - k)
    assert f["masked_lm_ids"][:k].tolist() == [tokenizer.vocab[t] for t in inst.masked_lm_labels]
    assert f["next_sentence_labels"].shape == () and int(f["next_sentence_labels"]) == int(inst.is_random_next)


# ---------------------------------------------------------------------------------------- ArrayRecord I/O
def test_array_record_round_trip(data_dir, tokenizer, tmp_path):
    files = str(data_dir / "small.txt")
    kw = dict(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2, random_seed=5, short_seq_prob=0.1)
    paths = cli.run(files, str(tmp_path) + "/", None, tokenizer=tokenizer, num_shards=3, **kw)
    assert len(paths) == 3 and all(os.path.isfile(p) for p in paths)
    expected = [P.instance_to_features(i, tokenizer, 64, 10) for i in
                P.create_training_instances([files], tokenizer, 64, 2, 0.1, 0.15, 10, random.Random(5))]
    ds = P.PretrainingDataSource(str(tmp_path))
    assert len(ds) == len(expected) > 30
    for i in range(len(ds)):
        got = ds[i]
        assert set(got) == set(P.FEATURE_NAMES)
        for name in P.FEATURE_NAMES:
            assert got[name].dtype == expected[i][name].dtype and np.array_equal(got[name], expected[i][name])
    meta = json.loads((tmp_path / "pretraining.features.json").read_text())
    assert meta["num_examples"] == len(ds) and sum(s["num_examples"] for s in meta["shards"]) == len(ds)
    assert meta["features"]["input_ids"] == {"dtype": "int32", "shape": [64]}
    assert meta["config"]["random_seed"] == 5 and ds.metadata == meta
    # Other ways in: glob, prefix, list; batch reads; negative index; pickling (grain workers).
    assert len(P.PretrainingDataSource(str(tmp_path / "*.array_record-*"))) == len(ds)
    assert len(P.PretrainingDataSource(str(tmp_path / "pretraining"))) == len(ds)
    batch = P.PretrainingDataSource(paths).__getitems__([5, 0, len(ds) - 1])
    assert np.array_equal(batch[0]["input_ids"], expected[5]["input_ids"])
    assert np.array_equal(ds[-1]["masked_lm_ids"], expected[-1]["masked_lm_ids"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert np.array_equal(pickle.loads(pickle.dumps(ds))[3]["input_ids"], expected[3]["input_ids"])
    # The raw records are plain ArrayRecord + msgpack: readable without bert_jax's reader, and by flax.
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    raw = ArrayRecordDataSource(paths)[7]
    assert np.array_equal(P.decode_example(raw)["token_type_ids"], expected[7]["token_type_ids"])
    from flax.serialization import msgpack_restore
    assert np.array_equal(msgpack_restore(raw)["masked_lm_weights"], expected[7]["masked_lm_weights"])


def test_cli_subprocess(data_dir, tokenizer, tmp_path):
    pytest.importorskip("bert_jax.tokenization")
    out = tmp_path / "run" / "data"
    cmd = [sys.executable, "-m", "bert_jax.data.create_pretraining_data", f"--input={data_dir / 'small.txt'}",
           f"--output={out}", f"--vocab={data_dir / 'vocab.txt'}", "--max_seq_length=32",
           "--max_predictions_per_seq=5", "--dupe_factor=1", "--random_seed=9", "--num_shards=2", "--noprogress",
           "--do_whole_word_mask"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(P.__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ds = P.PretrainingDataSource(str(out))
    expected = P.create_training_instances([str(data_dir / "small.txt")], tokenizer, 32, 1, 0.1, 0.15, 5,
                                           random.Random(9), do_whole_word_mask=True)
    assert len(ds) == len(expected) and len(ds.paths) == 2
    assert ds[0]["input_ids"].tolist()[:len(expected[0].tokens)] == tokenizer.convert_tokens_to_ids(
        expected[0].tokens)
    bad = subprocess.run(cmd[:5] + [f"--vocab={tmp_path / 'nope.txt'}"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode != 0 and "nope.txt" in bad.stderr


# ---------------------------------------------------------------------------------------- dynamic masking
def _packed_features(tokenizer, data_dir, max_len=64):
    docs = P.iter_documents([str(data_dir / "corpus-a.txt")], tokenizer, as_ids=True)
    v = tokenizer.vocab
    return list(P.mlm_only_full_sentences(docs, max_len, v["[CLS]"], v["[SEP]"], v["[PAD]"]))


@pytest.fixture(scope="module")
def packed(tokenizer, data_dir):
    return _packed_features(tokenizer, data_dir)


def test_dynamic_masker_deterministic_and_order_independent(tokenizer, packed):
    masker = P.DynamicMasker.from_tokenizer(tokenizer, seed=3, max_predictions_per_seq=MAX_PRED)
    forward = [masker(f, i) for i, f in enumerate(packed[:50])]
    backward = [masker(packed[i], i) for i in reversed(range(50))][::-1]
    for a, b in zip(forward, backward):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    other_seed = P.DynamicMasker.from_tokenizer(tokenizer, seed=4, max_predictions_per_seq=MAX_PRED)
    differs = lambda x, y: not np.array_equal(x["masked_lm_positions"], y["masked_lm_positions"])  # noqa: E731
    assert sum(differs(forward[i], other_seed(packed[i], i)) for i in range(50)) > 40
    assert sum(differs(forward[i], masker(packed[i], i + 1)) for i in range(50)) > 40  # keyed by index
    assert sum(differs(forward[i], masker(packed[i], i, epoch=1)) for i in range(50)) > 40
    assert np.array_equal(masker.map_with_index(7, packed[7])["input_ids"], forward[7]["input_ids"])
    assert not np.array_equal(packed[0]["input_ids"], forward[0]["input_ids"])  # input not modified in place


def test_dynamic_masker_statistics(tokenizer, packed):
    v = tokenizer.vocab
    specials = {v[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}
    masker = P.DynamicMasker.from_tokenizer(tokenizer, seed=0, max_predictions_per_seq=MAX_PRED)
    kinds, masked, candidates = collections.Counter(), 0, 0
    for epoch, (i, f) in ((e, x) for e in range(4) for x in enumerate(packed)):
        out = masker(f, i, epoch=epoch)
        k = int(out["masked_lm_weights"].sum())
        n = int(f["attention_mask"].sum())
        assert k == min(MAX_PRED, max(1, int(round(n * 0.15))))
        pos, labels = out["masked_lm_positions"][:k], out["masked_lm_ids"][:k]
        assert np.all(np.diff(pos) > 0) and np.all(pos < n)  # sorted, never padding
        assert np.array_equal(labels, f["input_ids"][pos]) and not set(labels.tolist()) & specials
        assert not out["masked_lm_positions"][k:].any() and not out["masked_lm_ids"][k:].any()
        unmasked = np.setdiff1d(np.arange(len(f["input_ids"])), pos)
        assert np.array_equal(out["input_ids"][unmasked], f["input_ids"][unmasked])
        masked += k
        candidates += int(np.sum(~np.isin(f["input_ids"][:n], list(specials))))
        new = out["input_ids"][pos]
        kinds["mask"] += int(np.sum(new == v["[MASK]"]))
        kinds["keep"] += int(np.sum(new == labels))
        kinds["random"] += int(np.sum((new != labels) & (new != v["[MASK]"])))
    total = sum(kinds.values())
    assert total == masked > 15000
    assert abs(masked / candidates - 0.15) < 0.01, masked / candidates
    assert abs(kinds["mask"] / total - 0.8) < 0.02 + 0.1 / len(VOCAB), kinds
    assert abs(kinds["keep"] / total - 0.1) < 0.015, kinds
    assert abs(kinds["random"] / total - 0.1) < 0.015, kinds


def test_dynamic_masker_whole_word(tokenizer, packed):
    v = tokenizer.vocab
    inv = {i: t for t, i in v.items()}
    wwm = P.DynamicMasker.from_tokenizer(tokenizer, seed=1, whole_word_mask=True)
    plain = P.DynamicMasker.from_tokenizer(tokenizer, seed=1)
    splits = {True: 0, False: 0}
    for i, f in enumerate(packed[:300]):
        n = int(f["attention_mask"].sum())
        groups = _words([inv[t] for t in f["input_ids"][:n].tolist()])
        for flag, masker in ((True, wwm), (False, plain)):
            out = masker(f, i)
            masked = set(out["masked_lm_positions"][out["masked_lm_weights"] > 0].tolist())
            assert flag is False or len(masked) <= 20
            splits[flag] += sum(any(j in masked for j in g) and not all(j in masked for j in g) for g in groups)
    assert splits[True] == 0 and splits[False] > 50


# ---------------------------------------------------------------------------------- FULL-SENTENCES packing
def test_full_sentence_packer(tokenizer, data_dir, packed):
    v = tokenizer.vocab
    cls_id, sep_id, pad_id = v["[CLS]"], v["[SEP]"], v["[PAD]"]
    docs = list(P.iter_documents([str(data_dir / "corpus-a.txt")], tokenizer, as_ids=True))
    assert len(docs) == 150
    content = []
    n_doc_seps = 0
    for f in packed:
        n = int(f["attention_mask"].sum())
        ids = f["input_ids"].tolist()
        assert f["input_ids"].shape == (64,) and n <= 64 and not f["token_type_ids"].any()
        assert ids[0] == cls_id and ids[n - 1] == sep_id and all(t == pad_id for t in ids[n:])
        assert f["attention_mask"][:n].all() and not f["attention_mask"][n:].any()
        body = ids[1:n - 1]
        n_doc_seps += body.count(sep_id)
        content.extend(t for t in body if t != sep_id)
        assert body[:1] != [sep_id] and body[-1:] != [sep_id]
    flat = [t for d in docs for s in d for t in s]
    assert content == flat  # every token kept, in order
    assert 0 < n_doc_seps < len(docs)  # documents are crossed with an extra [SEP]
    assert np.mean([f["attention_mask"].sum() for f in packed]) > 50  # packed densely
    # A sentence longer than the budget is split, not dropped.
    out = list(P.mlm_only_full_sentences([[[7] * 3], [list(range(10, 30))], [[8]]], 8, 1, 2, 0))
    assert [f["input_ids"].tolist() for f in out] == [
        [1, 7, 7, 7, 2, 0, 0, 0], [1, *range(10, 16), 2], [1, *range(16, 22), 2], [1, *range(22, 28), 2],
        [1, 28, 29, 2, 8, 2, 0, 0]]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(max_seq_length=4), "max_seq_length"),
    (dict(masked_lm_prob=0.0), "masked_lm_prob"),
    (dict(masked_lm_prob=1.0), "masked_lm_prob"),
    (dict(short_seq_prob=1.5), "short_seq_prob"),
    (dict(max_predictions_per_seq=0), "max_predictions_per_seq"),
    (dict(dupe_factor=0), "dupe_factor"),
    (dict(num_shards=0), "num_shards"),
])
def test_argument_errors(data_dir, tokenizer, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.write_pretraining_data(str(data_dir / "small.txt"), tmp_path, tokenizer, **kwargs)


def test_input_and_vocab_errors(data_dir, tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt"):
        P.write_pretraining_data(f"{data_dir / 'small.txt'},{empty}", tmp_path / "o", tokenizer)
    (tmp_path / "zero.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="zero.txt"):
        P.write_pretraining_data(str(tmp_path / "zero.txt"), tmp_path / "o", tokenizer)
    with pytest.raises(ValueError, match="nothing-here"):
        P.write_pretraining_data(str(tmp_path / "nothing-here*.txt"), tmp_path / "o", tokenizer)
    with pytest.raises(ValueError, match="missing-vocab.txt"):
        cli.run(str(data_dir / "small.txt"), str(tmp_path / "o"), str(tmp_path / "missing-vocab.txt"))
    with pytest.raises(ValueError, match="no ArrayRecord files"):
        P.PretrainingDataSource(str(tmp_path / "absent"))

    class NoMask(_HFAdapter):
        vocab = {"[CLS]": 0, "[SEP]": 1}

        def __init__(self):
            pass
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        P.create_training_instances([str(data_dir / "small.txt")], NoMask(), 32, 1, 0.1, 0.15, 5, random.Random(0))


def test_dynamic_masker_errors(tokenizer):
    with pytest.raises(ValueError, match="masked_lm_prob"):
        P.DynamicMasker(30, 4, [0, 2, 3], masked_lm_prob=1.2)
    with pytest.raises(ValueError, match="continuation_token_ids"):
        P.DynamicMasker(30, 4, [0, 2, 3], whole_word_mask=True)
    with pytest.raises(ValueError, match="mask_token_id"):
        P.DynamicMasker(30, 30, [0, 2, 3])
    with pytest.raises(ValueError, match="1-D"):
        P.DynamicMasker(30, 4, [0])({"input_ids": np.zeros((2, 8), np.int32)}, 0)
    with pytest.raises(ValueError, match="max_seq_length"):
        list(P.mlm_only_full_sentences([[[5]]], 2, 1, 2))


def test_progress_without_tqdm_and_no_jax_import(data_dir, tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # forces the logging fallback
    with caplog.at_level("INFO", logger=P.logger.name):
        P.write_pretraining_data(str(data_dir / "small.txt"), tmp_path / "p", tokenizer, max_seq_length=32,
                                 dupe_factor=1, show_progress=True)
    text = caplog.text
    assert "reading: 100%" in text and "documents:" in text and "Wrote" in text
    code = "import sys, bert_jax.data.pretraining; assert 'jax' not in sys.modules, 'jax imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(P.__file__)))))
    assert r.returncode == 0, r.stderr[-1000:]
