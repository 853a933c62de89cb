"""bert_jax entry point.

python -m bert_jax.main --config=configs/pretrain.py:size=base,seq=128 --workdir=DIR [--config.key=value ...]

Modes (`--config.mode`): pretrain (train and evaluate; resumes from DIR), evaluate (eval of the
latest checkpoint in DIR). With no --config the embedded demo (configs/demo.py) runs.
"""

import logging
import os

from absl import app, flags
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file (configs/*.py[:args]).",
                                lock_config=False)
flags.DEFINE_string("workdir", "/tmp/bert_jax_demo", "Checkpoints, metrics and the effective config go here.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("absl", "jax._src", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = FLAGS.config
    from bert_jax.training import trainer
    if config.mode == "pretrain":
        result = trainer.train_and_evaluate(config, FLAGS.workdir)
    elif config.mode == "evaluate":
        result = trainer.evaluate_checkpoint(config, FLAGS.workdir)
    else:
        raise app.UsageError(f"unknown mode {config.mode!r} (pretrain | evaluate)")
    if config.get("fill_mask"):
        trainer.print_fill_mask(result, list(config.fill_mask))


if __name__ == "__main__":
    app.run(main)
