"""The real TPU compiler (libtpu, no TPU needed): a tiny BERT's train, eval and predict steps compiled
for small TPU slices on sharded meshes (fsdp, data x fsdp, fsdp x tensor, data x fsdp x tensor), with
every attention kernel `auto` picks there, and the fused kernel's Mosaic custom call found in the
compiled HLO.

Skipped when libtpu is not importable (the default CPU run); `BERT_JAX_REQUIRE_TPU=1` (the CI stage,
.ci/tpu_stage.sh) turns that skip into a failure. Run as:

    PYTHONPATH=.tpu_site:. TPU_SKIP_MDS_QUERY=1 BERT_JAX_REQUIRE_TPU=1 .venv/bin/python -m pytest -p no:xdist \\
        -m tpu_compile tests/test_tpu_compile.py

The steps are written here with `jax.jit(...).lower(...).compile()` over abstract, sharded inputs
(nothing is allocated), so they do not depend on how the trainer builds its own.
"""

import importlib.util
import os

import pytest

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server: compile-only devices
# libtpu takes /tmp/libtpu_lockfile unless told otherwise; compile-only use needs no exclusive TPU, and
# another compile (bert_jax.aot, a second test run) may hold it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
if not HAS_LIBTPU and os.environ.get("BERT_JAX_REQUIRE_TPU") == "1":
    raise RuntimeError("BERT_JAX_REQUIRE_TPU=1 but libtpu is not importable (pip install --target DIR "
                       "'libtpu==0.0.42.*' and put DIR on PYTHONPATH)")
pytestmark = [pytest.mark.tpu_compile,
              pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (the TPU compiler); see .ci/tpu_stage.sh")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import bert_jax  # noqa: E402
from bert_jax import aot  # noqa: E402
from bert_jax import sharding as S  # noqa: E402

MOSAIC = 'custom_call_target="tpu_custom_call"'
BATCH, SEQ = 8, 128
# 4 heads of 64 (the head dim of BERT-base), two layers; tensor parallelism splits the heads.
CONFIG = dict(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
              max_position_embeddings=SEQ, type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
              attention_impl="auto", dtype="bfloat16")


@pytest.fixture(scope="module")
def devices():
    cache = {}

    def get(topology):
        if topology not in cache:
            cache[topology] = aot.target_devices(aot.parse_topology(topology))
        return cache[topology]
    return get


def _abstract_batch(mesh, labels=True):
    sharding = S.batch_sharding(mesh)
    spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
    batch = {"input_ids": spec((BATCH, SEQ)), "attention_mask": spec((BATCH, SEQ)), "token_type_ids": spec((BATCH, SEQ))}
    if labels:
        batch.update(labels=spec((BATCH, SEQ)), next_sentence_label=spec((BATCH,)))
    return batch


def compile_steps(devices, ici, which=("train", "eval", "predict"), **overrides):
    """{step name: compiled} for BertForPreTraining(CONFIG + overrides) on an `ici` mesh of `devices`."""
    mesh = S.create_mesh(S.MeshConfig(ici_parallelism=ici), devices)
    model = bert_jax.BertForPreTraining(bert_jax.BertConfig(**{**CONFIG, **overrides}))
    params = S.abstract_params(model, mesh, S.DEFAULT_RULES)
    p_sh = jax.tree.map(lambda x: x.sharding, params)
    tx = optax.adamw(1e-4, weight_decay=0.01)
    o_sh = S.opt_state_shardings(tx, p_sh, params)
    opt_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                             jax.eval_shape(tx.init, params), o_sh)
    b_sh = S.batch_sharding(mesh)

    def train(params, opt_state, batch, rng):
        loss_fn = lambda p: model.apply({"params": p}, **batch, deterministic=False, rngs={"dropout": rng}).loss
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def evaluate(params, batch):
        return model.apply({"params": params}, **batch).loss

    def predict(params, batch):
        out = model.apply({"params": params}, **batch)
        return jnp.argmax(out.prediction_logits, -1), jnp.argmax(out.seq_relationship_logits, -1)

    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    steps = {
        "train": lambda: jax.jit(train, in_shardings=(p_sh, o_sh, b_sh, None), out_shardings=(p_sh, o_sh, None),
                                 donate_argnums=(0, 1)).lower(params, opt_state, _abstract_batch(mesh), rng),
        "eval": lambda: jax.jit(evaluate, in_shardings=(p_sh, b_sh)).lower(params, _abstract_batch(mesh)),
        "predict": lambda: jax.jit(predict, in_shardings=(p_sh, b_sh)).lower(params, _abstract_batch(mesh, False)),
    }
    out = {}
    with S.activation_context(mesh, S.DEFAULT_RULES):  # as the trainer traces its steps
        for name in which:
            out[name] = steps[name]().compile()
    return out


# (topology, ici (data, fsdp, tensor)): v5p-8 and v4-8 have 4 chips; v5p-16 has 8 (all three axes > 1).
MESHES = [("v5p-8", (1, 4, 1)), ("v5p-8", (2, 2, 1)), ("v4-8", (1, 2, 2)), ("v5p-16", (2, 2, 2))]


@pytest.mark.parametrize("topology,ici", MESHES, ids=[f"{t}-{'x'.join(map(str, m))}" for t, m in MESHES])
def test_auto_picks_the_fused_kernel_and_it_compiles_on_sharded_meshes(devices, topology, ici):
    compiled = compile_steps(devices(topology), ici)
    for name, c in compiled.items():
        hlo = c.as_text()
        assert MOSAIC in hlo, f"{name} step on {topology} {ici}: no Pallas (Mosaic) custom call in the HLO"
        assert c.memory_analysis().temp_size_in_bytes > 0
    assert compiled["train"].cost_analysis()["flops"] > compiled["eval"].cost_analysis()["flops"]


@pytest.mark.parametrize("topology,ici", [("v5p-8", (2, 2, 1)), ("v5p-16", (2, 2, 2))])
def test_attention_dropout_trains_with_the_flash_kernel(devices, topology, ici):
    """With attention dropout (BERT's default 0.1) `auto` trains through our Pallas flash kernel (in-kernel
    counter-based dropout, `bert_jax/modeling/flash.py`) under shard_map: forward, dq and dk/dv kernels
    for each layer in the train step; evaluation (no dropout) takes the library kernel."""
    compiled = compile_steps(devices(topology), ici, which=("train", "eval"), attention_probs_dropout_prob=0.1)
    train = compiled["train"].as_text()
    assert train.count(MOSAIC) >= 3 * CONFIG["num_hidden_layers"], train.count(MOSAIC)
    assert MOSAIC in compiled["eval"].as_text()


def test_fused_kernel_under_scan_and_remat(devices):
    compiled = compile_steps(devices("v5p-8"), (1, 2, 2), which=("train",), scan_layers=True,
                             remat_policy="dots_with_no_batch_dims_saveable")
    assert MOSAIC in compiled["train"].as_text()


def test_aot_reports_a_compiler_estimate(devices):
    """bert_jax.aot's report on a real TPU compile: XLA's cost-model step time and the MFU it implies."""
    from configs import pretrain
    config = pretrain.get_config("size=tiny,seq=128")
    config.data.global_batch_size = 8
    config.model.attention_probs_dropout_prob = 0.0
    compiled, info = aot.compile_train_step(config, devices("v5p-8"), vocab_size=512)
    stats = aot.analyse(compiled)
    assert stats["estimated_step_seconds"] > 0
    est = aot.estimates(info, stats)
    assert est["peak_tflops_per_device"] == 459.0 and 0 < est["estimated_mfu"] < 1
    report = aot.format_report(aot.parse_topology("v5p-8"), info, stats)
    assert "compiler estimate" in report and "MFU implied" in report
    assert MOSAIC in compiled.as_text()
