"""GLUE fine-tuning, one task per run (google-research run_classifier / BERT paper defaults).

Usage: python -m bert_jax.main --config=configs/glue.py:task=mrpc --config.init_from=HF_BERT_DIR \
           --config.task.data_dir=glue_data/MRPC --workdir=WORKDIR
       (--config.mode=predict writes the GLUE submission TSV(s), e.g. MRPC.tsv, into the workdir)
Arguments (comma-separated key=value): task in cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (required);
data_dir (the GLUE TSVs; empty: tfds glue/<task> prepared locally); runlocal (a CPU-sized smoke run).
Batch 32, lr 2e-5, 3 epochs, 10% warmup, max_seq_length 128. MNLI evaluates on validation_matched and
validation_mismatched and predicts MNLI-m.tsv, MNLI-mm.tsv and AX.tsv.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune  # noqa: E402  (configs/ is not a package)

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
ARGS = {"task": finetune.Arg(str, None, TASKS, "the GLUE task"), "data_dir": finetune.DATA_DIR,
        "runlocal": finetune.RUNLOCAL}


def get_config(arg: str = ""):
    args = finetune.parse(arg, ARGS, __file__)
    task = args["task"]
    c = finetune.base_config("glue")
    c.task.update(dict(
        glue_task=task,
        data_dir=args["data_dir"],
        tfds_data_dir="",  # source=tfds: the tfds data_dir holding glue/<task> (empty: $TFDS_DATA_DIR)
        ax_file=""))  # MNLI predict: the AX diagnostic TSV (empty: AX.tsv / diagnostic.tsv in data_dir)
    c.data.update(max_seq_length=128, global_batch_size=32, eval_batch_size=64)
    c.optim.update(learning_rate=2e-5, warmup_fraction=0.1)
    c.num_epochs = 3.0
    if args["runlocal"]:
        finetune.runlocal(c)
    return c
