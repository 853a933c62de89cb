"""Input checks that turn silent garbage into clear errors.

Shapes are checked always (they are static, also under `jax.jit`). Values (token ids in range,
token types, positions) can only be checked on concrete arrays: called eagerly (`model.apply`
outside `jit`) they raise `ValueError`; under `jit` they are skipped, and an out-of-range id would
be clamped by the gather, so validate data in the input pipeline or run one step un-jitted.
"""

from typing import Optional

import jax
import numpy as np

from bert_jax.config import BertConfig


def is_concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def _check_range(name: str, x, upper: int, upper_name: str) -> None:
    if not is_concrete(x):
        return
    x = np.asarray(x)
    if x.size == 0:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside [0, {upper}) ({upper_name}={upper})")


def validate_inputs(config: BertConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                    encoder_hidden_states=None, encoder_attention_mask=None, cache_length: Optional[int] = None
                    ) -> None:
    """Raises ValueError naming the problem. `cache_length` is the KV-cache size when decoding."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if not np.issubdtype(input_ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integers, got dtype {input_ids.dtype}")
        batch, seq = input_ids.shape
        _check_range("input_ids", input_ids, config.vocab_size, "vocab_size")
    else:
        width = config.embedding_size or config.hidden_size
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != width:
            name = "embedding_size" if config.embedding_size else "hidden_size"
            raise ValueError(f"inputs_embeds must be [batch, seq, {name}={width}], "
                             f"got shape {tuple(inputs_embeds.shape)}")
        batch, seq = inputs_embeds.shape[:2]

    if seq == 0:
        name, given = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
        raise ValueError(f"{name} has sequence length 0 (shape {tuple(given.shape)}); every row needs at least "
                         f"one token ([CLS])")
    limit = cache_length if cache_length is not None else config.max_position_embeddings
    if seq + config.position_offset > config.max_position_embeddings:
        offset = f" minus position_offset={config.position_offset}" if config.position_offset else ""
        raise ValueError(f"sequence length {seq} exceeds max_position_embeddings="
                         f"{config.max_position_embeddings}{offset}")
    if cache_length is not None and seq > cache_length:
        raise ValueError(f"sequence length {seq} exceeds the KV cache length {cache_length} (see init_cache)")

    if attention_mask is not None:
        shape = tuple(attention_mask.shape)
        if cache_length is not None:
            ok = len(shape) == 2 and shape[0] == batch and seq <= shape[1] <= limit
            expected = f"[batch={batch}, total length <= {limit}] while decoding with a cache"
        else:
            ok = shape in ((batch, seq), (batch, seq, seq))
            expected = f"[batch={batch}, seq={seq}] or [batch, seq, seq]"
        if not ok:
            raise ValueError(f"attention_mask has shape {shape}; expected {expected}")

    if token_type_ids is not None:
        if tuple(token_type_ids.shape) != (batch, seq):
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}; expected {(batch, seq)}")
        if config.type_vocab_size == 0:
            # No token-type table: all-zero types (what a generic pipeline passes) are fine, others are not.
            if is_concrete(token_type_ids) and np.any(np.asarray(token_type_ids) != 0):
                raise ValueError("token_type_ids has non-zero values but the config has no token types "
                                 "(type_vocab_size=0)")
        else:
            _check_range("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")

    if position_ids is not None:
        if position_ids.ndim != 2 or position_ids.shape[1] != seq or position_ids.shape[0] not in (1, batch):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected [{batch} or 1, {seq}]")
        _check_range("position_ids", position_ids, config.max_position_embeddings, "max_position_embeddings")

    if encoder_hidden_states is not None:
        if not config.add_cross_attention:
            raise ValueError("encoder_hidden_states given but the config has add_cross_attention=False")
        if (encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch
                or encoder_hidden_states.shape[-1] != config.hidden_size):
            raise ValueError(f"encoder_hidden_states must be [batch={batch}, src_len, hidden_size="
                             f"{config.hidden_size}], got {tuple(encoder_hidden_states.shape)}")
        if encoder_attention_mask is not None and tuple(encoder_attention_mask.shape) != tuple(
                encoder_hidden_states.shape[:2]):
            raise ValueError(f"encoder_attention_mask has shape {tuple(encoder_attention_mask.shape)}; expected "
                             f"{tuple(encoder_hidden_states.shape[:2])}")
    elif encoder_attention_mask is not None:
        raise ValueError("encoder_attention_mask given without encoder_hidden_states")
