"""The `flash` Pallas kernel (bert_jax/modeling/flash.py): counter-based dropout, equality with the
`xla` reference drawing the same mask, the whole-model training step, and the TPU (Mosaic) lowering.

Off TPU/GPU the kernel runs in Pallas interpret mode, so shapes are tiny. Bit-for-bit comparisons
compile with XLA:CPU's YNNPACK dot fusion off: that library picks its matmul kernel (and so the
float32 summation order) by batch size, so the reference's batched einsum and the kernel's per-tile
dot round differently with it on; with XLA's own dot emitter both sum in the same order.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bert_jax
from bert_jax.modeling import attention, dropout, flash
from bert_jax.modeling.attention import AttentionCall, select_kernel
from tests import cases

B, N, D = 2, 2, 16
RATE = 0.1
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _compile(fn, *args):
    """jit(fn) compiled with YNNPACK dots off on CPU (see the module docstring); plain jit elsewhere."""
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options=NO_YNN if jax.default_backend() == "cpu" else None)


def _inputs(length, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q, k, v = (jax.random.normal(x, (B, length, N, D), jnp.float32) for x in keys)
    q_ids = jnp.ones((B, length), jnp.int32)
    kv_ids = q_ids.at[1, length * 2 // 3:].set(0)  # second row padded: its last third are pad keys
    return q, k, v, (q_ids, kv_ids)


def _reference(segments, causal=False, rate=RATE, rng=jax.random.PRNGKey(7)):
    q_ids, kv_ids = segments
    mask = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
    if causal:
        length = q_ids.shape[1]
        mask = jnp.logical_and(mask, jnp.tril(jnp.ones((length, length), bool)))

    def run(q, k, v):
        return attention.xla_attention(q, k, v, mask=mask, dropout_rate=rate, dropout_rng=rng,
                                       dropout_mask="counter")[0]
    return run


def _flash(segments, causal=False, rate=RATE, rng=jax.random.PRNGKey(7), block_sizes=None):
    def run(q, k, v):
        seed = flash.dropout_seed(rng)
        return flash.flash_attention(q, k, v, segment_ids=segments, causal=causal, dropout_rate=rate,
                                     dropout_seed=seed, block_sizes=block_sizes)
    return run


def _value_and_grads(fn, q, k, v):
    # A loss that weights every output element differently, so no gradient is symmetric by accident.
    weights = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * weights)
    return _compile(fn, q, k, v)(q, k, v), _compile(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)(q, k, v)


# --------------------------------------------------------------------------------- the dropout mask

def test_keep_threshold_is_exact():
    assert flash.keep_threshold(0.1) == round(0.9 * 2 ** 32) == 3865470566
    assert flash.keep_threshold(0.5) == 2 ** 31
    assert flash.keep_threshold(1.0) == 0
    assert flash.keep_threshold(0.0) == 2 ** 32 - 1  # 2**32 does not fit; rate 0 skips dropout anyway


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_fraction_and_independence(rate):
    shape = (4, 4, 256, 256)  # 1M elements
    keep = np.asarray(jax.jit(lambda s: flash.dropout_keep_mask(s, shape, rate))(jnp.int32(1234)))
    p, n = 1.0 - rate, keep.size
    assert abs(keep.mean() - p) < 4 * math.sqrt(p * rate / n)
    # Neighbours along each axis agree as often as independent draws would (p^2 + (1-p)^2).
    agree = p * p + rate * rate
    for axis in range(4):
        a, b = np.swapaxes(keep, axis, -1)[..., 1:], np.swapaxes(keep, axis, -1)[..., :-1]
        assert abs(np.mean(a == b) - agree) < 6 * math.sqrt(agree * (1 - agree) / a.size), axis
    other = np.asarray(flash.dropout_keep_mask(jnp.int32(1235), shape, rate))
    assert abs(np.mean(keep == other) - agree) < 0.01  # another seed: an unrelated mask


def test_xla_draws_the_dropout_module_mask_by_default():
    """`xla` draws `bert_jax.modeling.dropout.keep_mask` (the mask every other dropout site uses) and
    scales by its exact keep probability; "counter" is another draw."""
    q, k, v, _ = _inputs(64)

    @jax.jit
    def run(q, k, v):
        rng = jax.random.PRNGKey(7)
        default = attention.xla_attention(q, k, v, dropout_rate=RATE, dropout_rng=rng)[0]
        keep = dropout.keep_mask(rng, (B, N, 64, 64), RATE)
        probs = jax.nn.softmax(jnp.einsum("bqnd,bknd->bnqk", q, k) * D ** -0.5, axis=-1)
        by_hand = jnp.einsum("bnqk,bknd->bqnd", jnp.where(keep, probs / dropout.keep_probability(RATE), 0), v)
        counter = attention.xla_attention(q, k, v, dropout_rate=RATE, dropout_rng=rng, dropout_mask="counter")[0]
        return default, by_hand, counter

    default, by_hand, counter = run(q, k, v)
    np.testing.assert_allclose(default, by_hand, atol=1e-6)
    assert float(jnp.max(jnp.abs(counter - default))) > 1e-2


def test_seed_comes_from_the_rng():
    a, b = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    assert flash.dropout_seed(a).dtype == jnp.int32
    assert int(flash.dropout_seed(a)) != int(flash.dropout_seed(b))
    assert int(flash.dropout_seed(jax.random.key(0))) == int(flash.dropout_seed(a))  # typed keys too


# ------------------------------------------------------------------------- kernel vs the reference

def test_one_tile_forward_and_grads_are_bit_exact():
    """Q = K = 128 (one key tile, one dk/dv query tile): output, dq, dk, dv equal bit for bit."""
    q, k, v, segments = _inputs(128)
    ref_out, ref_grads = _value_and_grads(_reference(segments), q, k, v)
    out, grads = _value_and_grads(_flash(segments, block_sizes=flash.BlockSizes(64, 128, 128, 64)), q, k, v)
    np.testing.assert_array_equal(out, ref_out)
    for name, got, want in zip("qkv", grads, ref_grads):
        np.testing.assert_array_equal(got, want, err_msg=f"d{name}")
    # dropout did act: the same call without it differs
    no_drop = _reference(segments, rate=0.0)(q, k, v)
    assert float(jnp.max(jnp.abs(no_drop - out))) > 1e-2


def test_several_tiles_causal_match_reference():
    """K = 256 in key tiles of 128, causal: online-softmax rescaling and multi-tile dk/dv (the
    non-causal multi-tile path is covered by the odd-length test); float rounding only."""
    q, k, v, segments = _inputs(256)
    blocks = flash.BlockSizes(block_q=128, block_k=128, block_q_dkv=128, block_k_dkv=128)
    ref_out, ref_grads = _value_and_grads(_reference(segments, causal=True), q, k, v)
    out, grads = _value_and_grads(_flash(segments, causal=True, block_sizes=blocks), q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=0)
    for name, got, want in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=5e-6, rtol=0, err_msg=f"d{name}")


def test_odd_length_is_padded_and_still_matches():
    """72 tokens with 64-wide tiles: padded to 128 inside (two key tiles: the online-softmax path);
    padded keys are masked, padded queries cut."""
    q, k, v, segments = _inputs(72)
    ref_out, ref_grads = _value_and_grads(_reference(segments), q, k, v)
    out, grads = _value_and_grads(_flash(segments, block_sizes=flash.BlockSizes(64, 64, 64, 64)), q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=0)
    for name, got, want in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=5e-6, rtol=0, err_msg=f"d{name}")


def test_shard_offsets_reproduce_the_unsharded_mask():
    """A call on one batch row / one head with its offsets draws that row's / head's part of the
    whole call's mask, so a shard_map'd kernel matches the unsharded one (and shards differ)."""
    q, k, v, segments = _inputs(64)
    seed = jnp.int32(11)

    @jax.jit
    def run(q, k, v, segments):
        whole = flash.flash_attention(q, k, v, segment_ids=segments, dropout_rate=RATE, dropout_seed=seed)
        row = flash.flash_attention(q[1:], k[1:], v[1:], segment_ids=tuple(x[1:] for x in segments),
                                    dropout_rate=RATE, dropout_seed=seed, dropout_offsets=(1, 0))
        head = flash.flash_attention(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], segment_ids=segments, dropout_rate=RATE,
                                     dropout_seed=seed, dropout_offsets=(0, jnp.int32(1)))
        unshifted = flash.flash_attention(q[1:], k[1:], v[1:], segment_ids=tuple(x[1:] for x in segments),
                                          dropout_rate=RATE, dropout_seed=seed)
        return whole, row, head, unshifted

    whole, row, head, unshifted = run(q, k, v, segments)
    np.testing.assert_array_equal(row, whole[1:])
    np.testing.assert_array_equal(head, whole[:, :, 1:])
    assert float(jnp.max(jnp.abs(unshifted - whole[1:]))) > 1e-2


# ------------------------------------------------------------------------------------ registration

def test_kernel_selection():
    assert select_kernel("flash", AttentionCall(dropout=True, q_len=128, k_len=128)) is attention.flash_attention
    assert select_kernel("flash", AttentionCall(dropout=True, needs_probs=True)) is attention.xla_attention
    # pallas_tpu no longer falls back for dropout: its kernel hands dropout calls to flash
    assert select_kernel("pallas_tpu", AttentionCall(dropout=True, q_len=128, k_len=128)) \
        is attention.pallas_tpu_attention
    q, k, v, segments = _inputs(128)
    rng = jax.random.PRNGKey(3)
    via_tpu = attention.pallas_tpu_attention(q, k, v, segment_ids=segments, dropout_rate=RATE, dropout_rng=rng)[0]
    direct = attention.flash_attention(q, k, v, segment_ids=segments, dropout_rate=RATE, dropout_rng=rng)[0]
    np.testing.assert_array_equal(via_tpu, direct)


def test_training_step_matches_xla_with_the_same_mask():
    """A BertForMaskedLM step with dropout 0.1: `flash` and `xla_counter` give the same loss and grads."""
    config = bert_jax.BertConfig(**dict(cases.TINY, num_hidden_layers=1, num_attention_heads=2))
    inputs = {k: jnp.asarray(v) for k, v in cases.base_inputs(shape=(2, 64)).items()}
    inputs["attention_mask"] = jnp.ones((2, 64), jnp.int32).at[1, 50:].set(0)
    labels = jnp.where(jnp.arange(64)[None] % 5 == 0, inputs["input_ids"], -100)
    params = bert_jax.init_params(bert_jax.BertForMaskedLM(config), jax.random.PRNGKey(0))

    def step(impl):
        model = bert_jax.BertForMaskedLM(config.replace(attention_impl=impl))
        loss = lambda p: model.apply({"params": p}, **inputs, labels=labels, deterministic=False,
                                     rngs={"dropout": jax.random.PRNGKey(42)}).loss
        return jax.jit(jax.value_and_grad(loss))(params)

    (ref_loss, ref_grads), (loss, grads) = step("xla_counter"), step("flash")
    np.testing.assert_allclose(loss, ref_loss, atol=1e-6, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), grads, ref_grads)


# ----------------------------------------------------------------------------- TPU compile (libtpu)

def test_compiles_for_tpu():
    """Forward and backward lower through Mosaic for a v5p chip (compile only, no TPU needed)."""
    from bert_jax import aot
    if not aot.has_libtpu():
        pytest.skip("libtpu is not installed")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu's lockfile
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    device = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1").devices[0]
    sharding = NamedSharding(Mesh(np.array([device]), ("x",)), PartitionSpec())
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    def forward(q, k, v, q_ids, kv_ids, seed):
        return flash.flash_attention(q, k, v, segment_ids=(q_ids, kv_ids), dropout_rate=RATE, dropout_seed=seed,
                                     backend="tpu")

    def backward(*args):
        loss = lambda q, k, v: jnp.sum(forward(q, k, v, *args[3:]).astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(*args[:3])

    for length, dtype in ((512, jnp.bfloat16), (1024, jnp.float32)):  # one key tile; several
        args = (spec((2, length, 4, 64), dtype),) * 3 + (spec((2, length), jnp.int32),) * 2 + \
            (spec((), jnp.int32),)
        for fn, kernels in ((forward, 1), (backward, 3)):  # backward: forward (residuals), dq, dk/dv
            text = jax.jit(fn).lower(*args).compile().as_text()
            assert text.count("tpu_custom_call") == kernels, (fn.__name__, length)


def test_lowers_for_gpu_triton():
    """Forward and backward lower to Triton kernels for CUDA (lowering only; compiling the TTIR to
    PTX and running it needs a GPU: benchmarks/flash_gpu_check.py)."""
    from jax import export

    def forward(q, k, v, q_ids, kv_ids, seed):
        return flash.flash_attention(q, k, v, segment_ids=(q_ids, kv_ids), dropout_rate=RATE, dropout_seed=seed,
                                     backend="gpu")

    def backward(*args):
        loss = lambda q, k, v: jnp.sum(forward(q, k, v, *args[3:]).astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(*args[:3])

    args = (jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16),) * 3 + \
        (jax.ShapeDtypeStruct((2, 256), jnp.int32),) * 2 + (jax.ShapeDtypeStruct((), jnp.int32),)
    # Triton custom calls carry no serialization-compatibility promise; we only inspect the module.
    unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for fn, kernels in ((forward, ["_fwd_kernel"]), (backward, ["_fwd_kernel", "_dq_kernel", "_dkv_kernel"])):
        text = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=unchecked)(*args).mlir_module()
        assert [n for n in ("_fwd_kernel", "_dq_kernel", "_dkv_kernel") if f'name = "{n}"' in text] == kernels
