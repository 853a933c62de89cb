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
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling.attention import AttentionCall, AttentionMask, select_kernel
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
                 init_cache: bool = False) -> Tuple[Array, Optional[Array]]:
        """hidden [B, Q, H]; kv_states [B, S, H] (cross) or None (self); head_mask [N] or None.
        Returns context [B, Q, N, D] and probabilities [B, N, Q, K] or None."""
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim
        proj = lambda name: dense(cfg, (heads, head_dim), ("embed", "heads", "kv"), name, use_bias=cfg.attention_bias)
        source = hidden if kv_states is None else kv_states
        query = proj("query")(hidden)
        key = proj("key")(source)
        value = proj("value")(source)
        query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))

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
        if cfg.position_embedding_type != "absolute" and not self.is_cross:
            bias = self._relative_scores(query, key, q_pos, k_pos) * head_dim ** -0.5

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
    def __call__(self, hidden, kv_states, mask, head_mask, deterministic, output_attentions, init_cache=False):
        normed = layer_norm(self.config)(hidden) if self.config.norm_position == "pre" else hidden
        context, probs = BertSelfAttention(self.config, self.causal, self.is_cross, name="self")(
            normed, kv_states, mask, head_mask, deterministic, output_attentions, init_cache)
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

    @nn.compact
    def __call__(self, hidden: Array, head_mask: Optional[Array], mask: Optional[Array],
                 encoder_hidden_states: Optional[Array], encoder_mask: Optional[Array]):
        """hidden [B, L, H]; head_mask [N] or None -> (hidden [B, L, H], (hidden or None, self probs
        [B, N, L, K] or None, cross probs [B, N, L, S] or None))."""
        cfg = self.config
        x, self_probs = BertAttention(cfg, causal=cfg.is_decoder, name="attention")(
            hidden, None, mask, head_mask, self.deterministic, self.output_attentions, self.init_cache)
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
                 init_cache: bool = False):
        """Returns (last hidden [B, L, H], all hidden states or None, self probs or None, cross probs or None)."""
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(BertLayer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        flags = dict(deterministic=deterministic, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states, init_cache=init_cache)
        if cfg.scan_layers:
            scanned = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                              split_rngs={"params": True, "dropout": True},
                              in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            last, (hiddens, self_probs, cross_probs) = scanned(cfg, **flags, name="layer")(
                hidden, head_mask, mask, encoder_hidden_states, encoder_mask)
            unstack = lambda x: None if x is None else tuple(x[i] for i in range(cfg.num_hidden_layers))
            hiddens, self_probs, cross_probs = unstack(hiddens), unstack(self_probs), unstack(cross_probs)
        else:
            last, outs = BertLayerStack(cfg, layer_cls, flags, name="layer")(
                hidden, head_mask, mask, encoder_hidden_states, encoder_mask)
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
    def __call__(self, hidden, head_mask, mask, encoder_hidden_states, encoder_mask):
        outs = []
        for i in range(self.config.num_hidden_layers):
            layer_head_mask = None if head_mask is None else head_mask[i]
            hidden, out = self.layer_cls(self.config, **self.flags, name=str(i))(
                hidden, layer_head_mask, mask, encoder_hidden_states, encoder_mask)
            outs.append(out)
        return hidden, outs


class BertPooler(nn.Module):
    """tanh(dense(h[:, 0])): [B, L, H] -> [B, H]; with `cls_positions` [B, S] (packed rows) the
    first token of each packed sequence: -> [B, S, H]."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, cls_positions: Optional[Array] = None) -> Array:
        cfg = self.config
        if cls_positions is None:
            first = hidden[:, 0]
        else:
            # Clamped: an out-of-range position (invalid data, see losses.invalid_counts) reads a real row, not NaN.
            positions = jnp.clip(cls_positions.astype(jnp.int32), 0, hidden.shape[1] - 1)
            first = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        return jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", None), "dense")(first))
