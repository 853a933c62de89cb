"""Every entry point speaks absl flags, as the rest of the JAX ecosystem does: `--helpfull` lists its flags and
`--flagfile` reads them from a file; no argparse anywhere."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = [["-m", "bert_jax.main"], ["-m", "bert_jax.aot"], ["-m", "bert_jax.benchmark"],
                ["-m", "bert_jax.export"], ["-m", "bert_jax.data.create_pretraining_data"],
                ["launch/sweep.py"], ["benchmarks/loop_overhead.py"]]


def test_no_argparse_in_the_code():
    users = [os.path.relpath(p, ROOT) for pattern in ("bert_jax/**/*.py", "launch/*.py", "benchmarks/*.py")
             for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
             if "import argparse" in open(p).read() or "from argparse" in open(p).read()]
    assert not users, users


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[-1])
def test_helpfull(entry):
    proc = subprocess.run([sys.executable, *entry, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
    output = proc.stdout + proc.stderr  # absl's help flags exit with status 1 after printing
    assert "--flagfile" in output and "absl.flags:" in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]


def test_flagfile(tmp_path):
    from bert_jax import benchmark
    flagfile = tmp_path / "bench.flags"
    flagfile.write_text("--config=tiny\n--batch=3\n--notorch\n")
    fv = benchmark.parse_args([f"--flagfile={flagfile}", "--seq=16"])
    assert (fv.config, fv.batch, fv.seq, fv.torch) == ("tiny", 3, 16, False)
