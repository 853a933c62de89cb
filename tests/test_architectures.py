"""The architecture switches of BertConfig and the transformers architectures they reproduce.

- RoBERTa, RoBERTa-PreLayerNorm and ELECTRA (transformers 5, PyTorch): `load_hf_checkpoint` on a
  `save_pretrained` directory of a tiny random model, then hidden states, attentions, logits and the
  loss against transformers' on a batch with padding (fp32, 1e-5); `save_hf_checkpoint` writes a
  directory transformers loads with no missing/unexpected keys, the same tensors and the same outputs.
  Sequence classification too, with each family's head (`classifier_head`: RoBERTa's dense + tanh +
  out_proj, ELECTRA's with GELU), single-label, multi-label and regression.
- RMSNorm, gated MLPs (GeGLU/SwiGLU) and the bias switches, which no transformers class combines with
  BERT: against an independent NumPy forward pass of a one-layer model from the formulas.
- Configurations no transformers class represents: a clear error on export.
- Every switch variant under scan_layers + remat (= unrolled), on an 8-fake-device mesh (= one
  device), with logical axis names on its new params, and in the analytic FLOPs/param count.
"""

import json
import logging

import jax
import numpy as np
import pytest
from flax import traverse_util

import bert_jax
from bert_jax import BertConfig
from bert_jax.hf import load_hf_checkpoint, save_hf_checkpoint
from bert_jax.modeling import build_model
from tests.hf_reference import flatten_outputs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            hidden_act="gelu")
BATCH, SEQ = 3, 9


def _inputs(pad_token_id: int, head: str = "mlm", seed: int = 0, num_labels: int = 3) -> dict:
    """ids [B, L] with a right-padded row and a row with a pad token in the middle (RoBERTa's
    positions skip it: its position ids differ from 0..L-1 there), mask, and the labels of `head`
    (mlm, rtd, token, qa; single, multi, regression for sequence classification into `num_labels`;
    none for a bare encoder)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(3, TINY["vocab_size"], (BATCH, SEQ))
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, SEQ - 3:] = 0
    ids[1, SEQ - 3:] = pad_token_id
    ids[2, 4] = pad_token_id  # attended, but no position of its own under skip_padding_positions
    out = {"input_ids": ids, "attention_mask": mask}
    if head == "rtd":
        out["labels"] = rs.randint(0, 2, (BATCH, SEQ))
    elif head == "token":
        out["labels"] = np.where(mask == 1, rs.randint(0, 3, (BATCH, SEQ)), -100)
    elif head == "qa":  # the last start is out of range: clamped and ignored on both sides
        out.update(start_positions=np.array([2, 4, 100]), end_positions=np.array([5, 3, 7]))
    elif head == "mlm":
        out["labels"] = np.where((rs.rand(BATCH, SEQ) < 0.4) & (mask == 1), ids, -100)
    elif head == "single":
        out["labels"] = rs.randint(0, num_labels, (BATCH,))
    elif head == "multi":
        out["labels"] = (rs.rand(BATCH, num_labels) < 0.5).astype(np.float32)
    elif head == "regression":
        out["labels"] = rs.randn(BATCH).astype(np.float32)
    return out


def _reference(hf_class: str, hf_config, path, inputs: dict) -> dict:
    torch.manual_seed(0)
    hf_config._attn_implementation = "eager"  # returns attention probabilities
    model = getattr(transformers, hf_class)(hf_config).eval()
    with torch.no_grad():  # random init leaves LayerNorms at 1/0: perturb them so the norms are exercised
        for name, p in model.named_parameters():
            # Every norm ("LayerNorm", "layer_norm", ModernBERT's "attn_norm"/"final_norm", NomicBERT's "emb_ln"...);
            # the classifier too, so that its activation (tanh / GELU) acts on values far from 0 and logits are O(1).
            if "norm" in name.lower() or "emb_ln" in name or name.endswith(".bias") or name.startswith("classifier."):
                p.add_(0.1 * torch.randn_like(p))
        if not hf_config.tie_word_embeddings and hasattr(model, "lm_head"):
            # Untied, RoBERTa's decoder uses lm_head.decoder.bias and never lm_head.bias; bert_jax keeps the
            # used one and writes it as both (as for BERT), so make the unused one equal for the round trip.
            model.lm_head.bias.copy_(model.lm_head.decoder.bias)
    model.save_pretrained(path)
    kwargs = {k: torch.tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        return flatten_outputs(model(**kwargs, output_hidden_states=True, output_attentions=True)), model


def _ours(path, our_class: str, inputs: dict, **overrides) -> tuple:
    config, params = load_hf_checkpoint(path, our_class, **overrides)
    model = build_model(our_class, config)
    kwargs = dict(inputs)
    out = model.apply({"params": params}, **kwargs, output_hidden_states=True, output_attentions=True)
    return flatten_outputs(out), config, params


def _max_diff(ours: dict, ref: dict) -> float:
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"outputs missing here: {missing}"
    worst = 0.0
    for key, expected in ref.items():
        assert ours[key].shape == expected.shape, (key, ours[key].shape, expected.shape)
        diff = float(np.max(np.abs(ours[key] - expected)))
        assert diff <= ATOL, f"{key}: max abs diff {diff:.3g} > {ATOL}"
        worst = max(worst, diff)
    return worst


def _assert_export_round_trips(tmp_path, config, params, our_class, hf_class, reference_model, inputs=None,
                               ref=None):
    """save_hf_checkpoint -> transformers' from_pretrained: no missing/unexpected keys, same tensors, and
    (given `inputs` and `ref`, the reference model's outputs on them) the same logits and loss."""
    out = tmp_path / "exported"
    save_hf_checkpoint(out, config, params, our_class)
    loaded, info = getattr(transformers, hf_class).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert json.loads((out / "config.json").read_text())["architectures"] == [hf_class]
    want, got = reference_model.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
    if inputs is not None:
        with torch.no_grad():
            again = flatten_outputs(loaded.eval()(**{k: torch.tensor(v) for k, v in inputs.items()}))
        _max_diff(again, {k: ref[k] for k in again})


def _roberta_config(kind: str, **kw):
    cls = transformers.RobertaConfig if kind == "roberta" else transformers.RobertaPreLayerNormConfig
    # pad_token_id=1 as in roberta-base: positions start at 2, 66 = 64 positions + the offset.
    return cls(**TINY, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, **kw)


PARITY = {
    # name: (hf class, hf config factory, bert_jax class)
    "roberta_mlm": ("RobertaForMaskedLM", lambda: _roberta_config("roberta"), "BertForMaskedLM"),
    "roberta_model": ("RobertaModel", lambda: _roberta_config("roberta"), "BertModel"),
    "roberta_untied": ("RobertaForMaskedLM", lambda: _roberta_config("roberta", tie_word_embeddings=False),
                       "BertForMaskedLM"),
    "roberta_prelayernorm_mlm": ("RobertaPreLayerNormForMaskedLM", lambda: _roberta_config("pre"),
                                 "BertForMaskedLM"),
    "roberta_prelayernorm_model": ("RobertaPreLayerNormModel", lambda: _roberta_config("pre"), "BertModel"),
    # embedding_size 16 != hidden 32: the embeddings_project switch; the generator head projects to 16.
    "electra_generator": ("ElectraForMaskedLM", lambda: transformers.ElectraConfig(
        **TINY, embedding_size=16, max_position_embeddings=64), "BertForMaskedLM"),
    "electra_discriminator": ("ElectraForPreTraining", lambda: transformers.ElectraConfig(
        **TINY, embedding_size=16, max_position_embeddings=64), "BertForReplacedTokenDetection"),
    "electra_model_same_width": ("ElectraModel", lambda: transformers.ElectraConfig(
        **{**TINY, "hidden_act": "relu"}, embedding_size=32, max_position_embeddings=64), "BertModel"),
    # Heads shared with BERT (the same modules on the other encoders).
    "roberta_token_classification": ("RobertaForTokenClassification",
                                     lambda: _roberta_config("roberta", num_labels=3), "BertForTokenClassification"),
    "roberta_prelayernorm_qa": ("RobertaPreLayerNormForQuestionAnswering", lambda: _roberta_config("pre"),
                                "BertForQuestionAnswering"),
    "electra_qa": ("ElectraForQuestionAnswering", lambda: transformers.ElectraConfig(
        **TINY, embedding_size=16, max_position_embeddings=64), "BertForQuestionAnswering"),
}
# Sequence classification: each family's head (classifier_head roberta / electra) for every problem type.
_SEQ_FAMILIES = {
    "roberta": ("RobertaForSequenceClassification", lambda **kw: _roberta_config("roberta", **kw)),
    "roberta_prelayernorm": ("RobertaPreLayerNormForSequenceClassification", lambda **kw: _roberta_config("pre", **kw)),
    "electra": ("ElectraForSequenceClassification", lambda **kw: transformers.ElectraConfig(
        **TINY, embedding_size=16, max_position_embeddings=64, **kw)),
}
_SEQ_PROBLEMS = {"single": dict(num_labels=3), "multi": dict(num_labels=3, problem_type="multi_label_classification"),
                 "regression": dict(num_labels=1)}  # regression: inferred from num_labels=1, as transformers does
PARITY.update({f"{family}_sequence_{problem}": (hf_class, lambda make=make, kw=kw: make(**kw),
                                                "BertForSequenceClassification")
               for family, (hf_class, make) in _SEQ_FAMILIES.items() for problem, kw in _SEQ_PROBLEMS.items()})
# ELECTRA's head applies GELU whatever the encoder's hidden_act.
PARITY["electra_sequence_relu_encoder"] = ("ElectraForSequenceClassification", lambda: transformers.ElectraConfig(
    **{**TINY, "hidden_act": "relu"}, embedding_size=32, max_position_embeddings=64, num_labels=2),
    "BertForSequenceClassification")
HEAD_INPUTS = {"BertModel": "none", "BertForReplacedTokenDetection": "rtd", "BertForTokenClassification": "token",
               "BertForQuestionAnswering": "qa", "BertForMaskedLM": "mlm"}


def _head_inputs(our_class: str, hf_config) -> str:
    """The labels `_inputs` makes for `our_class` (sequence classification: by the config's problem)."""
    if our_class != "BertForSequenceClassification":
        return HEAD_INPUTS[our_class]
    if hf_config.num_labels == 1:
        return "regression"
    return "multi" if hf_config.problem_type == "multi_label_classification" else "single"


@pytest.mark.parametrize("name", sorted(PARITY))
def test_matches_transformers_and_exports(name, tmp_path):
    hf_class, make_config, our_class = PARITY[name]
    hf_config = make_config()
    inputs = _inputs(hf_config.pad_token_id, _head_inputs(our_class, hf_config), num_labels=hf_config.num_labels)
    ref, ref_model = _reference(hf_class, hf_config, tmp_path / "hf", inputs)
    assert ("loss" in ref) != hf_class.endswith("Model")
    ours, config, params = _ours(tmp_path / "hf", our_class, inputs)
    worst = _max_diff(ours, ref)
    logging.getLogger(__name__).info("%s: max abs diff %.3g over %s", name, worst, sorted(ref))
    _assert_export_round_trips(tmp_path, config, params, our_class, hf_class, ref_model, inputs, ref)


def test_switches_read_from_the_architectures_config(tmp_path):
    """What each model_type implies, read off a transformers config.json (none of it is spelled there)."""
    _roberta_config("pre").save_pretrained(tmp_path / "pre")
    config = BertConfig.from_hf(tmp_path / "pre")
    assert (config.model_type, config.norm_position, config.position_offset, config.skip_padding_positions,
            config.mlm_head_act, config.type_vocab_size, config.classifier_head) == (
        "roberta-prelayernorm", "pre", 2, True, "gelu", 1, "roberta")
    transformers.ElectraConfig(**TINY, embedding_size=16).save_pretrained(tmp_path / "electra")
    config = BertConfig.from_hf(tmp_path / "electra")
    assert (config.model_type, config.embedding_size, config.norm_position, config.skip_padding_positions,
            config.classifier_head) == ("electra", 16, "post", False, "electra")
    transformers.BertConfig(**TINY).save_pretrained(tmp_path / "bert")
    assert BertConfig.from_hf(tmp_path / "bert").classifier_head == "pooler"


def test_roberta_positions_skip_padding():
    """fairseq's positions: the k-th non-pad token at pad + k, pads at pad (here pad = 1)."""
    from bert_jax.modeling.model import skip_padding_positions
    ids = np.array([[0, 5, 6, 1, 7, 1, 1]])
    np.testing.assert_array_equal(np.asarray(skip_padding_positions(ids, 1, 2)), [[2, 3, 4, 1, 5, 1, 1]])
    np.testing.assert_array_equal(np.asarray(skip_padding_positions(ids, 1, 2, start=3)), [[5, 6, 7, 1, 8, 1, 1]])


def test_scanned_and_rematerialised_pre_ln_roberta_matches_unrolled(tmp_path):
    """The switches under scan_layers + remat: same outputs as the unrolled model (params converted)."""
    hf_config = _roberta_config("pre")
    inputs = _inputs(hf_config.pad_token_id)
    ref, _ = _reference("RobertaPreLayerNormForMaskedLM", hf_config, tmp_path, inputs)
    ours, _, _ = _ours(tmp_path, "BertForMaskedLM", inputs, scan_layers=True, remat_policy="full")
    _max_diff(ours, ref)


def test_wrong_model_type_for_the_tensors_names_it(tmp_path):
    """config.json says roberta but the tensors are BERT's: the error names model_type."""
    config = BertConfig(**TINY)
    model = bert_jax.BertForMaskedLM(config)
    save_hf_checkpoint(tmp_path, config, bert_jax.init_params(model), "BertForMaskedLM")
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "model_type": "roberta"}))
    with pytest.raises(ValueError, match=r"model_type='roberta', but its tensors are named bert\.\*"):
        load_hf_checkpoint(tmp_path, "BertForMaskedLM")


# ------------------------------------------------------------------------------ export: unrepresentable
# The switches each model_type implies, for configs built by hand (not read off a checkpoint).
FAMILY_SWITCHES = {"bert": {}, "roberta": dict(pad_token_id=1, position_offset=2, skip_padding_positions=True,
                                               mlm_head_act="gelu", type_vocab_size=1, classifier_head="roberta"),
                   "electra": dict(mlm_head_act="gelu", embedding_size=16, classifier_head="electra")}
FAMILY_SWITCHES["roberta-prelayernorm"] = {**FAMILY_SWITCHES["roberta"], "norm_position": "pre"}


@pytest.mark.parametrize("model_type, change, field", [
    ("bert", {"norm_type": "rmsnorm"}, "norm_type"),
    ("bert", {"norm_position": "pre"}, "norm_position"),
    ("bert", {"mlp_type": "geglu"}, "mlp_type"),
    ("bert", {"attention_bias": False}, "attention_bias"),
    ("bert", {"decoder_bias": False}, "decoder_bias"),
    ("bert", {"embedding_norm": False}, "embedding_norm"),
    ("bert", {"embedding_size": 16}, "embedding_size"),
    ("bert", {"type_vocab_size": 0}, "type_vocab_size"),
    ("roberta", {"norm_type": "rmsnorm"}, "norm_type"),
    ("roberta", {"skip_padding_positions": False, "position_offset": 0}, "position_offset"),
    ("roberta", {"mlm_head_act": "relu"}, "mlm_head_act"),
    ("roberta-prelayernorm", {"norm_position": "post"}, "norm_position"),
    ("electra", {"norm_bias": False}, "norm_bias"),
])
def test_unrepresentable_config_is_refused_on_export(model_type, change, field, tmp_path):
    config = BertConfig(**{**TINY, **FAMILY_SWITCHES[model_type], "model_type": model_type, **change})
    params = bert_jax.init_params(bert_jax.BertForMaskedLM(config))
    with pytest.raises(ValueError, match=rf"BertConfig\.{field}=.* cannot be written as a transformers .*"
                                         rf"model_type='{model_type}'"):
        save_hf_checkpoint(tmp_path / "out", config, params, "BertForMaskedLM")
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("model_type, head, model_class, error", [
    ("roberta", "roberta", "BertForMultipleChoice", r"BertForMultipleChoice cannot be written as a transformers RoBERTa"),
    # A sequence-classification head another model_type's class has (or none has: BERT's pooler on RoBERTa).
    ("bert", "electra", "BertForSequenceClassification",
     r"BertConfig\.classifier_head='electra' cannot be written as a transformers BERT checkpoint \(model_type='bert'\), "
     r"whose BertForSequenceClassification has the head classifier_head='pooler'"),
    ("bert", "roberta", "BertForSequenceClassification", r"BertConfig\.classifier_head='roberta' .*model_type='bert'"),
    ("roberta", "pooler", "BertForSequenceClassification",
     r"BertConfig\.classifier_head='pooler' .*model_type='roberta'.*RobertaForSequenceClassification"),
    ("roberta-prelayernorm", "electra", "BertForSequenceClassification",
     r"BertConfig\.classifier_head='electra' .*model_type='roberta-prelayernorm'"),
    ("electra", "roberta", "BertForSequenceClassification", r"BertConfig\.classifier_head='roberta' .*model_type='electra'"),
])
def test_head_without_counterpart_is_refused_on_export(model_type, head, model_class, error, tmp_path):
    config = BertConfig(**{**TINY, **FAMILY_SWITCHES[model_type], "model_type": model_type, "classifier_head": head})
    params = bert_jax.init_params(build_model(model_class, config))
    with pytest.raises(ValueError, match=error):
        save_hf_checkpoint(tmp_path / "out", config, params, model_class)
    assert not (tmp_path / "out").exists()
    if model_class == "BertForSequenceClassification":
        # Only the sequence classifier has that head: the encoder and the other heads still export.
        save_hf_checkpoint(tmp_path / "encoder", config, bert_jax.init_params(bert_jax.BertModel(config)), "BertModel")


def test_switches_round_trip_through_bert_jax_config_json():
    """A config no transformers class represents still round-trips through to_hf/from_hf (training
    workdirs keep model_config.json), and a default config's json has no switch keys at all."""
    config = BertConfig(**{**TINY, "hidden_act": "silu"}, norm_type="rmsnorm", norm_position="pre", mlp_type="swiglu",
                        attention_bias=False, mlp_bias=False, norm_bias=False, decoder_bias=False,
                        embedding_norm=False, type_vocab_size=0, embedding_size=16)
    assert BertConfig.from_hf(config.to_hf()) == config
    # model_type roberta without RoBERTa's positions (not exportable, but a valid bert_jax model): the
    # family's defaults must not fill in what the json leaves at BERT's values.
    odd = BertConfig(**TINY, model_type="roberta", norm_type="rmsnorm")
    assert BertConfig.from_hf(odd.to_hf()) == odd
    from bert_jax.config import ARCHITECTURE_FIELDS
    assert not ARCHITECTURE_FIELDS & set(BertConfig(**TINY).to_hf())


@pytest.mark.parametrize("change, field", [
    ({"norm_type": "batchnorm"}, "norm_type"), ({"norm_position": "sandwich"}, "norm_position"),
    ({"mlp_type": "geglu", "hidden_act": "relu"}, "mlp_type"), ({"mlp_type": "swiglu"}, "mlp_type"),
    ({"model_type": "albert"}, "model_type"), ({"type_vocab_size": -1}, "type_vocab_size"),
    ({"attention_bias": "no"}, "attention_bias"), ({"position_offset": 64}, "position_offset"),
    ({"skip_padding_positions": True}, "skip_padding_positions"), ({"embedding_size": 0}, "embedding_size"),
    ({"mlm_head_act": "gelu2"}, "mlm_head_act"),
    ({"position_embedding_type": "rope"}, "position_embedding_type"), ({"rope_theta": 0.0}, "rope_theta"),
    ({"local_rope_theta": -1.0}, "local_rope_theta"), ({"local_attention_window": -2}, "local_attention_window"),
    ({"local_attention_window": 2.5}, "local_attention_window"),
    ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers"),
    ({"first_layer_attention_norm": False}, "first_layer_attention_norm"),
    ({"first_layer_attention_norm": "no"}, "first_layer_attention_norm"), ({"mlm_head_bias": 0}, "mlm_head_bias"),
    ({"position_embedding_type": "rotary", "num_attention_heads": 32}, "position_embedding_type"),
    ({"classifier_head": "xlnet"}, "classifier_head"), ({"classifier_head": None}, "classifier_head"),
])
def test_bad_switch_values_name_the_field(change, field):
    with pytest.raises(ValueError, match=rf"BertConfig\.{field}"):
        BertConfig(**{**TINY, "max_position_embeddings": 64, **change})


def test_token_types_off():
    """type_vocab_size=0: no token-type table; zero types are accepted, others are an error."""
    config = BertConfig(**TINY, type_vocab_size=0)
    model = bert_jax.BertModel(config)
    params = bert_jax.init_params(model)
    assert "token_type_embeddings" not in params["embeddings"]
    ids = np.ones((1, 4), np.int32)
    a = model.apply({"params": params}, ids).last_hidden_state
    b = model.apply({"params": params}, ids, token_type_ids=np.zeros((1, 4), np.int32)).last_hidden_state
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"token_type_ids has non-zero values.*type_vocab_size=0"):
        model.apply({"params": params}, ids, token_type_ids=np.ones((1, 4), np.int32))


# ------------------------------------------------------------------------------ NumPy formulas
def _np_gelu(x):
    from math import erf
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _np_silu(x):
    return x / (1.0 + np.exp(-x))


def _np_norm(x, p, kind, eps):
    """LayerNorm: (x - mean) / sqrt(var + eps) * w + b; RMSNorm: x / sqrt(mean(x^2) + eps) * w (+ b)."""
    if kind == "rmsnorm":
        y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
    else:
        mu = x.mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return y * p["scale"] + p.get("bias", 0.0)


def _np_dense(x, p, n_in=1):
    k = p["kernel"].reshape(int(np.prod(p["kernel"].shape[:n_in])), -1)
    y = x.reshape(x.shape[:x.ndim - n_in] + (-1,)) @ k
    return y.reshape(x.shape[:x.ndim - n_in] + p["kernel"].shape[n_in:]) + p.get("bias", 0.0)


def _np_forward(cfg: BertConfig, params, ids, mask):
    """A one-layer BERT-family MLM forward in float64 NumPy, from the formulas (no flax): returns
    (last hidden [B, L, H], logits [B, L, V])."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    bert, eps = p["bert"], cfg.layer_norm_eps
    act = {"gelu": _np_gelu, "silu": _np_silu}[cfg.hidden_act]
    emb = bert["embeddings"]
    x = emb["word_embeddings"]["embedding"][ids] + emb["position_embeddings"]["embedding"][np.arange(ids.shape[1])]
    if cfg.type_vocab_size:
        x = x + emb["token_type_embeddings"]["embedding"][0]
    if cfg.embedding_norm:
        x = _np_norm(x, emb["LayerNorm"], cfg.norm_type, eps)
    layer = bert["encoder"]["layer"]["0"]
    pre = cfg.norm_position == "pre"

    att = layer["attention"]
    h = _np_norm(x, att["LayerNorm"], cfg.norm_type, eps) if pre else x
    q, k, v = (_np_dense(h, att["self"][n]) for n in ("query", "key", "value"))  # [B, L, N, D]
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(cfg.head_dim)
    scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    a = _np_dense(np.einsum("bnqk,bknd->bqnd", probs, v), att["output"]["dense"], n_in=2)
    x = x + a if pre else _np_norm(x + a, att["output"]["LayerNorm"], cfg.norm_type, eps)

    inter = layer["intermediate"]
    h = _np_norm(x, inter["LayerNorm"], cfg.norm_type, eps) if pre else x
    m = act(_np_dense(h, inter["dense"]))
    if cfg.mlp_type != "dense":  # GLU: act(x W_g) * (x W_u)
        m = m * _np_dense(h, inter["up"])
    o = _np_dense(m, layer["output"]["dense"])
    x = x + o if pre else _np_norm(x + o, layer["output"]["LayerNorm"], cfg.norm_type, eps)
    if pre:
        x = _np_norm(x, bert["encoder"]["final_norm"], cfg.norm_type, eps)

    head = p["cls"]["predictions"]
    t = _np_norm(act(_np_dense(x, head["transform"]["dense"])), head["transform"]["LayerNorm"], cfg.norm_type, eps)
    logits = t @ emb["word_embeddings"]["embedding"].T + head.get("bias", 0.0)
    return x, logits


SWITCHED = {
    "rmsnorm": dict(norm_type="rmsnorm"),
    "rmsnorm_nobias_pre": dict(norm_type="rmsnorm", norm_bias=False, norm_position="pre"),
    "geglu": dict(mlp_type="geglu"),
    "swiglu_pre": dict(mlp_type="swiglu", hidden_act="silu", norm_position="pre"),
    "no_biases": dict(attention_bias=False, mlp_bias=False, norm_bias=False, decoder_bias=False),
    "no_embedding_norm_no_types": dict(embedding_norm=False, type_vocab_size=0),
    "cramming_like": dict(norm_position="pre", mlp_type="geglu", attention_bias=False, mlp_bias=False,
                          norm_bias=False, decoder_bias=False),
}


def _switched_config(name: str, **extra) -> BertConfig:
    kw = {**TINY, "num_hidden_layers": 1, "max_position_embeddings": 64, "layer_norm_eps": 1e-6, **SWITCHED[name]}
    return BertConfig(**{**kw, **extra})


def _perturbed_params(model, seed=0):
    """init_params with every leaf nudged, so norm scales / biases are not the identity / zero."""
    params = bert_jax.init_params(model, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", sorted(SWITCHED))
def test_switches_match_numpy_formulas(name):
    cfg = _switched_config(name)
    model = bert_jax.BertForMaskedLM(cfg)
    params = _perturbed_params(model)
    flat = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    # The switches take the params they name out, not only the arithmetic.
    assert any(k.endswith("/bias") for k in flat if "attention/self" in k) == cfg.attention_bias
    assert ("cls/predictions/bias" in flat) == cfg.decoder_bias
    assert any("intermediate/up" in k for k in flat) == (cfg.mlp_type != "dense")
    rs = np.random.RandomState(0)
    ids = rs.randint(1, cfg.vocab_size, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    out = model.apply({"params": params}, ids, mask, output_hidden_states=True)
    want_hidden, want_logits = _np_forward(cfg, params, ids, mask)
    assert np.max(np.abs(np.asarray(out.hidden_states[-1]) - want_hidden)) <= ATOL
    assert np.max(np.abs(np.asarray(out.logits) - want_logits)) <= ATOL


@pytest.mark.parametrize("name", ["rmsnorm_nobias_pre", "swiglu_pre", "cramming_like"])
def test_switches_under_scan_and_remat(name):
    """scan_layers + remat give the unrolled model's loss and gradients (params converted)."""
    from bert_jax.hf import convert_layer_layout
    cfg = _switched_config(name, num_hidden_layers=2)
    params = _perturbed_params(bert_jax.BertForMaskedLM(cfg))
    scanned_cfg = cfg.replace(scan_layers=True, remat_policy="dots_saveable")
    scanned_params = convert_layer_layout(params, 2, scan_layers=True)
    rs = np.random.RandomState(1)
    ids = rs.randint(1, cfg.vocab_size, (2, 7))
    labels = np.where(rs.rand(2, 7) < 0.5, ids, -100)

    def loss_and_grads(c, p):
        f = lambda p: bert_jax.BertForMaskedLM(c).apply({"params": p}, ids, labels=labels).loss
        return jax.value_and_grad(f)(p)
    loss, grads = loss_and_grads(cfg, params)
    scan_loss, scan_grads = loss_and_grads(scanned_cfg, scanned_params)
    assert abs(float(loss) - float(scan_loss)) <= 1e-6
    unrolled = convert_layer_layout(scan_grads, 2, scan_layers=False)
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), grads, unrolled)
    assert max(jax.tree.leaves(diffs)) <= 1e-6


# ------------------------------------------------------------------------------ 8 fake devices
def test_switched_models_train_on_a_mesh_like_on_one_device(tmp_path):
    """Two AdamW steps of each variant (tests/architectures_mesh_worker.py VARIANTS) on a 2x2x2
    (data, fsdp, tensor) mesh of 8 fake CPU devices against one device: same losses within 1e-6 and
    the same params after the updates. Fake devices must be set before jax initialises, so the run is
    a subprocess."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worker = os.path.join(root, "tests", "architectures_mesh_worker.py")
    proc = subprocess.run([sys.executable, worker, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          cwd=root, env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results.pop("device_count") == 8
    assert len(results) >= 6
    for name, r in results.items():
        assert np.isfinite(r["losses"]).all() and r["losses"][1] < r["losses"][0], (name, r)  # it trains
        # Step 1 starts from the same params: the same loss within 1e-6. Step 2 follows each run's own
        # Adam update; at those params the logits differ by ~1e-7 on the mesh (as at step 1) and the mean
        # cross-entropy by up to a few float32 ulps (~4.8e-7 each at 4.5): measured 3 ulps (1.4e-6) for
        # "alibi", <= 1 ulp for the others, hence 2e-6 after the first step.
        assert abs(r["losses"][0] - r["mesh_losses"][0]) <= 1e-6, (name, r)
        for one, mesh in zip(r["losses"][1:], r["mesh_losses"][1:]):
            assert abs(one - mesh) <= 2e-6, (name, r)
        # Adam divides by sqrt(nu): a last-bit gradient difference on a near-zero gradient moves a
        # param by a sizeable fraction of lr (1e-3), hence 1e-5 here, as in tests/test_sharding.py.
        assert r["param_diff"] <= 1e-5, (name, r)


@pytest.mark.parametrize("name", sorted(SWITCHED) + ["electra_projection"])
def test_analytic_param_count_follows_the_switches(name):
    """bert_jax.flops.non_embedding_params (FLOPs/token of the ablation bench) equals the count read
    off the params of BertForMaskedLM for every switch setting."""
    from bert_jax.flops import count_non_embedding_params, non_embedding_params
    cfg = (_switched_config("geglu", embedding_size=16) if name == "electra_projection"
           else _switched_config(name, num_hidden_layers=2))
    params = jax.eval_shape(lambda: bert_jax.init_params(bert_jax.BertForMaskedLM(cfg)))
    assert non_embedding_params(cfg) == count_non_embedding_params(params)


@pytest.mark.parametrize("name", ["cramming_like", "rmsnorm", "electra_discriminator", "scanned_pre_ln",
                                  "roberta_classifier", "electra_classifier"])
def test_logical_axis_names_on_every_switched_param(name):
    """New params (gated `up`, pre-LN and final norms, RMSNorm, embeddings_project, the discriminator
    head, RoBERTa's / ELECTRA's classification head) carry logical axis names, so the sharding rules
    place them; scanned ones gain `layers`."""
    import flax.linen as nn
    if name == "electra_discriminator":
        model = bert_jax.BertForReplacedTokenDetection(_switched_config("geglu", embedding_size=16))
    elif name.endswith("_classifier"):
        model = bert_jax.BertForSequenceClassification(_switched_config("geglu", classifier_head=name.split("_")[0]))
    elif name == "scanned_pre_ln":
        model = bert_jax.BertForMaskedLM(_switched_config("swiglu_pre", scan_layers=True))
    else:
        model = bert_jax.BertForMaskedLM(_switched_config(name))
    boxed = jax.eval_shape(lambda: bert_jax.init_params(model, boxed=True))
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
        assert len(leaf.names) == len(leaf.value.shape), jax.tree_util.keystr(path)
        if "layer" in jax.tree_util.keystr(path) and name == "scanned_pre_ln":
            assert leaf.names[0] == "layers", jax.tree_util.keystr(path)
    if name.endswith("_classifier"):  # the pooler's and BERT's classifier's axes; no pooler
        names = {jax.tree_util.keystr(p): leaf.names for p, leaf in leaves}
        assert not any("pooler" in k for k in names)
        for part in ("dense", "out_proj"):
            assert names[f"['classifier']['{part}']['kernel']"] == ("embed", None)
            assert names[f"['classifier']['{part}']['bias']"] == (None,)


def test_roberta_inputs_embeds_positions_match_transformers(tmp_path):
    """With inputs_embeds there are no ids to find padding in: both sides use offset + 0..L-1."""
    hf_config = _roberta_config("roberta")
    inputs = _inputs(hf_config.pad_token_id)
    embeds = np.random.RandomState(3).randn(BATCH, SEQ, TINY["hidden_size"]).astype(np.float32)
    _, ref_model = _reference("RobertaForMaskedLM", hf_config, tmp_path, inputs)
    with torch.no_grad():
        ref = flatten_outputs(ref_model(inputs_embeds=torch.tensor(embeds),
                                        attention_mask=torch.tensor(inputs["attention_mask"]),
                                        output_hidden_states=True))
    config, params = load_hf_checkpoint(tmp_path, "RobertaForMaskedLM")  # transformers' class name resolves too
    out = bert_jax.BertForMaskedLM(config).apply({"params": params}, inputs_embeds=embeds,
                                                 attention_mask=inputs["attention_mask"], output_hidden_states=True)
    _max_diff(flatten_outputs(out), ref)
