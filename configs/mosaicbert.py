"""MosaicBERT (Portes et al. 2023, "MosaicBERT: A Bidirectional Encoder Optimized for Fast
Pretraining", NeurIPS 2023, arXiv 2312.17482) as switches on the one encoder.

Usage:
  python -m bert_jax.main --config=configs/mosaicbert.py:size=base --workdir=DIR
  python -m bert_jax.main --config=configs/mosaicbert.py:runlocal --workdir=DIR   # a CPU-sized run
Arguments: size in base / large; runlocal.

The published choices (paper and github.com/mosaicml/examples, benchmarks/bert/yamls/main/
mosaic-bert-base-uncased.yaml) and how they are set here:
  * model: BERT-base's shape (12 layers, hidden 768, 12 heads; large 24 / 1024 / 16), post-LN and
    biases kept as in BERT, vocab 30528 (bert-base-uncased's 30522 padded to a multiple of 64).
  * ALiBi attention biases instead of learned position embeddings -> position_embedding_type "alibi".
  * gated linear unit MLP (GeGLU) with a 3072-wide gate and value (768 -> 2 x 3072 -> 768) ->
    mlp_type "geglu", intermediate_size 3072.
  * attention dropout 0 (their FlashAttention kernel needs it), hidden dropout 0.1.
  * MLM only, no NSP; masking rate 30% (evaluated at 15%) -> objective "mlm", data.masked_lm_prob 0.3.
  * sequence length 128, batch 4096 sequences, 70,000 steps (286,720,000 samples) of C4.
  * decoupled AdamW, lr 5e-4, betas (0.9, 0.98), eps 1e-6, decoupled weight decay 1e-5; linear warmup
    over 6% of training, then linear decay to 0.02 x the peak (1e-5); no gradient clipping.
  * bf16 mixed precision, unpadding (no compute on padding), FlashAttention, fused LayerNorm.
Reported: MosaicBERT-Base reaches BERT-base's average GLUE (dev) score, 79.6, in 1.13 hours on 8
A100-80GB GPUs (about $20).

Approximated here, and why:
  * weight decay: Composer's DecoupledAdamW subtracts `wd * (lr_t / lr_peak) * param`; optax's AdamW
    subtracts `lr_t * wd * param`, so wd = 1e-5 / 5e-4 = 0.02 gives the same decay per step. Composer
    decays every parameter; here biases and LayerNorm parameters are excluded (BERT's rule).
  * unpadding: here padded rows with an attention mask (the same values, more FLOPs); packing and
    unpadded kernels are switches of the data pipeline / attention kernels, not of this config.
  * precision: fp32 by default (the CPU path); add --config.model.dtype=bfloat16 on accelerators.
  * vocab: the WordPiece vocab is trained on the corpus (data.vocab_size 30528) unless data.vocab names
    bert-base-uncased's; the data is the embedded corpus unless data.source names other text.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402  (configs/ is not a package; configs are plain files)

from bert_jax.config_args import Arg, parse  # noqa: E402

SIZES = {"base": (12, 768, 12), "large": (24, 1024, 16)}  # layers, hidden, heads; GLU width 4 x hidden
ARGS = {
    "size": Arg(str, "base", tuple(SIZES), "model size"),
    "runlocal": Arg(bool, False, None, "shrink to a CPU-sized run"),
}

MODEL = dict(position_embedding_type="alibi", mlp_type="geglu", hidden_act="gelu", norm_position="post",
             attention_bias=True, mlp_bias=True, norm_bias=True, decoder_bias=True, layer_norm_eps=1e-12,
             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, type_vocab_size=2)
SEQ_LEN, BATCH, STEPS, MASKING_RATE, PEAK_LR = 128, 4096, 70_000, 0.3, 5e-4
OPTIM = dict(optimizer="adamw", learning_rate=PEAK_LR, b1=0.9, b2=0.98, eps=1e-6,
             weight_decay=1e-5 / PEAK_LR,  # Composer's decoupled 1e-5 (see the docstring)
             grad_clip_norm=0.0, schedule="linear", warmup_fraction=0.06, end_learning_rate=0.02 * PEAK_LR,
             total_steps=STEPS)


def get_config(arg: str = ""):
    args = parse(arg, ARGS, __file__)
    layers, hidden, heads = SIZES[args["size"]]
    c = pretrain.base_config()
    c.objective = "mlm"
    c.model.update(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                   intermediate_size=4 * hidden)
    c.model.update(MODEL)
    c.data.update(seq_len=SEQ_LEN, masked_lm_prob=MASKING_RATE, max_predictions=round(SEQ_LEN * MASKING_RATE + 0.5),
                  global_batch_size=BATCH, vocab_size=30528)
    c.optim.update(OPTIM)
    if args["runlocal"]:
        pretrain.runlocal(c)
        c.data.max_predictions = round(c.data.seq_len * MASKING_RATE + 0.5)
        c.optim.update(warmup_fraction=0.06)  # runlocal sets warmup_steps; keep the recipe's 6%
    return c
