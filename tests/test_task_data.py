"""Fine-tuning task readers, featurizers and post-processing on small files written in each original format
(GLUE TSVs, CoNLL columns, SWAG CSV, generic CSV/TSV/JSONL), plus the tfds path on mocked data sources."""

import json
import logging
import os
import sys

import ml_collections
import numpy as np
import pytest

from bert_jax.tasks import metrics
from bert_jax.tasks.classification import TextClassificationTask
from bert_jax.tasks.glue import GlueTask
from bert_jax.tasks.ner import NerTask, read_conll
from bert_jax.tasks.swag import SwagTask
from bert_jax.tokenization import SPECIAL_TOKENS, BertTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))

WORDS = """. , - " ' ? ! the cat sat down dog ran home a bird flew is on mat john lives in new york u s johnson
smith works at acme corp visited paris wash ##ington went to he she said hi yes no man woman walks runs
then kitchen opens door fridge takes out milk sits sleeps dances good bad great movie film okay fine""".split()
SEQ = 24


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(list(SPECIAL_TOKENS) + WORDS) + "\n")
    return BertTokenizer.from_vocab(str(path))


def task_config(**kwargs):
    return ml_collections.ConfigDict(dict(dict(data_dir="", source="", max_train_examples=-1,
                                               max_eval_examples=-1), **kwargs))


def write_tsv(path, header, rows):
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in lines), encoding="utf-8")


def assert_pair_encoding(tokenizer, row_ids, row_types, text_a, text_b):
    """The row is `[CLS] a [SEP]` in segment 0, then `b [SEP]` in segment 1, then padding."""
    first = tokenizer.encode(text_a)
    second = tokenizer.encode(text_b, add_special_tokens=False) + [tokenizer.sep_token_id]
    n = len(first) + len(second)
    np.testing.assert_array_equal(row_ids[:n], first + second)
    np.testing.assert_array_equal(row_types[:n], [0] * len(first) + [1] * len(second))
    assert (row_ids[n:] == tokenizer.pad_token_id).all()


# ---------------------------------------------------------------------------------------------- GLUE files
@pytest.fixture(scope="module")
def glue_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    mrpc = root / "MRPC"
    mrpc.mkdir()
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    # Unbalanced quotes: a quoting reader would swallow the following lines into one field.
    train = [[1, 11, 12, '"the cat sat', "the cat sat down"], [0, 13, 14, 'the dog ran "home', "a bird flew"],
             [1, 15, 16, "he said hi", "she said hi"], [0, 17, 18, "yes", 'no "']]
    write_tsv(mrpc / "train.tsv", header, train)
    write_tsv(mrpc / "dev.tsv", header, train[:2])
    write_tsv(mrpc / "test.tsv", ["index"] + header[1:], [[0, 1, 2, "the cat", "a dog"], [1, 3, 4, "hi", "yes"]])

    cola = root / "CoLA"
    cola.mkdir()
    cola_rows = [["gj04", 1, "", "the cat sat ."], ["gj04", 0, "*", "cat the sat ."], ["cj99", 1, "", "he ran ."]]
    write_tsv(cola / "train.tsv", None, cola_rows)
    write_tsv(cola / "dev.tsv", None, cola_rows[:2])
    write_tsv(cola / "test.tsv", ["index", "sentence"], [[0, "the dog ran ."], [1, "ran dog the"]])

    mnli = root / "MNLI"
    mnli.mkdir()
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    parse = ["( ( the cat ) sat )", "( a dog )", "(ROOT (S))", "(ROOT (NP))"]
    dev = lambda genre, rows: [[i, 7, f"{i}n", genre, *parse, a, b, lab, lab] for i, (a, b, lab) in enumerate(rows)]
    write_tsv(mnli / "train.tsv", header + ["label1", "gold_label"],
              dev("fiction", [("the cat sat", "a cat sat", "entailment"), ("the dog ran", "a bird flew", "neutral"),
                              ("he ran", "he sat", "contradiction")]))
    write_tsv(mnli / "dev_matched.tsv", header + ["label1", "gold_label"],
              dev("fiction", [("the cat sat", "a cat sat", "entailment"), ("he ran", "he sat", "contradiction")]))
    write_tsv(mnli / "dev_mismatched.tsv", header + ["label1", "gold_label"],
              dev("letters", [("she said hi", "she said no", "neutral")]))
    test = lambda rows: [[i, 7, f"{i}n", "g", *parse, a, b] for i, (a, b) in enumerate(rows)]
    write_tsv(mnli / "test_matched.tsv", header, test([("the cat", "a cat"), ("hi", "yes")]))
    write_tsv(mnli / "test_mismatched.tsv", header, test([("the dog", "a dog")]))
    write_tsv(mnli / "AX.tsv", ["index", "sentence1", "sentence2"], [[0, "the man walks", "a man runs"]])

    stsb = root / "STS-B"
    stsb.mkdir()
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    meta = ["main-captions", "MSRvid", "2012test", "0001", "none", "none"]
    write_tsv(stsb / "train.tsv", header + ["score"], [[0, *meta, "a man walks", "a man runs", "3.800"],
                                                       [1, *meta, "a cat sat", "a dog ran", "0.500"]])
    write_tsv(stsb / "test.tsv", header, [[0, *meta, "a man walks", "a woman walks"], [1, *meta, "hi", "yes"],
                                          [2, *meta, "no", "no"]])

    qqp = root / "QQP"
    qqp.mkdir()
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(qqp / "train.tsv", header, [[0, 1, 2, "is the cat good ?", "is the cat great ?", 1],
                                          [1, 3, 4, "who ran home ?"],  # truncated row, as in the real QQP
                                          [2, 5, 6, "is he okay ?", "is she fine ?", 0]])
    rte = root / "RTE"
    rte.mkdir()
    write_tsv(rte / "train.tsv", ["index", "sentence1", "sentence2", "label"],
              [[0, "john lives in paris", "john lives in new york", "not_entailment"],
               [1, "john works at acme corp", "john works", "entailment"], [2, "he ran", "he ran", "maybe"]])
    write_tsv(rte / "test.tsv", ["index", "sentence1", "sentence2"], [[0, "a", "b"], [1, "he", "she"]])
    return root


def glue(task, data_dir, **kwargs):
    return GlueTask(task_config(glue_task=task, data_dir=str(data_dir), **kwargs))


def test_glue_mrpc_reads_unquoted_tsv_and_featurizes_pairs(glue_dirs, tokenizer):
    task = glue("mrpc", glue_dirs / "MRPC")
    train = task.load_split("train")
    # Every line is one example, quotes kept verbatim (the file must be read with quoting disabled).
    assert [(e.text_a, e.text_b, e.label) for e in train] == [
        ('"the cat sat', "the cat sat down", 1), ('the dog ran "home', "a bird flew", 0),
        ("he said hi", "she said hi", 1), ("yes", 'no "', 0)]
    assert task.num_labels() == 2 and task.label_names() == ["not_equivalent", "equivalent"]
    assert task.metric_for_best == "combined_score"
    features = task.featurize(train, tokenizer, SEQ, "train")
    assert features.inputs["input_ids"].shape == (4, SEQ) and features.inputs["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(features.labels["labels"], [1, 0, 1, 0])
    for i, example in enumerate(train):
        assert_pair_encoding(tokenizer, features.inputs["input_ids"][i], features.inputs["token_type_ids"][i],
                             example.text_a, example.text_b)
    test = task.load_split("test")
    assert [e.index for e in test] == [0, 1] and all(e.label is None for e in test)
    assert task.featurize(test, tokenizer, SEQ, "test").labels == {}


def test_glue_predictions_metrics_and_submission(glue_dirs, tokenizer, tmp_path):
    task = glue("mrpc", glue_dirs / "MRPC")
    dev = task.load_split("validation")
    features = task.featurize(dev, tokenizer, SEQ, "validation")
    logits = np.array([[0.2, 0.9], [0.4, 0.1]])  # predicts 1, 0 = the gold labels
    predictions = task.postprocess({"logits": logits}, features, dev)
    np.testing.assert_array_equal(predictions, [1, 0])
    assert task.metrics(predictions, dev) == metrics.glue_metrics("mrpc", predictions, np.array([1, 0]))
    assert task.metrics(predictions, dev)["accuracy"] == 1.0
    assert task.predictions_filename("test") == "MRPC.tsv"
    test = task.load_split("test")
    path = tmp_path / task.predictions_filename("test")
    task.write_predictions(np.array([1, 0]), test, str(path))
    assert path.read_text() == "index\tprediction\n0\t1\n1\t0\n"


def test_glue_cola_headerless_tsv(glue_dirs, tokenizer, tmp_path):
    task = glue("cola", glue_dirs / "CoLA")
    train = task.load_split("train")
    assert [(e.text_a, e.text_b, e.label) for e in train] == [
        ("the cat sat .", None, 1), ("cat the sat .", None, 0), ("he ran .", None, 1)]
    assert task.metric_for_best == "matthews_correlation"
    features = task.featurize(train, tokenizer, SEQ, "train")
    assert not features.inputs["token_type_ids"].any()  # single sentences: segment 0 only
    test = task.load_split("test")  # the test file has a header
    assert [e.text_a for e in test] == ["the dog ran .", "ran dog the"]
    path = tmp_path / task.predictions_filename("test")
    task.write_predictions(np.array([1, 0]), test, str(path))
    assert path.name == "CoLA.tsv" and path.read_text().splitlines()[1:] == ["0\t1", "1\t0"]


def test_glue_mnli_matched_mismatched_and_ax(glue_dirs, tokenizer, tmp_path):
    task = glue("mnli", glue_dirs / "MNLI")
    assert task.eval_splits == ("validation_matched", "validation_mismatched")
    assert task.predict_splits == ("test_matched", "test_mismatched", "ax")
    assert task.label_names() == ["entailment", "neutral", "contradiction"]  # tfds / GLUE order
    assert [e.label for e in task.load_split("train")] == [0, 1, 2]
    matched, mismatched = task.load_split("validation_matched"), task.load_split("validation_mismatched")
    assert [(e.text_a, e.label) for e in matched] == [("the cat sat", 0), ("he ran", 2)]
    assert [(e.text_b, e.label) for e in mismatched] == [("she said no", 1)]
    names = {split: task.predictions_filename(split) for split in task.predict_splits}
    assert names == {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv", "ax": "AX.tsv"}
    written = {}
    for split, predictions in zip(task.predict_splits, ([2, 0], [1], [0])):
        examples = task.load_split(split)
        assert all(e.label is None for e in examples)
        features = task.featurize(examples, tokenizer, SEQ, split)
        assert features.inputs["input_ids"].shape == (len(examples), SEQ)
        task.write_predictions(np.array(predictions), examples, str(tmp_path / names[split]))
        written[split] = (tmp_path / names[split]).read_text().splitlines()
    assert written == {"test_matched": ["index\tprediction", "0\tcontradiction", "1\tentailment"],
                       "test_mismatched": ["index\tprediction", "0\tneutral"],
                       "ax": ["index\tprediction", "0\tentailment"]}


def test_glue_stsb_regression(glue_dirs, tokenizer, tmp_path):
    task = glue("stsb", glue_dirs / "STS-B")
    assert (task.num_labels(), task.problem_type(), task.label_names()) == (1, "regression", None)
    train = task.load_split("train")
    features = task.featurize(train, tokenizer, SEQ, "train")
    assert features.labels["labels"].dtype == np.float32
    np.testing.assert_allclose(features.labels["labels"], [3.8, 0.5])
    predictions = task.postprocess({"logits": np.array([[4.0], [1.0]])}, features, train)
    np.testing.assert_allclose(predictions, [4.0, 1.0])
    assert set(task.metrics(predictions, train)) == {"pearson", "spearmanr", "combined_score"}
    test = task.load_split("test")
    task.write_predictions(np.array([5.7, -0.2, 2.34567]), test, str(tmp_path / "STS-B.tsv"))
    assert task.predictions_filename("test") == "STS-B.tsv"
    assert (tmp_path / "STS-B.tsv").read_text().splitlines()[1:] == ["0\t5.000", "1\t0.000", "2\t2.346"]


def test_glue_qqp_skips_truncated_rows(glue_dirs, caplog):
    with caplog.at_level(logging.WARNING):
        train = glue("qqp", glue_dirs / "QQP").load_split("train")
    assert [(e.text_a, e.label, e.index) for e in train] == [("is the cat good ?", 1, 0), ("is he okay ?", 0, 2)]
    assert "skipped 1 rows" in caplog.text


def test_glue_errors(glue_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"line 4: unknown label 'maybe'.*\['entailment', 'not_entailment'\]"):
        glue("rte", glue_dirs / "RTE").load_split("train")
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv does not exist"):
        glue("rte", glue_dirs / "RTE").load_split("validation")
    with pytest.raises(ValueError, match="not a GLUE task"):
        glue("mnli-mm", glue_dirs)
    with pytest.raises(ValueError, match="no split 'validation'"):
        glue("mnli", glue_dirs / "MNLI").load_split("validation")
    bad = tmp_path / "bad"
    bad.mkdir()
    write_tsv(bad / "train.tsv", ["index", "premise", "hypothesis", "label"], [[0, "a", "b", "entailment"]])
    (bad / "dev.tsv").write_text("")
    with pytest.raises(ValueError, match=r"no columns 'sentence1', 'sentence2'; .*found are \['index', "
                                         r"'premise', 'hypothesis', 'label'\]"):
        glue("rte", bad).load_split("train")
    with pytest.raises(ValueError, match=r"dev\.tsv is empty"):
        glue("rte", bad).load_split("validation")
    # The AX file is looked up in data_dir; its absence is named.
    with pytest.raises(FileNotFoundError, match="no AX diagnostic TSV"):
        glue("mnli", bad).load_split("ax")


# ---------------------------------------------------------------------------------------------- tfds sources
@pytest.fixture
def mocked_tfds(monkeypatch):
    """`TfdsSource` backed by tfds.testing.mock_data's data source (records in the real feature format,
    generated from the builder's feature spec; no prepared files, no TensorFlow)."""
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text  # noqa: F401  registers glue/* and conll2003 without TensorFlow
    from bert_jax.data import sources

    class MockedSource(sources.TfdsSource):
        def __init__(self, name, split, data_dir=None, *, download=False, decode_text=True):
            assert not download
            self.name, self.split, self.decode_text = name, split, decode_text
            self._source = tfds.data_source(name, split=split, download=False)

    monkeypatch.setattr(sources, "TfdsSource", MockedSource)
    return tfds


def test_glue_from_tfds_mock_data(mocked_tfds, tokenizer):
    task = GlueTask(task_config(glue_task="mnli"))  # no data_dir: tfds
    with mocked_tfds.testing.mock_data(num_examples=5):
        matched = task.load_split("validation_matched")
        ax = task.load_split("ax")
    assert len(matched) == 5 and all(isinstance(e.text_a, str) and isinstance(e.text_b, str) for e in matched)
    assert all(e.label in (0, 1, 2) for e in matched)
    assert [e.index for e in matched] == sorted(e.index for e in matched)
    assert len(ax) == 5 and all(isinstance(e.text_a, str) for e in ax)
    features = task.featurize(matched, tokenizer, SEQ, "validation_matched")
    assert features.inputs["input_ids"].shape == (5, SEQ) and features.labels["labels"].shape == (5,)
    stsb = GlueTask(task_config(glue_task="stsb"))
    with mocked_tfds.testing.mock_data(num_examples=3):
        examples = stsb.load_split("train")
    assert all(isinstance(e.label, float) for e in examples)


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
    task = GlueTask(task_config(glue_task="rte", source="tfds", tfds_data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"'glue/rte' is not prepared.*nothing was downloaded"):
        task.load_split("train")


def test_ner_from_tfds(mocked_tfds, tokenizer):
    from tensorflow_datasets.core.dataset_builders.conll import conll_dataset_builder_utils as conll
    records = [dict(tokens=np.array([b"John", b"lives", b"in", b"Paris"], object), ner=np.array([1, 0, 0, 5]),
                    pos=np.zeros(4, np.int64), chunks=np.zeros(4, np.int64))]
    task = NerTask(task_config())
    with mocked_tfds.testing.mock_data(as_data_source_fn=lambda *args, **kwargs: records):
        examples = task.load_split("validation")
    assert task.label_names() == list(conll.NER_TAGS)
    assert examples[0].words == ["John", "lives", "in", "Paris"]
    assert examples[0].tags == [conll.NER_TAGS[i] for i in (1, 0, 0, 5)] == ["B-PER", "O", "O", "B-LOC"]


# ---------------------------------------------------------------------------------------------- NER
CONLL_TRAIN = """-DOCSTART- -X- -X- O

John NNP B-NP B-PER
Johnson-Smith NNP I-NP I-PER
lives VBZ B-VP O
in IN B-PP O
Washington NNP B-NP B-LOC
. . O O

U.S. NNP B-NP B-LOC
works VBZ B-VP O
at IN B-PP O
Acme NNP B-NP B-ORG
Corp NNP I-NP I-ORG

-DOCSTART- -X- -X- O

He PRP B-NP O
visited VBD B-VP O
Paris NNP B-NP B-LOC
"""


@pytest.fixture(scope="module")
def conll_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("conll")
    (root / "train.txt").write_text(CONLL_TRAIN)
    (root / "valid.txt").write_text(CONLL_TRAIN.replace("I-ORG", "I-FOOD"))
    (root / "test.txt").write_text("John\nwent\nhome\n\nShe\nsat\n")
    return root


def test_conll_reader(conll_dir):
    sentences = read_conll(str(conll_dir / "train.txt"))
    assert [len(s.words) for s in sentences] == [6, 5, 3]  # DOCSTART and blank lines split sentences
    assert sentences[0].words[1] == "Johnson-Smith" and sentences[0].tags[1] == "I-PER"
    assert sentences[2].tags == ["O", "O", "B-LOC"]
    unlabelled = read_conll(str(conll_dir / "test.txt"))
    assert [s.words for s in unlabelled] == [["John", "went", "home"], ["She", "sat"]]
    assert all(s.tags is None for s in unlabelled)


def test_ner_first_piece_labels_and_round_trip(conll_dir, tokenizer, tmp_path):
    task = NerTask(task_config(data_dir=str(conll_dir)))
    names = task.label_names()
    assert names == sorted({"B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG"}) and task.metric_for_best == "f1"
    train = task.load_split("train")
    features = task.featurize(train, tokenizer, SEQ, "train")
    labels = features.labels["labels"]
    assert labels.shape == features.inputs["input_ids"].shape == (3, SEQ)
    pieces = tokenizer.convert_ids_to_tokens(features.inputs["input_ids"][0])
    # John | johnson - smith | lives | in | wash ##ington | . : one CoNLL word may be several pieces.
    assert pieces[:11] == ["[CLS]", "john", "johnson", "-", "smith", "lives", "in", "wash", "##ington", ".", "[SEP]"]
    expected = ["B-PER", "I-PER", None, None, "O", "O", "B-LOC", None, "O"]
    want = [-100] + [-100 if t is None else names.index(t) for t in expected] + [-100] * (SEQ - 10)
    np.testing.assert_array_equal(labels[0], want)
    pieces = tokenizer.convert_ids_to_tokens(features.inputs["input_ids"][1])
    assert pieces[1:5] == ["u", ".", "s", "."]  # 'U.S.': labelled once, on 'u'
    np.testing.assert_array_equal(labels[1, 1:5], [names.index("B-LOC"), -100, -100, -100])
    # Every word has exactly one labelled position, in order.
    for i, example in enumerate(train):
        assert [names[j] for j in labels[i][labels[i] >= 0]] == example.tags

    # Logits that put the gold tag on first pieces (noise elsewhere) map back to the gold word tags.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=labels.shape + (len(names),))
    rows, cols = np.nonzero(labels >= 0)
    logits[rows, cols, labels[rows, cols]] = 10.0
    predictions = task.postprocess({"logits": logits}, features, train)
    assert predictions == [e.tags for e in train]
    assert task.metrics(predictions, train)["f1"] == 1.0
    # One entity wrong (Acme Corp -> B-ORG O: a shorter ORG): precision 4/5 and recall 4/5 per seqeval.
    predictions[1][4] = "O"
    scores = task.metrics(predictions, train)
    assert scores["precision"] == pytest.approx(4 / 5) and scores["recall"] == pytest.approx(4 / 5)
    assert scores["ORG_f1"] == 0.0 and scores["LOC_f1"] == 1.0

    path = tmp_path / task.predictions_filename("train")
    task.write_predictions(predictions, train, str(path))
    lines = path.read_text().split("\n")
    assert lines[:2] == ["John B-PER B-PER", "Johnson-Smith I-PER I-PER"] and lines[6] == ""
    assert "Corp I-ORG O" in lines


def test_ner_truncation_warns_and_predicts_o(conll_dir, tokenizer, caplog):
    task = NerTask(task_config(data_dir=str(conll_dir)))
    train = task.load_split("train")
    with caplog.at_level(logging.WARNING):
        features = task.featurize(train, tokenizer, 6, "train")  # [CLS] + 4 pieces + [SEP]
    assert "2 of 3 sentences are longer than max_seq_length=6" in caplog.text
    logits = np.zeros(features.labels["labels"].shape + (task.num_labels(),))
    logits[..., task.label_names().index("B-PER")] = 1.0
    predictions = task.postprocess({"logits": logits}, features, train)
    # Sentence 0 keeps John, Johnson-Smith (pieces 1-4); lives ... . were cut off and read "O".
    assert predictions[0] == ["B-PER", "B-PER", "O", "O", "O", "O"]
    assert [len(p) for p in predictions] == [len(e.words) for e in train]


def test_ner_words_without_word_pieces_are_not_scored(tmp_path, tokenizer, caplog):
    """A word the tokenizer deletes ("\u200b", "\xad": BERT's normalizer removes format characters) has no
    token to be labelled or predicted at. transformers' run_ner labels tokens through word_ids(), so such a
    word gets no label and is dropped from both the gold and the predicted sequence; so here (before: it was
    predicted "O" and scored, a missed entity when its gold tag was one)."""
    (tmp_path / "train.txt").write_text("John B-PER\n\u200b B-LOC\nlives O\nin O\nParis B-LOC\n\xad O\n\n"
                                        "He O\n\u200b\xad B-PER\nsat O\n", encoding="utf-8")
    task = NerTask(task_config(data_dir=str(tmp_path)))
    train = task.load_split("train")
    assert train[0].words[1] == "\u200b" and train[1].words[1] == "\u200b\xad"
    with caplog.at_level(logging.WARNING):
        features = task.featurize(train, tokenizer, SEQ, "train")
    assert "3 word(s) become no word piece" in caplog.text
    labels, names = features.labels["labels"], task.label_names()

    # The labels are run_ner's: its tokenize_and_align_labels (label_all_tokens=False) on the same vocab.
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path / "tok")
    fast = transformers.BertTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    for i, example in enumerate(train):
        encoded = fast(example.words, is_split_into_words=True, padding="max_length", max_length=SEQ)
        assert encoded["input_ids"] == features.inputs["input_ids"][i].tolist()
        expected, previous = [], None
        for word in encoded.word_ids():
            expected.append(-100 if word is None or word == previous else names.index(example.tags[word]))
            previous = word
        np.testing.assert_array_equal(labels[i], expected)

    # Perfect logits on every token: predictions are the gold tags, None for the pieceless words, and
    # the score is run_ner's (only labelled tokens): f1 = 1, although B-LOC / B-PER sat on deleted words.
    logits = np.zeros(labels.shape + (len(names),))
    rows, cols = np.nonzero(labels >= 0)
    logits[rows, cols, labels[rows, cols]] = 1.0
    predictions = task.postprocess({"logits": logits}, features, train)
    assert predictions == [["B-PER", None, "O", "O", "B-LOC", None], ["O", None, "O"]]
    scores = task.metrics(predictions, train)
    assert scores["f1"] == 1.0 and scores["precision"] == 1.0 and scores["recall"] == 1.0
    path = tmp_path / "predictions.txt"
    task.write_predictions(predictions, train, str(path))
    assert path.read_text(encoding="utf-8").split("\n")[:3] == ["John B-PER B-PER", "\u200b B-LOC O", "lives O O"]


def test_ner_errors(conll_dir, tmp_path, tokenizer):
    task = NerTask(task_config(data_dir=str(conll_dir)))
    with pytest.raises(ValueError, match=r"valid\.txt: sentence 1 .*unknown tag\(s\) \['I-FOOD'\]"):
        task.load_split("validation")
    unlabelled = task.load_split("test")
    features = task.featurize(unlabelled, tokenizer, SEQ, "test")
    assert features.labels == {}
    with pytest.raises(FileNotFoundError, match=r"train\.txt does not exist"):
        NerTask(task_config(data_dir=str(tmp_path))).label_names()
    (tmp_path / "train.txt").write_text("-DOCSTART- O\n\n")
    with pytest.raises(ValueError, match="holds no sentences"):
        NerTask(task_config(data_dir=str(tmp_path))).load_split("train")
    # A configured label list wins over the training file's tags.
    assert NerTask(task_config(data_dir=str(conll_dir), labels="O,B-PER,I-PER")).num_labels() == 3


# ---------------------------------------------------------------------------------------------- SWAG
SWAG_HEADER = "video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"


@pytest.fixture(scope="module")
def swag_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("swag")
    rows = ['lsmdc1,1,"x","He opens the fridge, then","he","gold","takes out milk.","sleeps.","dances.","flew.",0\n',
            'lsmdc2,2,"x","The cat sat on the mat.","The cat","gen","ran home.","sleeps.","flew.","dances.",1\n']
    (root / "train.csv").write_text(SWAG_HEADER + "".join(rows))
    (root / "val.csv").write_text(SWAG_HEADER + rows[1])
    (root / "test.csv").write_text(SWAG_HEADER.replace(",label", "") + rows[0].rsplit(",", 1)[0] + "\n")
    return root


def test_swag_multiple_choice_layout(swag_dir, tokenizer, tmp_path):
    task = SwagTask(task_config(data_dir=str(swag_dir)))
    train = task.load_split("train")
    assert train[0].sent1 == "He opens the fridge, then"  # quoted field with a comma
    assert train[0].endings == ["takes out milk.", "sleeps.", "dances.", "flew."] and train[1].label == 1
    features = task.featurize(train, tokenizer, SEQ, "train")
    assert task.head == "multiple_choice"
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert features.inputs[key].shape == (2, 4, SEQ)
    np.testing.assert_array_equal(features.labels["labels"], [0, 1])
    for i, example in enumerate(train):
        for j, ending in enumerate(example.endings):
            assert_pair_encoding(tokenizer, features.inputs["input_ids"][i, j],
                                 features.inputs["token_type_ids"][i, j], example.sent1, f"{example.sent2} {ending}")
    logits = np.array([[0.1, 2.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    predictions = task.postprocess({"logits": logits}, features, train)
    assert task.metrics(predictions, train) == {"accuracy": 0.5}
    assert metrics.multiple_choice_accuracy(logits, features.labels["labels"]) == 0.5
    test = task.load_split("test")
    assert test[0].label is None and task.featurize(test, tokenizer, SEQ, "test").labels == {}
    task.write_predictions(np.array([2]), test, str(tmp_path / "p.tsv"))
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n0\t2\n"


def test_swag_errors(tmp_path):
    (tmp_path / "train.csv").write_text("sent1,sent2,ending0,ending1,label\na,b,c,d,0\n")
    (tmp_path / "val.csv").write_text(SWAG_HEADER + 'v,1,x,a,b,g,c,d,e,f,7\n')
    task = SwagTask(task_config(data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"no columns 'ending2', 'ending3'; .*found are \['sent1'"):
        task.load_split("train")
    with pytest.raises(ValueError, match=r"val\.csv, line 2: label '7' is not one of 0\.\.3"):
        task.load_split("validation")
    with pytest.raises(FileNotFoundError, match=r"test\.csv does not exist"):
        task.load_split("test")


# ---------------------------------------------------------------------------------------------- own data
def classify(tmp_path, **kwargs):
    return TextClassificationTask(task_config(**dict(dict(text_column="text", label_column="label"), **kwargs)))


def test_classify_csv_single_label(tmp_path, tokenizer, tmp_path_factory):
    (tmp_path / "train.csv").write_text('text,label\n"a good movie, great",pos\nbad film,neg\nokay,neutral\n'
                                        'fine film,pos\n')
    (tmp_path / "dev.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    task = classify(tmp_path, train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "dev.csv"))
    assert task.label_names() == ["neg", "neutral", "pos"] and task.num_labels() == 3
    assert task.problem_type() == "single_label_classification" and task.predict_split is None
    train = task.load_split("train")
    assert train[0].text_a == "a good movie, great" and [e.label for e in train] == [2, 0, 1, 2]
    features = task.featurize(train, tokenizer, SEQ, "train")
    assert features.inputs["input_ids"].shape == (4, SEQ) and features.labels["labels"].dtype == np.int32
    dev = task.load_split("validation")
    predictions = task.postprocess({"logits": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}, None, dev)
    scores = task.metrics(predictions, dev)
    assert scores["accuracy"] == 0.5
    assert scores["macro_f1"] == pytest.approx(metrics.classification_metrics(predictions, [2, 0], 3)["macro_f1"])
    task.write_predictions(predictions, dev, str(tmp_path / "out" / task.predictions_filename("validation")))
    assert (tmp_path / "out" / "predictions_validation.tsv").read_text() == "index\tprediction\n0\tpos\n1\tneutral\n"


def test_classify_tsv_pairs_jsonl_regression_and_multi_label(tmp_path, tokenizer):
    (tmp_path / "pairs.tsv").write_text("q\tp\ty\nis he okay ?\the is fine\t2\nhi\tyes\t10\n")
    task = classify(tmp_path, train_file=str(tmp_path / "pairs.tsv"), text_column="q", text_pair_column="p",
                    label_column="y")
    assert task.label_names() == ["2", "10"]  # integer labels sort by value
    features = task.featurize(task.load_split("train"), tokenizer, SEQ, "train")
    assert features.inputs["token_type_ids"][0].max() == 1  # a second segment is present

    rows = [{"text": "good movie", "score": 4.5}, {"text": "bad film", "score": 1}]
    (tmp_path / "reg.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = classify(tmp_path, train_file=str(tmp_path / "reg.jsonl"), label_column="score",
                    problem_type="regression")
    assert (task.num_labels(), task.problem_type(), task.metric_for_best) == (1, "regression", "mse")
    train = task.load_split("train")
    features = task.featurize(train, tokenizer, SEQ, "train")
    np.testing.assert_allclose(features.labels["labels"], [4.5, 1.0])
    predictions = task.postprocess({"logits": np.array([[4.0], [2.0]])}, features, train)
    assert task.metrics(predictions, train)["mse"] == pytest.approx((0.25 + 1.0) / 2)

    rows = [{"text": "the cat", "tags": ["animal", "pet"]}, {"text": "paris", "tags": ["city"]},
            {"text": "a bird", "tags": ["animal"]}]
    (tmp_path / "ml.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ml.csv").write_text("text,tags\nthe dog,animal|pet\nnew york,city\n")
    task = classify(tmp_path, train_file=str(tmp_path / "ml.jsonl"), validation_file=str(tmp_path / "ml.csv"),
                    label_column="tags", problem_type="multi_label", label_delimiter="|")
    assert task.label_names() == ["animal", "city", "pet"]
    assert task.problem_type() == "multi_label_classification"
    features = task.featurize(task.load_split("train"), tokenizer, SEQ, "train")
    np.testing.assert_array_equal(features.labels["labels"], [[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert features.labels["labels"].dtype == np.float32
    dev = task.load_split("validation")
    predictions = task.postprocess({"logits": np.array([[2.0, -1.0, -3.0], [-1.0, 1.0, -2.0]])}, None, dev)
    np.testing.assert_array_equal(predictions, [[1, 0, 0], [0, 1, 0]])
    scores = task.metrics(predictions, dev)
    assert scores["subset_accuracy"] == 0.5 and scores["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    task.write_predictions(np.array([[1, 0, 1], [0, 0, 0]]), dev, str(tmp_path / "p.tsv"))
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n0\tanimal|pet\n1\t\n"


def test_classify_errors(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\ngood,pos\nbad,neg\n")
    with pytest.raises(ValueError, match=r"train\.csv has no column 'text'; the columns found are "
                                         r"\['sentence', 'label'\]"):
        classify(tmp_path, train_file=str(train)).load_split("train")
    (tmp_path / "dev.csv").write_text("sentence,label\nokay,meh\n")
    task = classify(tmp_path, train_file=str(train), validation_file=str(tmp_path / "dev.csv"),
                    text_column="sentence")
    with pytest.raises(ValueError, match=r"dev\.csv, line 2: unknown label\(s\) \['meh'\]; the known labels are "
                                         r"\['neg', 'pos'\]"):
        task.load_split("validation")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv does not exist"):
        classify(tmp_path, train_file=str(tmp_path / "missing.csv")).load_split("train")
    with pytest.raises(FileNotFoundError, match="set config.task.test_file"):
        task.load_split("test")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        classify(tmp_path, train_file=str(tmp_path / "empty.csv")).load_split("train")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match=r"header\.csv has no data rows"):
        classify(tmp_path, train_file=str(tmp_path / "header.csv")).load_split("train")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: malformed JSON"):
        classify(tmp_path, train_file=str(tmp_path / "bad.jsonl")).load_split("train")
    (tmp_path / "reg.csv").write_text("text,label\na,high\n")
    with pytest.raises(ValueError, match=r"reg\.csv, line 2: regression label 'high' is not a number"):
        classify(tmp_path, train_file=str(tmp_path / "reg.csv"), problem_type="regression").load_split("train")
    with pytest.raises(ValueError, match="problem_type='multiclass' must be one of"):
        classify(tmp_path, train_file=str(train), problem_type="multiclass")


# ---------------------------------------------------------------------------------------------- configs
def test_configs_build_their_tasks():
    import classify as classify_config
    import glue as glue_config
    import ner as ner_config
    import swag as swag_config

    c = glue_config.get_config("task=mrpc")
    assert (c.data.global_batch_size, c.optim.learning_rate, c.num_epochs, c.optim.warmup_fraction,
            c.data.max_seq_length) == (32, 2e-5, 3.0, 0.1, 128)
    assert GlueTask(c.task).glue_task == "mrpc"
    with pytest.raises(ValueError, match="needs task="):
        glue_config.get_config("")
    assert NerTask(ner_config.get_config().task).metric_for_best == "f1"
    assert SwagTask(swag_config.get_config().task).head == "multiple_choice"
    c = classify_config.get_config("problem_type=regression")
    c.task.train_file = "x.csv"
    assert TextClassificationTask(c.task).num_labels() == 1


# ---------------------------------------------------------------------------------------------- heads
def test_features_fit_their_heads(conll_dir, swag_dir, glue_dirs, tokenizer, tmp_path):
    """Each task's features and labels go straight into its head (tiny model, eager apply): logits have the
    shape postprocess expects, and the token-classification loss is the cross-entropy over labelled first
    pieces only (-100 ignored)."""
    import jax

    import bert_jax

    def run(head_cls, task, features, **config):
        cfg = bert_jax.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=37, max_position_embeddings=SEQ,
                                  num_labels=task.num_labels(), problem_type=task.problem_type(), **config)
        model = head_cls(cfg)
        batch = {**features.inputs, **features.labels}
        out = model.apply(model.init(jax.random.PRNGKey(0), **batch), **batch)
        assert np.isfinite(float(out.loss))
        return np.asarray(out.logits), float(out.loss)

    ner = NerTask(task_config(data_dir=str(conll_dir)))
    train = ner.load_split("train")
    features = ner.featurize(train, tokenizer, SEQ, "train")
    logits, loss = run(bert_jax.BertForTokenClassification, ner, features)
    assert logits.shape == (3, SEQ, ner.num_labels())
    labels = features.labels["labels"]
    keep = labels >= 0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    reference = -np.take_along_axis(log_probs, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep].mean()
    assert loss == pytest.approx(reference, rel=1e-5)
    assert len(ner.postprocess({"logits": logits}, features, train)) == 3

    swag = SwagTask(task_config(data_dir=str(swag_dir)))
    train = swag.load_split("train")
    logits, _ = run(bert_jax.BertForMultipleChoice, swag, swag.featurize(train, tokenizer, SEQ, "train"))
    assert logits.shape == (2, 4)

    stsb = glue("stsb", glue_dirs / "STS-B")
    train = stsb.load_split("train")
    logits, _ = run(bert_jax.BertForSequenceClassification, stsb, stsb.featurize(train, tokenizer, SEQ, "train"))
    assert logits.shape == (2, 1) and stsb.postprocess({"logits": logits}, None, train).shape == (2,)

    rows = [{"text": "the cat", "tags": ["animal", "pet"]}, {"text": "paris", "tags": ["city"]}]
    (tmp_path / "ml.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    multi = classify(tmp_path, train_file=str(tmp_path / "ml.jsonl"), label_column="tags",
                     problem_type="multi_label")
    train = multi.load_split("train")
    logits, _ = run(bert_jax.BertForSequenceClassification, multi, multi.featurize(train, tokenizer, SEQ, "train"))
    assert logits.shape == (2, 3)
