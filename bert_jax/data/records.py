"""The offline pre-training record format: feature dicts as msgpack records in ArrayRecord shards, written
(`write_examples`) and read back (`PretrainingDataSource`); see `pretraining.py` for the layout."""

from __future__ import annotations

import glob
import itertools
import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import msgpack
import numpy as np

FORMAT_VERSION = "bert_jax.pretraining/v1"
_NDARRAY_EXT = 1  # flax.serialization._MsgpackExtType.ndarray


def encode_example(features: Mapping[str, Any]) -> bytes:
    """dict of arrays -> msgpack bytes (flax.serialization.msgpack_serialize layout)."""
    def ext(a):
        a = np.asarray(a)  # (np.ascontiguousarray would turn 0-d into 1-d)
        return msgpack.ExtType(_NDARRAY_EXT, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes("C")),
                                                           use_bin_type=True))
    return msgpack.packb({str(k): ext(v) for k, v in features.items()}, use_bin_type=True)


def _ext_hook(code, data):
    if code != _NDARRAY_EXT:
        return msgpack.ExtType(code, data)
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    dtype = np.dtype(dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()


def decode_example(record: bytes) -> dict[str, np.ndarray]:
    """Inverse of `encode_example`."""
    return msgpack.unpackb(record, ext_hook=_ext_hook, raw=False)


def output_prefix(output: Union[str, os.PathLike]) -> str:
    """A directory (existing, or ending in a separator) -> `DIR/pretraining`; anything else is used as a prefix."""
    output = os.fspath(output)
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return os.path.join(output, "pretraining")
    return output


def shard_paths(prefix: str, num_shards: int) -> list[str]:
    return [f"{prefix}.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def write_examples(examples: Sequence[Union[bytes, Mapping[str, Any]]], output: Union[str, os.PathLike],
                   num_shards: int = 1, metadata: Optional[Mapping[str, Any]] = None,
                   show_progress: bool = False) -> list[str]:
    """Writes examples (feature dicts or `encode_example` bytes) to `num_shards` ArrayRecord files in contiguous
    blocks, plus `{prefix}.features.json`. Returns the shard paths."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from bert_jax.data.pretraining import _progress, validate_args  # (that module imports this one)
    validate_args(num_shards=num_shards)
    prefix = output_prefix(output)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    paths = shard_paths(prefix, num_shards)
    bounds = np.linspace(0, len(examples), num_shards + 1).round().astype(int)
    first = None
    it = iter(_progress(examples, len(examples), "writing", show_progress))
    for path, start, stop in zip(paths, bounds[:-1], bounds[1:]):
        writer = ArrayRecordWriter(path, "group_size:1")
        try:
            for example in itertools.islice(it, stop - start):
                record = example if isinstance(example, bytes) else encode_example(example)
                if first is None:
                    first = decode_example(record)
                writer.write(record)
        finally:
            writer.close()
    for _ in it:  # (nothing left; lets a progress bar finish)
        pass
    meta = {"format": FORMAT_VERSION,
            "encoding": "msgpack map {feature: ExtType(1, msgpack((shape, dtype_name, C-order bytes)))}; "
                        "readable with bert_jax.data.pretraining.decode_example or flax.serialization.msgpack_restore",
            "features": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in (first or {}).items()},
            "num_examples": len(examples),
            "shards": [{"path": os.path.basename(p), "num_examples": int(b - a)}
                       for p, a, b in zip(paths, bounds[:-1], bounds[1:])],
            **dict(metadata or {})}
    with open(prefix + ".features.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return paths


def _resolve_record_paths(spec) -> list[str]:
    if not isinstance(spec, (str, os.PathLike)):
        return [p for s in spec for p in _resolve_record_paths(s)]
    paths = []
    for part in (p.strip() for p in os.fspath(spec).split(",")):
        if not part:
            continue
        if os.path.isdir(part):
            found = glob.glob(os.path.join(part, "*.array_record-*"))
        elif os.path.isfile(part):
            found = [part]
        else:
            found = glob.glob(part) or glob.glob(part + ".array_record-*")
        found = sorted(p for p in found if os.path.isfile(p) and not p.endswith(".json"))
        if not found:
            raise ValueError(f"no ArrayRecord files found for {part!r}")
        paths.extend(found)
    if not paths:
        raise ValueError(f"no ArrayRecord files given ({spec!r})")
    return paths


class PretrainingDataSource:
    """Random-access source over the shards (grain/tfds data-source protocol): `len(ds)`, `ds[i]` -> dict of
    numpy arrays, `ds.__getitems__(keys)`. Accepts a directory, a prefix, a glob, comma-separated paths, or a
    list. `metadata` is the parsed `features.json` (or None)."""

    def __init__(self, paths_or_glob):
        from array_record.python.array_record_data_source import ArrayRecordDataSource
        self.paths = _resolve_record_paths(paths_or_glob)
        self._source = ArrayRecordDataSource(self.paths)
        meta_path = self.paths[0].rsplit(".array_record-", 1)[0] + ".features.json"
        self.metadata = None
        if os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                self.metadata = json.load(f)

    def __len__(self) -> int:
        return len(self._source)

    def _key(self, i) -> int:
        i = i.__index__()
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        return i

    def __getitem__(self, i) -> dict[str, np.ndarray]:
        return decode_example(self._source[self._key(i)])

    def __getitems__(self, keys) -> list[dict[str, np.ndarray]]:
        return [decode_example(r) for r in self._source.__getitems__([self._key(k) for k in keys])]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"PretrainingDataSource(num_examples={len(self)}, num_files={len(self.paths)})"
