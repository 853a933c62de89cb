"""launch/sweep.py: grid expansion and workdir names, printed launch commands, a real two-point local
sweep of `configs/pretrain.py:runlocal` (shrunk further) and the summary table of its final metrics."""

import importlib.util
import json
import os
import shlex
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
sys.modules["sweep"] = sweep  # dataclasses look their module up there (launch/ is not a package)
_spec.loader.exec_module(sweep)


def test_grid_expands_to_the_product_with_readable_names():
    points = sweep.expand(sweep.parse_grid(["optim.learning_rate=1e-4,5e-4", "--config.model.num_hidden_layers=2,4"]))
    assert [p.overrides for p in points] == [
        (("optim.learning_rate", "1e-4"), ("model.num_hidden_layers", "2")),
        (("optim.learning_rate", "1e-4"), ("model.num_hidden_layers", "4")),
        (("optim.learning_rate", "5e-4"), ("model.num_hidden_layers", "2")),
        (("optim.learning_rate", "5e-4"), ("model.num_hidden_layers", "4"))]
    assert [p.name for p in points] == ["learning_rate=1e-4__num_hidden_layers=2", "learning_rate=1e-4__num_hidden_layers=4",
                                        "learning_rate=5e-4__num_hidden_layers=2", "learning_rate=5e-4__num_hidden_layers=4"]
    assert points[0].flags() == ["--config.optim.learning_rate=1e-4", "--config.model.num_hidden_layers=2"]
    # clashing last components keep the full key; commas inside brackets do not split values
    points = sweep.expand(sweep.parse_grid(["model.dtype=float32,bfloat16", "optim.dtype=float32",
                                            "mesh.ici_parallelism=(1,-1,1),(2,-1,1)"]))
    assert len(points) == 4
    assert points[1].name == "model.dtype=float32__optim.dtype=float32__ici_parallelism=2_-1_1"
    assert points[1].overrides[-1] == ("mesh.ici_parallelism", "(2,-1,1)")


@pytest.mark.parametrize("spec, message", [("learning_rate", "expected <config.key>=<value>"),
                                           ("optim..lr=1", "expected <config.key>=<value>"),
                                           ("a=1,,2", "empty value"), ("a=1,1", "repeats a value"),
                                           ("a=(1,2", "unbalanced")])
def test_bad_grid_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_grid([spec])
    with pytest.raises(ValueError, match="given twice"):
        sweep.parse_grid(["a=1", "a=2"])
    with pytest.raises(ValueError, match="same workdir"):
        sweep.expand(sweep.parse_grid(["a=x/y,x:y"]))


def test_print_mode_prints_one_command_per_point(capsys):
    grid = ["--grid", "optim.learning_rate=1e-4,5e-4", "--grid", "seed=0,1"]
    assert sweep.main(["print", "--config=configs/pretrain.py:size=base", "--root=gs://bucket/sw", *grid,
                       "--set", "data.seq_len=128", "--", "--config.log_every=50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert shlex.split(lines[3]) == ["python", "-m", "bert_jax.main", "--config=configs/pretrain.py:size=base",
                                     "--workdir=gs://bucket/sw/learning_rate=5e-4__seed=1",
                                     "--config.data.seq_len=128", "--config.optim.learning_rate=5e-4",
                                     "--config.seed=1", "--config.log_every=50"]
    assert sweep.main(["print", "--launcher=gpu_slurm", "--launcher_args=--nodes=2 --gpus_per_node=8",
                       "--config=configs/pretrain.py", "--root=/r", "--grid", "seed=3"]) == 0
    assert shlex.split(capsys.readouterr().out) == ["bash", "launch/gpu_slurm.sh", "--nodes=2", "--gpus_per_node=8",
                                                    "--config=configs/pretrain.py", "--workdir=/r/seed=3",
                                                    "--config.seed=3"]
    assert sweep.main(["print", "--launcher=tpu_vm", "--config=c.py", "--root=/r", "--grid", "seed=3"]) == 0
    assert capsys.readouterr().out.startswith("bash launch/tpu_vm.sh --config=c.py --workdir=/r/seed=3 ")
    assert sweep.main(["print", "--config=c.py", "--root=/r", "--grid", "seed=3", "--set", "seed=4"]) == 2
    assert "both by --set and --grid" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """Two points (learning rates) of configs/pretrain.py:runlocal, shrunk to a few seconds each."""
    base = tmp_path_factory.mktemp("sweep")
    words = "the function returns a list of values from the file and raises an error if the path is missing".split()
    rs = np.random.RandomState(0)
    docs = ["\n".join(" ".join(rs.choice(words, 8)) + "." for _ in range(4)) for _ in range(24)]
    (base / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    from bert_jax.tokenization import train_wordpiece
    train_wordpiece([str(base / "corpus.txt")], vocab_size=200).save(str(base / "vocab"))
    root = str(base / "points")
    shrink = {"data.source": f"text:{base / 'corpus.txt'}", "data.vocab": str(base / "vocab"), "data.seq_len": 32,
              "data.max_predictions": 5, "data.global_batch_size": 8, "data.eval_batches": 1, "data.dupe_factor": 1,
              "model.hidden_size": 32, "model.intermediate_size": 64, "model.max_position_embeddings": 32,
              "optim.total_steps": 3, "optim.warmup_steps": 1, "log_every": 1, "eval_every": 3,
              "checkpoint_every": 3, "async_checkpointing": "false"}
    argv = ["run", f"--config={ROOT}/configs/pretrain.py:size=tiny,runlocal", f"--root={root}",
            "--grid", "optim.learning_rate=0.001,0.02", *[a for k, v in shrink.items() for a in ("--set", f"{k}={v}")]]
    code = sweep.main(argv)
    assert code == 0
    return root


def test_local_sweep_runs_every_point_in_its_workdir(local_sweep):
    names = ["learning_rate=0.001", "learning_rate=0.02"]
    manifest = json.load(open(os.path.join(local_sweep, "sweep.json")))
    assert [p["name"] for p in manifest["points"]] == names
    for name, lr in zip(names, (0.001, 0.02)):
        config = json.load(open(os.path.join(local_sweep, name, "config.json")))
        assert config["optim"]["learning_rate"] == lr and config["model"]["hidden_size"] == 32
        assert json.load(open(os.path.join(local_sweep, name, "final_metrics.json")))["step"] == 3


def test_summary_table_has_both_points_sorted(local_sweep, capsys):
    finals = {lr: json.load(open(os.path.join(local_sweep, f"learning_rate={lr}", "final_metrics.json")))
              for lr in ("0.001", "0.02")}
    assert sweep.main(["summarize", f"--root={local_sweep}", "--sort=train.loss", "--mode=min",
                       "--metrics=eval.mlm_accuracy,eval.loss"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["optim.learning_rate", "status", "step", "eval.mlm_accuracy", "eval.loss", "train.loss"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 2
    expected_order = sorted(finals, key=lambda lr: finals[lr]["train"]["loss"])
    assert [r[0] for r in rows] == expected_order
    for row in rows:
        final = finals[row[0]]
        assert row[1:3] == ["done", "3"]
        np.testing.assert_allclose([float(c) for c in row[3:]], [final["eval"]["mlm_accuracy"], final["eval"]["loss"],
                                                                 final["train"]["loss"]], rtol=1e-3)
    # a point that has not finished is listed last, without numbers
    os.remove(os.path.join(local_sweep, "learning_rate=0.02", "final_metrics.json"))
    table = sweep.summarize(local_sweep, sort="eval.loss", mode="min")
    assert table.splitlines()[-1].startswith("| 0.02 | missing | — |")
