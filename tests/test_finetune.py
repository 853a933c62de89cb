"""Fine-tuning loop: end to end per head type on generated data, init from a Hugging Face directory
and from a bert_jax pretraining workdir, exact resume after SIGTERM and SIGKILL, best-checkpoint
selection, evaluate / predict modes, clear errors, the stdlib demo task's split."""

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from bert_jax.tasks import Features, Task
from bert_jax.training import checkpoints, finetune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITIVE = "sunny bright warm happy calm gentle lovely sweet kind clear".split()
NEGATIVE = "rainy dark cold angry loud harsh ugly bitter cruel murky".split()
NEUTRAL = "the a of and then with from into over under".split()
NAMES, PLACES = "alice bob carol dave erin".split(), "paris rome oslo lima cairo".split()
TINY = {"model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "model.max_position_embeddings": 64, "model.attention_impl": "xla",
        "data.max_seq_length": 32, "data.global_batch_size": 8, "data.eval_batch_size": 16,
        "optim.learning_rate": 5e-3, "log_every": 2, "async_checkpointing": False, "progress_bar": False}


# ------------------------------------------------------------------------------------ helpers
def _config_module(name):
    spec = importlib.util.spec_from_file_location(f"config_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set(config, overrides):
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def _config(name="finetune_demo", arg="", **overrides):
    """A tiny config from configs/<name>.py; `overrides` use dotted keys (`data.max_seq_length`)."""
    return _set(_config_module(name).get_config(arg), {**TINY, **overrides})


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def _params_at(workdir, step):
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    state, data_state = ckpt.read(step)
    ckpt.close()
    return jax.tree.map(np.asarray, state["params"]), data_state


def _sentence(rs, words, n=5):
    return " ".join(rs.choice(words + NEUTRAL[:3], n))


class ToyTask(Task):
    """Sentiment from word lists (learnable in a few steps). Its `score` metric is scripted (0.2,
    0.9, 0.5, ... by evaluation) so the best checkpoint is a known middle one."""

    name, head, metric_for_best, predict_split = "toy", "sequence_classification", "score", "validation"
    SCORES = (0.2, 0.9, 0.5)

    def __init__(self, config):
        super().__init__(config)
        self.evaluations = 0

    def num_labels(self):
        return 2

    def label_names(self):
        return ["negative", "positive"]

    def load_split(self, split):
        rs = np.random.RandomState({"train": 0, "validation": 1}[split])
        labels = rs.randint(0, 2, 96 if split == "train" else 40)
        return [(_sentence(rs, POSITIVE if y else NEGATIVE), int(y)) for y in labels]

    def featurize(self, examples, tokenizer, max_seq_length, split):
        enc = tokenizer([t for t, _ in examples], truncation=True, padding="max_length", max_length=max_seq_length)
        return Features({k: enc[k] for k in finetune.INPUT_KEYS}, {"labels": np.asarray([y for _, y in examples],
                                                                                      np.int32)})

    def postprocess(self, outputs, features, examples):
        return outputs["logits"].argmax(-1)

    def metrics(self, predictions, examples):
        score = self.SCORES[min(self.evaluations, len(self.SCORES) - 1)]
        self.evaluations += 1
        return {"accuracy": float(np.mean(predictions == np.asarray([y for _, y in examples]))), "score": score}

    def write_predictions(self, predictions, examples, path):
        with open(path, "w") as f:
            json.dump([{"text": t, "prediction": int(p)} for (t, _), p in zip(examples, predictions)], f)


class PreemptedToyTask(ToyTask):
    """ToyTask that sends itself SIGTERM at its first evaluation (a preemption mid-run)."""

    def metrics(self, predictions, examples):
        if self.evaluations == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().metrics(predictions, examples)


# 96 train examples / batch 8 = 12 steps per epoch; 2 epochs; evals at 8, 16, 24 -> best (score) 16.
TOY = {"task.name": "tests.test_finetune:ToyTask", "num_epochs": 2.0, "eval_every": 8, "keep_checkpoints": 1}


def write_vocab(path):
    """A fixed vocab.txt: special tokens, every test word, letters and punctuation (a trained
    WordPiece vocab is not bit-reproducible, and every run here must see the same ids)."""
    words = POSITIVE + NEGATIVE + NEUTRAL + NAMES + PLACES + "who what where then".split()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + letters + ["##" + c for c in letters] + list(
        ".,-?!'") + [str(d) for d in range(10)]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture(scope="module")
def toy_run(vocab, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy"))
    result = finetune.train_and_evaluate(_config(vocab=vocab, **TOY), workdir)
    return workdir, result


# ------------------------------------------------------------------------------- the loop itself
def test_toy_end_to_end(toy_run):
    workdir, result = toy_run
    train = _records(workdir, "train")
    losses = [r["loss"] for r in train]  # each the mean of 2 steps (log_every)
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses
    evals = _records(workdir, "eval")
    assert [r["step"] for r in evals] == [8, 16, 24]
    assert evals[-1]["validation/accuracy"] >= 0.9  # chance is ~0.5
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    assert final["step"] == final["total_steps"] == 24 and not final["preempted"]
    assert final["final"]["validation"]["accuracy"] == evals[-1]["validation/accuracy"]
    model_config = json.load(open(os.path.join(workdir, "model_config.json")))
    assert model_config["architectures"] == ["BertForSequenceClassification"]
    assert model_config["id2label"] == {"0": "negative", "1": "positive"} and model_config["num_labels"] == 2
    assert os.path.isfile(os.path.join(workdir, "tokenizer", "vocab.txt"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert json.load(open(os.path.join(workdir, "config.json")))["task"]["name"] == TOY["task.name"]


def test_best_checkpoint_is_kept_and_used(toy_run, vocab):
    workdir, result = toy_run
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    assert final["best_step"] == 16 and final["best"]["validation"]["score"] == 0.9
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.all_steps() == [16, 24]  # the newest (keep_checkpoints=1) and the best
    ckpt.close()
    at_16 = next(r for r in _records(workdir, "eval") if r["step"] == 16)
    evaluated = finetune.evaluate(_config(vocab=vocab, **TOY), workdir)  # default: the best checkpoint
    assert evaluated["step"] == 16
    assert evaluated["eval"]["validation"]["accuracy"] == at_16["validation/accuracy"]
    assert json.load(open(os.path.join(workdir, "eval_metrics.json")))["step"] == 16


def test_predict_mode_writes_the_task_file(toy_run, vocab):
    workdir, _ = toy_run
    out = finetune.predict(_config(vocab=vocab, mode="predict", eval_step=24, **TOY), workdir)
    path = out["paths"]["validation"]
    assert out["step"] == 24 and path == os.path.join(workdir, "predictions_validation.json")
    rows = json.load(open(path))
    examples = ToyTask(None).load_split("validation")
    assert [r["text"] for r in rows] == [t for t, _ in examples]
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    accuracy = np.mean([r["prediction"] == y for r, (_, y) in zip(rows, examples)])
    assert accuracy == pytest.approx(final["final"]["validation"]["accuracy"])


def test_sigterm_saves_then_resume_is_bit_exact(toy_run, vocab, tmp_path):
    reference, _ = toy_run
    workdir = str(tmp_path / "preempted")
    preempted = finetune.train_and_evaluate(
        _config(vocab=vocab, **{**TOY, "task.name": "tests.test_finetune:PreemptedToyTask"}), workdir)
    assert preempted["preempted"] and preempted["step"] == 8
    assert not os.path.exists(os.path.join(workdir, "final_metrics.json"))
    _, data_state = _params_at(workdir, 8)
    assert data_state["epoch"] == 0 and data_state["position"] == 64  # 8 steps x 8 rows
    resumed = finetune.train_and_evaluate(_config(vocab=vocab, **TOY), workdir)
    assert resumed["step"] == 24
    jax.tree.map(np.testing.assert_array_equal, _params_at(workdir, 24)[0], _params_at(reference, 24)[0])


def test_sigkill_then_resume_is_bit_exact(toy_run, vocab, tmp_path):
    reference, _ = toy_run
    workdir = str(tmp_path / "killed")
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **TOY, "vocab": vocab}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "bert_jax.main", f"--config={ROOT}/configs/finetune_demo.py",
                             f"--workdir={workdir}", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = os.path.join(workdir, "checkpoints", "8")
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.isdir(first):  # kill -9 once the step-8 checkpoint is there
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isdir(first) and not os.path.exists(os.path.join(workdir, "final_metrics.json"))
    finetune.train_and_evaluate(_config(vocab=vocab, **TOY), workdir)  # resumes from 8 (or later)
    jax.tree.map(np.testing.assert_array_equal, _params_at(workdir, 24)[0], _params_at(reference, 24)[0])


def test_rerun_after_a_corrupt_final_checkpoint_retrains_to_the_same_params(toy_run, vocab, tmp_path):
    """The fine-tuning loop saves with force=True: a rerun over a truncated final checkpoint falls back to
    the best one (step 16), retrains and saves step 24 again (orbax refused: StepAlreadyExistsError)."""
    reference, _ = toy_run
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(reference, workdir)
    step_24 = os.path.join(workdir, "checkpoints", "24", "state")
    largest = max((os.path.join(root, name) for root, _, names in os.walk(step_24) for name in names),
                  key=os.path.getsize)
    os.truncate(largest, os.path.getsize(largest) // 2)
    result = finetune.train_and_evaluate(_config(vocab=vocab, **TOY), workdir)
    assert result["step"] == 24
    jax.tree.map(np.testing.assert_array_equal, _params_at(workdir, 24)[0], _params_at(reference, 24)[0])
    assert [n.split(".")[0] for n in os.listdir(os.path.join(workdir, "checkpoints")) if "unreadable" in n] == ["24"]


# ----------------------------------------------------------------------------- initialisation
def test_init_from_hugging_face_directory(vocab, tmp_path):
    import torch
    import transformers
    from bert_jax.hf import to_torch_state_dict
    from bert_jax.modeling import BertModel
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=220, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=64)
    hf_model = transformers.BertForPreTraining(hf_config).eval()
    hf_dir = str(tmp_path / "hf")
    hf_model.save_pretrained(hf_dir)
    shutil.copy(vocab, os.path.join(hf_dir, "vocab.txt"))
    config = _config(init_from=hf_dir, total_steps=2, **TOY)
    config.model.hidden_size = 48  # ignored: the architecture is the checkpoint's
    run = finetune.setup(config, str(tmp_path / "run"))
    assert run.model_config.hidden_size == 32 and run.model_config.vocab_size == 220
    params = run.initial_params()
    ours = to_torch_state_dict(jax.device_get(params["bert"]), BertModel(run.model_config))
    theirs = {k: v.numpy() for k, v in hf_model.bert.state_dict().items() if not k.endswith("position_ids")}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    assert params["classifier"]["kernel"].shape == (32, 2)  # the new head
    result = finetune.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["step"] == 2 and "validation" in result["final"]
    assert json.load(open(os.path.join(tmp_path, "run", "model_config.json")))["vocab_size"] == 220


def test_init_from_bert_jax_pretraining_workdir(vocab, tmp_path):
    from bert_jax.training import trainer
    corpus = tmp_path / "corpus.txt"
    rs = np.random.RandomState(0)
    corpus.write_text("\n\n".join("\n".join(_sentence(rs, POSITIVE + NEGATIVE) + "." for _ in range(4))
                                  for _ in range(12)) + "\n")
    pre = _config_module("pretrain").get_config("size=tiny,runlocal")
    pre.data.update(source=f"text:{corpus}", vocab=vocab, seq_len=32, max_predictions=5, global_batch_size=8,
                    eval_batches=1, dupe_factor=1)
    pre.optim.update(total_steps=2, warmup_steps=1)
    pre.model.update(hidden_size=32, intermediate_size=64, max_position_embeddings=64, attention_impl="xla")
    pre.log_every, pre.eval_every, pre.checkpoint_every = 1, 0, 2
    pre_dir = str(tmp_path / "pretrain")
    trainer.train_and_evaluate(pre, pre_dir)
    config = _config(init_from=pre_dir, **{**TOY, "task.name": "tests.test_finetune:ToyTask"})
    run = finetune.setup(config, str(tmp_path / "run"))  # tokenizer and architecture from the workdir
    assert run.tokenizer.vocab == finetune.BertTokenizer.from_vocab(vocab).vocab
    params = traverse_util.flatten_dict(jax.device_get(run.initial_params()["bert"]))
    saved = traverse_util.flatten_dict(_params_at(pre_dir, 2)[0]["bert"])
    assert set(params) == set(saved)  # BertForPreTraining has a pooler: it comes along
    for key, value in saved.items():
        np.testing.assert_array_equal(params[key], value, err_msg="/".join(key))
    # A fine-tune with scanned layers converts the (unrolled) checkpoint's layout.
    from bert_jax.hf import unstack_layers
    scanned = finetune.setup(_set(config, {"model_overrides.scan_layers": True}), str(tmp_path / "scanned"))
    params = unstack_layers(traverse_util.flatten_dict(jax.device_get(scanned.initial_params()["bert"])), 2)
    assert set(params) == set(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(params[key], value, err_msg="/".join(key))


# ---------------------------------------------------------------------------------- errors
def test_clear_errors(vocab, tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from"):
        finetune.setup(_config(init_from=str(tmp_path / "missing"), **TOY), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        finetune.setup(_config(vocab=vocab, **{**TOY, "task.name": "nope"}), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="no vocab"):
        finetune.setup(_config(**TOY), str(tmp_path / "c"))  # ToyTask brings no text for a vocab
    with pytest.raises(FileNotFoundError, match="config.vocab"):
        finetune.setup(_config(vocab=str(tmp_path / "vocab.txt"), **TOY), str(tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        finetune.evaluate(_config(vocab=vocab, **TOY), str(tmp_path / "e"))


def test_epoch_sampler_visits_each_feature_once_per_epoch():
    sampler = finetune.EpochSampler(10, 4, seed=3)
    rows = np.concatenate([sampler.next() for _ in range(5)])  # 20 rows = 2 epochs
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert not np.array_equal(rows[:10], rows[10:])  # reshuffled
    assert sampler.state() == {"epoch": 2, "position": 0}
    resumed = finetune.EpochSampler(10, 4, seed=3, epoch=1, position=2)
    np.testing.assert_array_equal(resumed.next(), rows[12:16])


def test_epoch_sampler_keeps_every_row_and_is_a_function_of_the_seed():
    """Nothing is dropped: the batch that crosses an epoch's end continues into the next epoch; the
    order is fixed by (seed, epoch) alone."""
    sampler = finetune.EpochSampler(10, 4, seed=3)
    rows = [sampler.next() for _ in range(3)]
    first = finetune.EpochSampler(10, 4, seed=3).permutation(0)
    second = finetune.EpochSampler(10, 4, seed=3).permutation(1)
    np.testing.assert_array_equal(rows[2], np.concatenate([first[8:], second[:2]]))  # epoch 0's last 2 + epoch 1
    def first_batches(seed, n=6):
        sampler = finetune.EpochSampler(10, 4, seed=seed)
        return np.concatenate([sampler.next() for _ in range(n)])
    np.testing.assert_array_equal(first_batches(3), first_batches(3))  # deterministic
    np.testing.assert_array_equal(first_batches(3)[:12], np.concatenate(rows))
    assert not np.array_equal(first_batches(4), first_batches(3))  # another seed, another order
    with pytest.raises(ValueError, match="no features"):
        finetune.EpochSampler(0, 4, seed=0)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_each_process_takes_its_own_block_of_every_global_batch(process_count):
    """The rows each process feeds (`_local_rows`): disjoint contiguous blocks that together are the
    global batch in order (make_global_batch puts process p's rows at block p)."""
    global_rows = finetune.EpochSampler(30, 8, seed=0).next()
    blocks = [finetune._local_rows(global_rows, p, process_count) for p in range(process_count)]
    assert all(len(b) == 8 // process_count for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), global_rows)
    np.testing.assert_array_equal(finetune._local_rows(global_rows), global_rows)  # this test: one process


def test_model_outputs_cover_every_feature_in_order():
    """Evaluation is unshuffled and keeps the last partial batch: 30 features in batches of 8 are 4
    batches (the last padded), and the outputs are the 30 features' own, in order."""
    from types import SimpleNamespace

    import ml_collections
    from bert_jax import sharding
    mesh = sharding.create_mesh(sharding.MeshConfig(ici_parallelism=(1, 1, 1)), jax.devices()[:1])
    run = SimpleNamespace(config=ml_collections.ConfigDict({"data": {"eval_batch_size": 8}}), mesh=mesh,
                          rules=sharding.DEFAULT_RULES)
    ids = np.arange(30, dtype=np.int32)[:, None] * np.ones((1, 5), np.int32)
    features = Features({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    seen = []

    def predict_step(params, inputs):
        seen.append(np.asarray(inputs["input_ids"])[:, 0].tolist())
        return {"logits": inputs["input_ids"][:, :1].astype(np.float32)}
    outputs = finetune.model_outputs(run, predict_step, None, features)
    assert seen == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24)), list(range(24, 30)) + [0, 0]]
    np.testing.assert_array_equal(outputs["logits"][:, 0], np.arange(30))


def test_stdlib_demo_split_is_by_document():
    from bert_jax.tasks import stdlib_demo
    task = stdlib_demo.StdlibDemoTask(_config().task)
    train, dev = task.load_split("train"), task.load_split("validation")
    assert not {e.document for e in train} & {e.document for e in dev}
    assert {e.label for e in dev} == set(range(len(stdlib_demo.LABELS)))
    assert 0.15 < len(dev) / (len(train) + len(dev)) < 0.25
    assert all(stdlib_demo.family_of(e.source) == stdlib_demo.LABELS[e.label] for e in train + dev)
    baseline = task.metrics(np.full(len(dev), task.majority_class()), dev)
    assert baseline["accuracy"] == baseline["majority_baseline_accuracy"] < 0.3


# ------------------------------------------------------------------------ each head, each task
def _run_task(tmp_path, name, arg="", **overrides):
    workdir = str(tmp_path / "run")
    result = finetune.train_and_evaluate(_config(name, arg, **overrides), workdir)
    train = _records(workdir, "train")
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
    assert json.load(open(os.path.join(workdir, "final_metrics.json")))["final"] == result["final"]
    return workdir, result


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _sentiment_rows(seed, n, regression=False):
    """(text, label): classification rows use one word list each; regression rows mix both, the
    target being the positive share."""
    rs = np.random.RandomState(seed)
    rows = []
    for _ in range(n):
        positives = rs.randint(0, 5) if regression else 4 * rs.randint(0, 2)
        words = list(rs.choice(POSITIVE, positives)) + list(rs.choice(NEGATIVE, 4 - positives))
        rs.shuffle(words)
        rows.append((" ".join(words), positives / 4 if regression else ("pos" if positives else "neg")))
    return rows


def test_classify_csv_sequence_classification(vocab, tmp_path):
    train = _write_csv(tmp_path / "train.csv", ["text", "label"], _sentiment_rows(0, 96))
    dev = _write_csv(tmp_path / "dev.csv", ["text", "label"], _sentiment_rows(1, 48))
    test = _write_csv(tmp_path / "test.csv", ["text"], [(t,) for t, _ in _sentiment_rows(2, 10)])
    files = {"task.train_file": train, "task.validation_file": dev, "task.test_file": test}
    workdir, result = _run_task(tmp_path, "classify", vocab=vocab, num_epochs=4.0, **files)
    assert result["final"]["validation"]["accuracy"] >= 0.9  # chance ~0.5: the words decide
    out = finetune.predict(_config("classify", vocab=vocab, **files), workdir)
    with open(out["paths"]["test"]) as f:
        assert len(f.read().strip().splitlines()) == 11  # header + 10 rows


def test_classify_csv_regression(vocab, tmp_path):
    files = {"task.train_file": _write_csv(tmp_path / "train.csv", ["text", "label"], _sentiment_rows(0, 96, True)),
             "task.validation_file": _write_csv(tmp_path / "dev.csv", ["text", "label"], _sentiment_rows(1, 32, True))}
    workdir, result = _run_task(tmp_path, "classify", "problem_type=regression", vocab=vocab, num_epochs=2.0,
                                **files)
    assert json.load(open(os.path.join(workdir, "model_config.json")))["problem_type"] == "regression"
    assert result["final"]["validation"]["pearson"] > 0.5


def test_ner_conll_token_classification(vocab, tmp_path):
    rs = np.random.RandomState(0)
    for name, n in (("train.txt", 48), ("valid.txt", 16)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            for _ in range(rs.randint(3, 7)):
                kind = rs.randint(3)
                word, tag = [(rs.choice(NEUTRAL), "O"), (rs.choice(NAMES), "B-PER"), (rs.choice(PLACES), "B-LOC")][kind]
                lines.append(f"{word} NN O {tag}")
            lines.append("")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    workdir, result = _run_task(tmp_path, "ner", vocab=vocab, num_epochs=3.0, **{"task.data_dir": str(tmp_path)})
    assert json.load(open(os.path.join(workdir, "model_config.json")))["architectures"] == [
        "BertForTokenClassification"]
    assert {"precision", "recall", "f1"} <= set(result["final"]["validation"])


def test_swag_multiple_choice(vocab, tmp_path):
    rs = np.random.RandomState(0)
    header = ["sent1", "sent2"] + [f"ending{i}" for i in range(4)] + ["label"]
    for name, n in (("train.csv", 48), ("val.csv", 16)):
        rows = []
        for _ in range(n):
            label = rs.randint(4)
            endings = [_sentence(rs, POSITIVE if i == label else NEGATIVE, 3) for i in range(4)]
            rows.append([_sentence(rs, NEUTRAL, 4), "then", *endings, label])
        _write_csv(tmp_path / name, header, rows)
    workdir, result = _run_task(tmp_path, "swag", vocab=vocab, num_epochs=3.0, **{"task.data_dir": str(tmp_path)})
    assert json.load(open(os.path.join(workdir, "model_config.json")))["architectures"] == ["BertForMultipleChoice"]
    assert 0.0 <= result["final"]["validation"]["accuracy"] <= 1.0


def test_squad_question_answering(vocab, tmp_path):
    rs = np.random.RandomState(0)

    def squad(n, prefix):
        paragraphs = []
        for i in range(n):
            name, place = rs.choice(NAMES), rs.choice(PLACES)
            context = f"{_sentence(rs, NEUTRAL, 3)} {name} sunny {place} {_sentence(rs, NEUTRAL, 3)}"
            paragraphs.append({"context": context, "qas": [{"id": f"{prefix}{i}", "question": "who sunny where",
                                                           "answers": [{"text": name,
                                                                        "answer_start": context.index(name)}]}]})
        return {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}

    json.dump(squad(48, "t"), open(tmp_path / "train-v1.1.json", "w"))
    json.dump(squad(16, "d"), open(tmp_path / "dev-v1.1.json", "w"))
    task = {"task.data_dir": str(tmp_path), "task.max_query_length": 8, "task.doc_stride": 8}
    workdir, result = _run_task(tmp_path, "squad", vocab=vocab, num_epochs=3.0, **task)
    assert {"exact_match", "f1"} <= set(result["final"]["validation"])
    out = finetune.predict(_config("squad", vocab=vocab, **task), workdir)  # no test set: writes dev predictions
    assert set(json.load(open(out["paths"]["validation"]))) == {f"d{i}" for i in range(16)}


def test_micro_batches_match_one_big_batch():
    import jax.numpy as jnp
    import optax
    from bert_jax.config import BertConfig
    from bert_jax.modeling import BertForSequenceClassification, init_params
    from bert_jax.training import steps
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    params, tx = init_params(model), optax.sgd(0.1)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             rng=jax.random.PRNGKey(0))
    rs = np.random.RandomState(0)
    batch = {"input_ids": rs.randint(5, 50, (8, 12)).astype(np.int32), "attention_mask": np.ones((8, 12), np.int32),
             "token_type_ids": np.zeros((8, 12), np.int32), "labels": rs.randint(0, 2, 8).astype(np.int32)}
    (one, m1), (four, m4) = [jax.jit(finetune.make_train_step(model, tx, lambda s: 0.1, micro_batches=k))(state, batch)
                             for k in (1, 4)]
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), four.params, one.params)


@pytest.mark.parametrize("on_invalid_data", ["stop", "skip"])
def test_invalid_labels_stop_or_skip(vocab, tmp_path, monkeypatch, on_invalid_data):
    """A class id out of range in a training batch: "stop" names the field, step and count (before any
    save of that step); "skip" leaves that step's params unchanged and the loss finite."""
    from bert_jax.training import loop
    original, calls = finetune.FineTuningTask.next_batch, [0]

    def next_batch(self):
        batch = original(self)
        calls[0] += 1
        if calls[0] == 3:
            batch = dict(batch, labels=np.array(batch["labels"]))
            batch["labels"][:2] = [2, -1]  # 2 labels: 0 and 1 (and -100, ignored) are valid
        return batch

    monkeypatch.setattr(finetune.FineTuningTask, "next_batch", next_batch)
    workdir = str(tmp_path / "run")
    config = _config(vocab=vocab, **{**TOY, "num_epochs": 0.5, "eval_every": 0, "checkpoint_every": 1,
                                     "keep_checkpoints": 0, "on_invalid_data": on_invalid_data})
    if on_invalid_data == "stop":
        with pytest.raises(loop.InvalidDataError, match=r"step 3: labels: 2 invalid entries \(must be in \[0, 2\) "
                                                        r"\(num_labels=2\) or -100 \(ignored\)\)"):
            finetune.train_and_evaluate(config, workdir)
        return
    finetune.train_and_evaluate(config, workdir)
    before, _ = _params_at(workdir, 2)
    after, _ = _params_at(workdir, 3)
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert all(np.isfinite(r["loss"]) for r in _records(workdir, "train"))
