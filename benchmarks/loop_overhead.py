"""What the training loop costs over the bare jitted step, for one config.

    python benchmarks/loop_overhead.py --config=configs/demo.py --steps=300 [--config.key=value ...]
        [--keep_eval] [--output=benchmarks/results/loop-overhead-cpu-2core.md]

Measured, in this order, with the same `build_run` (model, optimizer, shardings, jitted step) as the trainer:
  bare:   `state, metrics = train_step(state, batch)` on one fixed global batch, `--steps` times after
          3 warm-up steps, one `block_until_ready` at the end (so dispatch overlaps compute, as in the loop).
  loop:   `train_and_evaluate` in a fresh workdir for log_every + `--steps` steps with the config's log and
          checkpoint intervals (eval off unless --keep_eval). Timed from the first log line (after the
          compile) to the last, from the `time` stamps in metrics.jsonl: input pipeline, make_global_batch,
          metric fetches, logging, checkpoint saves and the progress bar are all inside.
  bare:   again, after the loop; the bare figure is the mean of the two (a shared machine drifts).
  fed:    the bare step fed by the real pipeline (next(loader) -> make_global_batch -> step), nothing else.
  parts:  host-side costs per step in isolation: next(loader), make_global_batch.
Overhead = loop s/step / bare s/step - 1 (extra wall time per step over the bare step), split into the
input pipeline (fed vs bare) and the rest of the loop (loop vs fed: metric fetches, logs, checkpoints).
"""

import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "demo.py"), "Experiment config.",
                                lock_config=False)
flags.DEFINE_integer("steps", 300, "Timed steps (rounded up to a multiple of config.log_every).")
flags.DEFINE_bool("keep_eval", False, "Keep the config's periodic eval inside the loop.")
flags.DEFINE_string("output", "", "Append a markdown section to this file.")
FLAGS = flags.FLAGS


def time_bare(run, batch, steps: int) -> float:
    """Seconds per step of the jitted train step alone on a fixed batch (warm, async dispatch)."""
    state = run.state
    for _ in range(3):
        state, metrics = run.train_step(state, batch)
    metrics["loss"].block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = run.train_step(state, batch)
    metrics["loss"].block_until_ready()
    run.state = state  # the old buffers were donated
    return (time.perf_counter() - start) / steps


def time_fed(run, steps: int) -> float:
    """Seconds per step of the bare step fed by the real input pipeline: next(loader) ->
    make_global_batch -> train_step, nothing else (no metric fetches, logs or checkpoints)."""
    from bert_jax import sharding
    iterator, state = iter(run.data.train_loader), run.state
    for _ in range(3):
        state, metrics = run.train_step(state, sharding.make_global_batch(next(iterator), run.mesh, run.rules))
    metrics["loss"].block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = run.train_step(state, sharding.make_global_batch(next(iterator), run.mesh, run.rules))
    metrics["loss"].block_until_ready()
    run.state = state
    return (time.perf_counter() - start) / steps


def time_host_parts(run, steps: int) -> dict:
    """Seconds per step of next(loader) and make_global_batch, each on its own (no device work)."""
    from bert_jax import sharding
    iterator = iter(run.data.train_loader)
    next(iterator)
    start = time.perf_counter()
    batches = [next(iterator) for _ in range(steps)]
    loader_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for batch in batches:
        sharding.make_global_batch(batch, run.mesh, run.rules)
    return {"next_batch_s": loader_s, "make_global_batch_s": (time.perf_counter() - start) / steps}


def time_loop(config, steps: int, workdir: str) -> float:
    """Seconds per step of train_and_evaluate between its first and last log line."""
    from bert_jax.training import trainer
    config.optim.total_steps = config.log_every + steps
    config.total_steps = config.optim.total_steps
    trainer.train_and_evaluate(config, workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in records if r["split"] == "train"]
    first, last = train[0], train[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"])


def main(argv):
    del argv
    import jax
    from bert_jax import sharding
    from bert_jax.benchmark import cpu_model
    from bert_jax.training import metrics, trainer
    metrics.log_at_info_without_library_noise()
    config = FLAGS.config
    if not FLAGS.keep_eval:
        config.eval_every = 0
    config.progress_bar = False
    config.fill_mask = []
    log_every = config.log_every
    steps = -(-FLAGS.steps // log_every) * log_every
    batch_size = config.data.global_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        run = trainer.build_run(config, os.path.join(tmp, "bare"))
        with sharding.activation_context(run.mesh, run.rules):
            batch = sharding.make_global_batch(next(iter(run.data.train_loader)), run.mesh, run.rules)
            bare_before = time_bare(run, batch, steps)
            parts = time_host_parts(run, min(steps, 200))
            fed = time_fed(run, steps)
        print(f"[loop_overhead] bare step: {bare_before * 1e3:.2f} ms ({batch_size / bare_before:.1f} seq/s); "
              f"host parts: {json.dumps({k: round(v * 1e3, 3) for k, v in parts.items()})} ms", flush=True)
        # The loop runs in a fresh workdir with the bare run's vocab (a vocab trained twice can differ).
        if os.path.isdir(os.path.join(tmp, "bare", "tokenizer")):
            shutil.copytree(os.path.join(tmp, "bare", "tokenizer"), os.path.join(tmp, "loop", "tokenizer"))
        loop = time_loop(config, steps, os.path.join(tmp, "loop"))  # builds its own run and mesh context
        print(f"[loop_overhead] loop step: {loop * 1e3:.2f} ms ({batch_size / loop:.1f} seq/s)", flush=True)
        with sharding.activation_context(run.mesh, run.rules):
            bare_after = time_bare(run, batch, steps)
    bare = statistics.mean([bare_before, bare_after])
    overhead = loop / bare - 1.0
    lines = [
        f"### {config_flags.get_config_filename(FLAGS['config'])}  ({datetime.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/loop_overhead.py', *sys.argv[1:]])}`  ",
        f"Machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}  ",
        f"Model: hidden {config.model.hidden_size}, {config.model.num_hidden_layers} layers, "
        f"seq {config.data.seq_len}, global batch {batch_size}, objective {config.objective}; "
        f"{steps} timed steps, log every {log_every}, checkpoint every {config.checkpoint_every} "
        f"(async {config.get('async_checkpointing', True)}), eval {'every %d' % config.eval_every if config.eval_every else 'off'}",
        "",
        "| measurement | ms/step | seq/s |",
        "|---|---|---|",
        f"| bare jitted step (before loop) | {bare_before * 1e3:.2f} | {batch_size / bare_before:.1f} |",
        f"| bare jitted step (after loop) | {bare_after * 1e3:.2f} | {batch_size / bare_after:.1f} |",
        f"| bare step fed by the input pipeline | {fed * 1e3:.2f} | {batch_size / fed:.1f} |",
        f"| train_and_evaluate loop | {loop * 1e3:.2f} | {batch_size / loop:.1f} |",
        f"| host: next(loader) alone | {parts['next_batch_s'] * 1e3:.2f} | — |",
        f"| host: make_global_batch alone | {parts['make_global_batch_s'] * 1e3:.3f} | — |",
        "",
        f"Loop overhead over the bare step: **{overhead * 100:+.1f}%** (input pipeline: "
        f"{(fed / bare - 1) * 100:+.1f}%; the rest of the loop over the fed step: {(loop / fed - 1) * 100:+.1f}%)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if FLAGS.output:
        with open(FLAGS.output, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
