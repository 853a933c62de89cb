"""Export a bert_jax training run to a Hugging Face directory in one command.

    python -m bert_jax.export --checkpoint=WORKDIR --output=DIR [--step=N] [--model_class=NAME]

WORKDIR is what a bert_jax trainer (pretraining via `bert_jax.main`, or fine-tuning) writes:

    WORKDIR/model_config.json   HF config.json of the model, with `architectures` (and id2label for classifiers)
    WORKDIR/tokenizer/          BertTokenizer.save: vocab.txt, tokenizer.json, tokenizer_config.json
    WORKDIR/checkpoints/<step>/ Orbax items `state` (TrainState: step, params, opt_state, rng) and `data`
    WORKDIR/final_metrics.json  optional; fine-tuning's `best_step` is exported by default when present

`--checkpoint` may also point at `WORKDIR/checkpoints` itself. DIR gets `config.json` (architectures,
id2label), `model.safetensors` and the tokenizer files, so that `transformers.pipeline('fill-mask' |
'text-classification', model=DIR)`, `pipeline('question-answering', model=DIR)` (transformers 4.x; 5.x removed
that pipeline) and `AutoModelFor*.from_pretrained(DIR)` load it.
Only the params are read from the checkpoint (not the optimizer state); either layer layout (scanned or
not) is recognised from the saved tree. Weights are written as float32 by default.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags
from flax import traverse_util

from bert_jax.config import BertConfig
from bert_jax.hf import save_hf_checkpoint
from bert_jax.modeling import MODEL_CLASSES, BertModel, build_model, init_params
from bert_jax.training import paths  # workdirs local or gs:// (etils.epath only; no orbax)

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MODEL_CONFIG = "model_config.json"
TOKENIZER_DIR = "tokenizer"
FINAL_METRICS = "final_metrics.json"


class ExportError(ValueError):
    """The workdir cannot be exported; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------
# Reading the workdir
def find_workdir(path: str) -> Tuple[str, str]:
    """(workdir, its checkpoints directory) for a workdir or its `checkpoints/` directory, local
    (made absolute) or a gs:// URL."""
    path = paths.workdir_path(path)
    if not path.is_dir():
        raise ExportError(f"{path} does not exist or is not a directory; pass a bert_jax workdir "
                          f"(or its {CHECKPOINTS_DIR}/ directory)")
    if (path / CHECKPOINTS_DIR).is_dir():
        return os.fspath(path), os.fspath(path / CHECKPOINTS_DIR)
    parent = path.parent
    if (parent / MODEL_CONFIG).is_file() or path.name == CHECKPOINTS_DIR:
        return os.fspath(parent), os.fspath(path)
    raise ExportError(f"{path} is not a bert_jax workdir: it has no {CHECKPOINTS_DIR}/ directory (written by "
                      f"`python -m bert_jax.main` and the fine-tuning trainer)")


def read_model_config(workdir: str) -> Tuple[BertConfig, str]:
    """The run's BertConfig and its architecture (`architectures[0]` of model_config.json)."""
    path = paths.workdir_path(workdir) / MODEL_CONFIG
    if not path.is_file():
        raise ExportError(
            f"{workdir} has no {MODEL_CONFIG}: it was written by a bert_jax trainer from before export support "
            f"(bert_jax 0.1.0's pretraining and fine-tuning trainers write it at the start of a run). Restarting "
            f"the run with the current bert_jax writes it, or write it by hand: "
            f"BertConfig(...).to_json_file('{path}', architectures=['BertForMaskedLM'])")
    try:
        hf_config = paths.read_json(path)
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from e
    architectures = hf_config.get("architectures") or []
    if not architectures:
        raise ExportError(f"{path} names no architecture (its `architectures` list is empty or missing)")
    # Params are read (and exported) as float32 whatever the run trained in.
    config = BertConfig.from_hf(hf_config, dtype="float32", param_dtype="float32")
    return config, architectures[0]


def model_class_named(name: str) -> type:
    from bert_jax.architectures import HF_CLASS_NAMES
    from bert_jax.modeling import EXTRA_CLASSES
    # Also other families' transformers names (an ELECTRA run's model_config.json says ElectraForPreTraining).
    by_name = {**HF_CLASS_NAMES, **MODEL_CLASSES, **EXTRA_CLASSES,
               **{cls.__name__: cls for cls in MODEL_CLASSES.values()}}
    if name not in by_name:
        raise ExportError(f"unknown architecture {name!r}; bert_jax exports {sorted(MODEL_CLASSES)}")
    return by_name[name]


def select_step(workdir: str, checkpoints_dir: str, step: Optional[int]) -> int:
    """`step` if given, else final_metrics.json's `best_step` (fine-tuning), else the newest checkpoint."""
    steps = sorted(int(d.name) for d in paths.workdir_path(checkpoints_dir).iterdir()
                   if d.name.isdigit() and d.is_dir())
    if not steps:
        raise ExportError(f"no checkpoint in {checkpoints_dir} (the run saved none yet)")
    if step is not None:
        if step not in steps:
            raise ExportError(f"no checkpoint for step {step} in {checkpoints_dir}; it has steps {steps}")
        return step
    metrics_path = paths.workdir_path(workdir) / FINAL_METRICS
    if metrics_path.is_file():
        best = paths.read_json(metrics_path).get("best_step")
        if best is not None:
            if int(best) in steps:
                logger.info("exporting the best checkpoint, step %d (from %s)", best, metrics_path)
                return int(best)
            logger.warning("%s names best_step=%s, which is not among the checkpoints %s; exporting the newest",
                           metrics_path, best, steps)
    return steps[-1]


def saved_param_shapes(checkpoints_dir: str, step: int) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """{param path: shape} of the TrainState saved at `step`, from the checkpoint's metadata (no array read)."""
    from bert_jax.training import checkpoints  # orbax: imported only when exporting
    try:
        tree = checkpoints.saved_state_metadata(checkpoints_dir, step)
    except Exception as e:  # missing or unreadable metadata: a corrupt or partial checkpoint
        raise ExportError(f"cannot read the checkpoint of step {step} in {checkpoints_dir}: {type(e).__name__}: "
                          f"{str(e)[:400]}") from e
    params = tree.get("params") if isinstance(tree, dict) else None
    if not params:
        raise ExportError(f"the checkpoint of step {step} in {checkpoints_dir} holds no `params` (not a bert_jax "
                          f"TrainState?)")
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(params)).items()}


def is_scanned(shapes: Dict[Tuple[str, ...], Tuple[int, ...]]) -> bool:
    """Whether the saved params use the scanned layout (`encoder/layer/<param>` with a leading [layers] axis)
    rather than `encoder/layer/<i>/<param>`; the experiment's model.scan_layers decided it."""
    return any(path[i - 1:i + 1] == ("encoder", "layer") and not path[i + 1].isdigit()
               for path in shapes for i in range(1, len(path) - 1))


def restore_model_params(checkpoints_dir: str, step: int, model: nn.Module, saved: dict, prefix: Tuple[str, ...] = ()):
    """The params of the TrainState saved at `step` (`saved`: their shapes, under `prefix` in the saved
    tree), as `model` builds them."""
    from bert_jax.training import checkpoints  # orbax: imported only when exporting
    # Traced, not compiled; restored onto one device whatever mesh the run saved from.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            jax.eval_shape(lambda: init_params(model)))
    # orbax restores a differently shaped array without complaint (cropped or padded), so a model_config.json
    # that does not describe the saved params would otherwise export garbage.
    wanted = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract).items()}
    problems = [f"{'/'.join(k)}: saved {saved[k]}, model {shape}" for k, shape in wanted.items()
                if k in saved and saved[k] != shape]
    problems += [f"{'/'.join(k)}: not saved" for k in wanted if k not in saved]
    problems += [f"{'/'.join(k)}: saved, not in the model" for k in saved if k not in wanted]
    if problems:
        raise ExportError(f"the params saved at step {step} in {checkpoints_dir} are not those of the "
                          f"{type(model).__name__} that {MODEL_CONFIG} describes; {len(problems)} difference(s): "
                          f"{problems[:5]}")
    for name in reversed(prefix):
        abstract = {name: abstract}
    try:
        restored = checkpoints.restore_params(checkpoints_dir, abstract, step=step)
        for name in prefix:
            restored = restored[name]
        return restored
    except Exception as e:  # orbax raises many types for a missing/corrupt checkpoint
        raise ExportError(f"cannot restore the params of step {step} from {checkpoints_dir}: "
                          f"{type(e).__name__}: {str(e)[:600]}") from e


def convert_head(params, source: nn.Module, target: nn.Module):
    """Params of `source` as `target` expects them: e.g. BertForPreTraining -> BertForMaskedLM drops the
    pooler and the NSP head, -> BertModel keeps the encoder. Raises if `target` needs params `source` lacks."""
    flat = traverse_util.flatten_dict(params)
    if isinstance(source, BertModel) != isinstance(target, BertModel):  # only the bare encoder has no `bert/`
        flat = ({("bert",) + k: v for k, v in flat.items()} if isinstance(source, BertModel)
                else {k[1:]: v for k, v in flat.items() if k[0] == "bert"})
    wanted = traverse_util.flatten_dict(jax.eval_shape(lambda: init_params(target)))
    missing = sorted("/".join(k) for k in wanted if k not in flat)
    if missing:
        raise ExportError(f"cannot export a {type(source).__name__} checkpoint as {type(target).__name__}: it "
                          f"has no {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    return traverse_util.unflatten_dict({k: flat[k] for k in wanted})


def save_tokenizer(tokenizer_dir: str, output: str, max_length: int) -> bool:
    """Copies the run's tokenizer into `output` (AutoTokenizer-loadable), capped at the model's max length."""
    from bert_jax.tokenization import BertTokenizer
    if not paths.workdir_path(tokenizer_dir).is_dir():
        logger.warning("no tokenizer at %s: the export has no vocab, so pipelines will need a tokenizer passed "
                       "explicitly (or use --tokenizer)", tokenizer_dir)
        return False
    tok = BertTokenizer.from_pretrained(tokenizer_dir)  # local or gs://
    BertTokenizer(tok.backend, do_lower_case=tok.do_lower_case, strip_accents=tok.strip_accents,
                  tokenize_chinese_chars=tok.tokenize_chinese_chars,
                  model_max_length=min(tok.model_max_length, max_length)).save(output)
    return True


# ------------------------------------------------------------------------------------------------
def export(checkpoint: str, output: str, step: Optional[int] = None, model_class: Optional[str] = None,
           tokenizer: Optional[str] = None, dtype: str = "float32") -> dict:
    """Writes the HF directory `output` from the workdir (or checkpoints dir) `checkpoint`.
    Returns a summary {step, architecture, output}."""
    if dtype not in ("float32", "bfloat16"):
        raise ExportError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    workdir, checkpoints_dir = find_workdir(checkpoint)
    config, architecture = read_model_config(workdir)
    source = build_model(model_class_named(architecture), config)
    target = build_model(model_class_named(model_class), config) if model_class else source
    chosen = select_step(workdir, checkpoints_dir, step)
    saved = saved_param_shapes(checkpoints_dir, chosen)
    prefix = ()
    if {k[0] for k in saved} == {"generator", "discriminator"}:
        # An ELECTRA pretraining run (bert_jax.training.electra): its discriminator is the model exported.
        prefix = ("discriminator",)
        saved = {k[1:]: v for k, v in saved.items() if k[0] == "discriminator"}
    if is_scanned(saved):
        config = config.replace(scan_layers=True)
        source, target = (build_model(type(m), config) for m in (source, target))
    params = restore_model_params(checkpoints_dir, chosen, source, saved, prefix)
    if type(target) is not type(source):
        params = convert_head(params, source, target)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    hf_config = config.replace(scan_layers=False, param_dtype=dtype)
    save_hf_checkpoint(output, hf_config, params, type(target))
    has_tokenizer = save_tokenizer(tokenizer or os.fspath(paths.workdir_path(workdir) / TOKENIZER_DIR), output,
                                   config.max_position_embeddings)
    from bert_jax.architectures import FAMILIES
    architecture = FAMILIES[config.model_type].classes.get(type(target)) or type(target).__name__
    logger.info("exported %s step %d from %s to %s", architecture, chosen, checkpoints_dir, output)
    return {"step": chosen, "architecture": architecture, "output": os.path.abspath(output),
            "tokenizer": has_tokenizer}


def define_flags(fv: flags.FlagValues) -> None:
    """The command line (absl: --helpfull and --flagfile work), defined on `fv` only when run as a
    program so that importing this module adds no global flags."""
    flags.DEFINE_string("checkpoint", None, "bert_jax workdir, or its checkpoints/ directory.", flag_values=fv)
    flags.DEFINE_string("output", None, "Hugging Face directory to write.", flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: final_metrics.json's best_step, else the newest).",
                         flag_values=fv)
    flags.DEFINE_enum("model_class", None, sorted(MODEL_CLASSES), "Export as this architecture (default: the run's).",
                      flag_values=fv)
    flags.DEFINE_string("tokenizer", None, "Tokenizer directory (default: WORKDIR/tokenizer).", flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the weights.", flag_values=fv)
    flags.mark_flags_as_required(["checkpoint", "output"], flag_values=fv)


def run(fv: flags.FlagValues) -> int:
    """Exports for parsed flags; 0 on success, 2 (message on stderr) on a clear error."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bert_jax").setLevel(logging.INFO)  # ours, not orbax's/absl's INFO chatter
    try:
        summary = export(fv.checkpoint, fv.output, step=fv.step, model_class=fv.model_class,
                         tokenizer=fv.tokenizer, dtype=fv.dtype)
    except (ExportError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str]) -> int:
    """Parses `argv` (without the program name) on a fresh FlagValues and exports; for tests and callers."""
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        fv(["bert_jax.export"] + list(argv))
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(fv)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: sys.exit(run(flags.FLAGS)) if len(argv) == 1 else sys.exit(f"unexpected arguments: {argv[1:]}"))
