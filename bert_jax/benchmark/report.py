"""The benchmark report: a result as a markdown table, appended to a results file only from a quiet machine."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, Optional


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def format_markdown(result: Dict[str, Any], command: Optional[str] = None) -> str:
    meta = result["meta"]
    util_header = "MFU" if meta.get("utilization", "").startswith("MFU") else "% of matmul"
    lines = []
    if command:
        lines += [f"## {meta['config']} · batch {meta['batch']} · seq {meta['seq']} · {meta['dtype']} · "
                  f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "", "```", command, "```", ""]
    load = lambda k: ("n/a" if not meta.get(k) else " ".join(f"{x:.2f}" for x in meta[k]))
    lines += [
        f"- machine: {meta['cpu']}, {meta['cores']} cores; backend `{meta['backend']}` ({meta['device_kind']}"
        f" x{meta['device_count']}); load average at start {load('loadavg_start')}, at end {load('loadavg_end')}",
        f"- versions: jax {meta['jax']}, jaxlib {meta['jaxlib']}, flax {meta['flax']}, optax {meta['optax']}, "
        f"torch {meta['torch'] or 'n/a'}, transformers {meta['transformers'] or 'n/a'}, "
        f"python {meta['python']}; torch threads {meta.get('torch_threads', 'n/a')}",
        f"- model: BertForMaskedLM `{meta['config']}` ({meta['n_params'] / 1e6:.1f}M params, "
        f"{meta['n_non_embedding'] / 1e6:.1f}M non-embedding), attention_impl `{meta['attention_impl']}`, "
        f"dropout {'on (0.1) in train, ' + meta.get('prng_impl', 'threefry2x32') if meta['dropout'] else 'off'}; "
        f"{meta['masked_per_row']} masked "
        f"positions per row (mlm_fraction {meta['mlm_fraction']}); median of {meta['steps']} steps after "
        f"{meta['warmup']} warm-up" + ("; JAX and torch steps interleaved" if meta.get("interleave") else ""),
        f"- heads: *sparse* = vocabulary logits only at the masked positions (JAX `masked_positions`; torch "
        f"`model.cls(model.bert(...)[rows, positions])`); *dense* = logits at all positions (JAX without "
        f"`masked_positions`; torch stock `model(**inputs, labels=...)`)",
        f"- utilisation: {meta['utilization']}"
        + (f"; torch's own {meta.get('torch_matmul_gflops', 0):.1f} GFLOP/s on the same matmul"
           if meta.get("torch_matmul_gflops") else ""),
        f"- torch side: {meta['torch_side']}",
        f"- host memory (bert_jax.host_memory, shared by both sides): {meta.get('host_memory', 'n/a')}",
        "- *other load*: CPU cores kept busy by other processes while the variant was timed (from "
        "/proc/stat minus this process); anything well above 0 means the timings are contaminated",
        "",
        f"| framework | mode | MLM head | step (ms, median) | min (ms) | seq/s | tokens/s | compile (s) "
        f"| GFLOP/token | TFLOP/s | {util_header} | peak memory | memory source | page faults/step "
        f"| other load (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        util = "n/a" if r["utilization"] is None else f"{100 * r['utilization']:.1f}%"
        compile_s = "—" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(
            f"| {r['framework']} | {r['mode']} | {r['head']} | {r['step_s'] * 1e3:.1f} | {r['step_s_min'] * 1e3:.1f} "
            f"| {r['seq_per_s']:.2f} | {r['tokens_per_s']:.0f} | {compile_s} | {r['flops_per_token'] / 1e9:.3f} "
            f"| {r['tflops']:.3f} | {util} | {_fmt_bytes(r['peak_mem_bytes'])} | {r['mem_source']} "
            f"| {'n/a' if r.get('page_faults_per_step') is None else format(r['page_faults_per_step'], '.0f')} "
            f"| {'n/a' if r.get('background_cores') is None else format(r['background_cores'], '.2f')} |")
    if result["ratios"]:
        lines += ["", "Throughput ratio JAX / torch (torch step time / JAX step time; median steps, and fastest "
                  "steps in brackets):", ""]
        for key, value in result["ratios"].items():
            best = result.get("ratios_min", {}).get(key)
            lines.append(f"- {key}: **{value:.2f}x**" + ("" if best is None else f" ({best:.2f}x)"))
    return "\n".join(lines) + "\n"


def append_markdown(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a") as f:
        if new:
            f.write("# bert_jax benchmark results\n\nAppended by `python -m bert_jax.benchmark --output=...`.\n\n")
        else:
            f.write("\n")
        f.write(text)


# Above this many cores of other load, timings are contaminated (other jobs slow PyTorch more than XLA).
MAX_BACKGROUND_CORES = 0.3


def max_background_cores(result: Dict[str, Any]) -> Optional[float]:
    """The most other-process load seen while any variant was timed (None where unmeasurable)."""
    loads = [r.get("background_cores") for r in result["rows"] if r.get("background_cores") is not None]
    return max(loads) if loads else None


def write_output(path: str, text: str, result: Dict[str, Any], allow_loaded: bool = False) -> None:
    """Appends the report to `path` only if the machine was quiet while timing (else SystemExit),
    or, with `allow_loaded`, with a banner saying the figures are contaminated."""
    load = max_background_cores(result)
    if load is not None and load > MAX_BACKGROUND_CORES:
        if not allow_loaded:
            raise SystemExit(
                f"not writing {path}: other processes kept {load:.2f} cores busy while timing (limit "
                f"{MAX_BACKGROUND_CORES}); these figures are not results. Rerun on a quiet machine, or pass "
                "--output_when_loaded to record them marked as contaminated.")
        text = (f"> **Contaminated:** other processes kept up to {load:.2f} cores busy while timing "
                f"(limit {MAX_BACKGROUND_CORES}); written with --output_when_loaded. Not a result.\n\n" + text)
    append_markdown(path, text)


def write_profiles(directory: str, result: Dict[str, Any], command: str) -> None:
    """DIR/profile.md (the op tables, headed by the command and the machine) and DIR/profile.json."""
    from bert_jax.benchmark.profile import format_profile

    os.makedirs(directory, exist_ok=True)
    meta = result["meta"]
    load = max_background_cores(result)
    head = [f"# Op profile · {meta['config']} · batch {meta['batch']} · seq {meta['seq']} · {meta['dtype']} · "
            f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "", "```", command, "```", "",
            f"- machine: {meta['cpu']}, {meta['cores']} cores; other processes' load while timing: "
            + ("n/a" if load is None else f"{load:.2f} cores"), ""]
    sections = [format_profile(f"jax {key}", prof) for key, prof in result.get("profiles", {}).items()]
    with open(os.path.join(directory, "profile.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(head) + "\n" + "\n\n".join(sections) + "\n")
    with open(os.path.join(directory, "profile.json"), "w", encoding="utf-8") as f:
        json.dump(dict(command=command, meta=meta, profiles=result.get("profiles", {})), f, indent=1, default=str)
