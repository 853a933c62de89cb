"""bert_jax.sharding: rules, meshes, sharded init/optimizer state, and train steps on 8 fake devices
(one process) and on 2 processes x 4 devices (jax.distributed over localhost) against one device.

Fake CPU devices must be requested before jax initialises, and this module shares its pytest(-xdist)
worker with others that already did, so the multi-device runs are subprocesses
(tests/multihost_worker.py) whose JSON/npz results are asserted here.
"""

import json
import os
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

import bert_jax
from bert_jax import sharding as S
from tests.cases import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")
TOL = 1e-5

# Every parameter of BertForPreTraining(TINY) under DEFAULT_RULES.
_LAYER = {
    "attention/output/LayerNorm/bias": (None,),
    "attention/output/LayerNorm/scale": (None,),
    "attention/output/dense/bias": ("fsdp",),
    "attention/output/dense/kernel": ("tensor", None, "fsdp"),
    "attention/self/key/bias": ("tensor", None),
    "attention/self/key/kernel": ("fsdp", "tensor", None),
    "attention/self/query/bias": ("tensor", None),
    "attention/self/query/kernel": ("fsdp", "tensor", None),
    "attention/self/value/bias": ("tensor", None),
    "attention/self/value/kernel": ("fsdp", "tensor", None),
    "intermediate/dense/bias": ("tensor",),
    "intermediate/dense/kernel": ("fsdp", "tensor"),
    "output/LayerNorm/bias": (None,),
    "output/LayerNorm/scale": (None,),
    "output/dense/bias": ("fsdp",),
    "output/dense/kernel": ("tensor", "fsdp"),
}
GOLDEN_PRETRAINING_SPECS = {
    "bert/embeddings/LayerNorm/bias": (None,),
    "bert/embeddings/LayerNorm/scale": (None,),
    "bert/embeddings/position_embeddings/embedding": (None, "fsdp"),
    "bert/embeddings/token_type_embeddings/embedding": (None, "fsdp"),
    "bert/embeddings/word_embeddings/embedding": ("tensor", "fsdp"),
    **{f"bert/encoder/layer/{i}/{k}": v for i in range(TINY["num_hidden_layers"]) for k, v in _LAYER.items()},
    "bert/pooler/dense/bias": (None,),
    "bert/pooler/dense/kernel": ("fsdp", None),
    "cls/predictions/bias": ("tensor",),
    "cls/predictions/transform/LayerNorm/bias": (None,),
    "cls/predictions/transform/LayerNorm/scale": (None,),
    "cls/predictions/transform/dense/bias": (None,),
    "cls/predictions/transform/dense/kernel": ("fsdp", None),
    "cls/seq_relationship/bias": (None,),
    "cls/seq_relationship/kernel": ("fsdp", None),
}


def flat_specs(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, (P, NamedSharding)))[0]
    return {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(v.spec if isinstance(v, NamedSharding) else v)
            for k, v in leaves}


@pytest.fixture(scope="module")
def model():
    return bert_jax.BertForPreTraining(bert_jax.BertConfig(**TINY))


@pytest.fixture(scope="module")
def one_device_mesh():
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), S.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# ------------------------------------------------------------------------------------------- rules

def test_default_rules_golden_partition_specs(model):
    specs = S.logical_to_mesh_specs(S.abstract_boxed_params(model), S.DEFAULT_RULES)
    assert flat_specs(specs) == GOLDEN_PRETRAINING_SPECS


def test_scan_layers_specs_gain_leading_layers_axis():
    try:
        model = bert_jax.BertForPreTraining(bert_jax.BertConfig(**TINY, scan_layers=True))
        abstract = S.abstract_boxed_params(model)
    except NotImplementedError as e:
        pytest.skip(f"scan_layers not available: {e}")
    specs = flat_specs(S.logical_to_mesh_specs(abstract, S.DEFAULT_RULES))
    expected = {k: v for k, v in GOLDEN_PRETRAINING_SPECS.items() if "/encoder/" not in k}
    expected.update({f"bert/encoder/layer/{k}": (None,) + v for k, v in _LAYER.items()})  # "layers" -> None
    assert specs == expected


def test_default_rules_table():
    rules = dict(S.DEFAULT_RULES)
    assert rules == {"batch": ("data", "fsdp"), "embed": "fsdp", "heads": "tensor", "mlp": "tensor",
                     "vocab": "tensor", "kv": None, "norm": None, "length": None, "layers": None}
    assert S.batch_spec() == P(("data", "fsdp"))


def test_rules_from_config_overrides_and_appends():
    rules = S.rules_from_config([["embed", None], ["batch", ["data", "fsdp", "tensor"]], ["experts", "data"]])
    as_dict = dict(rules)
    assert as_dict["embed"] is None and as_dict["batch"] == ("data", "fsdp", "tensor")
    assert rules[-1] == ("experts", "data") and [n for n, _ in rules].count("embed") == 1
    assert [n for n, _ in rules[:-1]] == [n for n, _ in S.DEFAULT_RULES]  # positions kept
    assert S.rules_from_config({"vocab": None})[5] == ("vocab", None)
    assert S.rules_from_config(None) == S.DEFAULT_RULES
    with pytest.raises(ValueError, match="pair"):
        S.rules_from_config([["embed"]])
    with pytest.raises(ValueError, match="mesh axes"):
        S.rules_from_config({"embed": 3})


def test_custom_rules_and_layers_axis():
    boxed = {"scanned": nn.LogicallyPartitioned(jnp.zeros((2, 8, 16)), ("layers", "embed", "mlp")),
             "plain": jnp.zeros((3,))}
    specs = S.logical_to_mesh_specs(boxed, S.DEFAULT_RULES)
    assert specs == {"scanned": P(None, "fsdp", "tensor"), "plain": P()}
    pipelined = S.rules_from_config({"layers": "data", "mlp": None})
    assert S.logical_to_mesh_specs(boxed, pipelined)["scanned"] == P("data", "fsdp", None)


def test_fit_spec_replicates_indivisible_dims():
    mesh = AbstractMesh((2, 4, 4), S.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    # bert-base's vocab 30522 is not divisible by tensor=4; hidden 768 is by fsdp=4.
    assert S.fit_spec(P("tensor", "fsdp"), (30522, 768), mesh) == P(None, "fsdp")
    assert S.fit_spec(P(("data", "fsdp"), None), (6, 5), mesh) == P("data", None)
    assert S.fit_spec(P("fsdp", "tensor", None), (32, 8, 4), mesh) == P("fsdp", "tensor", None)


# -------------------------------------------------------------------------------------------- mesh

def test_mesh_config_and_create_mesh():
    devices = jax.devices()
    mesh = S.create_mesh(S.MeshConfig(), devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": len(devices), "tensor": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    cfg = S.MeshConfig(ici_parallelism={"data": -1})
    assert cfg.ici_parallelism == (-1, 1, 1) and cfg.dcn_parallelism == (1, 1, 1)
    assert dict(S.create_mesh(cfg, devices[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert S.mesh_shape(S.MeshConfig((2, -1, 2), (-1, 1, 1)), [jax.devices()[0]] * 16) == ((2, 4, 2), (1, 1, 1))


def test_create_mesh_errors():
    one = jax.devices()[:1]
    with pytest.raises(ValueError, match="product 8 but there are 1 devices"):
        S.create_mesh(S.MeshConfig(ici_parallelism=(2, 2, 2)), one)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        S.MeshConfig(ici_parallelism=(-1, -1, 1))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        S.MeshConfig(dcn_parallelism={"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        S.MeshConfig(ici_parallelism={"model": 2})
    with pytest.raises(ValueError, match="one entry per mesh axis"):
        S.MeshConfig(ici_parallelism=(1, 2))
    with pytest.raises(ValueError, match="positive integers or -1"):
        S.MeshConfig(ici_parallelism=(0, -1, 1))
    with pytest.raises(ValueError, match="not divisible by 3"):
        S.create_mesh(S.MeshConfig(ici_parallelism=(3, -1, 1)), [one[0]] * 8)
    with pytest.raises(ValueError, match="does not divide"):
        S.create_mesh(S.MeshConfig(dcn_parallelism=(3, 1, 1)), [one[0]] * 8)


def test_maybe_initialize_distributed_is_noop_without_coordinator(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")  # no coordinator: still nothing to join
    assert S.maybe_initialize_distributed() is False
    assert S.maybe_initialize_distributed(num_processes=2, process_id=1) is False
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1


# ------------------------------------------------------------------------- sharded init, one device

@pytest.fixture(scope="module")
def placed(model, one_device_mesh):
    tx = optax.adamw(1e-3)
    params = S.sharded_init(model, one_device_mesh, rng=jax.random.PRNGKey(3))
    p_sh = S.param_shardings(model, one_device_mesh)
    return tx, params, p_sh, S.opt_state_shardings(tx, p_sh, params)


def test_sharded_init_matches_init_params(model, placed):
    _, params, p_sh, _ = placed
    ref = bert_jax.init_params(model, jax.random.PRNGKey(3))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        assert not isinstance(a, nn.Partitioned)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert flat_specs(jax.tree_util.tree_map(lambda x: x.sharding, params)) == GOLDEN_PRETRAINING_SPECS
    assert flat_specs(p_sh) == GOLDEN_PRETRAINING_SPECS


def test_sharded_init_of_some_leaves_matches_the_full_init(model, placed, one_device_mesh):
    """`only=` (a fresh head around loaded encoder weights) computes just those leaves, bit for bit."""
    _, params, p_sh, _ = placed
    flat = traverse_util.flatten_dict(params)
    only = [path for path in flat if path[0] != "bert"]
    some = S.sharded_init(model, one_device_mesh, rng=jax.random.PRNGKey(3), shardings=p_sh, only=only)
    assert sorted(some) == sorted(only)
    for path in only:
        np.testing.assert_array_equal(np.asarray(some[path]), np.asarray(flat[path]))
        assert some[path].sharding == flat[path].sharding


def test_opt_state_shardings_follow_params_not_shapes(placed):
    tx, params, p_sh, o_sh = placed
    adam = o_sh[0]
    assert adam.count.spec == P()
    for moments in (adam.mu, adam.nu):
        assert flat_specs(moments) == GOLDEN_PRETRAINING_SPECS
    # Same shape [32], different specs: shape matching alone could not tell these apart.
    layer = adam.mu["bert"]["encoder"]["layer"]["0"]
    assert layer["output"]["dense"]["bias"].spec == P("fsdp")
    assert layer["output"]["LayerNorm"]["scale"].spec == P(None)
    state = S.sharded_optimizer_init(tx, params, o_sh)
    assert state[0].mu["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert float(jnp.abs(state[0].nu["cls"]["predictions"]["bias"]).max()) == 0.0


def test_opt_state_shardings_shape_fallback(placed):
    """A transform whose init cannot run on optax's placeholder: matched by shape, else replicated."""
    _, params, p_sh, _ = placed

    def init(p):
        leaves = jax.tree_util.tree_leaves(p)
        if not leaves or not hasattr(leaves[0], "shape"):
            raise TypeError("needs arrays")
        return {"emb": jnp.zeros((TINY["vocab_size"], TINY["hidden_size"])), "step": jnp.zeros(()),
                "odd": jnp.zeros((5, 7))}
    tx = optax.GradientTransformation(init, lambda u, s, p=None: (u, s))
    o_sh = S.opt_state_shardings(tx, p_sh, params)
    assert o_sh["emb"].spec == P("tensor", "fsdp")  # the only param of that shape
    assert o_sh["step"].spec == P() and o_sh["odd"].spec == P()


def test_describe(model, placed):
    _, params, p_sh, _ = placed
    table = S.describe(params)
    row = next(line for line in table.splitlines() if line.startswith("bert/embeddings/word_embeddings/embedding"))
    assert "(99, 32)" in row and "('tensor', 'fsdp')" in row and "float32" in row
    assert table.splitlines()[-1] == f"{len(GOLDEN_PRETRAINING_SPECS)} params, " \
        f"{sum(x.size for x in jax.tree_util.tree_leaves(params)):,} values"
    boxed = S.describe(S.abstract_boxed_params(model), p_sh)
    assert "('embed', 'heads', 'kv')" in boxed and "('fsdp', 'tensor', None)" in boxed


# ----------------------------------------------------------------------- 8 devices, one process

def _run(cmd, timeout):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh")
    _run([sys.executable, WORKER, "mesh", str(out)], timeout=300)
    with open(out / "mesh.json") as f:
        results = json.load(f)
    with np.load(out / "reference.npz") as ref:
        results["reference"] = {k: ref[k] for k in ref.files}
    return results


MESHES = ["8x1x1", "2x4x1", "2x2x2", "1x1x8"]


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_train_step_matches_single_device(mesh_results, mesh):
    assert mesh_results["device_count"] == 8
    entry = mesh_results["meshes"][mesh]
    assert entry["init_diff"] == 0.0  # sharded_init draws exactly init_params' values
    plain = entry["plain"]
    for key in ("loss_diff", "grad_diff", "param_diff", "mu_diff", "nu_diff"):
        assert plain[key] <= TOL, (mesh, key, plain[key])
    assert np.isfinite(plain["loss"]) and plain["loss"] > 1.0


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_params_and_optimizer_state_sharded_by_rules(mesh_results, mesh):
    entry = mesh_results["meshes"][mesh]
    sizes = entry["mesh_shape"]
    assert entry["specs"] == {"word_embeddings": ["tensor", "fsdp"], "query_kernel": ["fsdp", "tensor", None],
                              "attn_out_kernel": ["tensor", None, "fsdp"], "mlp_out_kernel": ["tensor", "fsdp"],
                              "layernorm_scale": [None]}
    t, f = sizes["tensor"], sizes["fsdp"]
    assert entry["shard_shapes"] == {"word_embeddings": [96 // t, 32 // f], "query_kernel": [32 // f, 8 // t, 4],
                                     "attn_out_kernel": [8 // t, 4, 32 // f], "mlp_out_kernel": [64 // t, 32 // f],
                                     "layernorm_scale": [32]}
    assert entry["batch_spec"] == [["data", "fsdp"]]
    plain = entry["plain"]
    assert plain["grad_specs"] == entry["specs"]
    assert plain["updated_specs_match"] and plain["mu_like_params"] and plain["nu_like_params"]
    assert plain["count_spec"] == []


def test_indivisible_vocab_is_replicated_on_tensor_axis(mesh_results):
    assert mesh_results["meshes"]["2x2x2"]["vocab99_spec"] == [None, "fsdp"]


def test_simulated_dcn_mesh_on_one_host(mesh_results):
    dcn = mesh_results["simulated_dcn"]
    assert dcn["shape"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dcn["ids"] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]  # the dcn (data) axis is outermost


def test_activation_context_binds_logical_constraints(mesh_results):
    entry = mesh_results["meshes"]["2x2x2"]
    assert "context_error" not in entry, entry.get("context_error")
    for key in ("loss_diff", "grad_diff", "param_diff", "mu_diff", "nu_diff"):
        assert entry["context"][key] <= TOL, key
    assert entry["constraints_inside"] > 0 == entry["constraints_outside"]


# ------------------------------------------------------------------- 2 processes x 4 devices each

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def multiprocess_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess")
    port, nproc, deadline = _free_port(), 2, time.time() + 120
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")}
    procs, logs = [], []
    try:
        for pid in range(nproc):
            log = open(out / f"log_{pid}.txt", "w")
            logs.append(log)
            # Process 0 gets the coordinator as arguments, the others through the environment.
            penv = env if pid == 0 else dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                             JAX_NUM_PROCESSES=str(nproc), JAX_PROCESS_ID=str(pid))
            procs.append(subprocess.Popen([sys.executable, WORKER, "process", str(out), str(pid), str(nproc),
                                           str(port)], cwd=ROOT, env=penv, stdout=log, stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    failed = [(pid, p.returncode) for pid, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- process {pid} (rc {rc}):\n" + (out / f"log_{pid}.txt").read_text()[-3000:]
                          for pid, rc in failed)
        pytest.fail(f"multi-process run failed or timed out: {failed}\n{tails}")
    results = []
    for pid in range(nproc):
        with open(out / f"process_{pid}.json") as f:
            result = json.load(f)
        with np.load(out / f"grads_{pid}.npz") as grads:
            result["grads"] = {k: grads[k] for k in grads.files}
        results.append(result)
    return results


def test_multiprocess_matches_single_device(multiprocess_results, mesh_results):
    reference = mesh_results["reference"]
    for pid, result in enumerate(multiprocess_results):
        assert result["process_index"] == pid and result["process_count"] == 2
        assert result["device_count"] == 8 and result["local_device_count"] == 4
        assert result["mesh_shape"] == {"data": 2, "fsdp": 2, "tensor": 2}
        # dcn (data) axis across processes: process p owns mesh[data=p].
        assert result["mesh_process_index"] == [[[0, 0], [0, 0]], [[1, 1], [1, 1]]]
        # Each process fed 4 rows; the global batch has 8, this process holding rows 4p..4p+3.
        assert result["global_batch_shape"] == [8, 16]
        assert result["local_rows"] == [4 * pid, 4 * pid + 2]
        assert abs(result["loss"] - float(reference["loss"])) <= TOL
        assert result["word_embeddings_spec"] == ["tensor", "fsdp"]
        grad_keys = {k[len("grad/"):] for k in reference if k.startswith("grad/")}
        assert set(result["grads"]) == grad_keys
        diff = max(float(np.max(np.abs(result["grads"][k] - reference["grad/" + k]))) for k in grad_keys)
        assert diff <= TOL, diff


# ------------------------------------------------------------------ init_from places leaf by leaf

def test_init_from_places_each_leaf_on_its_shards(tmp_path):
    """On 8 devices (fsdp 2 x tensor 4), init_from from an HF directory (fine-tuning, pretraining) and
    from a bert_jax workdir (fine-tuning; also into scanned layers) never has a sharded parameter
    whole on a device (tests/init_from_worker.py watches jax.live_arrays() at every placement), ends
    with every leaf on its target sharding, and gives the values it gave when it loaded on one device."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "init_from_worker.py"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp_path / "init_from.json") as f:
        results = json.load(f)
    assert sorted(results) == ["finetune_hf", "finetune_hf_scanned", "finetune_workdir", "finetune_workdir_scanned",
                               "pretrain_hf"]
    for name, r in results.items():
        assert r["baseline"] == [], (name, r["baseline"][:5])  # the setup left nothing whole on a device
        assert r["sharded_shapes"] >= 10 and r["checks"] >= 4, (name, r)  # it watched something, more than once
        assert r["violations"] == [], (name, len(r["violations"]), sorted(set(r["violations"]))[:5])
        assert r["leaves"] == r["expected_leaves"] and r["wrong_shardings"] == [], (name, r["wrong_shardings"])
        assert r["compared"] >= r["leaves"] - 2 and r["unequal"] == [], (name, r["unequal"])  # all but a new head
