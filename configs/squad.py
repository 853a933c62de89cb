"""SQuAD v1.1 / v2.0 fine-tuning (google-research run_squad / BERT paper defaults).

Usage: python -m bert_jax.main --config=configs/squad.py:version=2 --config.init_from=HF_BERT_DIR \
           --config.task.data_dir=DIR_WITH_SQUAD_JSON --workdir=WORKDIR
Arguments (comma-separated key=value): version in 1/1.1/2/2.0 (default 1); data_dir (the official
train-v*.json / dev-v*.json; empty: tfds squad/v1.1 or squad/v2.0 prepared locally); runlocal (a
CPU-sized smoke run on the first few hundred questions).
lr 3e-5, 2 epochs, batch 32, max_seq_length 384, doc_stride 128, max_query_length 64, 10% warmup.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune  # noqa: E402  (configs/ is not a package)

ARGS = {"version": finetune.Arg(str, "1", ("1", "1.1", "2", "2.0"), "SQuAD v1.1 or v2.0"),
        "data_dir": finetune.DATA_DIR, "runlocal": finetune.RUNLOCAL}


def get_config(arg: str = ""):
    args = finetune.parse(arg, ARGS, __file__)
    version = args["version"]
    c = finetune.base_config("squad")
    c.task.update(dict(
        version=int(float(version)),
        data_dir=args["data_dir"],
        train_file="", dev_file="",  # empty: train-v1.1.json / dev-v1.1.json or train-v2.0.json / dev-v2.0.json
        tfds_name="",  # empty: squad/v1.1 or squad/v2.0
        max_query_length=64, doc_stride=128,  # doc_stride: context tokens shared by consecutive windows
        n_best_size=20, max_answer_length=30,
        null_score_diff_threshold=0.0,  # v2.0: predict "" when null score - best span score exceeds this
        use_max_context=True))  # a span must start in the window that gives its first token most context
    c.data.update(max_seq_length=384, global_batch_size=32, eval_batch_size=64)
    c.optim.update(learning_rate=3e-5, warmup_fraction=0.1)
    c.num_epochs = 2.0
    if args["runlocal"]:
        finetune.runlocal(c, max_seq_length=128)
        c.task.update(dict(max_query_length=32, doc_stride=32))
    return c
