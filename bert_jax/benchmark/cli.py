"""The `python -m bert_jax.benchmark` command line: absl flags -> `run_benchmark` -> the printed (appended) report."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Dict, Optional, Sequence

from absl import flags

from bert_jax import host_memory
from bert_jax.benchmark.inputs import MODEL_CONFIGS
from bert_jax.benchmark.report import MAX_BACKGROUND_CORES, format_markdown, write_output, write_profiles
from bert_jax.benchmark.runner import run_benchmark


def define_flags(fv: flags.FlagValues) -> None:
    """The command line (absl: --helpfull and --flagfile work), defined on `fv` only when run as a
    program so that importing this module adds no global flags."""
    flags.DEFINE_enum("config", "base", list(MODEL_CONFIGS), "Model size.", flag_values=fv)
    flags.DEFINE_integer("batch", 8, "Sequences per step.", flag_values=fv)
    flags.DEFINE_integer("seq", 128, "Tokens per sequence.", flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (params stay float32).",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).", flag_values=fv)
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", flag_values=fv)
    flags.DEFINE_list("mode", ["train", "infer"], "Comma list of train, infer.", flag_values=fv)
    flags.DEFINE_list("mlm_head", ["sparse", "dense"],
                      "Comma list: sparse (logits at masked positions only), dense (at every position).", flag_values=fv)
    for name, allowed in (("mode", {"train", "infer"}), ("mlm_head", {"sparse", "dense"})):
        flags.register_validator(name, lambda values, allowed=allowed: set(values) <= allowed,
                                 f"--{name} takes a comma list of {sorted(allowed)}", flag_values=fv)
    flags.DEFINE_bool("torch", True, "Time transformers' PyTorch BertForMaskedLM in the same run (--notorch: skip).",
                      flag_values=fv)
    flags.DEFINE_float("mlm_fraction", 0.15, "Fraction of positions masked per row.", flag_values=fv)
    flags.DEFINE_string("attention_impl", "xla", "bert_jax attention kernel (xla, dot_product, cudnn, pallas_gpu, "
                        "pallas_tpu, auto).", flag_values=fv)
    flags.DEFINE_bool("dropout", True, "Dropout 0.1 in training on both sides (--nodropout: off).", flag_values=fv)
    flags.DEFINE_enum("prng_impl", "threefry", ["threefry", "rbg", "unsafe_rbg"], "PRNG implementation of the JAX "
                      "side's dropout (bert_jax.training.loop.set_prng_impl; torch uses its own generator).",
                      flag_values=fv)
    flags.DEFINE_enum("host_memory", "auto", list(host_memory.MODES), "Host allocator policy, applied before "
                      "JAX starts (bert_jax.host_memory.configure; both sides share the process, so it applies to "
                      "torch too): auto = reuse when JAX runs on the CPU.", flag_values=fv)
    flags.DEFINE_bool("interleave", True, "Alternate JAX and torch steps (--nointerleave: one after the other).",
                      flag_values=fv)
    flags.DEFINE_integer("matmul_size", 4096, "CPU reference matmul size (0 = skip).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic batch and the parameters.", flag_values=fv)
    flags.DEFINE_string("profile", None, "Also trace --profile_steps JAX steps of each variant (after timing it) "
                        "into this directory and print the top ops by time (bert_jax.benchmark.profile); the "
                        "tables go to DIR/profile.md and DIR/profile.json.", flag_values=fv)
    flags.DEFINE_integer("profile_steps", 3, "Steps traced per variant with --profile.", flag_values=fv)
    flags.DEFINE_string("output", None, "Append the markdown report to this file (refused when other processes "
                        f"kept more than {MAX_BACKGROUND_CORES} cores busy while timing).", flag_values=fv)
    flags.DEFINE_bool("output_when_loaded", False, "Write --output even from a loaded machine; the file then says "
                      "the figures are contaminated.", flag_values=fv)


def parse_args(argv: Sequence[str]) -> flags.FlagValues:
    """Parses `argv` (without the program name) on a fresh FlagValues; for tests and callers."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["bert_jax.benchmark"] + list(argv))
    return fv


def main(argv: Optional[Sequence[str]] = None, fv: Optional[flags.FlagValues] = None) -> Dict[str, Any]:
    """Runs the benchmark for parsed flags `fv` (or parses `argv`); returns the result dict."""
    if fv is None:
        fv = parse_args(argv or [])
        argv = list(argv or [])
    else:  # run as a program: absl has consumed the flags; the report shows the command line as typed
        argv = sys.argv[1:]
    from bert_jax.training.loop import set_prng_impl

    host_memory.configure(fv.host_memory)  # before the first JAX computation
    set_prng_impl(fv.prng_impl)
    result = run_benchmark(config=fv.config, batch=fv.batch, seq=fv.seq, dtype=fv.dtype, steps=fv.steps,
                           warmup=fv.warmup, modes=fv.mode, heads=fv.mlm_head, torch=fv.torch,
                           mlm_fraction=fv.mlm_fraction, attention_impl=fv.attention_impl, dropout=fv.dropout,
                           matmul_size=fv.matmul_size, seed=fv.seed, interleave=fv.interleave,
                           profile_dir=fv.profile, profile_steps=fv.profile_steps)
    command = "python -m bert_jax.benchmark " + " ".join(shlex.quote(a) for a in argv)
    text = format_markdown(result, command)
    print()
    print(text)
    if fv.profile:
        write_profiles(fv.profile, result, command)
        print(f"[benchmark] op profiles in {fv.profile}/profile.md")
    if fv.output:
        write_output(fv.output, text, result, allow_loaded=fv.output_when_loaded)
        print(f"[benchmark] appended to {fv.output}")
    return result
