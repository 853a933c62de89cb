"""ModernBERT (Warner et al. 2024, "Smarter, Better, Faster, Longer: A Modern Bidirectional Encoder for
Fast, Memory Efficient, and Long Context Finetuning and Inference", arXiv 2412.13663) as switches on
the one encoder.

Usage:
  python -m bert_jax.main --config=configs/modernbert.py:size=base --workdir=DIR
  python -m bert_jax.main --config=configs/modernbert.py:runlocal --workdir=DIR   # a CPU-sized run
Arguments: size in base / large; runlocal.

The published choices (paper; transformers' ModernBertConfig holds the released architecture) and how
they are set here:
  * model: base 22 layers, hidden 768, 12 heads, GeGLU width 1152 (149M parameters); large 28 layers,
    1024, 16 heads, 2624 (395M); vocab 50368 (a BPE tokenizer derived from OLMo's).
  * pre-norm with a final norm and an embedding norm; LayerNorm without bias, eps 1e-5 ->
    norm_position "pre", norm_bias False, layer_norm_eps 1e-5.
  * no biases in the linear layers (the MLM decoder keeps its bias) -> attention_bias / mlp_bias False.
  * GeGLU MLP -> mlp_type "geglu", hidden_act "gelu".
  * rotary positions, theta 160,000 in the global layers and 10,000 in the local ones (the released
    model's; the paper trains at 1024 tokens first and raises the global theta for its long-context
    phase) -> position_embedding_type "rotary", rope_theta 160000, local_rope_theta 10000.
  * alternating attention: every third layer (0, 3, 6, ...) global, the others a 128-token sliding window
    -> global_attn_every_n_layers 3, local_attention_window 128.
  * no token types; no dropout in pretraining -> type_vocab_size 0, dropouts 0.
  * MLM only (no NSP), masking rate 30% -> objective "mlm", data.masked_lm_prob 0.3.
  * 2T tokens: 1.7T at sequence length 1024, then a long-context phase at 8192 (250B tokens + a 50B
    decay); unpadding and sequence packing.
  * StableAdamW, betas (0.9, 0.98), eps 1e-6, decoupled weight decay 1e-5; lr 8e-4 (base) / 5e-4
    (large); trapezoidal (warmup-stable-decay) schedule: warmup over 3B (base) / 2B (large) tokens,
    constant, then a 1-sqrt decay; batch-size warmup from 768 to 4608 sequences over 50B tokens (base),
    448 to 4928 over 10B tokens (large).
Reported: GLUE (dev) average 88.4 (base) and 90.4 (large).

Approximated here, and why:
  * one phase: the 1.7T-token phase at 1024 tokens (optim.total_steps data batches of the ramp's first
    batch), with its trapezoid ending in the paper's 50B-token 1-sqrt decay; the long-context phase is a
    second run from this one (init_from, seq 8192), not part of this config.
  * StableAdamW is AdamW with Adafactor-style per-tensor update clipping; here it is AdamW with global
    gradient-norm clipping at 1.0 standing in for that clipping.
  * weight decay: the decoupled 1e-5 (`wd * lr_t / lr_peak * param`) is optax's `lr_t * wd * param`
    with wd = 1e-5 / lr_peak; biases and norms are excluded (they have no decay in the paper either).
  * token counts become steps: the data batch is fixed (the ramp accumulates it), so tokens are data
    steps: warmup, decay and ramp are set in data steps and the schedule counts data steps
    (schedule_counts "data_steps"), each optimizer update taking the lr of the data step it starts at.
  * unpadding and packing: padded rows with attention masks (same values, more FLOPs) unless the data
    pipeline packs; the vocab is WordPiece trained on the corpus (data.vocab_size 50368).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402  (configs/ is not a package; configs are plain files)

from bert_jax.config_args import Arg, parse  # noqa: E402

# size: (layers, hidden, heads, GeGLU width, peak lr, ramp from / to sequences, tokens: warmup, batch ramp)
SIZES = {"base": (22, 768, 12, 1152, 8e-4, 768, 4608, 3e9, 50e9),
         "large": (28, 1024, 16, 2624, 5e-4, 448, 4928, 2e9, 10e9)}
ARGS = {
    "size": Arg(str, "base", tuple(SIZES), "model size"),
    "runlocal": Arg(bool, False, None, "shrink to a CPU-sized run"),
}

MODEL = dict(model_type="modernbert", norm_position="pre", norm_type="layernorm", layer_norm_eps=1e-5,
             norm_bias=False, attention_bias=False, mlp_bias=False, decoder_bias=True, mlp_type="geglu",
             hidden_act="gelu", embedding_norm=True, type_vocab_size=0, tie_word_embeddings=True,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, position_embedding_type="rotary",
             rope_theta=160_000.0, local_rope_theta=10_000.0, global_attn_every_n_layers=3,
             local_attention_window=128, max_position_embeddings=8192)
SEQ_LEN, MASKING_RATE, PHASE_TOKENS, DECAY_TOKENS = 1024, 0.3, 1.7e12, 50e9


def get_config(arg: str = ""):
    args = parse(arg, ARGS, __file__)
    layers, hidden, heads, width, lr, ramp_from, ramp_to, warmup_tokens, ramp_tokens = SIZES[args["size"]]
    c = pretrain.base_config()
    c.objective = "mlm"
    c.model.update(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=width)
    c.model.update(MODEL)
    c.data.update(seq_len=SEQ_LEN, masked_lm_prob=MASKING_RATE, max_predictions=round(SEQ_LEN * MASKING_RATE + 0.5),
                  global_batch_size=ramp_from, vocab_size=50368)
    batch_tokens = ramp_from * SEQ_LEN
    steps = round(PHASE_TOKENS / batch_tokens)  # data batches of the ramp's first size
    # The ramp's target is a whole number of data batches: 6 x 768 = 4608 (base), 11 x 448 = 4928 (large).
    c.optim.update(optimizer="adamw", learning_rate=lr, b1=0.9, b2=0.98, eps=1e-6, weight_decay=1e-5 / lr,
                   grad_clip_norm=1.0, schedule="trapezoidal", decay_shape="1-sqrt",
                   decay_fraction=DECAY_TOKENS / PHASE_TOKENS, warmup_steps=round(warmup_tokens / batch_tokens),
                   warmup_fraction=-1.0, end_learning_rate=0.0, total_steps=steps, batch_ramp_from=1,
                   batch_ramp_to=ramp_to // ramp_from, batch_ramp_fraction=ramp_tokens / PHASE_TOKENS,
                   schedule_counts="data_steps")
    if args["runlocal"]:
        runlocal(c)
    return c


def runlocal(c):
    """pretrain.runlocal's CPU size with the recipe's shape: GeGLU 1.5x hidden, 30% masking, a local
    window (32) shorter than the sequences (64) so the alternation matters, the trapezoid with a 1-sqrt
    decay over the last 20% and a ramp of 1 -> 3 batches per update over the first 20%."""
    pretrain.runlocal(c)
    c.model.intermediate_size = c.model.hidden_size * 3 // 2
    if "local_attention_window" in c.model:
        c.model.local_attention_window = 32
    c.data.max_predictions = round(c.data.seq_len * MASKING_RATE + 0.5)
    c.optim.update(warmup_steps=10, decay_fraction=0.2, batch_ramp_to=3, batch_ramp_fraction=0.2)
