"""Hugging Face checkpoint import and export.

A checkpoint directory holds `config.json` and the weights as `model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` (reading .bin needs torch). Names map one to
one: the flax path `bert/encoder/layer/0/attention/self/query/kernel` is the PyTorch key
`bert.encoder.layer.0.attention.self.query.weight`, with Linear weights transposed ([out, in] ->
[in, out]) and the attention projections reshaped to [embed, heads, head_dim] / [heads, head_dim,
embed].
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Mapping, Optional, Tuple, Type, Union

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from bert_jax.config import BertConfig
from bert_jax.modeling import MODEL_CLASSES, BertModel, build_model, dummy_inputs, init_params

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"

# Buffers and tied copies a checkpoint may carry that have no parameter of their own here.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
_TIED_KEYS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")

ModelClass = Union[str, Type[nn.Module]]


# ------------------------------------------------------------------------------------------------
# Name and layout mapping
def torch_key(path: Tuple[str, ...]) -> str:
    """Flax param path -> PyTorch state-dict key."""
    *modules, leaf = path
    if leaf in ("kernel", "embedding") or (leaf == "scale" and modules[-1] == "LayerNorm"):
        leaf = "weight"
    return ".".join(modules + [leaf])


def _kernel_in_axes(path: Tuple[str, ...]) -> int:
    """Number of leading input axes of a DenseGeneral kernel (the attention output takes [heads, head_dim])."""
    return 2 if len(path) >= 4 and path[-4] in ("attention", "crossattention") and path[-3:-1] == ("output",
                                                                                                   "dense") else 1


def torch_to_flax(path: Tuple[str, ...], tensor: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Converts one PyTorch tensor to the layout of the flax leaf at `path` with `shape`."""
    if path[-1] == "kernel":
        tensor = tensor.T
    if int(np.prod(tensor.shape)) != int(np.prod(shape)) or (tensor.ndim == len(shape) and tensor.shape != shape):
        raise ValueError(f"shape mismatch for {torch_key(path)}: checkpoint has "
                         f"{tuple(tensor.shape if path[-1] != 'kernel' else tensor.T.shape)}, the model expects "
                         f"{_torch_shape(path, shape)} (flax {shape})")
    return tensor.reshape(shape)


def flax_to_torch(path: Tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        n_in = _kernel_in_axes(path)
        value = value.reshape(int(np.prod(value.shape[:n_in])), -1).T
    elif path[-1] == "bias":
        value = value.reshape(-1)
    return np.ascontiguousarray(value)


def _torch_shape(path, shape) -> Tuple[int, ...]:
    return tuple(flax_to_torch(path, np.zeros(shape, np.int8)).shape)


# ------------------------------------------------------------------------------------------------
# Reading weights
def read_state_dict(directory: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory as numpy arrays (bf16 kept as ml_dtypes.bfloat16)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    safe, index, binary = (os.path.join(directory, n) for n in (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS))
    if os.path.isfile(safe):
        return _read_safetensors(safe)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index} has no weight_map")
        state = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(directory, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"{index} names shard {shard}, which is missing from {directory}")
            state.update(_read_safetensors(shard_path))
        return state
    if os.path.isfile(binary):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{binary} is a PyTorch pickle and reading it needs torch "
                              f"(pip install torch), or convert the checkpoint to safetensors") from e
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated/corrupt files
            raise ValueError(f"cannot read {binary} (corrupt or truncated?): {e}") from e
        return {k: _torch_to_numpy(v) for k, v in state.items()}
    raise FileNotFoundError(f"no {SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS} in {directory}")


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises SafetensorError / OSError on truncated files
        raise ValueError(f"cannot read {path} (corrupt or truncated?): {e}") from e


def _torch_to_numpy(t) -> np.ndarray:
    import torch
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _normalise_keys(state: Mapping[str, np.ndarray], wants_prefix: bool) -> Dict[str, np.ndarray]:
    """Legacy gamma/beta -> weight/bias, and the `bert.` prefix added or removed as the model needs."""
    out = {}
    has_prefix = any(k.startswith("bert.") for k in state)
    for key, value in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if wants_prefix and not has_prefix and not key.startswith(("cls.", "classifier.", "qa_outputs.")):
            key = "bert." + key
        elif not wants_prefix and has_prefix and key.startswith("bert."):
            key = key[len("bert."):]
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------
def load_hf_checkpoint(path: Union[str, os.PathLike], model_class: ModelClass = BertModel,
                       rng: Optional[jax.Array] = None, **config_overrides) -> Tuple[BertConfig, dict]:
    """Reads an HF BERT directory into `(config, params)` for `model_class`.

    Params the checkpoint lacks (a new task head) are randomly initialised and listed in a warning;
    checkpoint tensors the model has no place for are listed too. A shape mismatch raises naming
    the key and both shapes. `config_overrides` set BertConfig fields (e.g. num_labels=3,
    dtype='bfloat16').
    """
    ckpt_dir = os.fspath(path)
    config = BertConfig.from_hf(ckpt_dir, **config_overrides)
    model = build_model(model_class, config)
    state = _normalise_keys(read_state_dict(ckpt_dir), wants_prefix=not isinstance(model, BertModel))
    shapes = traverse_util.flatten_dict(nn.meta.unbox(
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(model))["params"])))
    param_dtype = np.dtype(config.param_dtype) if config.param_dtype != "bfloat16" else jax.numpy.bfloat16

    flat, missing = {}, []
    for path, leaf in shapes.items():
        key = torch_key(path)
        if key not in state:
            missing.append(path)
            continue
        flat[path] = torch_to_flax(path, np.asarray(state.pop(key)), tuple(leaf.shape)).astype(param_dtype)
    if missing:
        fresh = traverse_util.flatten_dict(init_params(model, rng))
        for path in missing:
            flat[path] = np.asarray(fresh[path])
        logger.warning("%s: initialised %d parameter(s) missing from the checkpoint at %s: %s",
                       type(model).__name__, len(missing), ckpt_dir, [torch_key(p) for p in missing])
    tied = _TIED_KEYS if config.tie_word_embeddings else _TIED_KEYS[1:]  # decoder.bias is always cls.predictions.bias
    unexpected = [k for k in state if not k.endswith(_IGNORED_SUFFIXES) and k not in tied]
    if unexpected:
        logger.warning("%s: checkpoint tensors not used by the model: %s", type(model).__name__, sorted(unexpected))
    params = jax.tree.map(jax.numpy.asarray, traverse_util.unflatten_dict(flat))
    return config, params


def to_torch_state_dict(params, model: nn.Module) -> Dict[str, np.ndarray]:
    """Flax params -> PyTorch-layout numpy arrays keyed as transformers names them."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    return {torch_key(path): flax_to_torch(path, np.asarray(jax.device_get(v))) for path, v in flat.items()}


def save_hf_checkpoint(path: Union[str, os.PathLike], config: BertConfig, params, model_class: ModelClass = BertModel
                       ) -> None:
    """Writes `config.json` + `model.safetensors` that `transformers.<class>.from_pretrained` loads
    with no missing or unexpected keys (tied decoder weights are left out, as transformers does)."""
    from safetensors.numpy import save_file
    model = build_model(model_class, config)
    hf_name = next(name for name, cls in MODEL_CLASSES.items() if isinstance(model, cls) and type(model) is cls)
    os.makedirs(path, exist_ok=True)
    config.to_json_file(os.path.join(path, "config.json"), architectures=[hf_name])
    state = to_torch_state_dict(params, model)
    save_file(state, os.path.join(path, SAFE_WEIGHTS), metadata={"format": "pt"})
