"""Clear errors instead of silent acceptance or raw tracebacks (issue 13, items 4 and 5): config types,
config.json encoding, label maps, non-BERT checkpoints, non-UTF-8 data files, missing columns, empty
sequences. Every error names the field, file or column at fault."""

import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bert_jax
from bert_jax.config import BertConfig
from bert_jax.hf import load_hf_checkpoint, save_hf_checkpoint
from bert_jax.tasks.classification import TextClassificationTask
from bert_jax.tasks.ner import read_conll
from bert_jax.tokenization import BertTokenizer, load_vocab
from tests import cases


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value, message", [
    ("num_labels", 2.5, r"num_labels must be a positive integer, got 2\.5"),
    ("num_labels", "3", r"num_labels must be a positive integer, got '3'"),
    ("num_labels", None, "num_labels must be a positive integer, got None"),
    ("pad_token_id", "0", r"pad_token_id must be an integer or null, got '0'"),
    ("pad_token_id", 0.0, "pad_token_id must be an integer or null"),
    ("is_decoder", "false", r"is_decoder must be true or false, got 'false'"),
    ("use_cache", 1, "use_cache must be true or false, got 1"),
    ("tie_word_embeddings", "True", "tie_word_embeddings must be true or false"),
    ("add_cross_attention", None, "add_cross_attention must be true or false"),
    ("scan_layers", "no", "scan_layers must be true or false"),
    ("vocab_size", "30522", "vocab_size must be a positive integer"),
    ("label2id", {"neg": "zero", "pos": 1}, r"label2id must map label names to integer ids; 'neg' maps to 'zero'"),
    ("label2id", {"neg": 0.5}, "label2id must map label names to integer ids"),
    ("label2id", ["neg", "pos"], "label2id must map label names to integer ids"),
    ("id2label", {"first": "a"}, r"id2label must map integer ids to label names; key 'first'"),
    ("id2label", "a,b", "id2label must map integer ids to label names"),
    ("initializer_range", True, "initializer_range must be a positive number"),
])
def test_config_field_types(field, value, message):
    with pytest.raises(ValueError, match=message):
        BertConfig(**{**cases.TINY, field: value})
    if field != "scan_layers":  # JAX-side fields are not read from config.json
        with pytest.raises(ValueError, match=message):
            BertConfig.from_hf({**cases.TINY, field: value})


def test_config_accepts_numpy_scalars_and_json_label_maps():
    config = BertConfig(**{**cases.TINY, "num_labels": np.int64(2), "is_decoder": np.bool_(False),
                           "label2id": {"a": "0", "b": 1}})
    assert config.num_labels == 2 and type(config.num_labels) is int and config.is_decoder is False
    assert dict(config.label2id) == {"a": 0, "b": 1}
    assert BertConfig.from_hf({"id2label": {"0": "x", "1": "y"}}).num_labels == 2


def test_config_json_problems_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps(cases.TINY).encode("utf-16"))
    with pytest.raises(ValueError, match=r"config\.json is not UTF-8 text"):
        BertConfig.from_hf(tmp_path)
    path.write_text(json.dumps({**cases.TINY, "is_decoder": "false"}))
    with pytest.raises(ValueError, match=r"config\.json: BertConfig\.is_decoder must be true or false"):
        BertConfig.from_hf(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"got list \(the JSON in .*config\.json\)"):
        BertConfig.from_hf(path)
    # RoBERTa / ELECTRA / ... are read (tests/test_architectures.py); an architecture bert_jax has no mapping for is not.
    path.write_text(json.dumps({**cases.TINY, "model_type": "albert"}))
    with pytest.raises(ValueError, match=r"config\.json has model_type='albert', which bert_jax cannot read"):
        BertConfig.from_hf(tmp_path)
    assert BertConfig.from_hf(tmp_path, allow_other_model_type=True).vocab_size == cases.TINY["vocab_size"]


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A saved tiny BertForMaskedLM (config.json + model.safetensors) and its params."""
    path = tmp_path_factory.mktemp("bert")
    config = BertConfig(**cases.TINY)
    model = bert_jax.BertForMaskedLM(config)
    params = bert_jax.init_params(model, jax.random.PRNGKey(0))
    save_hf_checkpoint(path, config, params, "BertForMaskedLM")
    return path, params


def _rewrite(src, dst, config_change=None, key_change=None):
    config = json.loads((src / "config.json").read_text())
    config.update(config_change or {})
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text(json.dumps(config))
    state = load_file(str(src / "model.safetensors"))
    if key_change is not None:
        state = {k2: v for k, v in state.items() if (k2 := key_change(k)) is not None}
    save_file(state, str(dst / "model.safetensors"))


def test_unknown_architecture_checkpoint_is_refused_unless_asked(tmp_path, caplog):
    """An ALBERT checkpoint (shared layers, factorised embeddings): no mapping here, so refused."""
    transformers = pytest.importorskip("transformers")
    config = transformers.AlbertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=37, embedding_size=16, max_position_embeddings=66)
    transformers.AlbertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='albert', which bert_jax cannot read.*allow_missing=True"):
        load_hf_checkpoint(tmp_path, "BertForMaskedLM")
    with caplog.at_level(logging.WARNING):
        loaded_config, params = load_hf_checkpoint(tmp_path, "BertForMaskedLM", allow_missing=True)
    assert "reading it as BERT" in caplog.text and "initialised" in caplog.text
    assert loaded_config.model_type == "bert" and loaded_config.type_vocab_size == 2


def test_bert_named_roberta_weights_are_refused(bert_dir, tmp_path):
    """model_type says bert, but the tensors are named roberta.*: every encoder tensor is missing."""
    src, _ = bert_dir
    _rewrite(src, tmp_path, key_change=lambda k: k.replace("bert.", "roberta."))
    with pytest.raises(ValueError, match=r"of the \d+ embedding/encoder tensors BertForMaskedLM needs are missing "
                                         r"\(bert\.embeddings\..*allow_missing=True"):
        load_hf_checkpoint(tmp_path, "BertForMaskedLM")
    load_hf_checkpoint(tmp_path, "BertForMaskedLM", allow_missing=True)


@pytest.mark.parametrize("dropped, count", [("bert.embeddings.", 5), ("bert.encoder.layer.1.", 16)])
def test_missing_encoder_tensors_are_refused(bert_dir, tmp_path, dropped, count):
    src, _ = bert_dir
    _rewrite(src, tmp_path, key_change=lambda k: None if k.startswith(dropped) else k)
    with pytest.raises(ValueError, match=rf"{count} of the \d+ embedding/encoder tensors"):
        load_hf_checkpoint(tmp_path, "BertForMaskedLM")


def test_missing_head_pooler_and_cross_attention_still_load(bert_dir, caplog):
    """What a BERT checkpoint may legitimately lack is still initialised with a warning: a new head,
    the pooler (an MLM checkpoint has none), cross-attention (a decoder warm-started from an encoder)."""
    src, params = bert_dir
    with caplog.at_level(logging.WARNING):
        _, loaded = load_hf_checkpoint(src, "BertForSequenceClassification")
        np.testing.assert_array_equal(loaded["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                      params["bert"]["embeddings"]["word_embeddings"]["embedding"])
        load_hf_checkpoint(src, "BertLMHeadModel", is_decoder=True, add_cross_attention=True)
    assert "bert.pooler.dense.weight" in caplog.text and "classifier.weight" in caplog.text
    assert "crossattention" in caplog.text


# ---------------------------------------------------------------------------------------------- data files
def _classify(tmp_path, **kwargs):
    return TextClassificationTask(ml_collections.ConfigDict(dict(
        dict(data_dir="", source="", max_train_examples=-1, max_eval_examples=-1, text_column="text",
             label_column="label"), **kwargs)))


def test_csv_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\ncafé,pos\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.csv is not UTF-8 text \(byte 0xe9"):
        _classify(tmp_path, train_file=str(path)).load_split("train")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_bytes('{"text": "café", "label": "pos"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.jsonl is not UTF-8 text"):
        _classify(tmp_path, train_file=str(jsonl)).label_names()
    conll = tmp_path / "train.txt"
    conll.write_bytes("Café B-LOC\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.txt is not UTF-8 text"):
        read_conll(str(conll))


def test_csv_without_the_label_column_says_so(tmp_path):
    """label_names() (what sizes the model, called before any split is loaded) read the missing column
    as an empty label."""
    path = tmp_path / "train.csv"
    path.write_text("text,stars\ngood,5\nbad,1\n")
    task = _classify(tmp_path, train_file=str(path))
    with pytest.raises(ValueError, match=r"train\.csv has no column 'label'; the columns found are "
                                         r"\['text', 'stars'\]"):
        task.num_labels()


def test_tokenizer_files(tmp_path):
    (tmp_path / "vocab.txt").write_bytes("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncafé\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"vocab\.txt is not UTF-8 text"):
        load_vocab(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match=r"vocab\.txt is not UTF-8 text"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncafe\n")
    for content, message in [(b"\xff\xfe{}", "is not UTF-8 text"), (b"[1]", "must hold a JSON object"),
                             (b'{"do_lower_case": "no"}', "do_lower_case must be true or false"),
                             (b'{"model_max_length": "512"}', "model_max_length must be a number"),
                             (b'{"model_max_length": 0}', "model_max_length must be at least 1")]:
        (tmp_path / "tokenizer_config.json").write_bytes(content)
        with pytest.raises(ValueError, match=rf"tokenizer_config\.json.*{message}"):
            BertTokenizer.from_pretrained(tmp_path)


def test_wordpiece_training_file_not_utf8(tmp_path):
    from bert_jax.tokenization import train_wordpiece
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("hello world\n")
    bad.write_bytes("café au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not all UTF-8 text: \[.*bad\.txt'\]"):
        train_wordpiece([good, bad], vocab_size=50)


# ---------------------------------------------------------------------------------------------- model inputs
@pytest.mark.parametrize("shape", [(2, 0), (0, 0)])
def test_empty_sequence_length(shape):
    model = bert_jax.BertModel(BertConfig(**cases.TINY))
    params = bert_jax.init_params(model)
    with pytest.raises(ValueError, match=r"input_ids has sequence length 0"):
        model.apply({"params": params}, jnp.zeros(shape, jnp.int32))
    with pytest.raises(ValueError, match=r"inputs_embeds has sequence length 0"):
        model.apply({"params": params}, inputs_embeds=jnp.zeros(shape + (32,)))
