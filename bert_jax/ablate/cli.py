"""Command line of the ablation bench (`python -m bert_jax.ablate`)."""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from bert_jax.ablate import bench, grid, report

flags.DEFINE_string("workdir", None, "The bench's directory: <variant>/seed<k>/{pretrain,finetune}, the table, the plot.")
flags.DEFINE_string("config", "configs/ablate.py", "The grid: base experiment, variants, shared keys (configs/ablate.py).")
flags.DEFINE_list("variants", [], "Variants to run, by name (default: all of the config's).")
flags.DEFINE_float("budget_seconds", 0.0, "Equal budget: seconds of training per run (the loop's train_seconds).")
flags.DEFINE_float("budget_flops", 0.0, "Equal budget: model training FLOPs per run (steps computed per variant).")
flags.DEFINE_integer("seeds", 1, "Runs per variant (seeds 0..N-1); the table reports mean ± std.")
flags.DEFINE_multi_string("set", [], "key=value applied to every variant's pretraining config (after its own).")
flags.DEFINE_string("finetune_config", bench.DEFAULT_FINETUNE, "Fine-tuning config run from each pretraining workdir.")
flags.DEFINE_multi_string("finetune_set", [], "key=value applied to the fine-tuning config.")
flags.DEFINE_float("stage_timeout", 0.0, "Seconds after which a stage (pretraining / fine-tuning) counts as failed; 0: none.")
flags.DEFINE_bool("fit_schedule", True, "With --budget_seconds: time each variant's step first and lay its schedule "
                  "over the steps that fit (else the config's schedule, cut where the budget ends).")
FLAGS = flags.FLAGS


def run(argv) -> dict:
    """Runs the bench for FLAGS; returns the table (also written to the workdir with the plot)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    budget = grid.Budget(seconds=FLAGS.budget_seconds, flops=FLAGS.budget_flops)
    bench_config = grid.with_common(grid.load_bench(FLAGS.config), FLAGS.set)
    variants = grid.resolve_all(bench_config, FLAGS.variants, FLAGS.set)
    if budget.flops:  # a variant whose FLOPs cannot be counted cannot have a FLOPs budget
        for variant in variants:
            if not variant.unavailable:
                try:
                    grid.step_flops(variant.config, 1000)
                except ValueError as e:
                    variant.unavailable = str(e)
    results = bench.run_bench(bench_config, variants, FLAGS.workdir, budget, FLAGS.seeds, FLAGS.finetune_config,
                              FLAGS.finetune_set, FLAGS.stage_timeout or None, FLAGS.fit_schedule)
    table = report.summarise(variants, results, budget)
    paths = report.write_table(table, FLAGS.workdir)
    print(report.markdown(table))
    print(f"table: {paths['markdown']}, {paths['json']}")
    print(f"plot: {report.plot(table, f'{FLAGS.workdir}/{report.PLOT}')}")
    return table


def main(argv) -> None:
    logging.getLogger().setLevel(logging.INFO)
    try:
        table = run(argv)
    except app.UsageError:
        raise
    except (ValueError, ImportError, RuntimeError, FileNotFoundError) as e:
        from bert_jax.ablate.child import one_line
        print(f"bert_jax.ablate: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(1)
    # Failed runs are in the table; the exit status says so too (unavailable variants are not failures).
    sys.exit(1 if any(row["status"] == "failed" for row in table["variants"]) else 0)
