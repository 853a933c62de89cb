"""Small building blocks shared by the encoder and the heads: initialisers with logical axis names,
Dense/LayerNorm factories, activations."""

from typing import Callable, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig

ACT_FNS: dict = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU: BERT checkpoints were trained with it
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def weight_init(config: BertConfig, axes: Tuple) -> Callable:
    """Truncation-free normal(initializer_range), as transformers initialises BERT."""
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def zeros_init(axes: Tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def dense(config: BertConfig, features: Union[int, Sequence[int]], kernel_axes: Tuple, name: str,
          axis: Union[int, Tuple[int, ...]] = -1) -> nn.DenseGeneral:
    """A Dense layer whose kernel is [*in, *out] with logical axis names `kernel_axes`."""
    features = (features,) if isinstance(features, int) else tuple(features)
    return nn.DenseGeneral(
        features=features if len(features) > 1 else features[0], axis=axis,
        dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=weight_init(config, kernel_axes), bias_init=zeros_init(kernel_axes[-len(features):]),
        name=name)


def layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    # Flax reduces LayerNorm statistics in float32 even for bf16 inputs.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.dtype(config.dtype),
                        param_dtype=jnp.dtype(config.param_dtype),
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                        bias_init=zeros_init(("norm",)), name=name)
