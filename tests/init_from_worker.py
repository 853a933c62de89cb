"""Subprocess side of tests/test_sharding.py::test_init_from_places_each_leaf_on_its_shards: 8 fake
CPU devices (set before jax initialises, hence a process of its own), a (data 1, fsdp 2, tensor 4)
mesh, and `init_from` for fine-tuning (an HF directory, a bert_jax workdir) and for pretraining (an
HF directory). At every `jax.device_put`, every `sharded_init` and after each `init_from` it looks
at `jax.live_arrays()` for an array on ONE device with the full shape of a sharded parameter: a
whole parameter on one device, which is what placing each leaf straight onto its sharding avoids.

It also checks that every leaf ends on its target sharding and that the values are the ones the
one-device path gave (`load_hf_checkpoint`, with its own init of what the checkpoint lacks; the
saved params of the workdir).

    python tests/init_from_worker.py OUT_DIR      -> OUT_DIR/init_from.json
      {case: {"baseline", "violations", "wrong_shardings", "unequal": [str], "leaves",
              "expected_leaves", "compared", "checks", "sharded_shapes": int}}
"""

import gc
import json
import os
import sys

os.environ["XLA_FLAGS"] = " ".join([f for f in os.environ.get("XLA_FLAGS", "").split()
                                    if "xla_force_host_platform_device_count" not in f]
                                   + ["--xla_force_host_platform_device_count=8"])
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from bert_jax import sharding as S  # noqa: E402
from bert_jax.config import BertConfig  # noqa: E402
from bert_jax.hf import load_hf_checkpoint, save_hf_checkpoint, stack_layers  # noqa: E402
from bert_jax.modeling import BertForPreTraining, BertForSequenceClassification, BertModel, init_params  # noqa: E402
from bert_jax.training import checkpoints, finetune_setup, trainer  # noqa: E402

# Every sharded dim divides its mesh axes (hidden 32 / fsdp 2; heads 8, mlp 64, vocab 96 / tensor 4).
CONFIG = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=8, intermediate_size=64,
                    max_position_embeddings=64, num_labels=3)
MESH = S.create_mesh(S.MeshConfig(ici_parallelism=(1, 2, 4)))
RULES = S.DEFAULT_RULES


class Watch:
    """Records single-device arrays with the full shape of a sharded parameter, whenever `check` runs."""

    def __init__(self):
        self.shapes, self.violations, self.checks = set(), [], 0

    def watch(self, shardings, abstract):
        """Sharded (not fully replicated) params: their full shapes must never sit on one device. Shapes
        a replicated param shares are left out (a replicated leaf is whole on every device: a (hidden,)
        LayerNorm scale looks like a (hidden,) bias sharded over fsdp)."""
        flat_sh, flat_abs = traverse_util.flatten_dict(shardings), traverse_util.flatten_dict(abstract)
        replicated = {tuple(flat_abs[p].shape) for p, sh in flat_sh.items() if sh.is_fully_replicated}
        sharded = {p: tuple(flat_abs[p].shape) for p, sh in flat_sh.items() if not sh.is_fully_replicated}
        # Scanned layers ([layers, ...]): one layer's slice whole on a device is as wrong (an unrolled checkpoint).
        per_layer = {shape[1:] for p, shape in sharded.items() if "layer" in p and len(shape) > 2}
        self.shapes = (set(sharded.values()) | per_layer) - replicated
        self.violations = []
        self.checks = 0

    def check(self, where: str):
        self.checks += 1
        for a in jax.live_arrays():
            # Whole on a device: on one device only, or replicated over several.
            if tuple(a.shape) in self.shapes and tuple(a.sharding.shard_shape(a.shape)) == tuple(a.shape):
                self.violations.append(f"{where}: {tuple(a.shape)} {a.dtype} whole on "
                                       f"{sorted(d.id for d in a.sharding.device_set)}")


WATCH = Watch()
_device_put, _sharded_init = jax.device_put, S.sharded_init


def device_put(*args, **kwargs):
    WATCH.check("before device_put")
    out = _device_put(*args, **kwargs)
    WATCH.check("after device_put")
    return out


def sharded_init(*args, **kwargs):
    WATCH.check("before sharded_init")
    out = _sharded_init(*args, **kwargs)
    WATCH.check("after sharded_init")
    return out


def host_params(model) -> dict:
    """Random params of `model` as numpy (nothing left on a device)."""
    return jax.tree.map(np.asarray, jax.device_get(init_params(model, jax.random.PRNGKey(1))))


def measure(name: str, model, init, results: dict, expected: dict):
    """Runs `init(shardings)` watched; `expected`: {flat path: numpy array} the result must equal."""
    shardings = S.param_shardings(model, MESH, RULES)
    WATCH.watch(shardings, S.abstract_params(model, MESH, RULES))
    WATCH.check("baseline")  # nothing of the setup may count against init_from
    baseline = list(WATCH.violations)
    jax.device_put, S.sharded_init = device_put, sharded_init
    try:
        params = init(shardings)
    finally:
        jax.device_put, S.sharded_init = _device_put, _sharded_init
    WATCH.check("after init_from")
    flat, flat_sh = traverse_util.flatten_dict(params), traverse_util.flatten_dict(shardings)
    wrong = ["/".join(p) for p, v in flat.items() if not v.sharding.is_equivalent_to(flat_sh[p], v.ndim)]
    unequal = ["/".join(p) for p, v in expected.items() if p not in flat or not np.array_equal(flat[p], v)]
    results[name] = {"baseline": baseline, "violations": WATCH.violations[len(baseline):],
                     "wrong_shardings": wrong, "unequal": unequal, "compared": len(expected),
                     "leaves": len(flat), "expected_leaves": len(flat_sh),
                     "checks": WATCH.checks, "sharded_shapes": len(WATCH.shapes)}
    del params, flat


def stacked(flat: dict) -> dict:
    """{("bert", ...): array} in the scanned layout."""
    inner = stack_layers({p[1:]: v for p, v in flat.items()}, CONFIG.num_hidden_layers)
    return {("bert",) + p: v for p, v in inner.items()}


def main(out_dir):
    # An HF directory of a BertModel without its pooler: init_from lacks some leaves.
    hf_dir = os.path.join(out_dir, "hf")
    encoder = host_params(BertModel(CONFIG))
    encoder.pop("pooler")
    save_hf_checkpoint(hf_dir, CONFIG, encoder, BertModel)
    # A bert_jax workdir: a pretraining checkpoint's params, saved sharded.
    workdir = os.path.join(out_dir, "workdir")
    pre = BertForPreTraining(CONFIG)
    pre_params = S.shard_params(host_params(pre), S.param_shardings(pre, MESH, RULES))
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1, async_save=False)
    ckpt.save(1, {"params": pre_params}, force=True)
    ckpt.wait()
    ckpt.close()
    saved_params = jax.tree.map(np.array, jax.device_get(pre_params))
    del pre_params, encoder

    results = {}
    head = BertForSequenceClassification(CONFIG)
    scanned = BertForSequenceClassification(CONFIG.replace(scan_layers=True))  # converts the unrolled layout
    # The values init_from gave before it was sharded: load_hf_checkpoint (missing leaves from its own
    # init), the checkpoint's params.
    # (copies: a numpy view would keep the device array alive into the measurement)
    hf_encoder = {("bert",) + p: np.array(v) for p, v in traverse_util.flatten_dict(
        load_hf_checkpoint(hf_dir, BertModel, rng=jax.random.PRNGKey(0))[1]).items()}
    hf_pretraining = {p: np.array(v) for p, v in traverse_util.flatten_dict(
        load_hf_checkpoint(hf_dir, BertForPreTraining)[1]).items()}
    saved = {p: v for p, v in traverse_util.flatten_dict(saved_params).items() if p[0] == "bert"}
    gc.collect()
    for name, source, model, expected in (("finetune_hf", hf_dir, head, hf_encoder),
                                          ("finetune_workdir", workdir, head, saved),
                                          ("finetune_hf_scanned", hf_dir, scanned, stacked(hf_encoder)),
                                          ("finetune_workdir_scanned", workdir, scanned, stacked(saved))):
        config = ml_collections.ConfigDict(dict(init_from=source, seed=0))
        run = finetune_setup.Run(config, None, None, None, model.config, model, MESH, RULES,
                                 S.param_shardings(model, MESH, RULES))
        measure(name, model, lambda shardings: run.initial_params(), results, expected)
    config = ml_collections.ConfigDict(dict(init_from=hf_dir, seed=0))
    measure("pretrain_hf", pre, lambda shardings: trainer._initial_params(config, pre, MESH, RULES, shardings),
            results, hf_pretraining)
    with open(os.path.join(out_dir, "init_from.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
