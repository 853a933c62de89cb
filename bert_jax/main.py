"""bert_jax entry point.

python -m bert_jax.main --config=configs/pretrain.py:size=base,seq=128 --workdir=DIR [--config.key=value ...]

Modes (`--config.mode`): pretraining configs: pretrain (train and evaluate; resumes from DIR),
evaluate (the latest checkpoint in DIR). Fine-tuning configs (those with `config.task`, see
configs/finetune.py): finetune (train, evaluate on dev, keep the best; resumes from DIR), evaluate
(a checkpoint in DIR, default the best), predict (the task's predictions file from the best
checkpoint). With no --config the embedded pretraining demo (configs/demo.py) runs.

Errors end the run with one line, `bert_jax: <ErrorType>: <message>`, on stderr and exit status 1;
`--verbose` re-raises instead, for the full traceback. Wrong flags (`app.UsageError`) print absl's usage
message as before.
"""

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (configs/*.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", "/tmp/bert_jax_demo", "Checkpoints, metrics and the effective config go here.")
flags.DEFINE_bool("verbose", False, "On an error, show the full traceback instead of the one-line message.")
FLAGS = flags.FLAGS


def modes(config) -> dict:
    """{mode: fn(config, workdir)} for this kind of config (fine-tuning configs have `task`)."""
    if "task" in config:
        from bert_jax.training import finetune
        return {"finetune": finetune.train_and_evaluate, "evaluate": finetune.evaluate, "predict": finetune.predict}
    from bert_jax.training import trainer
    return {"pretrain": trainer.train_and_evaluate, "evaluate": trainer.evaluate_checkpoint}


def one_line(error: BaseException) -> str:
    """`<ErrorType>: <message>` on one line (the message's lines joined; `KeyError('x')` keeps its quotes)."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def main(argv):
    try:
        run(argv)
    except (app.UsageError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        if FLAGS.verbose:
            raise
        for handler in logging.getLogger().handlers:  # the log so far first: the message must be the last line
            handler.flush()
        sys.stdout.flush()
        print(f"bert_jax: {one_line(e)} (--verbose shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)


def run(argv):
    """Runs `config.mode` for FLAGS.config in FLAGS.workdir (errors propagate; see `main`)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from bert_jax import host_memory
    from bert_jax.training import metrics
    metrics.log_at_info_without_library_noise()
    config = FLAGS.config
    # Before the first JAX computation: XLA's threads take their malloc arenas when they first allocate.
    host_memory.configure(config.get("host_memory", "auto"))
    available = modes(config)
    if config.mode not in available:
        raise app.UsageError(f"unknown mode {config.mode!r} for this config ({' | '.join(available)})")
    result = available[config.mode](config, FLAGS.workdir)
    if isinstance(result, dict):  # every process says where it ended (only process 0 writes the workdir)
        import jax
        logging.info("process %d final metrics: %s", jax.process_index(), json.dumps(
            {k: result[k] for k in ("step", "train", "eval") if k in result}, sort_keys=True, default=float))
    if config.get("fill_mask") and "task" not in config:
        from bert_jax.training import trainer
        trainer.print_fill_mask(result, list(config.fill_mask))


if __name__ == "__main__":
    app.run(main)
