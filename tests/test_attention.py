"""Attention kernels: every implementation that runs on CPU agrees with `xla` (the reference);
fallbacks and errors. Pallas kernels run in interpret mode here; on a GPU/TPU they run compiled."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bert_jax
from bert_jax.modeling import attention
from bert_jax.modeling.attention import AttentionCall, select_kernel
from tests import cases

SEQ = 128  # the TPU flash kernel tiles keys in blocks of 128
TOL = {"float32": 1e-5, "bfloat16": 2e-2}


@pytest.fixture(scope="module")
def setup():
    config = bert_jax.BertConfig(**dict(cases.TINY, hidden_size=64, num_attention_heads=2, max_position_embeddings=128))
    params = bert_jax.init_params(bert_jax.BertModel(config), jax.random.PRNGKey(0))
    rs = np.random.RandomState(0)
    ids = rs.randint(1, 99, (2, SEQ))
    mask = np.ones((2, SEQ), np.int32)
    mask[1, 90:] = 0
    return config, params, jnp.asarray(ids), jnp.asarray(mask)


def _run(config, params, impl, dtype, **inputs):
    model = bert_jax.BertModel(config.replace(attention_impl=impl, dtype=dtype))
    return jax.jit(model.apply)({"params": params}, **inputs).last_hidden_state.astype(jnp.float32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["dot_product", "pallas_gpu", "pallas_tpu"])
def test_kernels_match_xla_on_padded_batch(setup, impl, dtype):
    config, params, ids, mask = setup
    ref = _run(config, params, "xla", dtype, input_ids=ids, attention_mask=mask)
    out = _run(config, params, impl, dtype, input_ids=ids, attention_mask=mask)
    # pallas_gpu takes one segment-id array for queries and keys, so padded queries attend to padded
    # keys there; outputs at padding positions are meaningless in every implementation.
    valid = np.asarray(mask, bool) if impl == "pallas_gpu" else np.ones(mask.shape, bool)
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu", "dot_product"])
def test_kernels_match_xla_on_packed_and_causal(setup, impl):
    config, params, ids, _ = setup
    sequence_ids = jnp.asarray(np.repeat([[1] * 50 + [2] * 60 + [0] * 18], 2, axis=0))
    valid = np.asarray(sequence_ids) > 0
    ref = _run(config, params, "xla", "float32", input_ids=ids, sequence_ids=sequence_ids)
    out = _run(config, params, impl, "float32", input_ids=ids, sequence_ids=sequence_ids)
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=1e-5)
    decoder = config.replace(is_decoder=True)
    ref = _run(decoder, params, "xla", "float32", input_ids=ids)
    out = _run(decoder, params, impl, "float32", input_ids=ids)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_pallas_gradients_match_xla(setup, impl):
    from jax.experimental.pallas import tpu as pltpu
    config, params, ids, mask = setup

    def grads(impl):
        model = bert_jax.BertModel(config.replace(attention_impl=impl))
        # only real tokens count: pallas_gpu's outputs at padding positions differ by design
        loss = lambda p: jnp.sum(model.apply({"params": p}, ids, mask).last_hidden_state ** 2 * mask[..., None])
        return jax.jit(jax.grad(loss))(params)

    ref = grads("xla")
    if impl == "pallas_tpu" and jax.default_backend() != "tpu":
        # The backward kernel is traced after the forward returns: interpret mode must cover the whole step.
        with pltpu.force_tpu_interpret_mode():
            out = grads(impl)
    else:
        out = grads(impl)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4), ref, out)


def test_fallbacks_and_errors(caplog):
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        attention._log_fallback_once.cache_clear()
        kernel = select_kernel("pallas_gpu", AttentionCall(needs_probs=True, q_len=16, k_len=16))
        assert kernel is attention.xla_attention
        select_kernel("pallas_gpu", AttentionCall(needs_probs=True, q_len=16, k_len=16))
    assert sum("needs_probs" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert select_kernel("pallas_tpu", AttentionCall(has_bias=True, q_len=8, k_len=8)) is attention.xla_attention
    assert select_kernel("pallas_tpu", AttentionCall(dense_mask_only=True, q_len=8, k_len=8)) \
        is attention.xla_attention
    assert select_kernel("pallas_gpu", AttentionCall(q_len=8, k_len=5)) is attention.xla_attention
    assert select_kernel("pallas_tpu", AttentionCall(q_len=200, k_len=200)) is attention.xla_attention
    assert select_kernel("pallas_tpu", AttentionCall(q_len=16, k_len=16)) is attention.xla_attention
    assert select_kernel("pallas_gpu", AttentionCall(q_len=16, k_len=16)) is attention.KERNELS["pallas_gpu"]
    assert select_kernel("pallas_tpu", AttentionCall(q_len=256, k_len=256)) is attention.KERNELS["pallas_tpu"]
    assert select_kernel("dot_product", AttentionCall(dropout=True)) is attention.xla_attention
    if jax.default_backend() == "cpu":
        assert select_kernel("auto", AttentionCall()) is attention.xla_attention
        with pytest.raises(ValueError, match="needs a GPU"):
            select_kernel("cudnn", AttentionCall())


def test_output_attentions_and_relative_positions_use_xla(setup):
    config, params, ids, mask = setup
    model = bert_jax.BertModel(config.replace(attention_impl="pallas_tpu"))
    out = model.apply({"params": params}, ids, mask, output_attentions=True)
    assert len(out.attentions) == config.num_hidden_layers
    ref = bert_jax.BertModel(config).apply({"params": params}, ids, mask)
    np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_xla_on_gpu(setup):
    config, params, ids, mask = setup
    ref = _run(config, params, "xla", "bfloat16", input_ids=ids, attention_mask=mask)
    out = _run(config, params, "cudnn", "bfloat16", input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(out, ref, atol=2e-2, rtol=2e-2)


def test_auto_selects_by_platform_dtype_and_shape(monkeypatch):
    """`auto`: cuDNN on GPU only for fp16/bf16 and head dims it takes (multiples of 8 up to 128);
    fp32 or an odd head dim falls back to `xla`. Pallas flash on TPU; `xla` on CPU."""
    call = lambda **k: AttentionCall(q_len=128, k_len=128, **k)
    monkeypatch.setattr(attention, "target_platform", lambda: "gpu")
    assert select_kernel("auto", call(dtype="bfloat16", head_dim=64)) is attention.KERNELS["cudnn"]
    assert select_kernel("auto", call(dtype="float16", head_dim=128)) is attention.KERNELS["cudnn"]
    assert select_kernel("auto", call(dtype="float32", head_dim=64)) is attention.xla_attention
    assert select_kernel("auto", call(dtype="bfloat16", head_dim=60)) is attention.xla_attention
    assert select_kernel("auto", call(dtype="bfloat16", head_dim=160)) is attention.xla_attention
    assert select_kernel("auto", call(dtype="bfloat16", head_dim=64, dropout=True)) is attention.xla_attention
    assert select_kernel("cudnn", call(dtype="float32", head_dim=64)) is attention.xla_attention  # logged fallback
    monkeypatch.setattr(attention, "target_platform", lambda: "tpu")
    assert select_kernel("auto", call(dtype="float32", head_dim=64)) is attention.KERNELS["pallas_tpu"]
    assert select_kernel("auto", AttentionCall(q_len=100, k_len=100)) is attention.xla_attention
    monkeypatch.setattr(attention, "target_platform", lambda: "cpu")
    assert select_kernel("auto", call(dtype="bfloat16", head_dim=64)) is attention.xla_attention


def test_target_platform_follows_the_mesh():
    """An ahead-of-time compile sets a mesh of the target's devices; the kernel choice follows it."""
    from jax.sharding import AxisType
    assert attention.target_platform() == jax.default_backend()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        assert attention.target_platform() == "cpu"


def test_pallas_tpu_gradients_match_xla(setup):
    """The interpreted TPU kernel's backward (traced under interpret mode too) equals `xla`'s."""
    config, params, ids, mask = setup

    def loss(impl):
        model = bert_jax.BertModel(config.replace(attention_impl=impl))
        valid = mask[..., None].astype(jnp.float32)  # outputs at padding positions are not compared
        return lambda p: jnp.sum((model.apply({"params": p}, ids, mask).last_hidden_state * valid) ** 2)
    ref = jax.jit(jax.grad(loss("xla")))(params)
    out = jax.jit(jax.grad(loss("pallas_tpu")))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4), ref, out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_xla_heads_major_layout_computes_the_same(dtype):
    """`xla_attention(heads_major=True)` (the CPU default) only transposes operands: context, probabilities
    and gradients equal the einsum layout's with a padding mask, a score bias, a head mask and dropout."""
    rs = np.random.RandomState(0)
    b, q, k, n, d = 2, 16, 24, 3, 8
    query, key, value = (jnp.asarray(rs.randn(b, length, n, d), dtype) for length in (q, k, k))
    mask = jnp.asarray(rs.rand(b, 1, 1, k) > 0.2)
    bias = jnp.asarray(rs.randn(1, n, q, k), jnp.float32)
    head_mask = jnp.asarray([1.0, 0.0, 0.5]).reshape(1, n, 1, 1)
    kwargs = dict(mask=mask, bias=bias, head_mask=head_mask, dropout_rate=0.1, dropout_rng=jax.random.PRNGKey(3),
                  return_probs=True)

    def loss(layout, q_, k_, v_):
        context, probs = attention.xla_attention(q_, k_, v_, heads_major=layout, **kwargs)
        return jnp.sum(context.astype(jnp.float32) ** 2), (context, probs)

    outs = {layout: jax.jit(jax.value_and_grad(functools.partial(loss, layout), argnums=(0, 1, 2), has_aux=True))(
        query, key, value) for layout in (False, True)}
    (_, (ctx0, probs0)), grads0 = outs[False]
    (_, (ctx1, probs1)), grads1 = outs[True]
    assert ctx1.shape == ctx0.shape == (b, q, n, d) and probs1.shape == (b, n, q, k)
    tol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(probs1), np.asarray(probs0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ctx1, np.float32), np.asarray(ctx0, np.float32), atol=tol, rtol=tol)
    for g1, g0 in zip(grads1, grads0):
        np.testing.assert_allclose(np.asarray(g1, np.float32), np.asarray(g0, np.float32), atol=tol, rtol=tol)
    # The dropout really dropped (so the comparison covered it) and the head mask zeroed head 1.
    assert float(jnp.mean(probs0[:, 0] == 0)) > 0.2 and float(jnp.max(probs0[:, 1])) == 0.0


def test_xla_attention_is_heads_major_on_cpu_only(monkeypatch):
    """The layout follows the compile target: heads-major where XLA:CPU compiles, the einsum layout for
    GPU/TPU targets (whose layout assignment absorbs the transposes)."""
    q = jnp.ones((1, 4, 2, 8))
    seen = []
    real_matmul = jnp.matmul

    def spy(*args, **kwargs):
        seen.append(True)
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(attention.jnp, "matmul", spy)
    for platform, expected in (("cpu", True), ("tpu", False), ("gpu", False)):
        seen.clear()
        monkeypatch.setattr(attention, "target_platform", lambda p=platform: p)
        attention.xla_attention(q, q, q)
        assert bool(seen) is expected, platform
