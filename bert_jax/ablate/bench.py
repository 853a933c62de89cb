"""Runs the grid: for each variant and seed, pretraining on the equal budget then fine-tuning from it,
each stage in its own subprocess, in `<workdir>/<variant>/seed<k>/{pretrain,finetune}`.

A stage whose `final_metrics.json` is there (and not preempted) is skipped, so re-running the bench
resumes it; an interrupted stage resumes from its checkpoint. Each run's resolved config is kept in
`<run>/{pretrain,finetune}_config.json`: re-running with other settings into the same workdir is an
error (a table must not mix budgets) rather than a silent reuse.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import List, Optional, Sequence

import ml_collections

from bert_jax.ablate import child, grid

logger = logging.getLogger(__name__)

DEFAULT_FINETUNE = "configs/finetune_demo.py"


@dataclasses.dataclass
class RunResult:
    """One (variant, seed): where it ran and how it ended."""
    variant: str
    seed: int
    directory: str
    status: str  # "ok" | "failed"
    reason: str = ""


def _write_or_check(path: str, config: ml_collections.ConfigDict) -> None:
    """Keeps the resolved config next to the run; a different one already there is an error."""
    text = json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() != text:
                raise ValueError(f"{path} holds a run with other settings (budget, overrides or code defaults "
                                 "changed): use a new --workdir, or delete that run to redo it")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def finished(workdir: str) -> bool:
    path = os.path.join(workdir, "final_metrics.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return not json.load(f).get("preempted", False)


def run_stage(stage: str, config_path: str, workdir: str, log_path: str, timeout: Optional[float] = None) -> str:
    """Runs `python -m bert_jax.ablate.child stage` to the end; '' on success, else the error line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([grid.ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {stage} {workdir}\n")
        log.flush()
        try:
            proc = subprocess.run([sys.executable, "-m", "bert_jax.ablate.child", stage, config_path, workdir],
                                  cwd=grid.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{stage} ran past {timeout} s"
    if proc.returncode == 0:
        return ""
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("bert_jax: ")]
    return (errors[-1][len("bert_jax: "):] if errors else (lines[-1] if lines else "")) + f" (log: {log_path})"


def shared_vocab(base: ml_collections.ConfigDict, workdir: str) -> str:
    """The bench's one vocab (trained once, in a subprocess, on the base's corpus) as a tokenizer
    directory, or the base's own `data.vocab` when it names one. Every variant on the base's corpus
    and vocab size tokenizes with it, so their MLM accuracies are over the same targets."""
    if base.data.vocab:
        return base.data.vocab
    directory = os.path.join(workdir, "vocab")
    if os.path.isfile(os.path.join(directory, "tokenizer", "vocab.txt")):
        return os.path.join(directory, "tokenizer")
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, "config.json")
    with open(config_path, "w") as f:
        json.dump(base.to_dict(), f, indent=1, sort_keys=True, default=str)
    error = run_stage("vocab", config_path, directory, os.path.join(directory, "log.txt"))
    if error:
        raise RuntimeError(f"training the shared vocab failed: {error}")
    return os.path.join(directory, "tokenizer")


def vocab_size_of(tokenizer_dir: str) -> int:
    """Tokens in a tokenizer directory's vocab.txt (what the model's vocab_size becomes)."""
    path = os.path.join(tokenizer_dir, "vocab.txt") if os.path.isdir(tokenizer_dir) else tokenizer_dir
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def with_vocab(variant: grid.Variant, base: ml_collections.ConfigDict, vocab: str, seed: int) -> ml_collections.ConfigDict:
    """The variant's config with the shared vocab (when it trains on the base's corpus and vocab size) and the
    seed, without a progress bar."""
    config = copy.deepcopy(variant.config)
    d = config.data
    if not d.vocab and (d.source, d.vocab_size, d.lowercase) == (base.data.source, base.data.vocab_size,
                                                                 base.data.lowercase):
        d.vocab = vocab
    config.seed = seed
    if "progress_bar" in config:
        config.progress_bar = False
    return config


def pretrain_config(variant: grid.Variant, base: ml_collections.ConfigDict, vocab: str, budget: grid.Budget,
                    seed: int, seconds_per_step: Optional[float] = None) -> ml_collections.ConfigDict:
    """`with_vocab` with the budget (a seconds budget's schedule laid over the steps `seconds_per_step` fits)."""
    config = with_vocab(variant, base, vocab, seed)
    d = config.data
    return grid.apply_budget(config, budget, vocab_size_of(d.vocab) if d.vocab else d.vocab_size, seconds_per_step)


def finetune_config(spec: str, overrides: Sequence[str], pretrain_dir: str, seed: int) -> ml_collections.ConfigDict:
    config = grid.load_config_file(spec)
    for key, value in map(grid.parse_override, overrides):
        grid.apply_override(config, key, value)
    config.init_from = pretrain_dir
    config.seed = seed
    if "progress_bar" in config:
        config.progress_bar = False
    return config


def calibrate(variant: grid.Variant, base: ml_collections.ConfigDict, vocab: str, workdir: str,
              stage_timeout: Optional[float] = None) -> float:
    """The variant's seconds per training step, timed once in `<workdir>/<variant>/calibration` (kept, so a
    rerun lays the same schedule and its configs match the runs already there)."""
    directory = os.path.join(workdir, variant.name, "calibration")
    result = os.path.join(directory, child.CALIBRATION)
    if not os.path.isfile(result):
        config = with_vocab(variant, base, vocab, seed=0)
        shutil.rmtree(directory, ignore_errors=True)  # a calibration cut short: time it afresh
        os.makedirs(directory)
        _write_or_check(os.path.join(directory, "config.json"), config)
        logger.info("%s: timing %d steps to lay the schedule over the budget", variant.name, child.CALIBRATION_STEPS)
        error = run_stage("calibrate", os.path.join(directory, "config.json"), directory,
                          os.path.join(directory, "log.txt"), stage_timeout)
        if error:
            raise RuntimeError(f"calibration: {error}")
    with open(result) as f:
        return float(json.load(f)["seconds_per_step"])


def run_bench(bench: ml_collections.ConfigDict, variants: List[grid.Variant], workdir: str, budget: grid.Budget,
              seeds: int, finetune_spec: str = DEFAULT_FINETUNE, finetune_overrides: Sequence[str] = (),
              stage_timeout: Optional[float] = None, fit_schedule: bool = True) -> List[RunResult]:
    """Pretrains and fine-tunes every available variant for `seeds` seeds (0..seeds-1); returns one
    RunResult per run (unavailable variants have none). With a seconds budget and `fit_schedule`, each
    variant's step is timed first (`calibrate`) and its schedule laid over the steps that fit."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    os.makedirs(workdir, exist_ok=True)
    vocab = shared_vocab(bench.base, workdir)
    results = []
    for variant in variants:
        if variant.unavailable:
            logger.warning("variant %s unavailable: %s", variant.name, variant.unavailable)
            continue
        seconds_per_step, calibration_error = None, ""
        if budget.seconds and fit_schedule:
            try:
                seconds_per_step = calibrate(variant, bench.base, vocab, workdir, stage_timeout)
            except (RuntimeError, ValueError) as e:
                calibration_error = str(e)
        for seed in range(seeds):
            run_dir = os.path.join(workdir, variant.name, f"seed{seed}")
            if calibration_error:
                results.append(RunResult(variant.name, seed, run_dir, "failed", calibration_error))
                continue
            results.append(_run_one(variant, bench.base, vocab, budget, seed, run_dir, finetune_spec,
                                    finetune_overrides, stage_timeout, seconds_per_step))
    return results


def _run_one(variant, base, vocab, budget, seed, run_dir, finetune_spec, finetune_overrides, stage_timeout,
             seconds_per_step=None):
    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, "log.txt")
    fail = lambda reason: RunResult(variant.name, seed, run_dir, "failed", reason)  # noqa: E731
    try:
        config = pretrain_config(variant, base, vocab, budget, seed, seconds_per_step)
    except ValueError as e:  # e.g. a FLOPs budget below one step
        return fail(str(e))
    pretrain_dir, finetune_dir = os.path.join(run_dir, "pretrain"), os.path.join(run_dir, "finetune")
    _write_or_check(os.path.join(run_dir, "pretrain_config.json"), config)
    if finished(pretrain_dir) and os.path.isfile(os.path.join(pretrain_dir, "ablate_info.json")):
        logger.info("%s seed %d: pretraining already done", variant.name, seed)
    else:
        logger.info("%s seed %d: pretraining for %s", variant.name, seed, budget.describe())
        error = run_stage("pretrain", os.path.join(run_dir, "pretrain_config.json"), pretrain_dir, log, stage_timeout)
        if error:
            return fail(f"pretraining: {error}")
    fconfig = finetune_config(finetune_spec, finetune_overrides, pretrain_dir, seed)
    _write_or_check(os.path.join(run_dir, "finetune_config.json"), fconfig)
    if finished(finetune_dir):
        logger.info("%s seed %d: fine-tuning already done", variant.name, seed)
    else:
        logger.info("%s seed %d: fine-tuning (%s)", variant.name, seed, finetune_spec)
        error = run_stage("finetune", os.path.join(run_dir, "finetune_config.json"), finetune_dir, log, stage_timeout)
        if error:
            return fail(f"fine-tuning: {error}")
    return RunResult(variant.name, seed, run_dir, "ok")
