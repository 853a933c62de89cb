"""File and tfds readers shared by the fine-tuning tasks.

Every reader raises an error that names the file and the problem (missing file, empty file, missing
columns with the columns that were found, malformed JSONL line with its number), so a user pointing a
config at their own data learns what is wrong without reading a traceback.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

# GLUE and user TSVs can hold very long fields (e.g. MNLI parses); the csv default limit is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

FORMATS = ("csv", "tsv", "jsonl")


def require_file(path: str, what: str = "data file") -> str:
    """`path` if it is an existing file, else FileNotFoundError naming it (and `what` it should hold)."""
    if not path:
        raise FileNotFoundError(f"no {what} given")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def format_of(path: str, file_format: str = "") -> str:
    """'csv' | 'tsv' | 'jsonl' from `file_format` or, when empty, the file's extension."""
    if file_format:
        if file_format not in FORMATS:
            raise ValueError(f"file_format={file_format!r} is not one of {FORMATS}")
        return file_format
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    by_ext = {"csv": "csv", "tsv": "tsv", "txt": "tsv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl"}
    if ext not in by_ext:
        raise ValueError(f"cannot tell the format of {path} from its extension {ext!r}; set file_format to one "
                         f"of {FORMATS}")
    return by_ext[ext]


def not_utf8(path: str, error: UnicodeDecodeError) -> ValueError:
    """The error for a data file that is not UTF-8 text, naming the file and the first bad byte."""
    return ValueError(f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x}: {error.reason}); save it "
                      f"as UTF-8")


def read_delimited(path: str, delimiter: str, *, header: bool = True, quoting: bool = True,
                   fieldnames: Optional[Sequence[str]] = None) -> tuple[List[str], List[Dict[str, Any]]]:
    """Rows of a CSV/TSV file as dicts: (column names, rows).

    header: the first line names the columns (else `fieldnames` must, e.g. CoLA's headerless TSVs).
    quoting: False reads every character literally (GLUE TSVs hold unbalanced quotes and must be read
        with `csv.QUOTE_NONE`, as the GLUE/tfds/HF readers do).
    Rows with fewer fields than columns get None in the missing columns (callers decide whether that is
    corruption to skip, as QQP's known bad lines are, or an error); each row carries its 1-based line
    number under the key `__line__`.
    """
    path = require_file(path)
    kwargs = dict(delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    if not quoting:
        kwargs["quotechar"] = None
    try:
        return _read_delimited(path, kwargs, header, fieldnames)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def _read_delimited(path, kwargs, header, fieldnames):
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, **kwargs)
        try:
            first = next(reader) if header else None
        except StopIteration:
            raise ValueError(f"{path} is empty") from None
        if header:
            fieldnames = [name.strip() for name in first]
        elif not fieldnames:
            raise ValueError(f"reading {path} without a header needs fieldnames")
        fieldnames = list(fieldnames)
        rows = []
        for values in reader:
            if not values or all(not v.strip() for v in values):
                continue  # blank line
            row: Dict[str, Any] = dict(zip(fieldnames, values))
            for name in fieldnames[len(values):]:
                row[name] = None
            row["__line__"] = reader.line_num
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no data rows" + (f" (only the header {fieldnames})" if header else ""))
    return fieldnames, rows


def read_jsonl(path: str) -> tuple[List[str], List[Dict[str, Any]]]:
    """Objects of a JSON-lines file: (keys seen in any row, rows); malformed lines raise with their number."""
    path = require_file(path)
    try:
        return _read_jsonl(path)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def _read_jsonl(path):
    rows, keys = [], {}
    with open(path, encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line_number}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {line_number}: expected a JSON object, got {type(row).__name__}")
            keys.update(dict.fromkeys(row))
            row["__line__"] = line_number
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} is empty")
    return list(keys), rows


def read_table(path: str, file_format: str = "") -> tuple[List[str], List[Dict[str, Any]]]:
    """CSV (quoted), TSV (quoted, header) or JSONL by `file_format` / extension: (columns, rows)."""
    path = require_file(path)
    kind = format_of(path, file_format)
    if kind == "jsonl":
        return read_jsonl(path)
    return read_delimited(path, "," if kind == "csv" else "\t")


def require_columns(path: str, columns_found: Iterable[str], needed: Iterable[str]) -> None:
    """KeyError-like ValueError naming the missing columns and listing those found."""
    found = [c for c in columns_found if c != "__line__"]
    missing = [c for c in needed if c and c not in found]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ValueError(f"{path} has no column{'s' if len(missing) > 1 else ''} {names}; the columns found are "
                         f"{found}")


def cap(examples: List[Any], limit: int) -> List[Any]:
    """The first `limit` examples (all when limit < 0): `max_train_examples` / `max_eval_examples`."""
    return examples if limit is None or limit < 0 else examples[:limit]


def tfds_records(name: str, split: str, data_dir: str = "") -> List[Dict[str, Any]]:
    """All records of a locally prepared tfds split (ArrayRecord, through `tfds.data_source`; text decoded
    to str). Never downloads: an unprepared dataset raises `DatasetNotPreparedError` with the command that
    prepares it."""
    from bert_jax.data.sources import TfdsSource
    source = TfdsSource(name, split, data_dir or None, download=False)
    return [source[i] for i in range(len(source))]


def as_str(value) -> str:
    """A tfds text feature (str, bytes or a 0-d array of either) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def use_tfds(task_config) -> bool:
    """Whether `config.task` reads tfds ("" = auto: files when data_dir is set, else tfds)."""
    source = task_config.get("source", "") or ("files" if task_config.get("data_dir", "") else "tfds")
    if source not in ("files", "tfds"):
        raise ValueError(f"config.task.source={source!r} must be '', 'files' or 'tfds'")
    return source == "tfds"
