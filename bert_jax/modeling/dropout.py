"""Dropout from raw random bits compared to an integer threshold.

`flax.linen.Dropout` draws one 32-bit word per element and turns it into a float uniform before
comparing (`jax.random.bernoulli`); with JAX's partitionable threefry each of those words costs a full
threefry-2x32 hash, of which half the output is thrown away. Here each element takes 16 random bits:

* threefry keys: one hash of a counter gives two 32-bit words = four elements' 16-bit draws (4x fewer
  hashes than `nn.Dropout`), with the counters laid out like `jax.random.bits`'s partitionable ones
  (one per position of the output's leading axes), so a sharded array draws its shards locally and
  the mask does not depend on the mesh;
* other key implementations (`rbg`, `unsafe_rbg`): `jax.random.bits` words split into two halves.

An element is dropped when its 16-bit draw is below `threshold = round(rate * 2**16)`, so the drop
probability is `threshold / 2**16` (within 2**-17 of `rate`), and kept values are scaled by
`1 / (1 - threshold / 2**16)`: every element is independent and the output equals the input in
expectation exactly. Masks are reproducible from the key (same key, same mask) but differ from
`nn.Dropout`'s for the same key.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

Array = jax.Array

BITS = 16
_LEVELS = 1 << BITS


def threshold(rate: float) -> int:
    """The integer threshold of a dropout `rate`: 16-bit draws below it are dropped."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    return min(int(round(rate * _LEVELS)), _LEVELS - 1)


def keep_probability(rate: float) -> float:
    """The exact probability that an element is kept at `rate` (1 - threshold / 2**16)."""
    return 1.0 - threshold(rate) / _LEVELS


def _key_data_and_impl(rng: Array) -> Tuple[Array, str]:
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng), str(jax.random.key_impl(rng))
    return rng, str(jax.config.jax_default_prng_impl)


def _linear_iota(shape: Sequence[int]) -> Array:
    """uint32 row-major index of every position of `shape` (as `jax.random.bits`'s counters)."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return index


def random_bits16(rng: Array, shape: Sequence[int]) -> Array:
    """uint32 array of `shape` holding independent uniform 16-bit values (in the low half)."""
    shape = tuple(int(d) for d in shape)
    if not shape:
        return random_bits16(rng, (1,))[0]
    last = shape[-1]
    data, impl = _key_data_and_impl(rng)
    if "threefry" in impl:
        packed = shape[:-1] + (-(-last // 4),)  # one hash per 4 elements along the last axis
        if math.prod(packed) >= 2 ** 32:
            raise ValueError(f"dropout mask of shape {shape} needs more than 2**32 counters")
        data = data.reshape(-1)
        low = _linear_iota(packed)
        words = threefry2x32_p.bind(data[0], data[1], jnp.zeros_like(low), low)
    else:
        packed = shape[:-1] + (-(-last // 2),)
        words = (jax.random.bits(rng, packed, jnp.uint32),)
    halves = [part for w in words for part in (w & jnp.uint32(0xFFFF), w >> jnp.uint32(16))]
    return jnp.concatenate(halves, axis=-1)[..., :last]


def keep_mask(rng: Array, shape: Sequence[int], rate: float) -> Array:
    """bool [shape]: True where an element is kept (probability `keep_probability(rate)`, independently)."""
    with jax.named_scope("dropout"):
        return random_bits16(rng, shape) >= jnp.uint32(threshold(rate))


def dropout(x: Array, rate: float, rng: Array) -> Array:
    """Zeroes elements of `x` with probability ~`rate` and scales the rest so E[output] = x exactly."""
    if rate == 0.0:
        return x
    with jax.named_scope("dropout"):  # profiles (bert_jax.benchmark --profile) attribute the mask's cost by this
        keep = keep_mask(rng, x.shape, rate)
        return jnp.where(keep, x / jnp.asarray(keep_probability(rate), x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """`nn.Dropout`'s interface (`rate`, `deterministic`, the "dropout" rng stream) on `dropout` above."""

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng(self.rng_collection))
