"""bert_jax.modeling.dropout: integer-threshold masks from raw random bits, per element, exact in expectation."""

import math
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.modeling import dropout


def _binomial_ok(observed_fraction: float, p: float, n: int, sigmas: float = 6.0) -> bool:
    return abs(observed_fraction - p) < sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.013])
def test_keep_fraction_is_the_exact_keep_probability(impl, rate):
    shape = (4, 3, 64, 66)  # last axis not a multiple of 4: the packed draws are trimmed
    keep = np.asarray(dropout.keep_mask(jax.random.key(0, impl=impl), shape, rate))
    assert keep.shape == shape and keep.dtype == bool
    p = dropout.keep_probability(rate)
    assert abs(p - (1 - rate)) <= 2 ** -17
    assert _binomial_ok(keep.mean(), p, keep.size)
    # Independence: neighbours along every axis agree as often as independent draws (p^2 + (1-p)^2).
    agree = p * p + (1 - p) ** 2
    for axis in range(4):
        a = np.moveaxis(keep, axis, -1)
        assert _binomial_ok(np.mean(a[..., 1:] == a[..., :-1]), agree, a[..., 1:].size), axis


def test_sixteen_bit_draws_are_uniform():
    bits = np.asarray(dropout.random_bits16(jax.random.PRNGKey(3), (256, 1024)))
    assert bits.max() < 2 ** 16 and bits.min() >= 0
    counts = np.bincount(bits.ravel() >> 12, minlength=16)  # 16 bins of the 16-bit range
    expected = bits.size / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60, chi2  # 15 degrees of freedom: p < 1e-6 above ~60
    assert 0.45 < np.mean((bits >> 15) & 1) < 0.55  # the top bit is used too


def test_scaling_makes_the_expectation_exact_and_keeps_kept_values():
    x = jnp.asarray(np.random.RandomState(0).randn(64, 128, 32).astype(np.float32))
    rng = jax.random.PRNGKey(1)
    rate = 0.1
    y = dropout.dropout(x, rate, rng)
    keep = dropout.keep_mask(rng, x.shape, rate)
    np.testing.assert_array_equal(np.asarray(y)[~np.asarray(keep)], 0.0)
    np.testing.assert_allclose(np.asarray(y)[np.asarray(keep)],
                               np.asarray(x)[np.asarray(keep)] / dropout.keep_probability(rate), rtol=1e-6)
    # E[y] = x: averaged over many keys, y / x -> 1 (each element's mean of kept/p).
    ones = jnp.ones((1000, 512))
    means = jax.vmap(lambda k: dropout.dropout(ones, rate, k).mean())(jax.random.split(rng, 8))
    assert abs(float(means.mean()) - 1.0) < 6 * math.sqrt(rate / (1 - rate) / (8 * ones.size))


def test_same_key_same_mask_other_key_other_mask():
    a = dropout.keep_mask(jax.random.PRNGKey(0), (32, 64), 0.3)
    b = dropout.keep_mask(jax.random.PRNGKey(0), (32, 64), 0.3)
    c = dropout.keep_mask(jax.random.PRNGKey(1), (32, 64), 0.3)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.mean(a == c)) < 0.7  # independent masks agree on ~0.58 of elements


def test_rate_zero_and_bad_rates():
    x = jnp.ones((3, 5))
    np.testing.assert_array_equal(dropout.dropout(x, 0.0, jax.random.PRNGKey(0)), x)
    assert bool(dropout.keep_mask(jax.random.PRNGKey(0), (3, 5), 0.0).all())
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout rate"):
            dropout.threshold(bad)


def test_module_is_deterministic_when_asked_and_uses_the_dropout_stream():
    layer = dropout.Dropout(0.5)
    x = jnp.ones((4, 16))
    assert layer.apply({}, x, deterministic=True) is x
    rng = jax.random.PRNGKey(2)
    y = layer.apply({}, x, deterministic=False, rngs={"dropout": rng})
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 1.0 / dropout.keep_probability(0.5)}
    with pytest.raises(Exception):  # no rng for the "dropout" stream
        layer.apply({}, x, deterministic=False)


def test_bfloat16_stays_bfloat16():
    y = dropout.dropout(jnp.ones((8, 8), jnp.bfloat16), 0.1, jax.random.PRNGKey(0))
    assert y.dtype == jnp.bfloat16


def test_mask_does_not_depend_on_the_sharding():
    """The mask of a sharded array equals the unsharded one (counters by global position), on 4 fake devices."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from bert_jax.modeling import dropout
        mesh = jax.make_mesh((2, 2), ("data", "model"))
        x = jnp.ones((8, 4, 32, 32))
        f = lambda x, k: dropout.dropout(x, 0.1, k)
        ref = jax.jit(f)(x, jax.random.PRNGKey(5))
        sharded = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
        out = jax.jit(f, out_shardings=NamedSharding(mesh, P("data", "model")))(sharded, jax.random.PRNGKey(5))
        assert len(out.sharding.device_set) == 4
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_prng_impl_names_are_checked():
    from bert_jax.training import loop

    with pytest.raises(ValueError, match="config.prng_impl='philox'"):
        loop.set_prng_impl("philox")


def test_a_run_trains_under_rbg_and_refuses_to_resume_under_threefry(tmp_path):
    """config.prng_impl=rbg trains (in its own process: the implementation is process-wide); resuming
    its checkpoint under threefry is an error naming prng_impl, and the checkpoint is left in place."""
    base = [sys.executable, "-m", "bert_jax.main", "--config=configs/pretrain.py:size=tiny,runlocal=true",
            f"--workdir={tmp_path}", "--config.checkpoint_every=2", "--config.log_every=2", "--config.eval_every=100",
            "--config.data.eval_batches=1", "--config.model.hidden_dropout_prob=0.1", "--config.optim.warmup_steps=1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    first = subprocess.run(base + ["--config.total_steps=2", "--config.prng_impl=rbg"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    second = subprocess.run(base + ["--config.total_steps=4", "--config.prng_impl=threefry"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 1
    assert "config.prng_impl='threefry' makes keys of shape (2,)" in second.stderr
    assert "holds a key of shape (4,)" in second.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
