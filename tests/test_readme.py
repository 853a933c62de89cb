"""The README is an executable contract: every fenced shell command and Python snippet in README.md and
launch/README.md runs here (CI stage: `pytest -m readme tests/test_readme.py`).

README command 1 and 2 (set up, run the main job / the tests) are run by `.ci/run` exactly as written, on
its fresh clone. Every other command runs from the repository root with the changes listed next to it in
`SPECS` (the reason for each is stated there): tiny sizes and a few steps instead of BERT-base for
hours, data and checkpoints this test writes instead of GLUE / SQuAD / CoNLL / SWAG / bert-base, `--dry-run`
for commands that need a TPU pod, a SLURM cluster or cloud storage, and a temporary directory instead of
/tmp. A README command that no entry covers fails `test_every_readme_command_is_covered` (in the default
run): say how to run it here before documenting it.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests import test_finetune as ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".ci"))
from readme_commands import commands, fenced_blocks  # noqa: E402

READMES = ("README.md", "launch/README.md")
# A few steps with an eval and a checkpoint, no progress bar: enough to run every part of the loop.
STEPS = ("--config.optim.total_steps=4 --config.optim.warmup_steps=1 --config.optim.warmup_fraction=-1 "
         "--config.eval_every=4 --config.checkpoint_every=4 --config.log_every=2 "
         "--config.data.eval_batches=1 --config.progress_bar=False")
RECIPE_STEPS = ("--config.optim.total_steps=4 --config.eval_every=4 --config.checkpoint_every=4 --config.log_every=2 "
                "--config.data.eval_batches=1 --config.progress_bar=False")
FINETUNE_STEPS = "--config.total_steps=3 --config.log_every=1 --config.progress_bar=False"
RUNLOCAL = "runlocal"  # appended to the config string: the tiny model (real sizes take hours on a CPU)


def readme_commands():
    out = []
    for name in READMES:
        text = open(os.path.join(ROOT, name), encoding="utf-8").read()
        for block in fenced_blocks(text):
            out += [(name, re.sub(r"\s+#.*$", "", c).strip()) for c in commands(block)]
    return out


def readme_snippets():
    out = []
    for name in READMES:
        out += [(name, block) for block in fenced_blocks(open(os.path.join(ROOT, name), encoding="utf-8").read(),
                                                         "python")]
    return out


FIRST_SCREEN = readme_commands()[:2]  # run by .ci/run exactly as written

# (substring that identifies the command, how it runs here and why).
SPECS = [
    ("bert_jax.main --config=configs/finetune_demo.py",
     dict(append=FINETUNE_STEPS, why="init_from is a short pretraining demo run made here; 3 steps")),
    ("configs/pretrain.py:size=base,seq=128,recipe=google",
     dict(runlocal=True, append=STEPS, devices=8, why="tiny model, 4 steps; the (2,2,2) mesh on 8 fake CPU devices")),
    ("configs/pretrain.py:size=base,runlocal --workdir=W", dict(append=STEPS, why="4 steps")),
    ("sweep.py run", dict(sweep_extra=STEPS, why="4 steps per point")),
    ("sweep.py print", dict(why="prints the launch commands; runs nothing")),
    ("sweep.py summarize", dict(why="summarises the points of the sweep run above")),
    ("configs/glue.py:task=mrpc", dict(runlocal=True, append=FINETUNE_STEPS, why="a tiny MRPC-format TSV set and "
                                                                                 "a tiny HF checkpoint made here")),
    ("configs/squad.py:version=2", dict(runlocal=True, append=FINETUNE_STEPS + " --config.task.max_query_length=8 "
                                        "--config.task.doc_stride=8", why="tiny SQuAD v2.0 JSON made here")),
    ("configs/ner.py", dict(runlocal=True, append=FINETUNE_STEPS, why="tiny CoNLL-2003 files made here")),
    ("configs/swag.py", dict(runlocal=True, append=FINETUNE_STEPS, why="tiny SWAG CSVs made here")),
    ("configs/classify.py", dict(runlocal=True, append=FINETUNE_STEPS, why="tiny train.csv / dev.csv made here")),
    ("launch/local_multiprocess.sh", dict(append=STEPS, why="4 steps, 2 processes x 4 CPU devices as written")),
    ("launch/tpu_vm.sh", dict(dry_run=True, why="needs a Cloud TPU and a bucket: --dry-run prints the commands")),
    ("sbatch --nodes=4 launch/gpu_slurm.sh", dict(sbatch=True, why="needs a SLURM cluster: the script's --dry-run")),
    ("bash launch/gpu_slurm.sh --dry-run", dict(why="as written")),
    ("bert_jax.aot --config=configs/pretrain.py:size=large,seq=512 --topology=v5p-128",
     dict(runlocal=True, append="--config.data.global_batch_size=64",
          why="tiny model, a batch the 64 chips divide; without libtpu it says so and compiles for 64 CPU devices")),
    ("bert_jax.aot --config=configs/pretrain.py:size=base --topology=8xH100",
     dict(runlocal=True, why="tiny model; without a GPU it says so and compiles for 8 CPU devices")),
    ("bert_jax.aot --config=configs/pretrain.py:runlocal --topology=cpu:8", dict(why="as written")),
    ("bert_jax.benchmark", dict(append="--config=tiny --batch=2 --seq=32 --steps=1 --warmup=1 --matmul_size=128 "
                                "--notorch", why="tiny model, one timed step (timings are not checked)")),
    ("bert_jax.export", dict(why="exports the short pretraining demo run made here")),
    ("configs/cramming.py:runlocal", dict(append=RECIPE_STEPS, why="4 steps (its one-cycle schedule has no warmup)")),
    ("bert_jax.ablate", dict(append="--budget_seconds=2 --finetune_config=configs/finetune_demo.py:epochs=0.02 "
                             + " ".join(f"--set={s}" for s in ("model.hidden_size=32", "model.intermediate_size=64",
                                                                "model.num_attention_heads=2", "data.vocab_size=300",
                                                                "data.dupe_factor=1", "data.eval_batches=2",
                                                                "data.global_batch_size=16", "eval_every=10")),
                             why="a 2-second budget per variant, a hidden-32 model, a few fine-tuning steps")),
]


def spec_for(command):
    found = [spec for key, spec in SPECS if key in command]
    return found[0] if len(found) == 1 else None


def test_every_readme_command_is_covered():
    assert [c for _, c in FIRST_SCREEN][0].startswith("bash setup.sh && ")
    assert [c for _, c in FIRST_SCREEN][1].startswith("bash setup.sh test && ")
    uncovered = [f"{name}: {c}" for name, c in readme_commands()[2:] if spec_for(c) is None]
    assert not uncovered, "README commands with no (or no unique) entry in tests/test_readme.py SPECS:\n" + "\n".join(
        uncovered)
    assert readme_snippets(), "README.md should show the model in a Python snippet"


# ----------------------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Everything the commands name, made here: {placeholder or path in the README: what it becomes}."""
    import bert_jax
    root = tmp_path_factory.mktemp("readme")
    vocab = ft.write_vocab(root / "vocab.txt")
    # A tiny Hugging Face BERT directory (config.json, weights, vocab.txt) for HF_BERT_DIR.
    hf = root / "hf_bert"
    config = bert_jax.BertConfig(vocab_size=len(open(vocab).read().split()), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    params = bert_jax.init_params(bert_jax.BertForPreTraining(config), __import__("jax").random.PRNGKey(0))
    bert_jax.save_hf_checkpoint(str(hf), config, params, bert_jax.BertForPreTraining)
    (hf / "vocab.txt").write_text(open(vocab).read())
    rs = np.random.RandomState(0)
    # GLUE MRPC (the distribution's unquoted TSVs).
    mrpc = root / "glue_data" / "MRPC"
    mrpc.mkdir(parents=True)
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    for split, n in (("train.tsv", 24), ("dev.tsv", 8)):
        rows = [f"{y}\t{i}\t{i + 1}\t{ft._sentence(rs, ft.POSITIVE)}\t{ft._sentence(rs, ft.NEGATIVE if y else ft.POSITIVE)}\n"
                for i, y in enumerate(rs.randint(0, 2, n))]
        (mrpc / split).write_text(header + "".join(rows))
    # SQuAD v2.0 JSON (one unanswerable question per paragraph too).
    squad = root / "squad"
    squad.mkdir()
    for split, n in (("train-v2.0.json", 16), ("dev-v2.0.json", 6)):
        paragraphs = []
        for i in range(n):
            name, where = rs.choice(ft.NAMES), rs.choice(ft.PLACES)
            context = f"{ft._sentence(rs, ft.NEUTRAL, 3)} {name} sunny {where}"
            paragraphs.append({"context": context, "qas": [
                {"id": f"{split}{i}", "question": "who sunny", "is_impossible": False,
                 "answers": [{"text": name, "answer_start": context.index(name)}]},
                {"id": f"{split}{i}x", "question": "what rainy", "is_impossible": True, "answers": []}]})
        json.dump({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}, open(squad / split, "w"))
    # CoNLL-2003 columns.
    conll = root / "conll2003"
    conll.mkdir()
    for split, n in (("train.txt", 16), ("valid.txt", 6), ("test.txt", 4)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(n):
            lines += [f"{rs.choice(ft.NAMES)} NNP B-NP B-PER", f"{rs.choice(ft.NEUTRAL)} VB B-VP O", ""]
        (conll / split).write_text("\n".join(lines) + "\n")
    # SWAG CSVs.
    swag = root / "swagaf" / "data"
    swag.mkdir(parents=True)
    for split, n in (("train.csv", 12), ("val.csv", 4)):
        rows = [["sent1", "sent2", "ending0", "ending1", "ending2", "ending3", "label"]]
        rows += [[ft._sentence(rs, ft.NEUTRAL, 3), "then", *[ft._sentence(rs, ft.POSITIVE, 2) for _ in range(4)],
                  int(rs.randint(4))] for _ in range(n)]
        ft._write_csv(swag / split, rows[0], rows[1:])
    # Own CSVs.
    ft._write_csv(root / "train.csv", ["text", "label"], ft._sentiment_rows(0, 24))
    ft._write_csv(root / "dev.csv", ["text", "label"], ft._sentiment_rows(1, 8))
    return {"HF_BERT_DIR": str(hf), "path/to/bert-base-uncased": str(hf), "glue_data/MRPC": str(mrpc),
            "DIR_WITH_SQUAD_JSON": str(squad), "conll2003/": str(conll) + "/", "swagaf/data": str(swag),
            "train.csv": str(root / "train.csv"), "dev.csv": str(root / "dev.csv"), "/tmp/": str(root) + "/tmp/",
            "_root": str(root)}


def _env(devices=None):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@pytest.fixture(scope="module")
def pretrained(place):
    """A short run of the README's main job (configs/demo.py): what /tmp/bert_jax_demo holds after command 1."""
    workdir = os.path.join(place["/tmp/"], "bert_jax_demo")
    subprocess.run([sys.executable, "-m", "bert_jax.main", f"--workdir={workdir}", *STEPS.split()], cwd=ROOT,
                   env=_env(), check=True, capture_output=True, timeout=900)
    return workdir


def prepare(command, place, workdir):
    """The command as it runs here (argv for bash) and its spec; `W` becomes `workdir`."""
    spec = spec_for(command)
    out = command
    if spec.get("sbatch"):
        out = out.replace("sbatch --nodes=4 launch/gpu_slurm.sh", "bash launch/gpu_slurm.sh --dry-run --nodes=4")
    if spec.get("dry_run"):
        out = re.sub(r"^(bash launch/\S+\.sh)", r"\1 --dry-run", out)
    if spec.get("runlocal"):
        out = re.sub(r"(--config=configs/\w+\.py)(:\S*)?", lambda m: m.group(1) + (
            (m.group(2) + ",") if m.group(2) else ":") + RUNLOCAL, out, count=1)
    if spec.get("append"):
        out += " " + spec["append"]
    if spec.get("sweep_extra"):
        out += " -- " + spec["sweep_extra"]
    words = shlex.split(out)
    mapped = []
    for word in words:
        # README paths under /tmp/ (a flag's value, or a bare path) go to this test's directory; the
        # interpreter is substituted after that, since it may itself live under /tmp/ (a CI clone).
        word = re.sub(r"(^|=)/tmp/", lambda m: m.group(1) + place["/tmp/"], word)
        if word in ("python", ".venv/bin/python"):
            word = sys.executable
        word = re.sub(r"(?<==)W$", workdir, word)
        for key, value in place.items():
            if key not in ("/tmp/", "W") and not key.startswith("_"):
                word = word.replace(f"={key}", f"={value}")
        mapped.append(word)
    return mapped, spec


@pytest.mark.readme
@pytest.mark.slow
@pytest.mark.parametrize("name, command", readme_commands()[2:], ids=lambda x: x[:70])
def test_readme_command_runs(name, command, place, pretrained, tmp_path):
    argv, spec = prepare(command, place, str(tmp_path / "W"))
    os.makedirs(place["/tmp/"], exist_ok=True)
    proc = subprocess.run(argv, cwd=ROOT, env=_env(spec.get("devices")), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{name}: {command}\nran: {shlex.join(argv)}\n{proc.stderr[-4000:]}"
    output = proc.stdout + proc.stderr
    if "bert_jax.main" in command and "launch/" not in command and "sweep" not in command:
        assert "final metrics" in output, output[-2000:]
    if "sweep.py summarize" in command:
        assert "mlm_accuracy" in output


@pytest.mark.readme
@pytest.mark.slow
@pytest.mark.parametrize("name, snippet", readme_snippets(), ids=lambda x: x[:20])
def test_readme_snippet_runs(name, snippet, place):
    code = snippet
    for key in ("path/to/bert-base-uncased",):
        code = code.replace(key, place[key])
    code += "\nprint('SNIPPET_OK', type(logits).__name__, logits.shape)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SNIPPET_OK" in proc.stdout
