"""BERT input embeddings: word + position + token type, then LayerNorm and dropout.

Switches: `type_vocab_size=0` has no token-type table; `embedding_norm=False` no norm;
`embedding_size` sets the tables' width (E, default hidden_size; the model projects E -> H after)."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import LEARNED_POSITION_TYPES, BertConfig
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling.common import layer_norm, weight_init


def _lookup(embed: nn.Embed, ids: jax.Array, table_axes, out_axes) -> jax.Array:
    """`embed(ids)` with the sharding of both sides stated: the table gathered to `table_axes` (FSDP's
    weight all-gather: its "embed" dim whole on every device) and the rows laid out as `out_axes`.

    Left to propagation, SPMD meets the table's embed dim on fsdp and the ids' batch on (data, fsdp)
    in one gather and, on meshes with data > 1 and fsdp > 1, replicates the gathered activations
    ("Involuntary full rematerialization") in the forward and backward pass."""
    (table,) = nn.dtypes.promote_dtype(embed.embedding, dtype=embed.dtype, inexact=False)
    table = nn.with_logical_constraint(table, table_axes)
    return nn.with_logical_constraint(jnp.take(table, ids, axis=0), out_axes)


class BertEmbeddings(nn.Module):
    """Param names follow transformers (`word_embeddings`, `position_embeddings`,
    `token_type_embeddings`, `LayerNorm`) so checkpoints map one to one."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        width = cfg.embedding_size or cfg.hidden_size
        embed = lambda n, axes, name: nn.Embed(n, width, dtype=jnp.dtype(cfg.dtype),
                                                param_dtype=jnp.dtype(cfg.param_dtype),
                                                embedding_init=weight_init(cfg, axes), name=name)
        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")
        if cfg.position_embedding_type in LEARNED_POSITION_TYPES:  # rotary / alibi / none: positions act in attention
            self.position_embeddings = embed(cfg.max_position_embeddings, (None, "embed"), "position_embeddings")
        if cfg.type_vocab_size:
            self.token_type_embeddings = embed(cfg.type_vocab_size, (None, "embed"), "token_type_embeddings")
        if cfg.embedding_norm:
            self.LayerNorm = layer_norm(cfg)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids: Optional[jax.Array], token_type_ids: jax.Array, position_ids: jax.Array,
                 inputs_embeds: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
        """ids [B, L] (or `inputs_embeds` [B, L, E]), token types [B, L], positions [B or 1, L] -> [B, L, E]
        (E = embedding_size, hidden_size by default)."""
        if inputs_embeds is None:
            inputs_embeds = _lookup(self.word_embeddings, input_ids, ("vocab", None), ("batch", "length", "embed"))
        elif self.is_initializing():
            self.word_embeddings(jnp.zeros((1, 1), jnp.int32))  # create the table the MLM decoder ties to
        x = inputs_embeds.astype(jnp.dtype(self.config.dtype))
        if self.config.type_vocab_size:
            x = x + _lookup(self.token_type_embeddings, token_type_ids, (None, None), ("batch", "length", "embed"))
        # Positions are [1, L] (shared by the batch) or [B, L].
        if self.config.position_embedding_type in LEARNED_POSITION_TYPES:
            position_embeddings = _lookup(self.position_embeddings, position_ids, (None, None),
                                          ("batch" if position_ids.shape[0] > 1 else None, "length", "embed"))
            # Relative-position models keep the (unused) absolute table, as the reference does, so their
            # checkpoints load unchanged.
            if self.config.position_embedding_type == "absolute":
                x = x + position_embeddings
        if self.config.embedding_norm:
            x = self.LayerNorm(x)
        x = self.dropout(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend(self, hidden: jax.Array) -> jax.Array:
        """Tied output projection: [..., E] @ word_embeddings.T -> [..., V]."""
        return self.word_embeddings.attend(hidden)
