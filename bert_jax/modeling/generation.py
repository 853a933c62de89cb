"""Autoregressive generation for `BertForCausalLM` with the KV cache: greedy or sampled
(temperature, top-k, top-p), compiled as one `jax.jit` program (prefill + `lax.scan` over steps)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from bert_jax.modeling import init_cache
from bert_jax.modeling.heads import BertForCausalLM


def generate(model: BertForCausalLM, params, input_ids: jax.Array, max_new_tokens: int, *,
             attention_mask: Optional[jax.Array] = None, encoder_hidden_states: Optional[jax.Array] = None,
             encoder_attention_mask: Optional[jax.Array] = None, do_sample: bool = False, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, rng: Optional[jax.Array] = None,
             eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None) -> jax.Array:
    """Continues `input_ids` [B, P] by `max_new_tokens` tokens; returns [B, P + max_new_tokens].

    Positions count from 0 at the first prompt token, as transformers' BERT does, so prompts
    should not be left-padded. After `eos_token_id` a row is filled with `pad_token_id`.
    """
    cfg = model.config
    if not isinstance(model, BertForCausalLM) or not cfg.is_decoder:
        raise ValueError("generate needs a BertForCausalLM with config.is_decoder=True")
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, prompt_len >= 1], got {input_ids.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = input_ids.shape[1] + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    if do_sample and rng is None:
        raise ValueError("do_sample=True needs an rng")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    from bert_jax.modeling.inputs import validate_inputs
    validate_inputs(cfg, input_ids, attention_mask, None, None, None, encoder_hidden_states, encoder_attention_mask)
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _generate(model, params, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, rng,
                     max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=float(temperature),
                     top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=0 if pad is None else pad)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                                             "eos_token_id", "pad_token_id"))
def _generate(model, params, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask, rng, *,
              max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id):
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    prompt_mask = jnp.ones((batch, prompt_len), jnp.int32) if attention_mask is None else attention_mask
    full_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((batch, max_new_tokens), jnp.int32)], 1)
    cross = dict(encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)
    cache = init_cache(model, params, batch, total, encoder_hidden_states)

    def step(cache, ids):
        # The mask spans the whole cache; the causal mask hides positions not yet written.
        out, variables = model.apply({"params": params, "cache": cache}, ids, attention_mask=full_mask,
                                     mutable=["cache"], **cross)
        return variables["cache"], out.logits[:, -1].astype(jnp.float32)

    def choose(logits, key):
        if not do_sample:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = logits / temperature
        if top_k is not None:
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if top_p is not None:
            sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
            cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
            # keep the smallest set whose mass reaches top_p (always at least the best token)
            cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
            cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
            logits = jnp.where(logits < cutoff, -jnp.inf, logits)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    cache, logits = step(cache, input_ids)
    keys = jax.random.split(rng, max_new_tokens)
    first = choose(logits, keys[0])
    done = jnp.zeros((batch,), bool) if eos_token_id is None else first == eos_token_id

    def body(carry, key):
        cache, token, done = carry
        cache, logits = step(cache, token[:, None])
        nxt = choose(logits, key)
        nxt = jnp.where(done, pad_token_id, nxt)
        if eos_token_id is not None:
            done = done | (nxt == eos_token_id)
        return (cache, nxt, done), nxt

    _, rest = jax.lax.scan(body, (cache, first, done), keys[1:])
    return jnp.concatenate([input_ids.astype(jnp.int32), first[:, None], rest.T], axis=1)
