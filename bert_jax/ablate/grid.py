"""The bench's grid: variants resolved into pretraining configs, equal budgets, FLOPs per token.

A variant is a list of specs (see configs/ablate.py): overrides "model.norm_position=pre" and,
optionally first, a config file "configs/cramming.py:runlocal" that replaces the base. A variant that
cannot run here (a missing config file, a field this BertConfig lacks, an objective whose FLOPs are not
counted) resolves with `unavailable` set to the reason instead of stopping the bench.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import ml_collections

from bert_jax import flops
from bert_jax.config import BertConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COUNTED_OBJECTIVES = ("mlm", "mlm_nsp")  # what `bert_jax.flops` counts (MLM head; NSP's is per sequence)


@dataclasses.dataclass
class Variant:
    name: str
    specs: Tuple[str, ...]
    config: Optional[ml_collections.ConfigDict]  # resolved pretraining config (no budget, seed or vocab yet)
    unavailable: Optional[str] = None  # why it cannot run (then `config` is None)


# ------------------------------------------------------------------------------ config files
def load_config_file(spec: str, root: str = ROOT):
    """`get_config(arg)` of "path/to/file.py[:arg]" (path relative to `root` unless absolute)."""
    path, _, arg = spec.partition(":")
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"bert_jax_ablate_{os.path.basename(path)[:-3]}", full)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg)")
    return module.get_config(arg)


def load_bench(spec: str) -> ml_collections.ConfigDict:
    """The bench config (configs/ablate.py's shape): base, variants, shared; checked."""
    bench = load_config_file(spec)
    for field in ("base", "variants"):
        if field not in bench:
            raise ValueError(f"{spec}: the bench config needs `{field}` (see configs/ablate.py)")
    pairs = variant_specs(bench)
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError(f"{spec}: a variant name appears twice in {[name for name, _ in pairs]}")
    for name, specs in pairs:
        if isinstance(specs, str) or not all(isinstance(s, str) for s in specs):
            raise ValueError(f"{spec}: variant {name!r} must be a list of spec strings, got {specs!r}")
        if not name or any(c in name for c in "/\\ ,") or name.startswith("."):
            raise ValueError(f"{spec}: variant name {name!r} must be non-empty, without '/', '\\\\', ',' or spaces "
                             "(it names a directory)")
    return bench


def variant_specs(bench: ml_collections.ConfigDict) -> List[Tuple[str, list]]:
    """[(name, specs)] of the bench's `variants`: a list of pairs (table order) or a mapping (sorted)."""
    variants = bench.variants
    if isinstance(variants, (dict, ml_collections.ConfigDict)):
        return [(name, list(specs)) for name, specs in variants.items()]
    try:
        return [(str(name), list(specs)) for name, specs in variants]
    except (TypeError, ValueError):
        raise ValueError(f"the bench's variants must be [(name, [spec, ...]), ...], got {variants!r}") from None


# ---------------------------------------------------------------------------------- overrides
def is_config_file_spec(spec: str) -> bool:
    return "=" not in spec.split(":", 1)[0] and spec.split(":", 1)[0].endswith(".py")


def parse_override(spec: str) -> Tuple[str, object]:
    """"model.norm_position=pre" -> ("model.norm_position", "pre"); values are Python literals
    (0.3, False, (1, -1, 1), "x"), else the bare string."""
    key, sep, raw = spec.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ValueError(f"override {spec!r} must be dotted.key=value (e.g. model.norm_position=pre)")
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def apply_override(config: ml_collections.ConfigDict, key: str, value) -> None:
    """Sets dotted `key` of `config` to `value`. A `model.<field>` key the config lacks is added when
    `BertConfig` has that field (switches newer than the config file); any other missing key, or a
    model field BertConfig lacks, is a ValueError naming it."""
    *parents, leaf = key.split(".")
    target = config
    for i, parent in enumerate(parents):
        if parent not in target or not isinstance(target[parent], ml_collections.ConfigDict):
            raise ValueError(f"override {key}: the config has no section {'.'.join(parents[:i + 1])!r}")
        target = target[parent]
    if leaf not in target:
        if parents != ["model"]:
            raise ValueError(f"override {key}: the config has no key {key!r}")
        if leaf not in {f.name for f in dataclasses.fields(BertConfig)}:
            raise ValueError(f"override {key}: BertConfig has no field {leaf!r} in this version of bert_jax")
        with target.unlocked():
            target[leaf] = value
        return
    old = target[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if old is not None and value is not None and type(old) is not type(value):
        raise ValueError(f"override {key}={value!r}: expected a {type(old).__name__} like the config's {old!r}")
    with target.unlocked():  # replaced: also a None default (ConfigDict would keep None's type)
        del target[leaf]
        target[leaf] = value


def get_dotted(config: ml_collections.ConfigDict, key: str, default=None):
    target = config
    for part in key.split("."):
        if not isinstance(target, ml_collections.ConfigDict) or part not in target:
            return default
        target = target[part]
    return target


def max_predictions(seq_len: int, masked_lm_prob: float) -> int:
    """configs/pretrain.py's rule: the masked positions a sequence can hold, round(seq * rate + 0.5)."""
    return max(1, round(seq_len * masked_lm_prob + 0.5))


def resolve(name: str, specs: Sequence[str], base: ml_collections.ConfigDict, shared: Sequence[str] = (),
            common: Sequence[str] = (), eval_like_base: bool = False) -> Variant:
    """The variant's pretraining config: its config file (else a copy of `base`), the `shared` keys
    from `base` unless the variant sets them, its overrides, then the bench-wide `common` overrides.
    `eval_like_base`: the variant evaluates on the base's batches (`evaluate_like`), so that MLM accuracies
    of variants with other masking rates or objectives are over the same masked positions.
    A variant whose specs cannot apply (a missing file, an unknown key, a mistyped value, a model
    BertConfig rejects) comes back with `unavailable` set to why; malformed `common` overrides raise
    (`resolve_all` checks them first)."""
    specs = tuple(specs)
    try:
        config = copy.deepcopy(base)
        overrides = list(specs)
        if overrides and is_config_file_spec(overrides[0]):
            config = load_config_file(overrides.pop(0))
            if not isinstance(config, ml_collections.ConfigDict) or "model" not in config or "data" not in config:
                raise ValueError(f"{specs[0]} is not a pretraining config (no model / data sections)")
        for spec in overrides:
            if is_config_file_spec(spec):
                raise ValueError(f"config file spec {spec!r} must come first in the variant's list")
        parsed = [parse_override(s) for s in overrides]
    except Exception as e:  # a missing recipe file, a config that needs fields not yet here, a typo
        return Variant(name, specs, None, unavailable=f"{type(e).__name__}: {e}")
    explicit = {key for key, _ in parsed} | {key for key, _ in map(parse_override, common)}
    try:  # a recipe config may lack a key or type it differently: that variant cannot run, the others can
        for key in shared:
            value = get_dotted(base, key)
            if key not in explicit and value is not None and get_dotted(config, key) is not None:
                apply_override(config, key, copy.deepcopy(value))
        for key, value in parsed:
            apply_override(config, key, value)
        for key, value in map(parse_override, common):
            apply_override(config, key, value)
    except ValueError as e:
        return Variant(name, specs, None, unavailable=str(e))
    if "data.max_predictions" not in explicit:
        config.data.max_predictions = max_predictions(config.data.seq_len, config.data.masked_lm_prob)
    if eval_like_base:
        evaluate_like(config, base)
    problem = check_buildable(config)
    return Variant(name, specs, None if problem else config, unavailable=problem)


def evaluate_like(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
    """Makes `config` evaluate on `base`'s evaluation batches (text sources): base's masking rate, masked
    positions per sequence and sentence pairing (`config.data.eval_*`). With the shared data keys (corpus,
    vocab, sequence length, eval split) and the seed, the batches are then the same examples with the same
    masks for every variant."""
    from bert_jax.training.data import text_mode
    d, b = config.data, base.data
    # Set only where the variant's own batches would differ: BERT as-is stays the base config, key for key.
    if d.masked_lm_prob != b.masked_lm_prob:
        d.eval_masked_lm_prob = float(b.masked_lm_prob)
    if d.max_predictions != b.max_predictions:
        d.eval_max_predictions = int(b.max_predictions)
    if text_mode(config) != text_mode(base):
        d.eval_mode = text_mode(base)


def check_buildable(config: ml_collections.ConfigDict, vocab_size: int = 1000) -> Optional[str]:
    """Why `config.model` is not a valid BertConfig here (a field or value this version lacks), or None."""
    try:
        model_config(config, vocab_size)
    except (TypeError, ValueError) as e:
        return f"model config: {e}"
    return None


def model_config(config: ml_collections.ConfigDict, vocab_size: int, pad_token_id: int = 0) -> BertConfig:
    """The BertConfig the trainer builds for `config` (`trainer.build_model_config`'s rule)."""
    model = config.model.to_dict()
    return BertConfig(**{**model, "vocab_size": vocab_size, "pad_token_id": pad_token_id,
                         "max_position_embeddings": max(model.get("max_position_embeddings", 512),
                                                        config.data.seq_len)})


# ------------------------------------------------------------------------------------- FLOPs
def flops_per_token(config: BertConfig, seq_len: int, max_predictions_per_seq: int) -> float:
    """Training model FLOPs per token of the pretraining step (`bert_jax.flops.flops_per_token`: the gated
    MLP's second projection, the bias / norm switches, sliding-window layers and the sparse MLM head). The
    NSP head and pooler run once per sequence (2 hidden^2 FLOPs per sequence, < 0.1% here) and are left
    out, as `bert_jax.flops` does."""
    return flops.flops_per_token(config, seq_len, max_predictions_per_seq / seq_len, training=True)


def step_flops(config: ml_collections.ConfigDict, vocab_size: int) -> float:
    """Model FLOPs of one pretraining step of `config` over its global batch."""
    if config.get("objective", "mlm_nsp") not in COUNTED_OBJECTIVES:
        raise ValueError(f"objective={config.objective!r}: FLOPs are counted for {', '.join(COUNTED_OBJECTIVES)} only "
                         "(use --budget_seconds)")
    d = config.data
    return flops_per_token(model_config(config, vocab_size), d.seq_len, d.max_predictions) * d.seq_len * d.global_batch_size


@dataclasses.dataclass(frozen=True)
class Budget:
    """Equal budget per variant: wall-clock seconds of training, or training FLOPs."""
    seconds: float = 0.0
    flops: float = 0.0

    def __post_init__(self):
        for name in ("seconds", "flops"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 or math.isinf(value):
                raise ValueError(f"budget_{name} must be a finite number >= 0, got {value!r}")
        if (self.seconds > 0) == (self.flops > 0):
            raise ValueError("set exactly one of --budget_seconds and --budget_flops (> 0); got "
                             f"budget_seconds={self.seconds}, budget_flops={self.flops}")

    def describe(self) -> str:
        return f"{self.seconds:g} s of training" if self.seconds else f"{self.flops:.3g} training FLOPs"


# A seconds budget lays the schedule over this fraction of the steps the calibration says fit in it: the
# schedule then ends (decayed) just inside the budget even when steps run a little slower than calibrated.
SCHEDULE_FIT_FRACTION = 0.95


def lay_schedule_over(config: ml_collections.ConfigDict, steps: int) -> None:
    """Makes `config` train `steps` steps with its schedule laid over them (warmup capped at half)."""
    config.optim.total_steps = steps
    if config.get("total_steps") != steps:  # a config whose total_steps is not a reference to optim's
        config.total_steps = steps
    if config.optim.get("warmup_steps", 0) >= steps:
        config.optim.warmup_steps = steps // 2


def steps_in_seconds(seconds: float, seconds_per_step: float) -> int:
    """Steps whose schedule a `seconds` budget holds at the calibrated `seconds_per_step` (>= 2)."""
    if not seconds_per_step > 0:
        raise ValueError(f"calibrated seconds per step must be > 0, got {seconds_per_step!r}")
    return max(2, int(SCHEDULE_FIT_FRACTION * seconds / seconds_per_step))


def apply_budget(config: ml_collections.ConfigDict, budget: Budget, vocab_size: int,
                 seconds_per_step: Optional[float] = None) -> ml_collections.ConfigDict:
    """A copy of `config` that trains for `budget`:
      * seconds -> `train_seconds` (the loop stops at the first step past it). With `seconds_per_step`
        (the variant's calibrated step time) the schedule is laid over the steps that fit
        (`steps_in_seconds`), so every variant's learning rate decays within the budget; without it
        total_steps stays and the schedule is the config's, cut where the budget ends.
      * FLOPs -> total_steps = floor(budget / step FLOPs) (the schedule ends at the budget) with the
        training clock logged (`train_seconds=inf`)."""
    config = copy.deepcopy(config)
    if "train_seconds" not in config:
        with config.unlocked():
            config.train_seconds = 0.0
    if budget.seconds:
        config.train_seconds = float(budget.seconds)
        if seconds_per_step is not None:
            lay_schedule_over(config, steps_in_seconds(budget.seconds, seconds_per_step))
        return config
    steps = int(budget.flops // step_flops(config, vocab_size))
    if steps < 1:
        raise ValueError(f"budget_flops={budget.flops:.3g} is less than one step ({step_flops(config, vocab_size):.3g} "
                         "FLOPs)")
    lay_schedule_over(config, steps)
    config.train_seconds = float("inf")
    return config


def with_common(bench: ml_collections.ConfigDict, common: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of the bench whose base has the bench-wide overrides `common` applied (what the shared
    vocab is trained for and the shared keys are taken from). Malformed overrides raise ValueError."""
    bench = copy.deepcopy(bench)
    for key, value in map(parse_override, common):
        apply_override(bench.base, key, value)
    return bench


def resolve_all(bench: ml_collections.ConfigDict, names: Optional[Sequence[str]] = None,
                common: Sequence[str] = ()) -> List[Variant]:
    """The selected variants (all, in the bench's order, when `names` is empty) resolved, with the
    bench-wide overrides `common` applied last (pass the bench through `with_common` too)."""
    variants: Dict[str, list] = dict(variant_specs(bench))
    names = list(names) if names else list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; the bench has {list(variants)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--variants names a variant twice: {names}")
    for spec in common:
        parse_override(spec)  # malformed bench-wide overrides are the caller's error, not a variant's
    shared = list(bench.get("shared", []))
    eval_like_base = bool(bench.get("eval_like_base", False))
    return [resolve(n, variants[n], bench.base, shared, common, eval_like_base) for n in names]
