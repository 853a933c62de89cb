"""BERT WordPiece tokenization on top of the Hugging Face `tokenizers` library.

`BertTokenizer` reproduces `transformers.BertTokenizerFast` (same normalizer, pre-tokenizer, WordPiece model,
post-processor and truncation/overflow logic, because it drives the same Rust backend the same way) but returns
numpy int32 arrays and has no torch/jax dependency, so data pipelines can import it cheaply.

Shapes: every encoding call is batched. A single string is treated as a batch of one, so
`tok("hi")["input_ids"].shape == (1, seq)`. With `return_overflowing_tokens=True` the leading axis counts
windows, not examples, and `overflow_to_sample_mapping[w]` gives the example of window `w`.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
DEFAULT_MODEL_MAX_LENGTH = 512
# transformers writes int(1e30) as "no limit"; that value does not fit the backend's usize.
_HF_UNLIMITED = int(1e20)
_TRUNCATION = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
               "only_second": "only_second", False: None, None: None, "do_not_truncate": None}
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length",
            False: None, None: None, "do_not_pad": None}


_SAVED_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json")


def _is_url(path) -> bool:
    return "://" in os.fspath(path)


def _save_to_url(tokenizer: "BertTokenizer", url) -> None:
    import tempfile

    from etils import epath  # only for URLs: keeps this module's import light
    remote = epath.Path(os.fspath(url))
    with tempfile.TemporaryDirectory() as local:
        tokenizer.save(local)
        remote.mkdir(parents=True, exist_ok=True)
        for name in _SAVED_FILES:
            epath.Path(local, name).copy(remote / name, overwrite=True)


def _load_from_url(cls, url) -> "BertTokenizer":
    import tempfile

    from etils import epath
    remote = epath.Path(os.fspath(url))
    if not remote.is_dir():
        raise FileNotFoundError(f"tokenizer directory {url} does not exist")
    with tempfile.TemporaryDirectory() as local:
        for name in _SAVED_FILES:
            if (remote / name).is_file():
                (remote / name).copy(epath.Path(local, name), overwrite=True)
        try:
            return cls.from_pretrained(local)
        except FileNotFoundError:
            raise FileNotFoundError(f"no tokenizer.json or vocab.txt in tokenizer directory {url}") from None


def load_vocab(vocab_path) -> dict[str, int]:
    """Reads a one-token-per-line vocab.txt exactly like transformers' `load_vocab` (line i -> id i)."""
    try:
        with open(vocab_path, encoding="utf-8") as f:
            return {line.rstrip("\n"): i for i, line in enumerate(f.readlines())}
    except UnicodeDecodeError as e:
        raise ValueError(f"vocab file {os.fspath(vocab_path)} is not UTF-8 text ({e.reason})") from None


def _bert_normalizer(lowercase: bool, strip_accents: bool | None, tokenize_chinese_chars: bool):
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                      strip_accents=strip_accents, lowercase=lowercase)


def _build_backend(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None,
                   tokenize_chinese_chars: bool) -> Tokenizer:
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocab is missing the special tokens {missing}; a BERT vocab needs all of {SPECIAL_TOKENS}")
    backend = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    backend.normalizer = _bert_normalizer(lowercase, strip_accents, tokenize_chinese_chars)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])])
    # Registered as (unnormalized) special added tokens so a literal "[MASK]" in the text stays one token even
    # when lowercasing, matching transformers.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return backend


class BertTokenizer:
    """WordPiece tokenizer with BERT's `[CLS] A [SEP] (B [SEP])` template; see the module docstring for shapes."""

    def __init__(self, backend: Tokenizer, *, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
        if not isinstance(backend.model, models.WordPiece):
            raise ValueError(f"BertTokenizer needs a WordPiece model, got {type(backend.model).__name__}")
        missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer is missing the special tokens {missing}")
        self._backend = backend
        # Truncation/padding are per-call settings on the shared backend; the lock keeps concurrent calls from
        # seeing each other's settings.
        self._lock = threading.Lock()
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        if model_max_length is None or model_max_length >= _HF_UNLIMITED:
            model_max_length = DEFAULT_MODEL_MAX_LENGTH
        self.model_max_length = int(model_max_length)

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_vocab(cls, vocab_path, lowercase: bool = True, strip_accents: bool | None = None,
                   tokenize_chinese_chars: bool = True, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH):
        """Builds the tokenizer from a vocab.txt. `strip_accents=None` means "strip iff lowercasing" (original BERT)."""
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"vocab file {vocab_path} does not exist")
        try:
            backend = _build_backend(load_vocab(vocab_path), lowercase, strip_accents, tokenize_chinese_chars)
        except ValueError as e:
            raise ValueError(f"{vocab_path}: {e}") from None
        return cls(backend, do_lower_case=lowercase, strip_accents=strip_accents,
                   tokenize_chinese_chars=tokenize_chinese_chars, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(cls, directory):
        """Loads `tokenizer.json` (preferred) or `vocab.txt` from `directory`, plus `tokenizer_config.json` flags.

        Config flags (do_lower_case, strip_accents, tokenize_chinese_chars) override the normalizer stored in
        tokenizer.json, as transformers does. `directory` may be a URL (gs://...): its files are read through
        `etils.epath` into a local temp dir first.
        """
        if _is_url(directory):
            return _load_from_url(cls, directory)
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
        config = {}
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_path} is not valid JSON: {e}") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"{config_path} is not UTF-8 text ({e.reason})") from None
            _check_tokenizer_config(config, config_path)
        model_max_length = config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
        tokenizer_path, vocab_path = directory / "tokenizer.json", directory / "vocab.txt"
        if tokenizer_path.is_file():
            try:
                backend = Tokenizer.from_file(str(tokenizer_path))
            except Exception as e:  # the backend only raises the base Exception type
                raise ValueError(f"could not parse {tokenizer_path}: {e}") from None
            norm = backend.normalizer
            stored = (norm.lowercase, norm.strip_accents, norm.handle_chinese_chars) \
                if isinstance(norm, normalizers.BertNormalizer) else (True, None, True)
            flags = (config.get("do_lower_case", stored[0]), config.get("strip_accents", stored[1]),
                     config.get("tokenize_chinese_chars", stored[2]))
            if flags != stored or not isinstance(norm, normalizers.BertNormalizer):
                backend.normalizer = _bert_normalizer(*flags)
            try:
                return cls(backend, do_lower_case=flags[0], strip_accents=flags[1],
                           tokenize_chinese_chars=flags[2], model_max_length=model_max_length)
            except ValueError as e:
                raise ValueError(f"{tokenizer_path}: {e}") from None
        if vocab_path.is_file():
            return cls.from_vocab(vocab_path, lowercase=config.get("do_lower_case", True),
                                  strip_accents=config.get("strip_accents"),
                                  tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                                  model_max_length=model_max_length)
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in tokenizer directory {directory}")

    def save(self, directory) -> None:
        """Writes vocab.txt, tokenizer.json and tokenizer_config.json (loadable by transformers.AutoTokenizer).

        `directory` may be a URL (gs://...): the files are written locally, then copied there via `etils.epath`."""
        if _is_url(directory):
            return _save_to_url(self, directory)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        by_id = sorted(self.vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            # vocab.txt encodes ids by line number, so a gap would silently shift every later id.
            raise ValueError(f"cannot save {directory / 'vocab.txt'}: token ids are not contiguous from 0")
        (directory / "vocab.txt").write_text("".join(t + "\n" for t, _ in by_id), encoding="utf-8")
        self._backend.save(str(directory / "tokenizer.json"), pretty=True)
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "model_max_length": self.model_max_length, "pad_token": PAD, "unk_token": UNK,
                  "cls_token": CLS, "sep_token": SEP, "mask_token": MASK, "clean_up_tokenization_spaces": True}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    # ----------------------------------------------------------------------------------------- properties
    @property
    def backend(self) -> Tokenizer:
        return self._backend

    @property
    def vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    pad_token_id = property(lambda self: self._backend.token_to_id(PAD))
    unk_token_id = property(lambda self: self._backend.token_to_id(UNK))
    cls_token_id = property(lambda self: self._backend.token_to_id(CLS))
    sep_token_id = property(lambda self: self._backend.token_to_id(SEP))
    mask_token_id = property(lambda self: self._backend.token_to_id(MASK))

    def __repr__(self) -> str:
        return (f"BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
                f"strip_accents={self.strip_accents}, model_max_length={self.model_max_length})")

    # ----------------------------------------------------------------------------------------- encoding
    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True, max_length: int | None = None,
                 truncation=False, padding=False, pad_to_multiple_of: int | None = None, stride: int = 0,
                 return_overflowing_tokens: bool = False, return_offsets_mapping: bool = False,
                 return_special_tokens_mask: bool = False, return_word_ids: bool = False) -> dict:
        """Encodes `text` (str or list of str), optionally paired with `text_pair`, like BertTokenizerFast.

        Returns a dict of int32 arrays: `input_ids`, `token_type_ids`, `attention_mask` [batch, seq]; optionally
        `offset_mapping` [batch, seq, 2] (character spans into the respective input string, (0, 0) for special
        and pad tokens), `special_tokens_mask` [batch, seq] and `word_ids` [batch, seq] (-1 for special/pad
        tokens; words of `text_pair` are numbered from 0 again). A single str gives batch 1. If rows end up with
        different lengths (no padding), each value is instead a list of per-row arrays ([seq] or [seq, 2]).

        truncation: True/'longest_first', 'only_first', 'only_second' or False; padding: True/'longest',
        'max_length' or False. Both use `max_length`, defaulting to `model_max_length`; `max_length` alone
        does not truncate. `pad_to_multiple_of` only applies when padding. With `return_overflowing_tokens`,
        truncated-away tokens become extra windows overlapping the previous one by `stride` tokens; the
        leading axis is then [num_windows] and `overflow_to_sample_mapping` [num_windows] maps windows to
        examples (for SQuAD: question as `text`, context as `text_pair`, truncation='only_second').
        """
        texts, pairs = self._check_text(text, text_pair)
        if not _hashable(truncation) or truncation not in _TRUNCATION:
            raise ValueError(f"truncation must be a bool or one of 'longest_first', 'only_first', 'only_second'; "
                             f"got {truncation!r}")
        if not _hashable(padding) or padding not in _PADDING:
            raise ValueError(f"padding must be a bool or one of 'longest', 'max_length'; got {padding!r}")
        strategy, pad_mode = _TRUNCATION[truncation], _PADDING[padding]
        n_special = (3 if pairs is not None else 2) if add_special_tokens else 0
        if max_length is not None and (not _is_int(max_length) or max_length < max(n_special, 1)):
            raise ValueError(f"max_length={max_length!r} must be an int of at least max(1, number of special "
                             f"tokens added) = {max(n_special, 1)}")
        if not _is_int(stride) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        if pad_to_multiple_of is not None and (not _is_int(pad_to_multiple_of) or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        if strategy == "only_second" and pairs is None:
            raise ValueError("truncation='only_second' needs a text_pair")
        length = self.model_max_length if max_length is None else int(max_length)
        stride = int(stride)
        pad_to_multiple_of = None if pad_to_multiple_of is None else int(pad_to_multiple_of)
        if strategy is not None and stride >= length - n_special:
            raise ValueError(f"stride={stride} must be smaller than max_length - special tokens = "
                             f"{length - n_special}")
        if strategy is not None and pad_mode is not None and pad_to_multiple_of and length % pad_to_multiple_of:
            # transformers refuses this too: padding would push truncated rows past max_length.
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must divide the truncation length {length}")
        inputs = texts if pairs is None else list(zip(texts, pairs))
        backend = self._backend
        with self._lock:
            try:
                if strategy is not None:
                    backend.enable_truncation(length, stride=stride, strategy=strategy)
                if pad_mode is not None:
                    backend.enable_padding(pad_id=self.pad_token_id, pad_type_id=0, pad_token=PAD,
                                           length=length if pad_mode == "max_length" else None,
                                           pad_to_multiple_of=pad_to_multiple_of)
                encodings = backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
            except BaseException as e:
                # Truncation failures surface as bare Exceptions, or as a Rust panic (a BaseException) when the
                # stride does not fit the room left for the truncated sequence of a pair.
                if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                    raise
                raise ValueError(f"cannot encode with max_length={length}, stride={stride}, "
                                 f"truncation={truncation!r}: {e}") from None
            finally:
                backend.no_truncation()
                backend.no_padding()

        rows, sample = [], []
        for i, enc in enumerate(encodings):
            # Only one level of overflow, in this order, is what transformers returns.
            windows = [enc, *enc.overflowing] if return_overflowing_tokens else [enc]
            rows.extend(windows)
            sample.extend([i] * len(windows))
        out = {"input_ids": _stack([r.ids for r in rows]),
               "token_type_ids": _stack([r.type_ids for r in rows]),
               "attention_mask": _stack([r.attention_mask for r in rows])}
        if return_offsets_mapping:
            out["offset_mapping"] = _stack([r.offsets for r in rows], trailing=(2,))
        if return_special_tokens_mask:
            out["special_tokens_mask"] = _stack([r.special_tokens_mask for r in rows])
        if return_word_ids:
            out["word_ids"] = _stack([[-1 if w is None else w for w in r.word_ids] for r in rows])
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = np.asarray(sample, dtype=np.int32)
        return out

    @staticmethod
    def _check_text(text, text_pair):
        if isinstance(text, str):
            if text_pair is not None and not isinstance(text_pair, str):
                raise ValueError(f"text_pair must be a str when text is a str, got {type(text_pair).__name__}")
            return [text], None if text_pair is None else [text_pair]
        if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
            raise ValueError(f"text must be a str or a list of str, got {_describe(text)}")
        if text_pair is None:
            return list(text), None
        if (not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(text)
                or not all(isinstance(t, str) for t in text_pair)):
            raise ValueError(f"text_pair must be a list of {len(text)} str to match text, got {_describe(text_pair)}")
        return list(text), list(text_pair)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one example (no truncation or padding)."""
        if not isinstance(text, str) or not (text_pair is None or isinstance(text_pair, str)):
            raise ValueError(f"encode needs str text/text_pair, got {_describe(text)} / {_describe(text_pair)}")
        return self._backend.encode(text, text_pair, add_special_tokens=add_special_tokens).ids

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of `text` (continuations prefixed with '##'), without special tokens."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {_describe(text)}")
        return self._backend.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens):
        """str -> int or list[str] -> list[int]; unknown tokens map to the [UNK] id."""
        if isinstance(tokens, str):
            token_id = self._backend.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        """int -> str or a sequence/array of ids -> list[str]; out-of-range ids raise ValueError."""
        ids = np.asarray(ids).tolist()
        if isinstance(ids, int):
            token = self._backend.id_to_token(ids) if ids >= 0 else None
            if token is None:
                raise ValueError(f"token id {ids} is outside the vocabulary (size {self.vocab_size})")
            return token
        return [self.convert_ids_to_tokens(i) for i in ids]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Joins the word pieces of one sequence ([seq] or [1, seq] ids) back into (normalized) text."""
        ids = np.asarray(ids)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim > 1:
            raise ValueError(f"decode takes one sequence of ids ([seq] or [1, seq]), got shape {ids.shape}")
        return self._backend.decode(ids.reshape(-1).tolist(), skip_special_tokens=skip_special_tokens)


def _check_tokenizer_config(config, path) -> None:
    """ValueError naming the file and key of a tokenizer_config.json value of the wrong type."""
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    for key, allowed, what in (("do_lower_case", (bool,), "true or false"),
                               ("tokenize_chinese_chars", (bool,), "true or false"),
                               ("strip_accents", (bool, type(None)), "true, false or null"),
                               ("model_max_length", (int, float, type(None)), "a number")):
        if key in config and (not isinstance(config[key], allowed)
                              or (key == "model_max_length" and isinstance(config[key], bool))):
            raise ValueError(f"{path}: {key} must be {what}, got {config[key]!r}")
    length = config.get("model_max_length")
    if length is not None and not length >= 1:
        raise ValueError(f"{path}: model_max_length must be at least 1, got {length!r}")


def _stack(rows: list, trailing: tuple = ()):
    """[batch, seq, *trailing] int32 array when all rows are equally long, else a list of per-row arrays."""
    arrays = [np.asarray(r, dtype=np.int32).reshape((len(r),) + trailing) for r in rows]
    if len({a.shape[0] for a in arrays}) <= 1:
        return np.stack(arrays) if arrays else np.zeros((0, 0) + trailing, np.int32)
    return arrays


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _describe(value) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {'/'.join(kinds) or 'nothing'}"
    return type(value).__name__


def __getattr__(name: str):
    """`train_wordpiece` lives in `bert_jax/wordpiece.py` (which builds on this module); it resolves here
    too, where existing code imports it from."""
    if name == "train_wordpiece":
        from bert_jax import wordpiece
        return wordpiece.train_wordpiece
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
