"""Subprocess side of tests/test_sharded_kernels.py: 8 fake CPU devices (set before jax initialises,
hence a process of its own). For each mesh in MESHES it compiles and runs BertForPreTraining's loss
and gradients with every attention kernel that runs on CPU (Pallas ones interpreted) and writes:

  {"DxFxT": {impl: {"loss": float, "max_grad_diff_vs_xla": float, "shard_map": bool}}}

to OUT_DIR/results.json. The compiler's warnings go to this process's stderr, which the test reads
(XLA logs "Involuntary full rematerialization" there).

    python tests/sharded_worker.py OUT_DIR [IMPLS [ATTENTION_DROPOUT [MESHES]]]
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = " ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                                    if "xla_force_host_platform_device_count" not in f]
                                   + ["--xla_force_host_platform_device_count=8"])
os.environ["JAX_PLATFORMS"] = "cpu"
# Threads (not cores) for XLA:CPU's client pool, sized by PJRT_NPROC (else the number of cores: 2
# here). The Pallas TPU interpreter runs a kernel as host callbacks on every device's thread, with
# cross-device barriers, and each callback first puts its operands on CPU device 0 (`jax.device_put`
# in io_callback). With the default pool `pallas_tpu` deadlocked as soon as kernel operands grew: on 2
# devices with 64 KiB per-shard q/k/v (not with 32 KiB), and in the backward pass on 8 devices (not in
# the 8-device forward, 32 KiB operands). Every device thread sat in `np.array(val)` of the
# interpreter's `_allocate_buffer`, i.e. waiting for that device_put; XLA:CPU copies larger host
# buffers asynchronously on the pool, whose threads the blocked device programs evidently hold (the
# likely mechanism). A 16-thread pool ran every case (threads, not cores: they mostly wait). Set only
# where pallas_tpu runs; the other kernels keep the default pool.
if "pallas_tpu" in (sys.argv[2] if len(sys.argv) > 2 else "pallas_tpu"):
    os.environ.setdefault("PJRT_NPROC", "16")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bert_jax  # noqa: E402
from bert_jax import sharding as S  # noqa: E402
from tests.cases import TINY  # noqa: E402

# (data, fsdp, tensor): data x fsdp (the embedding case of issue 14), and all three axes at once.
MESHES = [(2, 4, 1), (2, 2, 2), (1, 2, 4)]
# The kernels to run (argv[2], comma-separated; the first is the reference). Pallas kernels run
# interpreted (`pallas_tpu` in TPU interpret mode, which simulates all devices of the shard_map).
IMPLS = (sys.argv[2] if len(sys.argv) > 2 else "xla,pallas_gpu,pallas_tpu").split(",")
# argv[3] = attention dropout rate (default 0). With dropout the reference is `xla_counter`: the unfused
# step drawing the counter-based mask `flash` draws in-kernel, for the whole (unsharded) call.
ATTENTION_DROPOUT = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
# argv[4]: meshes to run, e.g. "2x2x2,1x2x4" (default: all of MESHES).
if len(sys.argv) > 4:
    MESHES = [tuple(int(n) for n in m.split("x")) for m in sys.argv[4].split(",")]
# 8 heads of 8 so tensor=4 splits heads; 128 positions: the TPU kernel's block.
CONFIG = {**TINY, "vocab_size": 96, "hidden_size": 64, "num_attention_heads": 8, "intermediate_size": 64,
          "max_position_embeddings": 128, "attention_probs_dropout_prob": ATTENTION_DROPOUT}
BATCH, SEQ = 8, 128


def host_batch() -> dict:
    rs = np.random.RandomState(0)
    ids = rs.randint(1, CONFIG["vocab_size"], (BATCH, SEQ)).astype(np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1::2, SEQ - 40:] = 0
    labels = np.where((rs.rand(BATCH, SEQ) < 0.2) & (mask == 1), ids, -100).astype(np.int32)
    types = np.zeros((BATCH, SEQ), np.int32)
    types[:, SEQ // 2:] = 1
    return {"input_ids": np.where(mask == 1, ids, 0).astype(np.int32), "attention_mask": mask,
            "token_type_ids": types, "labels": labels,
            "next_sentence_label": rs.randint(0, 2, (BATCH,)).astype(np.int32)}


def main(out_dir: str) -> None:
    results = {}
    params0 = bert_jax.init_params(bert_jax.BertForPreTraining(bert_jax.BertConfig(**CONFIG)), jax.random.PRNGKey(0))
    for shape in MESHES:
        mesh = S.create_mesh(S.MeshConfig(ici_parallelism=shape))
        name = "x".join(map(str, shape))
        results[name] = {}
        grads_ref = None
        for impl in IMPLS:
            model = bert_jax.BertForPreTraining(bert_jax.BertConfig(**CONFIG, attention_impl=impl))
            shardings = S.param_shardings(model, mesh, S.DEFAULT_RULES)
            params = jax.device_put(params0, shardings)
            batch = S.make_global_batch(host_batch(), mesh)

            def loss_and_grads(p, b):
                # Hidden dropout on (the training path); the same rng for every kernel.
                f = lambda p: model.apply({"params": p}, **b, deterministic=False,
                                          rngs={"dropout": jax.random.PRNGKey(1)}).loss
                return jax.value_and_grad(f)(p)

            step = jax.jit(loss_and_grads, in_shardings=(shardings, S.batch_sharding(mesh)),
                           out_shardings=(None, shardings))
            with S.activation_context(mesh, S.DEFAULT_RULES):
                jaxpr = str(jax.make_jaxpr(loss_and_grads)(params, batch))
                loss, grads = step(params, batch)
            grads = jax.tree.map(np.asarray, grads)
            grads_ref = grads if grads_ref is None else grads_ref
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)))
            results[name][impl] = {"loss": float(loss), "max_grad_diff_vs_xla": diff,
                                   "shard_map": "shard_map" in jaxpr}
            print(name, impl, results[name][impl], flush=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
