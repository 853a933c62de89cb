"""The experiment configs are a contract: every `:key=value` argument is declared and typed, every field the
code reads is declared in the configs, and every declared field is read somewhere."""

import ast
import glob
import importlib.util
import os
import subprocess
import sys

import ml_collections
import pytest

from bert_jax import config_args
from bert_jax.config import BertConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
# finetune.py is the shared base of the task configs, not an experiment (it has no get_config).
EXPERIMENTS = [p for p in CONFIG_FILES if os.path.basename(p) != "finetune.py"]


def _module(path):
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arg_variants(module):
    """Argument strings that cover each declared choice and flag (the required ones filled in)."""
    spec = module.ARGS
    base = {name: a.choices[0] for name, a in spec.items() if a.default is None and a.type is not bool}
    variants = [dict(base)]
    for name, a in spec.items():
        for choice in a.choices or ():
            variants.append({**base, name: choice})
        if a.type is bool:
            variants.append({**base, name: True})
    fmt = lambda v: ",".join(k if val is True else f"{k}={val}" for k, val in v.items())
    return [fmt(v) for v in variants]


def _all_configs():
    out = []
    for path in EXPERIMENTS:
        module = _module(path)
        for arg in _arg_variants(module):
            out.append((os.path.basename(path), arg, module.get_config(arg)))
    return out


@pytest.fixture(scope="module")
def configs():
    return _all_configs()


def _leaf_paths(config, prefix=()):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


# --------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_config_declares_its_arguments(path):
    module = _module(path)
    assert isinstance(module.ARGS, dict)
    for name, a in module.ARGS.items():
        assert isinstance(a, config_args.Arg) and a.type in (str, int, float, bool), name
    for arg in _arg_variants(module):
        assert isinstance(module.get_config(arg), ml_collections.ConfigDict)
    with pytest.raises(ValueError, match=r"unknown argument 'sise'.*accepts: ") as error:
        module.get_config(",".join(filter(None, [_arg_variants(module)[0], "sise=large"])))
    for name in module.ARGS:  # the error lists what the file accepts
        assert name in str(error.value)


def test_typo_in_pretrain_arguments_is_an_error():
    module = _module(os.path.join(ROOT, "configs", "pretrain.py"))
    with pytest.raises(ValueError, match=r"unknown argument 'sise' \(did you mean 'size'\?\)"):
        module.get_config("sise=large,runlocal")
    with pytest.raises(ValueError, match=r"size='huge' is not one of tiny, mini"):
        module.get_config("size=huge")
    with pytest.raises(ValueError, match=r"seq='long' is not a int"):
        module.get_config("seq=long")
    with pytest.raises(ValueError, match=r"runlocal='maybe' is not a boolean"):
        module.get_config("runlocal=maybe")
    with pytest.raises(ValueError, match="given twice"):
        module.get_config("size=tiny,size=base")
    assert module.get_config("size=large,seq=512").model.num_hidden_layers == 24
    assert module.get_config("runlocal=false").model.hidden_size == 768


def test_required_argument_is_named():
    module = _module(os.path.join(ROOT, "configs", "glue.py"))
    with pytest.raises(ValueError, match=r"needs task=<cola, sst2, mrpc.*argument 'task' is required"):
        module.get_config("runlocal")


def test_main_rejects_a_typo_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bert_jax.main", "--config=configs/pretrain.py:sise=large,runlocal",
                           f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
    assert proc.returncode != 0
    assert "unknown argument 'sise'" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_configs_are_locked_and_typed():
    """Overrides of a name the config does not declare fail (lock_config) in both entry points."""
    for module in ("main", "aot"):
        source = open(os.path.join(ROOT, "bert_jax", f"{module}.py")).read()
        assert "lock_config=True" in source and "lock_config=False" not in source, module


# ------------------------------------------------------------------------------------- fields read vs declared
# Modules that read the experiment config, and the names that hold (part of) it there.
READERS = {
    "bert_jax/main.py": {"config": ()},
    "bert_jax/aot.py": {"config": ()},
    "bert_jax/training": {"config": (), "run.config": (), "self.config": ()},
    "bert_jax/tasks": {"self.config": ("task",), "task_config": ("task",)},
}
CONFIG_DICT_METHODS = {"get", "to_dict", "items", "keys", "values", "update", "get_ref", "lock", "unlock",
                       "copy_and_resolve_references", "to_json", "to_json_best_effort", "get_oneway_ref"}


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return list(reversed(parts))
    return None


def _reads_in(path, roots):
    """(config path tuple, line) for every attribute chain / .get("key") read off a config name in `path`,
    following simple aliases (`d = config.data`)."""
    tree = ast.parse(open(path).read())
    aliases = {}
    for node in ast.walk(tree):  # name = <root chain>.x.y
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            chain = _dotted(node.value)
            for root, prefix in roots.items():
                r = root.split(".")
                if chain and chain[:len(r)] == r and len(chain) > len(r):
                    aliases[node.targets[0].id] = prefix + tuple(chain[len(r):])
    all_roots = {**roots, **{name: prefix for name, prefix in aliases.items()}}
    reads = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "ctx", None), ast.Store):
            continue
        chain = _dotted(node)
        if not chain:
            continue
        for root, prefix in all_roots.items():
            r = root.split(".")
            if chain[:len(r)] == r and len(chain) > len(r):
                reads.append((prefix + tuple(chain[len(r):]), node.lineno))
    for node in ast.walk(tree):  # <root chain>.get("key")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            chain = _dotted(node.func.value)
            if not chain:
                continue
            for root, prefix in all_roots.items():
                r = root.split(".")
                if chain[:len(r)] == r:
                    reads.append((prefix + tuple(chain[len(r):]) + (node.args[0].value,), node.lineno))
    return reads


def _resolves(path, configs):
    """True if some config declares `path` (stopping at a leaf or a ConfigDict method)."""
    for _, _, config in configs:
        node, ok = config, True
        for i, key in enumerate(path):
            if isinstance(node, ml_collections.ConfigDict):
                if key in node:
                    node = node[key]
                elif key in CONFIG_DICT_METHODS:
                    break
                else:
                    ok = False
                    break
            else:
                break  # past a leaf: attribute of a value (str.startswith, tuple index, ...)
        if ok:
            return True
    return False


def test_every_field_the_code_reads_is_declared(configs):
    missing = []
    for where, roots in READERS.items():
        files = [os.path.join(ROOT, where)] if where.endswith(".py") else sorted(
            glob.glob(os.path.join(ROOT, where, "*.py")))
        for path in files:
            for read, line in _reads_in(path, roots):
                if read and not _resolves(read, configs):
                    missing.append(f"{os.path.relpath(path, ROOT)}:{line}: config.{'.'.join(read)}")
    assert not missing, "read but declared in no config:\n" + "\n".join(sorted(set(missing)))


def test_every_declared_field_is_read(configs):
    """A field nothing reads is an inert switch. Model fields are BertConfig fields; the rest must be read by
    name somewhere in the library or the launchers."""
    sources = []
    for pattern in ("bert_jax/**/*.py", "launch/*.py"):
        sources += [open(p).read() for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)]
    code = "\n".join(sources)
    model_fields = set(BertConfig.__dataclass_fields__)
    unread = set()
    for name, arg, config in configs:
        for path in _leaf_paths(config):
            key = path[-1]
            if path[0] in ("model", "model_overrides"):
                if key not in model_fields:
                    unread.add(f"{name}: {'.'.join(path)} (not a BertConfig field)")
            elif f".{key}" not in code and f'"{key}"' not in code and f"'{key}'" not in code:
                unread.add(f"{name}: {'.'.join(path)}")
            # task.files.* are file names looked up by split name: their parent must be read.
    assert not unread, "declared but read nowhere:\n" + "\n".join(sorted(unread))


_OVERRIDES_SCRIPT = """
import json, sys
from absl import flags
from ml_collections import config_flags
from bert_jax.training.finetune_setup import build_model_config
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.FLAGS(sys.argv)
config = flags.FLAGS.config

class Task:
    name = "stub"
    num_labels = staticmethod(lambda: 3)
    problem_type = staticmethod(lambda: "single_label_classification")
    label_names = staticmethod(lambda: ["a", "b", "c"])

class Tokenizer:
    vocab_size, pad_token_id = 120, 0

model = build_model_config(config, Task(), Tokenizer())
print(json.dumps(dict(hidden=model.hidden_dropout_prob, attention=model.attention_probs_dropout_prob,
                      dtype=model.dtype, labels=model.num_labels,
                      declared_attention=config.model.attention_probs_dropout_prob)))
"""


def _overrides(*args):
    return subprocess.run([sys.executable, "-c", _OVERRIDES_SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


def test_model_overrides_from_the_command_line():
    """`--config.model_overrides.<field>=...` works on every fine-tuning config (it was an empty ConfigDict, so
    any override was an error); unset overrides leave the model's value."""
    proc = _overrides("--config=configs/classify.py:runlocal", "--config.model_overrides.hidden_dropout_prob=0.0",
                      "--config.model_overrides.dtype=bfloat16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (got["hidden"], got["dtype"], got["labels"]) == (0.0, "bfloat16", 3)
    assert got["attention"] == got["declared_attention"]  # not overridden: the model's own value
    typo = _overrides("--config=configs/classify.py", "--config.model_overrides.hiden_dropout_prob=0.0")
    assert typo.returncode != 0 and "hiden_dropout_prob" in typo.stderr
