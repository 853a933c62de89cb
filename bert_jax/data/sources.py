"""Random-access data sources (grain's `RandomAccessDataSource` protocol: `len(source)`, `source[i]`).

Every source yields one dict per example and has a `repr` without object addresses (grain stores
`repr(source)` in iterator checkpoints and checks it on restore). None of them imports jax or tensorflow.

* `tfds_source(name, split, data_dir=None)` -- a TensorFlow Datasets dataset prepared locally in the
  ArrayRecord format, read through `tfds.data_source`. Nothing is downloaded unless `download=True`: a
  dataset that is not prepared raises `DatasetNotPreparedError` at once, naming the dataset, the
  directory searched and how to prepare it.
* `PretrainingDataSource` -- the ArrayRecord shards written by `bert_jax.data.create_pretraining_data`
  (re-exported from `bert_jax.data.pretraining`); `pretraining_source(paths)` builds one.
* Local files: `TextLinesSource` (plain text: an example per line, or documents separated by blank lines),
  `JsonlSource` (a JSON object per line) and `CsvSource` (.csv / .tsv with a header row). Files are indexed
  once (byte offsets), so examples are read lazily and the sources can be sent to grain worker processes.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from bert_jax.data.records import PretrainingDataSource

__all__ = ["DatasetNotPreparedError", "tfds_source", "TfdsSource", "PretrainingDataSource", "pretraining_source",
           "TextLinesSource", "JsonlSource", "CsvSource", "InMemorySource", "expand_paths"]

PathsLike = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


# ----------------------------------------------------------------------------------------------- helpers
def expand_paths(paths: PathsLike, what: str = "input") -> list[str]:
    """A path, a glob, comma-separated paths/globs or a list of them -> the files, in the order given (each glob
    sorted). Raises FileNotFoundError naming the first path or pattern that matches no file."""
    if isinstance(paths, (str, os.PathLike)):
        items = [p.strip() for p in os.fspath(paths).split(",") if p.strip()]
    else:
        items = [os.fspath(p) for p in paths]
    if not items:
        raise ValueError(f"no {what} files given")
    files = []
    for item in items:
        item = os.path.expanduser(item)
        if any(c in item for c in "*?["):
            matched = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matched:
                raise FileNotFoundError(f"{what} pattern {item!r} matches no files")
            files.extend(matched)
        elif os.path.isdir(item):
            raise IsADirectoryError(f"{what} path {item!r} is a directory; give files or a glob such as "
                                    f"{os.path.join(item, '*.txt')!r}")
        elif not os.path.isfile(item):
            raise FileNotFoundError(f"{what} file {item!r} does not exist")
        else:
            files.append(item)
    return files


def _check_index(i, n: int) -> int:
    try:
        i = i.__index__()
    except AttributeError:
        raise TypeError(f"source indices must be integers, got {type(i).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a source of {n} examples")
    return i


class _LazyFiles:
    """Per-process read handles (not pickled, so sources can travel to grain workers)."""

    def __init__(self):
        self._handles: dict = {}
        self._pid = os.getpid()

    def get(self, path: str):
        if self._pid != os.getpid():  # forked: never share a file position with the parent
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open(path, "rb")
        return handle

    def close(self):
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


class _FileBackedSource:
    """Shared machinery: `self._files`, `self._index` (int64 [n, 3]: file number, byte start, byte end)."""

    _files: list
    _index: np.ndarray

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i) -> dict:
        return self._record(_check_index(i, len(self._index)))

    def __getitems__(self, keys) -> list:
        return [self[k] for k in keys]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _read(self, i: int) -> bytes:
        file_number, start, end = (int(v) for v in self._index[i])
        if not hasattr(self, "_lazy"):
            self._lazy = _LazyFiles()
        handle = self._lazy.get(self._files[file_number])
        handle.seek(start)
        return handle.read(end - start)

    def _record(self, i: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lazy", None)
        return state

    def __del__(self):
        lazy = self.__dict__.get("_lazy")
        if lazy is not None:
            lazy.close()


def _line_spans(path: str):
    """(start, end, text) of each line of a UTF-8 file, the end excluding the line break."""
    with open(path, "rb") as f:
        position = 0
        for raw in f:
            end = position + len(raw)
            content = raw.rstrip(b"\r\n")
            yield position, position + len(content), content
            position = end


def _check_nonempty_file(path: str) -> None:
    if os.path.getsize(path) == 0:
        raise ValueError(f"file {path!r} is empty")


# ------------------------------------------------------------------------------------------------- tfds
class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not prepared in the data directory (nothing was downloaded)."""


_TFDS_EXTRA_MODULES = ("text", "question_answering", "summarization", "translate", "structured")


def _tfds_builder(name: str, data_dir: Optional[str]):
    """`tfds.builder` (constructs the builder class, reads nothing from the network); imports the tfds
    submodules that register e.g. glue and wikipedia when the name is not found at first."""
    import tensorflow_datasets as tfds
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        pass
    except ImportError as e:
        raise ImportError(f"constructing the TFDS builder for {name!r} needs a package that is not installed "
                          f"({e}); bert_jax does not depend on TensorFlow") from None
    import importlib
    for module in _TFDS_EXTRA_MODULES:
        try:
            importlib.import_module(f"tensorflow_datasets.{module}")
        except ImportError:
            pass
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"TFDS has no dataset named {name!r} (see tfds.list_builders())") from None
    except ImportError as e:
        raise ImportError(f"constructing the TFDS builder for {name!r} needs a package that is not installed "
                          f"({e}); bert_jax does not depend on TensorFlow") from None


def _prepare_hint(name: str, data_dir: str) -> str:
    return (f"prepare it once, on a machine with network access, in the ArrayRecord format:\n"
            f"    python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}, data_dir={data_dir!r})"
            f".download_and_prepare(file_format='array_record')\"\n"
            f"(or `tfds build {name} --data_dir={data_dir} --file_format=array_record`), then copy {data_dir} here; "
            f"or call tfds_source(..., download=True) to let TFDS download it now")


class TfdsSource:
    """A split of a locally prepared TFDS dataset as a random-access source of dicts. Byte strings (tfds Text
    features) are decoded to `str` when `decode_text`; numpy scalars and arrays are passed through."""

    def __init__(self, name: str, split: str, data_dir: Optional[Union[str, os.PathLike]] = None, *,
                 download: bool = False, decode_text: bool = True):
        import tensorflow_datasets as tfds
        self.name, self.split, self.decode_text = name, split, bool(decode_text)
        if data_dir is None:
            data_dir = tfds.core.constants.DATA_DIR  # $TFDS_DATA_DIR or ~/tensorflow_datasets
        self.data_dir = os.path.expanduser(os.fspath(data_dir))
        if not download:
            builder = _tfds_builder(name, self.data_dir)
            if not builder.is_prepared():
                raise DatasetNotPreparedError(
                    f"TFDS dataset {name!r} is not prepared in data_dir {self.data_dir!r} (looked for "
                    f"{os.fspath(builder.data_dir)!r}/dataset_info.json; nothing was downloaded). To use it, "
                    + _prepare_hint(name, self.data_dir))
            file_format = getattr(builder.info, "file_format", None)
            if file_format is not None and getattr(file_format, "value", file_format) != "array_record":
                raise ValueError(
                    f"TFDS dataset {name!r} in {os.fspath(builder.data_dir)!r} is stored as "
                    f"{getattr(file_format, 'value', file_format)}; random access (tfds.data_source) needs "
                    f"ArrayRecord: " + _prepare_hint(name, self.data_dir))
            self._source = builder.as_data_source(split=split)
        else:
            self._source = tfds.data_source(name, split=split, data_dir=self.data_dir, download=True,
                                            download_and_prepare_kwargs={"file_format": "array_record"})

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, record):
        if not self.decode_text:
            return record
        if isinstance(record, Mapping):
            return {k: self._convert(v) for k, v in record.items()}
        if isinstance(record, bytes):
            return record.decode("utf-8")
        if isinstance(record, np.ndarray) and record.dtype == object:
            return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])(record)
        return record

    def __getitem__(self, i) -> dict:
        return self._convert(self._source[_check_index(i, len(self))])

    def __getitems__(self, keys) -> list:
        n = len(self)
        return [self._convert(r) for r in self._source.__getitems__([_check_index(k, n) for k in keys])]

    def __repr__(self) -> str:
        return f"TfdsSource(name={self.name!r}, split={self.split!r}, data_dir={self.data_dir!r})"


def tfds_source(name: str, split: str, data_dir: Optional[Union[str, os.PathLike]] = None, *,
                download: bool = False, decode_text: bool = True) -> TfdsSource:
    """`TfdsSource` for `name` ('glue/sst2', 'imdb_reviews', 'wikipedia/20230601.en', ...) and `split`
    ('train', 'validation[:10%]', ...). `data_dir` defaults to $TFDS_DATA_DIR or ~/tensorflow_datasets.

    With `download=False` (default) the prepared files are checked first and a missing dataset raises
    `DatasetNotPreparedError` immediately, without any network access."""
    return TfdsSource(name, split, data_dir, download=download, decode_text=decode_text)


def pretraining_source(paths_or_glob) -> PretrainingDataSource:
    """`PretrainingDataSource` over create_pretraining_data shards (a directory, prefix, glob or list)."""
    return PretrainingDataSource(paths_or_glob)


# ------------------------------------------------------------------------------------------- local files
class TextLinesSource(_FileBackedSource):
    """Plain UTF-8 text files.

    mode='lines': each non-blank line is an example `{"text": line}` (lines are stripped).
    mode='documents': documents are separated by blank lines (the create_pretraining_data input format); an
      example is `{"text": the document's lines joined by newlines, "sentences": [line, ...]}`. A document
      does not continue across files.
    """

    def __init__(self, paths: PathsLike, mode: str = "lines"):
        if mode not in ("lines", "documents"):
            raise ValueError(f"mode must be 'lines' or 'documents', got {mode!r}")
        self.mode = mode
        self._files = expand_paths(paths, "text")
        rows = []
        for number, path in enumerate(self._files):
            _check_nonempty_file(path)
            before = len(rows)
            start = end = None
            for line_start, line_end, content in _line_spans(path):
                blank = not content.strip()
                if mode == "lines":
                    if not blank:
                        rows.append((number, line_start, line_end))
                elif blank:
                    if start is not None:
                        rows.append((number, start, end))
                    start = None
                else:
                    start = line_start if start is None else start
                    end = line_end
            if mode == "documents" and start is not None:
                rows.append((number, start, end))
            if len(rows) == before:
                raise ValueError(f"text file {path!r} has no non-blank lines")
        self._index = np.asarray(rows, np.int64).reshape(-1, 3)

    def _record(self, i: int) -> dict:
        text = self._read(i).decode("utf-8", errors="replace")
        if self.mode == "lines":
            return {"text": text.strip()}
        sentences = [line.strip() for line in text.splitlines() if line.strip()]
        return {"text": "\n".join(sentences), "sentences": sentences}

    def __repr__(self) -> str:
        return f"TextLinesSource(files={self._files!r}, mode={self.mode!r}, num_examples={len(self)})"


def _check_columns(available: Sequence[str], wanted: Optional[Sequence[str]], where: str) -> None:
    if wanted is None:
        return
    missing = [c for c in wanted if c not in available]
    if missing:
        raise KeyError(f"{where} lacks the column(s) {missing}; it has {list(available)}")


class JsonlSource(_FileBackedSource):
    """JSON Lines files: each non-blank line is a JSON object -> a dict. `columns` (optional) selects and
    requires fields; a line that is not valid JSON, not an object, or lacks a column raises ValueError /
    KeyError naming the file and line. Line 1 of each file is validated when the source is built."""

    def __init__(self, paths: PathsLike, columns: Optional[Sequence[str]] = None):
        if isinstance(columns, str):
            columns = [columns]
        self.columns = None if columns is None else list(columns)
        self._files = expand_paths(paths, "jsonl")
        rows, line_numbers, firsts = [], [], []
        for number, path in enumerate(self._files):
            _check_nonempty_file(path)
            firsts.append(len(rows))
            for line_number, (start, end, content) in enumerate(_line_spans(path), 1):
                if content.strip():
                    rows.append((number, start, end))
                    line_numbers.append(line_number)
            if len(rows) == firsts[-1]:
                raise ValueError(f"jsonl file {path!r} has no non-blank lines")
        self._index = np.asarray(rows, np.int64).reshape(-1, 3)
        self._line_numbers = np.asarray(line_numbers, np.int64)
        for first in firsts:  # fail fast on a wrong file or column name
            self._record(first)

    def _record(self, i: int) -> dict:
        where = f"{self._files[int(self._index[i, 0])]}:{int(self._line_numbers[i])}"
        try:
            record = json.loads(self._read(i))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where} holds a JSON {type(record).__name__}, not an object")
        _check_columns(list(record), self.columns, where)
        return record if self.columns is None else {c: record[c] for c in self.columns}

    def __repr__(self) -> str:
        return f"JsonlSource(files={self._files!r}, columns={self.columns!r}, num_examples={len(self)})"


class CsvSource:
    """CSV / TSV files with a header row; each data row -> `{column: str}`.

    The delimiter follows the extension (`.tsv`/`.tab` -> tab, else comma) unless given. TSV is read without
    quote processing (`quotechar=None`, as google-research BERT reads the GLUE .tsv files, whose text holds
    unbalanced quotes); CSV uses standard quoting. `columns` selects and requires columns. All files must
    share the header. Rows are loaded into memory (quoted fields may span lines, so there is no line index).
    A row with the wrong number of fields raises ValueError naming the file and line."""

    def __init__(self, paths: PathsLike, columns: Optional[Sequence[str]] = None, delimiter: Optional[str] = None,
                 quoting: Optional[bool] = None, encoding: str = "utf-8"):
        if isinstance(columns, str):
            columns = [columns]
        self.columns = None if columns is None else list(columns)
        self._files = expand_paths(paths, "csv")
        self.header: Optional[list[str]] = None
        self._rows: list = []
        for path in self._files:
            _check_nonempty_file(path)
            tsv = path.lower().endswith((".tsv", ".tab", ".tsv.txt"))
            sep = delimiter if delimiter is not None else ("\t" if tsv else ",")
            quoted = (not tsv) if quoting is None else bool(quoting)
            try:
                with open(path, encoding=encoding, newline="") as f:
                    reader = csv.reader(f, delimiter=sep, quotechar='"' if quoted else None,
                                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
                    header = next(reader, None)
                    if not header or not any(h.strip() for h in header):
                        raise ValueError(f"csv file {path!r} has no header row")
                    header = [h.strip() for h in header]
                    if len(set(header)) != len(header):
                        raise ValueError(f"csv file {path!r} has duplicate column names: {header}")
                    if self.header is None:
                        self.header = header
                        _check_columns(header, self.columns, f"csv file {path!r}")
                    elif header != self.header:
                        raise ValueError(f"csv file {path!r} has header {header}, but {self._files[0]!r} has "
                                         f"{self.header}")
                    before = len(self._rows)
                    keep = [header.index(c) for c in (self.columns or header)]
                    for row in reader:
                        if not row or (len(row) == 1 and not row[0].strip()):
                            continue  # blank line
                        if len(row) != len(header):
                            raise ValueError(f"{path}:{reader.line_num} has {len(row)} fields, the header has "
                                             f"{len(header)} ({header}); wrong delimiter {sep!r}?")
                        self._rows.append(tuple(row[k] for k in keep))
                    if len(self._rows) == before:
                        raise ValueError(f"csv file {path!r} has a header but no rows")
            except UnicodeDecodeError as e:
                raise ValueError(f"csv file {path!r} is not {encoding} text (byte 0x{e.object[e.start]:02x}: "
                                 f"{e.reason})") from None
        self._names = list(self.columns or self.header)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i) -> dict:
        return dict(zip(self._names, self._rows[_check_index(i, len(self._rows))]))

    def __getitems__(self, keys) -> list:
        return [self[k] for k in keys]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"CsvSource(files={self._files!r}, columns={self._names!r}, num_examples={len(self)})"


class InMemorySource:
    """A list of examples as a source; `name` (and the length) stand in for the content in `repr`, so give
    distinct names to distinct data when checkpointing iterators over them."""

    def __init__(self, examples: Sequence[Any], name: str = "in_memory"):
        self._examples = examples
        self.name = name

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, i):
        return self._examples[_check_index(i, len(self._examples))]

    def __getitems__(self, keys) -> list:
        return [self[k] for k in keys]

    def __repr__(self) -> str:
        return f"InMemorySource(name={self.name!r}, num_examples={len(self)})"
