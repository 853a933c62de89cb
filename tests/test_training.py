"""Training loop: end to end, exact resume after SIGKILL, SIGTERM, corrupt checkpoints, gradient
accumulation, non-finite handling, restore on another mesh, command-line overrides."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bert_jax
from bert_jax.training import checkpoints, steps
from bert_jax.training.optim import make_optimizer
from tests import cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_WORDS = ("the function returns a list of values from the file and raises an error if the path does not "
                "exist while the class stores the name of each object in a table for later use").split()


PEAK_TFLOPS_PER_DEVICE = 1e-3  # a made-up CPU "peak" so that the loop logs an MFU to check


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rs = np.random.RandomState(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    docs = []
    for _ in range(40):
        sentences = [" ".join(rs.choice(CORPUS_WORDS, rs.randint(5, 12))) + "." for _ in range(rs.randint(3, 7))]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n")
    # One vocab for every run: WordPiece training breaks frequency ties in hash order, so two runs that
    # each trained their own could differ.
    from bert_jax.tokenization import train_wordpiece
    vocab_dir = path.parent / "vocab"
    train_wordpiece([str(path)], vocab_size=300).save(str(vocab_dir))
    return str(path), str(vocab_dir)


def _flags(corpus, workdir, steps_total=8, extra=()):
    text, vocab = corpus
    return [f"--config={ROOT}/configs/pretrain.py:size=tiny,runlocal", f"--workdir={workdir}",
            f"--config.data.source=text:{text}", f"--config.data.vocab={vocab}", "--config.data.vocab_size=300", "--config.data.seq_len=32",
            "--config.data.max_predictions=5", "--config.data.global_batch_size=8", "--config.data.eval_batches=2",
            "--config.data.dupe_factor=1", f"--config.optim.total_steps={steps_total}", "--config.optim.warmup_steps=2",
            "--config.log_every=2", "--config.eval_every=0", "--config.checkpoint_every=4",
            "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
            "--config.model.max_position_embeddings=32", *extra]


def _main(corpus, workdir, steps_total=8, extra=(), env=None, background=False):
    cmd = [sys.executable, "-m", "bert_jax.main", *_flags(corpus, workdir, steps_total, extra)]
    env = dict(os.environ, **(env or {}))
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _config(corpus, steps_total=8, **overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("pretrain_config", os.path.join(ROOT, "configs", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("size=tiny,runlocal")
    c.data.update(source=f"text:{corpus[0]}", vocab=corpus[1], vocab_size=300, seq_len=32, max_predictions=5, global_batch_size=8,
                  eval_batches=2, dupe_factor=1)
    c.optim.update(total_steps=steps_total, warmup_steps=2)
    c.model.update(hidden_size=32, intermediate_size=64, max_position_embeddings=32)
    c.log_every, c.eval_every, c.checkpoint_every = 2, 0, 4
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return c


def _final_params(workdir):
    """Params of the newest checkpoint, as numpy."""
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    step = ckpt.latest_step()
    state, _ = ckpt.read(step)
    ckpt.close()
    return step, jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    from bert_jax.training import trainer
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    # Evaluating (and ranking checkpoints) at the checkpoint steps changes nothing the other tests compare:
    # eval reads its own loader and leaves the train state alone; steps 4 and 8 are saved either way.
    config = _config(corpus, steps_total=8, eval_every=4, best_metric="mlm_accuracy",
                     peak_tflops_per_device=PEAK_TFLOPS_PER_DEVICE)
    result = trainer.train_and_evaluate(config, workdir)
    return workdir, result


def test_end_to_end_loss_decreases(uninterrupted):
    workdir, result = uninterrupted
    records = [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if r["split"] == "train"]
    assert len(records) == 4 and records[0]["loss"] > records[-1]["loss"]
    assert {"mlm_accuracy", "nsp_accuracy", "learning_rate", "grad_norm", "seq_per_s"} <= set(records[0])
    assert os.path.isdir(os.path.join(workdir, "tensorboard")) and os.listdir(os.path.join(workdir, "tensorboard"))
    assert result["step"] == 8
    assert json.load(open(os.path.join(workdir, "final_metrics.json")))["step"] == 8


def test_mfu_is_model_flops_over_the_configured_peak(uninterrupted):
    workdir, _ = uninterrupted
    records = [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if r["split"] == "train"]
    vocab = json.load(open(os.path.join(workdir, "model_config.json")))["vocab_size"]
    # 6·N_non-embedding + 12·L·H·seq + 6·H·V·(P/seq) FLOPs per token, by hand (biases and LayerNorms included)
    h, i, layers, v, seq, predictions, batch = 32, 64, 2, vocab, 32, 5, 8
    per_layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    non_embedding = layers * per_layer + (h * h + h + 2 * h)
    step_flops = (6 * non_embedding + 12 * layers * h * seq + 6 * h * v * predictions / seq) * seq * batch
    for r in records:
        assert r["model_tflops_per_s"] == pytest.approx(r["seq_per_s"] / batch * step_flops / 1e12, rel=1e-6)
        assert r["mfu"] == pytest.approx(r["model_tflops_per_s"] / (PEAK_TFLOPS_PER_DEVICE * jax.device_count()),
                                         rel=1e-6)


def test_best_checkpoint_by_eval_metric_is_reported_and_kept(uninterrupted):
    workdir, _ = uninterrupted
    evals = {r["step"]: r["mlm_accuracy"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
             if r["split"] == "eval"}
    assert sorted(evals) == [4, 8]
    best = json.load(open(os.path.join(workdir, "final_metrics.json")))["best_step"]
    assert evals[best] == max(evals.values())
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), best_metric="mlm_accuracy")
    assert best in ckpt.all_steps() and ckpt.best_step() == best
    assert ckpt.manager.metrics(best)["mlm_accuracy"] == pytest.approx(evals[best])
    ckpt.close()


def test_workdir_has_hf_model_config_and_tokenizer_for_export(corpus, uninterrupted):
    import transformers
    from bert_jax.tokenization import BertTokenizer
    workdir, result = uninterrupted
    hf = transformers.BertConfig.from_json_file(os.path.join(workdir, "model_config.json"))
    model_config = result["model"].config
    assert hf.architectures == ["BertForPreTraining"]
    assert (hf.hidden_size, hf.num_hidden_layers, hf.intermediate_size, hf.vocab_size, hf.max_position_embeddings) \
        == (32, 2, 64, model_config.vocab_size, 32)
    # config.data.vocab was given: the run still keeps a copy of its tokenizer in the workdir
    saved = BertTokenizer.from_pretrained(os.path.join(workdir, "tokenizer"))
    given = BertTokenizer.from_pretrained(corpus[1])
    assert saved.vocab == given.vocab and saved.vocab_size == model_config.vocab_size
    assert transformers.AutoTokenizer.from_pretrained(os.path.join(workdir, "tokenizer")).get_vocab() == given.vocab


@pytest.mark.parametrize("mode", ["max", "min"])
def test_checkpointer_keeps_latest_k_and_the_best(tmp_path, mode):
    """keep=2 plus the best by metric: the best survives newer, worse checkpoints; restore takes the latest."""
    sign = 1.0 if mode == "max" else -1.0
    directory = str(tmp_path / "ckpt")
    state = lambda step: {"w": jnp.full((3,), float(step))}

    def saver():
        return checkpoints.Checkpointer(directory, save_every=1, keep=2, best_metric="acc", best_mode=mode,
                                        async_save=False)

    ckpt = saver()
    scores = {1: 0.1, 2: 0.9, 3: 0.3, 4: 0.5}  # steps 5 and 6 are saved without eval metrics
    for step in range(1, 7):
        metrics = {"acc": sign * scores[step]} if step in scores else None
        assert ckpt.save(step, state(step), {"process_0": "{}"}, metrics=metrics)
    assert ckpt.all_steps() == [2, 5, 6] and ckpt.best_step() == 2
    step, restored, _ = ckpt.restore(checkpoints.abstract_like(state(0)))
    assert step == 6 and np.asarray(restored["w"]).tolist() == [6.0] * 3
    ckpt.close()
    ckpt = saver()  # a resumed run reads the metrics back from disk
    ckpt.save(7, state(7), metrics={"acc": sign * 0.95})
    ckpt.save(8, state(8), metrics={"acc": sign * 0.2})
    ckpt.save(9, state(9))
    assert ckpt.all_steps() == [7, 8, 9] and ckpt.best_step() == 7
    with pytest.raises(KeyError, match="best_metric 'acc' is not among"):
        ckpt.save(10, state(10), metrics={"loss": 1.0})
    ckpt.close()


def test_progress_bar_only_on_a_terminal():
    import io
    from bert_jax.training.metrics import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, pipe = Terminal(), io.StringIO()
    console = logging.StreamHandler(terminal)
    logging.getLogger().addHandler(console)
    try:
        with ProgressBar(10, initial=2, stream=terminal) as bar, ProgressBar(10, stream=pipe) as piped:
            for _ in range(8):
                bar.advance()
                piped.advance()
            bar.show({"loss": 1.2345678, "mlm_accuracy": 0.5, "seq_per_s": 321.0, "grad_norm": 3.0})
            piped.show({"loss": 1.0})
            logging.getLogger("bert_jax.test").warning("a log line while the bar is shown")
        assert logging.getLogger().handlers[-1] is console  # the console handler is back after the bar
    finally:
        logging.getLogger().removeHandler(console)
    shown = terminal.getvalue()
    assert "10/10" in shown and "loss=1.235" in shown and "mlm_acc=0.5" in shown and "seq/s=321" in shown
    assert "grad_norm" not in shown and pipe.getvalue() == ""
    assert shown.count("a log line while the bar is shown\n") == 1
    quiet = Terminal()
    with ProgressBar(10, stream=quiet, enabled=False) as off:
        off.advance()
    assert quiet.getvalue() == ""


def test_peak_flops_of_devices():
    from types import SimpleNamespace
    from bert_jax.training.metrics import peak_flops_per_second, utilisation
    h100 = [SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")] * 8
    assert peak_flops_per_second(h100) == pytest.approx(8 * 989e12)
    assert peak_flops_per_second(jax.devices("cpu")) is None  # no peak for CPUs: no MFU
    assert peak_flops_per_second(jax.devices("cpu")[:1], 2.0) == 2e12
    assert peak_flops_per_second([SimpleNamespace(platform="gpu", device_kind="Some New GPU")]) is None
    assert utilisation(1e12, 2.0, None) == {"model_tflops_per_s": 2.0}
    assert utilisation(1e12, 2.0, 8e12) == {"model_tflops_per_s": 2.0, "mfu": 0.25}
    with pytest.raises(ValueError, match="peak_tflops_per_device"):
        peak_flops_per_second(h100, -1.0)


def test_sigkill_then_resume_is_bit_exact(corpus, uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    workdir = str(tmp_path / "killed")
    proc = _main(corpus, workdir, steps_total=8, background=True,
                 extra=("--config.async_checkpointing=false",))
    deadline = time.time() + 300
    ckpt_dir = os.path.join(workdir, "checkpoints")
    # kill -9 as soon as the step-4 checkpoint exists, while the run goes on towards step 8
    while time.time() < deadline and not os.path.isdir(os.path.join(ckpt_dir, "4")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isdir(os.path.join(ckpt_dir, "4"))
    _main(corpus, workdir, steps_total=8)  # resumes
    step, params = _final_params(workdir)
    ref_step, ref_params = _final_params(reference_dir)
    assert step == ref_step == 8
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)


def test_sigterm_saves_and_exits_cleanly(corpus, tmp_path):
    workdir = str(tmp_path / "preempted")
    proc = _main(corpus, workdir, steps_total=10_000, background=True, extra=("--config.log_every=1",))
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    final = json.load(open(os.path.join(workdir, "final_metrics.json")))
    assert final["preempted"] and 0 < final["step"] < 10_000
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == final["step"]
    ckpt.close()


def test_preemption_one_process_stops_at_once_and_checks_its_cadence():
    from bert_jax.training.preemption import Preemption
    with pytest.raises(ValueError, match="preemption_check_every must be > 0"):
        Preemption(0)
    preemption = Preemption(check_every=10)
    assert not preemption.should_stop(1) and not preemption.requested
    preemption.local = True  # what the SIGTERM handler sets
    assert preemption.should_stop(3) and preemption.requested  # one process: no cadence, no agreement to wait for


def test_corrupt_latest_checkpoint_falls_back(uninterrupted, tmp_path, caplog):
    import shutil
    workdir = str(tmp_path / "corrupt")
    shutil.copytree(uninterrupted[0], workdir)
    latest = os.path.join(workdir, "checkpoints", "8", "state")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    _, ref_params = _final_params(uninterrupted[0])
    abstract = ckpt.manager.item_metadata(4)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), abstract)
    with caplog.at_level("WARNING"):
        step, state, data_state = ckpt.restore(target)
    assert step == 4 and "process_0" in data_state
    assert any("step 8" in r.getMessage() for r in caplog.records)
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "4", "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(RuntimeError, match="refusing to start over"):
        ckpt.restore(target)
    ckpt.close()


def _tiny_pretraining_setup(micro_batches):
    config = bert_jax.BertConfig(**dict(cases.TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model = bert_jax.BertForPreTraining(config)
    params = bert_jax.init_params(model, jax.random.PRNGKey(0))
    import ml_collections
    tx, schedule = make_optimizer(ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=1e-3,
                                                                 total_steps=10, warmup_steps=0)))
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             rng=jax.random.PRNGKey(1))
    return jax.jit(steps.make_train_step(model, tx, schedule, micro_batches=micro_batches)), state


def _batch(rows=8, seq=12, predictions=3):
    rs = np.random.RandomState(2)
    weights = (rs.rand(rows, predictions) < 0.7).astype(np.float32)  # uneven counts per row
    return {"input_ids": rs.randint(1, 99, (rows, seq)), "attention_mask": np.ones((rows, seq), np.int32),
            "token_type_ids": np.zeros((rows, seq), np.int32),
            "masked_lm_positions": rs.randint(0, seq, (rows, predictions)),
            "masked_lm_ids": rs.randint(1, 99, (rows, predictions)), "masked_lm_weights": weights,
            "next_sentence_labels": rs.randint(0, 2, (rows,))}


def test_gradient_accumulation_equals_big_batch():
    batch = _batch()
    step1, state1 = _tiny_pretraining_setup(1)
    step4, state4 = _tiny_pretraining_setup(4)
    new1, m1 = step1(state1, batch)
    new4, m4 = step4(state4, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new1.params, new4.params)


def test_nonfinite_skip_keeps_params(corpus, tmp_path):
    batch = _batch()
    batch["masked_lm_weights"] = batch["masked_lm_weights"] * np.float32("nan")
    config = bert_jax.BertConfig(**cases.TINY)
    model = bert_jax.BertForPreTraining(config)
    params = bert_jax.init_params(model)
    import ml_collections
    tx, schedule = make_optimizer(ml_collections.ConfigDict(dict(total_steps=10, warmup_steps=0)))
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             rng=jax.random.PRNGKey(1))
    new, metrics = jax.jit(steps.make_train_step(model, tx, schedule, skip_nonfinite=True))(state, batch)
    assert float(metrics["finite"]) == 0.0 and int(new.step) == 1
    jax.tree.map(np.testing.assert_array_equal, new.params, params)


def test_nonfinite_steps_stop_names_the_step_and_last_good_checkpoint():
    from bert_jax.training import trainer

    class Checkpoints:
        directory, waited = "/runs/x/checkpoints", False

        def wait(self):  # pending async saves finish before the run stops
            self.waited = True

    fetched = [{"finite": 1.0}, {"finite": 0.0}, {"finite": 1.0}, {"finite": 0.0}]
    ckpt = Checkpoints()
    assert trainer.nonfinite_steps(fetched, 10, "skip", ckpt, 8) == [12, 14] and not ckpt.waited
    assert trainer.nonfinite_steps(fetched[:1], 10, "stop", ckpt, 8) == []
    with pytest.raises(trainer.NonFiniteError, match=r"at step 12; last good checkpoint: 8 in /runs/x/checkpoints"):
        trainer.nonfinite_steps(fetched, 10, "stop", ckpt, 8)
    assert ckpt.waited
    with pytest.raises(trainer.NonFiniteError, match="last good checkpoint: none"):
        trainer.nonfinite_steps(fetched, 0, "stop", ckpt, None)


def test_overrides_reach_the_run_and_rerun_resumes(corpus, tmp_path):
    workdir = str(tmp_path / "overrides")
    overrides = ("--config.optim.learning_rate=0.00123", "--config.seed=7")
    _main(corpus, workdir, steps_total=4, extra=overrides)
    written = json.load(open(os.path.join(workdir, "config.json")))
    assert written["optim"]["learning_rate"] == 0.00123 and written["seed"] == 7
    finished = open(os.path.join(workdir, "final_metrics.json")).read()
    assert json.loads(finished)["train"]["loss"] > 0
    proc = _main(corpus, workdir, steps_total=4, extra=overrides)
    assert "resumed from step 4" in proc.stdout + proc.stderr
    # nothing left to train: the finished run's metrics are kept, not replaced by empty ones
    assert open(os.path.join(workdir, "final_metrics.json")).read() == finished


def test_restore_on_a_different_mesh(corpus, tmp_path):
    workdir = str(tmp_path / "mesh8")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    _main(corpus, workdir, steps_total=4, env=env, extra=("--config.mesh.ici_parallelism=(2,2,2)",
                                                          "--config.model.num_attention_heads=2"))
    # resume the same run on 1 device for 4 more steps
    _main(corpus, workdir, steps_total=8, extra=("--config.model.num_attention_heads=2",))
    step, params = _final_params(workdir)
    assert step == 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _truncate_largest_array_file(step_dir):
    files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for name in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    return largest


@pytest.mark.parametrize("corrupt_steps", [(8,), (4, 8)], ids=["final", "all"])
def test_rerun_after_corrupt_checkpoints_continues_to_the_same_end(corpus, uninterrupted, corrupt_steps, tmp_path,
                                                                   caplog):
    """A finished run whose final (or a middle) checkpoint was truncated, rerun with the same command,
    falls back, trains to the end, saves the retrained step again (the unreadable one kept aside for
    inspection) and ends with the uninterrupted run's params, bit for bit; with every checkpoint
    unreadable it refuses to start over."""
    import shutil
    from bert_jax.training import trainer
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    for step in corrupt_steps:
        _truncate_largest_array_file(os.path.join(ckpt_dir, str(step)))
    config = _config(corpus, steps_total=8, eval_every=4, best_metric="mlm_accuracy",
                     peak_tflops_per_device=PEAK_TFLOPS_PER_DEVICE)
    if corrupt_steps == (4, 8):
        with pytest.raises(RuntimeError, match="refusing to start over"):
            trainer.train_and_evaluate(config, workdir)
        return
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(config, workdir)
    step, params = _final_params(workdir)
    _, reference = _final_params(uninterrupted[0])
    assert step == 8
    jax.tree.map(np.testing.assert_array_equal, params, reference)
    kept_aside = [name for name in os.listdir(ckpt_dir) if "unreadable" in name]
    assert len(kept_aside) == 1 and kept_aside[0].startswith("8.unreadable-"), os.listdir(ckpt_dir)
    ckpt = checkpoints.Checkpointer(ckpt_dir)
    assert ckpt.all_steps() == [4, 8]
    ckpt.close()


def test_due_save_after_falling_back_over_a_corrupt_middle_checkpoint_is_written(tmp_path):
    """Checkpoints 1, 2, 3 with 2 and 3 unreadable: restore falls back to 1, and the retrained steps' saves
    are written again (orbax would skip a due save at a step that exists, keeping the damaged files)."""
    directory = tmp_path / "checkpoints"
    ckpt = checkpoints.Checkpointer(directory, save_every=1, keep=0, async_save=False)
    state = {"w": np.random.RandomState(0).randn(4096).astype(np.float32)}  # its data file is the largest
    for step in (1, 2, 3):
        ckpt.save(step, {"w": state["w"] + step}, {"position": step})
    ckpt.close()
    for step in (2, 3):
        _truncate_largest_array_file(os.path.join(directory, str(step)))
    ckpt = checkpoints.Checkpointer(directory, save_every=1, keep=0, async_save=False)
    target = {"w": jax.ShapeDtypeStruct((4096,), np.float32)}
    step, restored, data_state = ckpt.restore(target)
    assert step == 1 and data_state == {"position": 1}
    np.testing.assert_array_equal(restored["w"], state["w"] + 1)
    assert ckpt.save(2, {"w": state["w"] + 20}, {"position": 2})
    ckpt.wait()
    step, restored, _ = ckpt.restore(target)
    assert step == 2
    np.testing.assert_array_equal(restored["w"], state["w"] + 20)
    assert sorted(name.split(".")[0] for name in os.listdir(directory) if "unreadable" in name) == ["2", "3"]
    ckpt.close()


def test_refusal_is_the_last_line_when_every_checkpoint_is_unreadable(corpus, uninterrupted, tmp_path):
    """orbax's abandoned reads of a failed restore print "Event loop is closed" tracebacks, asyncio
    "exception was never retrieved" errors and TensorStore spec dumps (up to thousands of lines, some at
    interpreter exit, in about one run in four); the refusal must be what the user reads last."""
    import shutil
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    for step in (4, 8):
        _truncate_largest_array_file(os.path.join(workdir, "checkpoints", str(step)))
    for attempt in range(3):
        proc = _main(corpus, workdir, background=True)
        out, _ = proc.communicate(timeout=300)
        lines = out.strip().splitlines()
        assert proc.returncode == 1, out[-3000:]
        assert lines[-1].startswith("bert_jax: RuntimeError: ") and "refusing to start over" in lines[-1], out[-3000:]
        assert len(lines) <= 4 and "Event loop is closed" not in out and "'driver'" not in out, (attempt, out[-3000:])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]  # nothing moved or deleted


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_nan_first_metric_does_not_freeze_the_best(tmp_path, mode):
    """STS-B's correlation of constant predictions is NaN; a NaN first evaluation must rank worst, not
    win forever (`value >= nan` is always false), in the fine-tuning tracker and in orbax's keeping."""
    from bert_jax.training.finetune import _update_best
    sign = 1.0 if mode == "max" else -1.0
    scores = {1: float("nan"), 2: 0.4, 3: 0.7, 4: float("nan"), 5: 0.5}
    tracker = {"best_step": None, "best_value": None, "best": {}}
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=1, best_metric="dev/pearson",
                                    best_mode=mode, async_save=False)
    for step, score in scores.items():
        flat = {"dev/pearson": sign * score}
        _update_best(tracker, step, {"dev": {"pearson": sign * score}}, flat, "dev/pearson", mode)
        ckpt.save(step, {"w": jnp.full((3,), float(step))}, metrics=flat)
    assert tracker["best_step"] == 3 and tracker["best_value"] == sign * 0.7
    assert ckpt.best_step() == 3 and ckpt.all_steps() == [3, 5]
    ckpt.close()


def _corrupt_batch_at(monkeypatch, task_class, at_call, corrupt):
    """Makes the task's `at_call`-th training batch (1-based) invalid via `corrupt(batch)`."""
    original = task_class.next_batch
    calls = [0]

    def next_batch(self):
        batch = original(self)
        calls[0] += 1
        if calls[0] == at_call:
            batch = {k: np.array(v) for k, v in batch.items()}
            corrupt(batch)
        return batch

    monkeypatch.setattr(task_class, "next_batch", next_batch)


def _bad_pretraining_batch(batch):
    batch["masked_lm_positions"][0, 0] = 32 + 5  # seq_len 32
    batch["masked_lm_ids"][1, :2] = 10_000  # beyond the vocab
    batch["masked_lm_weights"][1, :2] = 1.0


def test_invalid_pretraining_data_stops_naming_field_step_and_count(corpus, tmp_path, monkeypatch):
    from bert_jax.training import loop, trainer
    _corrupt_batch_at(monkeypatch, trainer.PretrainingTask, 3, _bad_pretraining_batch)
    with pytest.raises(loop.InvalidDataError) as error:
        trainer.train_and_evaluate(_config(corpus, steps_total=8), str(tmp_path / "run"))
    message = str(error.value)
    assert "step 3" in message, message
    assert "masked_lm_positions: 1 invalid entry (must be in [0, 32)" in message, message
    assert re.search(r"masked_lm_ids: 2 invalid entries \(must be in \[0, (\d+)\) \(vocab_size=\1\)", message), message
    assert "on_invalid_data=skip" in message
    ckpt = checkpoints.Checkpointer(str(tmp_path / "run" / "checkpoints"))
    assert ckpt.all_steps() == []  # the first save (step 4) comes after the check
    ckpt.close()


def test_invalid_pretraining_data_skip_leaves_that_step_out(corpus, tmp_path, monkeypatch, caplog):
    """on_invalid_data=skip: the bad step does not update (the params after it equal those before), the
    loss never turns NaN and the skipped step is counted in the log."""
    from bert_jax.training import trainer
    _corrupt_batch_at(monkeypatch, trainer.PretrainingTask, 4, _bad_pretraining_batch)
    workdir = str(tmp_path / "run")
    config = _config(corpus, steps_total=4, on_invalid_data="skip", checkpoint_every=1, keep_checkpoints=0)
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(config, workdir)
    assert any("step 4 skipped" in r.getMessage() and "masked_lm_positions" in r.getMessage() for r in caplog.records)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    (before, _), (after, _) = ckpt.read(3), ckpt.read(4)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, before["params"], after["params"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        train = [r for r in map(json.loads, f) if r["split"] == "train"]
    assert train[-1]["step"] == 4 and train[-1]["skipped_steps"] == 1.0
    assert all(np.isfinite(r["loss"]) for r in train) and not any(k.startswith("invalid_") for k in train[-1])


def test_invalid_eval_data_stops_naming_the_field(corpus, tmp_path, monkeypatch):
    """The held-out batches are checked too: an NSP label of 2 in an eval batch stops the evaluation."""
    from bert_jax.training import data as training_data, loop, trainer
    original = training_data.PretrainingData.eval_batches

    def eval_batches(self):
        for i, batch in enumerate(original(self)):
            if i == 1:
                batch = dict(batch, next_sentence_labels=np.full_like(batch["next_sentence_labels"], 2))
            yield batch

    monkeypatch.setattr(training_data.PretrainingData, "eval_batches", eval_batches)
    with pytest.raises(loop.InvalidDataError, match=r"evaluation batches: next_sentence_labels: 8 invalid entries "
                                                    r"\(must be in \[0, 2\)"):
        trainer.train_and_evaluate(_config(corpus, steps_total=2, eval_every=2), str(tmp_path / "run"))
