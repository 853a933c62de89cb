"""bert_jax entry point.

python -m bert_jax.main --config=configs/pretrain.py:size=base,seq=128 --workdir=DIR [--config.key=value ...]

Modes (`--config.mode`): pretraining configs: pretrain (train and evaluate; resumes from DIR),
evaluate (the latest checkpoint in DIR). Fine-tuning configs (those with `config.task`, see
configs/finetune.py): finetune (train, evaluate on dev, keep the best; resumes from DIR), evaluate
(a checkpoint in DIR, default the best), predict (the task's predictions file from the best
checkpoint). With no --config the embedded pretraining demo (configs/demo.py) runs.
"""

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (configs/*.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", "/tmp/bert_jax_demo", "Checkpoints, metrics and the effective config go here.")
FLAGS = flags.FLAGS


def modes(config) -> dict:
    """{mode: fn(config, workdir)} for this kind of config (fine-tuning configs have `task`)."""
    if "task" in config:
        from bert_jax.training import finetune
        return {"finetune": finetune.train_and_evaluate, "evaluate": finetune.evaluate, "predict": finetune.predict}
    from bert_jax.training import trainer
    return {"pretrain": trainer.train_and_evaluate, "evaluate": trainer.evaluate_checkpoint}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("absl", "jax._src", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = FLAGS.config
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
