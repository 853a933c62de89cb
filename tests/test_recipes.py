"""Recipe configs (configs/cramming.py, mosaicbert.py, modernbert.py) and the model switches as config
keys: every BertConfig switch is a `--config.model.*` key that reaches the model, the published
hyperparameters are what the non-runlocal configs hold, and each `:runlocal` trains."""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from bert_jax.config import BertConfig
from bert_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_FIELDS = {f.name for f in dataclasses.fields(BertConfig)}


def _config_module(name):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pretrain = _config_module("pretrain")


# ------------------------------------------------------------------------------ model switches as keys
def test_every_bert_config_switch_is_a_model_key():
    c = pretrain.model_config("base")
    assert set(c) == BERT_FIELDS - set(pretrain.NOT_MODEL_SWITCHES)
    defaults = {f.name: f.default for f in dataclasses.fields(BertConfig)}
    set_by_size = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                   "attention_impl": "auto", "vocab_size": 0}
    for name, value in c.items():
        assert value == set_by_size.get(name, defaults[name]), name


# A value other than the config's for every switch BertConfig accepts on its own (with the companions
# in COMPANIONS); fields not listed get a generic one (bool: flipped, int: + 1, float: x 2).
OVERRIDES = {
    "hidden_size": 256, "num_attention_heads": 4, "hidden_act": "relu", "position_embedding_type": "relative_key",
    "model_type": "roberta",
    "norm_position": "pre", "norm_type": "rmsnorm", "mlp_type": "geglu", "dtype": "bfloat16",
    "param_dtype": "bfloat16", "attention_impl": "xla", "remat_policy": "full", "mlm_head_act": "relu",
    "embedding_size": 64, "type_vocab_size": 0, "hidden_dropout_prob": 0.05, "attention_probs_dropout_prob": 0.05,
    "layer_norm_eps": 1e-6, "initializer_range": 0.05, "position_offset": 2, "vocab_size": 500,
    "rope_theta": 20000.0, "local_rope_theta": 5000.0, "local_attention_window": 16, "global_attn_every_n_layers": 2,
}
COMPANIONS = {"skip_padding_positions": {"position_offset": 2}, "first_layer_attention_norm": {"norm_position": "pre"}}


def _override_value(name, current):
    if name in OVERRIDES:
        return OVERRIDES[name]
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + 1
    if isinstance(current, float):
        return current * 2 if current else 0.5
    raise AssertionError(f"add a test override value for the new model switch {name!r} (value {current!r})")


def test_every_switch_overrides_from_the_command_line_and_reaches_bert_config():
    """`--config.model.<field>=<value>` for every switch at once on configs/pretrain.py: the command line
    parses each (None-default fields included) and each value, applied to the default model, is what
    `trainer.build_model_config` hands BertConfig."""
    model = pretrain.model_config("tiny")
    overrides = {name: _override_value(name, value) for name, value in model.items()}
    flags = [f"--config.model.{name}={value}" for name, value in overrides.items()]
    proc = subprocess.run([sys.executable, "-c", _PARSE_SCRIPT, "--config=configs/pretrain.py:size=tiny", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed["model"] == overrides  # every key parsed, with its type

    from bert_jax.training import trainer
    default = pretrain.get_config("size=tiny")
    for name, value in overrides.items():
        if name == "vocab_size":  # pretraining sizes the model to its tokenizer (0 here means exactly that)
            continue
        config = default.copy_and_resolve_references()
        config.model[name] = parsed["model"][name]
        for companion, companion_value in COMPANIONS.get(name, {}).items():
            config.model[companion] = companion_value
        model_config = trainer.build_model_config(config, vocab_size=1000, pad_token_id=0)
        assert getattr(model_config, name) == value, name


_PARSE_SCRIPT = """
import json, sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.FLAGS(sys.argv)
print(json.dumps({"model": flags.FLAGS.config.model.to_dict()}))
"""


@pytest.mark.parametrize("name", ["cramming", "mosaicbert", "modernbert"])
def test_recipe_switches_are_bert_config_fields_and_reach_the_model(name):
    """Every published switch a recipe names is a BertConfig field, set as written (a misspelt field would
    otherwise be a new config key that no model reads)."""
    from bert_jax.training import trainer
    recipe = _config_module(name)
    assert set(recipe.MODEL) <= BERT_FIELDS, set(recipe.MODEL) - BERT_FIELDS
    c = recipe.get_config("")
    model_config = trainer.build_model_config(c, c.data.vocab_size, 0)
    for field, value in recipe.MODEL.items():
        if field != "max_position_embeddings":  # raised to the sequence length where that is longer
            assert getattr(model_config, field) == value, field


def test_runlocal_keeps_architecture_switches():
    c = pretrain.get_config("size=base")
    c.model.update(norm_position="pre", mlp_type="geglu", hidden_dropout_prob=0.0)
    pretrain.runlocal(c)
    assert (c.model.hidden_size, c.model.num_hidden_layers) == (128, 2)
    assert (c.model.norm_position, c.model.mlp_type, c.model.hidden_dropout_prob) == ("pre", "geglu", 0.0)


# ------------------------------------------------------------------------------ published hyperparameters
def test_cramming_published_hyperparameters():
    c = _config_module("cramming").get_config("")
    m = c.model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads) == (16, 768, 12)
    assert (m.mlp_type, m.intermediate_size, m.hidden_act) == ("geglu", 1536, "gelu")  # 3072 split in halves
    assert (m.norm_position, m.layer_norm_eps) == ("pre", 1e-12)
    assert not (m.attention_bias or m.mlp_bias or m.decoder_bias) and m.norm_bias
    assert (m.type_vocab_size, m.embedding_norm, m.tie_word_embeddings) == (0, True, True)
    assert m.hidden_dropout_prob == m.attention_probs_dropout_prob == 0.0
    assert c.objective == "mlm"
    d = c.data
    assert (d.seq_len, d.masked_lm_prob, d.global_batch_size, d.vocab_size) == (128, 0.25, 128, 32768)
    assert c.data.max_predictions >= 0.25 * 128
    o = c.optim
    assert (o.optimizer, o.learning_rate, o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm) == (
        "adamw", 1e-3, 0.9, 0.98, 1e-12, 0.01, 0.5)
    assert (o.schedule, o.initial_lr_fraction, o.peak_fraction, o.end_learning_rate, o.warmup_steps) == (
        "one_cycle", 0.25, 0.75, 0.0, 0)
    # the batch reaches 8192 sequences (64 x 128) at 60% of the data
    assert (o.batch_ramp_from, o.batch_ramp_to * c.data.global_batch_size, o.batch_ramp_fraction) == (1, 8192, 0.6)
    assert c.total_steps == o.total_steps == 900_000
    # the triangle is laid over data steps (the paper's wall clock), not over the ramp's updates
    assert o.schedule_counts == "data_steps"
    tx, schedule = optim.make_optimizer(o)  # the recipe builds
    assert float(schedule(0)) == pytest.approx(0.25e-3)
    assert float(schedule(675_000)) == pytest.approx(1e-3, rel=1e-3)  # 75% of the data: the peak (its update's start)
    assert float(schedule(o.total_steps - 1)) < 1e-4


@pytest.mark.parametrize("size, shape", [("base", (12, 768, 12)), ("large", (24, 1024, 16))])
def test_mosaicbert_published_hyperparameters(size, shape):
    c = _config_module("mosaicbert").get_config(f"size={size}")
    m = c.model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads) == shape
    assert (m.mlp_type, m.intermediate_size, m.norm_position) == ("geglu", 4 * shape[1], "post")
    assert m.attention_bias and m.mlp_bias and m.norm_bias
    assert (m.attention_probs_dropout_prob, m.hidden_dropout_prob) == (0.0, 0.1)
    assert c.objective == "mlm"
    d = c.data
    assert (d.seq_len, d.masked_lm_prob, d.global_batch_size, d.vocab_size) == (128, 0.3, 4096, 30528)
    o = c.optim
    assert (o.learning_rate, o.b1, o.b2, o.eps, o.grad_clip_norm) == (5e-4, 0.9, 0.98, 1e-6, 0.0)
    assert o.weight_decay * o.learning_rate == pytest.approx(1e-5)  # Composer's decoupled 1e-5
    assert (o.schedule, o.warmup_fraction, o.end_learning_rate) == ("linear", 0.06, pytest.approx(0.02 * 5e-4))
    assert o.total_steps * c.data.global_batch_size == 286_720_000
    _, schedule = optim.make_optimizer(o)
    assert float(schedule(4200)) == pytest.approx(5e-4)  # 6% of 70,000 steps
    assert float(schedule(70_000)) == pytest.approx(1e-5)


def test_mosaicbert_alibi():
    assert _config_module("mosaicbert").get_config("").model.position_embedding_type == "alibi"


@pytest.mark.parametrize("size, shape, lr, batches", [
    ("base", (22, 768, 12, 1152), 8e-4, (768, 4608)),
    ("large", (28, 1024, 16, 2624), 5e-4, (448, 4928)),
])
def test_modernbert_published_hyperparameters(size, shape, lr, batches):
    c = _config_module("modernbert").get_config(f"size={size}")
    m = c.model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size) == shape
    assert (m.norm_position, m.layer_norm_eps, m.mlp_type, m.hidden_act) == ("pre", 1e-5, "geglu", "gelu")
    assert not (m.norm_bias or m.attention_bias or m.mlp_bias) and m.decoder_bias
    assert (m.type_vocab_size, m.hidden_dropout_prob, m.attention_probs_dropout_prob) == (0, 0.0, 0.0)
    assert c.objective == "mlm"
    assert (c.data.seq_len, c.data.masked_lm_prob, c.data.vocab_size) == (1024, 0.3, 50368)
    o = c.optim
    assert (o.learning_rate, o.b1, o.b2, o.eps) == (lr, 0.9, 0.98, 1e-6)
    assert o.weight_decay * o.learning_rate == pytest.approx(1e-5)
    assert (o.schedule, o.decay_shape) == ("trapezoidal", "1-sqrt")
    # the ramp: first and final batch in sequences; 1.7T tokens of data steps
    assert (c.data.global_batch_size, c.data.global_batch_size * o.batch_ramp_to) == batches
    assert o.total_steps * c.data.global_batch_size * 1024 == pytest.approx(1.7e12, rel=1e-5)
    plan = optim.accumulation_plan(o.total_steps, 1, o.batch_ramp_to, o.batch_ramp_fraction)
    tokens_per_step = c.data.global_batch_size * 1024
    ramp_tokens = {"base": 50e9, "large": 10e9}[size]
    # the ramp grows over its first batch_ramp_fraction of the data steps (the paper's 50B / 10B tokens)
    assert o.batch_ramp_fraction * o.total_steps * tokens_per_step == pytest.approx(ramp_tokens, rel=1e-4)
    assert plan[0] == 1 and plan[len(plan) // 2] == o.batch_ramp_to
    # the schedule counts data steps (tokens): warmup 3B / 2B tokens, a 1-sqrt decay over the last 50B
    assert o.schedule_counts == "data_steps"
    warmup_tokens = {"base": 3e9, "large": 2e9}[size]
    assert o.warmup_steps * tokens_per_step == pytest.approx(warmup_tokens, rel=1e-3)
    assert o.decay_fraction * o.total_steps * tokens_per_step == pytest.approx(50e9, rel=1e-4)
    _, schedule = optim.make_optimizer(o)
    assert float(schedule(o.warmup_steps // 2)) < 0.6 * lr
    assert float(schedule(o.total_steps // 2)) == pytest.approx(lr)
    cooldown = o.total_steps - round(o.decay_fraction * o.total_steps)
    # three quarters into the cooldown, 1 - sqrt(0.75) of the peak is left (the update's start, <= 11 steps back)
    three_quarters = cooldown + round(0.75 * (o.total_steps - cooldown))
    assert float(schedule(three_quarters)) == pytest.approx(lr * (1 - math.sqrt(0.75)), rel=2e-3)


def test_modernbert_positions_and_alternating_attention():
    m = _config_module("modernbert").get_config("").model
    assert (m.position_embedding_type, m.rope_theta, m.local_rope_theta) == ("rotary", 160_000.0, 10_000.0)
    assert (m.global_attn_every_n_layers, m.local_attention_window, m.model_type) == (3, 128, "modernbert")


# ------------------------------------------------------------------------------------- :runlocal trains
CORPUS_WORDS = ("the model reads a sentence and predicts the masked words from the words around them while "
                "each layer mixes the tokens with attention and a gated feed forward block").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.conftest import write_text_corpus
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), CORPUS_WORDS, vocab_size=200, words_per_sentence=(6, 14))


@pytest.mark.parametrize("name", ["cramming", "modernbert", "mosaicbert"])
def test_runlocal_trains(name, corpus, tmp_path):
    """`configs/<recipe>.py:runlocal` (on a small text corpus, 6 steps) trains: finite loss, the ramp's
    optimizer updates applied, the logged learning rate the schedule's."""
    from bert_jax.training import trainer
    c = _config_module(name).get_config("runlocal")
    steps = 6
    c.data.update(source=f"text:{corpus[0]}", vocab=corpus[1], vocab_size=200, seq_len=32,
                  max_predictions=11, global_batch_size=4, eval_batches=1, dupe_factor=1)
    c.optim.total_steps = steps
    width = c.model.intermediate_size / c.model.hidden_size  # the recipe's MLP ratio, kept at hidden 32
    c.model.update(hidden_size=32, intermediate_size=int(32 * width), num_attention_heads=2)
    if c.optim.schedule != "one_cycle":
        c.optim.update(warmup_steps=1, warmup_fraction=-1.0)
    c.log_every, c.eval_every, c.checkpoint_every, c.progress_bar = 1, 0, steps, False
    result = trainer.train_and_evaluate(c, str(tmp_path))
    assert result["step"] == steps
    assert math.isfinite(result["train"]["loss"]) and result["train"]["loss"] > 0
    opt_state = result["state"].opt_state
    plan = None
    if (c.optim.batch_ramp_from, c.optim.batch_ramp_to) != (1, 1):
        plan = optim.accumulation_plan(steps, c.optim.batch_ramp_from, c.optim.batch_ramp_to,
                                       c.optim.batch_ramp_fraction)
        assert isinstance(opt_state, optax.MultiStepsState) and int(opt_state.gradient_step) == len(plan)
    _, schedule = optim.make_optimizer(c.optim)
    logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"learning_rate"' in line][-1]
    assert logged["learning_rate"] == pytest.approx(float(jax.device_get(schedule(steps - 1))), rel=1e-5)


@pytest.mark.slow
def test_batch_ramp_resumes_mid_accumulation_bit_exact(corpus, tmp_path):
    """configs/cramming.py:runlocal over 8 steps (plan [1, 2, 3, 2]) checkpointed at step 4, in the middle
    of the third update's accumulation: resuming from step 4 ends with the params of the uninterrupted run
    (the MultiSteps state, accumulated gradients included, is checkpointed)."""
    import shutil

    from bert_jax.training import checkpoints, trainer
    steps = 8

    def config():
        c = _config_module("cramming").get_config("runlocal")
        c.data.update(source=f"text:{corpus[0]}", vocab=corpus[1], vocab_size=200, seq_len=32, max_predictions=11,
                      global_batch_size=4, eval_batches=1, dupe_factor=1)
        c.model.update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
        c.optim.total_steps = steps
        c.log_every, c.eval_every, c.checkpoint_every, c.progress_bar = 1, 0, 4, False
        c.keep_checkpoints, c.async_checkpointing = 0, False
        return c

    np.testing.assert_array_equal(optim.accumulation_plan(steps, 1, 4, 0.6), [1, 2, 3, 2])
    trainer.train_and_evaluate(config(), str(tmp_path))
    ckpt = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints"))
    straight = jax.tree.map(np.asarray, ckpt.read(steps)[0]["params"])
    ckpt.close()
    shutil.rmtree(tmp_path / "checkpoints" / str(steps))
    result = trainer.train_and_evaluate(config(), str(tmp_path))
    assert result["step"] == steps and int(result["state"].opt_state.gradient_step) == 4
    logged = [json.loads(line).get("step") for line in open(tmp_path / "metrics.jsonl") if '"loss"' in line]
    assert logged.count(1) == 1 and logged.count(5) == 2  # the rerun started at step 5: it resumed
    resumed = jax.tree.map(np.asarray, jax.device_get(result["state"].params))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
