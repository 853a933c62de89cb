"""`python -m bert_jax.export`: a bert_jax workdir -> a Hugging Face directory that transformers' pipelines run.

Tiny workdirs are written the way the trainers write them (the real `Checkpointer` with a TrainState of
params + Adam state + rng, `BertTokenizer.save`, `BertConfig.to_hf` with the architecture, the experiment
config.json, final_metrics.json) with random params, for

- pretraining (BertForPreTraining, scanned layers), exported with --model_class=BertForMaskedLM:
  `pipeline('fill-mask')` top-5 tokens and scores == softmax of bert_jax's MLM logits;
- a 3-way classifier with named labels, two checkpoints and final_metrics.json's best_step=1, exported from
  its checkpoints/ directory: the best step is the one exported, and `pipeline('text-classification')`'s label
  scores == softmax of bert_jax's logits;
- extractive QA: transformers 5 removed the question-answering pipeline, so its AutoModelForQuestionAnswering
  start/end logits are compared with bert_jax's, and transformers 4.57's `pipeline('question-answering')`
  (the .legacy_hf install, in a subprocess) must return the span and score that its decoding rule gives on
  bert_jax's logits.
Tolerance 1e-4 (max abs, fp32 CPU). Then the error cases of the CLI.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from bert_jax import export
from bert_jax.config import BertConfig
from bert_jax.modeling import build_model, init_params
from bert_jax.tokenization import BertTokenizer
from bert_jax.training.checkpoints import Checkpointer
from bert_jax.training.steps import TrainState

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_HF = os.environ.get("BERT_JAX_LEGACY_HF", os.path.join(ROOT, ".legacy_hf"))
ATOL = 1e-4
WORDS = ("the a cat dog sat ran on in at mat house garden park where did who what is was and . , ? ! "
         "big small red quickly slowly ##s ##ed ##ing").split()
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
MASKED_TEXT = "the cat [MASK] on the mat ."
CLASSIFY_TEXT = "the big dog ran in the park !"
QUESTION, CONTEXT = "where did the cat sit ?", "the small cat sat on the red mat in the garden ."


# ------------------------------------------------------------------------------------------------
# Building workdirs as the trainers do
def random_params(model, seed: int, scale: float = 0.2):
    """Noise in the tree `init_params` builds (traced, not compiled): no bias is 0 and no LayerNorm scale 1."""
    shapes = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(model)))
    rs = np.random.RandomState(seed)
    return traverse_util.unflatten_dict({
        path: ((path[-1] == "scale") + scale * rs.randn(*leaf.shape)).astype(leaf.dtype)
        for path, leaf in sorted(shapes.items())})


def make_workdir(root, name: str, config: BertConfig, architecture: str, tokenizer: BertTokenizer,
                 steps: dict, final_metrics: dict = None) -> str:
    """`steps`: {step: params}. Returns the workdir."""
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:  # the experiment config (its model section)
        json.dump({"model": {"scan_layers": config.scan_layers}, "seed": 0}, f)
    with open(os.path.join(workdir, "model_config.json"), "w") as f:
        json.dump(config.to_hf([architecture]), f)
    tokenizer.save(os.path.join(workdir, "tokenizer"))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=0, async_save=False)
    tx = optax.adamw(1e-3)
    for step, params in steps.items():
        state = TrainState(step=jnp.int32(step), params=params, opt_state=tx.init(params),
                           rng=jax.random.PRNGKey(step))
        ckpt.save(step, state, {"epoch": 0}, force=True)
    ckpt.close()
    if final_metrics is not None:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump(final_metrics, f)
    return workdir


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizer.from_vocab(str(vocab), lowercase=True)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, tokenizer):
    """{name: (workdir, config, architecture, {step: params})}."""
    root = str(tmp_path_factory.mktemp("workdirs"))
    base = BertConfig(vocab_size=tokenizer.vocab_size, **TINY)
    specs = {
        "pretraining": (base.replace(scan_layers=True), "BertForPreTraining", (3,), None),
        "classifier": (base.replace(id2label=LABELS), "BertForSequenceClassification", (1, 2), {"best_step": 1}),
        "qa": (base.replace(num_labels=2), "BertForQuestionAnswering", (4,), {"best_step": None}),
    }
    out = {}
    for seed, (name, (config, architecture, steps, metrics)) in enumerate(specs.items()):
        model = build_model(architecture, config)
        params = {step: random_params(model, 10 * seed + step) for step in steps}
        out[name] = (make_workdir(root, name, config, architecture, tokenizer, params, metrics), config,
                     architecture, params)
    return out


def export_dir(workdir_or_checkpoints: str, output: str, *extra) -> str:
    assert export.main([f"--checkpoint={workdir_or_checkpoints}", f"--output={output}", *extra]) == 0
    return output


def our_outputs(config: BertConfig, architecture: str, params, encoded: dict):
    inputs = {k: jnp.asarray(encoded[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return build_model(architecture, config).apply({"params": params}, **inputs)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ------------------------------------------------------------------------------------------------
def test_fill_mask_pipeline(workdirs, tokenizer, tmp_path):
    workdir, config, architecture, params = workdirs["pretraining"]
    out = export_dir(workdir, str(tmp_path / "hf"), "--model_class=BertForMaskedLM")
    hf_config = json.load(open(os.path.join(out, "config.json")))
    assert hf_config["architectures"] == ["BertForMaskedLM"]
    keys = set(load_file(os.path.join(out, "model.safetensors")))
    assert not [k for k in keys if "seq_relationship" in k or "pooler" in k]  # the NSP head and pooler dropped
    assert "bert.encoder.layer.1.attention.self.query.weight" in keys  # scanned layers written per layer

    pipe = transformers.pipeline("fill-mask", model=out, device="cpu")
    results = pipe(MASKED_TEXT, top_k=5)
    encoded = tokenizer(MASKED_TEXT)
    assert pipe.tokenizer(MASKED_TEXT)["input_ids"] == encoded["input_ids"][0].tolist()
    position = int(np.flatnonzero(encoded["input_ids"][0] == tokenizer.mask_token_id)[0])
    logits = np.asarray(our_outputs(config, architecture, params[3], encoded).prediction_logits)[0, position]
    probs = softmax(logits)
    top = np.argsort(-probs)[:5]
    assert [r["token"] for r in results] == top.tolist()
    np.testing.assert_allclose([r["score"] for r in results], probs[top], atol=ATOL, rtol=0)
    assert results[0]["token_str"] == tokenizer.convert_ids_to_tokens(int(top[0]))


def test_text_classification_pipeline_exports_best_step(workdirs, tokenizer, tmp_path):
    workdir, config, architecture, params = workdirs["classifier"]
    out = export_dir(os.path.join(workdir, "checkpoints"), str(tmp_path / "hf"))  # the checkpoints dir works too
    hf_config = json.load(open(os.path.join(out, "config.json")))
    assert hf_config["architectures"] == ["BertForSequenceClassification"]
    assert hf_config["id2label"] == {str(k): v for k, v in LABELS.items()}

    pipe = transformers.pipeline("text-classification", model=out, device="cpu")
    scores = {r["label"]: r["score"] for r in pipe(CLASSIFY_TEXT, top_k=None)}
    encoded = tokenizer(CLASSIFY_TEXT)
    by_step = {step: softmax(np.asarray(our_outputs(config, architecture, p, encoded).logits)[0])
               for step, p in params.items()}
    expected = {LABELS[i]: by_step[1][i] for i in LABELS}  # best_step=1, not the newest (2)
    assert scores.keys() == expected.keys()
    np.testing.assert_allclose([scores[k] for k in LABELS.values()], [expected[k] for k in LABELS.values()],
                               atol=ATOL, rtol=0)
    assert np.abs(by_step[1] - by_step[2]).max() > 10 * ATOL  # the two steps are distinguishable

    # --step overrides best_step.
    out2 = export_dir(workdir, str(tmp_path / "hf2"), "--step=2")
    scores2 = {r["label"]: r["score"] for r in
               transformers.pipeline("text-classification", model=out2, device="cpu")(CLASSIFY_TEXT, top_k=None)}
    np.testing.assert_allclose([scores2[LABELS[i]] for i in LABELS], by_step[2], atol=ATOL, rtol=0)


LEGACY_QA = """
import json, sys
from transformers import pipeline
pipe = pipeline("question-answering", model=sys.argv[1], device="cpu")
print(json.dumps({k: float(v) if k == "score" else v for k, v in pipe(question=sys.argv[2], context=sys.argv[3]).items()}))
"""


def decode_answer(start_logits, end_logits, sequence_ids, max_answer_len: int = 15):
    """transformers' question-answering pipeline rule (select_starts_ends + decode_spans): context tokens
    only (CLS kept in the softmax, then zeroed), product of start/end probabilities, end >= start,
    at most max_answer_len tokens. Returns (start token, end token, score)."""
    allowed = (sequence_ids == 1)
    allowed[0] = True
    start = softmax(np.where(allowed, start_logits, -10000.0))
    end = softmax(np.where(allowed, end_logits, -10000.0))
    start[0] = end[0] = 0.0
    candidates = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)
    s, e = np.unravel_index(np.argmax(candidates), candidates.shape)
    return int(s), int(e), float(candidates[s, e])


def test_question_answering(workdirs, tokenizer, tmp_path):
    workdir, config, architecture, params = workdirs["qa"]
    out = export_dir(workdir, str(tmp_path / "hf"))  # best_step null: the newest checkpoint
    encoded = tokenizer(QUESTION, CONTEXT, return_offsets_mapping=True)
    ours = our_outputs(config, architecture, params[4], encoded)
    start_logits, end_logits = np.asarray(ours.start_logits)[0], np.asarray(ours.end_logits)[0]

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    hf_inputs = hf_tok(QUESTION, CONTEXT, return_tensors="pt")
    assert hf_inputs["input_ids"][0].tolist() == encoded["input_ids"][0].tolist()
    with torch.no_grad():
        theirs = hf_model(**hf_inputs)
    np.testing.assert_allclose(theirs.start_logits[0].numpy(), start_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(theirs.end_logits[0].numpy(), end_logits, atol=ATOL, rtol=0)

    if not os.path.isfile(os.path.join(LEGACY_HF, "transformers", "__init__.py")):
        message = f"transformers 4.57 (the last with a question-answering pipeline) is not in {LEGACY_HF}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = dict(os.environ, PYTHONPATH=LEGACY_HF, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", LEGACY_QA, out, QUESTION, CONTEXT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    sequence_ids = np.where(encoded["token_type_ids"][0] == 1, 1, 0)
    sequence_ids[-1] = -1  # the final [SEP]
    s, e, score = decode_answer(start_logits, end_logits, sequence_ids)
    offsets = encoded["offset_mapping"][0]
    assert (answer["start"], answer["end"]) == (int(offsets[s][0]), int(offsets[e][1]))
    assert answer["answer"] == CONTEXT[answer["start"]:answer["end"]]
    assert abs(answer["score"] - score) <= ATOL


# ------------------------------------------------------------------------------------------------
# Errors
def run_cli_error(capsys, *args) -> str:
    assert export.main(list(args)) == 2
    return capsys.readouterr().err


def test_errors(workdirs, tmp_path, capsys):
    out = f"--output={tmp_path / 'out'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a bert_jax workdir" in run_cli_error(capsys, f"--checkpoint={empty}", out)
    assert "does not exist" in run_cli_error(capsys, f"--checkpoint={tmp_path / 'nope'}", out)

    no_ckpt = tmp_path / "no_ckpt"
    (no_ckpt / "checkpoints").mkdir(parents=True)
    (no_ckpt / "model_config.json").write_text(open(os.path.join(workdirs["qa"][0], "model_config.json")).read())
    assert "no checkpoint in" in run_cli_error(capsys, f"--checkpoint={no_ckpt}", out)

    (no_ckpt / "model_config.json").unlink()
    err = run_cli_error(capsys, f"--checkpoint={no_ckpt}", out)
    assert "has no model_config.json" in err and "trainer" in err

    (no_ckpt / "model_config.json").write_text(json.dumps({**BertConfig(**TINY).to_hf(), "architectures": ["GPT2"]}))
    assert "unknown architecture 'GPT2'" in run_cli_error(capsys, f"--checkpoint={no_ckpt}", out)

    qa = workdirs["qa"][0]
    assert "no checkpoint for step 7" in run_cli_error(capsys, f"--checkpoint={qa}", out, "--step=7")
    err = run_cli_error(capsys, f"--checkpoint={qa}", out, "--model_class=BertForNothing")
    assert "--model_class=BertForNothing" in err and "BertForMaskedLM|" in err  # absl names the flag and the choices
    err = run_cli_error(capsys, f"--checkpoint={qa}", out, "--model_class=BertForSequenceClassification")
    assert "cannot export a BertForQuestionAnswering checkpoint as BertForSequenceClassification" in err
    assert "classifier/kernel" in err
    # model_config.json that disagrees with the saved params (another hidden size) names the restore problem.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "checkpoints").symlink_to(os.path.join(qa, "checkpoints"))
    vocab = workdirs["qa"][1].vocab_size
    (wrong / "model_config.json").write_text(json.dumps(BertConfig(**{**TINY, "hidden_size": 48}, vocab_size=vocab,
                                                                   num_labels=2).to_hf(["BertForQuestionAnswering"])))
    err = run_cli_error(capsys, f"--checkpoint={wrong}", out)
    assert "are not those of the BertForQuestionAnswering" in err
    assert f"bert/embeddings/word_embeddings/embedding: saved ({vocab}, 32), model ({vocab}, 48)" in err
