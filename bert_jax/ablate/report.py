"""The bench's results: per-run numbers read from the runs' workdirs, the per-variant table (mean ±
std over seeds) as markdown and JSON, and the curves (eval MLM accuracy against training seconds and
against training FLOPs) as a PNG.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from bert_jax.ablate import grid
from bert_jax.ablate.bench import RunResult
from bert_jax.ablate.child import INFO

TABLE_MD, TABLE_JSON, PLOT = "ablation.md", "ablation.json", "ablation.png"


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def finetune_accuracy(final: dict) -> Optional[float]:
    """Dev accuracy of the fine-tuned model kept (the best on dev), from its final_metrics.json."""
    # {"best_metric": "validation/accuracy", "best": {"validation": {"accuracy": ...}}, "final": {...}}
    for section in ("best", "final"):
        splits = final.get(section) or {}
        for split in ("validation", "dev", "eval"):
            value = (splits.get(split) or {}).get("accuracy") if isinstance(splits, dict) else None
            if value is not None:
                return float(value)
    return None


def run_numbers(run: RunResult, flops_budget: bool = False) -> dict:
    """One finished run: params, FLOPs/token, tokens/s (tokens trained over the training clock: what
    the budget paid for), steps, eval MLM accuracy at the budget, fine-tuning dev accuracy,
    the eval curve [(step, training seconds, FLOPs, MLM accuracy)] and what ended it: "budget" (the
    seconds, or with `flops_budget` the steps the FLOPs bought) or "total_steps" (the config's steps
    came before the seconds)."""
    pretrain = os.path.join(run.directory, "pretrain")
    info = _read_json(os.path.join(pretrain, INFO))
    final = _read_json(os.path.join(pretrain, "final_metrics.json"))
    records = _read_jsonl(os.path.join(pretrain, "metrics.jsonl"))
    clock = [r for r in records if r.get("split") == "train" and "train_seconds" in r]
    seconds = clock[-1]["train_seconds"] if clock else float("nan")
    steps = int(final["step"])
    # Runs that were resumed log a step twice at most; the last line of each step wins.
    curve = {r["step"]: (r["step"], r.get("train_seconds", float("nan")), r["step"] * info["step_flops"],
                         r["mlm_accuracy"]) for r in records if r.get("split") == "eval" and "mlm_accuracy" in r}
    ft = _read_json(os.path.join(run.directory, "finetune", "final_metrics.json"))
    return {"seed": run.seed, "params": info["params"], "flops_per_token": info["flops_per_token"],
            "steps": steps, "train_seconds": seconds,
            "tokens_per_s": steps * info["tokens_per_step"] / seconds if seconds and seconds > 0 else float("nan"),
            "total_flops": steps * info["step_flops"], "stopped_by": "budget" if flops_budget or steps < info["total_steps"] else "total_steps",
            "mlm_accuracy": float(final["eval"]["mlm_accuracy"]), "finetune_accuracy": finetune_accuracy(ft),
            "curve": [list(point) for _, point in sorted(curve.items())]}


def _stats(values: Sequence[Optional[float]]) -> dict:
    """{"mean", "std" (sample std over seeds; None for one seed), "values"}."""
    clean = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return {"mean": None, "std": None, "values": list(values)}
    return {"mean": float(np.mean(clean)), "std": float(np.std(clean, ddof=1)) if len(clean) > 1 else None,
            "values": [float(v) for v in clean]}


def summarise(variants: Sequence[grid.Variant], results: Sequence[RunResult], budget: grid.Budget) -> dict:
    """The table as JSON: one row per variant, in grid order."""
    rows = []
    for variant in variants:
        row = {"variant": variant.name, "specs": list(variant.specs)}
        if variant.unavailable:
            rows.append(dict(row, status="unavailable", reason=variant.unavailable))
            continue
        runs = [r for r in results if r.variant == variant.name]
        failed = [r for r in runs if r.status != "ok"]
        if failed or not runs:
            rows.append(dict(row, status="failed", reason="; ".join(f"seed {r.seed}: {r.reason}" for r in failed)
                             or "no runs"))
            continue
        numbers = [run_numbers(r, flops_budget=bool(budget.flops)) for r in runs]
        row.update(status="ok", seeds=[n["seed"] for n in numbers], params=numbers[0]["params"],
                   flops_per_token=numbers[0]["flops_per_token"],
                   stopped_by=sorted({n["stopped_by"] for n in numbers}),
                   runs=numbers)
        for key in ("tokens_per_s", "steps", "train_seconds", "total_flops", "mlm_accuracy", "finetune_accuracy"):
            row[key] = _stats([n[key] for n in numbers])
        rows.append(row)
    return {"budget": {"seconds": budget.seconds, "flops": budget.flops}, "variants": rows}


def _pm(stats: dict, fmt: str) -> str:
    if stats["mean"] is None:
        return "n/a"
    text = format(stats["mean"], fmt)
    return text + (f" ± {format(stats['std'], fmt)}" if stats["std"] is not None else "")


def markdown(table: dict) -> str:
    b = table["budget"]
    budget = f"{b['seconds']:g} s of training each" if b["seconds"] else f"{b['flops']:.3g} training FLOPs each"
    lines = [f"Ablation bench: {budget}; mean ± std over seeds (sample std).", "",
             "| variant | params | FLOPs/token | tokens/s | steps | eval MLM acc | fine-tune dev acc | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in table["variants"]:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | {row['status']}: {row['reason']} | | | | | | |")
            continue
        lines.append(f"| {row['variant']} | {row['params']:,} | {row['flops_per_token'] / 1e6:.2f}M | "
                     f"{_pm(row['tokens_per_s'], '.0f')} | {_pm(row['steps'], '.0f')} | {_pm(row['mlm_accuracy'], '.3f')} | "
                     f"{_pm(row['finetune_accuracy'], '.3f')} | {','.join(map(str, row['seeds']))} |")
    return "\n".join(lines) + "\n"


def write_table(table: dict, workdir: str) -> Dict[str, str]:
    paths = {"markdown": os.path.join(workdir, TABLE_MD), "json": os.path.join(workdir, TABLE_JSON)}
    with open(paths["markdown"], "w") as f:
        f.write(markdown(table))
    with open(paths["json"], "w") as f:
        json.dump(table, f, indent=1)
    return paths


def plot(table: dict, path: str) -> str:
    """Eval MLM accuracy against training seconds (left) and training FLOPs (right), one colour per
    variant, one line per seed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"the ablation plot needs matplotlib ({e}); install it (pip install matplotlib, or "
                          "bash setup.sh test): the table is written, rerun the bench to add the plot") from None
    fig, (by_time, by_flops) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(r for r in table["variants"] if r["status"] == "ok"):
        colour = colours[i % len(colours)]
        for j, run in enumerate(row["runs"]):
            curve = np.asarray(run["curve"], float).reshape(-1, 4)
            label = row["variant"] if j == 0 else None
            by_time.plot(curve[:, 1], curve[:, 3], "o-", color=colour, label=label, alpha=0.85, markersize=3)
            by_flops.plot(curve[:, 2], curve[:, 3], "o-", color=colour, label=label, alpha=0.85, markersize=3)
    by_time.set_xlabel("training seconds (compilation and evaluations out)")
    by_flops.set_xlabel("training FLOPs (model)")
    by_flops.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    for ax in (by_time, by_flops):
        ax.set_ylabel("eval MLM accuracy")
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    b = table["budget"]
    fig.suptitle(f"equal budget: {b['seconds']:g} s of training" if b["seconds"] else
                 f"equal budget: {b['flops']:.3g} training FLOPs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
