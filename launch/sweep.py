"""Ablation sweeps: a grid (product) of `--config.<key>=<value>` overrides, one workdir per point.

    # run the points here, one after another
    python launch/sweep.py run --config=configs/pretrain.py:runlocal --root=/tmp/sweep \
        --grid optim.learning_rate=1e-4,5e-4 --grid model.num_hidden_layers=2,4 [--set data.seq_len=32 ...]
    # or print one launch command per point (plain, or through launch/tpu_vm.sh / launch/gpu_slurm.sh)
    python launch/sweep.py print --launcher=gpu_slurm --config=configs/pretrain.py:size=base --root=gs://b/sweep \
        --grid optim.learning_rate=1e-4,5e-4 [--launcher_args="--nodes=2"]
    # then a markdown table of every point's overrides and final metrics (the trainer's final_metrics.json)
    python launch/sweep.py summarize --root=/tmp/sweep --sort=eval.mlm_accuracy

A point's workdir is `<root>/<name>`, the name spelling out its grid values (`learning_rate=0.0001__num_
hidden_layers=2`; the full dotted key where two grid keys share a last component). `run` also writes
`<root>/sweep.json` (the points and their overrides), which `summarize` reads. Grid values are split on
commas outside brackets and quotes, so `--grid "mesh.ici_parallelism=(1,-1,1),(2,-1,1)"` is two points.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = {"plain": None, "tpu_vm": "launch/tpu_vm.sh", "gpu_slurm": "launch/gpu_slurm.sh"}
MANIFEST = "sweep.json"
DEFAULT_METRICS = ("eval.mlm_accuracy", "eval.loss", "train.loss", "train.seq_per_s")


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    overrides: Tuple[Tuple[str, str], ...]  # (dotted config key, value as typed), grid keys in --grid order

    def flags(self) -> List[str]:
        return [f"--config.{key}={value}" for key, value in self.overrides]


# ------------------------------------------------------------------------------------------- grid
def split_values(text: str) -> List[str]:
    """'1e-4,5e-4' -> ['1e-4', '5e-4']; commas inside (), [], {} or quotes do not split."""
    values, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    if quote or depth:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    return values


def parse_assignment(text: str, what: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if key.startswith("--config."):
        key = key[len("--config."):]
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ValueError(f"{what} {text!r}: expected <config.key>=<value>, e.g. optim.learning_rate=1e-4")
    return key, value.strip()


def parse_grid(specs: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """['optim.learning_rate=1e-4,5e-4', ...] -> [('optim.learning_rate', ['1e-4', '5e-4']), ...]."""
    grid, seen = [], set()
    for spec in specs:
        key, values = parse_assignment(spec, "--grid")
        values = split_values(values)
        if key in seen:
            raise ValueError(f"--grid {key} is given twice; put all its values in one --grid")
        if any(v == "" for v in values):
            raise ValueError(f"--grid {spec!r} has an empty value")
        if len(set(values)) != len(values):
            raise ValueError(f"--grid {spec!r} repeats a value")
        seen.add(key)
        grid.append((key, values))
    return grid


def _short_keys(keys: Sequence[str]) -> Dict[str, str]:
    """Last component of each dotted key, or the whole key where last components collide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last)}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"


def expand(grid: Sequence[Tuple[str, Sequence[str]]]) -> List[Point]:
    """All points of the grid's product, first --grid varying slowest."""
    if not grid:
        raise ValueError("a sweep needs at least one --grid key=v1,v2,...")
    keys = [key for key, _ in grid]
    short = _short_keys(keys)
    points = []
    for values in itertools.product(*(values for _, values in grid)):
        overrides = tuple(zip(keys, values))
        name = "__".join(f"{short[k]}={_safe(v)}" for k, v in overrides)
        points.append(Point(name=name, overrides=overrides))
    names = [p.name for p in points]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"grid values that differ only in special characters give the same workdir: {clashes}")
    return points


# --------------------------------------------------------------------------------------- commands
def point_command(point: Point, *, config: str, root: str, fixed: Sequence[Tuple[str, str]] = (),
                  extra: Sequence[str] = (), launcher: str = "plain", launcher_args: Sequence[str] = (),
                  python: str = "python") -> List[str]:
    """argv launching one point: `python -m bert_jax.main` or a launch script with the same flags."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} is not one of {sorted(LAUNCHERS)}")
    flags = [f"--config={config}", f"--workdir={join(root, point.name)}",
             *(f"--config.{k}={v}" for k, v in fixed), *point.flags(), *extra]
    script = LAUNCHERS[launcher]
    if script is None:
        return [python, "-m", "bert_jax.main", *flags]
    return ["bash", script, *launcher_args, *flags]


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name  # also for gs:// roots, which os.path would not mangle but be clear


def write_manifest(root: str, points: Sequence[Point], config: str, fixed: Sequence[Tuple[str, str]]) -> str:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, MANIFEST)
    with open(path, "w") as f:
        json.dump({"config": config, "fixed": [list(kv) for kv in fixed],
                   "points": [{"name": p.name, "overrides": [list(kv) for kv in p.overrides]} for p in points]},
                  f, indent=2)
    return path


def run_locally(points: Sequence[Point], *, config: str, root: str, fixed=(), extra=(), keep_going: bool = False,
                env: Optional[dict] = None) -> Dict[str, int]:
    """Runs the points one after another in subprocesses (from the repository root); returns
    {name: exit code}. Stops at the first failure unless `keep_going`. A finished point resumes
    (and so returns at once) when the sweep is run again."""
    write_manifest(root, points, config, fixed)
    codes = {}
    for index, point in enumerate(points):
        argv = point_command(point, config=config, root=root, fixed=fixed, extra=extra, python=sys.executable)
        print(f"[sweep] point {index + 1}/{len(points)}: {shlex.join(argv)}", flush=True)
        codes[point.name] = subprocess.run(argv, cwd=ROOT, env=env).returncode
        if codes[point.name] != 0:
            print(f"[sweep] point {point.name} failed with exit code {codes[point.name]}", file=sys.stderr)
            if not keep_going:
                break
    return codes


# -------------------------------------------------------------------------------------- summarize
def _lookup(metrics: dict, dotted: str):
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _points_in(root: str) -> List[Point]:
    manifest = os.path.join(root, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            return [Point(p["name"], tuple(map(tuple, p["overrides"]))) for p in json.load(f)["points"]]
    # No manifest (points launched elsewhere): every subdirectory, with overrides read off its name.
    points = []
    for name in sorted(os.listdir(root)):
        if os.path.isdir(os.path.join(root, name)):
            pairs = [part.partition("=") for part in name.split("__")]
            points.append(Point(name, tuple((key, value) for key, sep, value in pairs if sep)))
    return points


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def summarize(root: str, sort: str = "eval.mlm_accuracy", mode: str = "max",
              metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Markdown table: one row per point (overrides, step, metrics), best first by `sort`; points
    without final_metrics.json (not finished) come last with a status."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"sweep root {root} does not exist")
    points = _points_in(root)
    if not points:
        raise FileNotFoundError(f"no sweep points in {root}")
    keys = list(dict.fromkeys(k for p in points for k, _ in p.overrides))
    columns = list(dict.fromkeys([*metrics, sort]))
    rows = []
    for point in points:
        path = os.path.join(root, point.name, "final_metrics.json")
        final = json.load(open(path)) if os.path.isfile(path) else None
        status = "missing" if final is None else ("preempted" if final.get("preempted") else "done")
        values = dict(point.overrides)
        rows.append((final, status, [values.get(k) for k in keys],
                     [None if final is None else _lookup(final, c) for c in columns]))
    sort_index = columns.index(sort)

    def order(row):
        value = row[3][sort_index]
        missing = not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value))
        return (missing, 0.0 if missing else (-value if mode == "max" else value))

    rows.sort(key=order)
    header = [*keys, "status", "step", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for final, status, key_values, metric_values in rows:
        step = None if final is None else final.get("step")
        cells = [_fmt(v) for v in key_values] + [status, _fmt(step)] + [_fmt(v) for v in metric_values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "print"):
        p = sub.add_parser(name, help="run the points here" if name == "run" else "print launch commands")
        p.add_argument("--config", required=True, help="configs/<file>.py[:args] for every point")
        p.add_argument("--root", required=True, help="parent of the points' workdirs")
        p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a config key and its values; several --grid make a product")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="an override shared by every point")
        p.add_argument("extra", nargs="*", help="more flags for bert_jax.main (after --)")
        if name == "run":
            p.add_argument("--keep_going", action="store_true", help="run the remaining points after a failure")
        else:
            p.add_argument("--launcher", default="plain", choices=sorted(LAUNCHERS))
            p.add_argument("--launcher_args", default="", help="arguments for the launch script, before the flags")
    s = sub.add_parser("summarize", help="markdown table of the points' final metrics")
    s.add_argument("--root", required=True)
    s.add_argument("--sort", default="eval.mlm_accuracy", help="dotted key in final_metrics.json")
    s.add_argument("--mode", default="max", choices=("max", "min"), help="max: highest first")
    s.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated dotted keys")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "summarize":
            print(summarize(args.root, args.sort, args.mode, [m for m in args.metrics.split(",") if m]))
            return 0
        points = expand(parse_grid(args.grid))
        fixed = [parse_assignment(s, "--set") for s in args.set]
        clash = {k for k, _ in fixed} & {k for p in points[:1] for k, _ in p.overrides}
        if clash:
            raise ValueError(f"{sorted(clash)} given both by --set and --grid")
    except (ValueError, FileNotFoundError) as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    if args.command == "print":
        for point in points:
            print(shlex.join(point_command(point, config=args.config, root=args.root, fixed=fixed, extra=args.extra,
                                           launcher=args.launcher, launcher_args=shlex.split(args.launcher_args))))
        return 0
    codes = run_locally(points, config=args.config, root=args.root, fixed=fixed, extra=args.extra,
                        keep_going=args.keep_going)
    failed = [name for name, code in codes.items() if code != 0]
    print(f"[sweep] {len(codes) - len(failed)}/{len(points)} points finished" + (f"; failed: {failed}" if failed
                                                                                  else ""))
    return 1 if failed or len(codes) < len(points) else 0


if __name__ == "__main__":
    sys.exit(main())
