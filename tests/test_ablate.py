"""The ablation bench (`python -m bert_jax.ablate`) and the training loop's wall-clock budget
(`config.train_seconds`). Timings are never asserted beyond "stopped before total_steps"."""

import json
import os

import pytest

from tests.conftest import write_text_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the function returns a list of values from the file and raises an error if the path does not "
         "exist while the class stores the name of each object in a table for later use").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text corpus and a vocab trained on it once (text:<path>, data.vocab)."""
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), WORDS, vocab_size=300, words_per_sentence=(5, 12))


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


# ------------------------------------------------------------------------------------ the grid
def _bench():
    from bert_jax.ablate import grid
    return grid.load_bench("configs/ablate.py")


def test_default_grid_resolves_bert_as_the_demo_and_switches_as_overrides():
    from bert_jax.ablate import grid
    bench = _bench()
    assert [name for name, _ in bench.variants][:5] == ["bert", "preln", "preln_geglu_nobias", "rmsnorm", "mask30"]
    variants = {v.name: v for v in grid.resolve_all(bench)}
    bert = variants["bert"]
    assert bert.unavailable is None and bert.config.to_dict() == bench.base.to_dict()  # the demo, unchanged
    assert variants["preln"].config.model.norm_position == "pre"
    gated = variants["preln_geglu_nobias"].config.model
    assert (gated.mlp_type, gated.attention_bias, gated.mlp_bias, gated.norm_bias) == ("geglu", False, False, False)
    assert variants["rmsnorm"].config.model.norm_type == "rmsnorm"
    mask30 = variants["mask30"].config.data
    assert (mask30.masked_lm_prob, mask30.max_predictions) == (0.3, 10)  # 32 * 0.3 + 0.5 -> 10
    for recipe in ("cramming", "mosaicbert", "modernbert"):  # present or reported unavailable, never a crash
        v = variants[recipe]
        assert (v.config is None) == bool(v.unavailable)
        if v.config is not None:  # the task is the base's: same corpus, sequence length and vocab size
            assert (v.config.data.seq_len, v.config.data.vocab_size) == (32, bench.base.data.vocab_size)


def test_variants_evaluate_on_the_base_batches(corpus, tmp_path):
    """eval_like_base: a variant with 30% masking, MLM only, evaluates on exactly the base's batches (the same
    examples, masked positions and labels), while it trains on its own."""
    import ml_collections
    import numpy as np

    from bert_jax.ablate import grid
    from bert_jax.training import data as training_data
    base = _tiny_pretrain_config(corpus, 10, 0.0)
    base.data.eval_batches = 3
    assert base.objective == "mlm_nsp"
    bench = ml_collections.ConfigDict(dict(base=base, shared=[], eval_like_base=True, variants=[
        ("bert", []), ("mlm30", ["objective=mlm", "data.masked_lm_prob=0.3"])]))
    bert, mlm30 = grid.resolve_all(bench)
    assert bert.config.to_dict() == base.to_dict()  # nothing to change for the base itself
    d = mlm30.config.data
    assert (d.max_predictions, d.eval_masked_lm_prob, d.eval_max_predictions, d.eval_mode) == (10, 0.15, 5, "nsp")
    batches = {}
    for variant in (bert, mlm30):
        data = training_data.build_pretraining_data(variant.config, tmp_path / variant.name)
        batches[variant.name] = (list(data.eval_batches()), next(iter(data.train_loader)))
    (base_eval, base_train), (eval30, train30) = batches["bert"], batches["mlm30"]
    assert len(base_eval) == len(eval30) == 3
    for one, other in zip(base_eval, eval30):
        assert set(one) == set(other)
        for key in one:
            np.testing.assert_array_equal(one[key], other[key], err_msg=key)
    assert base_train["masked_lm_positions"].shape[1] == 5 and train30["masked_lm_positions"].shape[1] == 10
    # A model without token types (Cramming, ModernBERT) reads the same pairs without their segment ids.
    untyped = grid.resolve_all(ml_collections.ConfigDict(dict(bench, variants=[
        ("untyped", ["objective=mlm", "model.type_vocab_size=0"])])))[0]
    data = training_data.build_pretraining_data(untyped.config, tmp_path / "untyped")
    for one, other in zip(base_eval, data.eval_batches()):
        assert one["token_type_ids"].any() and not other["token_type_ids"].any()
        for key in set(one) - {"token_type_ids"}:
            np.testing.assert_array_equal(one[key], other[key], err_msg=key)
    # Without it, the variant's eval batches are its own (30% masking, 10 positions).
    own = grid.resolve_all(ml_collections.ConfigDict(dict(bench, eval_like_base=False)), ["mlm30"])[0]
    data = training_data.build_pretraining_data(own.config, tmp_path / "own")
    assert next(iter(data.eval_batches()))["masked_lm_positions"].shape[1] == 10


def test_eval_batch_overrides_are_checked(corpus):
    from bert_jax.training import data as training_data
    c = _tiny_pretrain_config(corpus, 10, 0.0)
    for key, value, message in [("eval_masked_lm_prob", 1.5, "eval_masked_lm_prob must be in"),
                                ("eval_max_predictions", -1, "eval_max_predictions must be an integer"),
                                ("eval_mode", "pairs", "eval_mode must be"),
                                ("eval_mode", "full_sentences", "no next-sentence labels")]:
        bad = c.copy_and_resolve_references()
        bad.data[key] = value
        with pytest.raises(ValueError, match=message):
            training_data.eval_overrides(bad)
    c.data.update(source="array_record:/nonexistent/*.ar", eval_masked_lm_prob=0.2)
    with pytest.raises(ValueError, match="apply to text sources"):
        training_data.build_pretraining_data(c, "/tmp/unused")


def test_variant_problems_are_reasons_not_crashes(tmp_path):
    from bert_jax.ablate import grid
    base = _bench().base
    missing = grid.resolve("future", ["configs/no_such_recipe.py:runlocal"], base)
    assert missing.config is None and "no_such_recipe.py does not exist" in missing.unavailable
    unknown = grid.resolve("rope", ["model.no_such_switch=3"], base)
    assert "BertConfig has no field 'no_such_switch'" in unknown.unavailable
    bad_value = grid.resolve("bad", ["model.norm_type=batchnorm"], base)
    assert bad_value.config is None and "norm_type" in bad_value.unavailable
    assert "expected a float" in grid.resolve("typed", ["data.masked_lm_prob=high"], base).unavailable
    # A BertConfig field the config file's model section lacks is added (switches newer than configs/pretrain.py;
    # configs/pretrain.py now lists every switch, so one is taken out here to stand for a config that lacks it).
    with base.unlocked():
        del base.model["norm_type"]
    assert "norm_type" not in base.model
    added = grid.resolve("rms", ["model.norm_type=rmsnorm"], base)
    assert added.unavailable is None and added.config.model.norm_type == "rmsnorm"
    assert "norm_type" not in base.model  # the base is left alone
    with pytest.raises(ValueError, match="dotted.key=value"):
        grid.parse_override("model.norm_position")
    with pytest.raises(ValueError, match="unknown"):
        grid.resolve_all(_bench(), ["bert", "nope"])


def test_flops_count_the_switches_and_budgets_set_steps():
    from bert_jax.ablate import grid
    from bert_jax.config import BertConfig
    dense = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    gated = dense.replace(mlp_type="geglu")
    # The gated MLP's second input projection: 6 FLOPs per weight per token, per layer.
    assert grid.flops_per_token(gated, 32, 5) - grid.flops_per_token(dense, 32, 5) == pytest.approx(
        6 * 2 * (32 * 64 + 64))
    # Sliding windows count their keys, not the whole sequence (layer 1 of 2 is local: 9 keys of 32).
    local = dense.replace(local_attention_window=8, global_attn_every_n_layers=2)
    assert grid.flops_per_token(local, 32, 5) == pytest.approx(
        grid.flops_per_token(dense, 32, 5) - 12 * 1 * 32 * (32 - 9))
    base = _bench().base
    per_step = grid.step_flops(base, 4000)
    config = grid.apply_budget(base, grid.Budget(flops=per_step * 7.5), 4000)
    assert config.total_steps == config.optim.total_steps == 7 and config.train_seconds == float("inf")
    assert config.optim.warmup_steps == 3  # capped: the demo's 100 warmup steps exceed the budget
    assert grid.apply_budget(base, grid.Budget(seconds=30), 4000).train_seconds == 30.0
    assert base.train_seconds == 0.0 and base.total_steps == 2500  # the base is left alone
    for bad in (dict(), dict(seconds=1, flops=1), dict(seconds=-1)):
        with pytest.raises(ValueError, match="budget"):
            grid.Budget(**bad)
    with pytest.raises(ValueError, match="less than one step"):
        grid.apply_budget(base, grid.Budget(flops=per_step / 2), 4000)
    with base.unlocked():
        base.objective = "electra"
    with pytest.raises(ValueError, match="FLOPs are counted for"):
        grid.step_flops(base, 4000)


# ------------------------------------------------------------------------------------ the bench
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_attention_heads=2", "data.vocab_size=300",
        "data.dupe_factor=1", "data.eval_batches=2", "data.global_batch_size=16", "log_every=5", "eval_every=10"]


def test_seconds_budget_lays_the_schedule_over_the_calibrated_steps():
    from bert_jax.ablate import grid
    base = _bench().base
    cut = grid.apply_budget(base, grid.Budget(seconds=60), 4000)
    assert (cut.train_seconds, cut.optim.total_steps, cut.total_steps) == (60.0, 2500, 2500)  # the config's schedule
    fitted = grid.apply_budget(base, grid.Budget(seconds=60), 4000, seconds_per_step=0.1)
    assert fitted.train_seconds == 60.0 and fitted.optim.total_steps == fitted.total_steps == int(0.95 * 600)
    short = grid.apply_budget(base, grid.Budget(seconds=10), 4000, seconds_per_step=0.1)
    assert short.optim.total_steps == 95 and short.optim.warmup_steps == 47  # warmup capped at half
    assert base.optim.total_steps == 2500  # a copy
    with pytest.raises(ValueError, match="seconds per step"):
        grid.apply_budget(base, grid.Budget(seconds=10), 4000, seconds_per_step=0.0)


def test_bench_tiny_grid_table_and_plot(tmp_path):
    """2 variants x 2 seeds on a 2-second budget (tiny model, a few fine-tuning steps), plus a variant
    whose recipe file does not exist: the table has sane values with spreads, the plot is a PNG, and a
    rerun skips every finished run."""
    import subprocess
    import sys

    from bert_jax.ablate import grid
    bench_config = tmp_path / "bench.py"
    bench_config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'configs')!r})\n"
        "import ablate\n"
        "import ml_collections\n\n"
        "def get_config(arg=''):\n"
        "    c = ablate.get_config()\n"
        "    return ml_collections.ConfigDict(dict(base=c.base, shared=c.shared, variants=[\n"
        "        ('bert', []), ('preln', ['model.norm_position=pre']), ('future', ['configs/no_such_recipe.py:runlocal'])]))\n")
    workdir = tmp_path / "bench"
    cmd = [sys.executable, "-m", "bert_jax.ablate", f"--workdir={workdir}", f"--config={bench_config}",
           "--budget_seconds=2", "--seeds=2", "--finetune_config=configs/finetune_demo.py:epochs=0.02",
           *(f"--set={s}" for s in TINY)]
    # Seeds of a variant compile the same steps: a persistent compilation cache shared by the stages' subprocesses
    # (the bench itself keeps them independent) halves the test's compile time.
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = json.load(open(workdir / "ablation.json"))
    rows = {row["variant"]: row for row in table["variants"]}
    assert list(rows) == ["bert", "preln", "future"]
    assert rows["future"]["status"] == "unavailable" and "no_such_recipe.py" in rows["future"]["reason"]
    for name in ("bert", "preln"):
        row = rows[name]
        assert row["status"] == "ok" and row["seeds"] == [0, 1] and row["params"] > 0 and row["flops_per_token"] > 0
        for key in ("mlm_accuracy", "finetune_accuracy"):
            assert len(row[key]["values"]) == 2 and all(0.0 <= v <= 1.0 for v in row[key]["values"])
            assert row[key]["std"] is not None and row[key]["std"] >= 0.0
        assert row["tokens_per_s"]["mean"] > 0 and row["steps"]["mean"] >= 1
        # The schedule is laid over the steps the variant's calibrated step time fits in the budget.
        seconds_per_step = json.load(open(workdir / name / "calibration" / "calibration.json"))["seconds_per_step"]
        fitted = grid.steps_in_seconds(2, seconds_per_step)
        for seed, run in enumerate(row["runs"]):
            config = json.load(open(workdir / name / f"seed{seed}" / "pretrain_config.json"))
            assert config["optim"]["total_steps"] == config["total_steps"] == fitted < 2500
            assert run["steps"] <= fitted and (run["stopped_by"] == "budget") == (run["steps"] < fitted)
            assert run["curve"] and all(0.0 <= point[3] <= 1.0 for point in run["curve"])
    assert rows["bert"]["params"] < rows["preln"]["params"]  # pre-LN adds the final norm
    markdown = (workdir / "ablation.md").read_text()
    assert "| bert |" in markdown and " ± " in markdown and "unavailable" in markdown
    png = (workdir / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already done") == 8  # 2 variants x 2 seeds x (pretraining, fine-tuning)
    assert "timing" not in again.stderr  # the calibrations are kept
    assert json.load(open(workdir / "ablation.json")) == table


def test_table_statistics_and_rows_without_runs():
    from bert_jax.ablate import grid, report
    one, two = report._stats([0.5]), report._stats([0.2, 0.4])
    assert one["std"] is None and one["mean"] == 0.5
    assert two["mean"] == pytest.approx(0.3) and two["std"] == pytest.approx(0.1414, abs=1e-4)  # sample std
    assert report._pm(one, ".2f") == "0.50" and report._pm(two, ".2f") == "0.30 ± 0.14"
    variants = [grid.Variant("future", ("configs/x.py",), None, unavailable="config file configs/x.py does not exist"),
                grid.Variant("broken", (), object())]
    from bert_jax.ablate.bench import RunResult
    table = report.summarise(variants, [RunResult("broken", 0, "/nowhere", "failed", "pretraining: boom")],
                             grid.Budget(seconds=5))
    assert [row["status"] for row in table["variants"]] == ["unavailable", "failed"]
    text = report.markdown(table)
    assert "unavailable: config file configs/x.py does not exist" in text and "seed 0: pretraining: boom" in text
    assert text.startswith("Ablation bench: 5 s of training each")


@pytest.mark.slow
def test_bench_flops_budget_gives_each_variant_its_steps(tmp_path):
    """--budget_flops: steps = budget / the variant's step FLOPs, so the gated, bias-free variant (more
    FLOPs per token) trains fewer steps; both spend the same FLOPs to within one step."""
    import subprocess
    import sys
    workdir = tmp_path / "bench"
    cmd = [sys.executable, "-m", "bert_jax.ablate", f"--workdir={workdir}", "--variants=bert,preln_geglu_nobias",
           "--budget_flops=2e10", "--seeds=1", "--finetune_config=configs/finetune_demo.py:epochs=0.02",
           *(f"--set={s}" for s in TINY)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {row["variant"]: row for row in json.load(open(workdir / "ablation.json"))["variants"]}
    dense, gated = rows["bert"], rows["preln_geglu_nobias"]
    assert gated["flops_per_token"] > dense["flops_per_token"]
    assert gated["steps"]["mean"] < dense["steps"]["mean"]
    for row in (dense, gated):
        step_flops = row["flops_per_token"] * 32 * 16
        assert 2e10 - step_flops < row["total_flops"]["mean"] <= 2e10
        assert row["runs"][0]["stopped_by"] == "budget"


@pytest.mark.parametrize("flags, message", [
    (["--budget_seconds=1", "--budget_flops=1"], "set exactly one of --budget_seconds and --budget_flops"),
    (["--budget_seconds=1", "--variants=nope"], "--variants: unknown ['nope']"),
    (["--budget_seconds=1", "--set=model.hiden_size=3"], "BertConfig has no field 'hiden_size'"),
], ids=["two_budgets", "unknown_variant", "typo_in_set"])
def test_bench_command_line_errors_are_one_line(tmp_path, flags, message):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "bert_jax.ablate", f"--workdir={tmp_path}", *flags], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bert_jax.ablate: ValueError: ") and message in last, proc.stderr[-2000:]
