"""Subprocess side of tests/test_sharding.py: runs with several fake CPU devices (which must be set
before jax initialises, hence a process of its own) and writes what it saw as JSON/npz.

  python tests/multihost_worker.py mesh OUT_DIR
      8 devices, one process: a train step (BertForPreTraining loss, grads, one adamw update) on
      every mesh in MESHES against the same step on one device.
  python tests/multihost_worker.py process OUT_DIR PROCESS_ID NUM_PROCESSES PORT
      (processes other than 0 also need JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)
      4 devices per process, jax.distributed over localhost: the same step on a (data=2 across the
      processes, fsdp=2, tensor=2) mesh, each process feeding only its half of the batch.
"""

import json
import os
import sys

MODE = sys.argv[1]
LOCAL_DEVICES = 8 if MODE == "mesh" else 4
# Fake CPU devices; LLVM -O0 compiles ~3x faster and leaves these fp32 results unchanged to ~1e-7.
os.environ["XLA_FLAGS"] = " ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                                    if "xla_force_host_platform_device_count" not in f]
                                   + [f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
                                      "--xla_backend_optimization_level=0"])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

if MODE == "process":  # before anything touches a device
    from bert_jax import sharding as S  # noqa: E402
    _, _, OUT, PID, NPROC, PORT = sys.argv
    if PID == "0":  # by arguments; process 1 by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
        assert S.maybe_initialize_distributed(f"127.0.0.1:{PORT}", int(NPROC), int(PID))
    else:
        assert os.environ["JAX_PROCESS_ID"] == PID
        assert S.maybe_initialize_distributed()
    assert S.maybe_initialize_distributed()  # idempotent

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import bert_jax  # noqa: E402
from bert_jax import sharding as S  # noqa: E402
from tests.cases import TINY  # noqa: E402

# Sharded dims divide by 8: vocab 96, hidden 32, 8 heads of 4, intermediate 64.
CONFIG = {**TINY, "vocab_size": 96, "num_attention_heads": 8, "intermediate_size": 64}
BATCH, SEQ = 8, 16
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
CHECK_LEAVES = {
    "word_embeddings": ("bert", "embeddings", "word_embeddings", "embedding"),
    "query_kernel": ("bert", "encoder", "layer", "0", "attention", "self", "query", "kernel"),
    "attn_out_kernel": ("bert", "encoder", "layer", "1", "attention", "output", "dense", "kernel"),
    "mlp_out_kernel": ("bert", "encoder", "layer", "0", "output", "dense", "kernel"),
    "layernorm_scale": ("bert", "embeddings", "LayerNorm", "scale"),
}


def host_batch() -> dict:
    rs = np.random.RandomState(0)
    ids = rs.randint(1, CONFIG["vocab_size"], (BATCH, SEQ)).astype(np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1::2, SEQ - 5:] = 0
    labels = np.where((rs.rand(BATCH, SEQ) < 0.3) & (mask == 1), ids, -100).astype(np.int32)
    types = np.zeros((BATCH, SEQ), np.int32)
    types[:, SEQ // 2:] = 1
    return {"input_ids": np.where(mask == 1, ids, 0).astype(np.int32), "attention_mask": mask,
            "token_type_ids": types, "labels": labels,
            "next_sentence_label": rs.randint(0, 2, (BATCH,)).astype(np.int32)}


def setup():
    model = bert_jax.BertForPreTraining(bert_jax.BertConfig(**CONFIG))
    tx = optax.adamw(1e-3, weight_decay=0.01)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, **batch).loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, grads, optax.apply_updates(params, updates), opt_state
    return model, tx, step


def get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def spec_str(sharding) -> list:
    return [None if a is None else a if isinstance(a, str) else list(a) for a in sharding.spec]


def max_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0)),
                                   a, b)
    return max(jax.tree_util.tree_leaves(diffs))


def adam_moments(opt_state):
    """(mu, nu) of optax.adamw's state."""
    adam = opt_state[0]
    return adam.mu, adam.nu


def run_mesh(out_dir):
    model, tx, step = setup()
    rng = jax.random.PRNGKey(42)
    batch = host_batch()
    # Single-device reference.
    params0 = bert_jax.init_params(model, rng)
    ref_loss, ref_grads, ref_params, ref_opt = jax.jit(step)(params0, tx.init(params0), batch)
    ref_mu, ref_nu = adam_moments(ref_opt)
    np.savez(os.path.join(out_dir, "reference.npz"), loss=np.asarray(ref_loss),
             **{"grad/" + jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(ref_grads)[0]})
    results = {"device_count": jax.device_count(), "reference_loss": float(ref_loss), "meshes": {}}

    def compare(loss, grads, new_params, new_opt, p_sh):
        mu, nu = adam_moments(new_opt)
        flat_p, flat_sh = jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(p_sh)
        return {
            "loss": float(loss), "loss_diff": abs(float(loss) - float(ref_loss)),
            "grad_diff": max_diff(grads, ref_grads), "param_diff": max_diff(new_params, ref_params),
            "mu_diff": max_diff(mu, ref_mu), "nu_diff": max_diff(nu, ref_nu),
            "grad_specs": {k: spec_str(get(grads, p).sharding) for k, p in CHECK_LEAVES.items()},
            "updated_specs_match": all(a.sharding.spec == b.spec for a, b in zip(flat_p, flat_sh)),
            "mu_like_params": all(a.sharding == b.sharding for a, b in zip(jax.tree_util.tree_leaves(mu), flat_p)),
            "nu_like_params": all(a.sharding == b.sharding for a, b in zip(jax.tree_util.tree_leaves(nu), flat_p)),
            "count_spec": spec_str(new_opt[0].count.sharding),
        }

    def context_run(mesh, make_jitted, params, opt_state, gbatch, p_sh) -> dict:
        """The step inside activation_context, where the model's logical activation constraints bind."""
        try:
            jitted = make_jitted()
            with S.activation_context(mesh):
                out = {"context": compare(*jitted(params, opt_state, gbatch), p_sh)}
                inside = jitted.lower(params, opt_state, gbatch).as_text()
            outside = make_jitted().lower(params, opt_state, gbatch).as_text()
            out["constraints_inside"] = inside.count("sharding_constraint")
            out["constraints_outside"] = outside.count("sharding_constraint")
            return out
        except Exception as e:  # noqa: BLE001  (reported to the test, which decides)
            return {"context_error": f"{type(e).__name__}: {str(e)[:1500]}"}

    for shape in MESHES:
        mesh = S.create_mesh(S.MeshConfig(ici_parallelism=shape))
        p_sh = S.param_shardings(model, mesh)
        params = S.sharded_init(model, mesh, rng=rng)
        o_sh = S.opt_state_shardings(tx, p_sh, params)
        opt_state = S.sharded_optimizer_init(tx, params, o_sh)
        gbatch = S.make_global_batch(batch, mesh)
        replicated = NamedSharding(mesh, P())
        make_jitted = lambda: jax.jit(step, in_shardings=(p_sh, o_sh, S.batch_sharding(mesh)),
                                      out_shardings=(replicated, p_sh, p_sh, o_sh))
        # Without activation_context: the input shardings alone drive XLA's propagation.
        loss, grads, new_params, new_opt = make_jitted()(params, opt_state, gbatch)
        entry = {"mesh_shape": dict(mesh.shape), "init_diff": max_diff(params, params0),
                 "batch_spec": spec_str(gbatch["input_ids"].sharding),
                 "specs": {k: spec_str(get(params, p).sharding) for k, p in CHECK_LEAVES.items()},
                 "shard_shapes": {k: list(get(params, p).addressable_shards[0].data.shape)
                                  for k, p in CHECK_LEAVES.items()},
                 "plain": compare(loss, grads, new_params, new_opt, p_sh)}
        if shape == (2, 2, 2):
            entry.update(context_run(mesh, make_jitted, params, opt_state, gbatch, p_sh))
            # A dim its mesh axes do not divide (vocab 99 over tensor=2) falls back to replicated.
            odd = bert_jax.BertForPreTraining(bert_jax.BertConfig(**TINY))
            entry["vocab99_spec"] = spec_str(get(S.param_shardings(odd, mesh), CHECK_LEAVES["word_embeddings"]))
        results["meshes"]["x".join(map(str, shape))] = entry

    # A simulated dcn axis on one host: mesh_utils cannot place it (one granule), the reshape does.
    mesh = S.create_mesh(S.MeshConfig(ici_parallelism=(1, 2, 2), dcn_parallelism=(2, 1, 1)))
    results["simulated_dcn"] = {"shape": dict(mesh.shape), "ids": np.vectorize(lambda d: d.id)(mesh.devices).tolist()}
    with open(os.path.join(out_dir, "mesh.json"), "w") as f:
        json.dump(results, f, indent=1)


def run_process(out_dir, pid):
    model, tx, step = setup()
    rng = jax.random.PRNGKey(42)
    mesh = S.create_mesh(S.MeshConfig(ici_parallelism=(1, 2, 2), dcn_parallelism=(2, 1, 1)))
    p_sh = S.param_shardings(model, mesh)
    params = S.sharded_init(model, mesh, rng=rng)
    o_sh = S.opt_state_shardings(tx, p_sh, params)
    opt_state = S.sharded_optimizer_init(tx, params, o_sh)
    batch = host_batch()
    per_process = BATCH // jax.process_count()
    local = {k: v[pid * per_process:(pid + 1) * per_process] for k, v in batch.items()}
    gbatch = S.make_global_batch(local, mesh)
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(step, in_shardings=(p_sh, o_sh, S.batch_sharding(mesh)),
                     out_shardings=(replicated, replicated, p_sh, o_sh))  # grads gathered to compare
    # Not inside activation_context: see test_activation_context (the model's DenseGeneral kernels
    # cannot be traced under a mesh + logical rules yet); the input shardings drive propagation.
    loss, grads, new_params, _ = jitted(params, opt_state, gbatch)
    result = {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
        "mesh_shape": dict(mesh.shape),
        "mesh_process_index": np.vectorize(lambda d: d.process_index)(mesh.devices).tolist(),
        "global_batch_shape": list(gbatch["input_ids"].shape),
        "local_rows": sorted({s.index[0].start or 0 for s in gbatch["input_ids"].addressable_shards}),
        "loss": float(loss),
        "word_embeddings_spec": spec_str(get(new_params, CHECK_LEAVES["word_embeddings"]).sharding),
    }
    np.savez(os.path.join(out_dir, f"grads_{pid}.npz"),
             **{jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]})
    with open(os.path.join(out_dir, f"process_{pid}.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    if MODE == "mesh":
        run_mesh(sys.argv[2])
    else:
        run_process(sys.argv[2], int(sys.argv[3]))
