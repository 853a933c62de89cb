"""A fresh clone works on any machine: nothing machine-specific is tracked, and setup.sh repairs a .venv
that does not work here (the failure a tracked `.venv` symlink caused: 'File exists: .venv')."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def tracked():
    if not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    return _git("ls-files", "-s").splitlines()


def test_no_virtualenv_or_local_install_is_tracked(tracked):
    paths = [line.split("\t", 1)[1] for line in tracked]
    bad = [p for p in paths if re.search(r"(^|/)(\.?venv|\.legacy_hf|\.tf_site|\.tpu_site|site-packages)(/|$)", p)]
    assert not bad, f"tracked local installs: {bad[:5]}"


def test_no_symlink_points_out_of_the_tree(tracked):
    links = [line.split("\t", 1)[1] for line in tracked if line.startswith("120000 ")]
    outside = []
    for link in links:
        target = os.readlink(os.path.join(ROOT, link)) if os.path.islink(os.path.join(ROOT, link)) else ""
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(link), target))
        if os.path.isabs(target) or not resolved.startswith(ROOT + os.sep):
            outside.append(f"{link} -> {target}")
    assert not outside, f"tracked symlinks out of the repository: {outside}"


def test_no_absolute_path_of_a_machine_in_tracked_files(tracked):
    # This checkout's own location, and home/work directories, never belong in a commit.
    patterns = [re.escape(ROOT), re.escape(os.path.dirname(ROOT)) + "/", r"/home/[A-Za-z0-9_.-]+/", r"/Users/\w+/",
                r"(?<![\w.])/root/", r"(?<![\w.])/work/"]
    rx = re.compile("|".join(f"(?:{p})" for p in patterns if p not in ("/", re.escape("/") + "/")))
    hits = []
    for line in tracked:
        mode, path = line.split(" ", 1)[0], line.split("\t", 1)[1]
        if mode == "120000" or path == "tests/test_repo_hygiene.py":  # links; this file spells the patterns
            continue
        try:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                for number, text in enumerate(f, 1):
                    if rx.search(text):
                        hits.append(f"{path}:{number}: {text.strip()[:120]}")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
    assert not hits, "machine paths in tracked files:\n" + "\n".join(hits[:20])


@pytest.mark.parametrize("broken", ["dangling_link", "foreign_link", "file", "no_python"])
def test_setup_sh_replaces_a_venv_that_does_not_work(tmp_path, broken):
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(os.path.join(ROOT, "setup.sh"), repo / "setup.sh")
    venv = repo / ".venv"
    if broken == "dangling_link":
        os.symlink("/nonexistent/venv", venv)
    elif broken == "foreign_link":
        (tmp_path / "elsewhere" / "bin").mkdir(parents=True)
        os.symlink(tmp_path / "elsewhere", venv)
    elif broken == "file":
        venv.write_text("not a venv")
    else:
        (venv / "bin").mkdir(parents=True)
    proc = subprocess.run(["bash", "setup.sh", "venv"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    assert "replacing .venv" in proc.stderr
    assert venv.is_dir() and not venv.is_symlink()
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and os.path.realpath(check.stdout.strip()) == os.path.realpath(venv)
    # A working .venv is kept as it is.
    marker = venv / "kept"
    marker.write_text("")
    proc = subprocess.run(["bash", "setup.sh", "venv"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0 and marker.exists() and "replacing" not in proc.stderr


def test_ci_metrics_comparison_ignores_only_wall_clock_fields(tmp_path):
    """.ci/compare_metrics.py (CI runs README command 1 twice and compares): equal apart from time and
    rates passes; one float32 ulp in a loss fails, naming the step and field."""
    import json

    import numpy as np
    record = {"step": 100, "split": "train", "time": 1.0, "loss": 7.754917621612549, "seq_per_s": 3.5, "mfu": 0.1}
    first, same, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    first.write_text(json.dumps(record) + "\n")
    same.write_text(json.dumps(dict(record, time=2.0, seq_per_s=9.0, mfu=0.2)) + "\n")
    other.write_text(json.dumps(dict(record, loss=float(np.nextafter(np.float32(record["loss"]), np.float32(8))))) + "\n")
    script = os.path.join(ROOT, ".ci", "compare_metrics.py")
    ok = subprocess.run([sys.executable, script, str(first), str(same)], capture_output=True, text=True)
    assert ok.returncode == 0 and "metrics identical: 1 records" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, script, str(first), str(other)], capture_output=True, text=True)
    assert bad.returncode == 1 and "step 100 (train) differs in ['loss']" in bad.stderr, bad.stdout + bad.stderr
