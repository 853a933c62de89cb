"""Subprocess side of tests/test_objectives.py's mesh test: 8 fake CPU devices (set before jax initialises,
hence a process of its own). Runs two ELECTRA train steps (the loop's jitted, sharded step) on one device
and on meshes of 8, and writes {"1x1x1" | "DxFxT": [{loss, mlm_loss, rtd_loss} of step 1, ... of step 2]} to
OUT_DIR/results.json.

    python tests/electra_mesh_worker.py OUT_DIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = " ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                                    if "xla_force_host_platform_device_count" not in f]
                                   + ["--xla_force_host_platform_device_count=8"])
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import pretrain  # noqa: E402
from bert_jax import sharding  # noqa: E402
from bert_jax.training import loop, trainer  # noqa: E402
from bert_jax.training.optim import make_optimizer  # noqa: E402

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]
BATCH, SEQ, P, VOCAB = 8, 32, 5, 96


def host_batch(step: int) -> dict:
    rs = np.random.RandomState(step)
    ids = rs.randint(5, VOCAB, (BATCH, SEQ)).astype(np.int32)
    attention = (np.arange(SEQ)[None, :] < rs.randint(SEQ // 2, SEQ + 1, (BATCH, 1))).astype(np.int32)
    ids[attention == 0] = 0
    positions = np.stack([rs.choice(np.arange(1, SEQ // 2), P, replace=False) for _ in range(BATCH)]).astype(np.int32)
    labels = np.take_along_axis(ids, positions, 1)
    np.put_along_axis(ids, positions, 4, 1)
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": np.zeros_like(ids),
            "masked_lm_positions": positions, "masked_lm_ids": labels,
            "masked_lm_weights": (rs.rand(BATCH, P) < 0.9).astype(np.float32),
            "next_sentence_labels": np.full((BATCH,), -100, np.int32)}


def losses_on(mesh_shape) -> list:
    c = pretrain.get_config("size=tiny,runlocal")
    c.objective = "electra"
    c.model.update(hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=SEQ)
    c.data.update(seq_len=SEQ, max_predictions=P, global_batch_size=BATCH)
    c.electra.generator_size_divisor = 2
    c.mesh.ici_parallelism = mesh_shape
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh, rules = loop.make_mesh(c, devices)
    model_config = trainer.build_model_config(c, VOCAB, 0)
    model = trainer.build_model(c, model_config)
    tx, schedule = make_optimizer(c.optim)
    make_step = lambda tx, schedule, micro, skip: trainer.make_train_step(model, tx, schedule, micro, skip, 50.0)
    built = loop.build(c, model, tx, schedule, make_step, mesh, rules)
    params = sharding.sharded_init(model, mesh, rules, jax.random.PRNGKey(0),
                                   shardings=loop.shardings_of(built.abstract.params))
    state = loop.fresh_state(built, params, c.seed)
    out = []
    with sharding.activation_context(mesh, rules):
        for step in range(2):
            state, metrics = built.train_step(state, sharding.make_global_batch(host_batch(step), mesh, rules))
            out.append({k: float(metrics[k]) for k in ("loss", "mlm_loss", "rtd_loss")})
    return out


if __name__ == "__main__":
    results = {"x".join(map(str, m)): losses_on(m) for m in MESHES}
    with open(os.path.join(sys.argv[1], "results.json"), "w") as f:
        json.dump(results, f)
    print(json.dumps(results))
