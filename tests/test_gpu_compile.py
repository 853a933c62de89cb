"""Deviceless GPU compilation (no GPU, no driver): a tiny BERT's steps compiled for an H200 from its
target description (configs/gpu_targets/h200.txtpb) with the CUDA PJRT plugin, checking which
attention kernel `auto` put in the compiled HLO (cuDNN fused attention for bf16, `xla` for fp32).

Skipped unless the CUDA plugin is importable. The plugin and cuDNN (whose version the cuDNN attention
path reads while tracing) go into a separate folder, never into .venv (~1.6 GB):

    pip install --no-deps --target /tmp/cuda_site 'jax-cuda12-plugin==0.10.2' 'jax-cuda12-pjrt==0.10.2' \\
        'nvidia-cudnn-cu12>=9.8,<10'
    JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=/tmp/cuda_site:. .venv/bin/python -m pytest -p no:xdist \\
        tests/test_gpu_compile.py

(JAX_SKIP_CUDA_CONSTRAINTS_CHECK: without a CUDA runtime installed the plugin's version check fails.)
Run it in a process of its own: the CUDA backend must not have been initialised without that variable.
"""

import importlib.util
import os

import pytest

os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
HAS_PLUGIN = any(importlib.util.find_spec(n) is not None for n in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
pytestmark = [pytest.mark.tpu_compile, pytest.mark.skipif(not HAS_PLUGIN, reason="needs the CUDA PJRT plugin")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bert_jax  # noqa: E402
from bert_jax import aot  # noqa: E402
from bert_jax import sharding as S  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H200 = os.path.join(ROOT, "configs", "gpu_targets", "h200.txtpb")
CUDNN = "__cudnn$fmha"
CONFIG = dict(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
              max_position_embeddings=128, type_vocab_size=2, attention_probs_dropout_prob=0.0, attention_impl="auto")


def _compile(dtype, topology="1xH200", ici=(1, -1, 1)):
    devices = aot.target_devices(aot.parse_topology(topology), H200)
    mesh = S.create_mesh(S.MeshConfig(ici_parallelism=ici), devices)
    model = bert_jax.BertForPreTraining(bert_jax.BertConfig(**CONFIG, dtype=dtype))
    params = S.abstract_params(model, mesh, S.DEFAULT_RULES)
    spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=S.batch_sharding(mesh))
    batch = {"input_ids": spec((8, 128)), "attention_mask": spec((8, 128)), "labels": spec((8, 128)),
             "next_sentence_label": spec((8,))}

    def train(p, b):
        return jax.grad(lambda p: model.apply({"params": p}, **b).loss)(p)
    with S.activation_context(mesh, S.DEFAULT_RULES):
        return jax.jit(train).lower(params, batch).compile()


def test_auto_compiles_cudnn_attention_for_bf16_on_h200():
    compiled = _compile("bfloat16")
    assert CUDNN in compiled.as_text()


def test_auto_keeps_xla_attention_for_fp32():
    assert CUDNN not in _compile("float32").as_text()


def test_cudnn_attention_on_a_sharded_8xh200_node():
    assert CUDNN in _compile("bfloat16", "8xH200", (2, 2, 2)).as_text()
