"""The default job: a tiny BERT learns the embedded corpus, then fills masks.

Trains a WordPiece vocab and a small `BertForMaskedLM` (sparse MLM head, dynamic masking, AdamW)
on CPU in about a minute, prints fill-mask predictions, and writes a Hugging Face checkpoint plus
the tokenizer to the workdir, re-reading it to check the round trip.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.config import BertConfig
from bert_jax.data import demo_corpus
from bert_jax.data.pretraining import DynamicMasker
from bert_jax.hf import load_hf_checkpoint, save_hf_checkpoint
from bert_jax.modeling import BertForMaskedLM, init_params
from bert_jax.tokenization import train_wordpiece

DEMO_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PROMPTS = ["the cat sleeps on the warm [MASK] every morning.", "the dog runs in the green [MASK].",
           "the [MASK] is blue on sunday."]


def run(workdir: str, steps: int = 600, batch_size: int = 32, seq_len: int = 24, seed: int = 0,
        log=print) -> dict:
    """Returns {'final_loss', 'accuracy', 'predictions'}; writes `workdir/hf_checkpoint`."""
    os.makedirs(workdir, exist_ok=True)
    tokenizer = train_wordpiece(demo_corpus.sentences(), vocab_size=200, min_frequency=1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, **DEMO_CONFIG)
    model = BertForMaskedLM(config)
    encoded = tokenizer(demo_corpus.sentences(), padding="max_length", max_length=seq_len, truncation=True)
    masker = DynamicMasker.from_tokenizer(tokenizer, masked_lm_prob=0.15, max_predictions_per_seq=4, seed=seed)

    def batch_at(step):
        rows = np.random.default_rng([seed, step]).integers(0, len(encoded["input_ids"]), batch_size)
        feats = [masker({k: encoded[k][r] for k in ("input_ids", "attention_mask")}, index=int(r), epoch=step)
                 for r in rows]
        out = {k: np.stack([f[k] for f in feats]) for k in feats[0]}
        out["attention_mask"] = encoded["attention_mask"][rows]
        return out

    params = init_params(model, jax.random.PRNGKey(seed))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.warmup_cosine_decay_schedule(
        0.0, 5e-3, steps // 10, steps), weight_decay=0.01))
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, batch):
        def loss_fn(p):
            labels = jnp.where(batch["masked_lm_weights"] > 0, batch["masked_lm_ids"], -100)
            out = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                              masked_positions=batch["masked_lm_positions"], labels=labels)
            accuracy = jnp.sum((out.logits.argmax(-1) == labels) * batch["masked_lm_weights"]) / jnp.maximum(
                batch["masked_lm_weights"].sum(), 1)
            return out.loss, accuracy
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, accuracy

    start, recent = time.time(), []
    for step in range(steps):
        params, opt_state, loss, accuracy = train_step(params, opt_state, batch_at(step))
        recent.append((float(loss), float(accuracy)))
        if (step + 1) % max(1, steps // 6) == 0 or step == steps - 1:
            window = np.mean(recent[-20:], axis=0)
            log(f"step {step + 1:4d}/{steps}  mlm loss {window[0]:.3f}  mlm accuracy {window[1]:.2f}  "
                f"({(step + 1) * batch_size / (time.time() - start):.0f} seq/s)")

    predictions = fill_mask(model, params, tokenizer, PROMPTS)
    for prompt, top in zip(PROMPTS, predictions):
        log(f"{prompt!r:55} -> {top}")

    ckpt = os.path.join(workdir, "hf_checkpoint")
    save_hf_checkpoint(ckpt, config, params, BertForMaskedLM)
    tokenizer.save(ckpt)
    _, reloaded = load_hf_checkpoint(ckpt, BertForMaskedLM)
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, reloaded))
    log(f"wrote {ckpt} (transformers.BertForMaskedLM.from_pretrained reads it); reloaded identical: {same}")
    return {"final_loss": float(np.mean([l for l, _ in recent[-20:]])),
            "accuracy": float(np.mean([a for _, a in recent[-20:]])), "predictions": predictions,
            "roundtrip_identical": same}


def fill_mask(model, params, tokenizer, texts, top_k: int = 3) -> list:
    """Top-k tokens for the first [MASK] of each text."""
    enc = tokenizer(texts, padding=True)
    logits = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"]).logits
    result = []
    for row, ids in enumerate(enc["input_ids"]):
        position = int(np.argmax(ids == tokenizer.mask_token_id))
        best = np.argsort(-np.asarray(logits[row, position]))[:top_k]
        result.append(tokenizer.convert_ids_to_tokens([int(i) for i in best]))
    return result
