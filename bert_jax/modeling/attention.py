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

import flax.struct
import jax
import jax.numpy as jnp

from bert_jax.modeling import flash

logger = logging.getLogger(__name__)

Array = jax.Array


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may see, in the forms the kernels take.

    `dense`: bool, broadcastable to [B, N, Q, K] (True = attend); what `xla` and
    `jax.nn.dot_product_attention` use. None means no masking.
    `segment_ids`: (q [B, Q], kv [B, K]) int ids; a query sees the keys with its id. Set by the
    model for padding masks, packed rows and the plain causal case, so flash kernels need no dense
    mask; None when only a dense mask can express the call (3-D user masks, cache decoding).
    `causal`: the dense mask includes a causal mask (flash kernels apply theirs).
    """

    dense: Optional[Array] = None
    segment_ids: Optional[Tuple[Array, Array]] = None
    causal: bool = flax.struct.field(pytree_node=False, default=False)


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """What a call needs from a kernel; used to choose one."""

    needs_probs: bool = False  # output_attentions
    has_head_mask: bool = False
    dropout: bool = False  # attention dropout active (training with p > 0)
    has_bias: bool = False  # additive score bias (relative positions)
    dense_mask_only: bool = False  # a mask exists but not as segment ids
    q_len: int = 0
    k_len: int = 0


def xla_attention(query: Array, key: Array, value: Array, *, mask: Optional[Array] = None,
                  bias: Optional[Array] = None, head_mask: Optional[Array] = None, scale: Optional[float] = None,
                  dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None,
                  return_probs: bool = False, dropout_mask: str = "bernoulli",
                  **unused) -> Tuple[Array, Optional[Array]]:
    """Reference attention: einsum scores, float32 softmax, per-element dropout on probabilities.

    Args:
      query: [B, Q, N, D]; key, value: [B, K, N, D].
      mask: boolean, broadcastable to [B, N, Q, K]; True where a query may attend to a key.
      bias: float, broadcastable to [B, N, Q, K], added to the scaled scores.
      head_mask: broadcastable to [B, N, Q, K] (usually [1, N, 1, 1]); multiplies the probabilities
        after dropout, as transformers does.
      scale: score scale, default 1/sqrt(D).
      dropout_rate / dropout_rng: dropout on the probabilities; rng None means no dropout.
      dropout_mask: "bernoulli" (`jax.random.bernoulli`) or "counter" (`flash.dropout_keep`, the
        mask the `flash` kernel draws in-kernel from the same rng, so the two agree element by element).
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
        if dropout_mask == "counter":
            keep = flash.dropout_keep_mask(flash.dropout_seed(dropout_rng), probs.shape, dropout_rate)
        else:
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
    if mask is not None and mask.shape[1] == 1:
        mask = jnp.broadcast_to(mask, mask.shape[:1] + (query.shape[2],) + mask.shape[2:])
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                       implementation=implementation)
    return out, None


def _block(length: int, preferred: int = 128) -> int:
    return min(preferred, length)


def pallas_gpu_attention(query: Array, key: Array, value: Array, *, segment_ids=None, causal: bool = False,
                         scale: Optional[float] = None, **unused) -> Tuple[Array, None]:
    """Pallas/Triton flash attention (`jax.experimental.pallas.ops.gpu.attention.mha`); interpreted
    off-GPU. One segment-id array serves queries and keys, so Q == K (self-attention)."""
    del unused
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    q_len, k_len = query.shape[1], key.shape[1]
    bq, bk = _block(q_len), _block(k_len)
    blocks = gpu_attention.BlockSizes(block_q=bq, block_k=bk, block_q_dkv=bq, block_kv_dkv=bk, block_q_dq=bq,
                                      block_kv_dq=bk)
    segments = None if segment_ids is None else segment_ids[1].astype(jnp.int32)
    out = gpu_attention.mha(query, key, value, segments, sm_scale=scale, causal=causal, block_sizes=blocks,
                            interpret=jax.default_backend() != "gpu")
    return out, None


def pallas_tpu_attention(query: Array, key: Array, value: Array, *, segment_ids=None, causal: bool = False,
                         scale: Optional[float] = None, **unused) -> Tuple[Array, None]:
    """Pallas TPU flash attention (`jax.experimental.pallas.ops.tpu.flash_attention`); interpreted
    off-TPU. Takes separate query and key segment ids."""
    if unused.get("dropout_rng") is not None and unused.get("dropout_rate", 0.0) > 0.0:
        # The library kernel has no dropout; ours draws it in-kernel (training on TPU).
        return flash.flash_kernel(query, key, value, segment_ids=segment_ids, causal=causal, scale=scale, **unused)
    del unused
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    bq, bk = _block(query.shape[1]), _block(key.shape[1])
    blocks = tpu_flash.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1, block_q_major_dkv=bq,
                                  block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq, block_k_major_dq=bk,
                                  block_k_dq=bk, block_q_dq=bq)
    segments = None
    if segment_ids is not None:
        segments = tpu_flash.SegmentIds(q=segment_ids[0].astype(jnp.int32), kv=segment_ids[1].astype(jnp.int32))
    to_heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # [B, L, N, D] -> [B, N, L, D]
    run = functools.partial(tpu_flash.flash_attention, to_heads_major(query), to_heads_major(key),
                            to_heads_major(value), segment_ids=segments, causal=causal, sm_scale=scale,
                            block_sizes=blocks)
    if jax.default_backend() == "tpu":
        out = run()
    else:
        with pltpu.force_tpu_interpret_mode():
            out = run()
    return jnp.swapaxes(out, 1, 2), None


KERNELS: Dict[str, Callable[..., Tuple[Array, Optional[Array]]]] = {
    "xla": xla_attention,
    "dot_product": functools.partial(dot_product_attention, implementation="xla"),
    "cudnn": functools.partial(dot_product_attention, implementation="cudnn"),
    "pallas_gpu": pallas_gpu_attention,
    "pallas_tpu": pallas_tpu_attention,
    # Our Pallas flash attention (TPU, GPU, interpret elsewhere) with in-kernel counter-based dropout.
    "flash": flash.flash_kernel,
    # The reference drawing flash's dropout mask: the same training step as `flash`, unfused.
    "xla_counter": functools.partial(xla_attention, dropout_mask="counter"),
}

_FLASH_BLOCKERS = ("needs_probs", "has_head_mask", "dropout", "has_bias", "dense_mask_only")
# What each fused kernel cannot do; anything listed forces the `xla` kernel.
_UNSUPPORTED = {
    "dot_product": ("needs_probs", "has_head_mask", "dropout"),
    "cudnn": ("needs_probs", "has_head_mask", "dropout", "has_bias"),
    "pallas_gpu": _FLASH_BLOCKERS,
    "pallas_tpu": tuple(f for f in _FLASH_BLOCKERS if f != "dropout"),  # dropout: served by `flash`
    "flash": tuple(f for f in _FLASH_BLOCKERS if f != "dropout"),
}
# The backend each kernel is compiled for; elsewhere Pallas kernels run interpreted (slow, for tests).
_NATIVE_BACKEND = {"cudnn": "gpu", "pallas_gpu": "gpu", "pallas_tpu": "tpu"}


def _blockers(name: str, call: AttentionCall) -> list:
    found = [f for f in _UNSUPPORTED.get(name, ()) if getattr(call, f)]
    if name.startswith("pallas"):
        for length in (call.q_len, call.k_len):
            # The TPU kernel tiles keys in 128-lane blocks; the GPU one takes any block <= 128.
            block = 128 if name == "pallas_tpu" else _block(length)
            if length % block:
                found.append(f"length {length} not a multiple of the block size {block}")
        if name == "pallas_gpu" and call.q_len != call.k_len:
            found.append("query and key lengths differ (cross-attention)")
    return found


@functools.lru_cache(maxsize=None)
def _log_fallback_once(requested: str, reason: str) -> None:
    logger.warning("attention_impl=%r cannot serve this call (%s); using 'xla'", requested, reason)


def select_kernel(requested: str, call: AttentionCall) -> Callable[..., Tuple[Array, Optional[Array]]]:
    """Returns the kernel for `requested` (a config name) and this call's needs.

    `auto` picks cuDNN on GPU, Pallas flash on TPU and `xla` on CPU, falling back to `xla`
    silently where the call needs what the kernel cannot do. A kernel asked for by name falls back
    with a one-time warning; cuDNN off-GPU raises (it cannot run at all there), while Pallas
    kernels run interpreted off their backend (slow, meant for tests) with a one-time warning.
    """
    backend = jax.default_backend()
    if requested == "auto":
        requested = {"gpu": "cudnn", "tpu": "pallas_tpu"}.get(backend, "xla")
        return xla_attention if _blockers(requested, call) else KERNELS[requested]
    if requested not in KERNELS:
        raise NotImplementedError(f"attention_impl={requested!r} is not available; "
                                  f"available: {sorted(KERNELS) + ['auto']}")
    blockers = _blockers(requested, call)
    if blockers:
        _log_fallback_once(requested, ", ".join(blockers))
        return xla_attention
    native = _NATIVE_BACKEND.get(requested)
    if native and backend != native:
        if requested == "cudnn":
            raise ValueError(f"attention_impl='cudnn' needs a GPU backend; this process runs on {backend!r}")
        _log_interpret_once(requested, backend)
    return KERNELS[requested]


@functools.lru_cache(maxsize=None)
def _log_interpret_once(requested: str, backend: str) -> None:
    logger.warning("attention_impl=%r runs in Pallas interpret mode on %r (correct but slow)", requested, backend)
