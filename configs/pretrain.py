"""BERT pretraining (MLM + NSP).

Usage: python -m bert_jax.main --config=configs/pretrain.py:size=base,seq=128,recipe=google --workdir=DIR
Arguments (comma-separated key=value): size in tiny/mini/small/medium/base/large; seq (max sequence
length); recipe in google (AdamW, lr 1e-4, warmup 10k, 1M steps, batch 256) / nvidia_lamb_phase1 /
nvidia_lamb_phase2; runlocal (shrinks everything to a CPU-sized run).

Every BertConfig switch is a `c.model` key with BERT's value (`model_config`; not the fine-tuning labels,
decoder-only fields or pad_token_id), so any architecture
switch is a command-line override, e.g. `--config.model.norm_position=pre --config.model.mlp_type=geglu
--config.model.attention_bias=False`. Optimisation recipes are `c.optim` keys (bert_jax.training.optim):
`--config.optim.schedule=one_cycle --config.optim.warmup_steps=0 --config.optim.peak_fraction=0.75`,
`--config.optim.schedule=trapezoidal --config.optim.decay_fraction=0.1 --config.optim.decay_shape=1-sqrt`,
a batch-size ramp `--config.optim.batch_ramp_to=8 --config.optim.batch_ramp_fraction=0.6` (the data batch
stays `data.global_batch_size`; the schedule then counts optimizer updates, or data steps with
`--config.optim.schedule_counts=data_steps`). Published recipes built on
this file: configs/cramming.py, configs/mosaicbert.py, configs/modernbert.py.
"""

import dataclasses
import typing

import ml_collections

from bert_jax.config import BertConfig
from bert_jax.config_args import Arg, parse

SIZES = {  # layers, hidden, heads
    "tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
    "base": (12, 768, 12), "large": (24, 1024, 16),
}

RECIPES = {
    # google-research/bert: AdamWeightDecay without bias correction, linear warmup then decay to 0.
    "google": dict(optimizer="adamw_google", learning_rate=1e-4, warmup_steps=10_000, total_steps=1_000_000,
                   global_batch_size=256, weight_decay=0.01),
    # NVIDIA DeepLearningExamples LAMB, phase 1 (seq 128) and phase 2 (seq 512).
    "nvidia_lamb_phase1": dict(optimizer="lamb", learning_rate=6e-3, warmup_fraction=0.2843, total_steps=7_038,
                               global_batch_size=65_536, weight_decay=0.01, schedule="polynomial", power=0.5),
    "nvidia_lamb_phase2": dict(optimizer="lamb", learning_rate=4e-3, warmup_fraction=0.128, total_steps=1_563,
                               global_batch_size=32_768, weight_decay=0.01, schedule="polynomial", power=0.5),
}


# What `configs/pretrain.py:<args>` accepts; anything else is an error that lists these.
ARGS = {
    "size": Arg(str, "base", tuple(SIZES), "model size"),
    "seq": Arg(int, 128, None, "max sequence length (max_predictions follows: 15% + 1)"),
    "recipe": Arg(str, "google", tuple(RECIPES), "optimiser, schedule and batch"),
    "runlocal": Arg(bool, False, None, "shrink to a CPU-sized run"),
}


# BertConfig fields that are not experiment switches: labels and heads of fine-tuning, decoder-only
# switches, and pad_token_id (the tokenizer's, set by the trainer). Every other field is a `c.model` key.
NOT_MODEL_SWITCHES = ("pad_token_id", "is_decoder", "add_cross_attention", "use_cache", "classifier_dropout",
                      "classifier_head", "num_labels", "id2label", "label2id", "problem_type")


def all_model_fields() -> ml_collections.ConfigDict:
    """Every BertConfig field an experiment can set, with BertConfig's default, so that any
    `--config.model.<field>=...` reaches the model (fields added to BertConfig appear here by
    themselves). Optional fields whose default is None are typed placeholders, so the command line
    can set them (`--config.model.embedding_size=64`)."""
    hints = typing.get_type_hints(BertConfig)
    fields = {}
    for field in dataclasses.fields(BertConfig):
        if field.name in NOT_MODEL_SWITCHES:
            continue
        if field.default is None:
            kinds = [k for k in typing.get_args(hints[field.name]) if k is not type(None)]
            fields[field.name] = ml_collections.config_dict.placeholder(kinds[0] if kinds else str)
        else:
            fields[field.name] = field.default
    return ml_collections.ConfigDict(fields)


def size_fields(size: str) -> dict:
    """The fields a model size sets (a dense MLP 4x wide)."""
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of {sorted(SIZES)}")
    layers, hidden, heads = SIZES[size]
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden)


def model_config(size: str) -> ml_collections.ConfigDict:
    """`c.model`: every BertConfig switch (`all_model_fields`), BERT's values, sized by `size`."""
    c = all_model_fields()
    c.update(size_fields(size))
    c.update(dict(
        max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        hidden_act="gelu", dtype="float32", param_dtype="float32", attention_impl="auto", remat_policy="none",
        scan_layers=False, type_vocab_size=2,
        vocab_size=0))  # 0: the tokenizer's (data.vocab or the vocab trained on the corpus)
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Dropout's random bits: "threefry" (same masks on any backend and mesh), "rbg" / "unsafe_rbg" (cheaper;
    # see bert_jax.training.loop.set_prng_impl). A run resumes under the implementation it started with.
    c.prng_impl = "threefry"
    # Host allocator (bert_jax.host_memory): "auto" keeps XLA:CPU's per-step temporaries mapped between steps
    # when JAX runs on the CPU (no page faults each step); "reuse" always, "default" leaves malloc alone.
    c.host_memory = "auto"
    c.mode = "pretrain"
    c.objective = "mlm_nsp"  # or "mlm" (RoBERTa-style, no NSP), or "electra" (replaced-token detection)
    # objective="electra" (bert_jax/training/electra.py): the generator has the discriminator's (config.model's)
    # hidden size, heads and intermediate size divided by generator_size_divisor (the paper: 1/4-1/2 of the
    # discriminator is best); loss = generator MLM loss + rtd_weight * replaced-token-detection loss (paper: 50).
    c.electra = ml_collections.ConfigDict(dict(generator_size_divisor=4, rtd_weight=50.0))
    c.model = model_config("base")
    c.data = ml_collections.ConfigDict(dict(
        source="stdlib",  # stdlib (embedded corpus) | array_record:<glob> | text:<glob>
        vocab="",  # vocab.txt / tokenizer dir; empty: train a WordPiece vocab on the corpus
        vocab_size=8000, lowercase=True, seq_len=128, max_predictions=20, masked_lm_prob=0.15,
        short_seq_prob=0.1, dupe_factor=2, global_batch_size=256, eval_fraction=0.02, eval_batches=10,
        # True: fresh masks every time an example is seen (reproducible from the seed, resumable); False: the
        # shards' masks (array_record) or the first pass's (text). array_record + True needs `vocab`.
        dynamic_masking=True, worker_count=0,
        # Masking: each predicted position becomes [MASK] / a random token / stays, with these fractions
        # (BERT's 80/10/10); whole_word_mask masks all '##' pieces of a word together.
        mask_token_fraction=0.8, random_token_fraction=0.1, whole_word_mask=False,
        eval_source="",  # array_record: a separate glob of eval shards; empty: the training shards
        # Text sources: evaluation batches masked / paired unlike training (0 / "": as training). The
        # ablation bench evaluates every variant on the base experiment's batches with these.
        eval_masked_lm_prob=0.0, eval_max_predictions=0, eval_mode=""))  # eval_mode: nsp | full_sentences
    # Fields and meaning: bert_jax.training.optim.default_config (schedules 'one_cycle' / 'trapezoidal' and
    # the batch-size ramp: see make_optimizer; with a ramp the schedule counts optimizer updates).
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", learning_rate=1e-4, schedule="linear", warmup_steps=10_000, warmup_fraction=-1.0,
        total_steps=1_000_000, end_learning_rate=0.0, power=1.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
        grad_clip_norm=1.0, peak_fraction=0.5, initial_lr_fraction=0.0, decay_fraction=0.2, decay_shape="linear",
        batch_ramp_from=1, batch_ramp_to=1, batch_ramp_fraction=0.0, schedule_counts="updates"))
    c.total_steps = c.optim.get_ref("total_steps")
    c.micro_batches = 1  # gradient accumulation: the global batch is split into this many micro-batches
    c.mesh = ml_collections.ConfigDict(dict(ici_parallelism=(1, -1, 1), dcn_parallelism=(1, 1, 1), rules=()))
    c.log_every = 100
    c.eval_every = 2000
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3  # the newest K (exact resume); <= 0 keeps all
    c.best_metric = ""  # eval metric whose best checkpoint is also kept (e.g. "mlm_accuracy"); "" = off
    c.best_mode = "max"  # "max" or "min" (for a loss)
    c.async_checkpointing = True
    c.on_nonfinite = "stop"  # or "skip": leave the params of a non-finite step unchanged
    # Ids, labels or positions out of range in a batch (counted inside the step): "stop" names the field
    # and step; "skip" leaves that step's params unchanged and logs it.
    c.on_invalid_data = "stop"
    # Multi-process: steps between the agreements on a SIGTERM (a signal is acted on 1-2x this many steps later).
    c.preemption_check_every = 10
    c.init_from = ""  # HF checkpoint directory or bert_jax workdir (params only)
    c.profile_steps = 0
    c.progress_bar = True  # tqdm on the console (process 0, only when stderr is a terminal)
    c.peak_tflops_per_device = 0.0  # MFU denominator; 0 = the chip table in bert_jax.flops (none on CPU)
    # Wall-clock budget in seconds of training (compilation and evaluations out; carried over resumes): the
    # first step past it is the last (logged, evaluated, saved). 0 = none; inf = log the clock only.
    c.train_seconds = 0.0
    return c


def apply_recipe(c: ml_collections.ConfigDict, recipe: str) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is not one of {sorted(RECIPES)}")
    r = dict(RECIPES[recipe])
    c.data.global_batch_size = r.pop("global_batch_size")
    for key, value in r.items():
        c.optim[key] = value


def runlocal(c: ml_collections.ConfigDict) -> None:
    """Shrinks any config to a CPU-sized run (a few minutes): the tiny size, shorter sequences, fewer
    steps. Architecture switches (norms, MLP, positions, dropout, ...) stay as the experiment set them."""
    c.model.update(size_fields("tiny"))
    c.model.max_position_embeddings = 128
    c.data.update(seq_len=64, max_predictions=10, global_batch_size=16, vocab_size=2000, eval_batches=4)
    c.optim.update(total_steps=200, warmup_steps=20, warmup_fraction=-1.0)
    c.mesh.ici_parallelism = (1, -1, 1)
    c.log_every, c.eval_every, c.checkpoint_every = 20, 100, 100


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse(arg, ARGS, __file__)
    c = base_config()
    c.model = model_config(args["size"])
    apply_recipe(c, args["recipe"])
    if args["seq"] <= 2:
        raise ValueError(f"configs/pretrain.py: seq={args['seq']} leaves no room for [CLS] and [SEP]")
    c.data.seq_len = args["seq"]
    c.data.max_predictions = max(1, round(c.data.seq_len * 0.15 + 0.5))
    if args["runlocal"]:
        runlocal(c)
    return c
