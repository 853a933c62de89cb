import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_HF = os.environ.get("BERT_JAX_LEGACY_HF", os.path.join(ROOT, ".legacy_hf"))


def legacy_cases() -> list:
    return (cases.relative_cases() + cases.head_mask_cases()
            + [cases.mask_3d_case(), cases.mask_3d_case("relative_key", "mask_3d_rel")])


@pytest.fixture(scope="session")
def legacy_reference(tmp_path_factory):
    """Runs transformers 4.57 (relative positions, head_mask) once per session in a subprocess.

    Returns {case name: (checkpoint dir, outputs dict)}."""
    if not os.path.isfile(os.path.join(LEGACY_HF, "transformers", "__init__.py")):
        message = f"transformers 4.57 is not installed in {LEGACY_HF} (run `bash setup.sh test`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out_dir = str(tmp_path_factory.mktemp("legacy_hf"))
    spec = os.path.join(out_dir, "spec.json")
    all_cases = legacy_cases()
    with open(spec, "w") as f:
        json.dump(all_cases, f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([LEGACY_HF, ROOT]), TRANSFORMERS_VERBOSITY="error",
               HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hf_reference.py"), spec, out_dir],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"legacy reference failed:\n{proc.stderr[-4000:]}")
    result = {}
    for case in all_cases:
        path = os.path.join(out_dir, case["name"])
        with np.load(os.path.join(path, "outputs.npz")) as data:
            result[case["name"]] = (path, {k: data[k] for k in data.files})
    return result


def write_text_corpus(directory, words, vocab_size: int, words_per_sentence=(5, 12), documents: int = 40):
    """A small `text:` corpus in `directory` (sentences of random `words`, 3-6 per document, a blank line
    between documents; seed 0) and a WordPiece vocab trained on it: (corpus path, vocab directory)."""
    from bert_jax.tokenization import train_wordpiece

    rs = np.random.RandomState(0)
    path = directory / "corpus.txt"
    docs = ["\n".join(" ".join(rs.choice(words, rs.randint(*words_per_sentence))) + "." for _ in range(rs.randint(3, 7)))
            for _ in range(documents)]
    path.write_text("\n\n".join(docs) + "\n")
    vocab_dir = directory / "vocab"
    train_wordpiece([str(path)], vocab_size=vocab_size).save(str(vocab_dir))
    return str(path), str(vocab_dir)


def finish_processes(procs, logs_dir, tag, timeout=240) -> list:
    """Waits for the processes of one multi-process run, [(Popen, open log file)] with logs at
    `logs_dir/{tag}_{process}.log` (killing all past `timeout`: a hang is a failure, not a stuck test); returns
    their logs. Fails unless all exited with status 0."""
    deadline, hung = time.time() + timeout, False
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            hung = True
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()  # SIGKILL, never SIGTERM: that would be another preemption notice
            proc.wait()
        log.close()
    logs = [(logs_dir / f"{tag}_{pid}.log").read_text() for pid in range(len(procs))]
    codes = [proc.returncode for proc, _ in procs]
    detail = "\n".join(f"--- process {pid}:\n{log[-3000:]}" for pid, log in enumerate(logs))
    assert not hung, f"{tag}: hung for {timeout} s (return codes {codes})\n{detail}"
    assert codes == [0] * len(procs), f"{tag}: return codes {codes}\n{detail}"
    return logs
