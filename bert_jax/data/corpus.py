"""The embedded default pre-training corpus: English prose from the Python standard library itself.

Nothing is downloaded and no third-party text is shipped. The corpus is built at run time from text every
Python installation already has:

* the docstrings (`inspect.getdoc`) of a fixed list of standard-library modules, their public functions,
  classes and methods -- one document per module (module docstring + its functions) and one per class
  (class docstring + its methods);
* the reference topics behind `help('TOPIC')` (`pydoc_data.topics`, the language reference sections), one
  document per topic, when the installation has them.

The text is cleaned (doctest sessions `>>>`/`...` and their output, code blocks, signatures, grammar rules,
reST markup, heading rules and short or symbol-heavy fragments are dropped), split into sentences with a
simple regex splitter and de-duplicated (each sentence kept where it first occurs, so inherited boilerplate
such as "Return repr(self)." appears once). The order is fixed (module list order, names sorted), so the
corpus is identical from run to run (and process to process, whatever the hash seed) on one Python version;
different Python versions have somewhat different docstrings. Hooks the host program replaced at run time
(pytest swaps sys.unraisablehook, ...) are read from the originals Python keeps (`sys.__unraisablehook__`).
With CPython 3.11.7 it holds 1,039 documents, 11,857 sentences, 166,367 words (~1.0 MB; `corpus_stats()`)
and builds in ~1 s: enough for a 2k-8k WordPiece vocab and a few minutes of training of a tiny BERT.

    from bert_jax.data import corpus
    docs = corpus.stdlib_documents()          # list of documents, each a list of sentences
    corpus.write_corpus("/tmp/stdlib.txt")    # create_pretraining_data input: a sentence per line,
                                              # a blank line between documents
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import warnings
from typing import Optional

# Fixed, ordered list. Modules that a given installation lacks (or that fail to import) are skipped. Left out
# on purpose: modules with import side effects (antigravity, this, readline, tkinter/turtle, idlelib), test
# suites and modules removed from recent Python versions (so the corpus does not shrink on 3.13).
MODULES = (
    "builtins", "abc", "argparse", "array", "ast", "asyncio", "asyncio.events", "asyncio.futures", "asyncio.locks",
    "asyncio.queues", "asyncio.streams", "asyncio.tasks", "asyncio.base_events", "asyncio.exceptions",
    "asyncio.protocols", "asyncio.runners", "asyncio.subprocess", "asyncio.transports", "base64", "bdb", "binascii",
    "bisect", "bz2", "calendar", "cmd", "code", "codecs", "collections", "collections.abc", "colorsys",
    "concurrent.futures", "concurrent.futures.process", "concurrent.futures.thread", "configparser", "contextlib",
    "contextvars", "copy", "copyreg", "csv", "ctypes", "ctypes.util", "dataclasses", "datetime", "dbm", "decimal",
    "difflib", "dis", "doctest", "email", "email.charset", "email.feedparser", "email.generator", "email.header",
    "email.headerregistry", "email.message", "email.parser", "email.policy", "email.utils", "email.contentmanager",
    "email.errors", "email.mime.base", "email.mime.multipart", "email.mime.text", "enum", "errno", "faulthandler",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "getpass", "gettext",
    "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client",
    "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib", "importlib.abc", "importlib.machinery",
    "importlib.metadata", "importlib.resources", "importlib.util", "inspect", "io", "ipaddress", "itertools",
    "json", "json.decoder", "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config",
    "logging.handlers", "lzma", "mailbox", "marshal", "math", "mimetypes", "mmap", "modulefinder",
    "multiprocessing", "multiprocessing.connection", "multiprocessing.managers", "multiprocessing.pool",
    "multiprocessing.queues", "multiprocessing.shared_memory", "multiprocessing.synchronize",
    "multiprocessing.context", "multiprocessing.process", "netrc", "numbers", "operator", "optparse", "os",
    "os.path", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath",
    "pprint", "profile", "pstats", "py_compile", "pydoc", "queue", "quopri", "random", "re", "reprlib",
    "rlcompleter", "runpy", "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil", "signal",
    "site", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics", "string", "stringprep",
    "struct", "subprocess", "symtable", "sys", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap",
    "threading", "time", "timeit", "token", "tokenize", "tomllib", "trace", "traceback", "tracemalloc", "types",
    "typing", "unicodedata", "unittest", "unittest.case", "unittest.loader", "unittest.mock", "unittest.result",
    "unittest.runner", "unittest.suite", "urllib", "urllib.error", "urllib.parse", "urllib.request",
    "urllib.response", "urllib.robotparser", "uuid", "warnings", "wave", "weakref", "webbrowser", "wsgiref",
    "wsgiref.handlers", "wsgiref.headers", "wsgiref.simple_server", "wsgiref.util", "wsgiref.validate", "xml",
    "xml.dom", "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.parsers.expat", "xml.sax",
    "xml.sax.handler", "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp",
    "zipfile", "zipimport", "zlib", "zoneinfo",
)
TOPICS_SOURCE = "pydoc_data.topics"  # the source name of the help() reference topics' documents
# Functions some modules re-export from their C implementation module.
_ALIASES = {"os": ("posix", "nt"), "os.path": ("posixpath", "ntpath", "genericpath")}

MIN_WORDS, MAX_WORDS = 4, 120
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.", "approx.", "resp.", "al.", "Ph.D.")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.(\s|$))")
_RULE = re.compile(r"^\s*([-=*~^#+_.])\1{2,}\s*$")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?:?$|^[\w.]+\([\w\s,=*/\[\]'\".]*$|^[\w.]+\s*->")
_CODE_START = re.compile(r"^(def|class)\s+\w+\s*[(:]|^import\s+[\w., ]+$|^from\s+[\w.]+\s+import\b|"
                         r"^(for|while|if|elif|with|try|except|else|finally|async|return)\b.*:$|"
                         r"^[\w.\[\]'\"]+\s*(=|\+=|-=|\*=|:=|==)\s*\S|^[@$%#{}\[\]<]")
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]*)`")
_BULLET = re.compile(r"^(\*|-|\+|\u2022|\d+\.|\(\w\)|[a-z]\))\s+")
_SYMBOLS = set("=(){}[]<>|\\/^~@#$%&;`+")
_WORD = re.compile(r"^[(\"']*[A-Za-z][A-Za-z'-]*[.,;:!?)\"']*$")


def _code_like(line: str) -> bool:
    s = line.strip()
    if _SIGNATURE.match(s) or _CODE_START.match(s):
        return True
    symbols = sum(c in _SYMBOLS for c in s)
    return symbols >= 5 and symbols > 0.12 * len(s) or "::=" in s or "->" in s


def _clean_markup(text: str) -> str:
    text = _ROLE.sub(r"\1", text)
    text = text.replace("``", "").replace("`", "").replace("**", "")
    text = re.sub(r"(?<![\w*])\*(\w[^*]*)\*(?!\w)", r"\1", text)  # *emphasis*
    return re.sub(r"\s+", " ", text).strip()


def _paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of a docstring / help topic, code and doctests removed."""
    paragraphs, current, in_doctest, code_indent = [], [], False, None

    def flush():
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    lines = doc.expandtabs().splitlines()
    for i, raw in enumerate(lines):
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if not stripped:
            flush()
            in_doctest = False
            continue
        if code_indent is not None:  # inside a literal block: until the indentation falls back
            if indent > code_indent:
                continue
            code_indent = None
        if in_doctest or _DOCTEST.match(raw):
            flush()
            in_doctest = True  # the session and its output, up to the next blank line
            continue
        next_line = lines[i + 1] if i + 1 < len(lines) else ""
        if _RULE.match(raw) or _RULE.match(next_line):  # heading rule / heading text
            flush()
            continue
        if _code_like(raw):
            flush()
            continue
        if _BULLET.match(stripped):
            flush()
            stripped = _BULLET.sub("", stripped)
        current.append(stripped)
        if stripped.endswith("::") or (stripped.endswith(":") and _indented_block_follows(lines, i, indent)):
            # reST literal block / example introduced by ':' -- drop the indented lines that follow.
            if stripped.endswith("::"):
                current[-1] = stripped[:-1]
            flush()
            code_indent = indent
    flush()
    return paragraphs


def _indented_block_follows(lines, i, indent) -> bool:
    for line in lines[i + 1:]:
        if line.strip():
            return len(line) - len(line.lstrip()) > indent and _code_like(line)
    return False


def split_sentences(text: str) -> list[str]:
    """Regex sentence splitter: breaks after . ! ? followed by space and a capital/digit (not after e.g./i.e.)."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        head = text[start:m.start()].rstrip("\"')]")
        if any(head.endswith(a) for a in _ABBREVIATIONS) or re.search(r"\b[A-Z]\.$", head):
            continue  # an abbreviation or an initial
        pieces.append(text[start:m.end()].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _good_sentence(s: str) -> bool:
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not (s[0].isalpha() or s[0] in "(\"'") or s[-1] not in ".!?:":
        return False
    if sum(map(bool, map(_WORD.match, words))) < 0.75 * len(words):
        return False
    symbols = sum(c in _SYMBOLS for c in s)
    return symbols <= 0.08 * len(s) and not any(m in s for m in (">>>", "...", "|", "+--", "::"))


def _document_sentences(texts, seen: set) -> list[str]:
    out = []
    for text in texts:
        for paragraph in _paragraphs(text):
            sentences = split_sentences(_clean_markup(paragraph))
            if sentences and sentences[-1][0].isupper() and sentences[-1][-1].isalnum():
                sentences[-1] += "."  # docstring summary lines often lack the full stop
            for sentence in sentences:
                if _good_sentence(sentence) and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
    return out


def _doc(obj) -> str:
    try:
        return inspect.getdoc(obj) or ""
    except Exception:  # pragma: no cover - exotic descriptors
        return ""


def _walk_module(name: str, visited: set):
    """Yields (kind, [docstrings]) for the module itself and each of its public classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(name)
        except Exception:  # not on this installation
            return
    owners = (name, *_ALIASES.get(name, ()))
    if name == "builtins":
        owners = ("builtins",)
    module_texts, classes = [_doc(module)] if id(module) not in visited else [], []
    visited.add(id(module))
    namespace = vars(module)
    for attr, obj in sorted(namespace.items()):
        if attr.startswith("_"):
            continue
        # Hooks that programs replace at run time (pytest swaps sys.unraisablehook, threading.excepthook, ...):
        # read the original, kept as sys.__unraisablehook__ etc., so the corpus does not depend on the host.
        obj = namespace.get(f"__{attr}__", obj)
        if id(obj) in visited or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) not in owners:
            continue  # re-exported from elsewhere
        visited.add(id(obj))
        if inspect.isclass(obj):
            texts = [_doc(obj)]
            for method_name, method in sorted(vars(obj).items()):
                if not method_name.startswith("_") and (inspect.isroutine(method) or isinstance(method, property)):
                    texts.append(_doc(method))
            classes.append(texts)
        else:
            module_texts.append(_doc(obj))
    yield module_texts
    yield from classes


def _topic_texts():
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped installations
        return
    for key in sorted(topics):
        yield [topics[key]]


@functools.lru_cache(maxsize=1)
def _build_labelled() -> tuple:
    """Built in a fresh, isolated interpreter: what a module exposes depends on what else the host
    process imported or patched (pytest, jax, ...), and the corpus must not."""
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-I", os.path.abspath(__file__)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode:
        raise RuntimeError(f"building the stdlib corpus failed:\n{proc.stderr[-2000:]}")
    return tuple((source, tuple(doc)) for source, doc in json.loads(proc.stdout))


def _build() -> tuple:
    return tuple(doc for _, doc in _build_labelled())


def _build_labelled_here() -> tuple:
    """((source, sentences), ...): source is the module a document's docstrings come from, or
    TOPICS_SOURCE for the help() reference topics."""
    seen: set = set()
    visited: set = set()
    documents = []
    sources = [(name, texts) for name in MODULES for texts in _walk_module(name, visited)]
    sources.extend((TOPICS_SOURCE, texts) for texts in _topic_texts())
    for source, texts in sources:
        sentences = _document_sentences(texts, seen)
        if sentences:
            documents.append((source, tuple(sentences)))
    return tuple(documents)


def _build_here() -> tuple:
    return tuple(doc for _, doc in _build_labelled_here())


def stdlib_documents(max_documents: Optional[int] = None) -> list[list[str]]:
    """The corpus as documents (lists of sentences), in a fixed order; built once per process, then cached.

    `max_documents` keeps the first N documents."""
    if max_documents is not None and (isinstance(max_documents, bool) or int(max_documents) < 1):
        raise ValueError(f"max_documents must be a positive integer or None, got {max_documents!r}")
    documents = _build()
    if max_documents is not None:
        documents = documents[:int(max_documents)]
    return [list(d) for d in documents]


def stdlib_labelled_documents(max_documents: Optional[int] = None) -> list[tuple[str, list[str]]]:
    """`stdlib_documents()` with the module each document comes from: [(module name, sentences)]
    ("asyncio.tasks", "email.message", ...; TOPICS_SOURCE for the reference topics)."""
    labelled = _build_labelled()
    documents = stdlib_documents(max_documents)
    return [(source, doc) for (source, _), doc in zip(labelled, documents)]


def stdlib_sentences(max_documents: Optional[int] = None) -> list[str]:
    """All sentences of `stdlib_documents(max_documents)`, flattened."""
    return [s for d in stdlib_documents(max_documents) for s in d]


def corpus_stats(max_documents: Optional[int] = None) -> dict[str, int]:
    """{'documents', 'sentences', 'words', 'characters'} of the corpus."""
    documents = stdlib_documents(max_documents)
    sentences = [s for d in documents for s in d]
    return {"documents": len(documents), "sentences": len(sentences),
            "words": sum(len(s.split()) for s in sentences), "characters": sum(len(s) for s in sentences)}


def corpus_text(max_documents: Optional[int] = None) -> str:
    """The create_pretraining_data input format: one sentence per line, a blank line between documents."""
    return "\n\n".join("\n".join(d) for d in stdlib_documents(max_documents)) + "\n"


def write_corpus(path, max_documents: Optional[int] = None) -> str:
    """Writes `corpus_text()` to `path` (UTF-8; parent directories are created). Returns the path."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(corpus_text(max_documents))
    return path


if __name__ == "__main__":  # the isolated builder run by `_build`
    import json
    import sys
    json.dump([[source, list(doc)] for source, doc in _build_labelled_here()], sys.stdout)
