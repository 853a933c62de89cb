"""Workdirs on cloud storage: `bert_jax.training.paths` keeps URLs as given and local paths absolute,
and every workdir file the loops write (JSON, metrics.jsonl, TensorBoard events, tokenizer/,
predictions) reaches a gs:// workdir. gs:// is faked with `etils.epath.testing.mock_epath`, which
sends every epath call for gs://bucket/... to a local directory (no network). Orbax's array writes
go through tensorstore's own GCS driver, which that mock cannot reach, so the end-to-end run here
uses a (relative) local workdir."""

import importlib.util
import json
import logging
import os

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from bert_jax import export
from bert_jax.tokenization import BertTokenizer, train_wordpiece
from bert_jax.training import metrics, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the model reads a list of tokens and predicts the masked word from the words around it while the "
         "optimizer updates every weight of the network after each batch").split()


@pytest.fixture
def fake_gcs(tmp_path):
    """gs://<bucket>/<key> lives at <returned dir>/<bucket>/<key> for every epath call in the block."""
    root = tmp_path / "gcs"
    root.mkdir()

    def local(path):
        text = os.fspath(path)
        return os.path.join(root, text[len("gs://"):]) if text.startswith("gs://") else text

    def one_path(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two_paths(original, path, dst, *args, **kwargs):
        os.makedirs(os.path.dirname(local(dst)), exist_ok=True)  # object stores have no directories to create
        return original(local(path), local(dst), *args, **kwargs)

    def open_object(original, path, mode):
        if any(m in mode for m in "wax"):
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)
        return original(local(path), mode)

    single = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat", "walk")
    with epath_testing.mock_epath(open=open_object, **{name: one_path for name in single},
                                  **{name: two_paths for name in ("copy", "rename", "replace")}):
        yield root


@pytest.fixture(scope="module")
def tokenizer():
    rs = np.random.RandomState(0)
    return train_wordpiece([" ".join(rs.choice(WORDS, 12)) for _ in range(50)], vocab_size=120)


# ------------------------------------------------------------------------------------- workdir_path
def test_workdir_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.workdir_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert os.fspath(paths.workdir_path(epath.Path("gs://bucket/runs/a")) / "checkpoints") == \
        "gs://bucket/runs/a/checkpoints"
    assert os.fspath(paths.workdir_path("runs/a")) == os.path.join(str(tmp_path), "runs", "a")
    assert os.fspath(paths.workdir_path("./runs/../b")) == os.path.join(str(tmp_path), "b")  # as os.path.abspath
    assert os.fspath(paths.workdir_path("file:///data/run")) == "/data/run"
    assert paths.is_url("gs://b/x") and not paths.is_url("/data/gs:/b/x")
    with pytest.raises(ValueError, match="empty"):
        paths.workdir_path("")


def test_json_and_lines_locally_without_temp_leftovers(tmp_path):
    path = tmp_path / "final_metrics.json"
    paths.write_json(str(path), {"step": 3, "eval": {"loss": 0.5}})
    paths.write_json(str(path), {"step": 4})  # overwrites
    assert json.loads(path.read_text()) == {"step": 4} == paths.read_json(path)
    assert sorted(os.listdir(tmp_path)) == ["final_metrics.json"]
    for i in range(3):
        paths.append_line(tmp_path / "log.jsonl", json.dumps({"i": i}))
    assert (tmp_path / "log.jsonl").read_text().splitlines() == ['{"i": 0}', '{"i": 1}', '{"i": 2}']


# ------------------------------------------------------------------------------------ fake gs://
def test_json_lines_and_staging_on_gcs(fake_gcs):
    paths.write_json("gs://bucket/run/config.json", {"seed": 0, "model": {"hidden_size": 32}})
    assert json.loads((fake_gcs / "bucket/run/config.json").read_text()) == {"seed": 0, "model": {"hidden_size": 32}}
    assert paths.read_json("gs://bucket/run/config.json")["model"] == {"hidden_size": 32}
    paths.append_line("gs://bucket/run/metrics.jsonl", '{"step": 1}')
    paths.append_line("gs://bucket/run/metrics.jsonl", '{"step": 2}\n')
    assert (fake_gcs / "bucket/run/metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'

    # What finetune.predict does with a task's open()-based writer.
    with paths.staged_dir("gs://bucket/run") as local:
        assert not local.startswith("gs:") and os.path.isdir(local)
        with open(os.path.join(local, "test_results.tsv"), "w") as f:
            f.write("index\tprediction\n0\tpositive\n")
    assert (fake_gcs / "bucket/run/test_results.tsv").read_text() == "index\tprediction\n0\tpositive\n"
    assert not os.path.exists(local)  # the staging dir is gone


def test_staged_dir_is_the_directory_itself_when_local(tmp_path):
    with paths.staged_dir(tmp_path / "out") as local:
        assert local == str(tmp_path / "out") and os.path.isdir(local)


def test_tokenizer_round_trips_through_gcs(fake_gcs, tokenizer, tmp_path):
    tokenizer.save("gs://bucket/run/tokenizer")
    assert sorted(os.listdir(fake_gcs / "bucket/run/tokenizer")) == ["tokenizer.json", "tokenizer_config.json",
                                                                     "vocab.txt"]
    tokenizer.save(tmp_path / "local_tokenizer")  # the local path is unchanged: same bytes either way
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (fake_gcs / "bucket/run/tokenizer" / name).read_text() == (tmp_path / "local_tokenizer" / name).read_text()
    loaded = BertTokenizer.from_pretrained(epath.Path("gs://bucket/run/tokenizer"))
    assert loaded.vocab == tokenizer.vocab
    text = ["the optimizer predicts the masked tokens"]
    np.testing.assert_array_equal(loaded(text)["input_ids"], tokenizer(text)["input_ids"])
    with pytest.raises(FileNotFoundError, match="gs://bucket/missing"):
        BertTokenizer.from_pretrained("gs://bucket/missing")


def test_metrics_writer_on_gcs_stages_tensorboard_events(fake_gcs, caplog):
    from tensorboardX import record_writer
    if record_writer.GCS_ENABLED:
        pytest.skip("google-cloud-storage is installed: tensorboardX would write to gs:// itself (network)")
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        writer = metrics.MetricsWriter("gs://bucket/run", enabled=True)
    assert any("cannot write to gs://bucket/run/tensorboard" in r.getMessage() for r in caplog.records)
    writer.write(1, {"loss": 2.5})
    writer.write(2, {"loss": 2.0}, prefix="eval")
    writer.close()
    rows = metrics.read_jsonl("gs://bucket/run/metrics.jsonl")
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [(1, "train", 2.5), (2, "eval", 2.0)]
    events = os.listdir(fake_gcs / "bucket/run/tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    assert os.path.getsize(fake_gcs / "bucket/run/tensorboard" / events[0]) > 0


def test_export_reads_a_gcs_workdir(fake_gcs):
    run = fake_gcs / "bucket/run"
    for step in ("2", "4", "6"):
        (run / "checkpoints" / step).mkdir(parents=True)
    (run / "checkpoints" / "tmp_7.orbax-checkpoint-tmp").mkdir()  # an unfinished save: not a step
    paths.write_json("gs://bucket/run/model_config.json", {"architectures": ["BertForMaskedLM"], "hidden_size": 32,
                                                           "num_hidden_layers": 2, "num_attention_heads": 2,
                                                           "intermediate_size": 64, "vocab_size": 100})
    paths.write_json("gs://bucket/run/final_metrics.json", {"best_step": 4})
    for given in ("gs://bucket/run", "gs://bucket/run/checkpoints"):
        assert export.find_workdir(given) == ("gs://bucket/run", "gs://bucket/run/checkpoints")
    config, architecture = export.read_model_config("gs://bucket/run")
    assert (architecture, config.hidden_size, config.vocab_size) == ("BertForMaskedLM", 32, 100)
    assert export.select_step("gs://bucket/run", "gs://bucket/run/checkpoints", None) == 4  # the best
    assert export.select_step("gs://bucket/run", "gs://bucket/run/checkpoints", 6) == 6


# ------------------------------------------------------------------------- end to end, relative path
def test_pretraining_with_a_relative_workdir_writes_every_file(tmp_path, monkeypatch):
    from bert_jax.training import trainer
    rs = np.random.RandomState(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(" ".join(rs.choice(WORDS, rs.randint(5, 10))) + "." for _ in range(4))
                                  for _ in range(12)) + "\n")
    spec = importlib.util.spec_from_file_location("pretrain_config", os.path.join(ROOT, "configs", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("size=tiny,runlocal")
    # No config.data.vocab: the run trains its own and saves it to tokenizer/ (data._own_tokenizer).
    c.data.update(source=f"text:{corpus}", vocab="", vocab_size=150, seq_len=32, max_predictions=4,
                  global_batch_size=4, eval_batches=1, dupe_factor=1)
    c.optim.update(total_steps=2, warmup_steps=1)
    c.model.update(hidden_size=32, intermediate_size=64, max_position_embeddings=32)
    c.log_every, c.eval_every, c.checkpoint_every = 1, 2, 2
    c.progress_bar = False
    monkeypatch.chdir(tmp_path)
    result = trainer.train_and_evaluate(c, "runs/relative")
    workdir = tmp_path / "runs" / "relative"
    assert result["step"] == 2
    for name in ("config.json", "model_config.json", "final_metrics.json", "metrics.jsonl",
                 "tokenizer/vocab.txt", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        assert (workdir / name).is_file(), name
    assert not list(workdir.glob("*.tmp"))
    assert os.listdir(workdir / "checkpoints") == ["2"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    rows = metrics.read_jsonl(workdir / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (2, "train"), (2, "eval")]
    assert paths.read_json(workdir / "final_metrics.json")["step"] == 2
    assert export.find_workdir("runs/relative") == (str(workdir), str(workdir / "checkpoints"))
