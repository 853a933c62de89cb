"""SQuAD exact match and F1 as the official evaluation scripts define them (evaluate-v1.1.py,
evaluate-v2.0.py), written anew: v2.0's HasAns/NoAns breakdown and best null-odds threshold included.

Examples are `bert_jax.tasks.squad.SquadExample`s (`qid`, `answers`); predictions map qid -> text.
"""

from __future__ import annotations

import collections
import re
import string
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from bert_jax.tasks.squad import SquadExample

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as in the official scripts


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, replace the articles a/an/the by spaces, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, version: int) -> float:
    """Harmonic mean of token precision and recall over the normalised answers' bags of tokens. When one
    side is empty, v2.0 scores 1 if both are and 0 otherwise; v1.1 scores 0."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == 2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _best_threshold(answers, scores, null_odds, has_answer) -> tuple:
    """evaluate-v2.0's find_best_thresh: start from "no answer everywhere", then answer questions in order
    of rising null odds; the best total and the null odds where it is reached."""
    score = best = sum(1 for q in scores if not has_answer[q])
    threshold = 0.0
    for qid in sorted(null_odds, key=lambda q: null_odds[q]):
        if qid not in scores:
            continue
        score += scores[qid] if has_answer[qid] else (-1 if answers[qid] else 0)
        if score > best:
            best, threshold = score, null_odds[qid]
    return 100.0 * best / len(scores), float(threshold)


def evaluate(predictions: Mapping[str, str], examples: Sequence[SquadExample], version: int,
             null_odds: Optional[Mapping[str, float]] = None,
             best_non_null: Optional[Mapping[str, str]] = None) -> Dict[str, float]:
    """Exact match and F1 (percent) of `predictions` {qid: text}, max over each question's gold answers.

    v1.1 returns {"exact_match", "f1"}; v2.0 returns the official {"exact", "f1", "total", "HasAns_*",
    "NoAns_*"} where a question has an answer iff it lists any, and gold answers that normalise to "" are
    dropped ([""] when none is left). A question without a prediction scores 0 (v1.1's rule; the v2.0
    script would stop with an error). v2.0 with `null_odds` also returns best_exact/best_f1 and their
    thresholds: the official script's --na-prob-file sweep run on `best_non_null` (each question's best
    span, i.e. predictions made with an infinite threshold; default: `predictions`), so best_f1_thresh is
    the null_score_diff_threshold that would have scored best_f1 here.
    """
    if version not in (1, 2):
        raise ValueError(f"SQuAD version must be 1 or 2, got {version!r}")
    if not examples:
        raise ValueError("no examples to evaluate")
    exact, f1, has_answer = {}, {}, {}
    for example in examples:
        golds = _v2_golds(example) if version == 2 else list(example.answers)
        if not golds:
            raise ValueError(f"question {example.qid!r} has no gold answer (SQuAD v1.1 needs one)")
        prediction = predictions.get(example.qid)
        has_answer[example.qid] = bool(example.answers)
        exact[example.qid] = 0 if prediction is None else max(exact_match(prediction, g) for g in golds)
        f1[example.qid] = 0.0 if prediction is None else max(f1_score(prediction, g, version) for g in golds)
    total = len(examples)
    if version == 1:
        return {"exact_match": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total}
    out = {"exact": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total, "total": total}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q in exact if has_answer[q] == wanted]
        if qids:  # the official script leaves out a part with no questions
            out.update({f"{prefix}_exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
                        f"{prefix}_f1": 100.0 * sum(f1[q] for q in qids) / len(qids), f"{prefix}_total": len(qids)})
    if null_odds is not None:
        answered = dict(best_non_null if best_non_null is not None else predictions)
        raw_exact = {e.qid: max(exact_match(answered.get(e.qid, ""), g) for g in _v2_golds(e)) for e in examples}
        raw_f1 = {e.qid: max(f1_score(answered.get(e.qid, ""), g, 2) for g in _v2_golds(e)) for e in examples}
        odds = {q: float(v) for q, v in null_odds.items() if q in raw_exact}
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(answered, raw_exact, odds, has_answer)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(answered, raw_f1, odds, has_answer)
    return out


def _v2_golds(example: SquadExample) -> List[str]:
    return [g for g in example.answers if normalize_answer(g)] or [""]
