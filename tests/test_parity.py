"""Every head against transformers' PyTorch BERT: outputs, hidden states, attentions, losses.

transformers 5 (in-process) is the reference for absolute positions; transformers 4.57 (a
subprocess, see conftest.legacy_reference) for relative positions and head_mask, which 5 removed.
Tolerance: 1e-5 max abs difference, fp32 on CPU.
"""

import numpy as np
import pytest

from bert_jax.hf import load_hf_checkpoint
from bert_jax.modeling import build_model
from tests import cases, conftest
from tests.hf_reference import flatten_outputs, run_case

ATOL = 1e-5


def run_ours(path: str, case: dict) -> dict:
    config, params = load_hf_checkpoint(path, case["model"])
    model = build_model(case["model"], config)
    inputs = {k: np.asarray(v) for k, v in case["inputs"].items()}
    for k, v in inputs.items():
        if v.dtype == np.float64:
            inputs[k] = v.astype(np.float32)
    out = model.apply({"params": params}, **inputs, **case["call_kwargs"])
    return flatten_outputs(out)


def assert_outputs_match(ours: dict, ref: dict, name: str) -> float:
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"{name}: outputs missing here: {missing}"
    worst = 0.0
    for key, expected in ref.items():
        got = ours[key]
        assert got.shape == expected.shape, f"{name}/{key}: shape {got.shape} vs reference {expected.shape}"
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        assert diff <= ATOL, f"{name}/{key}: max abs diff {diff:.3g} > {ATOL}"
        worst = max(worst, diff)
    return worst


V5_CASES = ([cases.make_case(m) for m in cases.HEADS]
            + [cases.make_case("BertForSequenceClassification", problem=p) for p in ("regression", "multi")]
            + [cases.make_case("BertForMaskedLM", name="untied", config={"tie_word_embeddings": False}),
               cases.make_case("BertForMaskedLM", name="gelu_new", config={"hidden_act": "gelu_new"}),
               cases.make_case("BertForTokenClassification", name="relu", config={"hidden_act": "relu"}),
               cases.make_case("BertModel", name="no_outputs", call_kwargs={"output_hidden_states": False,
                                                                            "output_attentions": False})])


@pytest.mark.parametrize("case", V5_CASES, ids=lambda c: c["name"])
def test_matches_transformers_5(case, tmp_path):
    ref = run_case(case, str(tmp_path))
    ours = run_ours(str(tmp_path / case["name"]), case)
    assert "loss" in ref or case["model"] == "BertModel"
    assert_outputs_match(ours, ref, case["name"])


def test_inputs_embeds_matches_transformers_5(tmp_path):
    rs = np.random.RandomState(11)
    embeds = rs.randn(cases.BATCH, cases.SEQ, cases.TINY["hidden_size"]).astype(np.float32)
    case = cases.make_case("BertForSequenceClassification", name="inputs_embeds")
    del case["inputs"]["input_ids"]
    case["inputs"]["inputs_embeds"] = embeds.tolist()
    ref = run_case(case, str(tmp_path))
    assert_outputs_match(run_ours(str(tmp_path / case["name"]), case), ref, case["name"])


LEGACY_NAMES = [c["name"] for c in conftest.legacy_cases()]


@pytest.mark.legacy_reference
@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_matches_transformers_4_57(name, legacy_reference):
    case = next(c for c in conftest.legacy_cases() if c["name"] == name)
    path, ref = legacy_reference[name]
    assert_outputs_match(run_ours(path, case), ref, name)
