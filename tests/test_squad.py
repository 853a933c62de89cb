"""SQuAD v1.1 / v2.0: official metric definitions, windows and labels, post-processing, readers.

Expected metric values are worked out by hand from the definitions in the official evaluation scripts
(evaluate-v1.1.py / evaluate-v2.0.py). Windows use a handwritten WordPiece vocab whose context words
w0..w59 are one token each, so word k of a context sits at a known token position in every window.
"""

import json
import os
import sys
import time

import numpy as np
import pytest

from bert_jax.tasks import squad
from bert_jax.tasks.squad import SquadExample, SquadTask
from bert_jax.tokenization import BertTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ".", ",", "!", "what", "is", "the", "a", "who",
          "run", "##ning", "##s", "paris", "seine", "river", "london"] + [f"w{i}" for i in range(60)])


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return BertTokenizer.from_vocab(str(vocab_dir / "vocab.txt"))


def words(n, start=0):
    return " ".join(f"w{i}" for i in range(start, start + n))


def span(context, first, last):
    """SquadExample answer fields for words [first, last] of `context` (words separated by one space)."""
    tokens = context.split(" ")
    start = sum(len(t) + 1 for t in tokens[:first])
    text = " ".join(tokens[first:last + 1])
    assert context[start:start + len(text)] == text
    return (text,), (start,)


def example(qid, context, first=None, last=None, question="what is w3 ?", **kw):
    answers, starts = span(context, first, last) if first is not None else ((), ())
    return SquadExample(qid=qid, question=question, context=context, answers=answers, answer_starts=starts, **kw)


# ------------------------------------------------------------------------------------ normalisation / F1
@pytest.mark.parametrize("text,expected", [
    ("The  Cat!", "cat"),
    ("An apple, a pear & the plum.", "apple pear plum"),
    ("theater athens another", "theater athens another"),  # articles only as whole words
    ("A-B U.S.", "ab us"),  # punctuation is deleted, not replaced by a space
    ("Café “Noir” — ÜBER", "café “noir” — über"),  # only ASCII punctuation is removed
    ("the élan theélan", "élan theélan"),  # \b is Unicode-aware: 'theélan' is one word
    ("\tthe\u00a0cat\n", "cat"),  # str.split() splits on Unicode whitespace (no-break space)
    ("", ""), ("  the  ", ""),
])
def test_normalize_answer(text, expected):
    assert squad.normalize_answer(text) == expected


@pytest.mark.parametrize("prediction,gold,v1,v2", [
    ("the cat sat", "a cat sat down", 0.8, 0.8),  # P=2/2, R=2/3
    ("cat cat cat", "cat", 0.5, 0.5),  # bags: only one 'cat' matches, P=1/3, R=1
    ("Paris", "paris!", 1.0, 1.0),
    ("London", "Paris", 0.0, 0.0),
    ("", "", 0.0, 1.0),  # v1.1: no common token -> 0; v2.0: both empty -> 1
    ("the", "a", 0.0, 1.0),  # both normalise to ""
    ("", "Paris", 0.0, 0.0),
    ("Paris", "", 0.0, 0.0),
])
def test_f1_edge_cases(prediction, gold, v1, v2):
    assert squad.f1_score(prediction, gold, 1) == pytest.approx(v1, abs=1e-12)
    assert squad.f1_score(prediction, gold, 2) == pytest.approx(v2, abs=1e-12)


def test_exact_match_edge_cases():
    assert squad.exact_match("The Denver Broncos.", "denver broncos") == 1
    assert squad.exact_match("", "the") == 1  # both normalise to ""
    assert squad.exact_match("Denver", "Denver Broncos") == 0


def _qa(qid, answers, context="c"):
    return SquadExample(qid=qid, question="q?", context=context, answers=tuple(answers),
                        answer_starts=(0,) * len(answers), is_impossible=not answers)


def test_evaluate_v1_max_over_golds_and_missing_predictions():
    examples = [_qa("q1", ["Denver Broncos", "The Denver Broncos"]), _qa("q2", ["1990s"]), _qa("q3", ["Paris"])]
    predictions = {"q1": "denver broncos!", "q2": "the 1990s decade"}  # q3 unanswered: scores 0
    # q1: EM 1, F1 1; q2: EM 0, F1: P=1/2, R=1 -> 2/3; q3: 0.
    result = squad.evaluate(predictions, examples, version=1)
    assert result == pytest.approx({"exact_match": 100 / 3, "f1": 100 * (1 + 2 / 3) / 3}, abs=1e-9)


def test_evaluate_v2_breakdown():
    examples = [_qa("q1", ["Paris"]), _qa("q2", ["the Seine river"]), _qa("q3", []), _qa("q4", []),
                _qa("q5", ["the"])]  # q5 has an answer that normalises to "": its gold becomes [""]
    predictions = {"q1": "Paris", "q2": "Seine", "q3": "", "q4": "London", "q5": ""}
    # exact: 1, 0, 1, 0, 1; f1: 1, 2/3 (P=1, R=1/2), 1, 0, 1
    result = squad.evaluate(predictions, examples, version=2)
    assert result == pytest.approx({
        "exact": 60.0, "f1": 100 * (3 + 2 / 3) / 5, "total": 5,
        "HasAns_exact": 200 / 3, "HasAns_f1": 100 * (2 + 2 / 3) / 3, "HasAns_total": 3,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}, abs=1e-9)
    only_answerable = squad.evaluate({"q1": "Paris"}, examples[:1], version=2)
    assert "NoAns_total" not in only_answerable and only_answerable["HasAns_total"] == 1


def test_evaluate_v2_best_threshold():
    examples = [_qa("q1", ["Paris"]), _qa("q2", ["the Seine river"]), _qa("q3", []), _qa("q4", [])]
    best_non_null = {"q1": "Paris", "q2": "Seine", "q3": "Eiffel", "q4": "London"}
    null_odds = {"q1": -2.0, "q2": 0.5, "q3": 1.0, "q4": 0.7}
    # find_best_thresh (F1): start at 2 (the no-answer questions), then by rising odds q1 +1 -> 3,
    # q2 +2/3 -> 3.67 (best, at 0.5), q4 -1, q3 -1. Exact: q1 -> 3 (best, at -2), q2 +0, q4 -1, q3 -1.
    answers = {q: "" if null_odds[q] > 0.0 else t for q, t in best_non_null.items()}
    result = squad.evaluate(answers, examples, 2, null_odds=null_odds, best_non_null=best_non_null)
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4) and result["best_f1_thresh"] == 0.5
    assert result["best_exact"] == pytest.approx(75.0) and result["best_exact_thresh"] == -2.0
    # Predicting with the best threshold reproduces best_f1.
    at_best = {q: "" if null_odds[q] > 0.5 else t for q, t in best_non_null.items()}
    assert squad.evaluate(at_best, examples, 2)["f1"] == pytest.approx(result["best_f1"])
    assert result["f1"] == pytest.approx(100 * (1 + 1 + 1) / 4)  # q1 answered, q2 "" (0), q3/q4 "" (1 each)


# ------------------------------------------------------------------------------------- windows / labels
# max_seq 24, question 'what is w3 ?' (4 tokens): 17 context tokens per window, overlap 5 -> windows start
# every 12 words: [w0..w16], [w12..w28], [w24..w39]; context token k of a window sits at index 6 + k.
SEQ, STRIDE, QLEN = 24, 5, 6
CONTEXT = words(40)


def featurize(tok, examples, train=True, **kw):
    args = dict(doc_stride=STRIDE, max_query_length=QLEN, labels=True, drop_misaligned=train)
    return squad.featurize_squad(examples, tok, SEQ, **{**args, **kw})


def labels_of(features):
    return list(zip(features.labels["start_positions"].tolist(), features.labels["end_positions"].tolist()))


@pytest.mark.parametrize("first,last,expected", [
    (15, 16, [(21, 22), (9, 10), (0, 0)]),  # ends on window 0's last token; also inside window 1
    (16, 17, [(0, 0), (10, 11), (0, 0)]),  # crosses window 0's end: only window 1 holds all of it
    (20, 22, [(0, 0), (14, 16), (0, 0)]),  # only in window 1
    (26, 28, [(0, 0), (20, 22), (8, 10)]),  # window 1's edge and window 2
    (38, 39, [(0, 0), (0, 0), (20, 21)]),  # the last, shorter window
    (0, 0, [(6, 6), (0, 0), (0, 0)]),  # first context token
])
def test_window_labels(tok, first, last, expected):
    features = featurize(tok, [example("q", CONTEXT, first, last)])
    assert len(features) == 3 and features.meta.example_index.tolist() == [0, 0, 0]
    assert labels_of(features) == expected
    window_words = [[f"w{k}" for k in range(12 * w, min(12 * w + 17, 40))] for w in range(3)]
    for w, (s, e) in enumerate(expected):
        tokens = tok.convert_ids_to_tokens(features.inputs["input_ids"][w])
        assert tokens[:6] == ["[CLS]", "what", "is", "w3", "?", "[SEP]"]
        assert tokens[6:6 + len(window_words[w])] == window_words[w]
        if s:  # decoded back through the offsets, the label is the answer
            o = features.meta.offsets[w]
            assert CONTEXT[o[s, 0]:o[e, 1]] == " ".join(f"w{k}" for k in range(first, last + 1))


def test_offsets_are_restricted_to_the_context(tok):
    features = featurize(tok, [example("q", CONTEXT, 1, 2)])
    offsets, ids = features.meta.offsets, features.inputs["input_ids"]
    in_context = offsets[..., 0] >= 0
    assert (features.inputs["token_type_ids"][in_context] == 1).all()
    assert not np.isin(ids[in_context], [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]).any()
    assert in_context.sum(axis=1).tolist() == [17, 17, 16]
    assert (offsets[~in_context] == -1).all()


def test_word_piece_answers_and_whitespace_around_gold(tok):
    context = "w1 running w2 w3"
    # 'running' -> run ##ning: the label covers both pieces; a gold with stray spaces is tightened.
    e1 = SquadExample("a", "who ?", context, answers=("running",), answer_starts=(3,))
    e2 = SquadExample("b", "who ?", context, answers=(" running w2 ",), answer_starts=(2,))
    # A gold right after a token with no space between ('w1,w2'): the ',' ending at its start is not in it.
    e3 = SquadExample("c", "who ?", "w1,w2 w3", answers=("w2",), answer_starts=(3,))
    features = featurize(tok, [e1, e2, e3])
    assert labels_of(features) == [(5, 6), (5, 7), (6, 6)]  # [CLS] who ? [SEP] w1 run ##ning w2 / w1 , w2
    assert tok.convert_ids_to_tokens(features.inputs["input_ids"][0][5:7]) == ["run", "##ning"]
    # Whitespace around a gold at a window edge does not push it out of the window.
    (text,), (start,) = span(CONTEXT, 15, 16)
    trailing = SquadExample("t", "what is w3 ?", CONTEXT, answers=(text + " ",), answer_starts=(start,))
    (text,), (start,) = span(CONTEXT, 12, 13)
    leading = SquadExample("l", "what is w3 ?", CONTEXT, answers=(" " + text,), answer_starts=(start - 1,))
    assert labels_of(featurize(tok, [trailing, leading])) == [(21, 22), (9, 10), (0, 0), (18, 19), (6, 7), (0, 0)]


def test_impossible_and_misaligned_examples(tok):
    impossible = SquadExample("n", "who ?", CONTEXT, is_impossible=True)
    misaligned = SquadExample("m", "who ?", CONTEXT, answers=("w9",), answer_starts=(0,))  # 'w0' is there
    good = example("g", CONTEXT, 3, 3)
    train = featurize(tok, [impossible, misaligned, good])
    assert sorted(set(train.meta.example_index.tolist())) == [0, 2]  # the misaligned example is skipped
    assert all(lab == (0, 0) for lab, i in zip(labels_of(train), train.meta.example_index) if i == 0)
    evaluation = featurize(tok, [impossible, misaligned, good], train=False)
    assert sorted(set(evaluation.meta.example_index.tolist())) == [0, 1, 2]  # eval keeps every question


def test_long_question_is_truncated_to_max_query_length(tok):
    long_question = "what is the running w1 w2 w3 w4 w5 ?"  # what is the run ##ning w1 ...
    features = featurize(tok, [example("q", CONTEXT, 30, 31, question=long_question)], max_query_length=4)
    tokens = tok.convert_ids_to_tokens(features.inputs["input_ids"][0])
    assert tokens[:6] == ["[CLS]", "what", "is", "the", "run", "[SEP]"]  # cut inside 'running'
    assert squad.truncate_questions([long_question], tok, 5) == ["what is the running"]
    # 4 question tokens leave 17 context tokens per window, like the 4-token question above.
    assert labels_of(features) == [(0, 0), (0, 0), (12, 13)]


def test_max_context(tok):
    features = featurize(tok, [example("q", CONTEXT, 3, 3)])
    max_context, offsets = features.meta.max_context, features.meta.offsets
    # Each context word has its max context in exactly one window.
    word_of = lambda w, i: int(CONTEXT[offsets[w, i, 0]:offsets[w, i, 1]][1:])
    owners = {}
    for w, i in zip(*np.nonzero(max_context)):
        assert word_of(w, i) not in owners
        owners[word_of(w, i)] = int(w)
    assert sorted(owners) == list(range(40))
    # google-research's score min(left, right) + 0.01 * length: word 14 is position 14 of window 0
    # (min(14, 2) = 2) and position 2 of window 1 (min(2, 14) = 2): the tie goes to window 0. Word 15:
    # 1 in window 0, 3 in window 1. Word 26: 2 + 0.17 at position 14 of window 1 (17 tokens) beats
    # 2 + 0.16 at position 2 of window 2 (16 tokens).
    assert owners[14] == 0 and owners[15] == 1 and owners[26] == 1 and owners[27] == 2
    assert not max_context[offsets[..., 0] < 0].any()


def test_windows_match_transformers_fast_tokenizer(tok, vocab_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    examples = [example("a", CONTEXT, 20, 22), example("b", words(7), 1, 2, question="who is the w1 ?"),
                example("c", "w1 running w2 " + words(30, 3), 1, 1, question="what is the running w1 w2 w3 ?")]
    features = featurize(tok, examples)
    questions = squad.truncate_questions([e.question for e in examples], tok, QLEN)
    reference = hf(questions, [e.context for e in examples], truncation="only_second", max_length=SEQ, stride=STRIDE,
                   return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    np.testing.assert_array_equal(features.inputs["input_ids"], np.asarray(reference["input_ids"]))
    np.testing.assert_array_equal(features.inputs["token_type_ids"], np.asarray(reference["token_type_ids"]))
    np.testing.assert_array_equal(features.meta.example_index, np.asarray(reference["overflow_to_sample_mapping"]))
    hf_context = np.asarray([[s == 1 for s in reference.sequence_ids(w)] for w in range(len(features))])
    hf_offsets = np.where(hf_context[..., None], np.asarray(reference["offset_mapping"]), -1)
    np.testing.assert_array_equal(features.meta.offsets, hf_offsets)


def test_featurize_rejects_a_stride_that_does_not_fit(tok):
    with pytest.raises(ValueError, match="doc_stride"):
        featurize(tok, [example("q", CONTEXT, 1, 1)], doc_stride=15)


# ------------------------------------------------------------------------------------- post-processing
def synthetic_logits(features, spans, null=None):
    """Start/end logits 0 (CLS: `null[w]` each) with `spans` {(window, start, end): logit each}."""
    start = np.zeros(features.meta.offsets.shape[:2])
    end = np.zeros_like(start)
    for (w, s, e), value in spans.items():
        start[w, s], end[w, e] = value, value
    if null is not None:
        start[:, 0], end[:, 0] = null, null
    return start, end


def test_postprocess_picks_the_best_valid_span(tok):
    features = featurize(tok, [example("q", CONTEXT, 20, 22)], train=False)
    start, end = synthetic_logits(features, {(1, 14, 16): 5.0})
    start[0, 2], end[0, 23] = 9.0, 9.0  # a question token and [SEP]: not in the context
    start[0, 6], end[0, 20] = 4.0, 4.0  # w0..w14: 15 tokens, longer than max_answer_length
    start[2, 16], end[2, 12] = 8.0, 8.0  # end before start
    predictions = squad.postprocess_squad(start, end, features.meta, [example("q", CONTEXT, 20, 22)], version=1,
                                          n_best_size=5, max_answer_length=10)
    assert predictions.answers == {"q": "w20 w21 w22"}
    # Only the top-5 start and end positions of each window are tried (positions 0..3 hold the remaining
    # 0 logits and are not context), so the one valid span is the whole n-best list.
    assert predictions.nbest["q"] == [{"text": "w20 w21 w22", "probability": 1.0, "start_logit": 5.0,
                                       "end_logit": 5.0}]
    assert predictions.null_odds is None


@pytest.mark.parametrize("seed,use_max_context", [(0, True), (1, True), (2, False), (3, False)])
def test_postprocess_matches_brute_force(tok, seed, use_max_context):
    """With n_best_size = seq every token is a candidate, so the n-best list must be every valid span over
    all windows (in the context, end >= start, <= max_answer_length tokens, start in its max-context
    window), best first, de-duplicated by text (without max context, spans in the overlaps repeat)."""
    ex = example("q", CONTEXT, 20, 22)
    features = featurize(tok, [ex], train=False)
    rng = np.random.default_rng(seed)
    start, end = rng.normal(size=(2,) + features.meta.offsets.shape[:2])
    meta = features.meta
    spans = []
    for w in range(len(features)):
        for s in range(SEQ):
            for e in range(s, min(s + 4, SEQ)):
                if meta.offsets[w, s, 0] >= 0 and meta.offsets[w, e, 0] >= 0 and \
                        (meta.max_context[w, s] or not use_max_context):
                    spans.append((start[w, s] + end[w, e], CONTEXT[meta.offsets[w, s, 0]:meta.offsets[w, e, 1]]))
    spans.sort(key=lambda x: -x[0])
    expected, seen = [], set()
    for score, text in spans:
        if text not in seen and len(expected) < 7:
            seen.add(text)
            expected.append((score, text))
    predictions = squad.postprocess_squad(start, end, meta, [ex], version=1, n_best_size=SEQ, max_answer_length=4,
                                          use_max_context=use_max_context)
    assert len({n["text"] for n in predictions.nbest["q"]}) == len(predictions.nbest["q"]) == SEQ
    nbest = predictions.nbest["q"][:7]
    assert [n["text"] for n in nbest] == [t for _, t in expected]
    np.testing.assert_allclose([n["start_logit"] + n["end_logit"] for n in nbest], [s for s, _ in expected])
    assert predictions.answers["q"] == expected[0][1]


def test_postprocess_respects_max_context(tok):
    ex = example("q", CONTEXT, 20, 22)
    features = featurize(tok, [ex], train=False)
    # w13..w14 in window 1 (positions 1..2): word 13's max context is window 0, so the span only counts there.
    start, end = synthetic_logits(features, {(1, 7, 8): 9.0, (1, 14, 16): 5.0})
    run = lambda use: squad.postprocess_squad(start, end, features.meta, [ex], version=1, use_max_context=use)
    assert run(True).answers["q"] == "w20 w21 w22"
    assert run(False).answers["q"] == "w13 w14"


def test_postprocess_v2_null_threshold(tok):
    ex = example("q", CONTEXT, 20, 22)
    features = featurize(tok, [ex], train=False)
    start, end = synthetic_logits(features, {(1, 14, 16): 5.0}, null=np.array([3.0, 1.0, 4.0]))
    run = lambda thr: squad.postprocess_squad(start, end, features.meta, [ex], version=2,
                                              null_score_diff_threshold=thr)
    predicted = run(0.0)  # null score = min(6, 2, 8) = 2; best span 10 -> odds -8
    assert predicted.answers["q"] == "w20 w21 w22" and predicted.null_odds["q"] == pytest.approx(-8.0)
    assert "" in [n["text"] for n in predicted.nbest["q"]]
    start[:, 0], end[:, 0] = 6.0, 6.0  # null score 12 -> odds 2
    assert run(0.0).answers["q"] == "" and run(0.0).null_odds["q"] == pytest.approx(2.0)
    assert run(0.0).best_non_null["q"] == "w20 w21 w22"
    assert run(2.0).answers["q"] == "w20 w21 w22"  # "" only when the odds exceed the threshold
    assert run(2.5).answers["q"] == "w20 w21 w22" and run(1.9).answers["q"] == ""


# ------------------------------------------------------------------------------------ task end to end
def squad_json(paragraphs, version):
    qas_key = lambda qa: {k: v for k, v in qa.items() if version == 2 or k != "is_impossible"}
    return {"version": f"{version}", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [qas_key(qa) for qa in qas]} for c, qas in paragraphs]}]}


def make_paragraphs(version):
    c1, c2 = CONTEXT, "w1 running w2 " + words(30, 3)

    def qa(qid, context, first, last, question="what is w3 ?"):
        (text,), (start,) = span(context, first, last)
        return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}],
                "is_impossible": False}
    qas1 = [qa("a", c1, 20, 22), qa("b", c1, 15, 16, "who is the w1 ?"), qa("c", c1, 38, 39)]
    qas2 = [qa("d", c2, 1, 1), qa("e", c2, 25, 27, "what is the running w1 w2 w3 w4 w5 w6 w7 ?")]
    if version == 2:
        qas2.append({"id": "f", "question": "who ?", "answers": [], "is_impossible": True,
                     "plausible_answers": [{"text": "w2", "answer_start": 11}]})
    return [(c1, qas1), (c2, qas2)]


def task_config(**kw):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import squad as squad_config  # configs/squad.py
    c = squad_config.get_config(f"version={kw.pop('version', 1)}")
    c.task.update(dict(doc_stride=STRIDE, max_query_length=QLEN, **kw))
    return c.task


@pytest.mark.parametrize("version", [1, 2])
def test_task_round_trip_from_files(tok, tmp_path, version):
    train, dev = squad.DEFAULT_FILES[version]
    for name in (train, dev):
        (tmp_path / name).write_text(json.dumps(squad_json(make_paragraphs(version), version)))
    task = SquadTask(task_config(version=version, data_dir=str(tmp_path), max_train_examples=-1))
    assert task.head == "question_answering" and task.metric_for_best == "f1"
    examples = task.load_split("train")
    assert [e.qid for e in examples] == list("abcde" + ("f" if version == 2 else ""))
    features = task.featurize(examples, tok, SEQ, split="train")
    assert features.inputs["input_ids"].shape == (len(features), SEQ)
    # Every answerable question has a window whose labels decode (through the offsets) to its answer.
    decoded = {}
    for f, (s, e) in enumerate(labels_of(features)):
        ex = examples[features.meta.example_index[f]]
        if s:
            o = features.meta.offsets[f]
            decoded.setdefault(ex.qid, set()).add(squad.normalize_answer(ex.context[o[s, 0]:o[e, 1]]))
        else:
            assert e == 0
    assert decoded == {e.qid: {squad.normalize_answer(e.answers[0])} for e in examples if e.answers}
    # Oracle logits (1 at the labels) give back every gold answer, "" for the unanswerable one.
    start = np.eye(SEQ)[features.labels["start_positions"]]
    end = np.eye(SEQ)[features.labels["end_positions"]]
    predictions = task.postprocess({"start_logits": start, "end_logits": end}, features, examples)
    assert predictions.answers == {e.qid: e.answers[0] if e.answers else "" for e in examples}
    metrics = task.metrics(predictions, examples)
    assert metrics["f1"] == pytest.approx(100.0)
    assert metrics[{1: "exact_match", 2: "exact"}[version]] == pytest.approx(100.0)
    if version == 2:
        assert metrics["HasAns_total"] == 5 and metrics["NoAns_total"] == 1 and metrics["best_f1"] == 100.0
    path = tmp_path / "out" / "predictions_validation.json"
    task.write_predictions(predictions, examples, str(path))
    assert json.loads(path.read_text()) == predictions.answers
    nbest = json.loads((tmp_path / "out" / "nbest_predictions_validation.json").read_text())
    assert nbest["a"][0]["text"] == "w20 w21 w22"
    assert (tmp_path / "out" / "null_odds_predictions_validation.json").exists() == (version == 2)
    assert task.metrics(json.loads(path.read_text()), examples) == pytest.approx(
        {k: v for k, v in metrics.items() if not k.startswith("best")})
    capped = SquadTask(task_config(version=version, data_dir=str(tmp_path), max_eval_examples=2))
    assert [e.qid for e in capped.load_split("validation")] == ["a", "b"]


def test_reader_errors(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    read = lambda version=1: squad.read_squad_json(str(path), version)
    with pytest.raises(FileNotFoundError, match="dev-v1.1.json"):
        read()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read()
    path.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(ValueError, match="'data' list"):
        read()
    paragraphs = make_paragraphs(2)
    path.write_text(json.dumps(squad_json(paragraphs, 2)))
    with pytest.raises(ValueError, match="is_impossible.*version=2"):
        read(1)
    paragraphs[0][1][0]["answers"][0]["answer_start"] = 10_000
    path.write_text(json.dumps(squad_json(paragraphs, 2)))
    with pytest.raises(ValueError, match="qas\\[0\\].*'a'.*outside its context"):
        read(2)
    paragraphs = make_paragraphs(1)
    paragraphs[1][1][0]["answers"] = []
    path.write_text(json.dumps(squad_json(paragraphs, 1)))
    with pytest.raises(ValueError, match="'d' has no answers"):
        read(1)
    with pytest.raises(ValueError, match="version=3"):
        SquadTask({"version": 3})


# ---------------------------------------------------------------------------------------------- tfds
@pytest.fixture(scope="module")
def tiny_tfds_squad(tmp_path_factory):
    """The real tfds SQuAD builder's v2.0 config (features, example generator) prepared as ArrayRecord from
    local JSON files under another name, without TensorFlow or network."""
    import tensorflow_datasets as tfds
    json_dir = tmp_path_factory.mktemp("squad_json")
    for name in squad.DEFAULT_FILES[2]:
        (json_dir / name).write_text(json.dumps(squad_json(make_paragraphs(2), 2)))

    class BertJaxTinySquad(tfds.builder_cls("squad")):
        __module__ = "bert_jax_tiny_squad"  # one part: tfds looks up code resources for dotted names

        def _info(self):  # the real feature spec, without the release metadata files
            return tfds.core.DatasetInfo(builder=self, features=super()._info().features)

        def _split_generators(self, dl_manager):
            config = self.builder_config
            return {"train": self._generate_examples(str(json_dir / config.train_file)),
                    "validation": self._generate_examples(str(json_dir / config.dev_file))}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    BertJaxTinySquad(config="v2.0", data_dir=data_dir, file_format="array_record").download_and_prepare()
    return str(json_dir), data_dir


def test_tfds_source_reads_the_same_examples_as_the_files(tiny_tfds_squad):
    json_dir, data_dir = tiny_tfds_squad
    from_files = SquadTask(task_config(version=2, data_dir=json_dir)).load_split("validation")
    tfds_task = SquadTask(task_config(version=2, data_dir=data_dir, source="tfds",
                                      tfds_name="bert_jax_tiny_squad/v2.0"))
    from_tfds = tfds_task.load_split("validation")
    key = lambda e: e.qid
    assert sorted(from_tfds, key=key) == sorted(from_files, key=key)  # tfds shuffles the records
    assert len(tfds_task.load_split("train")) == 6
    tfds_task.settings["max_train_examples"] = 2
    assert len(tfds_task.load_split("train")) == 2


def test_tfds_not_prepared_fails_fast(tmp_path):
    from bert_jax.data.sources import DatasetNotPreparedError
    task = SquadTask(task_config(version=1, source="tfds", data_dir=str(tmp_path)))
    started = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError, match="squad/v1.1.*download_and_prepare"):
        task.load_split("train")
    assert time.perf_counter() - started < 60  # a download attempt would retry for minutes
    assert not any(tmp_path.iterdir())


def test_features_feed_the_question_answering_head(tok):
    """The contract with the loop: the head takes `inputs` + `labels` as they are, and its logits go back
    through `postprocess`."""
    import jax
    import bert_jax

    ex = [example("a", CONTEXT, 20, 22), example("b", words(7), 1, 2)]
    features = featurize(tok, ex)
    config = bert_jax.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=SEQ)
    model = bert_jax.BertForQuestionAnswering(config)
    batch = features.take(np.arange(len(features)))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), **features.inputs)
    out = jax.jit(model.apply)(params, **batch)
    assert out.start_logits.shape == out.end_logits.shape == (len(features), SEQ)
    assert np.isfinite(float(out.loss)) and float(out.loss) > 0
    predictions = squad.postprocess_squad(np.asarray(out.start_logits), np.asarray(out.end_logits), features.meta,
                                          ex, version=2)
    assert set(predictions.answers) == {"a", "b"} and set(predictions.null_odds) == {"a", "b"}
