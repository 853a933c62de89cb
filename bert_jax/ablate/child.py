"""One stage of one bench run, in its own interpreter (memory and compile caches independent of the
other variants):

    python -m bert_jax.ablate.child vocab|calibrate|pretrain|finetune CONFIG_JSON WORKDIR

CONFIG_JSON is the fully resolved experiment config (what the bench wrote; the run's own config.json
says the same). `vocab` trains the bench's shared WordPiece vocab into WORKDIR/tokenizer (the pretraining
run's own rule, on its corpus); `calibrate` times the training step into WORKDIR/calibration.json;
`pretrain` also writes WORKDIR/ablate_info.json (parameter count, model
FLOPs per token and per step). Errors end with one line `bert_jax: <ErrorType>: <message>` and status 1.
"""

from __future__ import annotations

import json
import logging
import sys

import ml_collections

INFO = "ablate_info.json"
CALIBRATION = "calibration.json"
CALIBRATION_STEPS = 40  # timed after the first (compiling) step


def one_line(error: BaseException) -> str:
    """`<ErrorType>: <message>` on one line (bert_jax.main's format; importing main would define its flags)."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def load_config(path: str) -> ml_collections.ConfigDict:
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def vocab(config: ml_collections.ConfigDict, workdir: str) -> None:
    from bert_jax.training import data as training_data
    documents = training_data._documents(config.data.source)  # the pretraining run's corpus and vocab rule
    training_data._own_tokenizer(config, workdir, documents)


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> None:
    import jax
    import numpy as np

    from bert_jax.ablate import grid
    from bert_jax.training import paths, trainer
    result = trainer.train_and_evaluate(config, workdir)
    model_config = result["model"].config
    d = config.data
    per_token = grid.flops_per_token(model_config, d.seq_len, d.max_predictions)
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(result["state"].params))
    paths.write_json(paths.workdir_path(workdir) / INFO, {
        "params": params, "flops_per_token": per_token, "step_flops": per_token * d.seq_len * d.global_batch_size,
        "tokens_per_step": d.seq_len * d.global_batch_size, "total_steps": int(config.total_steps)})


def calibrate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Times the variant's training step (the loop's training clock over CALIBRATION_STEPS steps after the
    compiling one, no evaluations) and writes WORKDIR/calibration.json {seconds_per_step, steps_timed}: what
    a seconds budget lays the variant's schedule over."""
    from bert_jax.training import paths, trainer
    config = ml_collections.ConfigDict(config.to_dict())  # plain values: total_steps no longer refers to optim's
    steps = CALIBRATION_STEPS + 1
    config.total_steps = config.optim.total_steps = steps
    config.optim.warmup_steps = min(config.optim.get("warmup_steps", 0), steps // 2)
    config.train_seconds = float("inf")  # no budget: log the clock
    config.eval_every, config.log_every, config.checkpoint_every = 0, steps, steps
    if "best_metric" in config:
        config.best_metric = ""
    result = trainer.train_and_evaluate(config, workdir)
    seconds = result["train"].get("train_seconds")  # the last log line's clock: every step but the first
    if result["step"] != steps or seconds is None:
        raise RuntimeError(f"calibration: the run in {workdir} ended at step {result['step']} of {steps} without "
                           "a training clock")
    paths.write_json(paths.workdir_path(workdir) / CALIBRATION, {"seconds_per_step": float(seconds) / CALIBRATION_STEPS,
                                                                 "steps_timed": CALIBRATION_STEPS})


def finetune(config: ml_collections.ConfigDict, workdir: str) -> None:
    from bert_jax.training import finetune as finetune_lib
    finetune_lib.train_and_evaluate(config, workdir)


STAGES = {"vocab": vocab, "calibrate": calibrate, "pretrain": pretrain, "finetune": finetune}


def main(argv) -> int:
    if len(argv) != 4 or argv[1] not in STAGES:
        print(f"usage: python -m bert_jax.ablate.child {{{'|'.join(STAGES)}}} CONFIG_JSON WORKDIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bert_jax.training import metrics
    metrics.log_at_info_without_library_noise()
    try:
        config = load_config(argv[2])
        from bert_jax import host_memory
        host_memory.configure(config.get("host_memory", "auto"))  # before the first JAX computation
        STAGES[argv[1]](config, argv[3])
    except Exception as e:  # the bench reads the last line as the run's failure reason
        logging.exception("stage %s failed", argv[1])
        sys.stdout.flush()
        print(f"bert_jax: {one_line(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
