"""grain input pipelines and data sources: determinism, host sharding, exact resume, dynamic masking, the
in-memory text path, local file sources and TFDS (a tiny dataset prepared here, tfds mock data, and the
'not prepared' error). Everything is generated locally; nothing is downloaded."""

import json
import pickle
import random
import time

import numpy as np
import pytest

from bert_jax.data import pipeline, pretraining, sources
from bert_jax.data.pretraining import FEATURE_NAMES, DynamicMasker, PretrainingDataSource

SEQ, P, N = 16, 4, 48
VOCAB = 100


def _record(i, masked=True):
    """Record i: input_ids[1] = i + 10 identifies it; [CLS]=2 ... [SEP]=3, padding after 12 tokens."""
    ids = np.zeros(SEQ, np.int32)
    ids[:12] = [2, i + 10, *range(20, 29), 3]
    f = {"input_ids": ids, "token_type_ids": np.zeros(SEQ, np.int32),
         "attention_mask": (ids != 0).astype(np.int32), "next_sentence_labels": np.asarray(i % 2, np.int32)}
    if masked:
        f.update(masked_lm_positions=np.asarray([2, 5, 0, 0], np.int32),
                 masked_lm_ids=np.asarray([20, 23, 0, 0], np.int32),
                 masked_lm_weights=np.asarray([1, 1, 0, 0], np.float32))
    return f


def _ids(batch):
    return (batch["input_ids"][:, 1] - 10).tolist()


def _unmasked_ids(batch):
    """Record ids of a dynamically masked batch (position 1 may be masked: read it back from the labels)."""
    ids = batch["input_ids"].copy()
    for row in range(len(ids)):
        for pos, label, w in zip(batch["masked_lm_positions"][row], batch["masked_lm_ids"][row],
                                 batch["masked_lm_weights"][row]):
            if w > 0:
                ids[row, pos] = label
    return (ids[:, 1] - 10).tolist()


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


MASKER = DynamicMasker(vocab_size=VOCAB, mask_token_id=4, special_token_ids=[0, 2, 3, 4], masked_lm_prob=0.25,
                       max_predictions_per_seq=P, seed=7)


@pytest.fixture(scope="module")
def static_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    pretraining.write_examples([_record(i) for i in range(N)], str(out) + "/", num_shards=3)
    return str(out)


@pytest.fixture(scope="module")
def unmasked_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("unmasked")
    pretraining.write_examples([_record(i, masked=False) for i in range(N)], str(out) + "/", num_shards=2)
    return str(out)


def _loader(src, **kw):
    kw = {"global_batch_size": 8, "seed": 1, "process_index": 0, "process_count": 1, **kw}
    return pipeline.make_pretraining_loader(src, **kw)


# -------------------------------------------------------------------------------------- pre-training loader
def test_batches_have_pretraining_features(static_shards):
    batch = next(iter(_loader(static_shards, process_index=1, process_count=2)))
    assert set(batch) == set(FEATURE_NAMES)
    assert batch["input_ids"].shape == (4, SEQ) and batch["masked_lm_ids"].shape == (4, P)
    assert batch["next_sentence_labels"].shape == (4,)
    for k, v in batch.items():
        assert v.dtype == (np.float32 if k == "masked_lm_weights" else np.int32), k
    # static records pass through unchanged
    for row, i in enumerate(_ids(batch)):
        for k, v in _record(i).items():
            np.testing.assert_array_equal(batch[k][row], v, err_msg=k)


def test_deterministic_for_a_seed(static_shards):
    a = _take(iter(_loader(static_shards)), 8)
    b = _take(iter(_loader(PretrainingDataSource(static_shards))), 8)
    c = _take(iter(_loader(static_shards, seed=2)), 8)
    assert _same(a, b)
    assert [_ids(x) for x in a] != [_ids(x) for x in c]
    assert sorted(i for x in a[:6] for i in _ids(x)) == list(range(N))  # an epoch is a permutation
    assert [_ids(x) for x in a[:6]] != [_ids(x) for x in a[6:8] + a[:4]]  # epochs reshuffle
    unshuffled = _take(iter(_loader(static_shards, shuffle=False)), 2)
    assert [_ids(x) for x in unshuffled] == [list(range(8)), list(range(8, 16))]


@pytest.mark.parametrize("masked", [False, True])
def test_hosts_disjoint_and_cover_each_epoch_once(static_shards, unmasked_shards, masked):
    src, masker, read = (unmasked_shards, MASKER, _unmasked_ids) if masked else (static_shards, None, _ids)
    per_host = []
    for host in range(2):
        batches = list(_loader(src, process_index=host, process_count=2, num_epochs=2, masker=masker))
        assert len(batches) == 2 * pipeline.batches_per_epoch(N, 8, 2) == 12
        assert all(b["input_ids"].shape[0] == 4 for b in batches)
        per_host.append([[i for b in batches[e * 6:(e + 1) * 6] for i in read(b)] for e in range(2)])
    for epoch in range(2):
        h0, h1 = per_host[0][epoch], per_host[1][epoch]
        assert not set(h0) & set(h1)
        assert sorted(h0 + h1) == list(range(N))  # every record exactly once per epoch


def test_masks_depend_on_record_and_epoch_only(unmasked_shards):
    source = PretrainingDataSource(unmasked_shards)
    seen = {}
    for count, index, shuffle in ((1, 0, True), (2, 1, False)):
        batches = list(_loader(unmasked_shards, masker=MASKER, num_epochs=2, process_index=index,
                               process_count=count, shuffle=shuffle))
        per_epoch = len(batches) // 2
        for b_index, batch in enumerate(batches):
            epoch = b_index // per_epoch
            for row, i in enumerate(_unmasked_ids(batch)):
                expected = MASKER(source[i], index=i, epoch=epoch)
                for k in ("input_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
                    np.testing.assert_array_equal(batch[k][row], expected[k], err_msg=k)
                seen.setdefault(i, set()).add(batch["input_ids"][row].tobytes())
                assert batch["next_sentence_labels"][row] == i % 2
    assert sum(len(v) > 1 for v in seen.values()) > N // 2  # epochs mask differently


@pytest.mark.parametrize("masked", [False, True])
def test_exact_resume_from_state(static_shards, unmasked_shards, masked):
    kw = dict(process_index=1, process_count=2)
    if masked:
        src, kw["masker"] = unmasked_shards, MASKER
    else:
        src = static_shards
    it = iter(_loader(src, **kw))
    _take(it, 5)  # 6 batches per epoch on this host: the resumed batches straddle an epoch boundary
    state = pipeline.iterator_state_to_bytes(it)
    assert isinstance(state, bytes) and json.loads(state)
    expected = _take(it, 3)
    resumed = pipeline.iterator_state_from_bytes(iter(_loader(src, **kw)), state)
    assert _same(_take(resumed, 3), expected)
    assert _same(_take(pipeline.restore_iterator(_loader(src, **kw), state), 3), expected)


def test_state_errors(static_shards):
    it = iter(_loader(static_shards))
    next(it)
    state = pipeline.iterator_state_to_bytes(it)
    with pytest.raises(ValueError, match="grain iterator state"):
        pipeline.iterator_state_from_bytes(iter(_loader(static_shards)), b"\x00not json")
    with pytest.raises(ValueError, match="[Ss]ampler"):  # a loader built with another seed
        pipeline.iterator_state_from_bytes(iter(_loader(static_shards, seed=5)), state)


def test_argument_errors(static_shards, unmasked_shards):
    with pytest.raises(ValueError, match="divisible"):
        _loader(static_shards, global_batch_size=7, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        _loader(static_shards, seed=-1)
    with pytest.raises(ValueError, match="process_index"):
        _loader(static_shards, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="num_epochs"):
        _loader(static_shards, num_epochs=0)
    with pytest.raises(KeyError, match="masker"):
        next(iter(_loader(unmasked_shards)))
    with pytest.raises(ValueError, match="no ArrayRecord"):
        _loader("/nonexistent/dir/shards")


def test_default_process_index_and_count_from_jax(static_shards):
    import jax
    loader = pipeline.make_pretraining_loader(static_shards, global_batch_size=8, seed=1)
    assert next(iter(loader))["input_ids"].shape[0] == 8 // jax.process_count()


def test_drop_remainder_false_keeps_last_partial_batch(static_shards):
    batches = list(_loader(static_shards, global_batch_size=10, num_epochs=1, drop_remainder=False, shuffle=False))
    assert [len(b["input_ids"]) for b in batches] == [10, 10, 10, 10, 8]
    assert [i for b in batches for i in _ids(b)] == list(range(N))


def test_worker_process_gives_the_same_batches(unmasked_shards):
    in_process, with_worker = [_take(iter(_loader(unmasked_shards, masker=MASKER, worker_count=w)), 4)
                               for w in (0, 1)]
    assert _same(in_process, with_worker)


# ---------------------------------------------------------------------------------------- text -> MLM
@pytest.fixture(scope="module")
def text_setup():
    from bert_jax.data import corpus
    from bert_jax.tokenization import train_wordpiece
    documents = corpus.stdlib_documents(max_documents=40)
    tokenizer = train_wordpiece([s for d in documents for s in d], vocab_size=600)
    return documents, tokenizer


def test_text_mlm_full_sentences(text_setup):
    documents, tokenizer = text_setup
    kw = dict(seq_len=32, global_batch_size=4, seed=3, max_predictions=6, process_index=0, process_count=1)
    examples = pipeline.text_mlm_examples(documents, tokenizer, seq_len=32)
    assert examples is pipeline.text_mlm_examples(documents, tokenizer, seq_len=32)  # cached
    # every token of the text is in some example, in order
    flat = [t for e in examples for t in e["input_ids"][e["attention_mask"] == 1]]
    content = [t for t in flat if t not in (tokenizer.cls_token_id, tokenizer.sep_token_id)]
    expected = tokenizer([s for d in documents for s in d], add_special_tokens=False)["input_ids"]
    assert content == [int(t) for row in expected for t in row]
    by_ids = {e["input_ids"].tobytes(): e for e in examples}
    batches = _take(iter(pipeline.make_text_mlm_loader(documents, tokenizer, **kw)), 3)
    for batch in batches:
        assert (batch["next_sentence_labels"] == pipeline.NO_NSP_LABEL).all()
        for row in range(4):
            original = batch["input_ids"][row].copy()
            k = int(batch["masked_lm_weights"][row].sum())
            assert 1 <= k <= 6
            original[batch["masked_lm_positions"][row, :k]] = batch["masked_lm_ids"][row, :k]
            assert original.tobytes() in by_ids  # unmasking gives back an example
            changed = np.flatnonzero(original != batch["input_ids"][row])
            assert set(changed) <= set(batch["masked_lm_positions"][row, :k])
    assert _same(batches, _take(iter(pipeline.make_text_mlm_loader(documents, tokenizer, **kw)), 3))
    source = sources.InMemorySource([{"sentences": d} for d in documents])
    assert _same(batches, _take(iter(pipeline.make_text_mlm_loader(source, tokenizer, **kw)), 3))


def test_text_mlm_resume(text_setup):
    documents, tokenizer = text_setup
    make = lambda: pipeline.make_text_mlm_loader(documents, tokenizer, seq_len=32, global_batch_size=4, seed=3,
                                                 mode="nsp", process_index=0, process_count=1)
    it = iter(make())
    _take(it, 5)
    state = pipeline.iterator_state_to_bytes(it)
    expected = _take(it, 3)
    assert _same(_take(pipeline.restore_iterator(make(), state), 3), expected)


def test_nsp_examples_are_create_training_instances(text_setup, tmp_path):
    documents, tokenizer = text_setup
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")
    kw = dict(max_seq_length=32, dupe_factor=2, short_seq_prob=0.1, masked_lm_prob=0.15,
              max_predictions_per_seq=5)
    reference = pretraining.create_training_instances(str(path), tokenizer, rng=random.Random(11), **kw)
    examples = pipeline.text_mlm_examples(documents, tokenizer, seq_len=32, mode="nsp", seed=11, dupe_factor=2,
                                          short_seq_prob=0.1, masked_lm_prob=0.15, max_predictions=5)
    assert len(examples) == len(reference) > 50
    vocab = tokenizer.vocab
    for example, instance in zip(examples, reference):
        tokens = list(instance.tokens)
        for position, label in zip(instance.masked_lm_positions, instance.masked_lm_labels):
            tokens[position] = label
        n = len(tokens)
        assert example["input_ids"][:n].tolist() == [vocab[t] for t in tokens]
        assert example["token_type_ids"][:n].tolist() == instance.segment_ids
        assert int(example["next_sentence_labels"]) == int(instance.is_random_next)
        assert not example["attention_mask"][n:].any()
    labels = [int(e["next_sentence_labels"]) for e in examples]
    # Both kinds occur; the exact split depends on the corpus (a document too short for a second segment
    # always gets a random next), the 50% balance itself is tested on a controlled corpus in
    # test_pretraining_data.
    assert 0.2 < np.mean(labels) < 0.9


def test_text_mlm_errors(text_setup):
    documents, tokenizer = text_setup
    with pytest.raises(ValueError, match="mode"):
        pipeline.text_mlm_examples(documents, tokenizer, seq_len=32, mode="sop")
    with pytest.raises(ValueError, match="empty"):
        pipeline.text_mlm_examples([[" "], []], tokenizer, seq_len=32)
    with pytest.raises(TypeError, match="TextLinesSource"):
        pipeline.text_mlm_examples("some/file.txt", tokenizer, seq_len=32)


# ---------------------------------------------------------------------------------------- local sources
def test_text_lines_source(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"First line.\r\n\r\nSecond doc, line one.\nline two\n\n\n")
    b.write_text("Third \u00e9t\u00e9 doc.", encoding="utf-8")
    lines = sources.TextLinesSource([str(a), str(b)])
    assert [r["text"] for r in lines] == ["First line.", "Second doc, line one.", "line two",
                                          "Third \u00e9t\u00e9 doc."]
    assert lines[-1] == lines[3] and len(lines) == 4
    docs = sources.TextLinesSource(str(tmp_path / "*.txt"), mode="documents")
    assert [r["sentences"] for r in docs] == [["First line."], ["Second doc, line one.", "line two"],
                                             ["Third \u00e9t\u00e9 doc."]]
    assert docs[1]["text"] == "Second doc, line one.\nline two"
    with pytest.raises(IndexError):
        lines[4]
    clone = pickle.loads(pickle.dumps(lines))  # open file handles are not pickled
    assert clone[2] == lines[2] and "TextLinesSource" in repr(clone) and "0x" not in repr(clone)


def test_text_lines_source_errors(tmp_path):
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        sources.TextLinesSource(missing)
    with pytest.raises(FileNotFoundError, match="matches no files"):
        sources.TextLinesSource(str(tmp_path / "*.nothing"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        sources.TextLinesSource(str(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(ValueError, match="no non-blank"):
        sources.TextLinesSource(str(tmp_path / "blank.txt"), mode="documents")
    with pytest.raises(IsADirectoryError):
        sources.TextLinesSource(str(tmp_path))
    with pytest.raises(ValueError, match="mode"):
        sources.TextLinesSource(missing, mode="paragraphs")


def test_jsonl_source(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a b", "label": 1, "extra": [1]}\n\n{"text": "c", "label": 0}\n', encoding="utf-8")
    src = sources.JsonlSource(str(path), columns=["text", "label"])
    assert list(src) == [{"text": "a b", "label": 1}, {"text": "c", "label": 0}]
    assert sources.JsonlSource(str(path))[0]["extra"] == [1]
    with pytest.raises(KeyError, match=r"data.jsonl:1.*'score'"):
        sources.JsonlSource(str(path), columns=["text", "score"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n[1, 2]\n')
    src = sources.JsonlSource(str(bad))
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        src[1]
    with pytest.raises(ValueError, match=r"bad.jsonl:3 holds a JSON list"):
        src[2]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        sources.JsonlSource(str(tmp_path / "empty.jsonl"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        sources.JsonlSource(str(tmp_path / "nope.jsonl"))


def test_csv_and_tsv_sources(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('sentence,label\n"hello, world",1\n"multi\nline",0\n', encoding="utf-8")
    assert list(sources.CsvSource(str(csv_path))) == [{"sentence": "hello, world", "label": "1"},
                                                      {"sentence": "multi\nline", "label": "0"}]
    tsv_path = tmp_path / "dev.tsv"  # GLUE-style: tab separated, unbalanced quotes are literal text
    tsv_path.write_text('index\tsentence\tlabel\n0\tit\'s "great\t1\n1\tbad movie\t0\n', encoding="utf-8")
    tsv = sources.CsvSource(str(tsv_path), columns=["sentence", "label"])
    assert tsv[0] == {"sentence": 'it\'s "great', "label": "1"} and len(tsv) == 2
    with pytest.raises(KeyError, match=r"dev.tsv.*\['score'\]"):
        sources.CsvSource(str(tsv_path), columns=["sentence", "score"])
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="no rows"):
        sources.CsvSource(str(tmp_path / "header.csv"))
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        sources.CsvSource(str(tmp_path / "empty.tsv"))
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"ragged.csv:3 has 1 fields"):
        sources.CsvSource(str(tmp_path / "ragged.csv"))
    (tmp_path / "other.csv").write_text("sentence,score\nx,1\n")
    with pytest.raises(ValueError, match="header"):
        sources.CsvSource([str(csv_path), str(tmp_path / "other.csv")])
    with pytest.raises(FileNotFoundError, match="gone.csv"):
        sources.CsvSource(str(tmp_path / "gone.csv"))


# ------------------------------------------------------------------------------------------------- tfds
@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A real TFDS dataset (registered builder, ArrayRecord files) prepared locally, without TensorFlow."""
    import tensorflow_datasets as tfds

    class BertJaxTinyReviews(tfds.core.GeneratorBasedBuilder):
        # A one-part module name: for dotted ones (tests.test_pipeline) tfds looks for the builder's code via
        # importlib_resources, which is not installed.
        __module__ = "bert_jax_tiny_reviews"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(20), "test": self._generate_examples(6)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"review number {i} \u00e9", "label": i % 2}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    BertJaxTinyReviews(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_source_reads_a_prepared_dataset(tiny_tfds):
    src = sources.tfds_source("bert_jax_tiny_reviews", "train", data_dir=tiny_tfds)
    assert len(src) == 20
    records = [src[i] for i in range(len(src))]
    assert sorted(r["text"] for r in records) == sorted(f"review number {i} \u00e9" for i in range(20))
    assert all(int(r["label"]) == int(r["text"].split()[2]) % 2 for r in records)
    assert "bert_jax_tiny_reviews" in repr(src) and "0x" not in repr(src)
    assert len(sources.tfds_source("bert_jax_tiny_reviews", "test[:50%]", data_dir=tiny_tfds)) == 3
    assert sum(int(r["label"]) for r in records) == 10


def test_tfds_mock_data_with_a_registered_builder():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12):
        # download=True goes through tfds.data_source; under mock_data nothing is fetched.
        src = sources.tfds_source("imdb_reviews", "train", download=True)
        assert len(src) == 12
        assert isinstance(src[0]["text"], str) and int(src[0]["label"]) in (0, 1)
        assert all(int(src[i]["label"]) in (0, 1) for i in range(len(src)))


@pytest.mark.parametrize("name", ["imdb_reviews", "glue/sst2"])
def test_tfds_not_prepared_fails_fast(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(sources.DatasetNotPreparedError) as info:
        sources.tfds_source(name, "train", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 60  # a real download attempt retries for minutes
    message = str(info.value)
    assert name in message and str(tmp_path) in message and "download_and_prepare" in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created
    with pytest.raises(ValueError, match="no dataset named"):
        sources.tfds_source("no_such_dataset_xyz", "train", data_dir=str(tmp_path))
