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

from absl import app, flags

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
COMMANDS = ("run", "print", "summarize")


def define_flags(fv: flags.FlagValues) -> None:
    """absl flags (--helpfull, --flagfile); `run` / `print` / `summarize` is the first positional argument and
    everything after `--` goes to bert_jax.main."""
    flags.DEFINE_string("config", None, "run/print: configs/<file>.py[:args] for every point.", flag_values=fv)
    flags.DEFINE_string("root", None, "Parent of the points' workdirs.", flag_values=fv)
    flags.DEFINE_multi_string("grid", [], "run/print: KEY=V1,V2,... a config key and its values; several --grid make "
                              "a product.", flag_values=fv)
    flags.DEFINE_multi_string("set", [], "run/print: KEY=VALUE, an override shared by every point.", flag_values=fv)
    flags.DEFINE_bool("keep_going", False, "run: run the remaining points after a failure.", flag_values=fv)
    flags.DEFINE_enum("launcher", "plain", sorted(LAUNCHERS), "print: how each point is launched.", flag_values=fv)
    flags.DEFINE_string("launcher_args", "", "print: arguments for the launch script, before the flags.",
                        flag_values=fv)
    flags.DEFINE_string("sort", "eval.mlm_accuracy", "summarize: dotted key in final_metrics.json.", flag_values=fv)
    flags.DEFINE_enum("mode", "max", ["max", "min"], "summarize: max = highest first.", flag_values=fv)
    flags.DEFINE_list("metrics", list(DEFAULT_METRICS), "summarize: comma-separated dotted keys.", flag_values=fv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`argv` without the program name: COMMAND [flags] [-- bert_jax.main flags]. Returns the exit code."""
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        rest = fv(["sweep.py", *(sys.argv[1:] if argv is None else argv)])[1:]
    except flags.Error as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    return run(fv, rest)


def run(args: flags.FlagValues, rest: Sequence[str]) -> int:
    """Runs COMMAND (`rest[0]`) with parsed flags `args`; `rest[1:]` go to bert_jax.main."""
    if not rest or rest[0] not in COMMANDS:
        print(f"sweep: the first argument must be one of {', '.join(COMMANDS)} (got {list(rest[:1])})",
              file=sys.stderr)
        return 2
    command, extra = rest[0], list(rest[1:])
    try:
        needed = ("root",) if command == "summarize" else ("config", "root")
        missing = [f"--{name}" for name in needed if not args[name].value]
        if missing:
            raise ValueError(f"{command} needs {' and '.join(missing)}")
        if command == "summarize":
            print(summarize(args.root, args.sort, args.mode, [m for m in args.metrics if m]))
            return 0
        points = expand(parse_grid(args.grid))
        fixed = [parse_assignment(s, "--set") for s in args.set]
        clash = {k for k, _ in fixed} & {k for p in points[:1] for k, _ in p.overrides}
        if clash:
            raise ValueError(f"{sorted(clash)} given both by --set and --grid")
    except (ValueError, FileNotFoundError) as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    if command == "print":
        for point in points:
            print(shlex.join(point_command(point, config=args.config, root=args.root, fixed=fixed, extra=extra,
                                           launcher=args.launcher, launcher_args=shlex.split(args.launcher_args))))
        return 0
    codes = run_locally(points, config=args.config, root=args.root, fixed=fixed, extra=extra,
                        keep_going=args.keep_going)
    failed = [name for name, code in codes.items() if code != 0]
    print(f"[sweep] {len(codes) - len(failed)}/{len(points)} points finished" + (f"; failed: {failed}" if failed
                                                                                  else ""))
    return 1 if failed or len(codes) < len(points) else 0


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: sys.exit(run(flags.FLAGS, argv[1:])))
