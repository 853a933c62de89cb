"""`python -m bert_jax.main` ends an error with one line, the message; `--verbose` gives the traceback
(issue 13, item 6). Wrong flags keep absl's usage error."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(tmp_path, *flags):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    # configs/classify.py without a vocab fails early, before any data or model work.
    proc = subprocess.run([sys.executable, "-m", "bert_jax.main", f"--config={ROOT}/configs/classify.py",
                           f"--config.task.train_file={tmp_path / 'train.csv'}", f"--workdir={tmp_path / 'wd'}",
                           *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, proc.stdout + proc.stderr, lines[-1] if lines else ""


def test_error_is_one_line_and_verbose_shows_the_traceback(tmp_path):
    rc, output, last = _main(tmp_path)
    assert rc == 1
    assert last.startswith("bert_jax: ValueError: no vocab: set config.vocab"), last
    assert last.endswith("(--verbose shows the traceback)")
    assert "Traceback" not in output and 'File "' not in output

    rc, output, last = _main(tmp_path, "--verbose")
    assert rc == 1
    assert "Traceback (most recent call last)" in output and "finetune.py" in output
    assert last.startswith("ValueError: no vocab: set config.vocab"), last


def test_usage_errors_keep_absl_behaviour(tmp_path):
    rc, output, last = _main(tmp_path, "--config.mode=bogus")
    assert rc == 1
    assert "unknown mode 'bogus' for this config (finetune | evaluate | predict)" in output
    assert "Traceback" not in output
