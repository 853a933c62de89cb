"""Google TF1 checkpoint import (bert_jax.tf1).

- Without TensorFlow (always run): the variable-name mapping, checkpoint path resolution, the error
  for a missing checkpoint and the install hint when TensorFlow is absent.
- With TensorFlow (skipped otherwise; CI's TF stage installs tensorflow-cpu beside .venv and sets
  BERT_JAX_REQUIRE_TF=1 so that it cannot skip there): a tiny random
  transformers BertForPreTraining / BertForSequenceClassification / BertForQuestionAnswering is written as
  google-research TF1 checkpoints (graph-mode `tf.compat.v1.train.Saver`, the exact variable names and
  layouts of google-research/bert's modeling.py, run_classifier.py and run_squad.py, with Adam slots and
  global_step as its optimizer leaves them), loaded with `load_tf1_checkpoint`, and the outputs are
  compared with transformers' (max abs difference <= 1e-5, fp32 CPU). Truncated/corrupt bundles raise.
"""

import json
import os
import re
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import tf1
from bert_jax.modeling import build_model

ATOL = 1e-5
CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, initializer_range=0.02)  # google-research's bert_config.json keys
NUM_LABELS = 3

# google-research/bert modeling.py: the variables of one transformer layer and of the rest of the model.
LAYER_VARIABLES = [f"attention/self/{p}/{w}" for p in ("query", "key", "value") for w in ("kernel", "bias")] + [
    "attention/output/dense/kernel", "attention/output/dense/bias", "attention/output/LayerNorm/gamma",
    "attention/output/LayerNorm/beta", "intermediate/dense/kernel", "intermediate/dense/bias",
    "output/dense/kernel", "output/dense/bias", "output/LayerNorm/gamma", "output/LayerNorm/beta"]
PRETRAINING_VARIABLES = {
    "bert/embeddings/word_embeddings", "bert/embeddings/position_embeddings", "bert/embeddings/token_type_embeddings",
    "bert/embeddings/LayerNorm/gamma", "bert/embeddings/LayerNorm/beta", "bert/pooler/dense/kernel",
    "bert/pooler/dense/bias", "cls/predictions/transform/dense/kernel", "cls/predictions/transform/dense/bias",
    "cls/predictions/transform/LayerNorm/gamma", "cls/predictions/transform/LayerNorm/beta",
    "cls/predictions/output_bias", "cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias",
} | {f"bert/encoder/layer_{i}/{v}" for i in range(CONFIG["num_hidden_layers"]) for v in LAYER_VARIABLES}
# Head tensors whose TF1 name is not derived from the PyTorch one (layouts already [out, in]).
GOOGLE_HEAD_NAMES = {
    "cls.predictions.bias": "cls/predictions/output_bias",
    "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
    "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
    "classifier.weight": "output_weights", "classifier.bias": "output_bias",  # run_classifier.py
    "qa_outputs.weight": "cls/squad/output_weights", "qa_outputs.bias": "cls/squad/output_bias",  # run_squad.py
}


# ------------------------------------------------------------------------------------------------
# Without TensorFlow
def test_name_mapping():
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)  # [in, out]
    key, value = tf1.torch_key_and_tensor("bert/encoder/layer_11/attention/self/query/kernel", kernel)
    assert key == "bert.encoder.layer.11.attention.self.query.weight"
    np.testing.assert_array_equal(value, kernel.T)
    assert tf1.torch_key_and_tensor("bert/embeddings/word_embeddings", kernel)[0] == \
        "bert.embeddings.word_embeddings.weight"
    assert tf1.torch_key_and_tensor("bert/encoder/layer_0/output/LayerNorm/beta", kernel[0])[0] == \
        "bert.encoder.layer.0.output.LayerNorm.bias"
    key, value = tf1.torch_key_and_tensor("cls/seq_relationship/output_weights", kernel)
    assert key == "cls.seq_relationship.weight" and value is kernel  # [out, in] already
    for torch_name, google_name in GOOGLE_HEAD_NAMES.items():
        assert tf1.torch_key_and_tensor(google_name, kernel)[0] == torch_name
    for skipped in ("global_step", "bert/pooler/dense/kernel/adam_m", "bert/pooler/dense/kernel/adam_v"):
        assert tf1.torch_key_and_tensor(skipped, kernel) is None


def test_resolve_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TF checkpoint"):
        tf1.resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tf1.resolve_checkpoint(tmp_path / "model.ckpt-5")
    for prefix in ("model.ckpt-5", "model.ckpt-9"):
        (tmp_path / f"{prefix}.index").write_bytes(b"")
    with pytest.raises(ValueError, match="several TF checkpoints"):
        tf1.resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-9"\n'
                                         'all_model_checkpoint_paths: "model.ckpt-5"\n')
    assert tf1.resolve_checkpoint(tmp_path) == (str(tmp_path / "model.ckpt-9"), str(tmp_path))
    assert tf1.resolve_checkpoint(tmp_path / "model.ckpt-5.index")[0] == str(tmp_path / "model.ckpt-5")
    (tmp_path / "bert_model.ckpt.index").write_bytes(b"")
    assert tf1.resolve_checkpoint(tmp_path)[0] == str(tmp_path / "bert_model.ckpt")


def test_missing_tensorflow_message(tmp_path, monkeypatch):
    (tmp_path / "bert_model.ckpt.index").write_bytes(b"")
    (tmp_path / "bert_config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install tensorflow-cpu")):
        tf1.load_tf1_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------
# With TensorFlow
def google_variables(state) -> dict:
    """transformers state dict -> google-research TF1 variables (names and layouts as modeling.py makes them)."""
    out = {}
    for key, tensor in state.items():
        value = tensor.detach().numpy()
        if key in GOOGLE_HEAD_NAMES:
            out[GOOGLE_HEAD_NAMES[key]] = value
            continue
        if key.startswith("cls.predictions.decoder") or key.endswith(("position_ids", "token_type_ids")):
            continue  # tied to the word embeddings / cls.predictions.bias; buffers
        name = re.sub(r"layer\.(\d+)", r"layer_\1", key).replace(".", "/")
        if name.endswith("LayerNorm/weight"):
            name = name[:-len("weight")] + "gamma"
        elif name.endswith("LayerNorm/bias"):
            name = name[:-len("bias")] + "beta"
        elif name.endswith("_embeddings/weight"):
            name = name[:-len("/weight")]
        elif name.endswith("/weight"):  # tf.layers.dense kernels are [in, out]
            name, value = name[:-len("weight")] + "kernel", value.T
        out[name] = value
    return out


def write_tf1_checkpoint(tf, directory, variables: dict) -> str:
    """What google-research's run_pretraining/run_classifier leave behind: the weights, Adam slots for each,
    global_step, a `checkpoint` state file, plus bert_config.json."""
    os.makedirs(directory, exist_ok=True)
    with tf.Graph().as_default():
        tf_vars = {name: tf.compat.v1.Variable(value, name=name) for name, value in variables.items()}
        for name, value in list(variables.items()):
            for slot in ("adam_m", "adam_v"):
                tf_vars[f"{name}/{slot}"] = tf.compat.v1.Variable(np.zeros_like(value), name=f"{name}/{slot}")
        tf_vars["global_step"] = tf.compat.v1.Variable(np.int64(1000), name="global_step")
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, os.path.join(directory, "bert_model.ckpt"), write_meta_graph=False)
    with open(os.path.join(directory, "bert_config.json"), "w") as f:
        json.dump(CONFIG, f)
    return prefix


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """{head: (checkpoint dir, transformers model)} and the inputs; heads share the encoder, as a fine-tuned
    checkpoint shares its pretrained start."""
    if os.environ.get("BERT_JAX_REQUIRE_TF"):  # CI's TensorFlow stage: a missing TF is a failure, not a skip
        import tensorflow as tf
    else:
        tf = pytest.importorskip("tensorflow")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**CONFIG, num_labels=NUM_LABELS)
    models = {"BertForPreTraining": transformers.BertForPreTraining(hf_config),
              "BertForSequenceClassification": transformers.BertForSequenceClassification(hf_config),
              "BertForQuestionAnswering": transformers.BertForQuestionAnswering(hf_config.__class__(
                  **CONFIG, num_labels=2))}
    with torch.no_grad():  # noise on every tensor: no bias is 0 and no LayerNorm scale 1
        for p in models["BertForPreTraining"].parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name in ("BertForSequenceClassification", "BertForQuestionAnswering"):
            encoder = models[name].bert  # the QA model has no pooler
            encoder.load_state_dict({k: v for k, v in models["BertForPreTraining"].bert.state_dict().items()
                                     if k in encoder.state_dict()})
            for p in models[name].parameters():
                if p.ndim == 1:
                    p.add_(0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("tf1")
    dirs = {}
    for name, model in models.items():
        model.eval()
        dirs[name] = str(root / name)
        write_tf1_checkpoint(tf, dirs[name], google_variables(model.state_dict()))
    rs = np.random.RandomState(0)
    ids = rs.randint(1, CONFIG["vocab_size"], (2, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    with torch.no_grad():
        outputs = {name: {k: v.numpy() for k, v in model(**{k: torch.tensor(v) for k, v in inputs.items()}).items()
                          if k != "loss"} for name, model in models.items()}
        outputs["BertModel"] = {k: v.numpy() for k, v in models["BertForPreTraining"].bert(
            **{k: torch.tensor(v) for k, v in inputs.items()}).items()}
    return dirs, inputs, outputs, tf


def test_written_names_are_google_research_names(reference):
    dirs, _, _, tf = reference
    names = set(tf.train.load_checkpoint(os.path.join(dirs["BertForPreTraining"], "bert_model.ckpt"))
                .get_variable_to_shape_map())
    weights = {n for n in names if not n.endswith(("/adam_m", "/adam_v")) and n != "global_step"}
    assert weights == PRETRAINING_VARIABLES
    assert len(names) == 3 * len(weights) + 1


@pytest.mark.parametrize("model_class,checkpoint,outputs", [
    ("BertForPreTraining", "BertForPreTraining", ("prediction_logits", "seq_relationship_logits")),
    ("BertModel", "BertForPreTraining", ("last_hidden_state", "pooler_output")),
    ("BertForSequenceClassification", "BertForSequenceClassification", ("logits",)),
    ("BertForQuestionAnswering", "BertForQuestionAnswering", ("start_logits", "end_logits")),
])
def test_outputs_match_transformers(reference, caplog, model_class, checkpoint, outputs):
    dirs, inputs, expected, _ = reference
    num_labels = {"BertForSequenceClassification": NUM_LABELS, "BertForQuestionAnswering": 2}.get(model_class, 2)
    with caplog.at_level("WARNING", logger="bert_jax.hf"):
        config, params = tf1.load_tf1_checkpoint(dirs[checkpoint], model_class, num_labels=num_labels)
    warnings = [r.getMessage() for r in caplog.records]
    if model_class == "BertModel":  # the pretraining heads are left unused, and said so
        assert len(warnings) == 1 and "cls.seq_relationship.weight" in warnings[0], warnings
    else:  # every weight used, none missing, optimizer slots and global_step skipped silently
        assert not warnings, warnings
    assert config.hidden_size == CONFIG["hidden_size"] and config.layer_norm_eps == 1e-12
    out = build_model(model_class, config).apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()})
    reference_outputs = expected["BertModel" if model_class == "BertModel" else checkpoint]
    for field in outputs:
        np.testing.assert_allclose(np.asarray(getattr(out, field)), reference_outputs[field], atol=ATOL, rtol=0,
                                   err_msg=f"{model_class}.{field}")


def test_corrupt_or_incomplete_checkpoint(reference, tmp_path):
    dirs, *_ = reference
    broken = tmp_path / "broken"
    shutil.copytree(dirs["BertForPreTraining"], broken)
    data = next(p for p in broken.iterdir() if ".data-" in p.name)
    data.write_bytes(data.read_bytes()[:100])  # truncated shard
    with pytest.raises(ValueError, match="cannot read TF checkpoint"):
        tf1.load_tf1_checkpoint(broken, "BertForPreTraining")
    data.unlink()  # shard missing altogether
    with pytest.raises(ValueError, match="cannot read TF checkpoint"):
        tf1.load_tf1_checkpoint(broken, "BertForPreTraining")
    (broken / "bert_model.ckpt.index").write_bytes(b"not an sstable" * 10)
    with pytest.raises(ValueError, match="cannot read TF checkpoint"):
        tf1.load_tf1_checkpoint(broken, "BertForPreTraining")
