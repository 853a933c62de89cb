"""Named-entity recognition on CoNLL-2003-format data (BERT paper defaults).

Usage: python -m bert_jax.main --config=configs/ner.py --config.init_from=HF_BERT_DIR \
           --config.task.data_dir=CONLL_DIR --workdir=WORKDIR
Arguments (comma-separated key=value): data_dir (train.txt / valid.txt / test.txt in CoNLL columns; empty:
tfds conll2003 prepared locally); runlocal (a CPU-sized smoke run).
Cased models suit NER: pass --config.lowercase=false with a cased checkpoint. Batch 32, lr 5e-5, 3 epochs,
10% warmup, max_seq_length 128; entity-level F1 (seqeval) picks the best checkpoint.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune  # noqa: E402  (configs/ is not a package)

ARGS = {"data_dir": finetune.DATA_DIR, "runlocal": finetune.RUNLOCAL}


def get_config(arg: str = ""):
    args = finetune.parse(arg, ARGS, __file__)
    c = finetune.base_config("ner")
    c.task.update(dict(
        data_dir=args["data_dir"],
        tfds_data_dir="",  # source=tfds: the tfds data_dir holding conll2003 (empty: $TFDS_DATA_DIR)
        files=dict(train="train.txt", validation="valid.txt", test="test.txt"),
        labels=""))  # comma-separated tag list in id order; empty: sorted tags of train.txt (tfds: its order)
    c.data.update(max_seq_length=128, global_batch_size=32, eval_batch_size=64)
    c.optim.update(learning_rate=5e-5, warmup_fraction=0.1)
    c.num_epochs = 3.0
    if args["runlocal"]:
        finetune.runlocal(c)
    return c
