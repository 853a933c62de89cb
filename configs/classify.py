"""Fine-tuning on your own CSV / TSV / JSONL data: classification, regression or multi-label.

Usage: python -m bert_jax.main --config=configs/classify.py --config.init_from=HF_BERT_DIR \
           --config.task.train_file=train.csv --config.task.validation_file=dev.csv \
           --config.task.text_column=text --config.task.label_column=label --workdir=WORKDIR
Optional: --config.task.text_pair_column=... (sentence pairs), --config.task.problem_type=regression |
multi_label, --config.task.label_names=neg,pos (id order; default: sorted labels of the train file),
--config.task.test_file=... with --config.mode=predict (writes predictions_test.tsv).
Arguments (comma-separated key=value): problem_type, runlocal. Batch 32, lr 2e-5, 3 epochs, 10% warmup,
max_seq_length 128.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune  # noqa: E402  (configs/ is not a package)

ARGS = {"problem_type": finetune.Arg(str, "single_label", ("single_label", "regression", "multi_label"),
                                     "what the label column holds"),
        "runlocal": finetune.RUNLOCAL}


def get_config(arg: str = ""):
    args = finetune.parse(arg, ARGS, __file__)
    c = finetune.base_config("classify")
    c.task.update(dict(
        source="files",
        train_file="", validation_file="", test_file="",
        file_format="",  # csv | tsv | jsonl; empty: from the file extension
        text_column="text", text_pair_column="", label_column="label",
        problem_type=args["problem_type"],  # single_label | regression | multi_label
        label_names="",  # comma-separated, in id order; empty: sorted labels of the train file
        label_delimiter=","))  # multi_label labels given as one string: "sports,politics"
    c.data.update(max_seq_length=128, global_batch_size=32, eval_batch_size=64)
    c.optim.update(learning_rate=2e-5, warmup_fraction=0.1)
    c.num_epochs = 3.0
    if args["runlocal"]:
        finetune.runlocal(c)
    return c
