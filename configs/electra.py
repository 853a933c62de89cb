"""ELECTRA pretraining (replaced-token detection with a small generator; bert_jax/training/electra.py).

Usage: python -m bert_jax.main --config=configs/electra.py:size=small --workdir=DIR   (or size=base|large; runlocal)

The published choices (Clark et al. 2020, Table 6, and google-research/electra):
  size   layers hidden heads embedding generator  lr     batch  steps  seq  mask
  small  12     256    4     128       1/4        5e-4   128    1M     128  15%
  base   12     768    12    768       1/3        2e-4   256    766k   512  15%
  large  24     1024   16    1024      1/4        2e-4   2048   400k   512  25%
AdamW (b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01), 10k warmup steps then linear decay, dropout 0.1,
rtd_weight (the paper's lambda) 50, MLM only (no NSP). The masking is ELECTRA's: each chosen position
becomes [MASK] 85% of the time and keeps its token otherwise (`pretrain_helpers.mask`: no random tokens).
Approximated: the data pipeline is bert_jax's (FULL-SENTENCES packing, dynamic masking), not ELECTRA's
TFRecords; sampling draws at temperature 1 with the original token allowed (the paper's defaults).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402  (configs/ is not a package; configs are plain files)

from bert_jax.config_args import Arg, parse  # noqa: E402

SIZES = {  # layers, hidden, heads, embedding, generator divisor, lr, batch, steps, seq, mask rate
    "small": (12, 256, 4, 128, 4, 5e-4, 128, 1_000_000, 128, 0.15),
    "base": (12, 768, 12, 768, 3, 2e-4, 256, 766_000, 512, 0.15),
    "large": (24, 1024, 16, 1024, 4, 2e-4, 2048, 400_000, 512, 0.25),
}

ARGS = {
    "size": Arg(str, "small", tuple(SIZES), "discriminator size (the generator follows)"),
    "runlocal": Arg(bool, False, None, "shrink to a CPU-sized run"),
}


def get_config(arg: str = ""):
    args = parse(arg, ARGS, __file__)
    layers, hidden, heads, embedding, divisor, lr, batch, steps, seq, mask = SIZES[args["size"]]
    c = pretrain.base_config()
    c.objective = "electra"
    c.model = pretrain.model_config("base")
    c.model.update(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                   intermediate_size=4 * hidden)
    c.model.embedding_size = embedding
    c.electra.update(generator_size_divisor=divisor, rtd_weight=50.0)
    c.data.update(seq_len=seq, masked_lm_prob=mask, max_predictions=max(1, round(seq * mask + 0.5)),
                  global_batch_size=batch, mask_token_fraction=0.85, random_token_fraction=0.0)
    c.optim.update(optimizer="adamw", learning_rate=lr, warmup_steps=10_000, total_steps=steps, weight_decay=0.01,
                   b1=0.9, b2=0.999, eps=1e-6)
    if args["runlocal"]:
        pretrain.runlocal(c)
        c.model.embedding_size = 64  # ELECTRA-Small's embedding / hidden ratio on the tiny model
        c.data.max_predictions = max(1, round(c.data.seq_len * mask + 0.5))
        c.electra.generator_size_divisor = 4
    return c
