"""bert_jax against KerasHub 0.32's `keras_hub.models.BertMaskedLM` (Keras 3 on the JAX backend), in one
process, steps interleaved: BERT MLM train (AdamW, dropout 0.1) and inference, sparse MLM head on both sides
(bert_jax `masked_positions`, KerasHub `mask_positions`: vocabulary logits only at the masked positions).

Install KerasHub outside the shared venv, then run with the JAX backend:

    .venv/bin/pip install --target /tmp/kerashub --no-deps keras==3.15.1 keras-hub==0.32.0
    KERAS_BACKEND=jax PYTHONPATH=/tmp/kerashub:. .venv/bin/python benchmarks/kerashub_compare.py \
        [--config=base --steps=6 --warmup=2]    # --config=tiny for a quick check

`--no-deps` is enough: what `import keras_hub` needs on the JAX backend (absl-py, numpy, rich, ml-dtypes,
packaging, regex, tokenizers) is already in the venv; keras' namex/optree/h5py and keras-hub's kagglehub,
sentencepiece and tensorflow-text are not imported by the backbone, the MLM head or this script (no presets,
no tokenizer, no saving), so no tensorflow is installed.

Equal work on the two sides (timings only; nothing is asserted):
  * sizes from `inputs.make_config(--config)` (base: vocab 30522, hidden 768, 12 layers, 12 heads,
    intermediate 3072, 512 positions, 2 segments), fp32, one synthetic batch (`inputs.synthetic_batch`,
    15% masked: the same ids, masked positions and labels on both sides, all ones padding mask);
  * activations: KerasHub's `BertBackbone` uses tanh-approximate GELU in the feed-forward layers and its
    `BertMaskedLM` head exact GELU, so bert_jax runs with `hidden_act="gelu_new"` (tanh) and
    `mlm_head_act="gelu"` (erf); `--nomatch_activations` keeps bert_jax's default exact GELU everywhere;
  * dropout 0.1 at the same places (embeddings, attention probabilities, attention output, FFN output)
    in training, none at inference; each side draws its masks its own way (bert_jax: 16-bit threefry
    draws, `bert_jax.modeling.dropout`; Keras: `keras.random.dropout`, threaded seed-generator state);
  * train = forward + backward + AdamW (lr `inputs.LEARNING_RATE`, weight decay `inputs.WEIGHT_DECAY`,
    betas 0.9/0.999, eps 1e-8 as optax's), one `jax.jit` each with parameters and optimizer state donated.
    bert_jax: `jax_side.prepare_jax`. KerasHub: Keras 3's stateless API, the way Keras' own JAX trainer
    does a `fit` step less its metrics: `model.stateless_call(trainable, non_trainable, x, training=True)`,
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` (BertMaskedLM's default loss),
    `jax.value_and_grad`, `keras.optimizers.AdamW(...).stateless_apply`;
  * infer = forward only, logits [B, P, V]: bert_jax `jax_infer_step_fn`, KerasHub `stateless_call(...,
    training=False)` under `jax.jit`;
  * parameters: KerasHub's backbone always builds a [CLS] pooler (`pooled_dense`, hidden^2 + hidden) that
    BertMaskedLM does not use and bert_jax's BertForMaskedLM does not have; it is frozen here
    (`trainable = False`) so neither gradients nor AdamW touch it, and its forward is dead code under jit.
    Both parameter counts are printed, with the difference.

The steps alternate (bert_jax, KerasHub, bert_jax, ...) so background load hits both alike; "other load" is
the average number of cores other processes kept busy during each mode's timed steps (`measure.background_cores`).
"""

import functools
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before any import of keras

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bert_jax import host_memory
from bert_jax.benchmark import inputs
from bert_jax.benchmark.jax_side import prepare_jax
from bert_jax.benchmark.measure import _cpu_snapshot, background_cores
from bert_jax.modeling import BertForMaskedLM, init_params

INSTALL = (".venv/bin/pip install --target /tmp/kerashub --no-deps keras==3.15.1 keras-hub==0.32.0, then run with "
           "KERAS_BACKEND=jax PYTHONPATH=/tmp/kerashub:.")
KERAS = "KerasHub"


def import_keras_hub():
    """(keras, keras_hub), or exits with one line saying how to install them."""
    try:
        import keras
        import keras_hub
    except ImportError as e:
        sys.exit(f"kerashub_compare: keras_hub is not importable ({e}); {INSTALL}")
    if keras.backend.backend() != "jax":
        sys.exit(f"kerashub_compare: Keras runs on the {keras.backend.backend()!r} backend; set KERAS_BACKEND=jax")
    return keras, keras_hub


def n_params(arrays) -> int:
    return int(sum(np.prod(np.shape(a)) for a in arrays))


def kerashub_steps(config, data, seed: int = 0):
    """({'train': step, 'infer': step}, info) over KerasHub's BertMaskedLM with `config`'s sizes."""
    keras, keras_hub = import_keras_hub()
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads, hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size, dropout=config.hidden_dropout_prob,
        max_sequence_length=config.max_position_embeddings, num_segments=config.type_vocab_size, dtype="float32")
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    pooler = n_params(v.value for v in backbone.pooled_dense.weights)
    backbone.pooled_dense.trainable = False  # unused by the MLM task; bert_jax's BertForMaskedLM has none
    optimizer = keras.optimizers.AdamW(learning_rate=inputs.LEARNING_RATE, weight_decay=inputs.WEIGHT_DECAY,
                                       beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    optimizer.build(model.trainable_variables)
    loss_obj = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = {"token_ids": jnp.asarray(data["input_ids"]), "segment_ids": jnp.asarray(data["token_type_ids"]),
         "padding_mask": jnp.asarray(data["attention_mask"]), "mask_positions": jnp.asarray(data["masked_positions"])}
    y = jnp.asarray(data["labels"])

    def loss_fn(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_obj(y, logits), non_trainable

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train(trainable, non_trainable, opt_vars, x, y):
        (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return trainable, non_trainable, opt_vars, loss

    @jax.jit
    def infer(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    # The train step donates its state: it gets copies, inference keeps the model's own arrays.
    state = {"tv": [jnp.copy(a) for a in trainable], "ntv": [jnp.copy(a) for a in non_trainable],
             "ov": [jnp.copy(v.value) for v in optimizer.variables], "loss": None}
    start = time.perf_counter()
    train_c = train.lower(state["tv"], state["ntv"], state["ov"], x, y).compile()
    infer_c = infer.lower(trainable, non_trainable, x).compile()
    compile_s = time.perf_counter() - start

    def train_step():
        state["tv"], state["ntv"], state["ov"], loss = train_c(state["tv"], state["ntv"], state["ov"], x, y)
        loss.block_until_ready()
        state["loss"] = loss

    def infer_step():
        infer_c(trainable, non_trainable, x).block_until_ready()

    info = dict(keras=keras.__version__, keras_hub=keras_hub.__version__, n_trainable=n_params(trainable),
                pooler=pooler, n_total=n_params(trainable) + pooler, compile_s=compile_s,
                loss=lambda: None if state["loss"] is None else float(state["loss"]))
    return {"train": train_step, "infer": infer_step}, info


flags.DEFINE_enum("config", "base", list(inputs.MODEL_CONFIGS), "Model size.")
flags.DEFINE_integer("batch", 8, "Sequences per step.")
flags.DEFINE_integer("seq", 128, "Tokens per sequence.")
flags.DEFINE_integer("steps", 6, "Timed steps per side (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps per side after compilation.")
flags.DEFINE_bool("match_activations", True, "bert_jax uses KerasHub's activations (tanh GELU in the FFN, erf "
                  "GELU in the MLM head); --nomatch_activations keeps bert_jax's exact GELU everywhere.")
flags.DEFINE_enum("host_memory", "auto", list(host_memory.MODES), "Host allocator policy for the whole process "
                  "(both sides; bert_jax.host_memory), applied before JAX starts.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    args = FLAGS
    host_memory.configure(args.host_memory)  # before the first JAX computation
    print(f"host memory: {host_memory.describe()} (--host_memory={args.host_memory}; both sides)")
    overrides = dict(hidden_act="gelu_new", mlm_head_act="gelu") if args.match_activations else {}
    config = inputs.make_config(args.config, **overrides)
    data = inputs.synthetic_batch(args.batch, args.seq, 0.15, config.vocab_size)
    theirs, info = kerashub_steps(config, data)
    params_host = jax.device_get(init_params(BertForMaskedLM(config), jax.random.PRNGKey(0)))
    ours_n = n_params(jax.tree.leaves(params_host))
    ours = {mode: prepare_jax(config, data, mode, "sparse", params_host=params_host) for mode in ("train", "infer")}
    print(f"versions: jax {jax.__version__}, keras {info['keras']}, keras_hub {info['keras_hub']}; "
          f"backend {jax.default_backend()}")
    print(f"params: bert_jax BertForMaskedLM {ours_n:,}; {KERAS} BertMaskedLM {info['n_total']:,} = "
          f"{info['n_trainable']:,} trained + {info['pooler']:,} pooler (pooled_dense, frozen); "
          f"trained difference {info['n_trainable'] - ours_n:+,}")
    print(f"compile: bert_jax train {ours['train'].compile_s:.1f} s, infer {ours['infer'].compile_s:.1f} s; "
          f"{KERAS} train + infer {info['compile_s']:.1f} s")

    rows = []
    for mode in ("train", "infer"):
        steps = {"bert_jax": ours[mode].step, KERAS: theirs[mode]}
        times = {name: [] for name in steps}
        for _ in range(args.warmup):
            for fn in steps.values():
                fn()
        snap = _cpu_snapshot()
        for _ in range(args.steps):
            for name, fn in steps.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        load = background_cores(snap, _cpu_snapshot())
        medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for name in steps:
            rows.append((name, mode, medians[name], medians[name] / medians["bert_jax"], load))

    p = data["masked_positions"].shape[1]
    print(f"\n{args.config} BERT MLM, batch {args.batch} x seq {args.seq}, fp32, sparse head ({p} masked per row), "
          f"dropout {config.hidden_dropout_prob} in train, activations "
          f"{'matched to KerasHub' if args.match_activations else 'bert_jax default (erf GELU)'}; median of "
          f"{args.steps} interleaved steps after {args.warmup} warm-up\n")
    print(f"| side | mode | ms median | ratio ({KERAS} / bert_jax) | other load (cores) |")
    print("|---|---|---:|---:|---:|")
    for name, mode, ms, ratio, load in rows:
        print(f"| {name} | {mode} | {ms:.1f} | {ratio:.2f}x | {'n/a' if load is None else f'{load:.2f}'} |")
    fmt = lambda loss: "n/a" if loss is None else f"{loss:.3f}"
    print(f"\nlast train loss (ln V = {np.log(config.vocab_size):.2f} at init): bert_jax {fmt(ours['train'].loss())}, "
          f"{KERAS} {fmt(info['loss']())}")


if __name__ == "__main__":
    app.run(main)
