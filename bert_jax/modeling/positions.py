"""Position schemes applied inside attention: rotary embeddings (RoPE), ALiBi biases and the
sliding-window (local attention) mask.

All take the model's `position_ids` ([B or 1, L]: restarting per packed sequence, offset while
decoding), so packed rows and padding behave as with learned positions.
"""

import math
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def rope_inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """theta ** (-2i / D) for i in [0, D/2): [D/2] float32 (Su et al., as transformers computes it)."""
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)


def apply_rotary(x: Array, position_ids: Array, theta) -> Array:
    """Rotates x [B, L, N, D] by its positions [B or 1, L] (rotate-half convention: dims i and i + D/2
    form a pair rotated by angle pos * theta^(-2i/D)). `theta` may be a traced scalar (scanned layers
    choose their theta per layer). Computed in float32, returned in x.dtype."""
    head_dim = x.shape[-1]
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (jnp.asarray(theta, jnp.float32) ** exponent)  # [D/2]
    angles = position_ids.astype(jnp.float32)[..., None] * inv_freq  # [B or 1, L, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B or 1, L, 1, D]
    x32 = x.astype(jnp.float32)
    half = head_dim // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def alibi_slopes(num_heads: int) -> List[float]:
    """ALiBi head slopes (Press et al. 2022): for n a power of two, 2^(-8i/n) for i = 1..n; otherwise the
    slopes of the closest smaller power of two m, followed by every other slope of 2m, up to n heads."""
    def power_of_two(n: int) -> List[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][:num_heads - closest]


def alibi_bias(q_positions: Array, k_positions: Array, num_heads: int) -> Array:
    """Symmetric ALiBi bias (MosaicBERT's bidirectional form): -slope_h * |pos_q - pos_k|.
    q_positions [B or 1, Q], k_positions [B or 1, K] -> [B or 1, N, Q, K] float32, added to the scaled scores."""
    slopes = jnp.asarray(alibi_slopes(num_heads), jnp.float32)
    distance = jnp.abs(q_positions[:, :, None].astype(jnp.float32) - k_positions[:, None, :].astype(jnp.float32))
    return -slopes[None, :, None, None] * distance[:, None, :, :]


def window_mask(q_positions: Array, k_positions: Array, window: int) -> Array:
    """Sliding-window mask (ModernBERT's `local_attention`): True where |pos_q - pos_k| <= window // 2.
    q_positions [B or 1, Q], k_positions [B or 1, K] -> [B or 1, 1, Q, K] bool."""
    distance = jnp.abs(q_positions[:, :, None] - k_positions[:, None, :])
    return (distance <= window // 2)[:, None, :, :]
