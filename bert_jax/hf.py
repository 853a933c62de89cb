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
from typing import Any, Dict, Mapping, Optional, Tuple, Type, Union

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from bert_jax import architectures
from bert_jax.config import BertConfig
from bert_jax.modeling import BertModel, build_model, dummy_inputs, init_params

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
    if leaf in ("kernel", "embedding") or (leaf == "scale" and modules[-1] in ("LayerNorm", "final_norm")):
        leaf = "weight"
    return ".".join(modules + [leaf])


def _kernel_in_axes(path: Tuple[str, ...]) -> int:
    """Number of leading input axes of a DenseGeneral kernel (the attention output takes [heads, head_dim])."""
    return 2 if len(path) >= 4 and path[-4] in ("attention", "crossattention") and path[-3:-1] == ("output",
                                                                                                   "dense") else 1


def torch_to_flax(path: Tuple[str, ...], tensor: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Converts one PyTorch tensor to the layout of the flax leaf at `path` with `shape`."""
    expected = _torch_shape(path, shape)  # compared in PyTorch layout: a same-size tensor of another shape is wrong too
    if tuple(tensor.shape) != expected:
        raise ValueError(f"shape mismatch for {torch_key(path)}: checkpoint has {tuple(tensor.shape)}, the model "
                         f"expects {expected} (flax {shape})")
    if path[-1] == "kernel":
        tensor = tensor.T
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
# Scanned (stacked) <-> per-layer layouts
def _layer_axis(path: Tuple[str, ...]) -> Optional[int]:
    """Index of `layer` in an encoder path, or None for params outside the layer stack."""
    for i in range(1, len(path) - 1):
        if path[i] == "layer" and path[i - 1] == "encoder":
            return i
    return None


def unstack_layers(flat: Mapping[Tuple[str, ...], Any], num_layers: int) -> Dict[Tuple[str, ...], Any]:
    """Scanned layout (`encoder/layer/...` leaves with a leading [layers] axis) -> `encoder/layer/<i>/...`.
    Leaves may be arrays or `jax.ShapeDtypeStruct`s."""
    out = {}
    for path, value in flat.items():
        i = _layer_axis(path)
        if i is None or path[i + 1].isdigit():
            out[path] = value
            continue
        if value.shape[0] != num_layers:
            raise ValueError(f"{'/'.join(path)} has leading axis {value.shape[0]}, expected num_hidden_layers="
                             f"{num_layers}")
        for layer in range(num_layers):
            out[path[:i + 1] + (str(layer),) + path[i + 1:]] = (
                jax.ShapeDtypeStruct(value.shape[1:], value.dtype) if isinstance(value, jax.ShapeDtypeStruct)
                else value[layer])
    return out


def stack_layers(flat: Mapping[Tuple[str, ...], Any], num_layers: int) -> Dict[Tuple[str, ...], Any]:
    """`encoder/layer/<i>/...` -> scanned layout with a leading [layers] axis."""
    out, groups = {}, {}
    for path, value in flat.items():
        i = _layer_axis(path)
        if i is None or not path[i + 1].isdigit():
            out[path] = value
            continue
        groups.setdefault(path[:i + 1] + path[i + 2:], {})[int(path[i + 1])] = value
    for path, layers in groups.items():
        if sorted(layers) != list(range(num_layers)):
            raise ValueError(f"{'/'.join(path)}: found layers {sorted(layers)}, expected 0..{num_layers - 1}")
        out[path] = np.stack([np.asarray(layers[k]) for k in range(num_layers)])
    return out


def convert_layer_layout(params, num_layers: int, scan_layers: bool):
    """Converts a params tree between the unrolled and the scanned (`scan_layers=True`) layouts."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    flat = stack_layers(flat, num_layers) if scan_layers else unstack_layers(flat, num_layers)
    return traverse_util.unflatten_dict({k: jax.numpy.asarray(v) for k, v in flat.items()})


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
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{index} is not valid UTF-8 JSON: {e}") from None
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not weight_map or not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index} has no weight_map (a JSON object of tensor name -> shard file)")
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
                       rng: Optional[jax.Array] = None, *, allow_missing: bool = False, host_arrays: bool = False,
                       **config_overrides) -> Tuple[BertConfig, dict]:
    """Reads an HF BERT directory into `(config, params)` for `model_class`.

    Params the checkpoint lacks that a BERT checkpoint may lack (a new task head, the pooler,
    cross-attention of a decoder warm-started from an encoder) are randomly initialised and listed in
    a warning; checkpoint tensors the model has no place for are listed too. A shape mismatch raises
    naming the key and both shapes. config.json's `model_type` picks the architecture: "bert",
    "roberta", "roberta-prelayernorm", "electra", "nomic_bert" or "modernbert" (their keys, fused
    projections and implied switches, see
    `bert_jax.architectures`; `model_class` may also be named as transformers names it, e.g.
    "RobertaForMaskedLM"). Another model_type raises ValueError, as do missing tensors of the
    embeddings or encoder layers (another architecture's names, a truncated conversion);
    `allow_missing=True` reads it anyway as BERT and initialises what is missing (with the warning). `config_overrides` set
    BertConfig fields (e.g. num_labels=3, dtype='bfloat16'). `host_arrays=True`: see
    `params_from_state_dict`.
    """
    ckpt_dir = os.fspath(path)
    config = BertConfig.from_hf(ckpt_dir, allow_other_model_type=allow_missing, **config_overrides)
    # RoBERTa / ELECTRA / ... checkpoints: their keys renamed to BERT's (bert_jax.architectures).
    state = architectures.to_bert_keys(read_state_dict(ckpt_dir), config, source=ckpt_dir)
    return config, params_from_state_dict(state, config, architectures.resolve_model_class(model_class), rng=rng,
                                          source=ckpt_dir, allow_missing=allow_missing, host_arrays=host_arrays)


def _is_encoder_body(path: Tuple[str, ...]) -> bool:
    """Whether a flax param path belongs to the embeddings or the encoder layers (not the pooler, a
    head, or cross-attention, which a BERT checkpoint may legitimately lack)."""
    body = path[1:] if path and path[0] == "bert" else path
    return bool(body) and body[0] in ("embeddings", "encoder") and "crossattention" not in path


def params_from_state_dict(state: Mapping[str, np.ndarray], config: BertConfig, model_class: ModelClass = BertModel,
                           rng: Optional[jax.Array] = None, source: str = "the checkpoint",
                           allow_missing: bool = False, host_arrays: bool = False) -> dict:
    """PyTorch-layout tensors keyed as transformers names them -> params of `model_class` (either layer
    layout, as `config.scan_layers` says). Missing params are initialised from `rng` and logged, unused
    tensors are logged, shape mismatches raise; missing embedding/encoder-layer tensors raise ValueError
    unless `allow_missing` (see `load_hf_checkpoint`); `source` names the checkpoint in those messages.
    Shared by the HF and the Google TF1 (`bert_jax.tf1`) importers.

    `host_arrays=True`: numpy leaves, and the params the checkpoint lacks are left out rather than
    initialised, so that a sharded caller places each leaf straight onto its shards and initialises
    the rest sharded (the default puts every leaf, whole, on the default device)."""
    model = build_model(model_class, config)
    state = _normalise_keys(state, wants_prefix=not isinstance(model, BertModel))
    if not config.tie_word_embeddings and _TIED_KEYS[1] in state:
        # Untied, transformers 5 unties the decoder bias too and uses decoder.bias (cls.predictions.bias is then
        # unused); transformers 4 keeps them tied and saves only cls.predictions.bias.
        state["cls.predictions.bias"] = state.pop(_TIED_KEYS[1])
    layers = config.num_hidden_layers
    shapes = traverse_util.flatten_dict(nn.meta.unbox(
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(model))["params"])))
    if config.scan_layers:  # map names per layer, stack at the end
        shapes = unstack_layers(shapes, layers)
    param_dtype = np.dtype(config.param_dtype) if config.param_dtype != "bfloat16" else jax.numpy.bfloat16

    flat, missing = {}, []
    for path, leaf in shapes.items():
        key = torch_key(path)
        if key not in state:
            missing.append(path)
            continue
        flat[path] = torch_to_flax(path, np.asarray(state.pop(key)), tuple(leaf.shape)).astype(param_dtype)
    body = [p for p in missing if _is_encoder_body(p)]
    if body and not allow_missing:
        total = sum(_is_encoder_body(p) for p in shapes)
        names = [torch_key(p) for p in body]
        raise ValueError(f"{source}: {len(body)} of the {total} embedding/encoder tensors {type(model).__name__} needs "
                         f"are missing ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): not a BERT "
                         f"checkpoint of this configuration (another architecture, fewer layers, a truncated "
                         f"conversion?). Pass allow_missing=True to initialise them randomly.")
    if missing and not host_arrays:
        fresh = traverse_util.flatten_dict(init_params(model, rng))
        if config.scan_layers:
            fresh = unstack_layers(fresh, layers)
        for path in missing:
            flat[path] = np.asarray(fresh[path])
    if missing:
        logger.warning("%s: %s %d parameter(s) missing from the checkpoint at %s: %s", type(model).__name__,
                       "left out (for the caller to initialise)" if host_arrays else "initialised", len(missing),
                       source, [torch_key(p) for p in missing])
    tied = _TIED_KEYS if config.tie_word_embeddings else _TIED_KEYS[1:]  # decoder.bias is always cls.predictions.bias
    unexpected = [k for k in state if not k.endswith(_IGNORED_SUFFIXES) and k not in tied]
    if unexpected:
        logger.warning("%s: checkpoint tensors not used by the model: %s", type(model).__name__, sorted(unexpected))
    if config.scan_layers:
        flat = stack_layers(flat, layers)
    if host_arrays:
        return traverse_util.unflatten_dict(flat)
    return jax.tree.map(jax.numpy.asarray, traverse_util.unflatten_dict(flat))


def to_torch_state_dict(params, model: nn.Module) -> Dict[str, np.ndarray]:
    """Flax params (either layer layout) -> PyTorch-layout numpy arrays keyed as transformers names them."""
    flat = unstack_layers(traverse_util.flatten_dict(nn.meta.unbox(params)), model.config.num_hidden_layers)
    return {torch_key(path): flax_to_torch(path, np.asarray(jax.device_get(v))) for path, v in flat.items()}


def save_hf_checkpoint(path: Union[str, os.PathLike], config: BertConfig, params, model_class: ModelClass = BertModel
                       ) -> None:
    """Writes `config.json` + `model.safetensors` that `transformers.<class>.from_pretrained` loads
    with no missing or unexpected keys (tied decoder weights are left out, as transformers does; with
    tie_word_embeddings=False the bias is written as both cls.predictions.bias and decoder.bias).

    `config.model_type` picks the architecture written (BERT, RoBERTa, RoBERTa-PreLayerNorm, ELECTRA,
    NomicBERT, ModernBERT;
    see `bert_jax.architectures`); switches that architecture cannot represent raise ValueError
    naming the field, before anything is written."""
    from safetensors.numpy import save_file
    model = build_model(architectures.resolve_model_class(model_class), config)
    hf_config = architectures.hf_config(config, model)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    state = to_torch_state_dict(params, model)
    if not config.tie_word_embeddings and "cls.predictions.bias" in state:
        state[_TIED_KEYS[1]] = state["cls.predictions.bias"].copy()  # untied, transformers 5 reads decoder.bias
    state = architectures.from_bert_keys(state, config, model)
    save_file(state, os.path.join(path, SAFE_WEIGHTS), metadata={"format": "pt"})
