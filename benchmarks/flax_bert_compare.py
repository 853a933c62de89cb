"""bert_jax against transformers 4.57's FlaxBertForMaskedLM (the last Flax BERT transformers shipped), in one
process, steps interleaved: BERT-base MLM train (AdamW, dropout 0.1) and inference, dense MLM head on both
sides (FlaxBert computes logits at every position; the loss here takes the masked ones, as `labels=`).

    PYTHONPATH=.legacy_hf:. .venv/bin/python benchmarks/flax_bert_compare.py [--config=base --steps=6]

(`.legacy_hf` is where `bash setup.sh test` puts transformers 4.57.) Timings only; nothing is asserted.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from bert_jax import host_memory
from bert_jax.benchmark import inputs
from bert_jax.benchmark.jax_side import prepare_jax


def flax_bert_steps(config, data, seed: int = 0):
    """(train_step, infer_step) closures over transformers 4.57's FlaxBertForMaskedLM with the same sizes."""
    import transformers
    from transformers import BertConfig as HFConfig, FlaxBertForMaskedLM

    assert transformers.__version__.startswith("4."), f"needs transformers 4.x (FlaxBert), got {transformers.__version__}"
    hf = HFConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
                  max_position_embeddings=config.max_position_embeddings)
    model = FlaxBertForMaskedLM(hf, seed=seed)
    tx = optax.adamw(inputs.LEARNING_RATE, weight_decay=inputs.WEIGHT_DECAY)
    batch = {k: jnp.asarray(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = jnp.asarray(data["dense_labels"])

    def loss_fn(params, rng):
        logits = model(**batch, params=params, dropout_rng=rng, train=True).logits
        valid = labels >= 0
        per_token = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
        return jnp.sum(per_token * valid) / jnp.maximum(valid.sum(), 1)

    @jax.jit
    def train(params, opt_state, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    infer = jax.jit(lambda params: model(**batch, params=params, train=False).logits)
    state = {"params": model.params, "opt": tx.init(model.params), "step": 0}

    def train_step():
        rng = jax.random.fold_in(jax.random.PRNGKey(seed + 1), state["step"])
        state["params"], state["opt"], loss = train(state["params"], state["opt"], rng)
        loss.block_until_ready()
        state["step"] += 1

    def infer_step():
        infer(state["params"]).block_until_ready()

    return train_step, infer_step


flags.DEFINE_enum("config", "base", list(inputs.MODEL_CONFIGS), "Model size.")
flags.DEFINE_integer("batch", 8, "Sequences per step.")
flags.DEFINE_integer("seq", 128, "Tokens per sequence.")
flags.DEFINE_integer("steps", 6, "Timed steps per side (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps per side after compilation.")
flags.DEFINE_enum("host_memory", "auto", list(host_memory.MODES), "Host allocator policy for the whole process "
                  "(both sides; bert_jax.host_memory), applied before JAX starts.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    args = FLAGS
    host_memory.configure(args.host_memory)  # before the first JAX computation
    print(f"host memory: {host_memory.describe()} (--host_memory={args.host_memory}; both sides)")
    config = inputs.make_config(args.config)
    data = inputs.synthetic_batch(args.batch, args.seq, 0.15, config.vocab_size)
    flax_train, flax_infer = flax_bert_steps(config, data)
    ours = {mode: prepare_jax(config, data, mode, "dense") for mode in ("train", "infer")}
    for mode, theirs in (("train", flax_train), ("infer", flax_infer)):
        times = {"bert_jax": [], "FlaxBert 4.57": []}
        steps = {"bert_jax": ours[mode].step, "FlaxBert 4.57": theirs}
        for _ in range(args.warmup):
            for fn in steps.values():
                fn()
        for _ in range(args.steps):
            for name, fn in steps.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{mode} (dense head, {args.config} {args.batch}x{args.seq}, median of {args.steps}): "
              + ", ".join(f"{k} {v:.0f} ms" for k, v in medians.items())
              + f"; FlaxBert / bert_jax {medians['FlaxBert 4.57'] / medians['bert_jax']:.2f}x")


if __name__ == "__main__":
    app.run(main)
