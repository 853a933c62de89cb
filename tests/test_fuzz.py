"""Fuzz: generated bad inputs get a clear error, never a NaN or a raw exception (issue 13).

A fixed seed generates a few hundred bad cases across model inputs, configs, HF checkpoint directories
(corrupted, missing, mistyped files), the tokenizer and own-data CSV/JSONL files. Each must raise
ValueError, TypeError or FileNotFoundError (not a KeyError, IndexError, AttributeError, a bare
UnicodeDecodeError/JSONDecodeError, or nothing at all) with a message naming the culprit: the argument,
field, file or column. Under jit, where values cannot raise, invalid targets must give a finite loss and a
non-zero `losses.invalid_counts` for their field. Every test reports all failing cases at once.
"""

import json
import os
import random
import shutil

import flax.linen
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bert_jax
from bert_jax.config import BertConfig
from bert_jax.hf import load_hf_checkpoint, save_hf_checkpoint
from bert_jax.modeling import dummy_inputs, losses
from bert_jax.tasks.classification import TextClassificationTask
from bert_jax.tokenization import SPECIAL_TOKENS, BertTokenizer
from tests import cases

SEED = 20261204
ALLOWED = (ValueError, TypeError, FileNotFoundError)
RAW = (KeyError, IndexError, AttributeError, UnicodeDecodeError, json.JSONDecodeError, ZeroDivisionError)
TINY = dict(cases.TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
V, K, T, P = TINY["vocab_size"], TINY["num_labels"], TINY["type_vocab_size"], TINY["max_position_embeddings"]
B, L, C, M = 2, 7, 3, 3  # batch, sequence, choices, masked positions


def outcome(name: str, fn, culprits) -> str:
    """'' when `fn()` raises an allowed error whose message names one of `culprits`, else what went wrong."""
    culprits = [culprits] if isinstance(culprits, str) else list(culprits)
    try:
        result = fn()
    except ALLOWED as e:
        if isinstance(e, RAW):
            return f"{name}: raw {type(e).__name__}: {e}"
        if not any(c in str(e) for c in culprits):
            return f"{name}: {type(e).__name__} names none of {culprits}: {e}"
        return ""
    except Exception as e:  # noqa: BLE001 - anything else is a finding
        return f"{name}: {type(e).__name__} (not a clear error): {e}"
    loss = getattr(result, "loss", None)
    return f"{name}: no error" + (f" (loss {float(loss)})" if loss is not None else "")


def report(failures, count, minimum):
    failures = [f for f in failures if f]
    assert count >= minimum, f"only {count} cases generated"
    assert not failures, f"{len(failures)} of {count} cases:\n" + "\n".join(failures[:40])


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def models():
    out = {}
    for name, cls, extra in [("mlm", bert_jax.BertForMaskedLM, {}), ("pre", bert_jax.BertForPreTraining, {}),
                             ("seq", bert_jax.BertForSequenceClassification, {}),
                             ("reg", bert_jax.BertForSequenceClassification, {"num_labels": 1}),
                             ("multi", bert_jax.BertForSequenceClassification,
                              {"problem_type": "multi_label_classification"}),
                             ("mc", bert_jax.BertForMultipleChoice, {}),
                             ("tok", bert_jax.BertForTokenClassification, {}),
                             ("qa", bert_jax.BertForQuestionAnswering, {"num_labels": 2}),
                             ("nsp", bert_jax.BertForNextSentencePrediction, {})]:
        model = cls(BertConfig(**{**TINY, **extra}))
        out[name] = (model, _random_params(model))
    return out


def _random_params(model):
    """Small random params of the right structure (eval_shape: no initialiser compiled per model)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(model))["params"])
    r = np.random.RandomState(0)
    return jax.tree.map(lambda s: jnp.asarray(r.normal(0, 0.02, s.shape).astype(s.dtype)),
                        flax.linen.meta.unbox(shapes))


def base_batch(head: str, r: np.random.RandomState) -> dict:
    shape = (B, C, L) if head == "mc" else (B, L)
    batch = {"input_ids": r.randint(1, V, shape), "attention_mask": np.ones(shape, np.int32),
             "token_type_ids": r.randint(0, T, shape)}
    if head in ("mlm", "pre"):
        batch["masked_positions"] = np.stack([r.choice(L, M, replace=False) for _ in range(B)])
        batch["labels"] = r.randint(0, V, (B, M))
    if head == "pre":
        batch["next_sentence_label"] = r.randint(0, 2, (B,))
    if head in ("seq", "nsp", "mc"):
        batch["labels"] = r.randint(0, {"seq": K, "nsp": 2, "mc": C}[head], (B,))
    if head == "reg":
        batch["labels"] = r.randn(B).astype(np.float32)
    if head == "multi":
        batch["labels"] = (r.rand(B, K) < 0.5).astype(np.float32)
    if head == "tok":
        batch["labels"] = np.where(r.rand(B, L) < 0.7, r.randint(0, K, (B, L)), -100)
    if head == "qa":
        batch["start_positions"], batch["end_positions"] = r.randint(0, L, (B,)), r.randint(0, L, (B,))
    return {k: v.astype(np.int32) if v.dtype.kind == "i" else v for k, v in batch.items()}


def _poke(x: np.ndarray, r, value):
    x = x.copy()
    x.flat[r.randint(x.size)] = value
    return x


def bad_label_value(head: str, r):
    """An invalid value for the head's label field (never the ignore index -100)."""
    k = int(r.randint(1, 40))
    return {"mlm": r.choice([V + k - 1, -k, -100 - k]), "pre": r.choice([V + k - 1, -k, -100 - k]),
            "seq": r.choice([K + k - 1, -k]), "tok": r.choice([K + k - 1, -k]), "mc": r.choice([C + k - 1, -k]),
            "nsp": r.choice([2 + k - 1, -k]), "reg": r.choice([np.nan, np.inf, -np.inf]),
            "multi": r.choice([np.nan, 1.0 + k, -float(k)])}[head]


def mutations(head: str):
    """(name, fn(batch, r) -> culprit) applicable to `head`; fn mutates the batch dict in place."""
    mc = head == "mc"
    out = [
        ("input_ids>=vocab", lambda b, r: (b.update(input_ids=_poke(b["input_ids"], r, V + r.randint(50))),
                                           "input_ids")[1]),
        ("input_ids<0", lambda b, r: (b.update(input_ids=_poke(b["input_ids"], r, -1 - r.randint(50))),
                                      "input_ids")[1]),
        ("token_type_ids>=type_vocab", lambda b, r: (b.update(
            token_type_ids=_poke(b["token_type_ids"], r, T + r.randint(5))), "token_type_ids")[1]),
        ("attention_mask shape", lambda b, r: (b.update(attention_mask=b["attention_mask"][..., :-1]),
                                               "attention_mask")[1]),
        ("token_type_ids shape", lambda b, r: (b.update(token_type_ids=b["token_type_ids"][:1]),
                                               "token_type_ids")[1]),
        ("input_ids float", lambda b, r: (b.update(input_ids=b["input_ids"].astype(np.float32)), "input_ids")[1]),
        ("input_ids rank", lambda b, r: (b.update(input_ids=b["input_ids"][..., None] if r.rand() < 0.5
                                                  else b["input_ids"][0]), "input_ids")[1]),
        ("empty sequence", lambda b, r: (b.update({k: b[k][..., :0] for k in ("input_ids", "attention_mask",
                                                                            "token_type_ids")}),
                                         b.pop("masked_positions", None), b.pop("labels", None)
                                         if head in ("tok", "mlm", "pre") else None, "sequence length 0")[-1]),
        ("input_ids and inputs_embeds", lambda b, r: (b.update(inputs_embeds=np.zeros(
            b["input_ids"].shape + (TINY["hidden_size"],), np.float32)), "input_ids")[1]),
        ("head_mask shape", lambda b, r: (b.update(head_mask=np.ones(int(r.choice([3, 5, 8])), np.float32)),
                                          "head_mask")[1]),
        ("sequence > max_position_embeddings", lambda b, r: (b.update({k: np.tile(b[k], (1,) * (b[k].ndim - 1)
                                                                                   + (10,))
                                                                       for k in ("input_ids", "attention_mask",
                                                                                 "token_type_ids")}),
                                                             "max_position_embeddings")[1]),
    ]
    if not mc:
        out.append(("position_ids>=max", lambda b, r: (b.update(position_ids=(np.arange(L)[None] + P).astype(
            np.int32)), "position_ids")[1]))
    if head != "qa":
        out.append(("label value", lambda b, r: (b.update(labels=_poke(b["labels"], r, bad_label_value(head, r))
                                                          .astype(b["labels"].dtype)), "labels")[1]))
        out.append(("label shape", lambda b, r: (b.update(labels=np.concatenate([b["labels"]] * 2, axis=-1)
                                                          if b["labels"].ndim > 1 or r.rand() < 0.5
                                                          else b["labels"][..., None].repeat(2, -1)), "labels")[1]))
    if head in ("seq", "mc", "tok", "nsp", "mlm", "pre"):
        out.append(("label float", lambda b, r: (b.update(labels=b["labels"].astype(np.float32) + 0.5), "labels")[1]))
    if head in ("mlm", "pre"):
        out.append(("masked_positions range", lambda b, r: (b.update(masked_positions=_poke(
            b["masked_positions"], r, r.choice([L + r.randint(20), -1 - r.randint(5)]))), "masked_positions")[1]))
        out.append(("masked_lm_weights shape", lambda b, r: (b.update(masked_lm_weights=np.ones((B, M + 1),
                                                                                                   np.float32)),
                                                             "masked_lm_weights")[1]))
    if head == "pre":
        out.append(("next_sentence_label", lambda b, r: (b.update(next_sentence_label=_poke(
            b["next_sentence_label"], r, r.choice([2 + r.randint(9), -1 - r.randint(9)]))),
            "next_sentence_label")[1]))
    if head == "qa":
        out.append(("start_positions shape", lambda b, r: (b.update(start_positions=np.zeros((B, 2), np.int32)),
                                                           "start_positions")[1]))
        out.append(("end_positions float", lambda b, r: (b.update(end_positions=b["end_positions"].astype(
            np.float32)), "end_positions")[1]))
    return out


def test_fuzz_model_inputs_raise_clear_errors(models):
    r = np.random.RandomState(SEED)
    failures, count = [], 0
    heads = sorted(models)
    for i in range(130):
        head = heads[r.randint(len(heads))]
        model, params = models[head]
        batch = base_batch(head, r)
        options = mutations(head)
        name, mutate = options[r.randint(len(options))]
        culprit = mutate(batch, r)
        batch = {k: jnp.asarray(v) for k, v in batch.items() if v is not None}
        failures.append(outcome(f"#{i} {head} {name}", lambda: model.apply({"params": params}, **batch), culprit))
        count += 1
    report(failures, count, 120)


def test_fuzz_invalid_targets_under_jit_are_finite_and_counted(models):
    """Values cannot raise under jit: the loss stays finite (invalid entries left out) and
    invalid_counts names the field, for random invalid values in every position."""
    r = np.random.RandomState(SEED + 1)
    failures, count = [], 0
    for head in ("seq", "reg", "multi", "mc", "tok", "nsp", "pre", "mlm"):
        model, params = models[head]
        step = jax.jit(lambda p, batch, model=model: (model.apply({"params": p}, **batch).loss,
                                                      losses.invalid_counts(batch, model.config, model)))
        for j in range(9):
            batch = base_batch(head, r)
            field = "labels"
            if head in ("mlm", "pre") and j % 3 == 1:
                field = "masked_positions"
                batch[field] = _poke(batch[field], r, r.choice([L + r.randint(20), -1 - r.randint(5)]))
            elif head == "pre" and j % 3 == 2:
                field = "next_sentence_label"
                batch[field] = _poke(batch[field], r, r.choice([2 + r.randint(9), -1 - r.randint(9)]))
            else:
                for _ in range(1 + r.randint(3)):
                    batch[field] = _poke(batch[field], r, bad_label_value(head, r)).astype(batch[field].dtype)
            loss, counts = step(params, {k: jnp.asarray(v) for k, v in batch.items()})
            count += 1
            bad = {k: int(v) for k, v in counts.items() if int(v)}
            if not np.isfinite(float(loss)) or set(bad) != {field}:
                failures.append(f"{head} #{j}: loss {float(loss)}, invalid counts {bad}, expected only {field}")
    report(failures, count, 70)


# ------------------------------------------------------------------------------------------------ configs
INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size", "num_labels")
BAD_VALUES = {
    # type_vocab_size=0 is valid (no token types), so 0 is not among its bad values.
    **{f: [v for v in (2.5, "3", None, -1, 0, True, [1], {"a": 1}, "", float("nan"))
           if not (f == "type_vocab_size" and type(v) is int and v == 0)] for f in INT_FIELDS},
    "pad_token_id": ["0", 0.0, -1, V, True, [0], 1.5],
    **{f: ["false", "True", 0, 1, None, [True], "yes"] for f in ("is_decoder", "add_cross_attention", "use_cache",
                                                               "tie_word_embeddings", "scan_layers")},
    **{f: [1.5, -0.1, "0.1", None, True, [0.1], float("nan")] for f in ("hidden_dropout_prob",
                                                                       "attention_probs_dropout_prob")},
    "classifier_dropout": [1.0, -0.5, "0.1", False],
    **{f: [0, -1.0, "1e-12", None, True, [1e-12]] for f in ("initializer_range", "layer_norm_eps")},
    "hidden_act": ["gelu2", 3, None, ["gelu"], ""],
    "position_embedding_type": ["rope", None, 1, ""],
    "problem_type": ["ranking", 1, "", "regression "],
    **{f: ["int8", 3, None, "fp8", ["float32"]] for f in ("dtype", "param_dtype")},
    "attention_impl": ["magic", None, 1],
    "remat_policy": ["sometimes", None, True],
    # Architecture switches (bert_jax.architectures).
    "model_type": ["albert", None, 1, ""],
    **{f: ["sandwich", None, 1, ""] for f in ("norm_position", "norm_type", "mlp_type")},
    **{f: ["false", 0, None, "yes"] for f in ("attention_bias", "mlp_bias", "norm_bias", "decoder_bias",
                                              "embedding_norm", "skip_padding_positions")},
    "embedding_size": [0, -1, 2.5, "16", True],
    "position_offset": [-1, 64, 1.5, "2", None],
    "mlm_head_act": ["gelu2", 3, ""],
    "id2label": ["a,b", [1, 2], {"x": "a"}, 3, {"1.5": "a"}],
    "label2id": [{"a": "x"}, ["a"], {"a": 1.5}, 7, {"a": None}],
}
JAX_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat_policy", "scan_layers")


def test_fuzz_configs_raise_naming_the_field():
    r = random.Random(SEED)
    fields = sorted(BAD_VALUES)
    failures, count = [], 0
    for i in range(130):
        field = r.choice(fields)
        value = r.choice(BAD_VALUES[field])
        base = dict(TINY)
        if field in ("id2label", "label2id"):
            base.pop("num_labels")
        how = r.choice(["init", "from_hf", "replace"] if field not in JAX_FIELDS else ["init", "replace"])
        if field == "layer_norm_eps" and value is None and how == "from_hf":
            how = "init"  # None in config.json means "the HF default" there
        if how == "init":
            fn = lambda: BertConfig(**{**base, field: value})  # noqa: E731
        elif how == "from_hf":
            fn = lambda: BertConfig.from_hf({**base, field: value})  # noqa: E731
        else:
            fn = lambda: BertConfig(**base).replace(**{field: value})  # noqa: E731
        failures.append(outcome(f"#{i} {how} {field}={value!r}", fn, field))
        count += 1
    report(failures, count, 120)


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_ckpt") / "bert"
    config = BertConfig(**TINY)
    model = bert_jax.BertForMaskedLM(config)
    save_hf_checkpoint(path, config, bert_jax.init_params(model, jax.random.PRNGKey(0)), "BertForMaskedLM")
    return path


def _json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def corrupt_checkpoint(d, r: random.Random):
    """Corrupts the checkpoint directory `d` one random way; returns (description, culprits)."""
    cfg, weights = d / "config.json", d / "model.safetensors"
    state = lambda: load_file(str(weights))  # noqa: E731
    keys = sorted(state())
    encoder_keys = [k for k in keys if k.startswith(("bert.embeddings.", "bert.encoder."))]
    kind = r.choice(["no config", "config truncated", "config not utf-8", "config field type", "config not object",
                     "model_type", "weights truncated", "weights header", "no weights", "weights empty",
                     "tensor missing", "tensor shape", "tensors renamed", "more layers", "hidden size",
                     "index garbage", "index missing shard", "index no map", "bin garbage", "no directory",
                     "config is a directory"])
    if kind == "no config":
        cfg.unlink()
        return kind, ["config.json", str(d)]
    if kind == "config truncated":
        text = cfg.read_text()
        cfg.write_text(text[:r.randint(1, len(text) - 2)])
        return kind, "config.json"
    if kind == "config not utf-8":
        cfg.write_bytes(cfg.read_bytes().replace(b'"bert"', '"bért"'.encode("latin-1")))
        return kind, "config.json"
    if kind == "config field type":
        field, value = r.choice([("num_labels", "3"), ("pad_token_id", "0"), ("is_decoder", "false"),
                                 ("vocab_size", 99.5), ("hidden_dropout_prob", "0.1"), ("hidden_act", None),
                                 ("label2id", {"LABEL_0": "zero"}), ("tie_word_embeddings", "no"),
                                 ("type_vocab_size", None), ("id2label", ["a", "b"])])
        _json(cfg, lambda c: c.update({field: value}))
        return kind, field
    if kind == "config not object":
        cfg.write_text(r.choice(["[]", "3", '"bert"', "null"]))
        return kind, "config.json"
    if kind == "model_type":
        other = r.choice(["roberta", "electra", "distilbert", "", None])
        _json(cfg, lambda c: c.update(model_type=other))
        return kind, "model_type"
    if kind == "weights truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[:r.randint(0, len(data) - 1)])
        return kind, "model.safetensors"
    if kind == "weights header":
        data = bytearray(weights.read_bytes())
        header = int.from_bytes(data[:8], "little")
        for _ in range(3):
            at = r.randint(8, 8 + header - 1)
            if chr(data[at]) in '{}[]:,"0123456789':  # structure or offsets, not a tensor name
                data[at] = ord(r.choice("x]{,"))
        data[:8] = (header + r.choice([1, -1, 10 ** 6])).to_bytes(8, "little", signed=True)
        weights.write_bytes(bytes(data))
        return kind, "model.safetensors"
    if kind == "no weights":
        weights.unlink()
        return kind, "model.safetensors"
    if kind == "weights empty":
        weights.write_bytes(b"")
        return kind, "model.safetensors"
    if kind == "tensor missing":
        gone = r.sample(encoder_keys, r.randint(1, 4))
        save_file({k: v for k, v in state().items() if k not in gone}, str(weights))
        return kind, [k[len("bert."):] for k in gone]  # BertModel names keys without the prefix
    if kind == "tensor shape":
        key = r.choice(encoder_keys)
        tensors = state()
        tensors[key] = np.resize(tensors[key], tuple(s + r.randint(1, 3) for s in tensors[key].shape))
        save_file(tensors, str(weights))
        return kind, key[len("bert."):]
    if kind == "tensors renamed":
        prefix = r.choice(["roberta.", "electra.", "model.", "encoder."])
        save_file({k.replace("bert.", prefix, 1): v for k, v in state().items()}, str(weights))
        return kind, ["embedding/encoder tensors"]
    if kind == "more layers":
        _json(cfg, lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + r.randint(1, 3)))
        return kind, "encoder.layer."
    if kind == "hidden size":
        _json(cfg, lambda c: c.update(hidden_size=64, num_attention_heads=4))
        return kind, "shape mismatch"
    if kind.startswith("index"):
        tensors = state()
        weights.unlink()
        first, second = keys[:len(keys) // 2], keys[len(keys) // 2:]
        save_file({k: tensors[k] for k in first}, str(d / "model-00001-of-00002.safetensors"))
        save_file({k: tensors[k] for k in second}, str(d / "model-00002-of-00002.safetensors"))
        index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in first}
                 | {k: "model-00002-of-00002.safetensors" for k in second}}
        if kind == "index garbage":
            (d / "model.safetensors.index.json").write_bytes(r.choice([b"{", b"\xff\xfe", b"[1, 2]", b"null"]))
            return kind, "model.safetensors.index.json"
        if kind == "index missing shard":
            (d / "model-00002-of-00002.safetensors").unlink()
            (d / "model.safetensors.index.json").write_text(json.dumps(index))
            return kind, "model-00002-of-00002.safetensors"
        (d / "model.safetensors.index.json").write_text(json.dumps(r.choice([{}, {"weight_map": {}},
                                                                             {"weight_map": [1]},
                                                                             {"weight_map": {"a": 3}}])))
        return kind, "model.safetensors.index.json"
    if kind == "bin garbage":
        weights.unlink()
        (d / "pytorch_model.bin").write_bytes(bytes(r.getrandbits(8) for _ in range(r.randint(0, 300))))
        return kind, "pytorch_model.bin"
    if kind == "no directory":
        shutil.rmtree(d)
        return kind, str(d)
    cfg.unlink()
    cfg.mkdir()
    return kind, ["config.json", str(d)]


def test_fuzz_checkpoints_raise_naming_the_file_or_tensor(checkpoint, tmp_path):
    pytest.importorskip("torch")  # the pytorch_model.bin cases read through torch
    r = random.Random(SEED)
    failures, count = [], 0
    for i in range(60):
        d = tmp_path / f"case{i}"
        shutil.copytree(checkpoint, d)
        kind, culprits = corrupt_checkpoint(d, r)
        model_class = r.choice(["BertForMaskedLM", "BertModel", "BertForPreTraining"])
        failures.append(outcome(f"#{i} {kind} -> {model_class}", lambda: load_hf_checkpoint(d, model_class),
                                culprits))
        count += 1
    report(failures, count, 60)


# ------------------------------------------------------------------------------------------------ tokenizer
WORDS = "the a of cat dog sat on mat ##s ##ed run ##ning big small red blue , . ! ?".split()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz_tok")
    (path / "vocab.txt").write_text("\n".join(list(SPECIAL_TOKENS) + WORDS) + "\n")
    BertTokenizer.from_vocab(str(path / "vocab.txt")).save(path)
    return path


def corrupt_tokenizer_dir(d, r):
    kind = r.choice(["vocab not utf-8", "vocab no special", "tokenizer.json garbage", "config garbage",
                     "config type", "config not object", "no files", "no directory"])
    vocab, tok_json, config = d / "vocab.txt", d / "tokenizer.json", d / "tokenizer_config.json"
    if kind == "vocab not utf-8":
        tok_json.unlink()
        vocab.write_bytes(vocab.read_bytes() + "café\n".encode("latin-1"))
        return kind, "vocab.txt"
    if kind == "vocab no special":
        tok_json.unlink()
        missing = r.choice(SPECIAL_TOKENS)
        vocab.write_text("".join(line for line in vocab.read_text().splitlines(True) if line.strip() != missing))
        return kind, [missing, "vocab.txt"]
    if kind == "tokenizer.json garbage":
        text = tok_json.read_text()
        tok_json.write_text(r.choice([text[:r.randint(0, len(text) - 1)], "[]", "{}",
                                      text.replace("WordPiece", "BPE")]))
        return kind, "tokenizer.json"
    if kind == "config garbage":
        config.write_bytes(r.choice([b"{", b"\xff\xfe\x00", b'{"do_lower_case": tru}']))
        return kind, "tokenizer_config.json"
    if kind == "config type":
        key, value = r.choice([("do_lower_case", "no"), ("strip_accents", 1), ("tokenize_chinese_chars", None),
                               ("model_max_length", "512"), ("model_max_length", -5), ("do_lower_case", [True])])
        _json(config, lambda c: c.update({key: value}))
        return kind, key
    if kind == "config not object":
        config.write_text(r.choice(["[]", "1", "null"]))
        return kind, "tokenizer_config.json"
    if kind == "no files":
        for f in (vocab, tok_json):
            f.unlink()
        return kind, str(d)
    shutil.rmtree(d)
    return kind, str(d)


def bad_tokenizer_call(tok, r):
    """(description, fn, culprit) of one bad call."""
    text = " ".join(r.choice(WORDS[:8]) for _ in range(r.randint(1, 6)))
    calls = [
        ("text int", lambda: tok(r.choice([3, None, b"bytes", 2.5])), "text"),
        ("text list of mixed", lambda: tok([text, r.choice([3, None, b"x"])]), "text"),
        ("text_pair length", lambda: tok([text, text], [text]), "text_pair"),
        ("text_pair type", lambda: tok(text, [text]), "text_pair"),
        ("max_length", lambda: tok(text, max_length=r.choice([0, -3, "8", 2.5, True]), truncation=True),
         "max_length"),
        ("truncation", lambda: tok(text, truncation=r.choice(["yes", "only_third", 1.0, [True]])), "truncation"),
        ("padding", lambda: tok(text, padding=r.choice(["sometimes", 2.0, {}])), "padding"),
        ("stride", lambda: tok(text, stride=r.choice([-1, "2", 1.5])), "stride"),
        ("stride too large", lambda: tok(text, text, max_length=8, truncation="only_second", stride=r.randint(5, 9),
                                         return_overflowing_tokens=True), "stride"),
        ("pad_to_multiple_of", lambda: tok(text, padding=True, pad_to_multiple_of=r.choice([0, -8, "8"])),
         "pad_to_multiple_of"),
        ("only_second without pair", lambda: tok(text, truncation="only_second", max_length=5), "only_second"),
        ("decode 2-D", lambda: tok.decode(np.ones((2, 3), np.int32)), "decode"),
        ("id out of range", lambda: tok.convert_ids_to_tokens([5, r.choice([len(tok) + r.randint(0, 9), -1])]),
         "outside the vocabulary"),
        ("tokenize non-str", lambda: tok.tokenize(r.choice([None, 3, ["a"]])), "text"),
        ("encode non-str", lambda: tok.encode(r.choice([None, 3, ["a"]])), "encode"),
    ]
    return calls[r.randrange(len(calls))]


def test_fuzz_tokenizer_raises_naming_the_argument_or_file(tokenizer_dir, tmp_path):
    r = random.Random(SEED)
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    failures, count = [], 0
    for i in range(30):
        d = tmp_path / f"tok{i}"
        shutil.copytree(tokenizer_dir, d)
        kind, culprits = corrupt_tokenizer_dir(d, r)
        failures.append(outcome(f"#{i} {kind}", lambda: BertTokenizer.from_pretrained(d), culprits))
        count += 1
    for i in range(40):
        name, fn, culprit = bad_tokenizer_call(tok, r)
        failures.append(outcome(f"call #{i} {name}", fn, culprit))
        count += 1
    report(failures, count, 70)


# ------------------------------------------------------------------------------------------------ CSV files
LABELS = ["pos", "neg", "neutral"]


def _task(**kwargs):
    return TextClassificationTask(ml_collections.ConfigDict(dict(
        dict(data_dir="", source="", max_train_examples=-1, max_eval_examples=-1, text_column="text",
             label_column="label"), **kwargs)))


def _csv(rows, header=("text", "label")):
    def quote(v):
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v
    return "\n".join([",".join(header)] + [",".join(quote(str(v)) for v in row) for row in rows]) + "\n"


def bad_own_data(d, r):
    """Writes train/dev files with one problem; returns (description, action, culprits)."""
    rows = [[f"text {i} " + r.choice(["good", "bad", 'a "quoted", one']), r.choice(LABELS)] for i in range(5)]
    train, dev = d / "train.csv", d / "dev.csv"
    train.write_text(_csv(rows), encoding="utf-8")
    dev.write_text(_csv(rows[:2]), encoding="utf-8")
    kind = r.choice(["no label column", "no text column", "not utf-8", "empty", "header only", "empty label",
                     "short row", "regression label", "unknown dev label", "jsonl malformed", "jsonl text type",
                     "jsonl multi-label type", "missing file", "extension", "problem_type", "label_names",
                     "text_column", "label_column", "dev no label column", "tsv as csv"])
    files = dict(train_file=str(train), validation_file=str(dev))
    if kind == "no label column":
        train.write_text(_csv([[t] for t, _ in rows], header=("text",)))
        return kind, lambda: _task(**files).num_labels(), ["no column 'label'"]
    if kind == "no text column":
        train.write_text(_csv([[lab] for _, lab in rows], header=("label",)))
        return kind, lambda: _task(**files).load_split("train"), ["no column 'text'"]
    if kind == "not utf-8":
        target = r.choice([train, dev])
        target.write_bytes(target.read_bytes().replace(b"text 1", "tëxt 1".encode(r.choice(["latin-1", "cp1252"]))))
        split = "train" if target == train else "validation"
        return kind, lambda: _task(**files).load_split(split), [target.name]
    if kind == "empty":
        train.write_text("")
        return kind, lambda: _task(**files).load_split("train"), ["train.csv"]
    if kind == "header only":
        train.write_text("text,label\n")
        return kind, lambda: _task(**files).num_labels(), ["train.csv"]
    if kind in ("empty label", "short row"):
        lines = train.read_text().splitlines()
        at = r.randint(1, len(lines) - 1)
        lines[at] = ("text x," if kind == "empty label" else "text x")
        train.write_text("\n".join(lines) + "\n")
        return kind, lambda: _task(**files).num_labels(), [f"train.csv, line {at + 1}"]
    if kind == "regression label":
        return kind, lambda: _task(problem_type="regression", **files).load_split("train"), ["train.csv, line"]
    if kind == "unknown dev label":
        dev.write_text(_csv([["fine", "great"]]))
        return kind, lambda: _task(**files).load_split("validation"), ["dev.csv, line 2", "great"]
    if kind.startswith("jsonl"):
        path = d / "train.jsonl"
        good = [json.dumps({"text": t, "label": lab}) for t, lab in rows]
        at = r.randint(0, len(good) - 1)
        culprit = [f"train.jsonl, line {at + 1}"]
        extra = {}
        if kind == "jsonl malformed":
            good[at] = good[at][:-r.randint(1, 5)]
        elif kind == "jsonl text type":
            good[at] = json.dumps({"text": r.choice([3, None, ["a"]]), "label": "pos"})
            culprit.append("'text'")
        else:
            extra = {"problem_type": "multi_label"}
            good[at] = json.dumps({"text": "a", "label": r.choice([3, {"a": 1}, 2.5])})
        path.write_text("\n".join(good) + "\n")
        return kind, lambda: _task(train_file=str(path), **extra).load_split("train"), culprit
    if kind == "missing file":
        return kind, lambda: _task(train_file=str(d / "nope.csv")).load_split("train"), ["nope.csv"]
    if kind == "extension":
        path = d / r.choice(["train.xlsx", "train.parquet", "train"])
        path.write_text(_csv(rows))
        return kind, lambda: _task(train_file=str(path)).load_split("train"), [path.name]
    if kind == "problem_type":
        return kind, lambda: _task(problem_type=r.choice(["multiclass", "binary", "Regression"]), **files), \
            ["problem_type"]
    if kind == "label_names":
        return kind, lambda: _task(label_names="pos,neg,pos", **files), ["label_names"]
    if kind == "text_column":
        return kind, lambda: _task(**{**files, "text_column": ""}), ["text_column"]
    if kind == "label_column":
        return kind, lambda: _task(**{**files, "label_column": ""}).load_split("train"), ["label_column"]
    if kind == "dev no label column":
        dev.write_text(_csv([["fine"]], header=("text",)))
        return kind, lambda: _task(**files).load_split("validation"), ["no column 'label'", "dev.csv"]
    # a TSV file named .csv: one column "text\tlabel"
    train.write_text("text\tlabel\ngood\tpos\n")
    return kind, lambda: _task(**files).load_split("train"), ["no column", "train.csv"]


def test_fuzz_own_data_files_raise_naming_the_file_or_column(tmp_path):
    r = random.Random(SEED)
    failures, count = [], 0
    for i in range(70):
        d = tmp_path / f"data{i}"
        d.mkdir()
        kind, action, culprits = bad_own_data(d, r)
        failures.append(outcome(f"#{i} {kind}", action, culprits))
        count += 1
    report(failures, count, 70)
