"""Hugging Face checkpoint import/export (bert_jax.hf) and config.json handling (BertConfig.from_hf/to_hf).

- ours -> HF: random params of every head written with `save_hf_checkpoint` load into transformers'
  PyTorch class with no missing/unexpected/mismatched keys and give the same outputs;
- HF -> ours -> HF: `save_pretrained` tensors come back bit-identical;
- checkpoint variants (no `bert.` prefix, legacy gamma/beta, buffers, shards, .bin, bf16) load to
  the same params; unexpected/missing keys are logged; broken checkpoints raise clear errors;
- google-research `bert_config.json`, config round trip through `transformers.BertConfig`;
- a golden list of BertForPreTraining's parameter tree and its PyTorch key names.

Random params fill the tree `init_params` builds (traced with jax.eval_shape: one XLA compile per head
would cost ~5 s each on a small CPU) with noise, so that biases and LayerNorm are not 0/1 and a
swapped or dropped tensor shows up in the outputs. Tolerance: 1e-5 max abs difference, fp32 CPU.
"""

import json
import logging
import os
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from flax.core import FrozenDict
from safetensors.numpy import load_file, save_file

from bert_jax.config import BertConfig
from bert_jax.hf import load_hf_checkpoint, read_state_dict, save_hf_checkpoint, to_torch_state_dict, torch_key
from bert_jax.modeling import build_model, init_params
from tests import cases
from tests.hf_reference import flatten_outputs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
HF_LOGGER = "bert_jax.hf"

# variant name -> (transformers class name, config kwargs added to TINY)
VARIANTS = {name: (name, dict(extra)) for name, extra in cases.HEADS.items()}
VARIANTS["BertForMaskedLM-untied"] = ("BertForMaskedLM", {"tie_word_embeddings": False})
assert VARIANTS["BertLMHeadModel"][1] == {"is_decoder": True, "add_cross_attention": True}

MAX_DIFFS = {}  # test id -> worst output difference, printed with `pytest -s`


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    yield
    transformers.logging.set_verbosity(verbosity)
    transformers.utils.logging.enable_progress_bar()
    if MAX_DIFFS:
        print("\nmax abs output differences:", {k: f"{v:.2e}" for k, v in sorted(MAX_DIFFS.items())})


# ------------------------------------------------------------------------------------------------
# Helpers
def config_for(variant: str) -> BertConfig:
    return BertConfig(**{**cases.TINY, **VARIANTS[variant][1]})


def random_params(model, seed: int) -> dict:
    """Random values in the tree `init_params` builds (traced for its shapes, not compiled): no bias is
    0 and no LayerNorm scale 1, so a swapped or dropped tensor shows up in the outputs."""
    shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model)))
    rs = np.random.RandomState(seed)
    return traverse_util.unflatten_dict({
        path: ((path[-1] == "scale") + 0.05 * rs.randn(*leaf.shape)).astype(leaf.dtype)
        for path, leaf in sorted(shapes.items())})


def case_inputs(hf_name: str):
    """Padded inputs (+ labels, so the loss is compared too) as numpy for us and torch tensors for HF."""
    raw = {k: np.asarray(v) for k, v in cases.make_case(hf_name)["inputs"].items()}
    ours = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in raw.items()}
    theirs = {k: torch.tensor(v, dtype=torch.long if v.dtype.kind in "iu" else torch.float32) for k, v in raw.items()}
    return ours, theirs


def run_ours(hf_name: str, config: BertConfig, params) -> dict:
    ours, _ = case_inputs(hf_name)
    out = build_model(hf_name, config).apply({"params": params}, **ours, **cases.OUTPUTS)
    return flatten_outputs(out)


def run_torch(hf_name: str, model) -> dict:
    _, theirs = case_inputs(hf_name)
    with torch.no_grad():
        return flatten_outputs(model.eval()(**theirs, **cases.OUTPUTS))


def max_output_diff(ours: dict, ref: dict, name: str) -> float:
    assert ref, name
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"{name}: outputs missing here: {missing}"
    assert "loss" in ref or name.startswith("BertModel"), f"{name}: no loss compared"
    worst = 0.0
    for key, expected in ref.items():
        got = np.asarray(ours[key], np.float32)
        assert got.shape == expected.shape, f"{name}/{key}: shape {got.shape} vs transformers {expected.shape}"
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        assert diff <= ATOL, f"{name}/{key}: max abs diff {diff:.3g} > {ATOL}"
        worst = max(worst, diff)
    return worst


def flat(params) -> dict:
    return {"/".join(path): np.asarray(v) for path, v in traverse_util.flatten_dict(params).items()}


def assert_same_params(got, expected, what: str) -> None:
    got, expected = flat(got), flat(expected)
    assert sorted(got) == sorted(expected), f"{what}: param paths differ: {sorted(set(got) ^ set(expected))}"
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, f"{what}/{key}: dtype {got[key].dtype} vs {value.dtype}"
        assert np.array_equal(got[key], value), f"{what}/{key}: values differ"


def write_checkpoint(directory, config: BertConfig, state: dict, fmt: str = "safetensors") -> str:
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config.to_json_file(os.path.join(directory, "config.json"))
    if fmt == "safetensors":
        save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "sharded":
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        weight_map = {}
        for shard, shard_keys in shards.items():
            save_file({k: state[k] for k in shard_keys}, os.path.join(directory, shard), metadata={"format": "pt"})
            weight_map.update({k: shard for k in shard_keys})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))},
                       "weight_map": weight_map}, f)
    elif fmt == "bin":
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                   os.path.join(directory, "pytorch_model.bin"))
    else:
        raise AssertionError(fmt)
    return directory


def warnings_of(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == HF_LOGGER and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------------
# 1. ours -> HF
@pytest.fixture(scope="module")
def ours_exported(tmp_path_factory):
    """variant -> (config, random params, checkpoint dir written by save_hf_checkpoint), built lazily."""
    built = {}

    def get(variant: str):
        if variant not in built:
            hf_name, _ = VARIANTS[variant]
            config = config_for(variant)
            params = random_params(build_model(hf_name, config), seed=len(built) + 1)
            path = tmp_path_factory.mktemp(f"ours-{variant}")
            save_hf_checkpoint(path, config, params, hf_name)
            built[variant] = (config, params, str(path))
        return built[variant]

    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_loads_in_transformers_with_same_outputs(variant, ours_exported):
    hf_name, _ = VARIANTS[variant]
    config, params, path = ours_exported(variant)
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["architectures"] == [hf_name]
    model, info = getattr(transformers, hf_name).from_pretrained(path, output_loading_info=True,
                                                                 attn_implementation="eager")
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), f"{variant}: transformers reports {kind} {sorted(map(str, info[kind]))}"
    assert model.config.tie_word_embeddings == config.tie_word_embeddings
    MAX_DIFFS[f"export/{variant}"] = max_output_diff(run_ours(hf_name, config, params),
                                                     run_torch(hf_name, model), variant)


# ------------------------------------------------------------------------------------------------
# 2. HF -> ours -> HF
def _hf_model(variant: str, seed: int):
    hf_name, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**cases.TINY, **extra})
    config._attn_implementation = "eager"
    model = getattr(transformers, hf_name)(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # tied ones once: parameters() de-duplicates
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_import_export_is_bit_identical(variant, tmp_path):
    hf_name, _ = VARIANTS[variant]
    model = _hf_model(variant, seed=10 + list(VARIANTS).index(variant))
    if not model.config.tie_word_embeddings:
        # transformers 5 keeps a separate, unused cls.predictions.bias next to decoder.bias when untied
        # (see test_untied_decoder_bias_*); make the two agree so the round trip can be exact.
        with torch.no_grad():
            model.cls.predictions.bias.copy_(model.cls.predictions.decoder.bias)
    model.save_pretrained(tmp_path / "hf")
    theirs = read_state_dict(tmp_path / "hf")
    config, params = load_hf_checkpoint(tmp_path / "hf", hf_name)
    save_hf_checkpoint(tmp_path / "ours", config, params, hf_name)
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))

    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"} if config.tie_word_embeddings else set()
    assert not set(ours) - set(theirs), f"{variant}: we write keys transformers does not: {sorted(set(ours) - set(theirs))}"
    assert set(theirs) - set(ours) <= tied, f"{variant}: keys we drop: {sorted(set(theirs) - set(ours))}"
    assert set(ours) == set(theirs)  # transformers 5 leaves the tied decoder out too
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert np.array_equal(ours[key], value), f"{variant}: {key} changed in the round trip"
    # the reloaded params also compute what the (randomised, nonzero-bias) torch model computes
    MAX_DIFFS[f"import/{variant}"] = max_output_diff(run_ours(hf_name, config, params),
                                                     run_torch(hf_name, model), variant)


@pytest.mark.parametrize("direction", ["import", "export"])
def test_untied_decoder_bias_is_the_one_transformers_uses(direction, tmp_path, ours_exported):
    """transformers 5 with tie_word_embeddings=False unties decoder.bias from cls.predictions.bias and
    uses decoder.bias (cls.predictions.bias is then dead weight)."""
    variant = "BertForMaskedLM-untied"
    if direction == "import":
        model = _hf_model(variant, seed=3)
        with torch.no_grad():
            model.cls.predictions.bias.zero_()
            model.cls.predictions.decoder.bias.normal_()
        model.save_pretrained(tmp_path)
        config, params = load_hf_checkpoint(tmp_path, "BertForMaskedLM")
        np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                      model.cls.predictions.decoder.bias.detach().numpy())
    else:
        config, params, path = ours_exported(variant)
        model = transformers.BertForMaskedLM.from_pretrained(path, attn_implementation="eager")
        np.testing.assert_array_equal(model.cls.predictions.decoder.bias.detach().numpy(),
                                      params["cls"]["predictions"]["bias"])
    max_output_diff(run_ours("BertForMaskedLM", config, params), run_torch("BertForMaskedLM", model), variant)


# ------------------------------------------------------------------------------------------------
# 3. checkpoint variants
@pytest.fixture(scope="module")
def pretraining(ours_exported):
    """(config, params, state dict) of a random BertForPreTraining written by save_hf_checkpoint."""
    config, params, path = ours_exported("BertForPreTraining")
    return config, params, load_file(os.path.join(path, "model.safetensors"))


def _legacy_names(state):
    return {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in state.items()}


def _with_buffers(state):
    return {**state, "bert.embeddings.position_ids": np.arange(64, dtype=np.int64)[None],
            "bert.embeddings.token_type_ids": np.zeros((1, 64), np.int64)}


def _with_tied_copies(state):  # older .bin files carry the tied decoder tensors
    return {**state, "cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"],
            "cls.predictions.decoder.bias": state["cls.predictions.bias"]}


SAME_PARAMS_VARIANTS = {
    "safetensors": (lambda s: s, "safetensors"),
    "legacy_gamma_beta": (_legacy_names, "safetensors"),
    "position_ids_buffer": (_with_buffers, "safetensors"),
    "tied_decoder_copies": (_with_tied_copies, "safetensors"),
    "sharded": (lambda s: s, "sharded"),
    "pytorch_model_bin": (lambda s: _legacy_names(_with_buffers(s)), "bin"),
}


@pytest.mark.parametrize("variant", list(SAME_PARAMS_VARIANTS))
def test_checkpoint_variants_load_identical_params(variant, pretraining, tmp_path, caplog):
    config, params, state = pretraining
    transform, fmt = SAME_PARAMS_VARIANTS[variant]
    write_checkpoint(tmp_path, config, transform(state), fmt)
    if variant == "legacy_gamma_beta":
        assert not any("LayerNorm.weight" in k for k in load_file(str(tmp_path / "model.safetensors")))
    with caplog.at_level(logging.WARNING, logger=HF_LOGGER):
        loaded_config, loaded = load_hf_checkpoint(tmp_path, "BertForPreTraining")
    assert loaded_config == config
    assert not warnings_of(caplog), f"{variant}: unexpected warnings {warnings_of(caplog)}"
    assert_same_params(loaded, params, variant)


def test_bf16_checkpoint_loads_rounded_params(pretraining, tmp_path):
    config, params, state = pretraining
    write_checkpoint(tmp_path, config, {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()})
    assert read_state_dict(tmp_path)["bert.pooler.dense.weight"].dtype == ml_dtypes.bfloat16
    _, loaded = load_hf_checkpoint(tmp_path, "BertForPreTraining")
    rounded = jax.tree.map(lambda v: np.asarray(v).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert_same_params(loaded, rounded, "bf16 -> float32")
    _, loaded_bf16 = load_hf_checkpoint(tmp_path, "BertForPreTraining", param_dtype="bfloat16")
    assert_same_params(loaded_bf16, jax.tree.map(lambda v: np.asarray(v).astype(ml_dtypes.bfloat16), params),
                       "bf16 -> bfloat16")


def test_checkpoint_without_prefix_into_task_model(pretraining, tmp_path, caplog):
    """A BertModel checkpoint (keys without `bert.`) into BertForSequenceClassification with another
    number of labels: the encoder loads, the new head is initialised and named in a warning."""
    config, params, state = pretraining
    base = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    assert "embeddings.word_embeddings.weight" in base and not any(k.startswith("bert.") for k in base)
    write_checkpoint(tmp_path, config, base)
    with caplog.at_level(logging.WARNING, logger=HF_LOGGER):
        loaded_config, loaded = load_hf_checkpoint(tmp_path, "BertForSequenceClassification", num_labels=5,
                                                   rng=jax.random.PRNGKey(5))
    assert config.num_labels == 3 and len(config.id2label) == 3  # what config.json says
    assert loaded_config.num_labels == 5 and dict(loaded_config.id2label) == {i: f"LABEL_{i}" for i in range(5)}
    assert_same_params(loaded["bert"], params["bert"], "bert")
    assert set(loaded) == {"bert", "classifier"}
    assert loaded["classifier"]["kernel"].shape == (cases.TINY["hidden_size"], 5)
    assert np.std(np.asarray(loaded["classifier"]["kernel"])) > 0  # initialised, not zeros
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert "classifier.weight" in messages[0] and "classifier.bias" in messages[0]
    assert "bert." not in messages[0] and "embeddings" not in messages[0]


def test_config_overrides_on_load(pretraining, tmp_path):
    config, params, state = pretraining
    named = config.replace(id2label={0: "neg", 1: "neutral", 2: "pos"})
    write_checkpoint(tmp_path, named, {k: v for k, v in state.items() if k.startswith("bert.")})
    same, _ = load_hf_checkpoint(tmp_path, "BertModel", num_labels=3, dtype="bfloat16")
    assert same == named.replace(dtype="bfloat16")  # same count: the label names stay
    more, _ = load_hf_checkpoint(tmp_path, "BertModel", num_labels=4)
    assert more.num_labels == 4 and more.label2id == {f"LABEL_{i}": i for i in range(4)}
    renamed, _ = load_hf_checkpoint(tmp_path, "BertModel", id2label={0: "a", 1: "b"}, num_labels=2)
    assert renamed.num_labels == 2 and renamed.label2id == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="no field"):
        load_hf_checkpoint(tmp_path, "BertModel", num_layers=3)


def test_checkpoint_with_prefix_into_base_model(pretraining, tmp_path, caplog):
    config, params, state = pretraining
    write_checkpoint(tmp_path, config, state)
    with caplog.at_level(logging.WARNING, logger=HF_LOGGER):
        _, loaded = load_hf_checkpoint(tmp_path, "BertModel")
    assert_same_params(loaded, params["bert"], "BertModel")
    # the pre-training heads have no place in BertModel (test 4): listed, nothing else
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "not used" in messages[0], messages
    listed = set(messages[0][messages[0].index("["):].strip("[]").replace("'", "").split(", "))
    assert listed == {k for k in state if k.startswith("cls.")}


# ------------------------------------------------------------------------------------------------
# 4. unexpected keys
def test_unexpected_keys_are_listed(pretraining, tmp_path, caplog):
    """A PreTraining checkpoint (+ a classifier, buffers and a stray layer) into
    BertForSequenceClassification: `cls.*` and the stray tensor are listed as unused; buffers and the
    tied decoder copies are not mentioned. (The classifier is in the checkpoint so that nothing needs
    initialising: test_checkpoint_without_prefix_into_task_model covers that warning.)"""
    config, params, state = pretraining
    stray = "bert.encoder.layer.7.output.dense.weight"
    rs = np.random.RandomState(0)
    classifier = {"classifier.weight": rs.randn(3, 32).astype(np.float32),
                  "classifier.bias": rs.randn(3).astype(np.float32)}
    write_checkpoint(tmp_path, config, {**_with_tied_copies(_with_buffers(state)), **classifier,
                                        stray: np.zeros((32, 37), np.float32)})
    with caplog.at_level(logging.WARNING, logger=HF_LOGGER):
        _, loaded = load_hf_checkpoint(tmp_path, "BertForSequenceClassification")
    assert_same_params(loaded["bert"], params["bert"], "bert")
    np.testing.assert_array_equal(loaded["classifier"]["kernel"], classifier["classifier.weight"].T)
    np.testing.assert_array_equal(loaded["classifier"]["bias"], classifier["classifier.bias"])
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "not used" in messages[0], messages
    for key in ("cls.predictions.bias", "cls.predictions.transform.dense.weight",
                "cls.predictions.transform.LayerNorm.weight", "cls.seq_relationship.weight",
                "cls.seq_relationship.bias", stray):
        assert key in messages[0], f"{key} not in {messages[0]}"
    for key in ("position_ids", "token_type_ids", "classifier", "cls.predictions.decoder"):
        assert key not in messages[0], f"{key} in {messages[0]}"


# ------------------------------------------------------------------------------------------------
# 5. errors
@pytest.mark.parametrize("key,bad_shape", [
    ("bert.encoder.layer.1.intermediate.dense.weight", (36, 32)),
    ("bert.embeddings.word_embeddings.weight", (100, 32)),
    ("bert.encoder.layer.0.attention.output.dense.weight", (32, 33)),
    ("bert.encoder.layer.0.attention.self.query.weight", (16, 64)),  # same size, other shape
    ("bert.encoder.layer.0.intermediate.dense.weight", (32, 37)),  # stored transposed
])
def test_shape_mismatch_raises(key, bad_shape, pretraining, tmp_path):
    config, params, state = pretraining
    expected = state[key].shape
    bad = np.resize(state[key], bad_shape).astype(np.float32)
    write_checkpoint(tmp_path, config, {**state, key: bad})
    with pytest.raises(ValueError) as err:
        load_hf_checkpoint(tmp_path, "BertForPreTraining")
    message = str(err.value)
    assert key in message and str(bad_shape) in message and str(tuple(expected)) in message, message


def test_missing_directory(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        load_hf_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        read_state_dict(missing)


def test_directory_without_weights(tmp_path):
    BertConfig(**cases.TINY).to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_directory_without_config(pretraining, tmp_path):
    write_checkpoint(tmp_path, pretraining[0], pretraining[2])
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path, "BertForPreTraining")


def test_index_naming_a_missing_shard(pretraining, tmp_path):
    write_checkpoint(tmp_path, pretraining[0], pretraining[2], "sharded")
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_hf_checkpoint(tmp_path, "BertForPreTraining")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_corrupt_weights_raise_value_error(fmt, damage, pretraining, tmp_path):
    write_checkpoint(tmp_path, pretraining[0], pretraining[2], fmt)
    weights = tmp_path / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x13not a checkpoint" * 50)
    with pytest.raises(ValueError, match="corrupt") as err:
        load_hf_checkpoint(tmp_path, "BertForPreTraining")
    assert weights.name in str(err.value)


def test_invalid_config_json(pretraining, tmp_path):
    write_checkpoint(tmp_path, pretraining[0], pretraining[2])
    (tmp_path / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_hf_checkpoint(tmp_path, "BertForPreTraining")


@pytest.mark.parametrize("change,field", [
    ({"hidden_act": "nope"}, "hidden_act"),
    ({"hidden_size": 30}, "num_attention_heads"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"position_embedding_type": "rope"}, "position_embedding_type"),
    ({"num_labels": 4, "id2label": {"0": "a", "1": "b"}}, "num_labels"),
])
def test_invalid_config_value(change, field, pretraining, tmp_path):
    write_checkpoint(tmp_path, pretraining[0], pretraining[2])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ValueError, match=field):
        load_hf_checkpoint(tmp_path, "BertForPreTraining")


def test_pytorch_bin_without_torch(pretraining, tmp_path, monkeypatch):
    write_checkpoint(tmp_path, pretraining[0], pretraining[2], "bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match="needs torch") as err:
        load_hf_checkpoint(tmp_path, "BertForPreTraining")
    assert "pytorch_model.bin" in str(err.value)


# ------------------------------------------------------------------------------------------------
# 6. config files
GOOGLE_CONFIG = {  # google-research/bert's bert_config.json for BERT-Base, uncased
    "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
    "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 2, "vocab_size": 30522,
}


def _hf_config_fields() -> set:
    """BertConfig's HF fields (JAX-side ones such as `dtype` left out) that transformers' BertConfig has too."""
    return (set(BertConfig().to_hf()) - {"model_type"}) & set(transformers.BertConfig().to_dict())


@pytest.mark.parametrize("where", ["file", "directory"])
def test_google_research_bert_config(where, tmp_path):
    path = tmp_path / "bert_config.json"
    small = {**GOOGLE_CONFIG, "hidden_size": 48, "num_attention_heads": 6, "vocab_size": 120}
    path.write_text(json.dumps(small))
    config = BertConfig.from_hf(path if where == "file" else tmp_path)
    for key, value in small.items():
        assert getattr(config, key) == value, key
    assert config.layer_norm_eps == 1e-12 and config.pad_token_id == 0
    assert config.position_embedding_type == "absolute" and config.num_labels == 2
    assert not config.is_decoder and config.tie_word_embeddings
    reference = transformers.BertConfig(**small)  # transformers' defaults for everything the file leaves out
    for name in _hf_config_fields() - set(small) - {"id2label", "label2id"}:
        assert getattr(config, name) == getattr(reference, name), name


def test_config_round_trip_through_transformers(tmp_path):
    config = BertConfig(**{**cases.TINY, "layer_norm_eps": 1e-7, "classifier_dropout": 0.25, "pad_token_id": 3,
                           "problem_type": "multi_label_classification", "tie_word_embeddings": False,
                           "hidden_act": "gelu_new", "use_cache": False,
                           "id2label": {0: "neg", 1: "neutral", 2: "pos"}})
    exported = config.to_hf()
    hf = transformers.BertConfig(**exported)
    shared = _hf_config_fields()
    assert {"vocab_size", "hidden_size", "layer_norm_eps", "pad_token_id", "id2label", "classifier_dropout",
            "tie_word_embeddings", "problem_type"} <= shared
    for name in shared - {"id2label", "label2id"}:
        assert getattr(hf, name) == exported[name] == getattr(config, name), name
    assert hf.id2label == {0: "neg", 1: "neutral", 2: "pos"} and hf.num_labels == 3
    assert hf.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    # and back: transformers' own config.json reads to the same config
    hf.save_pretrained(tmp_path)
    assert BertConfig.from_hf(tmp_path) == config
    assert BertConfig.from_hf(hf.to_dict()) == config
    # the file save_hf_checkpoint writes is accepted by transformers as is
    config.to_json_file(tmp_path / "ours.json")
    assert transformers.BertConfig.from_json_file(str(tmp_path / "ours.json")).id2label == hf.id2label


def test_labels_consistency():
    by_count = BertConfig(num_labels=4)
    assert dict(by_count.id2label) == {i: f"LABEL_{i}" for i in range(4)}
    assert dict(by_count.label2id) == {f"LABEL_{i}": i for i in range(4)}
    assert dict(by_count.id2label) == transformers.BertConfig(num_labels=4).id2label
    by_names = BertConfig.from_hf({"id2label": {"0": "a", "1": "b", "2": "c"}})
    assert by_names.num_labels == 3 and dict(by_names.id2label) == {0: "a", 1: "b", 2: "c"}
    assert dict(by_names.label2id) == {"a": 0, "b": 1, "c": 2}
    assert isinstance(by_names.id2label, FrozenDict) and hash(by_names) == hash(BertConfig.from_hf(by_names.to_hf()))
    assert by_names.replace(num_labels=5).id2label[4] == "LABEL_4"
    assert by_names.replace(id2label={0: "x", 1: "y", 2: "z"}).label2id == {"x": 0, "y": 1, "z": 2}
    assert by_names.replace(id2label={0: "x", 1: "y"}, num_labels=2).label2id == {"x": 0, "y": 1}
    with pytest.raises(ValueError, match="num_labels"):
        BertConfig(num_labels=4, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="id2label"):
        BertConfig(id2label={"first": "a"})


# ------------------------------------------------------------------------------------------------
# 7. golden parameter tree
PRETRAINING_PARAMS = [  # BertForPreTraining, tests.cases.TINY: flax path, shape
    ("bert/embeddings/LayerNorm/bias", (32,)),
    ("bert/embeddings/LayerNorm/scale", (32,)),
    ("bert/embeddings/position_embeddings/embedding", (64, 32)),
    ("bert/embeddings/token_type_embeddings/embedding", (3, 32)),
    ("bert/embeddings/word_embeddings/embedding", (99, 32)),
    ("bert/encoder/layer/0/attention/output/LayerNorm/bias", (32,)),
    ("bert/encoder/layer/0/attention/output/LayerNorm/scale", (32,)),
    ("bert/encoder/layer/0/attention/output/dense/bias", (32,)),
    ("bert/encoder/layer/0/attention/output/dense/kernel", (4, 8, 32)),
    ("bert/encoder/layer/0/attention/self/key/bias", (4, 8)),
    ("bert/encoder/layer/0/attention/self/key/kernel", (32, 4, 8)),
    ("bert/encoder/layer/0/attention/self/query/bias", (4, 8)),
    ("bert/encoder/layer/0/attention/self/query/kernel", (32, 4, 8)),
    ("bert/encoder/layer/0/attention/self/value/bias", (4, 8)),
    ("bert/encoder/layer/0/attention/self/value/kernel", (32, 4, 8)),
    ("bert/encoder/layer/0/intermediate/dense/bias", (37,)),
    ("bert/encoder/layer/0/intermediate/dense/kernel", (32, 37)),
    ("bert/encoder/layer/0/output/LayerNorm/bias", (32,)),
    ("bert/encoder/layer/0/output/LayerNorm/scale", (32,)),
    ("bert/encoder/layer/0/output/dense/bias", (32,)),
    ("bert/encoder/layer/0/output/dense/kernel", (37, 32)),
    ("bert/encoder/layer/1/attention/output/LayerNorm/bias", (32,)),
    ("bert/encoder/layer/1/attention/output/LayerNorm/scale", (32,)),
    ("bert/encoder/layer/1/attention/output/dense/bias", (32,)),
    ("bert/encoder/layer/1/attention/output/dense/kernel", (4, 8, 32)),
    ("bert/encoder/layer/1/attention/self/key/bias", (4, 8)),
    ("bert/encoder/layer/1/attention/self/key/kernel", (32, 4, 8)),
    ("bert/encoder/layer/1/attention/self/query/bias", (4, 8)),
    ("bert/encoder/layer/1/attention/self/query/kernel", (32, 4, 8)),
    ("bert/encoder/layer/1/attention/self/value/bias", (4, 8)),
    ("bert/encoder/layer/1/attention/self/value/kernel", (32, 4, 8)),
    ("bert/encoder/layer/1/intermediate/dense/bias", (37,)),
    ("bert/encoder/layer/1/intermediate/dense/kernel", (32, 37)),
    ("bert/encoder/layer/1/output/LayerNorm/bias", (32,)),
    ("bert/encoder/layer/1/output/LayerNorm/scale", (32,)),
    ("bert/encoder/layer/1/output/dense/bias", (32,)),
    ("bert/encoder/layer/1/output/dense/kernel", (37, 32)),
    ("bert/pooler/dense/bias", (32,)),
    ("bert/pooler/dense/kernel", (32, 32)),
    ("cls/predictions/bias", (99,)),
    ("cls/predictions/transform/LayerNorm/bias", (32,)),
    ("cls/predictions/transform/LayerNorm/scale", (32,)),
    ("cls/predictions/transform/dense/bias", (32,)),
    ("cls/predictions/transform/dense/kernel", (32, 32)),
    ("cls/seq_relationship/bias", (2,)),
    ("cls/seq_relationship/kernel", (32, 2)),
]


def test_pretraining_param_tree_golden():
    model = build_model("BertForPreTraining", BertConfig(**cases.TINY))
    shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model)))  # traced, not compiled
    got = sorted(("/".join(path), tuple(leaf.shape)) for path, leaf in shapes.items())
    assert got == PRETRAINING_PARAMS


def test_pretraining_torch_keys_match_transformers():
    hf_model = transformers.BertForPreTraining(transformers.BertConfig(**cases.TINY))
    buffers = {name for name, _ in hf_model.named_buffers()}
    assert buffers == {"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"}
    expected = {k: tuple(v.shape) for k, v in hf_model.state_dict().items()
                if k not in buffers and not k.startswith("cls.predictions.decoder.")}
    zeros = traverse_util.unflatten_dict({tuple(path.split("/")): np.zeros(shape, np.float32)
                                          for path, shape in PRETRAINING_PARAMS})
    ours = to_torch_state_dict(zeros, build_model("BertForPreTraining", BertConfig(**cases.TINY)))
    assert sorted(torch_key(tuple(p.split("/"))) for p, _ in PRETRAINING_PARAMS) == sorted(expected)
    assert {k: v.shape for k, v in ours.items()} == expected  # PyTorch layouts too
