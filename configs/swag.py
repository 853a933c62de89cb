"""SWAG multiple choice (BERT paper: batch 16, lr 2e-5, 3 epochs; inputs [batch, 4, seq]).

Usage: python -m bert_jax.main --config=configs/swag.py --config.init_from=HF_BERT_DIR \
           --config.task.data_dir=swagaf/data --workdir=WORKDIR
Arguments (comma-separated key=value): data_dir (train.csv / val.csv / test.csv of the SWAG release);
runlocal (a CPU-sized smoke run). Each example is four sequences, so a batch costs 4x a GLUE batch.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune  # noqa: E402  (configs/ is not a package)

ARGS = {"data_dir": finetune.DATA_DIR, "runlocal": finetune.RUNLOCAL}


def get_config(arg: str = ""):
    args = finetune.parse(arg, ARGS, __file__)
    c = finetune.base_config("swag")
    c.task.update(dict(
        data_dir=args["data_dir"],
        files=dict(train="train.csv", validation="val.csv", test="test.csv")))
    c.data.update(max_seq_length=128, global_batch_size=16, eval_batch_size=32)
    c.optim.update(learning_rate=2e-5, warmup_fraction=0.1)
    c.num_epochs = 3.0
    if args["runlocal"]:
        finetune.runlocal(c, max_seq_length=64)
    return c
