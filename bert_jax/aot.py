"""Ahead-of-time compilation of the real pretraining train step for a target topology, no hardware needed.

    python -m bert_jax.aot --config=configs/pretrain.py:size=large,seq=512 --topology=v5p-128
    python -m bert_jax.aot --config=configs/pretrain.py:size=base --topology=v5e-256 --num_slices=2 \
        --config.mesh.dcn_parallelism=2,1,1
    python -m bert_jax.aot --config=configs/pretrain.py:size=base --topology=8xH100   # or 2x8xH100
    python -m bert_jax.aot --config=configs/pretrain.py:runlocal --topology=cpu:8 --json_out=aot.json

Builds the trainer's model, optimizer, state shardings and train step (`bert_jax.training`) over
abstract values (`jax.ShapeDtypeStruct` with shardings: nothing is allocated), lowers and compiles
it for the topology's devices and prints per-device memory (`compiled.memory_analysis()`: arguments,
outputs, temps, generated code) and FLOPs (`compiled.cost_analysis()`, per device) next to the
analytic model FLOPs and the state bytes the shardings imply. Where the compiler has a cost model
(TPU: `cost_analysis()['optimal_seconds']`) it also prints that step time and the tokens/s and MFU
it implies, labelled as a compiler estimate (XLA's cost model: optimistic, not a measurement).

Topologies: TPU slices by their Cloud name (v4-8 ... v4-4096, v5p-8 ..., v5e-1 ... v5e-256,
v6e-1 ... v6e-256; `jax.experimental.topologies`, needs libtpu, i.e. `pip install 'jax[tpu]'`);
GPU nodes as [NODES x]GPUSxNAME (needs the CUDA plugin and a target: the attached GPU or
`--gpu_target_config`, a GpuTargetConfigProto text file); `cpu:N` compiles for N fake CPU devices.
Where the target's compiler is not installed here, a message says what is missing and, unless
`--fallback=false`, the step compiles for a CPU mesh with the same device count instead: the
sharding and the per-device bytes of the state and batch still hold, temps and FLOPs are the CPU
compiler's.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import math
import re
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import app, flags
from ml_collections import config_flags

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------- topologies

# Chip grids of Cloud TPU slices (the shapes `gcloud` creates by default; MaxText's table agrees).
# v4 / v5p count TensorCores in the name (2 per chip, one megacore device per chip); v5e / v6e count chips.
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
            256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_TPU_FAMILIES = {  # name prefix: (libtpu topology prefix, cores per chip in the name, chip config, HBM GiB)
    "v4": ("v4", 2, "megacore", 32), "v5p": ("v5", 2, "megacore", 95),
    "v5e": ("v5e", 1, "default", 16), "v5litepod": ("v5e", 1, "default", 16), "v6e": ("v6e", 1, "default", 32),
}
_GPU_HBM_GIB = {"A100": 80, "H100": 80, "H200": 141, "B200": 180}


@dataclasses.dataclass(frozen=True)
class Target:
    """A compile target: `platform` in tpu / cuda / cpu and how many devices it has."""
    name: str
    platform: str
    num_devices: int
    topology_kwargs: Tuple[Tuple[str, Any], ...] = ()
    hbm_gib: Optional[float] = None  # per device, for the "fits" line; None where unknown


def parse_topology(name: str, num_slices: int = 1) -> Target:
    """'v5p-128' / 'v5e-256' / 'v4-8' / '8xH100' / '2x8xH100' / 'cpu:8' -> `Target` (all slices).

    Raises ValueError naming the accepted forms for anything else."""
    if num_slices < 1:
        raise ValueError(f"--num_slices must be >= 1, got {num_slices}")
    tpu = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name)
    if tpu:
        family, count = tpu.group(1), int(tpu.group(2))
        prefix, cores_per_chip, chip_config, hbm = _TPU_FAMILIES[family]
        chips = count // cores_per_chip
        grids = _GRID_3D if cores_per_chip == 2 else _GRID_2D
        if count % cores_per_chip or chips not in grids:
            sizes = sorted(c * cores_per_chip for c in grids)
            raise ValueError(f"unknown {family} slice {name!r}: known sizes are "
                             f"{family}-{{{', '.join(map(str, sizes))}}}")
        grid = grids[chips]
        # Torus wrap-around links: full 3D cubes from 4x4x4 up; 2D slices along each 16-chip side.
        wrap = (min(grid) >= 4,) * 3 if len(grid) == 3 else tuple(d >= 16 for d in grid) + (False,)
        return Target(name, "tpu", chips * num_slices, (
            ("topology_name", f"{prefix}:{'x'.join(map(str, grid))}"), ("chip_config_name", chip_config),
            ("chips_per_host_bounds", (2, 2, 1) if chips >= 4 else (1, 1, 1)), ("num_slices", num_slices),
            ("wrap", wrap)), hbm)
    gpu = re.fullmatch(r"(?:(\d+)x)?(\d+)x([A-Za-z]\w*)", name)
    if gpu:
        nodes, per_node, kind = int(gpu.group(1) or 1), int(gpu.group(2)), gpu.group(3)
        if nodes < 1 or per_node < 1:
            raise ValueError(f"GPU topology {name!r} needs at least one node and one GPU per node")
        return Target(name, "cuda", nodes * per_node * num_slices,
                      (("topology", f"{num_slices}x{nodes}x{per_node}"),), _GPU_HBM_GIB.get(kind.upper()))
    cpu = re.fullmatch(r"cpu:(\d+)", name)
    if cpu and int(cpu.group(1)) >= 1:
        return Target(name, "cpu", int(cpu.group(1)) * num_slices)
    raise ValueError(f"--topology={name!r} is not a topology: use a Cloud TPU slice (v4-8, v5p-128, v5e-256, "
                     "v6e-16, ...), GPUs as [NODES x]GPUSxNAME (8xH100, 2x8xH100) or cpu:N")


class TargetUnavailable(RuntimeError):
    """The compiler for a target is not installed on this machine (message says what is missing)."""


def _gpu_target_config(path: str) -> str:
    if path:
        with open(path) as f:
            return f.read()
    import jax
    # jax has no getter for an attached GPU's target config (jax.experimental.topologies builds
    # topologies from one but does not expose it); jaxlib's client module has it.
    from jaxlib import xla_client
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as e:
        raise TargetUnavailable("compiling for GPUs without one attached needs --gpu_target_config=FILE (a "
                                "GpuTargetConfigProto text file, e.g. written on a machine with that GPU)") from e
    return xla_client.get_topology_for_devices(gpus).target_config


def target_devices(target: Target, gpu_target_config: str = "") -> list:
    """The compile-only devices of `target`; TargetUnavailable where this machine cannot compile for it."""
    from jax.experimental import topologies
    if target.platform == "cpu":
        return cpu_devices(target.num_devices)
    kwargs = dict(target.topology_kwargs)
    if target.platform == "tpu":
        if not has_libtpu():
            raise TargetUnavailable(f"compiling for {target.name} needs libtpu, which is not installed here "
                                    "(pip install 'jax[tpu]'; libtpu runs on any Linux x86 host, no TPU needed)")
        try:
            devices = topologies.get_topology_desc(platform="tpu", **kwargs).devices
        except Exception as e:  # noqa: BLE001  (libtpu's errors are plain RuntimeErrors / XlaRuntimeErrors)
            raise TargetUnavailable(f"libtpu could not describe {target.name} ({kwargs}): {e}") from e
    else:
        if not has_cuda_plugin():
            raise TargetUnavailable(f"compiling for {target.name} needs the CUDA PJRT plugin, which is not "
                                    "installed here (pip install 'jax[cuda13]' or 'jax[cuda12]'; no GPU needed "
                                    "with --gpu_target_config)")
        try:
            config = _gpu_target_config(gpu_target_config)
            devices = topologies.get_topology_desc(platform="cuda", target_config=config, **kwargs).devices
        except (NotImplementedError, RuntimeError) as e:
            if isinstance(e, TargetUnavailable):
                raise
            if "GpuTargetConfigProto" in str(e):
                raise TargetUnavailable(f"this jaxlib cannot parse the GPU target config ({e}); a config written "
                                        "by a newer XLA has fields this one lacks: drop the fields its log names "
                                        "(configs/gpu_targets/h200.txtpb is one trimmed for jaxlib 0.10.2)") from e
            raise TargetUnavailable(f"compiling for {target.name} needs the CUDA PJRT plugin, which is not "
                                    f"installed here (pip install 'jax[cuda13]'): {e}") from e
    if len(devices) != target.num_devices:
        raise TargetUnavailable(f"{target.name}: expected {target.num_devices} devices, the topology has "
                                f"{len(devices)}")
    return list(devices)


def has_libtpu() -> bool:
    """Whether libtpu (the TPU compiler, `pip install 'jax[tpu]'`) is installed."""
    return importlib.util.find_spec("libtpu") is not None


def has_cuda_plugin() -> bool:
    """Whether a CUDA PJRT plugin (`pip install 'jax[cuda13]'` or `'jax[cuda12]'`) is installed."""
    return any(importlib.util.find_spec(name) is not None for name in ("jax_cuda13_plugin", "jax_cuda12_plugin"))


def cpu_devices(n: int) -> list:
    """n CPU devices: sets jax_num_cpu_devices (only possible before the CPU backend starts)."""
    import jax
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the CPU backend already started: it keeps the devices it has (checked below)
        pass
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise RuntimeError(f"need {n} CPU devices but the CPU backend already started with {len(devices)}: "
                           f"run in a fresh process or set XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return devices[:n]


# ------------------------------------------------------------------------------- the compiled step

def vocab_size_of(config) -> int:
    """The vocab the run will have: config.model.vocab_size, else the vocab file's line count, else
    config.data.vocab_size (the size a vocab trained on the corpus aims at)."""
    if config.model.vocab_size:
        return int(config.model.vocab_size)
    vocab = config.data.get("vocab", "")
    if vocab:
        import os
        path = vocab if os.path.isfile(vocab) else os.path.join(vocab, "vocab.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return sum(1 for _ in f)
    return int(config.data.vocab_size)


def abstract_batch(config, sharding) -> Dict[str, Any]:
    """ShapeDtypeStructs of one global pretraining batch (bert_jax.data.pipeline's layout), sharded."""
    import jax
    import jax.numpy as jnp
    b, s, p = config.data.global_batch_size, config.data.seq_len, config.data.max_predictions
    shapes = {"input_ids": ((b, s), jnp.int32), "token_type_ids": ((b, s), jnp.int32),
              "attention_mask": ((b, s), jnp.int32), "masked_lm_positions": ((b, p), jnp.int32),
              "masked_lm_ids": ((b, p), jnp.int32), "masked_lm_weights": ((b, p), jnp.float32),
              "next_sentence_labels": ((b,), jnp.int32)}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in shapes.items()}


def _per_device_bytes(tree) -> int:
    """Bytes of the largest shard set any one device holds for a tree of sharded ShapeDtypeStructs."""
    import jax
    per_device: Dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        size = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
        for device in x.sharding.device_set:
            per_device[device] = per_device.get(device, 0) + size
    return max(per_device.values())


def compile_train_step(config, devices: Sequence, vocab_size: Optional[int] = None):
    """Lowers and compiles the train step the pretraining loop runs (`training.loop.build`, the same
    builder) for `devices`; returns (compiled, info dict)."""
    import jax

    from bert_jax import sharding
    from bert_jax.training import loop, trainer
    from bert_jax.training.optim import make_optimizer

    mesh, rules = loop.make_mesh(config, devices)
    vocab_size = vocab_size or vocab_size_of(config)
    # As trainer.train_and_evaluate builds it, with the data's vocab replaced by `vocab_size`.
    model_config = trainer.build_model_config(config, vocab_size, 0)
    model = trainer.build_model(config, model_config)
    tx, schedule = make_optimizer(config.optim)
    model_flops, rtd_weight = trainer.step_flops_and_rtd_weight(config, model_config, model)
    built = loop.build(config, model, tx, schedule, functools.partial(trainer.make_train_step, model, rtd_weight=rtd_weight),
                       mesh, rules, functools.partial(trainer.pretraining_invalid_counts, model_config))
    state, params = built.abstract, built.abstract.params
    batch = abstract_batch(config, built.batch_sharding)
    with sharding.activation_context(mesh, rules):  # as the loop traces it
        compiled = built.train_step.lower(state, batch).compile()

    seq_len, batch_size = config.data.seq_len, config.data.global_batch_size
    info = {
        "mesh": dict(mesh.shape), "num_devices": len(devices), "platform": devices[0].platform,
        "device_kind": getattr(devices[0], "device_kind", ""), "vocab_size": vocab_size,
        "params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "global_batch_size": batch_size, "seq_len": seq_len,
        "state_bytes_per_device": _per_device_bytes(state), "batch_bytes_per_device": _per_device_bytes(batch),
        "model_flops_per_step": model_flops, "model_flops_per_device": model_flops / len(devices),
    }
    return compiled, info


def analyse(compiled) -> Dict[str, float]:
    """Per-device memory and FLOPs of a compiled (SPMD-partitioned, so per-device) executable."""
    memory = compiled.memory_analysis()
    out = {}
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes", "peak_memory_in_bytes"):
        value = getattr(memory, field, None) if memory is not None else None
        if value is not None:
            out[field] = int(value)
    # What the step needs resident (MaxText's estimate): the donated state is aliased by the outputs,
    # so it is counted once. XLA's own peak_memory_in_bytes is kept as reported (backend-dependent).
    out["total_bytes_per_device"] = (out.get("argument_size_in_bytes", 0) + out.get("output_size_in_bytes", 0)
                                     - out.get("alias_size_in_bytes", 0) + out.get("temp_size_in_bytes", 0))
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returned one dict per program
    if cost:
        out["xla_flops_per_device"] = float(cost.get("flops", 0.0))
        out["xla_bytes_accessed_per_device"] = float(cost.get("bytes accessed", 0.0))
        if cost.get("optimal_seconds", 0.0) > 0:  # XLA's cost-model step time (TPU; absent on CPU)
            out["estimated_step_seconds"] = float(cost["optimal_seconds"])
    return out


def estimates(info: Dict[str, Any], stats: Dict[str, float], peak_tflops: Optional[float] = None) -> Dict[str, float]:
    """What the compiler's cost-model step time implies: tokens/s for the whole mesh and MFU (model
    FLOPs per device / (step time x peak)). Compiler ESTIMATES, not measurements; empty without one."""
    seconds = stats.get("estimated_step_seconds")
    if not seconds:
        return {}
    if stats.get("xla_flops_per_device", 0.0) < 0.5 * info["model_flops_per_device"]:
        # XLA's cost analysis counts a while loop's body once (scan_layers): no step time to report.
        return {"estimate_note": "not a step time: the cost model counts the scanned layer loop once"}
    out = {"estimated_tokens_per_second": info["global_batch_size"] * info["seq_len"] / seconds}
    if peak_tflops is None:
        from bert_jax.flops import peak_tflops as table
        peak_tflops = table(info.get("device_kind", "")) if info.get("platform") != "cpu" else None
    if peak_tflops:
        out["peak_tflops_per_device"] = peak_tflops
        out["estimated_mfu"] = info["model_flops_per_device"] / (seconds * peak_tflops * 1e12)
    return out


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:10.3f} {unit}"
    return f"{n:10.0f} B"


def format_report(target: Target, info: Dict[str, Any], stats: Dict[str, float], fallback_note: str = "") -> str:
    lines = [f"target {target.name}: {info['num_devices']} {info['platform']} devices"
             + (f" ({info['device_kind']})" if info.get("device_kind") else "")
             + (f"  [{fallback_note}]" if fallback_note else ""),
             f"mesh {info['mesh']}, {info['params']:,} params, vocab {info['vocab_size']}, "
             f"global batch {info['global_batch_size']} x {info['seq_len']}",
             "per device:"]
    rows = (("arguments", stats.get("argument_size_in_bytes")), ("outputs", stats.get("output_size_in_bytes")),
            ("aliased (donated)", stats.get("alias_size_in_bytes")), ("temps", stats.get("temp_size_in_bytes")),
            ("generated code", stats.get("generated_code_size_in_bytes")),
            ("total (args+outs-alias+temps)", stats["total_bytes_per_device"]),
            ("train state (shardings)", info["state_bytes_per_device"]),
            ("batch (shardings)", info["batch_bytes_per_device"]))
    lines += [f"  {label:<30}{_bytes(value)}" for label, value in rows if value is not None]
    if target.hbm_gib and info["platform"] == target.platform:
        fits = stats["total_bytes_per_device"] <= target.hbm_gib * 2**30
        lines.append(f"  {'fits in HBM':<30}{'yes' if fits else 'NO'} ({target.hbm_gib} GiB per device)")
    if "xla_flops_per_device" in stats:
        lines.append(f"  {'XLA flops per step':<30}{stats['xla_flops_per_device'] / 1e12:10.4f} TFLOP "
                     f"(model: {info['model_flops_per_device'] / 1e12:.4f}: 6N + attention + MLM head)")
    est = estimates(info, stats)
    if "estimate_note" in est:
        lines.append(f"compiler estimate: none ({est['estimate_note']})")
    elif est:
        lines.append("compiler estimate (XLA cost model, optimal_seconds; not a measurement):")
        lines.append(f"  {'step time':<30}{stats['estimated_step_seconds'] * 1e3:10.3f} ms")
        lines.append(f"  {'tokens/s (whole mesh)':<30}{est['estimated_tokens_per_second']:10.0f}")
        if "estimated_mfu" in est:
            lines.append(f"  {'MFU implied':<30}{100 * est['estimated_mfu']:10.1f} % "
                         f"(of {est['peak_tflops_per_device']:g} TFLOP/s bf16 peak per device)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined only when run as a program: importing this module for its functions
    must not clash with bert_jax.main's --config)."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:args]).",
                                    lock_config=True)
    flags.DEFINE_string("topology", "cpu:8", "v5p-128 | v5e-256 | v4-8 | ... | 8xH100 | 2x8xH100 | cpu:N")
    flags.DEFINE_integer("num_slices", 1, "Slices of the topology (multi-slice: set config.mesh.dcn_parallelism).")
    flags.DEFINE_integer("vocab_size", 0, "Vocab size of the model (default: from the config, see vocab_size_of).")
    flags.DEFINE_string("gpu_target_config", "", "GpuTargetConfigProto text file (GPU targets without that GPU).")
    flags.DEFINE_bool("fallback", True, "Compile for a CPU mesh of the same size when the target's compiler "
                      "is missing.")
    flags.DEFINE_string("json_out", "", "Also write the report as JSON here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/pretrain.py:size=base")
    logging.getLogger().setLevel(logging.WARNING)
    try:
        target = parse_topology(FLAGS.topology, FLAGS.num_slices)
    except ValueError as e:
        raise app.UsageError(str(e))
    note = ""
    try:
        devices = target_devices(target, FLAGS.gpu_target_config)
    except TargetUnavailable as e:
        if not FLAGS.fallback:
            print(f"bert_jax.aot: {e}. Rerun with --fallback to compile for cpu:{target.num_devices} instead.",
                  file=sys.stderr)
            return 2
        print(f"bert_jax.aot: {e}.\nFalling back to a CPU mesh of {target.num_devices} devices "
              f"(--topology=cpu:{target.num_devices}): the sharding and the per-device state and batch bytes "
              "are the target's; temps, code size and FLOPs are the CPU compiler's.", file=sys.stderr)
        devices, note = cpu_devices(target.num_devices), f"fallback: cpu:{target.num_devices}"
    compiled, info = compile_train_step(FLAGS.config, devices, FLAGS.vocab_size or None)
    stats = analyse(compiled)
    print(format_report(target, info, stats, note))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"topology": target.name, "target_platform": target.platform, "fallback": bool(note),
                       **info, **stats, **estimates(info, stats)}, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
