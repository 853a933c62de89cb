"""Dot-product attention kernels behind one signature, selected by `BertConfig.attention_impl`.

Every kernel takes query [B, Q, N, D], key/value [B, K, N, D] and returns the context
[B, Q, N, D] (and, from `xla` only, the probabilities [B, N, Q, K]). Masks are boolean (True =
attend) so no additive -1e10/finfo bias can overflow in fp16/bf16; the softmax runs in float32.

`xla` is the reference: it materialises the probabilities, so it serves output_attentions,
head_mask and attention dropout. The fused kernels are used only where they compute the same thing;
otherwise `select_kernel` falls back to `xla` once-logged, or raises if the user asked for a kernel
by name that cannot do the call.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """What a call needs from a kernel; used to choose one."""

    needs_probs: bool = False  # output_attentions
    has_head_mask: bool = False
    dropout: bool = False  # attention dropout active (training with p > 0)
    has_bias: bool = False  # additive score bias (relative positions)


def xla_attention(query: Array, key: Array, value: Array, *, mask: Optional[Array] = None,
                  bias: Optional[Array] = None, head_mask: Optional[Array] = None, scale: Optional[float] = None,
                  dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None,
                  return_probs: bool = False) -> Tuple[Array, Optional[Array]]:
    """Reference attention: einsum scores, float32 softmax, per-element dropout on probabilities.

    Args:
      query: [B, Q, N, D]; key, value: [B, K, N, D].
      mask: boolean, broadcastable to [B, N, Q, K]; True where a query may attend to a key.
      bias: float, broadcastable to [B, N, Q, K], added to the scaled scores.
      head_mask: broadcastable to [B, N, Q, K] (usually [1, N, 1, 1]); multiplies the probabilities
        after dropout, as transformers does.
      scale: score scale, default 1/sqrt(D).
      dropout_rate / dropout_rng: dropout on the probabilities; rng None means no dropout.
    Returns:
      (context [B, Q, N, D] in query.dtype, probabilities [B, N, Q, K] float32 or None).
    """
    dtype = query.dtype
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("bqnd,bknd->bnqk", query, key, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    if head_mask is not None:
        probs = probs * head_mask.astype(jnp.float32)
    context = jnp.einsum("bnqk,bknd->bqnd", probs.astype(dtype), value)
    return context, (probs if return_probs else None)


def dot_product_attention(query: Array, key: Array, value: Array, *, mask: Optional[Array] = None,
                          bias: Optional[Array] = None, scale: Optional[float] = None,
                          implementation: Optional[str] = "xla", **unused) -> Tuple[Array, None]:
    """`jax.nn.dot_product_attention` (XLA or cuDNN); no probabilities, dropout or head mask."""
    del unused
    if mask is not None:
        mask = jnp.broadcast_to(mask, mask.shape[:1] + (query.shape[2],) + mask.shape[2:]) if mask.shape[1] == 1 \
            else mask
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                       implementation=implementation)
    return out, None


KERNELS: Dict[str, Callable[..., Tuple[Array, Optional[Array]]]] = {
    "xla": xla_attention,
    "dot_product": functools.partial(dot_product_attention, implementation="xla"),
    "cudnn": functools.partial(dot_product_attention, implementation="cudnn"),
}

# What each fused kernel cannot do; anything listed forces the `xla` kernel.
_UNSUPPORTED = {
    "dot_product": ("needs_probs", "has_head_mask", "dropout"),
    "cudnn": ("needs_probs", "has_head_mask", "dropout", "has_bias"),
}


@functools.lru_cache(maxsize=None)
def _log_fallback_once(requested: str, reason: str) -> None:
    logger.warning("attention_impl=%r cannot serve this call (%s); using 'xla'", requested, reason)


def select_kernel(requested: str, call: AttentionCall) -> Callable[..., Tuple[Array, Optional[Array]]]:
    """Returns the kernel for `requested` (a config name) and this call's needs."""
    if requested == "auto":
        requested = "cudnn" if jax.default_backend() == "gpu" else "dot_product"
        blockers = [f for f in _UNSUPPORTED[requested] if getattr(call, f)]
        if blockers:
            return xla_attention
        return KERNELS[requested]
    if requested not in KERNELS:
        raise NotImplementedError(f"attention_impl={requested!r} is not available in this build; "
                                  f"available: {sorted(KERNELS) + ['auto']}")
    blockers = [f for f in _UNSUPPORTED.get(requested, ()) if getattr(call, f)]
    if blockers:
        _log_fallback_once(requested, ", ".join(blockers))
        return xla_attention
    if requested == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError("attention_impl='cudnn' needs a GPU backend; this process runs on "
                         f"{jax.default_backend()!r}")
    return KERNELS[requested]
