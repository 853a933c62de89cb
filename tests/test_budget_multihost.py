"""The wall-clock budget (`config.train_seconds`) on a 2-process run (2 CPU devices each, jax.distributed
over localhost): process 0's clock decides, at the preemption agreement's cadence
(`config.preemption_check_every`), so both processes stop, evaluate and save at the same step, and a
resumed run carries the clock over. One process's clock is skewed (tests/budget_worker.py) so that a
decision by any clock but process 0's would split the processes (a hang or a failure, never a pass).
Timings are never asserted, only relations between steps and logged clock values."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import finish_processes, write_text_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "budget_worker.py")
# CPU only, no inherited jax settings, LLVM -O0 (compiles these tiny steps ~3x faster), 2 devices per process.
CHILD_ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")},
             "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
             "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=2"}
WORDS = ("the model reads a sentence and predicts the masked words from the words around them while the "
         "trainer stops when the clock of the first process says that the budget of seconds is spent").split()
TOTAL = 10_000  # far more steps than the budget allows
CHECK_EVERY = 7  # the agreement cadence: not a multiple of log_every, so a stop at a log step would show
BUDGET = 3.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), WORDS, vocab_size=300, documents=80)


def _args(corpus, workdir, train_seconds) -> list:
    return ["--config=configs/pretrain.py:size=tiny,runlocal", f"--workdir={workdir}",
            f"--config.data.source=text:{corpus[0]}", f"--config.data.vocab={corpus[1]}",
            "--config.data.vocab_size=300", "--config.data.seq_len=32", "--config.data.max_predictions=5",
            "--config.data.global_batch_size=8", "--config.data.eval_batches=1", "--config.data.dupe_factor=1",
            "--config.data.eval_fraction=0.25",  # 20 held-out documents: an eval batch on each process
            "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
            "--config.model.max_position_embeddings=32", "--config.model.num_attention_heads=2",
            f"--config.total_steps={TOTAL}", "--config.optim.warmup_steps=2", "--config.log_every=5",
            "--config.eval_every=100000", "--config.checkpoint_every=100000", "--config.progress_bar=false",
            f"--config.preemption_check_every={CHECK_EVERY}", f"--config.train_seconds={train_seconds}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(args, logs_dir, tag, skewed_clock, timeout=240) -> list:
    """Runs tests/budget_worker.py as processes 0 and 1 of one jax.distributed run, process 1 with the
    `skewed_clock` ("frozen" / "ahead"); kills both past `timeout` (a hang is a failure, not a stuck
    test). Returns their logs; fails unless both exited with status 0."""
    port, procs = _free_port(), []
    for pid in range(2):
        env = {**CHILD_ENV, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(pid), "BUDGET_TEST_CLOCK": f"1:{skewed_clock}"}
        log = open(logs_dir / f"{tag}_{pid}.log", "w")
        procs.append((subprocess.Popen([sys.executable, WORKER, *args], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    return finish_processes(procs, logs_dir, tag, timeout)


def _stop_step(logs) -> int:
    """The step both processes' loops say the budget ended the run at (the same on both)."""
    stops = [re.findall(rf"wall-clock budget of [\d.]+ s reached at step (\d+) of {TOTAL}", log) for log in logs]
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1], stops
    finals = [re.findall(r"process \d final metrics: (\{.*\})$", log, re.M) for log in logs]
    assert [json.loads(f[-1])["step"] for f in finals] == [int(stops[0][0])] * 2, finals
    return int(stops[0][0])


def _records(workdir, split) -> list:
    with open(workdir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def _saved_clock(workdir, step) -> float:
    """The training seconds the checkpoint at `step` carries for a resume (the loop's entry in its JSON
    data state, written by process 0 alone)."""
    found = []
    for folder, _, files in os.walk(workdir / "checkpoints" / str(step)):
        for name in files:
            try:
                with open(os.path.join(folder, name)) as f:
                    content = json.load(f)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(content, dict) and "_loop" in content:
                found.append(content["_loop"]["train_seconds"])
    assert len(found) == 1, found
    return found[0]


def test_budget_stops_both_processes_at_process_0s_agreed_step_and_resumes_with_the_clock(corpus, tmp_path):
    workdir = tmp_path / "run"
    # Process 1's clock never advances: only process 0's can end the run.
    logs = _run_two_processes(_args(corpus, workdir, BUDGET), tmp_path, "budget", "frozen")
    stopped = _stop_step(logs)
    # The budget is read at the agreement steps only (multiples of preemption_check_every), before the end.
    assert 0 < stopped < TOTAL and stopped % CHECK_EVERY == 0
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(stopped)]  # saved as the end of the run
    with open(workdir / "final_metrics.json") as f:
        final = json.load(f)
    assert final["step"] == stopped and not final["preempted"]
    assert 0.0 <= final["eval"]["mlm_accuracy"] <= 1.0  # evaluated at the end
    train = _records(workdir, "train")
    clock = [r["train_seconds"] for r in train]
    assert train[-1]["step"] == stopped and clock == sorted(clock) and clock[-1] >= BUDGET
    assert [r["step"] for r in _records(workdir, "eval")] == [stopped]
    assert _records(workdir, "eval")[-1]["train_seconds"] >= BUDGET
    saved = _saved_clock(workdir, stopped)
    assert saved >= clock[-1]

    # A larger budget resumes both from that step with the clock carried over. Process 1's clock is now
    # always past the budget: had it a say (at the start or at any agreement), the processes would split.
    more = saved + 2.0
    logs = _run_two_processes(_args(corpus, workdir, more), tmp_path, "resumed", "ahead")
    for log in logs:
        assert f"resumed from step {stopped} in" in log, log[-3000:]
    again = _stop_step(logs)
    assert stopped < again < TOTAL and again % CHECK_EVERY == 0
    assert str(again) in os.listdir(workdir / "checkpoints")
    resumed = [r for r in _records(workdir, "train") if r["step"] > stopped]
    assert resumed and resumed[-1]["step"] == again
    assert resumed[0]["train_seconds"] >= saved  # continued from the saved clock, not from 0
    assert resumed[-1]["train_seconds"] >= more
    assert _saved_clock(workdir, again) >= resumed[-1]["train_seconds"]
