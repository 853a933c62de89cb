"""Shared base of every fine-tuning config (configs/glue.py, squad.py, ner.py, swag.py, classify.py,
finetune_demo.py). Not an experiment itself: each task config calls `base_config(...)` and fills
`config.task`.

Defaults follow the BERT paper / google-research: batch 32, lr 2e-5..5e-5, 3 epochs, 10% warmup,
max_seq_length 128, AdamW with weight decay 0.01 off LayerNorm and biases, clipping at 1.0.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402  (configs/ is not a package; configs are plain files)

from bert_jax.config_args import Arg, parse  # noqa: E402,F401  (re-exported for the task configs)

RUNLOCAL = Arg(bool, False, None, "shrink to a CPU-sized smoke run")
# BertConfig fields a fine-tuning run may override on top of its checkpoint's: regularisation, the sequence
# classifier's head (the checkpoint's model_type picks it: pooler / roberta / electra) and the JAX-side
# fields that describe this run's hardware, not the checkpoint.
MODEL_OVERRIDES = {"hidden_dropout_prob": float, "attention_probs_dropout_prob": float, "classifier_dropout": float,
                   "classifier_head": str, "dtype": str, "param_dtype": str, "attention_impl": str,
                   "remat_policy": str, "scan_layers": bool}
DATA_DIR = Arg(str, "", None, "the task's files in their original format (empty: tfds prepared locally)")


def base_config(task_name: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Dropout's random bits: "threefry" (same masks on any backend and mesh), "rbg" / "unsafe_rbg" (cheaper;
    # see bert_jax.training.loop.set_prng_impl). A run resumes under the implementation it started with.
    c.prng_impl = "threefry"
    # Host allocator (bert_jax.host_memory): "auto" keeps XLA:CPU's per-step temporaries mapped between steps
    # when JAX runs on the CPU (no page faults each step); "reuse" always, "default" leaves malloc alone.
    c.host_memory = "auto"
    c.mode = "finetune"  # finetune (train + eval on dev, keep the best) | evaluate | predict
    # HF BERT directory (config.json + weights + vocab.txt) or a bert_jax workdir (params of the
    # encoder; the head is new). Empty: a freshly initialised model (tests, demos).
    c.init_from = ""
    c.vocab = ""  # vocab.txt / tokenizer dir; empty: the one in init_from
    c.lowercase = True
    c.vocab_size = 8000  # WordPiece vocab trained on the task's text when neither vocab nor init_from is set
    c.model = pretrain.model_config("base")  # used only when init_from is empty; else taken from the checkpoint
    # BertConfig fields set on top of init_from's (or config.model's); None leaves the field as it is.
    # Declared with their types so `--config.model_overrides.hidden_dropout_prob=0.0` works on every task.
    c.model_overrides = ml_collections.ConfigDict({
        name: ml_collections.config_dict.placeholder(kind) for name, kind in MODEL_OVERRIDES.items()})
    c.task = ml_collections.ConfigDict(dict(
        name=task_name,
        data_dir="",  # local files in the task's original format; empty: tfds.data_source
        source="",  # "" (auto: files when data_dir is set, else tfds) | files | tfds
        max_train_examples=-1, max_eval_examples=-1))  # -1: all (tests and smoke runs cap them)
    c.data = ml_collections.ConfigDict(dict(max_seq_length=128, global_batch_size=32, eval_batch_size=64))
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", learning_rate=2e-5, schedule="linear", warmup_steps=-1, warmup_fraction=0.1,
        total_steps=-1, end_learning_rate=0.0, power=1.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
        grad_clip_norm=1.0))
    c.num_epochs = 3.0
    c.total_steps = -1  # -1: num_epochs over the training features
    c.micro_batches = 1
    c.mesh = ml_collections.ConfigDict(dict(ici_parallelism=(1, -1, 1), dcn_parallelism=(1, 1, 1), rules=()))
    c.log_every = 50
    c.eval_every = -1  # -1: once per epoch; 0: only at the end; N: every N steps (and at the end)
    c.checkpoint_every = -1  # -1: at every eval (and at the end); N > 0: also every N steps
    c.keep_checkpoints = 1  # the newest K (for resume) + the best on dev by the task's metric_for_best
    c.eval_step = -1  # mode=evaluate / predict: the checkpoint step to use; -1: the best
    c.async_checkpointing = True
    c.on_nonfinite = "stop"  # or "skip": leave the params of a non-finite step unchanged
    # Ids, labels or positions out of range in a batch (counted inside the step): "stop" names the field
    # and step; "skip" leaves that step's params unchanged and logs it.
    c.on_invalid_data = "stop"
    # Multi-process: steps between the agreements on a SIGTERM (a signal is acted on 1-2x this many steps later).
    c.preemption_check_every = 10
    c.progress_bar = True
    return c


def runlocal(c: ml_collections.ConfigDict, **data) -> None:
    """Shrinks a fine-tuning config to a CPU smoke run: tiny fresh model, a few hundred examples,
    one epoch. `data` overrides `config.data` fields (e.g. a shorter max_seq_length)."""
    c.model = pretrain.model_config("tiny")
    c.data.update(dict(dict(global_batch_size=8, eval_batch_size=16), **data))
    c.task.update(dict(max_train_examples=256, max_eval_examples=64))
    c.num_epochs = 1.0
    c.log_every = 10
