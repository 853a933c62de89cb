"""The benchmark driver: every (framework, mode, MLM head) variant on one batch, timed side by side."""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from bert_jax import host_memory
from bert_jax.benchmark.inputs import make_config, synthetic_batch
from bert_jax.benchmark.jax_side import prepare_jax
from bert_jax.benchmark import profile as op_profile
from bert_jax.benchmark.measure import (Row, _cpu_snapshot, _finish, _time_steps, background_cores, machine_info,
                                        measure_matmul_flops, measure_torch_matmul_flops, num_cores)
from bert_jax.benchmark.report import format_markdown
from bert_jax.benchmark.torch_side import prepare_torch, torch_available, torch_device
from bert_jax.flops import count_non_embedding_params, flops_per_token, peak_tflops
from bert_jax.modeling import BertForMaskedLM, init_params


def run_benchmark(config: str = "base", batch: int = 8, seq: int = 128, dtype: str = "float32", steps: int = 10,
                  warmup: int = 3, modes: Sequence[str] = ("train", "infer"),
                  heads: Sequence[str] = ("sparse", "dense"), torch: bool = True, mlm_fraction: float = 0.15,
                  attention_impl: str = "xla", dropout: bool = True, matmul_size: int = 4096, seed: int = 0,
                  interleave: bool = True, profile_dir: Optional[str] = None, profile_steps: int = 3,
                  log=print) -> Dict[str, Any]:
    """Runs every (framework, mode, head) variant; returns {'rows', 'ratios', 'meta', 'markdown'} (and
    'profiles': {"mode/head": profile} when `profile_dir` is set: after each JAX variant has been timed,
    `profile_steps` more steps are traced into `profile_dir/<mode>-<head>`, see `bert_jax.benchmark.profile`)."""
    for m in modes:
        if m not in ("train", "infer"):
            raise ValueError(f"mode must be train or infer, got {m!r}")
    for h in heads:
        if h not in ("sparse", "dense"):
            raise ValueError(f"mlm_head must be sparse or dense, got {h!r}")
    cfg = make_config(config, dtype=dtype, attention_impl=attention_impl, dropout=dropout)
    data = synthetic_batch(batch, seq, mlm_fraction, cfg.vocab_size, seed)
    p = data["masked_positions"].shape[1]
    meta = machine_info()
    meta.update(config=config, batch=batch, seq=seq, dtype=dtype, steps=steps, warmup=warmup, masked_per_row=p,
                mlm_fraction=mlm_fraction, attention_impl=attention_impl, dropout=dropout,
                interleave=interleave, loadavg_start=meta.pop("loadavg", None),
                prng_impl=str(jax.config.jax_default_prng_impl), host_memory=host_memory.describe())

    torch_reason = None
    if torch:
        torch_reason = torch_available()
        if torch_reason:
            log(f"[benchmark] PyTorch side skipped: torch/transformers not importable ({torch_reason}); "
                "install torch and transformers or pass --notorch")
    else:
        torch_reason = "disabled (--notorch)"
    run_torch = torch_reason is None
    meta["torch_side"] = (f"transformers BertForMaskedLM, sdpa, on {torch_device()}" if run_torch
                          else f"skipped: {torch_reason}")
    if run_torch:
        import torch as _torch
        _torch.set_num_threads(num_cores())
        meta["torch_threads"] = _torch.get_num_threads()

    # Utilisation reference: chip peak table on accelerators, a measured matmul on CPU.
    peak = peak_tflops(meta["device_kind"]) if meta["backend"] != "cpu" else None
    if peak is not None:
        ref_flops, meta["utilization"] = peak * 1e12 * jax.device_count(), f"MFU vs {peak:g} TFLOP/s/chip (bf16)"
    elif matmul_size:
        log(f"[benchmark] timing a {matmul_size}^3 fp32 matmul (JAX) as the CPU reference ...")
        ref_flops = measure_matmul_flops(matmul_size)
        meta["utilization"] = f"% of a jitted {matmul_size}^3 fp32 matmul ({ref_flops / 1e9:.1f} GFLOP/s)"
        meta["jax_matmul_gflops"] = ref_flops / 1e9
        if run_torch:
            tm = measure_torch_matmul_flops(matmul_size)
            meta["torch_matmul_gflops"] = None if tm is None else tm / 1e9
    else:
        ref_flops, meta["utilization"] = None, "n/a"

    model_params_host = jax.device_get(init_params(BertForMaskedLM(cfg), jax.random.PRNGKey(seed)))
    meta["n_non_embedding"] = count_non_embedding_params(model_params_host)
    meta["n_params"] = int(sum(np.prod(x.shape) for x in jax.tree.leaves(model_params_host)))

    rows: List[Row] = []
    profiles: Dict[str, Dict[str, Any]] = {}
    frameworks = ("jax", "torch") if run_torch else ("jax",)
    for mode in modes:
        for head in heads:
            # Both frameworks' steps alternate (JAX, torch, JAX, ...) so that background load on a
            # shared machine hits both alike; --nointerleave times them one after the other.
            prepared = {}
            for fw in frameworks:
                log(f"[benchmark] {fw} {mode} {head}: {'compiling' if fw == 'jax' else 'building'} ...")
                prepared[fw] = (prepare_jax(cfg, data, mode, head, seed, dropout, params_host=model_params_host)
                                if fw == "jax" else prepare_torch(cfg, data, mode, head, seed))
            times = {fw: [] for fw in frameworks}
            faults = {fw: [] for fw in frameworks}
            snap = _cpu_snapshot()
            if interleave:
                for fw in frameworks:
                    _time_steps(prepared[fw].step, 0, warmup)
                for _ in range(steps):
                    for fw in frameworks:
                        times[fw] += _time_steps(prepared[fw].step, 1, 0, faults[fw])
            else:
                for fw in frameworks:
                    times[fw] = _time_steps(prepared[fw].step, steps, warmup, faults[fw])
            background = background_cores(snap, _cpu_snapshot())
            if profile_dir and "jax" in prepared:
                log(f"[benchmark] jax {mode} {head}: tracing {profile_steps} steps into {profile_dir} ...")
                prof = op_profile.profile_steps(prepared["jax"].step, prepared["jax"].hlo_text(), profile_steps,
                                                os.path.join(profile_dir, f"{mode}-{head}"))
                profiles[f"{mode}/{head}"] = prof
                log(op_profile.format_profile(f"jax {mode} {head}", prof))
            for fw in frameworks:
                r = _finish(prepared.pop(fw), times[fw])
                step_s = statistics.median(r["times"])
                fpt = flops_per_token(cfg, seq, p / seq if head == "sparse" else 1.0, training=mode == "train")
                achieved = fpt * batch * seq / step_s
                row = Row(framework=fw, mode=mode, head=head, step_s=step_s, step_s_min=min(r["times"]),
                          compile_s=r["compile_s"], seq_per_s=batch / step_s, tokens_per_s=batch * seq / step_s,
                          flops_per_token=fpt, tflops=achieved / 1e12,
                          utilization=None if ref_flops is None else achieved / ref_flops,
                          peak_mem_bytes=r["peak_mem_bytes"], mem_source=r["mem_source"], loss=r["loss"],
                          step_times=r["times"], background_cores=background,
                          page_faults_per_step=statistics.median(faults[fw]) if faults[fw] else None)
                rows.append(row)
                log(f"[benchmark]   {fw} {mode} {head}: {row.step_s * 1e3:.1f} ms/step (min "
                    f"{row.step_s_min * 1e3:.1f}), {row.seq_per_s:.2f} seq/s"
                    + (f", loss {row.loss:.3f}" if row.loss is not None else ""))
            gc.collect()

    ratios, ratios_min = {}, {}
    by_key = {(r.framework, r.mode, r.head): r for r in rows}
    for mode in modes:
        for head in heads:
            j, t = by_key.get(("jax", mode, head)), by_key.get(("torch", mode, head))
            if j and t:
                ratios[f"{mode}/{head}"] = t.step_s / j.step_s
                ratios_min[f"{mode}/{head}"] = t.step_s_min / j.step_s_min
    try:
        meta["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    result = dict(rows=[dataclasses.asdict(r) for r in rows], ratios=ratios, ratios_min=ratios_min, meta=meta)
    if profile_dir:
        result["profiles"] = profiles
    result["markdown"] = format_markdown(result)
    return result
