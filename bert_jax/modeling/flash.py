"""Flash attention with in-kernel attention dropout (Pallas; TPU/Mosaic, GPU/Triton, interpret mode).

One kernel family for training and inference: online-softmax attention over key blocks with
segment-id masking (padding, packed rows), optional causal masking, a score scale and dropout on
the probabilities. Dropout uses a *counter-based* mask: whether probability (b, h, q, k) is kept is
a pure function of (seed, b, h, q, k) (`dropout_keep`), so the forward kernel, both backward kernels
and the `xla` reference (`xla_attention(..., dropout_mask="counter")`) draw the same mask element
by element without storing it.

Layout: callers pass [batch, seq, heads, head_dim] (the model's layout); the kernels run on
[batch, heads, seq, head_dim] so a (block, head_dim) tile is contiguous. Grids are
(batch, heads, query blocks) for the forward and dq kernels and (batch, heads, key blocks) for the
dk/dv kernel; each program loops over the other sequence axis in-kernel with the whole of it resident
(BERT sequences are <= 512, so a full key/value or query/dO panel is at most 512 x head_dim).

Exactness: when the keys fit in one block (default block_k = min(K, 512), so every BERT length),
the forward normalises the probabilities before P@V exactly as the reference does, and the backward
recomputes P = exp(S - m) / l from the stored row max m and row sum l (not a logsumexp, which would
round); in fp32 interpret mode the output is then bit-identical to the reference, and so are the
gradients when the queries also fit in one dk/dv block. Longer keys use the usual online-softmax
rescaling and agree to float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

Array = jax.Array

# Masked scores get float32's lowest finite value, as in `xla_attention`: a fully masked row then
# softmaxes to uniform instead of NaN, identically in both implementations.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)
_LANES, _SUBLANES = 128, 8  # TPU vreg tile: segment ids are laid out lane/sublane-replicated


# ----------------------------------------------------------------------------- counter-based dropout

def _i32(c: int) -> int:
    """A uint32 constant as the int32 with the same bits (jnp int32 arithmetic wraps like uint32)."""
    return c - (1 << 32) if c >= 1 << 31 else c


_INT_MIN = -(1 << 31)
_SALT = tuple(_i32(c) for c in (0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F))


def _srl(x: Array, n: int) -> Array:
    return jax.lax.shift_right_logical(x, jnp.full_like(x, n))


def _mix(x: Array) -> Array:
    """lowbias32 (C. Wellons' 2-multiply xorshift hash), a bijection on 32-bit words, on int32
    storage: int32 multiply wraps mod 2**32 and shifts are logical, so the bits are uint32's. Plain
    int32 ops lower alike on XLA, Mosaic and Triton (no uint32 or 64-bit multiply needed)."""
    x = x ^ _srl(x, 16)
    x = x * _i32(0x7FEB352D)
    x = x ^ _srl(x, 15)
    x = x * _i32(0x846CA68B)
    return x ^ _srl(x, 16)


def keep_threshold(rate: float) -> int:
    """The uint32 threshold T with P(bits < T) = T / 2**32 = 1 - rate up to 2**-33 (round to nearest).

    keep_prob=1 would need 2**32, so it is clamped to 2**32 - 1 (callers skip dropout at rate 0)."""
    return min(max(round((1.0 - rate) * 2.0 ** 32), 0), 2 ** 32 - 1)


def dropout_keep(seed: Array, b, h, q_idx: Array, k_idx: Array, rate: float) -> Array:
    """Keep decisions (bool) for the elements (b, h, q_idx, k_idx), broadcast together.

    seed: int32 scalar; b, h: int32 batch/head indices (scalars in the kernels, iotas in the
    reference); q_idx, k_idx: int32 global query/key positions, e.g. [bq, 1] and [1, bk]. The
    per-(b, h) key and the per-row / per-column hashes cost O(bq + bk); each element costs one
    `_mix` of (row hash ^ column hash). An element is kept iff its uint32 hash < keep_threshold(rate),
    compared as int32 after flipping the sign bit of both sides, so only int32 ops are needed."""
    key = _mix(seed ^ _mix(b + _SALT[0]))
    key = _mix(key ^ _mix(h + _SALT[1]))
    row = _mix(key ^ _mix(q_idx + _SALT[2]))
    col = _mix(k_idx + _SALT[3])
    bits = _mix(row ^ col)
    return (bits ^ _INT_MIN) < keep_threshold(rate) + _INT_MIN


def dropout_keep_mask(seed: Array, shape: Tuple[int, int, int, int], rate: float) -> Array:
    """The whole keep mask, bool [B, N, Q, K], for the reference implementation."""
    iota = lambda axis: jax.lax.broadcasted_iota(jnp.int32, tuple(n if i == axis else 1 for i, n in enumerate(shape)),
                                                 axis)
    return dropout_keep(seed, iota(0), iota(1), iota(2), iota(3), rate)


def dropout_seed(rng: Array) -> Array:
    """int32 seed for the counter-based mask from a JAX PRNG key (raw uint32[2] or typed)."""
    return jax.lax.bitcast_convert_type(jax.random.bits(rng, (), jnp.uint32), jnp.int32)


# ----------------------------------------------------------------------------------------- kernels

@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes. block_q / block_k: forward and dq kernels (query tile, key step); block_q_dkv /
    block_k_dkv: dk/dv kernel (query step, key tile). Each must divide its (padded) length."""
    block_q: int = 128
    block_k: int = 512
    block_q_dkv: int = 512
    block_k_dkv: int = 128

    def fit(self, q_len: int, k_len: int) -> "BlockSizes":
        return BlockSizes(min(self.block_q, q_len), min(self.block_k, k_len), min(self.block_q_dkv, q_len),
                          min(self.block_k_dkv, k_len))


# Triton keeps a whole tile in registers: smaller tiles than Mosaic's VMEM tiles.
GPU_BLOCKS = BlockSizes(block_q=64, block_k=64, block_q_dkv=64, block_k_dkv=64)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything the kernels specialise on (hashable: one custom_vjp per distinct value)."""
    scale: float
    causal: bool
    rate: float
    blocks: BlockSizes
    backend: str  # "tpu" | "gpu" | "interpret"


def _iota(shape, dim: int, backend: str) -> Array:
    """int32 positions along `dim` of a 2-D shape with one axis of size 1 ([n, 1] or [1, n])."""
    if backend == "gpu":  # Triton lowers 1-D iotas only
        n = shape[dim]
        v = jnp.arange(n, dtype=jnp.int32)
        return v[:, None] if dim == 0 else v[None, :]
    return jax.lax.broadcasted_iota(jnp.int32, shape, dim)  # Mosaic wants 2-D vectors


def _ds(start, size: int):
    return pl.ds(pl.multiple_of(start, size) if not isinstance(start, int) else start, size)


def _dropout_ids(seed_ref):
    """(global batch index, global head index, tile index) of this program: seed_ref holds
    [seed, batch offset, head offset, 0], the offsets of this shard's rows/heads in the whole batch."""
    return pl.program_id(0) + seed_ref[1], pl.program_id(1) + seed_ref[2], pl.program_id(2)


def _tile(st: _Static, seed, b, h, q, k, q_ids, kv_ids, q0, k0):
    """Scores of one (query tile, key tile): q [bq, D], k [bk, D], q_ids [bq, 1], kv_ids [1, bk],
    tile offsets q0, k0. Returns masked scaled float32 scores [bq, bk], the mask, and the dropout
    keep mask (None without dropout)."""
    bq, bk = q.shape[0], k.shape[0]
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * st.scale
    mask = q_ids == kv_ids
    q_pos = _iota((bq, 1), 0, st.backend) + q0
    k_pos = _iota((1, bk), 1, st.backend) + k0
    if st.causal:
        mask = jnp.logical_and(mask, q_pos >= k_pos)
    s = jnp.where(mask, s, MASK_VALUE)
    keep = dropout_keep(seed, b, h, q_pos, k_pos, st.rate) if st.rate > 0.0 else None
    return s, mask, keep


def _drop(st: _Static, keep, p):
    """Dropout as the reference applies it: kept entries divided by keep_prob, others zero."""
    return p if keep is None else jnp.where(keep, p / (1.0 - st.rate), 0.0)


def _fwd_kernel(seed_ref, q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, o_ref, m_ref, l_ref, *, st: _Static):
    """One query tile: q_ref [bq, D], k_ref/v_ref [K, D] (whole), qseg_ref [bq, LANES],
    kvseg_ref [SUBLANES, K] -> o_ref [bq, D], row max m_ref and row sum l_ref [bq, 1] (float32)."""
    b, h, i = _dropout_ids(seed_ref)
    seed = seed_ref[0]
    bq, bk = q_ref.shape[0], st.blocks.block_k
    num_k = k_ref.shape[0] // bk
    q = q_ref[...]
    q_ids = qseg_ref[:, 0:1]

    def tile(j):
        k0 = j * bk
        return _tile(st, seed, b, h, q, k_ref[_ds(k0, bk), :], q_ids, kvseg_ref[0:1, _ds(k0, bk)], i * bq, k0)

    if num_k == 1:
        # Keys fit one tile: the softmax is exact, normalised before P@V in the reference's order.
        s, _, keep = tile(0)
        m = jnp.max(s, axis=1, keepdims=True)
        p = jnp.exp(s - m)
        l = jnp.sum(p, axis=1, keepdims=True)
        p = _drop(st, keep, p / l)
        o = jnp.dot(p.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32)
    else:
        def body(j, carry):
            m_prev, l_prev, acc = carry
            s, _, keep = tile(j)
            m = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
            alpha = jnp.exp(m_prev - m)
            p = jnp.exp(s - m)
            l = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)  # the undropped sum normalises
            v = v_ref[_ds(j * bk, bk), :]
            acc = alpha * acc + jnp.dot(_drop(st, keep, p).astype(v.dtype), v, preferred_element_type=jnp.float32)
            return m, l, acc

        init = (jnp.full((bq, 1), MASK_VALUE, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
                jnp.zeros((bq, v_ref.shape[1]), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, num_k, body, init)
        o = acc / l
    o_ref[...] = o.astype(o_ref.dtype)
    m_ref[...] = m
    l_ref[...] = l


def _probs_grad(st: _Static, keep, do, v):
    """dL/dP [bq, bk] (P before dropout) from dO [bq, D] and V [bk, D], in the order the reference's
    autodiff computes it: dO V^T, zeroed where dropped, divided by keep_prob."""
    dp = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if keep is not None:
        dp = jnp.where(keep, dp, 0.0) / (1.0 - st.rate)
    return dp


def _scores_grad(dp, e, l, delta):
    """dL/dS [bq, bk] through P = E / l with E = exp(S - m): (dP / l - delta) * E, where delta [bq, 1]
    is rowsum(dP * E) / l**2 = rowsum(P * dP) / l. Written in the order JAX's autodiff of
    `jax.nn.softmax` (x - stop_gradient(max), exp, divide by the sum) evaluates it, so that with one
    key tile the result matches the reference bit for bit."""
    return (dp / l + (-delta)) * e


def _dq_kernel(seed_ref, q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, qseg_ref, kvseg_ref, dq_ref,
               *maybe_delta_out, st: _Static):
    """dq for one query tile: q_ref/do_ref [bq, D], k_ref/v_ref [K, D], m/l/delta [bq, 1].
    With one key tile delta (see `_scores_grad`) is computed here from the whole row, as the
    reference's autodiff does, and written to the extra output for the dk/dv kernel; otherwise
    delta_ref holds rowsum(dO * O) / l, the same quantity up to rounding."""
    b, h, i = _dropout_ids(seed_ref)
    seed = seed_ref[0]
    bq, bk = q_ref.shape[0], st.blocks.block_k
    num_k = k_ref.shape[0] // bk
    q, do, m, l = q_ref[...], do_ref[...], m_ref[...], l_ref[...]
    q_ids = qseg_ref[:, 0:1]

    def tile_grad(j, delta):
        k0 = j * bk
        k = k_ref[_ds(k0, bk), :]
        s, mask, keep = _tile(st, seed, b, h, q, k, q_ids, kvseg_ref[0:1, _ds(k0, bk)], i * bq, k0)
        e = jnp.exp(s - m)
        dp = _probs_grad(st, keep, do, v_ref[_ds(k0, bk), :])
        if delta is None:
            delta = jnp.sum(dp * jax.lax.integer_pow(l, -2) * e, axis=1, keepdims=True)
        ds = jnp.where(mask, _scores_grad(dp, e, l, delta), 0.0) * st.scale
        return jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32), delta

    if num_k == 1:
        dq, delta = tile_grad(0, None)
        maybe_delta_out[0][...] = delta
    else:
        delta = delta_ref[...]
        dq = jax.lax.fori_loop(0, num_k, lambda j, acc: acc + tile_grad(j, delta)[0],
                               jnp.zeros(q_ref.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(seed_ref, q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, delta_ref, qseg_ref, kvseg_ref, dk_ref, dv_ref,
                *, st: _Static):
    """dk, dv for one key tile: k_ref/v_ref [bk, D], q_ref/do_ref [Q, D] (whole), m/l/delta [Q, 1],
    qseg_ref [Q, LANES], kvseg_ref [SUBLANES, bk]; loops over query tiles of block_q_dkv."""
    b, h, j = _dropout_ids(seed_ref)
    seed = seed_ref[0]
    bk, bq = k_ref.shape[0], st.blocks.block_q_dkv
    num_q = q_ref.shape[0] // bq
    k, v = k_ref[...], v_ref[...]
    kv_ids = kvseg_ref[0:1, :]
    t = (((0,), (0,)), ((), ()))  # contract the query axis: A^T @ B

    def body(i, carry):
        dk, dv = carry
        rows = _ds(i * bq, bq)
        q, do = q_ref[rows, :], do_ref[rows, :]
        s, mask, keep = _tile(st, seed, b, h, q, k, qseg_ref[rows, 0:1], kv_ids, i * bq, j * bk)
        e, l = jnp.exp(s - m_ref[rows, :]), l_ref[rows, :]
        dv = dv + jax.lax.dot_general(_drop(st, keep, e / l).astype(do.dtype), do, t,
                                      preferred_element_type=jnp.float32)
        dp = _probs_grad(st, keep, do, v)
        ds = jnp.where(mask, _scores_grad(dp, e, l, delta_ref[rows, :]), 0.0) * st.scale
        dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, t, preferred_element_type=jnp.float32)
        return dk, dv

    zeros = jnp.zeros(k_ref.shape, jnp.float32)
    if num_q == 1:
        dk, dv = body(0, (zeros, zeros))
    else:
        dk, dv = jax.lax.fori_loop(0, num_q, body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ------------------------------------------------------------------------------------ pallas_calls

def _call(st: _Static, kernel, grid, in_specs, out_specs, out_shape, seed, *args):
    """pallas_call with `seed` (int32 [4]: seed, batch offset, head offset, 0) as the first kernel
    argument: a scalar-prefetch SMEM operand on TPU (scalar reads from SMEM are cheap there), a plain
    operand under Triton (4 elements: Triton blocks are powers of 2) and in interpret mode."""
    kernel = functools.partial(kernel, st=st)
    if st.backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        shift = lambda spec: pl.BlockSpec(spec.block_shape, lambda *idx: spec.index_map(*idx[:3]))
        grid_spec = pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=grid,
                                                 in_specs=[shift(s) for s in in_specs],
                                                 out_specs=[shift(s) for s in out_specs])
        return pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=out_shape,
                              compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3))(seed, *args)
    seed_spec = pl.BlockSpec((4,), lambda *_: (0,))
    params = {}
    if st.backend == "gpu":
        from jax.experimental.pallas import triton as pltriton
        params = dict(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2))
    return pl.pallas_call(kernel, grid=grid, in_specs=[seed_spec] + list(in_specs), out_specs=out_specs,
                          out_shape=out_shape, interpret=st.backend == "interpret", **params)(seed, *args)


def _forward(st: _Static, q, k, v, qseg, kvseg, seed):
    """q [B, N, Q, D], k/v [B, N, K, D], qseg [B, Q, LANES], kvseg [B, SUBLANES, K] ->
    (o [B, N, Q, D], m [B, N, Q, 1], l [B, N, Q, 1])."""
    B, N, Q, D = q.shape
    K = k.shape[2]
    bq = st.blocks.block_q
    tile = pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0))
    whole = pl.BlockSpec((None, None, K, D), lambda b, h, i: (b, h, 0, 0))
    stat = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
    in_specs = [tile, whole, whole, pl.BlockSpec((None, bq, _LANES), lambda b, h, i: (b, i, 0)),
                pl.BlockSpec((None, _SUBLANES, K), lambda b, h, i: (b, 0, 0))]
    stat_shape = jax.ShapeDtypeStruct((B, N, Q, 1), jnp.float32)
    return _call(st, _fwd_kernel, (B, N, Q // bq), in_specs, [tile, stat, stat],
                 [jax.ShapeDtypeStruct(q.shape, q.dtype), stat_shape, stat_shape], seed, q, k, v, qseg, kvseg)


def _backward(st: _Static, res, do):
    """dq, dk, dv [B, N, L, D] from the forward's residuals and dO [B, N, Q, D]: the dq kernel (query
    tiles, loop over keys) runs first because with one key tile it also produces delta; then the
    dk/dv kernel (key tiles, loop over queries). Both recompute scores, P and the dropout mask."""
    q, k, v, qseg, kvseg, seed, o, m, l = res
    B, N, Q, D = q.shape
    K = k.shape[2]
    blocks = st.blocks
    one_k_tile = K == blocks.block_k
    stat_shape = jax.ShapeDtypeStruct((B, N, Q, 1), jnp.float32)
    if one_k_tile:
        delta = jnp.zeros((B, N, Q, 1), jnp.float32)  # placeholder operand: the dq kernel computes delta
    else:
        # rowsum(P * dP) = rowsum(dO * O) (P@V with dropout is O); _scores_grad wants it over l.
        delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True) / l

    bq = blocks.block_q
    tile = pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0))
    whole_k = pl.BlockSpec((None, None, K, D), lambda b, h, i: (b, h, 0, 0))
    stat = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
    qseg_spec = pl.BlockSpec((None, bq, _LANES), lambda b, h, i: (b, i, 0))
    kvseg_whole = pl.BlockSpec((None, _SUBLANES, K), lambda b, h, i: (b, 0, 0))
    out_specs, out_shape = [tile], [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    if one_k_tile:
        out_specs, out_shape = out_specs + [stat], out_shape + [stat_shape]
    in_specs = [tile, whole_k, whole_k, tile, stat, stat, stat, qseg_spec, kvseg_whole]
    outs = _call(st, _dq_kernel, (B, N, Q // bq), in_specs, out_specs, out_shape, seed, q, k, v, do, m, l, delta,
                 qseg, kvseg)
    dq = outs[0]
    if one_k_tile:
        delta = outs[1]

    bk = blocks.block_k_dkv
    ktile = pl.BlockSpec((None, None, bk, D), lambda b, h, j: (b, h, j, 0))
    whole_q = pl.BlockSpec((None, None, Q, D), lambda b, h, j: (b, h, 0, 0))
    stat_whole = pl.BlockSpec((None, None, Q, 1), lambda b, h, j: (b, h, 0, 0))
    in_specs = [whole_q, ktile, ktile, whole_q, stat_whole, stat_whole, stat_whole,
                pl.BlockSpec((None, Q, _LANES), lambda b, h, j: (b, 0, 0)),
                pl.BlockSpec((None, _SUBLANES, bk), lambda b, h, j: (b, 0, j))]
    dk, dv = _call(st, _dkv_kernel, (B, N, K // bk), in_specs, [ktile, ktile],
                   [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                   seed, q, k, v, do, m, l, delta, qseg, kvseg)
    return dq, dk, dv


@functools.lru_cache(maxsize=None)
def _flash_fn(st: _Static):
    """The differentiable [B, N, L, D] attention for one static configuration."""

    @jax.custom_vjp
    def flash(q, k, v, qseg, kvseg, seed):
        return _forward(st, q, k, v, qseg, kvseg, seed)[0]

    def fwd(q, k, v, qseg, kvseg, seed):
        o, m, l = _forward(st, q, k, v, qseg, kvseg, seed)
        return o, (q, k, v, qseg, kvseg, seed, o, m, l)

    def bwd(res, do):
        dq, dk, dv = _backward(st, res, do)
        return dq, dk, dv, None, None, None  # segment ids and seed are integers: no cotangent

    flash.defvjp(fwd, bwd)
    return flash


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def flash_attention(query: Array, key: Array, value: Array, *, segment_ids: Optional[Tuple[Array, Array]] = None,
                    causal: bool = False, scale: Optional[float] = None, dropout_rate: float = 0.0,
                    dropout_seed: Optional[Array] = None, dropout_offsets: Tuple = (0, 0),
                    block_sizes: Optional[BlockSizes] = None,
                    backend: Optional[str] = None) -> Array:
    """Attention with optional counter-based dropout on the probabilities; differentiable.

    Args:
      query: [B, Q, N, D]; key, value: [B, K, N, D].
      segment_ids: (q [B, Q], kv [B, K]) int; a query attends to keys with its id. None: all keys.
      causal: key position <= query position only (positions counted from 0 in both).
      scale: score scale, default 1/sqrt(D).
      dropout_rate: probability of dropping an attention probability; with dropout_seed (int32
        scalar) the mask is `dropout_keep(seed, b, h, q, k)`. No seed or rate 0: no dropout.
      dropout_offsets: (batch offset, head offset), int scalars (traced allowed) added to the local
        batch/head indices in the mask: a shard_map'd call on rows [o, o + B) / heads [p, p + N)
        of a larger batch passes (o, p) and draws exactly the mask of the unsharded call, instead
        of repeating shard 0's mask on every shard.
      block_sizes: tiles; lengths are padded to their multiples (padded keys are masked out).
      backend: "tpu" (Mosaic), "gpu" (Triton) or "interpret"; default: the default backend's
        kernel, interpret mode elsewhere. Pass "tpu" to lower for TPU from a CPU host (AOT).
    Returns:
      context [B, Q, N, D] in query.dtype.
    """
    if backend is None:
        backend = jax.default_backend()
        backend = backend if backend in ("tpu", "gpu") else "interpret"
    B, Q, N, D = query.shape
    K = key.shape[1]
    scale = D ** -0.5 if scale is None else float(scale)
    rate = float(dropout_rate) if dropout_seed is not None else 0.0
    seed = jnp.zeros((), jnp.int32) if dropout_seed is None else jnp.asarray(dropout_seed, jnp.int32)
    seed = jnp.stack([seed, jnp.asarray(dropout_offsets[0], jnp.int32), jnp.asarray(dropout_offsets[1], jnp.int32),
                      jnp.zeros((), jnp.int32)])
    blocks = block_sizes or (GPU_BLOCKS if backend == "gpu" else BlockSizes())
    # Pad each length to a multiple of both of its tile sizes (one fits the other at the defaults).
    bq_min, bk_min = min(blocks.block_q, blocks.block_q_dkv), min(blocks.block_k, blocks.block_k_dkv)
    q_pad = _round_up(Q, bq_min) if Q > bq_min else Q
    k_pad = _round_up(K, bk_min) if K > bk_min else K
    blocks = blocks.fit(q_pad, k_pad)
    for length, size in ((q_pad, blocks.block_q), (q_pad, blocks.block_q_dkv), (k_pad, blocks.block_k),
                         (k_pad, blocks.block_k_dkv)):
        if length % size:
            raise ValueError(f"block size {size} does not divide the padded length {length}; pick block sizes "
                             "that are multiples of each other")
    if segment_ids is None:
        q_ids, kv_ids = jnp.zeros((B, Q), jnp.int32), jnp.zeros((B, K), jnp.int32)
    else:
        q_ids, kv_ids = (jnp.asarray(x).astype(jnp.int32) for x in segment_ids)
    # Padded keys get an id below every real query id, so no query attends to them; padded queries
    # are sliced off the output.
    lo = jnp.minimum(jnp.min(q_ids), jnp.min(kv_ids))
    q_ids = jnp.pad(q_ids, ((0, 0), (0, q_pad - Q)), constant_values=0) if q_pad > Q else q_ids
    if k_pad > K:
        kv_ids = jnp.concatenate([kv_ids, jnp.broadcast_to(lo - 1, (B, k_pad - K)).astype(jnp.int32)], axis=1)
    heads_major = lambda x, n: jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)))
    st = _Static(scale=scale, causal=bool(causal), rate=rate, blocks=blocks, backend=backend)
    out = _flash_fn(st)(heads_major(query, q_pad), heads_major(key, k_pad), heads_major(value, k_pad),
                        jnp.broadcast_to(q_ids[:, :, None], (B, q_pad, _LANES)),
                        jnp.broadcast_to(kv_ids[:, None, :], (B, _SUBLANES, k_pad)), seed)
    return jnp.swapaxes(out[:, :, :Q], 1, 2)
