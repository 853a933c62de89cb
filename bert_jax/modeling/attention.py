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

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bert_jax.modeling import flash
from bert_jax.modeling.dropout import keep_mask, keep_probability

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
    dtype: str = ""  # query/key/value dtype name ("" = unknown: no dtype constraint applied)
    head_dim: int = 0  # 0 = unknown


def xla_attention(query: Array, key: Array, value: Array, *, mask: Optional[Array] = None,
                  bias: Optional[Array] = None, head_mask: Optional[Array] = None, scale: Optional[float] = None,
                  dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None,
                  return_probs: bool = False, dropout_mask: str = "bits", heads_major: Optional[bool] = None,
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
      dropout_mask: "bits" (`bert_jax.modeling.dropout.keep_mask`: 16-bit draws against an integer
        threshold, scaled by the exact keep probability) or "counter" (`flash.dropout_keep`, the
        mask the `flash` kernel draws in-kernel from the same rng, so the two agree element by element).
      heads_major: transpose the operands to heads-major explicitly before the two contractions (the
        same arithmetic); None = on CPU only (`target_platform`). XLA:CPU otherwise copies the [B, L, N, D]
        operands to heads-major inside each batched GEMM; explicit transposes ([B, N, Q, D], keys as
        [B, N, D, K]) fuse into the projections instead: BERT-base 8x128 fp32 on a 2-core Xeon, inference
        722 -> 699 ms and the training step 2856 -> 2809 ms (interleaved A/B, medians). GPU and TPU
        layout assignment already absorbs these transposes.
    Returns:
      (context [B, Q, N, D] in query.dtype, probabilities [B, N, Q, K] float32 or None).
    """
    dtype = query.dtype
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    heads_major = target_platform() == "cpu" if heads_major is None else heads_major
    if heads_major:
        scores = jnp.matmul(jnp.swapaxes(query, 1, 2), jnp.transpose(key, (0, 2, 3, 1)),
                            preferred_element_type=jnp.float32) * scale
    else:
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
            keep = keep_mask(dropout_rng, probs.shape, dropout_rate)
            dropout_rate = 1.0 - keep_probability(dropout_rate)  # the exact rate of the 16-bit threshold
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    if head_mask is not None:
        probs = probs * head_mask.astype(jnp.float32)
    if heads_major:
        context = jnp.swapaxes(jnp.matmul(probs.astype(dtype), jnp.swapaxes(value, 1, 2)), 1, 2)
    else:
        context = jnp.einsum("bnqk,bknd->bqnd", probs.astype(dtype), value)
    return context, (probs if return_probs else None)


def dot_product_attention(query: Array, key: Array, value: Array, *, mask: Optional[Array] = None,
                          bias: Optional[Array] = None, scale: Optional[float] = None,
                          implementation: Optional[str] = "xla", **unused) -> Tuple[Array, None]:
    """`jax.nn.dot_product_attention` (XLA or cuDNN); no probabilities, dropout or head mask."""
    del unused
    if mask is not None and mask.shape[1] == 1:
        mask = jnp.broadcast_to(mask, mask.shape[:1] + (query.shape[2],) + mask.shape[2:])
    if mask is not None and implementation == "cudnn" and mask.shape[2] == 1:
        # cuDNN takes the mask as a bias with the full [.., Q, K] extent (a [B, N, 1, K] padding mask
        # fails its layout check: "Bias must have same seq length as QKV").
        mask = jnp.broadcast_to(mask, mask.shape[:2] + (query.shape[1], mask.shape[3]))
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                       implementation=implementation)
    return out, None


def _block(length: int, preferred: int = 128) -> int:
    return min(preferred, length)


def target_platform() -> str:
    """The platform the current trace is compiled for: the current mesh's devices' (`jax.set_mesh`,
    as `bert_jax.sharding.activation_context` sets it: an ahead-of-time compile for TPU or GPU from
    a CPU host) where a mesh is set, else `jax.default_backend()`. CUDA/ROCm read as 'gpu'."""
    mesh = jax.sharding.get_abstract_mesh()
    platform = None if mesh.empty else getattr(getattr(mesh, "abstract_device", None), "platform", None)
    platform = platform or jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


# Logical names of the kernels' [B, L, N, D] operands (as the encoder constrains them). Only batch and
# heads may be split across devices: each kernel call needs whole sequences and whole head dims.
_KERNEL_AXES = ("batch", None, "heads", None)


def _mesh_axes(mesh, logical: Optional[str], size: int):
    """Mesh axes that `logical` maps to under the current flax rules (bert_jax.sharding.DEFAULT_RULES
    where none are set), restricted to the mesh's non-manual axes and to a prefix whose product
    divides `size` (as sharding.fit_spec does for params)."""
    if logical is None:
        return None
    rules = nn.get_logical_axis_rules()
    if not rules:
        from bert_jax.sharding import DEFAULT_RULES
        rules = DEFAULT_RULES
    axes = nn.logical_to_mesh_axes((logical,), rules)[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    manual = set(getattr(mesh, "manual_axes", ()))
    kept, product = [], 1
    for axis in axes:
        if axis not in mesh.shape or axis in manual:
            continue
        if size % (product * mesh.shape[axis]):
            break
        kept.append(axis)
        product *= mesh.shape[axis]
    return None if not kept else kept[0] if len(kept) == 1 else tuple(kept)


def shard_map_kernel(kernel: Callable[..., Array], query: Array, key: Array, value: Array,
                     *segment_ids: Array, replicated: Tuple[Array, ...] = (), with_offsets: bool = False) -> Array:
    """Runs `kernel(query, key, value, *segment_ids) -> [B, Q, N, D]` under `jax.shard_map` over the
    mesh axes that shard batch and heads (the MaxText splash/flash wrapper). Pallas (Mosaic/Triton)
    kernels cannot be partitioned by XLA: on a mesh each device runs the kernel on its own batch and
    head shard. The specs follow the logical rules, so the operands arrive already laid out as the
    encoder's `with_logical_constraint`s put them (no resharding at the boundary). Without a mesh
    (or on one device) the kernel is called directly. Segment ids are [B, L] each; `replicated`
    operands (e.g. a dropout seed) follow them, whole on every shard. With `with_offsets` the kernel
    also gets `offsets=(first batch row, first head)` of its shard, so a kernel that draws randomness
    from global indices (flash's counter-based dropout) gives every shard its part of the unsharded
    call's mask instead of repeating shard 0's."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(query, key, value, *segment_ids, *replicated, **({"offsets": (0, 0)} if with_offsets else {}))
    batch = _mesh_axes(mesh, _KERNEL_AXES[0], query.shape[0])
    heads = _mesh_axes(mesh, _KERNEL_AXES[2], query.shape[2])
    qkv, seg = P(batch, None, heads, None), P(batch, None)

    def per_shard(q, k, v, *rest):
        kwargs = {}
        if with_offsets:
            # axis_index over a tuple of axes is the shard's row-major position, as P((a, b)) lays it out.
            first = lambda axes, size: 0 if axes is None else jax.lax.axis_index(axes) * size
            kwargs["offsets"] = (first(batch, q.shape[0]), first(heads, q.shape[2]))
        return kernel(q, k, v, *rest, **kwargs)

    return jax.shard_map(per_shard, mesh=mesh,
                         in_specs=(qkv, qkv, qkv) + (seg,) * len(segment_ids) + (P(),) * len(replicated),
                         out_specs=qkv, check_vma=False)(query, key, value, *segment_ids, *replicated)


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
    interpret = target_platform() != "gpu"
    run = lambda q, k, v, *seg: gpu_attention.mha(q, k, v, seg[0] if seg else None, sm_scale=scale, causal=causal,
                                                  block_sizes=blocks, interpret=interpret)
    segments = () if segment_ids is None else (segment_ids[1].astype(jnp.int32),)
    return shard_map_kernel(run, query, key, value, *segments), None


def _under_tpu_interpret(kernel: Callable[..., Array], interpret_mode) -> Callable[..., Array]:
    """`kernel(q, k, v, *int_segment_ids)` with its forward AND backward traced under `interpret_mode()`
    (the library kernel's custom VJP traces its backward only when differentiated, i.e. outside a
    `with` around the forward call, where it would ask for a real TPU)."""
    @jax.custom_vjp
    def run(q, k, v, *seg):
        with interpret_mode():
            return kernel(q, k, v, *seg)

    def fwd(q, k, v, *seg):
        with interpret_mode():
            out, pullback = jax.vjp(lambda q, k, v: kernel(q, k, v, *seg), q, k, v)
        return out, (pullback, tuple(jnp.zeros(x.shape, jax.dtypes.float0) for x in seg))

    def bwd(residuals, grad):
        pullback, seg_zeros = residuals
        with interpret_mode():
            return tuple(pullback(grad)) + seg_zeros

    run.defvjp(fwd, bwd)
    return run


def flash_attention(query: Array, key: Array, value: Array, *, segment_ids=None, causal: bool = False,
                    scale: Optional[float] = None, dropout_rate: float = 0.0, dropout_rng: Optional[Array] = None,
                    **unused) -> Tuple[Array, None]:
    """Our Pallas flash attention (`flash.py`: TPU/Mosaic, GPU/Triton, interpreted elsewhere) with
    in-kernel counter-based attention dropout, under `shard_map_kernel` on a mesh: each shard draws its
    rows' and heads' part of the mask `xla_attention(dropout_mask="counter")` draws for the whole call."""
    del unused
    backend = target_platform()
    backend = backend if backend in ("tpu", "gpu") else "interpret"
    dropout = dropout_rng is not None and dropout_rate > 0.0
    seeds = (flash.dropout_seed(dropout_rng),) if dropout else ()
    segments = () if segment_ids is None else tuple(s.astype(jnp.int32) for s in segment_ids)

    def run(q, k, v, *rest, offsets):
        seg, seed = rest[:len(segments)], (rest[len(segments)] if dropout else None)
        return flash.flash_attention(q, k, v, segment_ids=tuple(seg) or None, causal=causal, scale=scale,
                                     dropout_rate=dropout_rate if dropout else 0.0, dropout_seed=seed,
                                     dropout_offsets=offsets, backend=backend)

    return shard_map_kernel(run, query, key, value, *segments, replicated=seeds, with_offsets=True), None


def pallas_tpu_attention(query: Array, key: Array, value: Array, *, segment_ids=None, causal: bool = False,
                         scale: Optional[float] = None, **unused) -> Tuple[Array, None]:
    """Pallas TPU flash attention (`jax.experimental.pallas.ops.tpu.flash_attention`); interpreted
    off-TPU. Takes separate query and key segment ids. The library kernel has no dropout: calls with
    attention dropout (training) go to our `flash_attention`, which draws it in-kernel."""
    if unused.get("dropout_rng") is not None and unused.get("dropout_rate", 0.0) > 0.0:
        return flash_attention(query, key, value, segment_ids=segment_ids, causal=causal, scale=scale, **unused)
    del unused
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    bq, bk = _block(query.shape[1]), _block(key.shape[1])
    blocks = tpu_flash.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1, block_q_major_dkv=bq,
                                  block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq, block_k_major_dq=bk,
                                  block_k_dq=bk, block_q_dq=bq)
    interpret = target_platform() != "tpu"

    def run(q, k, v, *seg):
        to_heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # [B, L, N, D] <-> [B, N, L, D]
        segments = tpu_flash.SegmentIds(q=seg[0], kv=seg[1]) if seg else None
        out = tpu_flash.flash_attention(to_heads_major(q), to_heads_major(k), to_heads_major(v), segment_ids=segments,
                                        causal=causal, sm_scale=scale, block_sizes=blocks)
        return to_heads_major(out)

    if interpret:
        run = _under_tpu_interpret(run, pltpu.force_tpu_interpret_mode)
    segments = () if segment_ids is None else tuple(s.astype(jnp.int32) for s in segment_ids)
    return shard_map_kernel(run, query, key, value, *segments), None


KERNELS: Dict[str, Callable[..., Tuple[Array, Optional[Array]]]] = {
    "xla": xla_attention,
    "dot_product": functools.partial(dot_product_attention, implementation="xla"),
    "cudnn": functools.partial(dot_product_attention, implementation="cudnn"),
    "pallas_gpu": pallas_gpu_attention,
    "pallas_tpu": pallas_tpu_attention,
    # Our Pallas flash attention (TPU, GPU, interpret elsewhere) with in-kernel counter-based dropout.
    "flash": flash_attention,
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


# What `auto` tries on each platform, first to last; the first kernel with no blockers serves the call,
# else `xla`. (Extend a tuple to add a kernel, e.g. a fused kernel with attention dropout.)
AUTO_CANDIDATES: Dict[str, Tuple[str, ...]] = {"gpu": ("cudnn",), "tpu": ("pallas_tpu",)}
# cuDNN's fused attention (jax.nn.dot_product_attention(implementation="cudnn")): half precision only
# (fp8 needs its own scaling arguments), head dims that are multiples of 8 up to 128 (256 on Hopper and
# later; 128 holds everywhere, and an ahead-of-time compile cannot ask the GPU).
_CUDNN_DTYPES = ("float16", "bfloat16")
_CUDNN_MAX_HEAD_DIM = 128


def _blockers(name: str, call: AttentionCall) -> list:
    """Why kernel `name` cannot serve `call` (empty when it can)."""
    found = [f for f in _UNSUPPORTED.get(name, ()) if getattr(call, f)]
    if name.startswith("pallas"):
        for length in (call.q_len, call.k_len):
            # The TPU kernel tiles keys in 128-lane blocks; the GPU one takes any block <= 128.
            block = 128 if name == "pallas_tpu" else _block(length)
            if length % block:
                found.append(f"length {length} not a multiple of the block size {block}")
        if name == "pallas_gpu" and call.q_len != call.k_len:
            found.append("query and key lengths differ (cross-attention)")
    if name == "cudnn":
        if call.dtype and call.dtype not in _CUDNN_DTYPES:
            found.append(f"dtype {call.dtype} (cuDNN fused attention takes {'/'.join(_CUDNN_DTYPES)})")
        if call.head_dim and (call.head_dim % 8 or call.head_dim > _CUDNN_MAX_HEAD_DIM):
            found.append(f"head dim {call.head_dim} (cuDNN takes multiples of 8 up to {_CUDNN_MAX_HEAD_DIM})")
    return found


@functools.lru_cache(maxsize=None)
def _log_fallback_once(requested: str, reason: str) -> None:
    logger.warning("attention_impl=%r cannot serve this call (%s); using 'xla'", requested, reason)


def select_kernel(requested: str, call: AttentionCall) -> Callable[..., Tuple[Array, Optional[Array]]]:
    """Returns the kernel for `requested` (a config name) and this call's needs.

    `auto` tries `AUTO_CANDIDATES` of the platform the trace compiles for (`target_platform`: the
    mesh's devices, so an ahead-of-time compile for TPU from a CPU host picks the TPU kernel): cuDNN
    on GPU for half precision and head dims it takes, Pallas flash on TPU, and `xla` on CPU or
    wherever the call needs what no candidate can do (silently). A kernel asked for by name falls
    back to `xla` with a one-time warning; cuDNN off-GPU raises (it cannot run at all there), while
    Pallas kernels run interpreted off their backend (slow, meant for tests) with a one-time warning.
    """
    platform = target_platform()
    if requested == "auto":
        for name in AUTO_CANDIDATES.get(platform, ()):
            if not _blockers(name, call):
                return KERNELS[name]
        return xla_attention
    if requested not in KERNELS:
        raise NotImplementedError(f"attention_impl={requested!r} is not available; "
                                  f"available: {sorted(KERNELS) + ['auto']}")
    blockers = _blockers(requested, call)
    if blockers:
        _log_fallback_once(requested, ", ".join(blockers))
        return xla_attention
    native = _NATIVE_BACKEND.get(requested)
    if native and platform != native:
        if requested == "cudnn":
            raise ValueError(f"attention_impl='cudnn' needs a GPU backend; this process runs on {platform!r}")
        _log_interpret_once(requested, platform)
    return KERNELS[requested]


@functools.lru_cache(maxsize=None)
def _log_interpret_once(requested: str, backend: str) -> None:
    logger.warning("attention_impl=%r runs in Pallas interpret mode on %r (correct but slow)", requested, backend)
