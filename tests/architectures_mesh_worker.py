"""Subprocess side of tests/test_architectures.py's mesh test: 8 fake CPU devices (set before jax
initialises, hence a process of its own). For each architecture variant in VARIANTS, two AdamW train
steps of BertForMaskedLM on one device and on a (data=2, fsdp=2, tensor=2) mesh with the default
sharding rules (params born sharded, activations constrained), and writes

  {variant: {"losses": [l1, l2], "mesh_losses": [m1, m2], "param_diff": max |p_1dev - p_mesh|}}

to OUT_DIR/results.json.

    python tests/architectures_mesh_worker.py OUT_DIR
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = " ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                                    if "xla_force_host_platform_device_count" not in f]
                                   + ["--xla_force_host_platform_device_count=8",
                                      "--xla_backend_optimization_level=0"])  # compiles ~3x faster, same fp32 results
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import bert_jax  # noqa: E402
from bert_jax import sharding as S  # noqa: E402

# Sharded dims divide by 2: vocab 96, hidden 32, 8 heads of 4, intermediate 64.
BASE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=8, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
VARIANTS = {
    "rmsnorm_pre_nobias": dict(norm_type="rmsnorm", norm_position="pre", norm_bias=False),
    "geglu": dict(mlp_type="geglu"),
    "swiglu_no_biases": dict(mlp_type="swiglu", hidden_act="silu", attention_bias=False, mlp_bias=False,
                             decoder_bias=False),
    "no_embedding_norm_no_types": dict(embedding_norm=False, type_vocab_size=0),
    "electra_projection": dict(embedding_size=16, mlm_head_act="gelu"),
    "roberta_positions_scanned": dict(pad_token_id=1, position_offset=2, skip_padding_positions=True,
                                      type_vocab_size=1, scan_layers=True, remat_policy="full"),
    # NomicBERT-like: RoPE, SwiGLU, no projection biases.
    "rotary_swiglu": dict(position_embedding_type="rotary", rope_theta=1000.0, mlp_type="swiglu", hidden_act="silu",
                          attention_bias=False, mlp_bias=False),
    "alibi": dict(position_embedding_type="alibi"),
    # ModernBERT-like under scan + remat: local window (|q - k| <= 2) on layer 1, global on layer 0 (the
    # scanned layer index picks), per-layer theta, no attention norm in layer 0, no token types.
    "modernbert_like_scanned": dict(position_embedding_type="rotary", rope_theta=160.0, local_rope_theta=10.0,
                                    local_attention_window=4, global_attn_every_n_layers=2, norm_position="pre",
                                    first_layer_attention_norm=False, mlp_type="geglu", type_vocab_size=0,
                                    attention_bias=False, mlp_bias=False, norm_bias=False, mlm_head_bias=False,
                                    scan_layers=True, remat_policy="full"),
}
BATCH, SEQ = 8, 16


def host_batch(config) -> dict:
    rs = np.random.RandomState(0)
    pad = config.pad_token_id
    ids = rs.randint(2, config.vocab_size, (BATCH, SEQ)).astype(np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1::2, SEQ - 5:] = 0
    labels = np.where((rs.rand(BATCH, SEQ) < 0.3) & (mask == 1), ids, -100).astype(np.int32)
    return {"input_ids": np.where(mask == 1, ids, pad).astype(np.int32), "attention_mask": mask, "labels": labels}


def main(out_dir: str) -> None:
    mesh = S.create_mesh(S.MeshConfig(ici_parallelism=(2, 2, 2)))
    results = {"device_count": jax.device_count()}
    for name, switches in VARIANTS.items():
        config = bert_jax.BertConfig(**{**BASE, **switches})
        model = bert_jax.BertForMaskedLM(config)
        tx = optax.adamw(1e-3, weight_decay=0.01)

        def step(params, opt_state, batch):
            loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, **batch).loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return loss, optax.apply_updates(params, updates), opt_state

        batch = host_batch(config)
        params = bert_jax.init_params(model, jax.random.PRNGKey(0))
        opt_state = tx.init(params)
        single = jax.jit(step)
        losses = []
        for _ in range(2):
            loss, params, opt_state = single(params, opt_state, batch)
            losses.append(float(loss))

        p_sh = S.param_shardings(model, mesh)
        m_params = S.sharded_init(model, mesh, rng=jax.random.PRNGKey(0))
        m_opt = S.sharded_optimizer_init(tx, m_params)
        gbatch = S.make_global_batch(batch, mesh)
        sharded = jax.jit(step, in_shardings=(p_sh, None, S.batch_sharding(mesh)))
        mesh_losses = []
        with S.activation_context(mesh):
            for _ in range(2):
                loss, m_params, m_opt = sharded(m_params, m_opt, gbatch)
                mesh_losses.append(float(loss))
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(m_params)))
        spec = str(jax.tree.leaves(m_params)[-1].sharding.spec)
        results[name] = {"losses": losses, "mesh_losses": mesh_losses, "param_diff": diff, "a_spec": spec}
        print(name, results[name], flush=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
