"""The ablation bench's grid (`python -m bert_jax.ablate`): the base experiment (the pretraining demo,
configs/demo.py) and the variants trained against it on an equal budget.

    python -m bert_jax.ablate --workdir=/tmp/ablate --budget_seconds=120 --seeds=2 [--variants=bert,preln]

`get_config()` returns a ConfigDict with
  * base: the experiment every variant starts from (configs/demo.py's pretraining config);
  * variants: [(name, [spec, ...]), ...] in table order (VARIANTS below; a list rather than a dict because
    ConfigDict sorts its keys and config keys must be fields the code reads). A spec is an override "model.norm_position=pre" (a dotted key of the
    config and a Python literal or bare string; a key the config lacks is added, so switches newer than
    configs/pretrain.py's model section work) or, first in the list, a config file "configs/cramming.py:
    runlocal" (path from the repository root, with its argument) that replaces the base for this variant;
  * shared: the keys every variant takes from the base unless its own specs set them (the data that defines
    the MLM task, so that accuracies compare, the batch, and the evaluation cadence the curves are drawn from). A
    variant whose masking rate or sequence length differs gets data.max_predictions = round(seq * rate + 0.5)
    (configs/pretrain.py's rule) unless it sets it;
  * eval_like_base: every variant evaluates on the base's batches (`bert_jax.ablate.grid.evaluate_like`).
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo  # noqa: E402  (configs/ is not a package; configs are plain files)

from bert_jax.config_args import parse  # noqa: E402

ARGS = {}  # no arguments: select variants with --variants, shrink them with --set

VARIANTS = {
    "bert": [],  # the demo as it is: post-LN, LayerNorm, GELU MLP, biases everywhere, 15% masking
    "preln": ["model.norm_position=pre"],
    "preln_geglu_nobias": ["model.norm_position=pre", "model.mlp_type=geglu", "model.attention_bias=False",
                           "model.mlp_bias=False", "model.norm_bias=False", "model.decoder_bias=False"],
    "rmsnorm": ["model.norm_type=rmsnorm"],
    "mask30": ["data.masked_lm_prob=0.3"],  # max_predictions follows (10 of 32 tokens)
    # The published recipes (issue 15), at CPU size.
    "cramming": ["configs/cramming.py:runlocal"],
    "mosaicbert": ["configs/mosaicbert.py:runlocal"],
    "modernbert": ["configs/modernbert.py:runlocal"],
}

# The batch is shared too: the recipes' `runlocal` batch (16) is a CPU shrink, not a published choice; their
# published batch-size ramps still grow it by accumulation.
SHARED = ["data.source", "data.vocab", "data.vocab_size", "data.lowercase", "data.seq_len", "data.eval_fraction",
          "data.eval_batches", "data.global_batch_size", "log_every", "eval_every", "checkpoint_every"]


def get_config(arg: str = ""):
    parse(arg, ARGS, __file__)
    base = demo.get_config()
    base.progress_bar = False  # the bench runs variants in subprocesses; their logs go to files
    # Points for the accuracy curves (the demo evaluates every 500 steps; a budget of a minute is ~600 steps on
    # a 2-core CPU). Evaluations are left out of the training clock and change nothing that is trained.
    base.eval_every = 100
    # Every variant is evaluated on the base's batches (its masking rate, positions and sentence pairs): a
    # recipe's own 30% masking or MLM-only sentences would make a different, harder or easier, test.
    return ml_collections.ConfigDict(dict(base=base, variants=list(VARIANTS.items()), shared=SHARED,
                                          eval_like_base=True))
