"""The ablation bench (`python -m bert_jax.ablate`) and the training loop's wall-clock budget
(`config.train_seconds`). Timings are never asserted beyond "stopped before total_steps"."""

import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the function returns a list of values from the file and raises an error if the path does not "
         "exist while the class stores the name of each object in a table for later use").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text corpus and a vocab trained on it once (text:<path>, data.vocab)."""
    rs = np.random.RandomState(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    docs = ["\n".join(" ".join(rs.choice(WORDS, rs.randint(5, 12))) + "." for _ in range(rs.randint(3, 7)))
            for _ in range(40)]
    path.write_text("\n\n".join(docs) + "\n")
    from bert_jax.tokenization import train_wordpiece
    vocab_dir = path.parent / "vocab"
    train_wordpiece([str(path)], vocab_size=300).save(str(vocab_dir))
    return str(path), str(vocab_dir)


def _tiny_pretrain_config(corpus, total_steps, train_seconds):
    import importlib.util
    spec = importlib.util.spec_from_file_location("pretrain_config", os.path.join(ROOT, "configs", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("size=tiny,runlocal")
    c.data.update(source=f"text:{corpus[0]}", vocab=corpus[1], vocab_size=300, seq_len=32, max_predictions=5,
                  global_batch_size=8, eval_batches=2, dupe_factor=1)
    c.optim.update(total_steps=total_steps, warmup_steps=2)
    c.model.update(hidden_size=32, intermediate_size=64, max_position_embeddings=32, num_attention_heads=2)
    c.log_every, c.eval_every, c.checkpoint_every = 5, 1000, 1000
    c.train_seconds = train_seconds
    c.progress_bar = False
    return c


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def test_wall_clock_budget_stops_early_saves_evaluates_and_resumes(corpus, tmp_path):
    from bert_jax.training import checkpoints, trainer
    workdir = str(tmp_path / "run")
    total = 100_000  # far more steps than a 2-second budget allows
    result = trainer.train_and_evaluate(_tiny_pretrain_config(corpus, total, 2.0), workdir)
    stopped = result["step"]
    assert 0 < stopped < total
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    assert final["step"] == stopped and 0.0 <= final["eval"]["mlm_accuracy"] <= 1.0  # the final eval ran
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == stopped  # the final checkpoint is the budget's step
    ckpt.close()
    clock = [r["train_seconds"] for r in _records(workdir, "train")]
    assert clock == sorted(clock) and clock[-1] >= 2.0  # logged, and past the budget when it stopped
    assert _records(workdir, "eval")[-1]["train_seconds"] >= 2.0

    # The same command again: the budget is spent, nothing trains, the finished run's metrics stay.
    again = trainer.train_and_evaluate(_tiny_pretrain_config(corpus, total, 2.0), workdir)
    assert again["step"] == stopped
    assert json.load(open(os.path.join(workdir, "final_metrics.json"))) == final

    # A larger budget resumes from the checkpoint with the clock carried over (not restarted at 0).
    more = trainer.train_and_evaluate(_tiny_pretrain_config(corpus, total, clock[-1] + 2.0), workdir)
    assert stopped < more["step"] < total
    resumed = [r for r in _records(workdir, "train") if r["step"] > stopped]
    assert resumed and resumed[0]["train_seconds"] >= clock[-1]


def test_no_budget_logs_no_clock(corpus, tmp_path):
    from bert_jax.training import trainer
    workdir = str(tmp_path / "run")
    result = trainer.train_and_evaluate(_tiny_pretrain_config(corpus, 5, 0.0), workdir)
    assert result["step"] == 5
    assert all("train_seconds" not in r for r in _records(workdir, "train") + _records(workdir, "eval"))


@pytest.mark.parametrize("value", [-1.0, "10", True])
def test_bad_budget_is_a_clear_error(corpus, tmp_path, value):
    from bert_jax.training import trainer
    config = _tiny_pretrain_config(corpus, 5, 0.0)
    with config.unlocked():  # replaced, not assigned: ConfigDict would coerce a bool or refuse a str
        del config["train_seconds"]
        config.train_seconds = value
    with pytest.raises(ValueError, match="train_seconds"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
