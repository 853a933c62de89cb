"""Workdir paths that are local directories or cloud URLs (`gs://bucket/run` on TPU pods).

Every read or write of a run's workdir goes through these helpers, built on `etils.epath` (the path
type orbax's CheckpointManager takes, with backends for gs:// and friends). Local paths are made
absolute exactly as the loops always did; URLs are kept as given (`os.path.abspath` would turn
`gs://b/run` into `<cwd>/gs:/b/run`).

Object stores have no rename and no append, so on URLs `write_json` writes the object directly (an
upload becomes visible whole or not at all) and `append_line` rewrites the object. Libraries that
only write local files (task prediction writers, the tokenizer backend) write into `staged_dir`, a
local temp dir whose files are copied to the URL on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
    """Whether `path` names a remote location (`scheme://...`) rather than a local file."""
    return "://" in os.fspath(path)


def workdir_path(path: PathLike) -> epath.Path:
    """`path` as an `epath.Path`: local paths absolute (relative to the current directory), URLs untouched."""
    text = os.fspath(path)
    if not text:
        raise ValueError("empty workdir path")
    if is_url(text):
        if text.startswith("file://"):
            return epath.Path(os.path.abspath(text[len("file://"):]))
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


def read_json(path: PathLike) -> Any:
    return json.loads(workdir_path(path).read_text())


def write_json(path: PathLike, value: Any) -> None:
    """Writes `value` as indented JSON. Locally via a temp file + rename so readers never see half a
    file; on object stores the upload itself is atomic."""
    path = workdir_path(path)
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    if is_url(path):
        path.write_text(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def append_line(path: PathLike, line: str) -> None:
    """Appends `line` (plus a newline) to a text file. Object stores cannot append, so there the
    object is read and rewritten: O(file size) per call, fine for a metrics log written every
    `log_every` steps."""
    path = workdir_path(path)
    line = line.rstrip("\n") + "\n"
    if not is_url(path):
        with open(path, "a") as f:
            f.write(line)
        return
    previous = path.read_text() if path.exists() else ""
    path.write_text(previous + line)


def copy_tree(source: PathLike, destination: PathLike) -> None:
    """Copies the files under local directory `source` to `destination` (a local path or URL)."""
    source, destination = os.fspath(source), workdir_path(destination)
    for directory, _, files in os.walk(source):
        relative = os.path.relpath(directory, source)
        target_dir = destination if relative == "." else destination / relative
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            epath.Path(directory, name).copy(target_dir / name, overwrite=True)


@contextlib.contextmanager
def staged_dir(destination: PathLike) -> Iterator[str]:
    """A local directory to write `destination`'s files into: `destination` itself when it is local,
    else a temp dir whose files are copied to `destination` when the block exits without error."""
    destination = workdir_path(destination)
    if not is_url(destination):
        destination.mkdir(parents=True, exist_ok=True)
        yield os.fspath(destination)
        return
    with tempfile.TemporaryDirectory(prefix="bert_jax_stage_") as local:
        yield local
        copy_tree(local, destination)
