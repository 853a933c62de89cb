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


# ------------------------------------------------------------------- recipes: one-cycle, trapezoidal
@pytest.mark.parametrize("initial, peak_fraction, end, expected", [
    # steps 0, 30, 75 (peak), 90, 100 (end), 130 (after); closed form of Cramming's triangle
    (0.25, 0.75, 0.0, [0.25, 0.25 + 0.75 * 30 / 75, 1.0, 1.0 - 15 / 25, 0.0, 0.0]),
    (0.0, 0.5, 0.1, [0.0, 0.6, 1.0 - 0.9 * 25 / 50, 1.0 - 0.9 * 40 / 50, 0.1, 0.1]),
])
def test_one_cycle_values(initial, peak_fraction, end, expected):
    schedule = optim.make_schedule("one_cycle", 1.0, total_steps=100, warmup_steps=0, end_lr=end,
                                   peak_fraction=peak_fraction, initial_lr_fraction=initial)
    got = [float(schedule(s)) for s in (0, 30, 75, 90, 100, 130)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    values = np.asarray(jax.vmap(schedule)(jnp.arange(101)))
    assert int(np.argmax(values)) == round(peak_fraction * 100)


@pytest.mark.parametrize("shape, cooling", [
    ("linear", lambda t: 1.0 - t),
    ("1-sqrt", lambda t: 1.0 - math.sqrt(t)),
])
def test_trapezoidal_values(shape, cooling):
    # warmup 10, constant until 80 (decay_fraction 0.2 of 100), cooldown to end_lr 0.1 at 100
    schedule = optim.make_schedule("trapezoidal", 2.0, total_steps=100, warmup_steps=10, end_lr=0.1,
                                   decay_fraction=0.2, decay_shape=shape)
    steps_ = (0, 5, 10, 50, 80, 85, 95, 100, 150)
    expected = [0.0, 1.0, 2.0, 2.0, 2.0] + [0.1 + 1.9 * cooling(t) for t in (0.25, 0.75, 1.0, 1.0)]
    np.testing.assert_allclose([float(schedule(s)) for s in steps_], expected, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="one_cycle", warmup_steps=5), "warmup_steps must be 0"),
    (dict(kind="one_cycle", warmup_steps=0, peak_fraction=1.5), "peak_fraction"),
    (dict(kind="one_cycle", warmup_steps=0, initial_lr_fraction=-0.1), "initial_lr_fraction"),
    (dict(kind="trapezoidal", decay_shape="cosine"), "decay_shape"),
    (dict(kind="trapezoidal", decay_fraction=1.2), "decay_fraction"),
    (dict(kind="trapezoidal", warmup_steps=90, decay_fraction=0.2), "cooldown"),
])
def test_recipe_schedules_reject_bad_values(kwargs, match):
    args = dict(peak_lr=1e-3, total_steps=100, warmup_steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        optim.make_schedule(**args)


@pytest.mark.parametrize("overrides, field", [
    (dict(schedule="one_cycle", warmup_steps=10), "schedule"),  # its rise is the warmup
    (dict(schedule="one_cycle", warmup_steps=0, peak_fraction=2.0), "peak_fraction"),
    (dict(schedule="one_cycle", warmup_steps=0, initial_lr_fraction="0.25"), "initial_lr_fraction"),
    (dict(schedule="trapezoidal", decay_shape="exp"), "decay_shape"),
    (dict(schedule="trapezoidal", decay_fraction=-0.1), "decay_fraction"),
    (dict(schedule="trapezoidal", warmup_steps=95, decay_fraction=0.1), "warmup_steps"),
    (dict(batch_ramp_from=0), "batch_ramp_from"),
    (dict(batch_ramp_to=2.5), "batch_ramp_to"),
    (dict(batch_ramp_to=4, batch_ramp_fraction=1.5), "batch_ramp_fraction"),
    (dict(batch_ramp_to=4, warmup_steps=90), "warmup_steps"),  # 100 data steps make fewer than 90 updates
    (dict(batch_ramp_to=4, schedule_counts="tokens"), "schedule_counts"),
])
def test_recipe_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"optim\.{field}\b"):
        optim.make_optimizer(config(**overrides))


def test_make_optimizer_reads_recipe_schedule_fields():
    _, schedule = optim.make_optimizer(config(schedule="one_cycle", warmup_steps=0, learning_rate=1.0,
                                              total_steps=100, peak_fraction=0.75, initial_lr_fraction=0.25))
    assert float(schedule(0)) == pytest.approx(0.25) and float(schedule(75)) == pytest.approx(1.0)
    _, schedule = optim.make_optimizer(config(schedule="trapezoidal", warmup_steps=10, learning_rate=1.0,
                                              total_steps=100, decay_fraction=0.2, decay_shape="1-sqrt"))
    assert float(schedule(50)) == pytest.approx(1.0) and float(schedule(85)) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ batch-size ramp
def test_accumulation_plan():
    # 20 data steps, 1 -> 4 batches per update over the first half: k(s) = round(1 + 3 * s / 10)
    plan = optim.accumulation_plan(20, 1, 4, 0.5)
    np.testing.assert_array_equal(plan, [1, 1, 2, 2, 3, 4, 4, 3])  # the last update takes the 3 left
    assert plan.sum() == 20
    np.testing.assert_array_equal(optim.accumulation_plan(10, 3, 3, 0.0), [3, 3, 3, 1])  # constant accumulation
    np.testing.assert_array_equal(optim.accumulation_plan(5, 1, 8, 0.0), [5])  # ramp_to at once, capped
    for args, match in [((0, 1, 2, 0.5), "total_steps"), ((10, 0, 2, 0.5), "batch_ramp_from"),
                        ((10, 1, 2, -0.5), "batch_ramp_fraction")]:
        with pytest.raises(ValueError, match=match):
            optim.accumulation_plan(*args)


def _small_params():
    rng = np.random.default_rng(0)
    return {"dense": {"kernel": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)},
            "LayerNorm": {"scale": jnp.ones(3, jnp.float32)}}


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_batch_ramp_equals_explicit_accumulation(optimizer):
    """A ramp over 30 data batches = the optimizer without a ramp applied once per update of the plan to
    the mean of that update's batch gradients, with its schedule over the plan's updates (not the data
    steps): equal params (<= 1e-6). Clipping applies to the accumulated gradient."""
    total = 30
    cfg = dict(optimizer=optimizer, learning_rate=1e-2, schedule="linear", warmup_fraction=0.25, b1=0.8, b2=0.98,
               eps=1e-8, weight_decay=0.1, grad_clip_norm=0.5)
    tx, schedule = optim.make_optimizer(config(**cfg, total_steps=total, batch_ramp_from=1, batch_ramp_to=5,
                                               batch_ramp_fraction=0.6))
    plan = optim.accumulation_plan(total, 1, 5, 0.6)
    updates = len(plan)
    assert updates < total and plan.max() == 5
    params = _small_params()
    grads = [random_like(params, seed, scale=3.0) for seed in range(total)]  # norms well above the clip

    ramped, state = run(tx, params, grads)
    reference_tx, reference_schedule = optim.make_optimizer(config(**cfg, total_steps=updates))
    means, start = [], 0
    for k in plan:
        means.append(jax.tree.map(lambda *g: sum(g) / len(g), *grads[start:start + k]))
        start += k
    explicit, _ = run(reference_tx, params, means)
    for a, b in zip(jax.tree.leaves(ramped), jax.tree.leaves(explicit)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    assert int(state.gradient_step) == updates
    # Counting data steps instead would warm up over round(0.25 * 30) = 8 updates, not 0.25 * updates:
    miscounted, _ = run(optim.make_optimizer(config(**cfg, total_steps=total))[0], params, means)
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(miscounted), jax.tree.leaves(explicit))) > 1e-4
    # The returned schedule maps a data step to the lr of the update that step belongs to.
    starts = np.concatenate([[0], np.cumsum(plan)[:-1]])
    for step in range(total):
        update = int(np.searchsorted(starts, step, side="right") - 1)
        assert float(schedule(step)) == pytest.approx(float(reference_schedule(update)), abs=1e-9)


def test_batch_ramp_schedule_over_data_steps():
    """schedule_counts='data_steps': the schedule runs over the 30 data steps and each update takes the lr of
    the data step where its accumulation starts; otherwise as explicit accumulation (<= 1e-6)."""
    total = 30
    cfg = dict(optimizer="adamw", learning_rate=1e-2, schedule="one_cycle", warmup_steps=0, peak_fraction=0.75,
               initial_lr_fraction=0.25, b2=0.98, grad_clip_norm=0.5)
    ramp = dict(batch_ramp_from=1, batch_ramp_to=5, batch_ramp_fraction=0.6)
    tx, schedule = optim.make_optimizer(config(**cfg, **ramp, total_steps=total, schedule_counts="data_steps"))
    plan = optim.accumulation_plan(total, 1, 5, 0.6)
    starts = optim.update_starts(plan)
    over_data = optim.make_schedule("one_cycle", 1e-2, total, 0, peak_fraction=0.75, initial_lr_fraction=0.25)
    lrs = [float(over_data(s)) for s in starts]
    params = _small_params()
    grads = [random_like(params, seed, scale=3.0) for seed in range(total)]
    ramped, _ = run(tx, params, grads)
    reference = optax.chain(optax.clip_by_global_norm(0.5),
                            optim.adamw(lambda u: jnp.asarray(lrs)[u], b2=0.98))
    means = [jax.tree.map(lambda *g: sum(g) / len(g), *grads[a:a + k]) for a, k in zip(starts, plan)]
    explicit, _ = run(reference, params, means)
    for a, b in zip(jax.tree.leaves(ramped), jax.tree.leaves(explicit)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    for step in range(total):  # logged lr: that of the update the data step belongs to
        update = int(np.searchsorted(starts, step, side="right") - 1)
        assert float(schedule(step)) == pytest.approx(lrs[update], abs=1e-9)
    # the same config counting updates peaks at 0.75 x the updates instead: a different lr sequence
    _, by_updates = optim.make_optimizer(config(**cfg, **ramp, total_steps=total))
    assert [float(by_updates(s)) for s in starts] != pytest.approx(lrs, abs=1e-6)


def test_no_ramp_leaves_the_optimizer_unwrapped():
    """batch_ramp_from = batch_ramp_to = 1 (the default) builds exactly today's optimizer: the same state
    structure (checkpoints stay compatible) and no MultiSteps."""
    params = _small_params()
    plain, _ = optim.make_optimizer(config())
    explicit_ones, _ = optim.make_optimizer(config(batch_ramp_from=1, batch_ramp_to=1, batch_ramp_fraction=0.5))
    assert (jax.tree.structure(plain.init(params)) == jax.tree.structure(explicit_ones.init(params)))
    assert not isinstance(plain.init(params), optax.MultiStepsState)
    ramped, _ = optim.make_optimizer(config(batch_ramp_to=2))
    assert isinstance(ramped.init(params), optax.MultiStepsState)


def test_adam_hyperparameters_and_clipping_from_config():
    """b1 / b2 / eps / weight_decay / grad_clip_norm set in the config reach the optimizer: equal to
    optax's own clip + adamw with those values, and unequal to the defaults."""
    params = _small_params()
    grads = [random_like(params, seed, scale=5.0) for seed in range(4)]
    recipe = dict(learning_rate=1e-2, warmup_steps=0, schedule="constant", b1=0.8, b2=0.98, eps=1e-12,
                  weight_decay=0.05, grad_clip_norm=0.5)
    tx, _ = optim.make_optimizer(config(**recipe))
    reference = optax.chain(optax.clip_by_global_norm(0.5),
                            optax.adamw(1e-2, b1=0.8, b2=0.98, eps=1e-12, weight_decay=0.05,
                                        mask=optim.weight_decay_mask))
    ours, expected = run(tx, params, grads)[0], run(reference, params, grads)[0]
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=0)
    defaults = run(optim.make_optimizer(config(learning_rate=1e-2, warmup_steps=0, schedule="constant"))[0],
                   params, grads)[0]
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(defaults))) > 1e-4
