"""Where a compiled step's time goes: a `jax.profiler` trace of a few steps, its per-op times joined
with the compiled HLO (opcode, shape and the JAX source path of each op), grouped into the categories
that matter for a BERT step (matmuls, dropout (its mask bits, compare and scaling), other RNG, layout copies, gathers, reductions, elementwise,
optimizer) and printed as a table of the top ops.

`profile_steps(step, hlo_text, steps, trace_dir)` is what `python -m bert_jax.benchmark --profile=DIR`
runs for each JAX variant after it has been timed (so tracing never touches the timed steps); the
trace itself stays in DIR for TensorBoard / Perfetto / XProf.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional

import jax

# Trace events that wrap or wait for ops rather than being ops themselves.
_NOT_OPS = re.compile(r"^(ThunkExecutor|ThreadpoolListener|SlinkyThreadPool|end: |PjitFunction|ParseArguments|"
                      r"PythonRefManager|\$)")
_ASSIGN = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_KIND = re.compile(r"kind=(k\w+)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")

CATEGORIES = ("matmul", "dropout", "rng", "layout", "gather/scatter", "reduction", "elementwise", "optimizer", "other")


def parse_hlo(hlo_text: str) -> Dict[str, Dict[str, str]]:
    """Instruction name -> {'opcode', 'shape', 'op_name', 'kind', 'body'} for every instruction of the
    compiled module; 'body' is the space-joined opcodes of a fusion's called computation."""
    computations: Dict[str, List[str]] = {}
    instructions: Dict[str, Dict[str, str]] = {}
    current: Optional[str] = None
    for line in hlo_text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            head = line.split("(")[0].split()
            current = head[-1].lstrip("%") if head else None
            computations.setdefault(current, [])
            continue
        parsed = _parse_instruction(line)
        if parsed is None:
            continue
        name, shape, opcode = parsed
        if current is not None:
            computations[current].append(opcode)
        op_name = _OP_NAME.search(line)
        kind = _KIND.search(line)
        calls = _CALLS.search(line)
        instructions[name] = dict(opcode=opcode, shape=re.sub(r"\{[^}]*\}", "", shape), op_name=op_name.group(1) if op_name else "",
                                  kind=kind.group(1) if kind else "", calls=calls.group(1) if calls else "")
    for info in instructions.values():
        info["body"] = " ".join(computations.get(info.pop("calls"), ()))
    return instructions


def _parse_instruction(line: str):
    """(name, shape, opcode) of one HLO instruction line, or None. Tuple shapes ("(s32[], u32[8])",
    with "/*index=5*/" comments) are skipped by matching parentheses."""
    m = _ASSIGN.match(line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = rest[:i + 1], rest[i + 1:]
    else:
        shape, _, rest = rest.partition(" ")
        rest = " " + rest
    op = _OPCODE.match(rest)
    return (m.group(1), shape, op.group(1)) if op else None


def categorize(name: str, info: Optional[Dict[str, str]]) -> str:
    """The category of one executed op, from its HLO opcode, its fused body and its JAX source path."""
    if info is None:
        return "other"
    op_name, body, opcode = info["op_name"], info["body"], info["opcode"]
    ops = set(body.split()) - {"parameter", "constant"} if body else {opcode}
    primitive = op_name.rsplit("/", 1)[-1]
    if "/dropout/" in op_name or "/Dropout_" in op_name:
        return "dropout"  # masks (bits, compare) and their scaling, forward and backward
    if any(k in op_name for k in ("threefry", "random_bits", "random_fold_in", "random_split", "bernoulli", "_uniform")) or (
            "rng-bit-generator" in ops):
        return "rng"
    if ops & {"dot", "convolution"} or "dot_general" in primitive:
        return "matmul"
    if "BertFor" not in op_name and "bert/" not in op_name and op_name:
        return "optimizer"  # AdamW moments, weight decay and the update: outside the model's scope
    if ops & {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}:
        return "gather/scatter"
    if ops <= {"copy", "transpose", "bitcast", "tuple", "get-tuple-element", "reshape"} or primitive in (
            "transpose", "copy"):
        return "layout"
    if ops & {"reduce", "reduce-window"}:
        return "reduction"
    if opcode in ("fusion", "add", "multiply", "select", "exponential", "divide", "subtract", "maximum",
                  "compare", "convert", "broadcast", "tanh", "erf", "rsqrt", "sqrt", "log"):
        return "elementwise"
    return "other"


def _self_times(events):
    """(name, self ns) of `events` on one timeline: an event's time minus that of the events nested in it
    (a `while` op's body ops are traced inside it), so nothing is counted twice."""
    events = sorted(events, key=lambda e: (e.start_ns, -e.duration_ns))
    stack: List[list] = []  # [name, end_ns, self_ns]
    for e in events:
        while stack and stack[-1][1] <= e.start_ns:
            yield tuple(stack.pop()[::2])
        if stack:
            stack[-1][2] -= min(e.duration_ns, stack[-1][1] - e.start_ns)
        stack.append([e.name, e.start_ns + e.duration_ns, float(e.duration_ns)])
    while stack:
        yield tuple(stack.pop()[::2])


def _op_events(trace_dir: str):
    """(op name, self ns) of every executed-op event in the newest trace under `trace_dir`: the XLA
    thread pools' lines of the host plane (CPU backend) and the "XLA Ops" lines of device planes."""
    from jax.profiler import ProfileData

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    data = ProfileData.from_file(files[-1])
    for plane in data.planes:
        for line in plane.lines:
            on_cpu = plane.name.startswith("/host:CPU") and line.name.startswith("tf_")
            on_device = plane.name.startswith("/device:") and line.name == "XLA Ops"
            if on_cpu or on_device:
                for name, ns in _self_times(line.events):
                    if not _NOT_OPS.match(name):
                        yield name, ns


def profile_steps(step: Callable[[], None], hlo_text: str, steps: int, trace_dir: str,
                  top: int = 25) -> Dict[str, Any]:
    """Traces `steps` calls of `step` (synchronous) into `trace_dir` and returns
    {'step_ms', 'op_ms', 'categories': {category: ms per step}, 'ops': [top rows], 'by_source': [top
    (category, source path with the layer index summed over) groups], 'trace_dir'}; each op
    row has name, category, ms per step, share of the summed op time, calls per step, opcode, shape and
    its JAX source path. Op times are summed over threads, so on several cores they can exceed the
    step's wall time."""
    os.makedirs(trace_dir, exist_ok=True)
    instructions = parse_hlo(hlo_text)
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            step()
    finally:
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
    per_op: Dict[str, float] = collections.Counter()
    calls: Dict[str, int] = collections.Counter()
    for name, ns in _op_events(trace_dir):
        per_op[name] += ns
        calls[name] += 1
    total = sum(per_op.values())
    categories: Dict[str, float] = {c: 0.0 for c in CATEGORIES}
    rows = []
    for name, ns in sorted(per_op.items(), key=lambda kv: -kv[1]):
        info = instructions.get(name)
        category = categorize(name, info)
        categories[category] += ns / 1e6 / steps
        rows.append(dict(name=name, category=category, ms=ns / 1e6 / steps, share=ns / total if total else 0.0,
                         calls=calls[name] / steps, opcode=info["opcode"] if info else "?",
                         shape=info["shape"] if info else "?", source=_short_source(info["op_name"] if info else "")))
    groups: Dict[tuple, float] = collections.Counter()
    for r in rows:
        groups[(r["category"], re.sub(r"layer/\d+/", "layer/*/", r["source"]) or r["name"])] += r["ms"]
    by_source = [dict(category=c, source=src, ms=ms, share=ms / (total / 1e6 / steps) if total else 0.0)
                 for (c, src), ms in sorted(groups.items(), key=lambda kv: -kv[1])[:top]]
    return dict(step_ms=wall / steps * 1e3, op_ms=total / 1e6 / steps, categories=categories, ops=rows[:top],
                by_source=by_source, n_ops=len(rows), trace_dir=trace_dir)


def _short_source(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(BertForMaskedLM))/BertForMaskedLM.encode/bert/encoder/layer/1/attention/
    self/value/reduce_sum' -> 'bwd bert/encoder/layer/1/attention/self/value/reduce_sum'."""
    direction = "bwd " if "transpose(jvp(" in op_name else ""
    path = op_name.split("/")
    for i, part in enumerate(path):
        if part in ("bert", "cls", "predictions") or part.startswith("Bert") and "." not in part:
            return direction + "/".join(path[i:])
    return direction + "/".join(p for p in path if not p.startswith(("jit(", "jvp(", "transpose(")))


def format_profile(label: str, profile: Dict[str, Any]) -> str:
    """A markdown section: category totals, then the top ops."""
    op_ms = profile["op_ms"] or 1.0
    lines = [f"### {label}: {profile['step_ms']:.1f} ms/step traced, {profile['op_ms']:.1f} ms of ops "
             f"({profile['n_ops']} distinct ops); trace in `{profile['trace_dir']}`", "",
             "| category | ms/step | share |", "|---|---:|---:|"]
    for category, ms in sorted(profile["categories"].items(), key=lambda kv: -kv[1]):
        if ms > 0:
            lines.append(f"| {category} | {ms:.2f} | {ms / op_ms:.1%} |")
    lines += ["", "Summed over the layers (`layer/*`):", "", "| source | category | ms/step | share |",
              "|---|---|---:|---:|"]
    for r in profile.get("by_source", ()):
        lines.append(f"| {r['source'][-110:]} | {r['category']} | {r['ms']:.2f} | {r['share']:.1%} |")
    lines += ["", "| op | category | ms/step | share | opcode | shape | source |", "|---|---|---:|---:|---|---|---|"]
    for r in profile["ops"]:
        lines.append(f"| {r['name']} | {r['category']} | {r['ms']:.2f} | {r['share']:.1%} | {r['opcode']} | "
                     f"`{r['shape']}` | {r['source'][-90:]} |")
    return "\n".join(lines)
