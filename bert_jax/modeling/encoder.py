"""The BERT encoder: transformer layers with optional causal self-attention, KV cache,
cross-attention and relative position scores, and the pooler.

Architecture switches (`BertConfig`): `norm_position` "post" (BERT: LN(x + f(x))) or "pre"
(x + f(LN(x)) with the norms at `attention/LayerNorm` and `intermediate/LayerNorm`, and a final norm
`encoder/final_norm` after the last layer); `norm_type` LayerNorm / RMSNorm; `mlp_type` dense or
gated (GeGLU / SwiGLU: `intermediate/dense` is the activated branch, `intermediate/up` the linear
one); bias switches `attention_bias`, `mlp_bias`, `norm_bias`.

Param names mirror transformers (`attention/self/query`, `attention/output/LayerNorm`,
`intermediate/dense`, `output/dense`, `crossattention/...`) so checkpoints map by name; Q/K/V
kernels are kept as [embed, heads, head_dim] so the heads axis can be sharded.

Positions inside attention (`position_embedding_type` "rotary" / "alibi") and the sliding window
(`local_attention_window`, global every `global_attn_every_n_layers`) read the model's position_ids.
Whether a layer is global is static for unrolled layers (`BertLayer.layer_index`) and a traced flag
under `nn.scan` (the layer index is a scanned input), so both layouts compute the same thing.
"""

import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling.attention import AttentionCall, AttentionMask, select_kernel
from bert_jax.modeling import positions as pos_lib
from bert_jax.modeling.common import ACT_FNS, dense, layer_norm, weight_init

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class BertSelfAttention(nn.Module):
    """Multi-head attention projections + kernel. `is_cross` attends to encoder states; `causal`
    adds the decoder's causal mask and enables the KV cache (`cache` collection)."""

    config: BertConfig
    causal: bool = False
    is_cross: bool = False

    @nn.compact
    def __call__(self, hidden: Array, kv_states: Optional[Array], mask: Optional[AttentionMask],
                 head_mask: Optional[Array], deterministic: bool, output_attentions: bool,
                 init_cache: bool = False, position_ids: Optional[Array] = None,
                 kind: Optional["LayerKind"] = None) -> Tuple[Array, Optional[Array]]:
        """hidden [B, Q, H]; kv_states [B, S, H] (cross) or None (self); head_mask [N] or None;
        position_ids [B or 1, Q] (rotary / alibi / window); kind: the layer's local/global flags.
        Returns context [B, Q, N, D] and probabilities [B, N, Q, K] or None."""
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim
        proj = lambda name: dense(cfg, (heads, head_dim), ("embed", "heads", "kv"), name, use_bias=cfg.attention_bias)
        source = hidden if kv_states is None else kv_states
        query = proj("query")(hidden)
        key = proj("key")(source)
        value = proj("value")(source)
        query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
        kind = LayerKind() if kind is None else kind
        in_attention_positions = not self.is_cross and position_ids is not None
        if in_attention_positions and cfg.position_embedding_type == "rotary":
            # Rotated before the KV cache is written, so cached keys carry their own positions.
            theta = kind.select(cfg.rope_theta, cfg.local_rope_theta or cfg.rope_theta)
            query = pos_lib.apply_rotary(query, position_ids, theta)
            key = pos_lib.apply_rotary(key, position_ids, theta)

        q_len, k_len = hidden.shape[1], key.shape[1]
        q_pos = jnp.arange(q_len)
        decoding = self.causal and (init_cache or self.has_variable("cache", "cached_key"))
        if decoding:
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if not init_cache:
                # Write this step's keys/values at the cache index; attend over the whole cache with
                # keys beyond the current position masked by the causal mask below.
                index = cache_index.value
                key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                                   (0, index, 0, 0))
                value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                                     (0, index, 0, 0))
                cached_key.value, cached_value.value = key, value
                cache_index.value = index + q_len
                q_pos = q_pos + index
                k_len = key.shape[1]
        k_pos = jnp.arange(k_len)
        mask = AttentionMask() if mask is None else mask
        dense_mask, segment_ids, causal = mask.dense, mask.segment_ids, mask.causal
        if decoding and not init_cache:
            # Outside decoding the model folds the causal mask into `mask`; here it depends on the
            # cache index, which only this module knows.
            causal_mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
            dense_mask = causal_mask if dense_mask is None else jnp.logical_and(dense_mask, causal_mask)
            segment_ids, causal = None, False

        bias = None
        if cfg.position_embedding_type in ("relative_key", "relative_key_query") and not self.is_cross:
            bias = self._relative_scores(query, key, q_pos, k_pos) * head_dim ** -0.5
        if in_attention_positions and (cfg.position_embedding_type == "alibi" or kind.maybe_local):
            q_positions = position_ids
            # While decoding the keys are the whole cache: positions 0..T-1 after the offset.
            k_positions = ((cfg.position_offset + k_pos)[None, :] if decoding and not init_cache else position_ids)
            if cfg.position_embedding_type == "alibi":
                bias = pos_lib.alibi_bias(q_positions, k_positions, heads)
            if kind.maybe_local:
                # Local layers: a dense window mask. Segment ids cannot express it, so they are dropped
                # and flash kernels fall back (dense_mask_only) rather than attend globally.
                window = pos_lib.window_mask(q_positions, k_positions, cfg.local_attention_window)
                if kind.is_global is not None and not isinstance(kind.is_global, bool):
                    window = jnp.logical_or(window, kind.is_global)  # scanned: this layer may be global
                dense_mask = window if dense_mask is None else jnp.logical_and(dense_mask, window)
                segment_ids = None

        dropout_rng = None
        if not deterministic and cfg.attention_probs_dropout_prob > 0.0:
            dropout_rng = self.make_rng("dropout")
        call = AttentionCall(needs_probs=output_attentions, has_head_mask=head_mask is not None,
                             dropout=dropout_rng is not None, has_bias=bias is not None,
                             dense_mask_only=dense_mask is not None and segment_ids is None,
                             q_len=q_len, k_len=k_len, dtype=jnp.dtype(query.dtype).name, head_dim=head_dim)
        kernel = select_kernel(cfg.attention_impl, call)
        if head_mask is not None:
            head_mask = jnp.asarray(head_mask).reshape(1, heads, 1, 1)
        context, probs = kernel(query, key, value, mask=dense_mask, segment_ids=segment_ids, causal=causal,
                                bias=bias, head_mask=head_mask, dropout_rate=cfg.attention_probs_dropout_prob,
                                dropout_rng=dropout_rng, return_probs=output_attentions)
        return context, probs

    def _relative_scores(self, query: Array, key: Array, q_pos: Array, k_pos: Array) -> Array:
        """Shaw et al. / Huang et al. relative scores [B, N, Q, K] (before the 1/sqrt(D) scale)."""
        cfg = self.config
        table = nn.Embed(2 * cfg.max_position_embeddings - 1, cfg.head_dim, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.dtype(cfg.param_dtype), embedding_init=weight_init(cfg, (None, "kv")),
                         name="distance_embedding")
        distance = q_pos[:, None] - k_pos[None, :] + cfg.max_position_embeddings - 1
        positional = table(distance)  # [Q, K, D]
        scores = jnp.einsum("bqnd,qkd->bnqk", query, positional, preferred_element_type=jnp.float32)
        if cfg.position_embedding_type == "relative_key_query":
            scores = scores + jnp.einsum("bknd,qkd->bnqk", key, positional, preferred_element_type=jnp.float32)
        return scores


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What differs between layers: global or local attention, and being layer 0. Each flag is a
    Python bool (unrolled layers, static) or a traced bool scalar (scanned layers); `maybe_local` is
    static: whether this layer may attend locally (so the window mask must be built)."""

    is_global: Any = True
    is_first: Any = False
    maybe_local: bool = False

    @classmethod
    def of(cls, config: BertConfig, index) -> "LayerKind":
        if index is None:
            return cls()
        if isinstance(index, int):
            is_global = config.is_global_layer(index)
            return cls(is_global, index == 0, not is_global)
        n = config.global_attn_every_n_layers
        is_global = jnp.logical_or(config.local_attention_window == 0, index % n == 0)
        return cls(is_global, index == 0, config.has_local_layers)

    def select(self, global_value, local_value):
        """global_value on global layers, else local_value (traced under scan)."""
        if isinstance(self.is_global, bool):
            return global_value if self.is_global else local_value
        return jnp.where(self.is_global, global_value, local_value)

    def select_first(self, first_value, other_value):
        """first_value on layer 0, else other_value."""
        if isinstance(self.is_first, bool):
            return first_value if self.is_first else other_value
        return jnp.where(self.is_first, first_value, other_value)


def _residual(config: BertConfig, x: Array, residual: Array) -> Array:
    """Post-LN: norm(x + residual) (the norm is this block's `LayerNorm`); pre-LN: x + residual
    (the block's input was normalised before its sublayer)."""
    return layer_norm(config)(x + residual) if config.norm_position == "post" else x + residual


class BertSelfOutput(nn.Module):
    """dense(context [B, L, N, D]) -> dropout -> residual add (+ LayerNorm when post-LN) -> [B, L, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, context: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "dense", axis=(-2, -1),
                  use_bias=cfg.attention_bias)(context)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return _residual(cfg, x, residual)


class BertAttention(nn.Module):
    """Self- or cross-attention followed by its output block: post-LN LN(attn(x) + x), or pre-LN
    attn(LN(x)) + x with the norm at `LayerNorm` (applied to the queries' side only; encoder states of
    cross-attention are used as given)."""

    config: BertConfig
    causal: bool = False
    is_cross: bool = False

    @nn.compact
    def __call__(self, hidden, kv_states, mask, head_mask, deterministic, output_attentions, init_cache=False,
                 position_ids=None, kind=None):
        normed = hidden
        if self.config.norm_position == "pre":
            normed = layer_norm(self.config)(hidden)
            if not self.config.first_layer_attention_norm and kind is not None and not self.is_cross:
                # ModernBERT: layer 0 attends to the (already normalised) embeddings directly. The norm's
                # params exist in every layer (scanned layers must be alike) but layer 0 ignores them.
                normed = kind.select_first(hidden, normed)
        context, probs = BertSelfAttention(self.config, self.causal, self.is_cross, name="self")(
            normed, kv_states, mask, head_mask, deterministic, output_attentions, init_cache, position_ids, kind)
        return BertSelfOutput(self.config, name="output")(context, hidden, deterministic), probs


class BertIntermediate(nn.Module):
    """[B, L, H] -> [B, L, intermediate_size]. dense: act(x W_dense); geglu / swiglu: act(x W_dense) * (x W_up)
    (`dense` is the activated branch, `up` the linear one; act is `hidden_act`, a GELU or SiLU as
    `mlp_type` requires). Pre-LN normalises x first (`LayerNorm`)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        if cfg.norm_position == "pre":
            x = layer_norm(cfg)(x)
        h = ACT_FNS[cfg.hidden_act](dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "dense", use_bias=cfg.mlp_bias)(x))
        if cfg.mlp_type != "dense":
            h = h * dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "up", use_bias=cfg.mlp_bias)(x)
        return nn.with_logical_constraint(h, ("batch", "length", "mlp"))


class BertOutput(nn.Module):
    """dense [mlp -> embed] -> dropout -> residual add (+ LayerNorm when post-LN) -> [B, L, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, intermediate: Array, residual: Array, deterministic: bool) -> Array:
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "dense", use_bias=cfg.mlp_bias)(intermediate)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return _residual(cfg, x, residual)


class BertLayer(nn.Module):
    """One transformer block (post- or pre-LN, see `config.norm_position`). Call-time switches are attributes so the layer can be
    scanned (`nn.scan`) and rematerialised (`nn.remat`) without static arguments; the call has
    the scan shape `(carry, per-layer input, *broadcast) -> (carry, per-layer output)`."""

    config: BertConfig
    deterministic: bool = True
    output_attentions: bool = False
    output_hidden_states: bool = False
    init_cache: bool = False
    layer_index: Optional[int] = None  # unrolled layers: their index (static); scanned: None (see scan_index)

    @nn.compact
    def __call__(self, hidden: Array, head_mask: Optional[Array], mask: Optional[Array],
                 encoder_hidden_states: Optional[Array], encoder_mask: Optional[Array],
                 position_ids: Optional[Array] = None, scan_index: Optional[Array] = None):
        """hidden [B, L, H]; head_mask [N] or None; position_ids [B or 1, L]; scan_index: the layer's
        index as a traced int32 scalar under nn.scan -> (hidden [B, L, H], (hidden or None, self probs
        [B, N, L, K] or None, cross probs [B, N, L, S] or None))."""
        cfg = self.config
        index = self.layer_index if self.layer_index is not None else scan_index
        kind = LayerKind.of(cfg, index)
        x, self_probs = BertAttention(cfg, causal=cfg.is_decoder, name="attention")(
            hidden, None, mask, head_mask, self.deterministic, self.output_attentions, self.init_cache,
            position_ids, kind)
        cross_probs = None
        if cfg.add_cross_attention and encoder_hidden_states is not None:
            x, cross_probs = BertAttention(cfg, is_cross=True, name="crossattention")(
                x, encoder_hidden_states, encoder_mask, head_mask, self.deterministic, self.output_attentions)
        out = BertOutput(cfg, name="output")(BertIntermediate(cfg, name="intermediate")(x), x, self.deterministic)
        out = nn.with_logical_constraint(out, ("batch", "length", "embed"))
        return out, (out if self.output_hidden_states else None, self_probs, cross_probs)


class BertEncoder(nn.Module):
    """`num_hidden_layers` BertLayers: unrolled with params at `layer/<i>` (transformers' naming),
    or with `scan_layers` one scanned layer whose params at `layer` carry a leading `layers` axis
    (one compile of the layer body whatever the depth)."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, mask: Optional[Array], head_mask: Optional[Array],
                 encoder_hidden_states: Optional[Array], encoder_mask: Optional[Array],
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 init_cache: bool = False, position_ids: Optional[Array] = None):
        """position_ids [B or 1, L] feed rotary / alibi / window layers.
        Returns (last hidden [B, L, H], all hidden states or None, self probs or None, cross probs or None)."""
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(BertLayer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        flags = dict(deterministic=deterministic, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states, init_cache=init_cache)
        if cfg.scan_layers:
            scanned = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                              split_rngs={"params": True, "dropout": True},
                              in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                              length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            # The layer index is a scanned input: local/global alternation and layer 0's quirks per step.
            layer_indices = jnp.arange(cfg.num_hidden_layers, dtype=jnp.int32)
            last, (hiddens, self_probs, cross_probs) = scanned(cfg, **flags, name="layer")(
                hidden, head_mask, mask, encoder_hidden_states, encoder_mask, position_ids, layer_indices)
            unstack = lambda x: None if x is None else tuple(x[i] for i in range(cfg.num_hidden_layers))
            hiddens, self_probs, cross_probs = unstack(hiddens), unstack(self_probs), unstack(cross_probs)
        else:
            last, outs = BertLayerStack(cfg, layer_cls, flags, name="layer")(
                hidden, head_mask, mask, encoder_hidden_states, encoder_mask, position_ids)
            hiddens, self_probs, cross_probs = (tuple(x) if x[0] is not None else None for x in zip(*outs))
        if cfg.norm_position == "pre":
            # Pre-LN's residual stream is never normalised inside the layers: a final norm does it.
            # transformers 5 reports the last layer's hidden state after it (its `hidden_states[-1]`
            # is `last_hidden_state`), the earlier ones before any norm, as here.
            last = layer_norm(cfg, "final_norm")(last)
            if hiddens:
                hiddens = hiddens[:-1] + (last,)
        all_hidden = (hidden,) + hiddens if output_hidden_states else None
        return last, all_hidden, self_probs if output_attentions else None, cross_probs if output_attentions else None


class BertLayerStack(nn.Module):
    """Unrolled layers, a module of its own so params sit at `encoder/layer/<i>`."""

    config: BertConfig
    layer_cls: type
    flags: dict

    @nn.compact
    def __call__(self, hidden, head_mask, mask, encoder_hidden_states, encoder_mask, position_ids=None):
        outs = []
        for i in range(self.config.num_hidden_layers):
            layer_head_mask = None if head_mask is None else head_mask[i]
            hidden, out = self.layer_cls(self.config, **self.flags, layer_index=i, name=str(i))(
                hidden, layer_head_mask, mask, encoder_hidden_states, encoder_mask, position_ids)
            outs.append(out)
        return hidden, outs


class BertPooler(nn.Module):
    """tanh(dense(h[:, 0])): [B, L, H] -> [B, H]; with `cls_positions` [B, S] (packed rows) the
    first token of each packed sequence: -> [B, S, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, cls_positions: Optional[Array] = None) -> Array:
        cfg = self.config
        return jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", None), "dense")(first_tokens(hidden, cls_positions)))


def first_tokens(hidden: Array, cls_positions: Optional[Array] = None) -> Array:
    """[B, L, H] -> the first token [B, H], or with `cls_positions` [B, S] (packed rows) each packed
    sequence's first token [B, S, H]."""
    if cls_positions is None:
        return hidden[:, 0]
    # Clamped: an out-of-range position (invalid data, see losses.invalid_counts) reads a real row, not NaN.
    positions = jnp.clip(cls_positions.astype(jnp.int32), 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, positions[..., None], axis=1)
