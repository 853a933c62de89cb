"""Builds the pretraining input pipeline from `config.data` (sources: the embedded stdlib corpus,
local text files, array_record shards from create_pretraining_data) and the tokenizer that goes
with it. The trainer sees only loaders of per-host batches."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from bert_jax.data import pipeline
from bert_jax.data.dynamic import DynamicMasker
from bert_jax.tokenization import BertTokenizer
from bert_jax.wordpiece import train_wordpiece
from bert_jax.training import paths

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainingData:
    train_loader: Any  # grain DataLoader; iter() has get_state/set_state
    make_eval_loader: Callable[[], Any]
    eval_batches_count: int
    tokenizer: Optional[BertTokenizer]
    vocab_size: int
    pad_token_id: int
    # Evaluating on sentence pairs (`data.eval_mode="nsp"`) a model without token types: its batches read
    # the pairs without their segment ids (all 0), as that model reads every sequence.
    eval_without_token_types: bool = False

    def eval_batches(self) -> Iterator[dict]:
        """The same held-out batches every time (a fresh, unshuffled iterator)."""
        iterator = iter(self.make_eval_loader())
        for _ in range(self.eval_batches_count):
            try:
                batch = next(iterator)
            except StopIteration:
                return
            if self.eval_without_token_types:
                batch = dict(batch, token_type_ids=np.zeros_like(batch["token_type_ids"]))
            yield batch


def _tokenizer(config, workdir: paths.PathLike, documents) -> BertTokenizer:
    """config.data.vocab, or the run's own vocab in workdir/tokenizer (trained once, reused on resume:
    WordPiece training is not bit-reproducible). On several hosts only process 0 reads or trains the
    vocab and sends it to the others, so every host tokenizes with the same vocab and none reads a
    half-written file (hosts need not share a filesystem)."""
    if config.data.vocab:
        path = config.data.vocab
        return BertTokenizer.from_vocab(path, lowercase=config.data.lowercase) if os.path.isfile(path) \
            else BertTokenizer.from_pretrained(path)
    tokenizer = _own_tokenizer(config, workdir, documents) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        tokenizer = _broadcast_vocab(tokenizer, config.data.lowercase)
    return tokenizer


def _own_tokenizer(config, workdir: paths.PathLike, documents) -> BertTokenizer:
    saved = paths.workdir_path(workdir) / "tokenizer"  # local or gs://: the tokenizer stages URL reads/writes
    if (saved / "vocab.txt").is_file():
        return BertTokenizer.from_pretrained(saved)
    if documents is None:
        raise ValueError("config.data.vocab is required for this data source (no text to train a vocab on)")
    tokenizer = train_wordpiece((s for doc in documents for s in doc), vocab_size=config.data.vocab_size,
                                lowercase=config.data.lowercase)
    tokenizer.save(saved)
    return tokenizer


def _broadcast_vocab(tokenizer: Optional[BertTokenizer], lowercase: bool) -> BertTokenizer:
    """Process 0's vocab on every process (a collective: all processes must call it)."""
    import tempfile

    from jax.experimental import multihost_utils
    payload = b""
    if tokenizer is not None:
        payload = "\n".join(token for token, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])).encode()
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(payload))))
    buffer = np.zeros(size, np.uint8)
    buffer[:len(payload)] = np.frombuffer(payload, np.uint8)
    received = bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8))
    if tokenizer is not None:
        return tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.txt")
        with open(path, "wb") as f:
            f.write(received + b"\n")
        return BertTokenizer.from_vocab(path, lowercase=lowercase)


def _documents(source: str):
    if source == "stdlib":
        from bert_jax.data.corpus import stdlib_documents
        return stdlib_documents()
    if source.startswith("text:"):
        from bert_jax.data.sources import TextLinesSource
        text = TextLinesSource(source[len("text:"):], mode="documents")
        return [list(text[i]["sentences"]) for i in range(len(text))]
    return None


def masking_options(config) -> dict:
    """The masking switches of `config.data` (absent keys: BERT's values), checked, as DynamicMasker's
    keyword arguments: whole_word_mask, mask_token_fraction, random_token_fraction."""
    from bert_jax.data.pretraining import validate_mask_fractions
    d = config.data
    options = dict(whole_word_mask=d.get("whole_word_mask", False),
                   mask_token_fraction=d.get("mask_token_fraction", 0.8),
                   random_token_fraction=d.get("random_token_fraction", 0.1))
    if not isinstance(options["whole_word_mask"], bool):
        raise ValueError(f"config.data.whole_word_mask must be true or false, got {options['whole_word_mask']!r}")
    validate_mask_fractions(options["mask_token_fraction"], options["random_token_fraction"], prefix="config.data.")
    return options


EVAL_MODES = ("nsp", "full_sentences")


def text_mode(config) -> str:
    """How a text source lays out `config.objective`'s sequences: sentence pairs with next-sentence labels
    ("nsp") for mlm_nsp, else contiguous sentences ("full_sentences")."""
    return "nsp" if config.get("objective", "mlm_nsp") == "mlm_nsp" else "full_sentences"


def eval_overrides(config) -> dict:
    """How the evaluation batches of a text source differ from training's (`config.data.eval_masked_lm_prob`,
    `eval_max_predictions`, `eval_mode`; 0 / "" keep training's), checked, as text-loader keyword arguments."""
    d = config.data
    prob, positions, mode = d.get("eval_masked_lm_prob", 0.0), d.get("eval_max_predictions", 0), d.get("eval_mode", "")
    if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0.0 <= prob < 1.0:
        raise ValueError(f"config.data.eval_masked_lm_prob must be in [0, 1) (0: training's rate), got {prob!r}")
    if not isinstance(positions, int) or isinstance(positions, bool) or positions < 0:
        raise ValueError(f"config.data.eval_max_predictions must be an integer >= 0 (0: training's), got {positions!r}")
    if mode not in ("",) + EVAL_MODES:
        raise ValueError(f"config.data.eval_mode must be '' (the objective's) or one of {EVAL_MODES}, got {mode!r}")
    if mode == "full_sentences" and config.objective == "mlm_nsp":
        raise ValueError("config.data.eval_mode='full_sentences' has no next-sentence labels for objective 'mlm_nsp'")
    overrides = {}
    if prob:
        overrides["masked_lm_prob"] = prob
    if positions:
        overrides["max_predictions"] = positions
    if mode:
        overrides["mode"] = mode
    return overrides


def build_pretraining_data(config, workdir: paths.PathLike) -> PretrainingData:
    d = config.data
    masking = masking_options(config)
    documents = _documents(d.source)
    tokenizer = _tokenizer(config, workdir, documents) if (documents is not None or d.vocab) else None
    common = dict(global_batch_size=d.global_batch_size, seed=config.seed, worker_count=d.worker_count)
    if documents is not None:
        if len(documents) < 2:
            raise ValueError(f"data source {d.source!r} has {len(documents)} document(s); need at least 2")
        n_eval = max(1, int(round(len(documents) * d.eval_fraction)))
        train_docs, eval_docs = documents[:-n_eval], documents[-n_eval:]
        mode = text_mode(config)
        text_kw = dict(seq_len=d.seq_len, masked_lm_prob=d.masked_lm_prob, max_predictions=d.max_predictions,
                       mode=mode, dupe_factor=d.dupe_factor, short_seq_prob=d.short_seq_prob,
                       dynamic_masking=d.dynamic_masking, **masking)
        train = pipeline.make_text_mlm_loader(train_docs, tokenizer, **text_kw, **common)
        eval_kw = dict(text_kw, **eval_overrides(config))
        make_eval = lambda: pipeline.make_text_mlm_loader(eval_docs, tokenizer, **eval_kw, **dict(
            common, seed=config.seed + 1), shuffle=False)
        eval_without_token_types = eval_kw["mode"] == "nsp" and config.model.get("type_vocab_size", 2) == 0
    elif d.source.startswith("array_record:"):
        masker = None
        if d.dynamic_masking:  # the shards' static masks are replaced by fresh ones every epoch
            if tokenizer is None:
                raise ValueError("config.data.dynamic_masking=True with an array_record source needs config.data.vocab "
                                 "(the [MASK] id and special tokens); set it, or dynamic_masking=False to keep the "
                                 "shards' masks")
            masker = DynamicMasker.from_tokenizer(tokenizer, masked_lm_prob=d.masked_lm_prob,
                                                  max_predictions_per_seq=d.max_predictions, seed=config.seed,
                                                  **masking)
        else:
            _check_static_masking(d.source[len("array_record:"):], masking)
        if eval_overrides(config):
            raise ValueError(f"config.data.eval_masked_lm_prob / eval_max_predictions / eval_mode apply to text sources; "
                             f"{d.source!r} evaluates on its shards' own masks (set them to 0 / '')")
        train = pipeline.make_pretraining_loader(d.source[len("array_record:"):], masker=masker, **common)
        eval_without_token_types = False
        eval_source = d.eval_source or d.source[len("array_record:"):]
        # Eval reads the shards' own masks: the same examples, masked the same way, at every evaluation.
        make_eval = lambda: pipeline.make_pretraining_loader(eval_source, **dict(common, seed=config.seed + 1),
                                                             shuffle=False)
    else:
        raise ValueError(f"config.data.source={d.source!r}: expected 'stdlib', 'text:<glob>' or "
                         "'array_record:<glob>'")
    if tokenizer is not None:
        vocab_size, pad = tokenizer.vocab_size, tokenizer.pad_token_id
    else:
        vocab_size, pad = (config.model.vocab_size or 30522), 0
    return PretrainingData(train, make_eval, d.eval_batches, tokenizer, vocab_size, pad, eval_without_token_types)


def _check_static_masking(source: str, masking: dict) -> None:
    """With static masking the shards' masks are used as written (`create_pretraining_data
    --do_whole_word_mask --mask_token_fraction ...`): say so when config.data asks for other ones."""
    from bert_jax.data.records import PretrainingDataSource
    written = (PretrainingDataSource(source).metadata or {}).get("config", {})
    wanted = {"do_whole_word_mask": masking["whole_word_mask"], **{k: masking[k] for k in (
        "mask_token_fraction", "random_token_fraction")}}
    defaults = {"do_whole_word_mask": False, "mask_token_fraction": 0.8, "random_token_fraction": 0.1}
    differ = {k: (written.get(k, defaults[k]), v) for k, v in wanted.items() if written.get(k, defaults[k]) != v}
    if differ:
        logger.warning("config.data.dynamic_masking=False: the shards' own masks are used, written with %s; "
                       "config.data asks for %s (write the shards with those options, or set dynamic_masking=True)",
                       {k: a for k, (a, _) in differ.items()}, {k: b for k, (_, b) in differ.items()})


# ------------------------------------------------------------------------------- iterator state
_STATE_BYTES = 1 << 16


def gather_iterator_states(iterator) -> dict:
    """Every process's iterator state as {process_<i>: json str}; all processes must call it.
    (Orbax writes JSON items from the primary process only, so the states are gathered first.)"""
    state = pipeline.iterator_state_to_bytes(iterator)
    if jax.process_count() == 1:
        return {"process_0": state.decode()}
    if len(state) > _STATE_BYTES:
        raise ValueError(f"iterator state of {len(state)} bytes exceeds {_STATE_BYTES}")
    from jax.experimental import multihost_utils
    padded = np.zeros((_STATE_BYTES + 4,), np.uint8)
    padded[:4] = np.frombuffer(np.uint32(len(state)).tobytes(), np.uint8)
    padded[4:4 + len(state)] = np.frombuffer(state, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    out = {}
    for i, row in enumerate(gathered):
        n = int(np.frombuffer(row[:4].tobytes(), np.uint32)[0])
        out[f"process_{i}"] = row[4:4 + n].tobytes().decode()
    return out


def restore_iterator_state(iterator, states: dict) -> None:
    key = f"process_{jax.process_index()}"
    if key not in states:
        raise ValueError(f"checkpoint has data iterator states for {sorted(states)}, not for {key}: "
                         "resuming with a different number of processes cannot restore the input position")
    pipeline.iterator_state_from_bytes(iterator, states[key])


def describe(data: PretrainingData) -> str:
    return json.dumps({"vocab_size": data.vocab_size, "eval_batches": data.eval_batches_count})
