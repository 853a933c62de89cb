"""`BertModel`: embeddings + encoder (+ pooler), with mask construction and input validation."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.modeling.attention import AttentionMask
from bert_jax.modeling.common import dense
from bert_jax.modeling.embeddings import BertEmbeddings
from bert_jax.modeling.encoder import BertEncoder, BertPooler
from bert_jax.modeling.inputs import validate_inputs
from bert_jax.modeling.outputs import BertModelOutput

Array = jax.Array


class BertModel(nn.Module):
    """The bare BERT encoder (or decoder, with `config.is_decoder`).

    Dropout needs `deterministic=False` and a `dropout` rng. For incremental decoding, create the
    cache with `bert_jax.init_cache` and call with `mutable=["cache"]`.
    """

    config: BertConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids: Optional[Array] = None, attention_mask: Optional[Array] = None,
                 token_type_ids: Optional[Array] = None, position_ids: Optional[Array] = None,
                 head_mask: Optional[Array] = None, inputs_embeds: Optional[Array] = None,
                 encoder_hidden_states: Optional[Array] = None, encoder_attention_mask: Optional[Array] = None,
                 sequence_ids: Optional[Array] = None, cls_positions: Optional[Array] = None,
                 *, deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 init_cache: bool = False) -> BertModelOutput:
        """
        Args:
          input_ids: [B, L] token ids (or `inputs_embeds` [B, L, H]).
          attention_mask: [B, L] 1 = token, 0 = padding; or [B, L, L] full mask (used as given, no
            causal mask added). While decoding: [B, T] over the cache positions written so far
            (T <= cache length).
          token_type_ids: [B, L], default zeros. position_ids: [B or 1, L], default 0..L-1 (offset
            by the cache index while decoding), plus `config.position_offset`; with
            `config.skip_padding_positions` (RoBERTa) only non-pad tokens count and pads take
            position_offset - 1.
          head_mask: [N] or [num_layers, N]; 0 switches a head off (multiplies its probabilities).
          encoder_hidden_states / encoder_attention_mask: [B, S, H] / [B, S] for cross-attention.
          sequence_ids: [B, L] packed rows: which packed sequence (1, 2, ...) each token belongs to,
            0 for padding. Attention stays inside a sequence and default positions restart at 0
            for each one (see `bert_jax.data.packing`).
          cls_positions: [B, S] index of each packed sequence's [CLS]; the pooler then returns
            one vector per sequence, [B, S, H].
        Returns:
          BertModelOutput with last_hidden_state [B, L, H] and pooler_output [B, H] (or [B, S, H]).
        """
        cfg = self.config
        decoding = cfg.is_decoder and not init_cache and self.has_variable("cache", "position_offset")
        cache_length = _cache_length(self.variables.get("cache")) if decoding else None
        validate_inputs(cfg, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        encoder_hidden_states, encoder_attention_mask, cache_length)
        batch, seq = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        if sequence_ids is not None:
            if tuple(sequence_ids.shape) != (batch, seq):
                raise ValueError(f"sequence_ids has shape {tuple(sequence_ids.shape)}; expected {(batch, seq)}")
            if decoding or init_cache:
                raise ValueError("sequence_ids (packed rows) cannot be combined with KV-cache decoding")

        offset = 0
        if cfg.is_decoder and (init_cache or decoding):
            offset_var = self.variable("cache", "position_offset", lambda: jnp.array(0, jnp.int32))
            if decoding:
                offset = offset_var.value
                offset_var.value = offset + seq
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, seq), jnp.int32)
        if position_ids is None and sequence_ids is not None:
            position_ids = packed_positions(sequence_ids) + cfg.position_offset
        elif position_ids is None and cfg.skip_padding_positions and input_ids is not None:
            position_ids = skip_padding_positions(input_ids, cfg.pad_token_id, cfg.position_offset, offset)
        elif position_ids is None:
            position_ids = (cfg.position_offset + offset + jnp.arange(seq, dtype=jnp.int32))[None, :]

        hidden = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, position_ids, inputs_embeds,
                                                        deterministic)
        if cfg.embedding_size is not None and cfg.embedding_size != cfg.hidden_size:
            # ELECTRA: narrower embedding tables, projected to the encoder's width [B, L, E] -> [B, L, H].
            hidden = dense(cfg, cfg.hidden_size, ("embed", None), "embeddings_project")(hidden)
            hidden = nn.with_logical_constraint(hidden, ("batch", "length", "embed"))
        mask = _self_attention_mask(attention_mask, sequence_ids, batch, seq, cfg.is_decoder, cache_length)
        encoder_mask = None
        if encoder_attention_mask is not None:
            encoder_mask = AttentionMask(encoder_attention_mask.astype(bool)[:, None, None, :],
                                         (jnp.ones((batch, seq), jnp.int32), encoder_attention_mask.astype(jnp.int32)))
        if head_mask is not None:
            head_mask = jnp.asarray(head_mask)
            if head_mask.shape not in ((cfg.num_attention_heads,), (cfg.num_hidden_layers, cfg.num_attention_heads)):
                raise ValueError(f"head_mask must be [num_heads] or [num_layers, num_heads] = "
                                 f"{(cfg.num_hidden_layers, cfg.num_attention_heads)}, got {head_mask.shape}")
            if head_mask.ndim == 1:
                head_mask = jnp.broadcast_to(head_mask, (cfg.num_hidden_layers, cfg.num_attention_heads))

        last, all_hidden, attentions, cross = BertEncoder(cfg, name="encoder")(
            hidden, mask, head_mask, encoder_hidden_states, encoder_mask, deterministic, output_attentions,
            output_hidden_states, init_cache, position_ids)
        pooled = BertPooler(cfg, name="pooler")(last, cls_positions) if self.add_pooling_layer else None
        return BertModelOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=all_hidden,
                               attentions=attentions, cross_attentions=cross)


def skip_padding_positions(input_ids: Array, pad_token_id: int, position_offset: int, start=0) -> Array:
    """RoBERTa's (fairseq's) positions: [B, L] ids -> [B, L] int32 where the k-th non-pad token of a row
    (k = 1, 2, ...) sits at position_offset - 1 + start + k and every pad token at position_offset - 1
    (`start`: tokens already in the KV cache while decoding)."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return ((jnp.cumsum(real, axis=1) + start) * real + position_offset - 1).astype(jnp.int32)


def packed_positions(sequence_ids: Array) -> Array:
    """Positions restarting at 0 at each new packed sequence: [B, L] -> [B, L] int32."""
    index = jnp.arange(sequence_ids.shape[1], dtype=jnp.int32)[None, :]
    starts = jnp.concatenate([jnp.ones_like(sequence_ids[:, :1], bool),
                              sequence_ids[:, 1:] != sequence_ids[:, :-1]], axis=1)
    start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return index - start_index


def _self_attention_mask(attention_mask: Optional[Array], sequence_ids: Optional[Array], batch: int, seq: int,
                         causal: bool, cache_length: Optional[int]) -> AttentionMask:
    """The self-attention mask as a dense boolean (broadcastable to [B, N, Q, K], True = attend)
    and, where it can be, as segment ids for flash kernels."""
    if cache_length is not None:
        # Decoding: pad the mask over the whole cache; the attention module adds the causal part,
        # which hides the not-yet-written positions.
        if attention_mask is None:
            return AttentionMask()
        mask = attention_mask.astype(bool)
        mask = jnp.pad(mask, ((0, 0), (0, cache_length - mask.shape[1])), constant_values=True)
        return AttentionMask(mask[:, None, None, :])
    if attention_mask is not None and attention_mask.ndim == 3:
        dense = attention_mask.astype(bool)[:, None, :, :]  # used as given: no causal part added
        if sequence_ids is not None:
            dense = jnp.logical_and(dense, _same_sequence(sequence_ids))
        return AttentionMask(dense)
    dense = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
    if sequence_ids is not None:
        same = _same_sequence(sequence_ids)
        dense = same if dense is None else jnp.logical_and(dense, same)
        segments = (sequence_ids.astype(jnp.int32), sequence_ids.astype(jnp.int32))
    elif attention_mask is not None:
        segments = (jnp.ones(attention_mask.shape, jnp.int32), attention_mask.astype(jnp.int32))
    else:
        segments = None
    if causal:
        causal_mask = jnp.tril(jnp.ones((seq, seq), bool))[None, None]
        dense = causal_mask if dense is None else jnp.logical_and(dense, causal_mask)
        if segments is None:
            ones = jnp.ones((batch, seq), jnp.int32)
            segments = (ones, ones)
    return AttentionMask(dense, segments, causal=causal)


def _same_sequence(sequence_ids: Array) -> Array:
    """[B, L] packed sequence ids -> [B, 1, L, L]: same sequence and not padding."""
    same = sequence_ids[:, None, :, None] == sequence_ids[:, None, None, :]
    return jnp.logical_and(same, (sequence_ids != 0)[:, None, None, :])


def _cache_length(cache) -> int:
    """Length of the KV cache, read off the cached keys: [B, T, N, D] per layer, or [layers, B, T, N, D]
    when scanned."""
    try:
        layers = cache["encoder"]["layer"]
        if "0" in layers:
            return layers["0"]["attention"]["self"]["cached_key"].shape[1]
        return layers["attention"]["self"]["cached_key"].shape[2]
    except (KeyError, TypeError) as e:
        raise ValueError("decoding needs a cache made by bert_jax.init_cache") from e
