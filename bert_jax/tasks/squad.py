"""SQuAD v1.1 / v2.0 extractive question answering.

    python -m bert_jax.main --config=configs/squad.py:version=2 --config.task.data_dir=DIR \
        --config.init_from=HF_BERT_DIR --workdir=WORKDIR

Pipeline (the reference is google-research/bert `run_squad.py`; HF `run_qa.py` where it differs):

* Examples: the official JSON (data -> paragraphs -> qas, `is_impossible` in v2.0) or tfds
  `squad/v1.1` / `squad/v2.0` prepared locally (read through `tfds.data_source`, never downloaded).
* Features: `[CLS] question [SEP] context window [SEP]`, the question cut to `max_query_length` word
  pieces, the context split into windows by the tokenizer's overflow. `doc_stride` is the number of
  context tokens two consecutive windows share (the tokenizer's `stride`, as in HF run_qa; in
  google-research it is the step between window starts). Training labels are the first and last
  context tokens that overlap the answer's characters when the whole answer lies in the window, else
  [CLS] (index 0), as for v2.0's unanswerable questions. `SquadMeta` keeps per window the example it
  came from, character offsets of its context tokens, and which tokens have their maximum context in it.
* Post-processing: per example, the n-best spans over all its windows (top `n_best_size` start and end
  logits, end >= start, at most `max_answer_length` tokens, both in the context, start in its
  max-context window), their text sliced from the original context. v2.0: the null score is the
  smallest `start[0] + end[0]` over the windows; the answer is "" when null score minus the best span
  score exceeds `null_score_diff_threshold`.
* Metrics: exact match and F1 as the official evaluation scripts define them (`squad_metrics.py`:
  `normalize_answer`, `evaluate`), with v2.0's HasAns/NoAns breakdown and the best null-odds
  threshold on this split.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import logging

from bert_jax.tasks import readers
from bert_jax.tasks.base import Features, Task
from bert_jax.tasks.squad_metrics import evaluate, exact_match, f1_score, normalize_answer  # noqa: F401  (API)

DEFAULT_FILES = {1: ("train-v1.1.json", "dev-v1.1.json"), 2: ("train-v2.0.json", "dev-v2.0.json")}
TFDS_NAMES = {1: "squad/v1.1", 2: "squad/v2.0"}
SPLITS = ("train", "validation")
# Defaults of config.task (google-research run_squad / BERT paper); configs/squad.py sets the same.
DEFAULTS = dict(version=1, data_dir="", train_file="", dev_file="", source="", tfds_name="",
                max_query_length=64, doc_stride=128, n_best_size=20, max_answer_length=30,
                null_score_diff_threshold=0.0, use_max_context=True, max_train_examples=-1,
                max_eval_examples=-1)
_CHUNK = 1024  # examples tokenized per tokenizer call (bounds the memory of the Encoding objects)


# ------------------------------------------------------------------------------------------- examples
@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question about one context. `answers`/`answer_starts`: gold answer texts and their character
    starts in `context` (several on dev sets; empty for v2.0's unanswerable questions)."""

    qid: str
    question: str
    context: str
    answers: tuple = ()
    answer_starts: tuple = ()
    is_impossible: bool = False
    title: str = ""


def _example(qid, question, context, answers, answer_starts, is_impossible, title, where: str,
             version: int) -> SquadExample:
    if not qid:
        raise ValueError(f"{where}: question without an id")
    if not isinstance(context, str) or not context.strip():
        raise ValueError(f"{where}: question {qid!r} has an empty context")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: question {qid!r} has an empty question text")
    if len(answers) != len(answer_starts):
        raise ValueError(f"{where}: question {qid!r} has {len(answers)} answer texts but {len(answer_starts)} "
                         f"answer starts")
    for text, start in zip(answers, answer_starts):
        if not 0 <= start <= len(context) - len(text):
            raise ValueError(f"{where}: question {qid!r}: answer {text!r} starts at character {start}, outside its "
                             f"context of {len(context)} characters")
    if is_impossible and version == 1:
        raise ValueError(f"{where}: question {qid!r} is marked is_impossible, which SQuAD v1.1 has no notion of; "
                         f"set config.task.version=2")
    if not answers and not is_impossible:
        hint = " (or mark it is_impossible with version=2)" if version == 1 else " and is not marked is_impossible"
        raise ValueError(f"{where}: question {qid!r} has no answers{hint}")
    return SquadExample(qid=qid, question=question, context=context, answers=tuple(answers),
                        answer_starts=tuple(int(s) for s in answer_starts),
                        is_impossible=bool(is_impossible), title=title)


def read_squad_json(path: str, version: int) -> List[SquadExample]:
    """Examples of an official SQuAD JSON file (`{"data": [{"title", "paragraphs": [{"context", "qas":
    [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`). v2.0
    unanswerable questions keep no answers (their `plausible_answers` are not gold)."""
    path = readers.require_file(path, "SQuAD JSON file")
    with open(path, encoding="utf-8") as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise readers.not_utf8(path, e) from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise ValueError(f"{path} is not a SQuAD file: expected a JSON object with a 'data' list of articles")
    examples, seen = [], set()
    for a, article in enumerate(dataset["data"]):
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise ValueError(f"{path}: data[{a}] has no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or "context" not in paragraph or "qas" not in paragraph:
                raise ValueError(f"{where} needs 'context' and 'qas'")
            for q, qa in enumerate(paragraph["qas"]):
                missing = [k for k in ("id", "question", "answers") if k not in qa]
                if missing:
                    raise ValueError(f"{where}.qas[{q}] has no {missing}")
                try:
                    texts = [answer["text"] for answer in qa["answers"]]
                    starts = [int(answer["answer_start"]) for answer in qa["answers"]]
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"{where}.qas[{q}]: every answer needs 'text' and an integer "
                                     f"'answer_start'") from None
                if qa["id"] in seen:
                    raise ValueError(f"{where}.qas[{q}]: duplicate question id {qa['id']!r}")
                seen.add(qa["id"])
                examples.append(_example(qa["id"], qa["question"], paragraph["context"], texts, starts,
                                         qa.get("is_impossible", False), title, f"{where}.qas[{q}]", version))
    if not examples:
        raise ValueError(f"{path} holds no questions")
    return examples


def read_squad_tfds(name: str, split: str, data_dir: str, version: int, limit: int = -1) -> List[SquadExample]:
    """Examples of a locally prepared tfds SQuAD split (`squad/v1.1`, `squad/v2.0`); `limit` >= 0 reads
    only the first `limit` records. Never downloads (an unprepared dataset raises DatasetNotPreparedError
    with the command that prepares it)."""
    records = readers.tfds_records(name, split if limit < 0 else f"{split}[:{limit}]", data_dir)
    examples = []
    for i, record in enumerate(records):
        answers = record.get("answers") or {}
        texts = [readers.as_str(t) for t in np.asarray(answers.get("text", []), dtype=object).reshape(-1)]
        starts = [int(s) for s in np.asarray(answers.get("answer_start", []), np.int64).reshape(-1)]
        is_impossible = bool(np.asarray(record.get("is_impossible", False)))
        examples.append(_example(readers.as_str(record["id"]), readers.as_str(record["question"]),
                                 readers.as_str(record["context"]), texts, starts, is_impossible,
                                 readers.as_str(record.get("title", "")), f"tfds {name} {split} record {i}", version))
    if not examples:
        raise ValueError(f"tfds {name} split {split!r} holds no questions")
    return examples


# ------------------------------------------------------------------------------------------- features
@dataclasses.dataclass
class SquadMeta:
    """What post-processing needs per window (feature); N windows of `seq` tokens.

    example_index: int32 [N], the example (index into the examples list) the window belongs to.
    offsets: int32 [N, seq, 2], character span [start, end) in the example's context of each context
        token; -1 for question, special and padding tokens.
    max_context: bool [N, seq], whether the window gives the token its most context (google-research's
        `token_is_max_context`: min(left, right) context + 0.01 * window length, first window on ties).
    """

    example_index: np.ndarray
    offsets: np.ndarray
    max_context: np.ndarray


def truncate_questions(questions: Sequence[str], tokenizer, max_query_length: int) -> List[str]:
    """Each question cut after its `max_query_length`-th word piece (at that piece's end character).

    Re-tokenizing the cut text gives exactly those pieces: WordPiece picks the longest vocabulary prefix
    of what is left of a word, and every piece kept ends at or before the cut."""
    encoded = tokenizer(list(questions), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for question, offsets in zip(questions, encoded["offset_mapping"]):
        out.append(question if len(offsets) <= max_query_length else question[:int(offsets[max_query_length - 1][1])])
    return out


def _max_context(offsets: np.ndarray, windows: np.ndarray, stride: int) -> np.ndarray:
    """token_is_max_context [len(windows), seq] for the consecutive windows of one example."""
    is_context = offsets[windows, :, 0] >= 0
    lengths = is_context.sum(axis=1)
    # The tokenizer cuts the context into windows starting every `room - stride` tokens (room: context
    # tokens in a full window); checked against the offsets so a change in its overflow rule is caught.
    step = int(lengths[0]) - stride if len(windows) > 1 else 0
    starts = np.arange(len(windows)) * step
    for k in range(1, len(windows)):
        previous = offsets[windows[k - 1]][is_context[k - 1]][step:]
        if not np.array_equal(previous, offsets[windows[k]][is_context[k]][:len(previous)]):
            raise ValueError("the tokenizer's overflowing windows do not overlap by `stride` context tokens; "
                             "cannot tell each token's max-context window")
    total = int(starts[-1] + lengths[-1])
    best_score = np.full(total, -np.inf)
    best_window = np.zeros(total, np.int64)
    for k, (start, length) in enumerate(zip(starts, lengths)):
        position = np.arange(length)
        score = np.minimum(position, length - 1 - position) + 0.01 * length
        better = score > best_score[start:start + length]  # strict: the first window wins ties
        best_score[start:start + length][better] = score[better]
        best_window[start:start + length][better] = k
    out = np.zeros(is_context.shape, bool)
    for k, (start, length) in enumerate(zip(starts, lengths)):
        out[k, np.nonzero(is_context[k])[0]] = best_window[start:start + length] == k
    return out


def answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple:
    """(start, end) token indices of the context tokens overlapping characters [start_char, end_char)
    when the window's context covers all of them, else (0, 0) ([CLS]). `offsets` [seq, 2], -1 outside
    the context."""
    context = np.nonzero(offsets[:, 0] >= 0)[0]
    if len(context) == 0 or offsets[context[0], 0] > start_char or offsets[context[-1], 1] < end_char:
        return 0, 0
    starts, ends = offsets[context, 0], offsets[context, 1]
    return int(context[np.nonzero(ends > start_char)[0][0]]), int(context[np.nonzero(starts < end_char)[0][-1]])


def _answer_chars(example: SquadExample) -> Optional[tuple]:
    """[start, end) characters of the first gold answer without surrounding whitespace; None when there is
    none (unanswerable)."""
    if example.is_impossible or not example.answers:
        return None
    text, start = example.answers[0], example.answer_starts[0]
    lead = len(text) - len(text.lstrip())
    return start + lead, start + len(text.rstrip())


def featurize_squad(examples: Sequence[SquadExample], tokenizer, max_seq_length: int, *, doc_stride: int,
                    max_query_length: int, labels: bool, drop_misaligned: bool = False) -> Features:
    """Windows of every example: inputs int32 [N, max_seq_length], labels `start_positions`/`end_positions`
    int32 [N] (when `labels`), meta `SquadMeta`.

    drop_misaligned: skip examples whose first answer's text is not the context at its `answer_start`
    (google-research skips them for training; they would teach a wrong span)."""
    if not examples:
        raise ValueError("no SQuAD examples to featurize")
    room = max_seq_length - max_query_length - 3  # [CLS] question [SEP] context [SEP]
    if max_query_length < 1 or room <= doc_stride:
        raise ValueError(f"max_seq_length={max_seq_length} leaves {room} context tokens after a question of up to "
                         f"max_query_length={max_query_length} tokens and 3 special tokens; doc_stride="
                         f"{doc_stride} (the overlap of consecutive windows) must be smaller")
    if drop_misaligned:
        kept = []
        for i, e in enumerate(examples):
            if e.answers and not e.is_impossible and \
                    e.context[e.answer_starts[0]:e.answer_starts[0] + len(e.answers[0])] != e.answers[0]:
                continue
            kept.append(i)
        if len(kept) < len(examples):
            logging.warning("SQuAD: skipping %d of %d examples whose answer text is not found at its answer_start",
                            len(examples) - len(kept), len(examples))
    else:
        kept = list(range(len(examples)))
    if not kept:
        raise ValueError("every example's answer text disagrees with its context at answer_start")

    parts = collections.defaultdict(list)
    for chunk_start in range(0, len(kept), _CHUNK):
        chunk = kept[chunk_start:chunk_start + _CHUNK]
        questions = truncate_questions([examples[i].question for i in chunk], tokenizer, max_query_length)
        encoded = tokenizer(questions, [examples[i].context for i in chunk], truncation="only_second",
                            max_length=max_seq_length, stride=doc_stride, padding="max_length",
                            return_overflowing_tokens=True, return_offsets_mapping=True,
                            return_special_tokens_mask=True)
        is_context = (encoded["token_type_ids"] == 1) & (encoded["special_tokens_mask"] == 0)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            parts[key].append(np.asarray(encoded[key], np.int32))
        parts["offsets"].append(np.where(is_context[..., None], encoded["offset_mapping"], -1).astype(np.int32))
        parts["example_index"].append(np.asarray(chunk, np.int32)[encoded["overflow_to_sample_mapping"]])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    offsets, example_index = arrays.pop("offsets"), arrays.pop("example_index")

    max_context = np.zeros(offsets.shape[:2], bool)
    boundaries = np.flatnonzero(np.diff(example_index)) + 1  # windows of one example are consecutive
    for windows in np.split(np.arange(len(example_index)), boundaries):
        max_context[windows] = _max_context(offsets, windows, doc_stride)

    label_arrays = {}
    if labels:
        spans = np.zeros((len(example_index), 2), np.int32)
        for f, i in enumerate(example_index):
            chars = _answer_chars(examples[i])
            if chars is not None:
                spans[f] = answer_token_span(offsets[f], *chars)
        label_arrays = {"start_positions": spans[:, 0], "end_positions": spans[:, 1]}
    return Features(inputs=arrays, labels=label_arrays,
                    meta=SquadMeta(example_index=example_index, offsets=offsets, max_context=max_context))


# -------------------------------------------------------------------------------------- post-processing
@dataclasses.dataclass
class SquadPredictions:
    """answers: {qid: predicted text} ("" = no answer, v2.0). nbest: {qid: [{"text", "probability",
    "start_logit", "end_logit"}]} best first. best_non_null: {qid: best non-empty span} and null_odds:
    {qid: null score - best span score} (v2.0 only; "" was predicted where null_odds > threshold)."""

    answers: Dict[str, str]
    nbest: Dict[str, List[dict]]
    best_non_null: Optional[Dict[str, str]] = None
    null_odds: Optional[Dict[str, float]] = None


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


def _window_candidates(start_logits, end_logits, offsets, max_context, n_best_size, max_answer_length,
                       use_max_context):
    """(scores, start, end) of the valid spans among the top-n start x top-n end tokens of one window, in
    google-research's order (starts by falling logit, then ends by falling logit)."""
    starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
    ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    s, e = np.meshgrid(starts, ends, indexing="ij")
    s, e = s.reshape(-1), e.reshape(-1)
    in_context = offsets[:, 0] >= 0
    valid = in_context[s] & in_context[e] & (e >= s) & (e - s + 1 <= max_answer_length)
    if use_max_context:
        valid &= max_context[s]
    s, e = s[valid], e[valid]
    return start_logits[s], end_logits[e], s, e


def postprocess_squad(start_logits: np.ndarray, end_logits: np.ndarray, meta: SquadMeta,
                      examples: Sequence[SquadExample], *, version: int, n_best_size: int = 20,
                      max_answer_length: int = 30, null_score_diff_threshold: float = 0.0,
                      use_max_context: bool = True) -> SquadPredictions:
    """Answers from `start_logits`/`end_logits` [N, seq] of every window (the features' order)."""
    start_logits, end_logits = np.asarray(start_logits, np.float64), np.asarray(end_logits, np.float64)
    n = len(meta.example_index)
    if start_logits.shape != end_logits.shape or start_logits.shape != meta.offsets.shape[:2]:
        raise ValueError(f"start_logits {start_logits.shape} and end_logits {end_logits.shape} must both be "
                         f"[num_features, seq] = {meta.offsets.shape[:2]}")
    windows_of = collections.defaultdict(list)
    for f in range(n):
        windows_of[int(meta.example_index[f])].append(f)
    answers, nbest_all, best_non_null, null_odds = {}, {}, {}, {}
    for i, example in enumerate(examples):
        candidates = []  # (score, start_logit, end_logit, text)
        null = None  # (score, start_logit, end_logit) of the window with the smallest null score
        for f in windows_of.get(i, ()):
            if version == 2:
                score = start_logits[f, 0] + end_logits[f, 0]
                if null is None or score < null[0]:
                    null = (score, start_logits[f, 0], end_logits[f, 0])
            s_logit, e_logit, s, e = _window_candidates(start_logits[f], end_logits[f], meta.offsets[f],
                                                        meta.max_context[f], n_best_size, max_answer_length,
                                                        use_max_context)
            chars = zip(meta.offsets[f, s, 0], meta.offsets[f, e, 1])
            candidates += [(a + b, a, b, example.context[c0:c1]) for a, b, (c0, c1) in zip(s_logit, e_logit, chars)]
        if null is not None:
            candidates.append((null[0], null[1], null[2], ""))
        candidates.sort(key=lambda c: -c[0])  # stable, like google-research's sorted(..., reverse=True)
        nbest, seen = [], set()
        for score, s_logit, e_logit, text in candidates:
            if len(nbest) >= n_best_size:
                break
            if text in seen:
                continue
            seen.add(text)
            nbest.append((score, s_logit, e_logit, text))
        if null is not None and "" not in seen:
            nbest.append((null[0], null[1], null[2], ""))
        # google-research and HF: a placeholder so there is always a non-null entry to choose from.
        if not nbest or (len(nbest) == 1 and nbest[0][3] == ""):
            nbest.insert(0, (0.0, 0.0, 0.0, "empty"))
        probabilities = _softmax(np.array([c[0] for c in nbest]))
        nbest_all[example.qid] = [dict(text=t, probability=float(p), start_logit=float(a), end_logit=float(b))
                                  for (_, a, b, t), p in zip(nbest, probabilities)]
        if version == 2:
            best = next(c for c in nbest if c[3])
            diff = float(null[0] - best[1] - best[2]) if null is not None else -np.inf
            best_non_null[example.qid], null_odds[example.qid] = best[3], diff
            answers[example.qid] = "" if diff > null_score_diff_threshold else best[3]
        else:
            answers[example.qid] = nbest[0][3]
    if version == 2:
        return SquadPredictions(answers, nbest_all, best_non_null, null_odds)
    return SquadPredictions(answers, nbest_all)


# ------------------------------------------------------------------------------------------------ task
class SquadTask(Task):
    """SQuAD v1.1 / v2.0 from `config.task` (fields and defaults: `DEFAULTS`; configs/squad.py)."""

    name = "squad"
    head = "question_answering"
    metric_for_best = "f1"
    metric_mode = "max"
    train_split = "train"
    eval_splits = ("validation",)
    predict_split = None  # the SQuAD test sets are hidden

    def __init__(self, config):
        super().__init__(config)
        get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        self.settings = {k: get(k, d) for k, d in DEFAULTS.items()}
        version = str(self.settings["version"]).strip()
        if version not in ("1", "1.1", "2", "2.0"):
            raise ValueError(f"config.task.version={self.settings['version']!r} must be 1 (SQuAD v1.1) or 2 (v2.0)")
        self.version = int(float(version))
        for key in ("max_query_length", "doc_stride", "n_best_size", "max_answer_length"):
            if int(self.settings[key]) < 1:
                raise ValueError(f"config.task.{key} must be a positive int, got {self.settings[key]!r}")

    # ---- data -------------------------------------------------------------------------------------
    def load_split(self, split: str) -> List[SquadExample]:
        split = {"dev": "validation"}.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"SQuAD has the splits {SPLITS}, not {split!r}")
        s = self.settings
        limit = int(s["max_train_examples"] if split == "train" else s["max_eval_examples"])
        if readers.use_tfds(self.config):
            name = s["tfds_name"] or TFDS_NAMES[self.version]
            return read_squad_tfds(name, split, s["data_dir"], self.version, limit)
        default_train, default_dev = DEFAULT_FILES[self.version]
        filename = (s["train_file"] or default_train) if split == "train" else (s["dev_file"] or default_dev)
        path = filename if os.path.isabs(filename) else os.path.join(s["data_dir"], filename)
        return readers.cap(read_squad_json(path, self.version), limit)

    def featurize(self, examples, tokenizer, max_seq_length: int, split: str) -> Features:
        s = self.settings
        return featurize_squad(examples, tokenizer, int(max_seq_length), doc_stride=int(s["doc_stride"]),
                               max_query_length=int(s["max_query_length"]), labels=True,
                               drop_misaligned=split == self.train_split)

    # ---- evaluation ---------------------------------------------------------------------------------
    def postprocess(self, outputs: Dict[str, np.ndarray], features: Features, examples) -> SquadPredictions:
        missing = {"start_logits", "end_logits"} - set(outputs)
        if missing:
            raise ValueError(f"SQuAD post-processing needs the model outputs {sorted(missing)}; got {sorted(outputs)}")
        s = self.settings
        return postprocess_squad(outputs["start_logits"], outputs["end_logits"], features.meta, examples,
                                 version=self.version, n_best_size=int(s["n_best_size"]),
                                 max_answer_length=int(s["max_answer_length"]),
                                 null_score_diff_threshold=float(s["null_score_diff_threshold"]),
                                 use_max_context=bool(s["use_max_context"]))

    def metrics(self, predictions, examples) -> Dict[str, float]:
        """`predictions`: SquadPredictions or a plain {qid: text} dict (e.g. a predictions JSON)."""
        if isinstance(predictions, SquadPredictions):
            return evaluate(predictions.answers, examples, self.version, predictions.null_odds,
                            predictions.best_non_null)
        return evaluate(predictions, examples, self.version)

    def write_predictions(self, predictions: SquadPredictions, examples, path: str) -> None:
        """`path`: {qid: text} JSON (the official scripts' input); beside it `nbest_<name>` and, for v2.0,
        `null_odds_<name>` (the official v2.0 script's --na-prob-file)."""
        directory, name = os.path.split(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        files = {path: predictions.answers,
                 os.path.join(directory, "nbest_" + name): predictions.nbest}
        if predictions.null_odds is not None:
            files[os.path.join(directory, "null_odds_" + name)] = predictions.null_odds
        for file_path, content in files.items():
            with open(file_path, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
                f.write("\n")


__all__ = ["SquadExample", "SquadMeta", "SquadPredictions", "SquadTask", "answer_token_span", "evaluate",
           "exact_match", "f1_score", "featurize_squad", "normalize_answer", "postprocess_squad",
           "read_squad_json", "read_squad_tfds", "truncate_questions"]
