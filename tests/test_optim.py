"""bert_jax.training.optim: schedules, weight-decay mask, AdamW (google-research and bias-corrected),
per-layer LAMB on both layer layouts, clipping and config validation."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

import bert_jax
from bert_jax.hf import convert_layer_layout
from bert_jax.training import optim

NUM_LAYERS = 2


def tiny_config(**kw):
    return bert_jax.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=64, **kw)


@pytest.fixture(scope="module")
def params():
    """The param tree of `init_params(BertForPreTraining(tiny))` (traced, not compiled, to keep the
    test fast), filled with NumPy random values (LayerNorm scales 1, biases small)."""
    abstract = jax.eval_shape(lambda: bert_jax.init_params(bert_jax.BertForPreTraining(tiny_config())))
    rng = np.random.default_rng(1234)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray((1.0 if path[-1].key == "scale" else 0.0)
                                    + 0.02 * rng.standard_normal(x.shape), x.dtype), abstract)


def random_like(tree, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), tree)


def flat(tree):
    return {"/".join(k): np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree).items()}


def run(tx, params, grads_list):
    # eagerly: the primitives compile once per shape and are shared by every optimizer and test,
    # where jitting each optimizer's update would compile ~2 s apiece
    state = tx.init(params)
    for grads in grads_list:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


# --------------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("kind, expected", [
    # steps 0, 5 (mid-warmup), 10 (end of warmup), 60 (middle of decay), 110 (end), 200 (after)
    ("linear", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
    ("polynomial", [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.25, 0.1, 0.1]),
    ("cosine", [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]),
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
])
def test_schedule_values(kind, expected):
    schedule = optim.make_schedule(kind, peak_lr=1.0, total_steps=110, warmup_steps=10, end_lr=0.1, power=2.0)
    got = [float(schedule(s)) for s in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_schedule_shapes():
    cosine = optim.make_schedule("cosine", 2.0, total_steps=100, warmup_steps=0)
    assert float(cosine(0)) == pytest.approx(2.0)  # no warmup: peak at once
    assert float(cosine(25)) == pytest.approx(1.0 + math.cos(math.pi / 4), rel=1e-6)
    linear = optim.make_schedule("linear", 1e-4, total_steps=1000, warmup_steps=100)  # google-research default
    assert float(linear(50)) == pytest.approx(5e-5)
    assert float(linear(1000)) == 0.0
    values = jax.jit(jax.vmap(linear))(jnp.arange(1001))
    assert int(jnp.argmax(values)) == 100 and bool(jnp.all(values >= 0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="step"), "unknown kind"),
    (dict(warmup_steps=200), "warmup_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(peak_lr=-1e-3), "peak_lr"),
    (dict(end_lr=-1.0), "end_lr"),
    (dict(total_steps=0), "total_steps"),
    (dict(kind="polynomial", power=0.0), "power"),
])
def test_schedule_rejects_bad_values(kwargs, match):
    args = dict(kind="linear", peak_lr=1e-3, total_steps=100, warmup_steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        optim.make_schedule(**args)


# ------------------------------------------------------------------------------------------------ mask
DECAYED = {
    "bert/embeddings/position_embeddings/embedding", "bert/embeddings/token_type_embeddings/embedding",
    "bert/embeddings/word_embeddings/embedding", "bert/pooler/dense/kernel", "cls/predictions/transform/dense/kernel",
    "cls/seq_relationship/kernel",
} | {f"bert/encoder/layer/{i}/{name}/kernel" for i in range(NUM_LAYERS)
     for name in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
                  "intermediate/dense", "output/dense")}


def test_weight_decay_mask_golden(params):
    mask = flat(optim.weight_decay_mask(params))
    assert len(mask) == 46
    assert {k for k, v in mask.items() if v} == DECAYED
    not_decayed = {k for k, v in mask.items() if not v}
    assert all(k.endswith("/bias") or "/LayerNorm/" in k for k in not_decayed)
    assert "cls/predictions/bias" in not_decayed and "bert/embeddings/LayerNorm/scale" in not_decayed


def test_weight_decay_mask_scanned_layout(params):
    scanned = convert_layer_layout(params, NUM_LAYERS, scan_layers=True)
    mask = flat(optim.weight_decay_mask(scanned))
    expected = {k.replace("layer/0/", "layer/").replace("layer/1/", "layer/") for k in DECAYED}
    assert {k for k, v in mask.items() if v} == expected and len(mask) == 30
    # works on abstract params too (optax calls the mask on whatever tree it is given)
    abstract = jax.eval_shape(lambda: scanned)
    assert flat(optim.weight_decay_mask(abstract)) == mask


def test_param_count(params):
    config = tiny_config()
    embeddings = (99 + 64 + 2) * 32
    assert optim.param_count(params) == sum(np.size(x) for x in jax.tree.leaves(params))
    assert optim.param_count(params, non_embedding=True) == optim.param_count(params) - embeddings
    scanned = convert_layer_layout(params, config.num_hidden_layers, scan_layers=True)
    assert optim.param_count(scanned, non_embedding=True) == optim.param_count(params, non_embedding=True)


# ----------------------------------------------------------------------------------------------- AdamW
def google_adamw_reference(params, grads_list, lrs, mask, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """google-research bert/optimization.py AdamWeightDecayOptimizer.apply_gradients, in NumPy."""
    params = dict(params)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for grads, lr in zip(grads_list, lrs):
        for name, param in params.items():
            g = grads[name]
            m[name] = b1 * m[name] + (1.0 - b1) * g
            v[name] = b2 * v[name] + (1.0 - b2) * np.square(g)
            update = m[name] / (np.sqrt(v[name]) + eps)
            if mask[name]:
                update += wd * param
            params[name] = param - lr * update
    return params


def test_adamw_google_matches_reference(params):
    schedule = optim.make_schedule("linear", 1e-2, total_steps=10, warmup_steps=0)
    grads_list = [random_like(params, seed) for seed in range(3)]
    got, state = run(optim.adamw(schedule, bias_correction=False), params, grads_list)
    lrs = [1e-2 * (1 - step / 10) for step in range(3)]
    expected = google_adamw_reference(flat(params), [flat(g) for g in grads_list], lrs,
                                      flat(optim.weight_decay_mask(params)))
    got = flat(got)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6, rtol=0, err_msg=name)
    # it differs from the bias-corrected AdamW (the first steps are where the correction matters)
    corrected = flat(run(optim.adamw(schedule), params, grads_list)[0])
    assert max(np.abs(corrected[k] - got[k]).max() for k in got) > 1e-3


def test_adamw_equals_optax_adamw(params):
    schedule = optim.make_schedule("linear", 1e-3, total_steps=10, warmup_steps=2)
    grads_list = [random_like(params, seed) for seed in range(3)]
    ours = run(optim.adamw(schedule, weight_decay=0.1), params, grads_list)[0]
    reference = run(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1,
                                mask=optim.weight_decay_mask), params, grads_list)[0]
    jax.tree.map(np.testing.assert_array_equal, ours, reference)


# ------------------------------------------------------------------------------------------------ LAMB
def lamb_reference(params, grads_list, lrs, mask, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """NVIDIA LAMB (apex FusedLAMB, no internal clipping) per tensor, in NumPy."""
    params = dict(params)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for t, (grads, lr) in enumerate(zip(grads_list, lrs), start=1):
        for name, param in params.items():
            g = grads[name]
            m[name] = b1 * m[name] + (1.0 - b1) * g
            v[name] = b2 * v[name] + (1.0 - b2) * np.square(g)
            update = (m[name] / (1 - b1 ** t)) / (np.sqrt(v[name] / (1 - b2 ** t)) + eps)
            if mask[name]:
                update += wd * param
            w_norm, u_norm = np.linalg.norm(param), np.linalg.norm(update)
            ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            params[name] = param - lr * ratio * update
    return params


def test_lamb_matches_reference(params):
    schedule = optim.make_schedule("constant", 1e-2, total_steps=10, warmup_steps=0)
    grads_list = [random_like(params, seed) for seed in range(2)]
    got = flat(run(optim.lamb(schedule), params, grads_list)[0])
    expected = lamb_reference(flat(params), [flat(g) for g in grads_list], [1e-2, 1e-2],
                              flat(optim.weight_decay_mask(params)))
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6, rtol=0, err_msg=name)


def test_lamb_scanned_equals_unrolled(params):
    schedule = optim.make_schedule("linear", 1e-2, total_steps=10, warmup_steps=0)
    # layer 1's weights 4x layer 0's: per-layer ||w|| (hence trust ratios) differ a lot
    params = traverse_util.unflatten_dict({k: v * 4.0 if k[2:4] == ("layer", "1") else v
                                           for k, v in traverse_util.flatten_dict(params).items()})
    grads_list = [random_like(params, seed) for seed in range(2)]
    scanned = convert_layer_layout(params, NUM_LAYERS, scan_layers=True)
    scanned_grads = [convert_layer_layout(g, NUM_LAYERS, scan_layers=True) for g in grads_list]
    unrolled_result = flat(run(optim.lamb(schedule), params, grads_list)[0])
    scanned_result = run(optim.lamb(schedule), scanned, scanned_grads)[0]
    back = flat(convert_layer_layout(scanned_result, NUM_LAYERS, scan_layers=False))
    assert back.keys() == unrolled_result.keys()
    for name in back:
        np.testing.assert_allclose(back[name], unrolled_result[name], atol=1e-6, rtol=0, err_msg=name)
    # optax.lamb takes one ratio over the whole stack: a different result, so the per-layer ratio matters
    naive = run(optax.lamb(schedule, eps=1e-6, weight_decay=0.01, mask=optim.weight_decay_mask), scanned,
                scanned_grads)[0]
    naive = flat(convert_layer_layout(naive, NUM_LAYERS, scan_layers=False))
    assert max(np.abs(naive[k] - unrolled_result[k]).max() for k in naive) > 1e-3
    # and lamb(scanned_layers_axis=False) is that naive optimizer
    plain = run(optim.lamb(schedule, scanned_layers_axis=False), scanned, scanned_grads)[0]
    plain = flat(convert_layer_layout(plain, NUM_LAYERS, scan_layers=False))
    for name in plain:
        np.testing.assert_allclose(plain[name], naive[name], atol=1e-6, rtol=0, err_msg=name)


def test_trust_ratio_per_layer_slices():
    # layer 0 of the stack is all zeros -> ratio 1 there; layer 1 -> ||w|| / ||u|| of that slice
    params = {"encoder": {"layer": {"dense": {"kernel": jnp.stack([jnp.zeros((3, 4)), jnp.full((3, 4), 2.0)])}}},
              "head": {"kernel": jnp.full((2, 2), 3.0)}}
    updates = jax.tree.map(lambda x: jnp.full(x.shape, 0.5), params)
    tx = optim.scale_by_trust_ratio_per_layer()
    scaled, _ = tx.update(updates, tx.init(params), params)
    stacked = np.asarray(scaled["encoder"]["layer"]["dense"]["kernel"])
    np.testing.assert_allclose(stacked[0], 0.5)
    np.testing.assert_allclose(stacked[1], 0.5 * 2.0 / 0.5, rtol=1e-6)  # ||w||/||u|| = 2/0.5 (same size)
    np.testing.assert_allclose(scaled["head"]["kernel"], 0.5 * 3.0 / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="params"):
        tx.update(updates, tx.init(params))


# ---------------------------------------------------------------------------------------- make_optimizer
def config(**kw):
    # a fresh ConfigDict (not `update`, which would type-check the overrides against the defaults)
    return ml_collections.ConfigDict(optim.default_config().to_dict()
                                     | dict(total_steps=100, warmup_steps=10, learning_rate=1e-3) | kw)


def first_moment(state):
    return optax.tree_utils.tree_get(state, "mu")


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_google", "lamb"])
def test_clipping_caps_global_norm(params, optimizer):
    grads = random_like(params, 0)
    grads = jax.tree.map(lambda g: g * (100.0 / optax.global_norm(grads)), grads)  # global norm 100
    for clip, norm in [(1.0, 1.0), (0.0, 100.0), (None, 100.0), (1000.0, 100.0)]:
        tx, _ = optim.make_optimizer(config(optimizer=optimizer, grad_clip_norm=clip))
        _, state = tx.update(grads, tx.init(params), params)
        # after one step adam's mu is (1 - b1) * the gradient the optimizer saw
        assert float(optax.global_norm(first_moment(state))) / 0.1 == pytest.approx(norm, rel=1e-4), clip


def test_make_optimizer_builds_each_kind(params):
    grads_list = [random_like(params, seed) for seed in range(3)]
    cfg = config(optimizer="adamw_google", warmup_steps=0, schedule="linear", total_steps=10, learning_rate=1e-2,
                 grad_clip_norm=0)
    tx, schedule = optim.make_optimizer(cfg)
    direct = optim.adamw(optim.make_schedule("linear", 1e-2, 10, 0), bias_correction=False)
    jax.tree.map(np.testing.assert_array_equal, run(tx, params, grads_list)[0], run(direct, params, grads_list)[0])
    assert float(schedule(5)) == pytest.approx(5e-3)
    # warmup_fraction; fields left out take their defaults
    cfg = ml_collections.ConfigDict(dict(optimizer="lamb", learning_rate=1.0, total_steps=200, warmup_fraction=0.1,
                                         schedule="cosine"))
    tx, schedule = optim.make_optimizer(cfg)
    assert float(schedule(10)) == pytest.approx(0.5) and float(schedule(20)) == pytest.approx(1.0)
    run(tx, params, grads_list[:1])


@pytest.mark.parametrize("warmup_steps, warmup_fraction, expected", [
    (10, -1.0, 10),      # a negative fraction is unset (-1.0 keeps the ConfigDict field a float)
    (10, None, 10),
    (None, None, 0),
    (500, 0.25, 25),     # a set fraction overrides warmup_steps (here even one > total_steps)
    (10, 0.0, 0),
])
def test_warmup_fields(warmup_steps, warmup_fraction, expected):
    _, schedule = optim.make_optimizer(config(total_steps=100, learning_rate=1.0, schedule="constant",
                                              warmup_steps=warmup_steps, warmup_fraction=warmup_fraction))
    assert int(jnp.argmax(jax.vmap(schedule)(jnp.arange(100)))) == expected
    if expected:
        assert float(schedule(expected - 1)) < 1.0


@pytest.mark.parametrize("overrides, field", [
    (dict(optimizer="sgd"), "optimizer"),
    (dict(schedule="step"), "schedule"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(learning_rate="1e-3"), "learning_rate"),
    (dict(end_learning_rate=-0.1), "end_learning_rate"),
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=101), "warmup_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(warmup_fraction=1.5), "warmup_fraction"),
    (dict(warmup_fraction="0.1"), "warmup_fraction"),
    (dict(weight_decay=-0.01), "weight_decay"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.5), "b2"),
    (dict(eps=-1e-6), "eps"),
    (dict(grad_clip_norm=-1.0), "grad_clip_norm"),
    (dict(schedule="polynomial", power=0.0), "power"),
])
def test_bad_config_raises(overrides, field):
    with pytest.raises(ValueError, match=rf"optim\.{field}\b"):
        optim.make_optimizer(config(**overrides))
