"""Cramming (Geiping & Goldstein 2022, "Cramming: Training a Language Model on a Single GPU in One
Day", arXiv 2212.14034, ICML 2023): "crammed BERT" as switches on the one encoder.

Usage:
  python -m bert_jax.main --config=configs/cramming.py --workdir=DIR            # the published recipe
  python -m bert_jax.main --config=configs/cramming.py:runlocal --workdir=DIR   # a CPU-sized run
  python -m bert_jax.main --config=configs/cramming.py:steps=200000 --workdir=DIR --config.data.source=...
Arguments: steps (data batches of 128 sequences; default 900000, the recipe's cap); runlocal.

The paper's published choices (final recipe: architecture `crammed-bert`, training `bert-o4` in
github.com/JonasGeiping/cramming) and how they are set here:
  * budget: 24 hours of one GPU (RTX 2080 Ti / A4000 / A6000), trained from scratch, MLM only (no
    NSP) -> objective "mlm". The schedule below is laid over a step count instead of wall-clock time.
  * model: 16 layers, hidden 768, 12 heads, sequence length 128, WordPiece vocab 32768 ->
    num_hidden_layers 16, ... (the vocab is trained on the corpus with data.vocab_size 32768).
  * pre-LN with a final LayerNorm (eps 1e-12) -> norm_position "pre".
  * gated GELU MLP: a 768 -> 3072 dense split into value and gate halves of 1536, then 1536 -> 768 ->
    mlp_type "geglu", intermediate_size 1536 (the same parameters and FLOPs).
  * no biases in any dense layer (QKV, attention output, MLP) and no decoder bias; LayerNorms keep theirs
    -> attention_bias / mlp_bias / decoder_bias False.
  * embedding LayerNorm kept, no token-type embeddings, tied input/output embeddings ->
    embedding_norm True, type_vocab_size 0, tie_word_embeddings True.
  * no dropout in pretraining -> hidden_dropout_prob = attention_probs_dropout_prob = 0.
  * sparse MLM prediction (only masked positions reach the decoder): what pretraining does here always.
  * masking rate 25% with BERT's 80/10/10 rule -> data.masked_lm_prob 0.25 (max_predictions 33 of 128).
  * AdamW, peak lr 1e-3, betas (0.9, 0.98), eps 1e-12, weight decay 0.01 (not on biases and norms),
    gradient clipping at global norm 0.5 -> optim.*.
  * schedule "budget-triangle2" (one-cycle): from 25% of the peak at the start, linearly up to the peak
    at 75% of the budget, then linearly down to 0 -> schedule "one_cycle", initial_lr_fraction 0.25,
    peak_fraction 0.75, no warmup; laid over the data steps (schedule_counts "data_steps": each data
    step costs the same time, as the paper's wall-clock budget), not over the ramp's optimizer updates.
  * batch-size ramp: micro-batches of 128 sequences accumulated into a batch that grows linearly and
    reaches 8192 sequences (64 micro-batches) at 60% of the budget -> data.global_batch_size 128,
    optim.batch_ramp_from 1, batch_ramp_to 64, batch_ramp_fraction 0.6.
Reported (as the paper states; not re-measured here): a crammed BERT reaches a GLUE-dev average a few
points below a fully trained BERT-base (about 78-79 against about 81 under the paper's own fine-tuning
protocol), at a small fraction of its compute.

Approximated here, and why:
  * positions: the paper uses scaled sinusoidal position embeddings; no such switch exists, so learned
    absolute positions (BERT's) are used.
  * the MLM head: the paper drops the head's dense transform (its decoder reads the last norm's output);
    the head here keeps BERT's transform (dense + GELU + LayerNorm), a few hundred thousand parameters.
  * budget in steps, not hours: Cramming's schedules and ramp read the wall clock; here both run over
    data steps, which cost equal time. Set `steps` to what your budget trains.
  * data: the paper's filtered C4 / bookcorpus-wikipedia subsets are not here; the default source is the
    embedded corpus (data.source), with the vocab trained on it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain  # noqa: E402  (configs/ is not a package; configs are plain files)

from bert_jax.config_args import Arg, parse  # noqa: E402

ARGS = {
    "steps": Arg(int, 900_000, None, "data batches (of data.global_batch_size sequences) to train"),
    "runlocal": Arg(bool, False, None, "shrink to a CPU-sized run"),
}

# The published switches, by BertConfig field name.
MODEL = dict(
    num_hidden_layers=16, hidden_size=768, num_attention_heads=12, intermediate_size=1536, hidden_act="gelu",
    mlp_type="geglu", norm_position="pre", norm_type="layernorm", layer_norm_eps=1e-12, attention_bias=False,
    mlp_bias=False, norm_bias=True, decoder_bias=False, embedding_norm=True, type_vocab_size=0,
    tie_word_embeddings=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    position_embedding_type="absolute", max_position_embeddings=128)
SEQ_LEN, MICRO_BATCH, FINAL_ACCUMULATION, MASKING_RATE = 128, 128, 64, 0.25
OPTIM = dict(optimizer="adamw", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-12, weight_decay=0.01, grad_clip_norm=0.5,
             schedule="one_cycle", peak_fraction=0.75, initial_lr_fraction=0.25, end_learning_rate=0.0,
             warmup_steps=0, warmup_fraction=-1.0, batch_ramp_from=1, batch_ramp_to=FINAL_ACCUMULATION,
             batch_ramp_fraction=0.6, schedule_counts="data_steps")


def max_predictions(seq_len: int, rate: float) -> int:
    """Masked positions per sequence the data may hold (rate of the sequence, rounded up, + 1)."""
    return max(1, round(seq_len * rate + 0.5))


def get_config(arg: str = ""):
    args = parse(arg, ARGS, __file__)
    c = pretrain.base_config()
    c.objective = "mlm"
    c.model.update(MODEL)
    c.data.update(seq_len=SEQ_LEN, masked_lm_prob=MASKING_RATE, max_predictions=max_predictions(SEQ_LEN, MASKING_RATE),
                  global_batch_size=MICRO_BATCH, vocab_size=32768)
    c.optim.update(OPTIM)
    c.optim.total_steps = args["steps"]
    if args["runlocal"]:
        runlocal(c)
    return c


def runlocal(c):
    """pretrain.runlocal's CPU size, keeping the recipe's shape: the gated MLP 2x hidden wide, 25%
    masking, the one-cycle without warmup and a ramp of 1 -> 4 batches per update."""
    pretrain.runlocal(c)
    c.model.intermediate_size = 2 * c.model.hidden_size
    c.data.max_predictions = max_predictions(c.data.seq_len, MASKING_RATE)
    c.optim.update(warmup_steps=0, batch_ramp_to=4)
