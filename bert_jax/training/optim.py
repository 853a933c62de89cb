"""Optimizers and learning-rate schedules for BERT pretraining and fine-tuning, built from optax parts.

* `make_schedule`: linear warmup from 0 to the peak, then linear / polynomial / cosine / constant decay;
  or one-cycle (Cramming's triangle: linear up to the peak at a fraction of training, linear down), or
  trapezoidal / warmup-stable-decay (warmup, constant, linear or 1-sqrt cooldown over a final fraction).
* `accumulation_plan`: a batch-size ramp by gradient accumulation (data batches per optimizer update
  growing over training, the data batch fixed), applied by `make_optimizer` with `optax.MultiSteps`.
* `weight_decay_mask`: decay everything except biases and LayerNorm params (google-research's rule).
* `adamw`: AdamW; `bias_correction=False` is google-research's `AdamWeightDecayOptimizer` exactly.
* `lamb`: NVIDIA's LAMB with the trust ratio taken per layer, also for scanned (`scan_layers=True`)
  params, so that both layer layouts train identically.
* `make_optimizer(cfg)`: all of the above from an `ml_collections.ConfigDict` (see `default_config`).

Step counting with a batch-size ramp (`batch_ramp_from`/`batch_ramp_to` not both 1): `total_steps`
counts data batches (train steps, as without a ramp); by default (`schedule_counts='updates'`) the
learning-rate schedule counts optimizer updates, of which `total_steps` data batches make
`len(accumulation_plan(...))`, so `warmup_steps` counts updates and every `*_fraction` is a fraction of
the updates. With `schedule_counts='data_steps'` the schedule runs over the data steps instead and each
update takes the lr of the data step it starts at (a schedule over compute or wall-clock, as Cramming's).
The schedule `make_optimizer` returns takes the data step and gives the lr of the update it belongs to.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Tuple, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

SCHEDULES = ("linear", "polynomial", "cosine", "constant", "one_cycle", "trapezoidal")
DECAY_SHAPES = ("linear", "1-sqrt")  # the cooldown of 'trapezoidal'
SCHEDULE_COUNTS = ("updates", "data_steps")  # what the schedule's steps are, with a batch-size ramp

OPTIMIZERS = ("adamw", "adamw_google", "lamb")
Mask = Union[None, Any, Callable[[Any], Any]]


# ------------------------------------------------------------------------------------------ schedules
def _check_fraction(name: str, value, lo_open: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not 0.0 <= value <= 1.0 or (lo_open and value == 0.0)):
        raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}0, 1], got {value!r}")
    return float(value)


def make_schedule(kind: str, peak_lr: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0,
                  power: float = 1.0, *, peak_fraction: float = 0.5, initial_lr_fraction: float = 0.0,
                  decay_fraction: float = 0.2, decay_shape: str = "linear") -> optax.Schedule:
    """lr(step), `step` counting optimizer updates. With `T = total_steps`, `W = warmup_steps`:

    * 'linear', 'polynomial', 'cosine', 'constant': `peak_lr * step / W` during warmup, then decay from
      `peak_lr` at step `W` to `end_lr` at `T` (and `end_lr` after): linear, `(1 - t) ** power`,
      half-period cosine, or none ('constant' stays at `peak_lr`; `end_lr` unused).
    * 'one_cycle' (Cramming's "triangle"): with `P = peak_fraction * T`, linear from
      `initial_lr_fraction * peak_lr` at step 0 up to `peak_lr` at step `P`, then linear down to
      `end_lr` at `T` (and `end_lr` after). The rise is its warmup: `W` must be 0.
      Cramming's final recipe: peak_fraction 0.75, initial_lr_fraction 0.25, end_lr 0.
    * 'trapezoidal' (warmup-stable-decay): warmup as above, `peak_lr` until `C = T - decay_fraction * T`,
      then a cooldown to `end_lr` at `T`: `end_lr + (peak_lr - end_lr) * (1 - t)` ('linear') or
      `... * (1 - sqrt(t))` ('1-sqrt', Hagele et al. 2024), `t = (step - C) / (T - C)`. Needs `W <= C`.

    The decay of the first four runs over the steps after warmup (as transformers'
    `get_linear_schedule_with_warmup`); google-research's BERT decays over all `total_steps` and lets
    warmup override the start, which differs from this by at most `peak_lr * warmup_steps / total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: unknown kind {kind!r}; choose from {SCHEDULES}")
    for name, value in (("peak_lr", peak_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if kind == "polynomial" and not (isinstance(power, numbers.Real) and power > 0):
        raise ValueError(f"power must be > 0, got {power!r}")
    peak, end, warmup, total = float(peak_lr), float(end_lr), int(warmup_steps), int(total_steps)
    if kind == "one_cycle":
        if warmup:
            raise ValueError(f"warmup_steps must be 0 for the 'one_cycle' schedule (its rise to the peak at "
                             f"peak_fraction * total_steps is the warmup), got {warmup}")
        return _one_cycle(peak, end, total, _check_fraction("peak_fraction", peak_fraction),
                          _check_fraction("initial_lr_fraction", initial_lr_fraction))
    if kind == "trapezoidal":
        if decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape: unknown {decay_shape!r}; choose from {DECAY_SHAPES}")
        cooldown = _check_fraction("decay_fraction", decay_fraction) * total
        if warmup > total - cooldown:
            raise ValueError(f"warmup_steps ({warmup}) must end before the cooldown starts at step "
                             f"{total - cooldown:g} (total_steps={total}, decay_fraction={decay_fraction})")
        return _trapezoidal(peak, end, total, warmup, cooldown, decay_shape)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup, 1)
        t = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
        if kind == "linear":
            decayed = end + (peak - end) * (1.0 - t)
        elif kind == "polynomial":
            decayed = end + (peak - end) * (1.0 - t) ** power
        elif kind == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        else:
            decayed = jnp.full_like(t, peak)
        return jnp.where(step < warmup, warm, decayed)

    return schedule


def _one_cycle(peak: float, end: float, total: int, peak_fraction: float, initial: float) -> optax.Schedule:
    top = peak_fraction * total  # a float: Cramming's triangle puts the peak at a fraction, not a step

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        rising = peak * (initial + (1.0 - initial) * step / max(top, 1e-9))
        t = jnp.clip((step - top) / max(total - top, 1e-9), 0.0, 1.0)
        return jnp.where(step < top, rising, end + (peak - end) * (1.0 - t))

    return schedule


def _trapezoidal(peak: float, end: float, total: int, warmup: int, cooldown: float,
                 shape: str) -> optax.Schedule:
    start = total - cooldown

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        t = jnp.clip((step - start) / max(cooldown, 1e-9), 0.0, 1.0)
        kept = 1.0 - (jnp.sqrt(t) if shape == "1-sqrt" else t)
        decayed = jnp.where(step < start, peak, end + (peak - end) * kept)
        return jnp.where(step < warmup, peak * step / max(warmup, 1), decayed)

    return schedule


# ------------------------------------------------------------------------------------ batch-size ramp
def accumulation_plan(total_steps: int, ramp_from: int, ramp_to: int, ramp_fraction: float) -> np.ndarray:
    """Data batches per optimizer update, one entry per update, for `total_steps` data batches.

    The update that starts at data step `s` accumulates `round(ramp_from + (ramp_to - ramp_from) *
    min(s / (ramp_fraction * total_steps), 1))` batches (`ramp_to` from the start when
    `ramp_fraction` is 0), so the effective batch grows linearly over the first `ramp_fraction` of
    the data and stays at `ramp_to` data batches after; the last update takes what is left (fewer
    batches) so that training ends on an update. Sums to `total_steps`."""
    for name, value in (("batch_ramp_from", ramp_from), ("batch_ramp_to", ramp_to), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    fraction = _check_fraction("batch_ramp_fraction", ramp_fraction)
    span = fraction * total_steps
    plan, step = [], 0
    while step < total_steps:
        progress = min(step / span, 1.0) if span > 0 else 1.0
        k = int(round(ramp_from + (ramp_to - ramp_from) * progress))
        k = max(1, min(k, total_steps - step))
        plan.append(k)
        step += k
    return np.asarray(plan, np.int32)


def with_accumulation(tx: optax.GradientTransformation, plan: np.ndarray) -> optax.GradientTransformation:
    """`tx` applied once per `plan[u]` calls (update `u`), to the mean of the gradients passed in those
    calls (`optax.MultiSteps`); the calls in between return zero updates. Calls after the plan's
    last update keep its size."""
    # NumPy tables, made constants where traced (a captured device array would be pinned to one device).
    ks, last = np.asarray(plan, np.int32), len(plan) - 1
    return optax.MultiSteps(tx, every_k_schedule=lambda update: jnp.asarray(ks)[jnp.minimum(update, last)]
                            ).gradient_transformation()


def update_starts(plan: np.ndarray) -> np.ndarray:
    """The data step at which each update of `plan` starts accumulating."""
    return np.concatenate([[0], np.cumsum(plan)[:-1]]).astype(np.int32)


def per_data_step(schedule: optax.Schedule, plan: np.ndarray) -> optax.Schedule:
    """lr(data step) of a `schedule` over updates: the lr of the update data step `step` belongs to."""
    starts = update_starts(plan)
    return lambda step: schedule(jnp.searchsorted(jnp.asarray(starts), jnp.asarray(step, jnp.int32), side="right") - 1)


def at_update_starts(schedule: optax.Schedule, plan: np.ndarray) -> optax.Schedule:
    """lr(update) of a `schedule` over data steps: its value at the data step where the update starts."""
    starts, last = update_starts(plan), len(plan) - 1
    return lambda update: schedule(jnp.asarray(starts)[jnp.minimum(update, last)])


# ---------------------------------------------------------------------------------------- param paths
def _names(path) -> Tuple[str, ...]:
    """Dict keys / sequence indices of a key path as strings (attribute keys of boxes are skipped)."""
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            out.append(str(k.key))
    return tuple(out)


def is_scanned_layer_path(names: Tuple[str, ...]) -> bool:
    """True for leaves of the scanned layer stack: `.../encoder/layer/<not a digit>/...`."""
    return any(names[i] == "encoder" and names[i + 1] == "layer" and not names[i + 2].isdigit()
               for i in range(len(names) - 2))


def decays(names: Tuple[str, ...]) -> bool:
    """google-research's rule: no weight decay for LayerNorm params and biases; everything else
    (kernels, embeddings) decays."""
    return not (any("LayerNorm" in n or "layer_norm" in n for n in names) or (names and names[-1] == "bias"))


def weight_decay_mask(params):
    """Tree of bools like `params`: True where weight decay applies. Looks at paths only (never the
    values), so it works for either layer layout, for `jax.ShapeDtypeStruct` leaves and as a callable
    `mask=` of optax."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(_names(path)), params)


def param_count(params, non_embedding: bool = False) -> int:
    """Number of parameters; `non_embedding=True` leaves out embedding tables (leaves named `embedding`)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return int(sum(math.prod(np.shape(x)) for path, x in leaves
                   if not (non_embedding and _names(path)[-1:] == ("embedding",))))


# ------------------------------------------------------------------------------------ transformations
class ScaleByAdamNoBiasCorrectionState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_adam_no_bias_correction(b1: float = 0.9, b2: float = 0.999,
                                     eps: float = 1e-6) -> optax.GradientTransformation:
    """Adam's direction without bias correction: `m / (sqrt(v) + eps)` with `m`, `v` the raw moving
    averages (google-research BERT's `AdamWeightDecayOptimizer`)."""

    def init_fn(params):
        return ScaleByAdamNoBiasCorrectionState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                                                nu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, ScaleByAdamNoBiasCorrectionState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_trust_ratio_per_layer(
        is_stacked: Callable[[Tuple[str, ...]], bool] = is_scanned_layer_path) -> optax.GradientTransformation:
    """LAMB's trust ratio `||param|| / ||update||` (1 where either norm is 0), one per layer.

    A leaf whose path satisfies `is_stacked` holds all layers along its leading axis (the scanned
    layout): its norms are taken per slice of that axis, so each layer gets its own ratio, exactly as
    with the unrolled layout. Other leaves get one ratio each (as `optax.scale_by_trust_ratio`)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def scale(path, update, param):
        stacked = is_stacked(_names(path)) and update.ndim >= 1
        axes = tuple(range(1, update.ndim)) if stacked else None

        def norm(x):
            n = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes))
            return n.reshape(n.shape + (1,) * (update.ndim - n.ndim))

        param_norm, update_norm = norm(param), norm(update)
        ok = (param_norm > 0) & (update_norm > 0)
        ratio = jnp.where(ok, param_norm / jnp.where(ok, update_norm, 1.0), 1.0)
        return (update * ratio).astype(update.dtype)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_trust_ratio_per_layer needs `params` (tx.update(grads, state, params))")
        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


# -------------------------------------------------------------------------------------------- optimizers
def adamw(schedule: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
          weight_decay: float = 0.01, bias_correction: bool = True,
          mask: Mask = weight_decay_mask) -> optax.GradientTransformation:
    """AdamW: `param -= lr * (adam_direction + weight_decay * param)` (decay only where `mask`).

    With `bias_correction=True` this is `optax.adamw`; with False it is google-research BERT's
    `AdamWeightDecayOptimizer`: `m / (sqrt(v) + eps)` on the uncorrected moments."""
    direction = (optax.scale_by_adam(b1=b1, b2=b2, eps=eps) if bias_correction
                 else scale_by_adam_no_bias_correction(b1=b1, b2=b2, eps=eps))
    return optax.chain(direction, optax.add_decayed_weights(weight_decay, mask),
                       optax.scale_by_learning_rate(schedule))


def lamb(schedule: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.01, mask: Mask = weight_decay_mask,
         scanned_layers_axis: bool = True) -> optax.GradientTransformation:
    """NVIDIA's LAMB: bias-corrected Adam direction + `weight_decay * param` (where `mask`), scaled by
    the trust ratio `||param|| / ||update||` of each layer, then by the learning rate.

    `scanned_layers_axis=True`: leaves of a scanned layer stack (`encoder/layer/<name>`) get one ratio
    per layer (slice of the leading axis), so scanned and unrolled params train identically; with
    False every leaf gets one ratio (`optax.lamb`)."""
    is_stacked = is_scanned_layer_path if scanned_layers_axis else (lambda names: False)
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.add_decayed_weights(weight_decay, mask),
                       scale_by_trust_ratio_per_layer(is_stacked), optax.scale_by_learning_rate(schedule))


# ------------------------------------------------------------------------------------------ from config
def default_config() -> ml_collections.ConfigDict:
    """Every field `make_optimizer` reads, with its default (google-research BERT pretraining's,
    except the learning rate). A `warmup_fraction` >= 0 overrides `warmup_steps`; None or negative
    (-1.0, which keeps the field a float in a ConfigDict) leaves `warmup_steps` in charge."""
    return ml_collections.ConfigDict({
        "optimizer": "adamw",          # 'adamw' | 'adamw_google' (no bias correction) | 'lamb'
        "learning_rate": 1e-4,         # peak
        "warmup_steps": 0,             # int
        "warmup_fraction": -1.0,       # of total_steps, in [0, 1]; overrides warmup_steps; < 0 = unset
        "total_steps": 1000,
        "schedule": "linear",          # 'linear' | 'polynomial' | 'cosine' | 'constant' | 'one_cycle' | 'trapezoidal'
        "power": 1.0,                  # for 'polynomial'
        "peak_fraction": 0.5,          # 'one_cycle': where the peak is, as a fraction of the updates
        "initial_lr_fraction": 0.0,    # 'one_cycle': lr at step 0 as a fraction of the peak
        "decay_fraction": 0.2,         # 'trapezoidal': the final fraction of the updates spent cooling down
        "decay_shape": "linear",       # 'trapezoidal' cooldown: 'linear' | '1-sqrt'
        "end_learning_rate": 0.0,
        "weight_decay": 0.01,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-6,
        "grad_clip_norm": 1.0,         # global-norm clipping before the optimizer; 0 or None = off
        # Batch-size ramp by gradient accumulation: data batches per optimizer update grow linearly from
        # batch_ramp_from to batch_ramp_to over the first batch_ramp_fraction of the data steps
        # (`accumulation_plan`). 1, 1: one update per data batch (no wrapper: the optimizer is as without).
        "batch_ramp_from": 1,
        "batch_ramp_to": 1,
        "batch_ramp_fraction": 0.0,
        # With a ramp: the schedule's steps are optimizer 'updates' or 'data_steps' (see the module docstring).
        "schedule_counts": "updates",
    })


def _number(cfg, name: str, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    value = cfg.get(name, default_config()[name])
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"optim.{name} must be a number, got {value!r}")
    value = float(value)
    bad = (not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo)
           or (hi_open and value == hi))
    if bad:
        raise ValueError(f"optim.{name} must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {value!r}")
    return value


def _int(cfg, name: str, lo: int):
    value = cfg.get(name, default_config()[name])
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"optim.{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def make_optimizer(cfg: ml_collections.ConfigDict) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """`(tx, schedule)` from `cfg` (fields: `default_config()`; missing ones take their defaults).

    `tx` clips the gradients' global norm to `grad_clip_norm` (when set), then applies the optimizer;
    the weight decay mask is `weight_decay_mask`. Warmup: `round(warmup_fraction * total_steps)` when
    `warmup_fraction` >= 0, else `warmup_steps` (None: 0). Gradient accumulation over micro-batches of
    one batch is the caller's (call `tx.update` once per data batch). Bad values raise `ValueError`
    naming the field.

    Batch-size ramp (`batch_ramp_from`, `batch_ramp_to` not both 1): `tx` is wrapped in
    `optax.MultiSteps` following `accumulation_plan(total_steps, ...)`: call `tx.update` once per data
    batch (`total_steps` counts those); every `plan[u]` calls it clips and applies the optimizer to the
    mean of those batches' gradients (other calls return zero updates). The learning-rate schedule then
    runs over the `len(plan)` optimizer updates (`warmup_steps` counts updates; `warmup_fraction`,
    `peak_fraction`, `decay_fraction` are fractions of the updates) or, with `schedule_counts=
    'data_steps'`, over the `total_steps` data steps (update `u` takes the lr of the data step it starts
    at); the returned `schedule` maps a data step to the learning rate of the update it belongs to (what
    the train step logs)."""
    optimizer = cfg.get("optimizer", default_config().optimizer)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optim.optimizer: unknown {optimizer!r}; choose from {OPTIMIZERS}")
    kind = cfg.get("schedule", default_config().schedule)
    if kind not in SCHEDULES:
        raise ValueError(f"optim.schedule: unknown {kind!r}; choose from {SCHEDULES}")
    decay_shape = cfg.get("decay_shape", default_config().decay_shape)
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"optim.decay_shape: unknown {decay_shape!r}; choose from {DECAY_SHAPES}")
    lr = _number(cfg, "learning_rate", 0.0)
    end_lr = _number(cfg, "end_learning_rate", 0.0)
    power = _number(cfg, "power", 0.0, lo_open=True)
    peak_fraction = _number(cfg, "peak_fraction", 0.0, 1.0)
    initial_lr_fraction = _number(cfg, "initial_lr_fraction", 0.0, 1.0)
    decay_fraction = _number(cfg, "decay_fraction", 0.0, 1.0)
    data_steps = _int(cfg, "total_steps", 1)
    ramp_from, ramp_to = _int(cfg, "batch_ramp_from", 1), _int(cfg, "batch_ramp_to", 1)
    ramp_fraction = _number(cfg, "batch_ramp_fraction", 0.0, 1.0)
    counts = cfg.get("schedule_counts", default_config().schedule_counts)
    if counts not in SCHEDULE_COUNTS:
        raise ValueError(f"optim.schedule_counts: unknown {counts!r}; choose from {SCHEDULE_COUNTS}")
    plan = None if ramp_from == ramp_to == 1 else accumulation_plan(data_steps, ramp_from, ramp_to, ramp_fraction)
    by_updates = plan is not None and counts == "updates"
    total = len(plan) if by_updates else data_steps  # the steps the schedule counts
    counted = "optim.total_steps" if not by_updates else (
        f"the {total} optimizer updates that optim.total_steps={data_steps} data steps make with the batch ramp")
    fraction = cfg.get("warmup_fraction")
    if fraction is not None and not (isinstance(fraction, numbers.Real) and not isinstance(fraction, bool)
                                     and fraction < 0):
        warmup = int(round(_number(cfg, "warmup_fraction", 0.0, 1.0) * total))  # set: overrides warmup_steps
    elif cfg.get("warmup_steps") is None:
        warmup = 0
    else:
        warmup = _int(cfg, "warmup_steps", 0)
        if warmup > total:
            raise ValueError(f"optim.warmup_steps ({warmup}) must be <= {counted} ({total})")
    if kind == "one_cycle" and warmup:
        raise ValueError(f"optim.schedule='one_cycle' rises to its peak at optim.peak_fraction of training: set "
                         f"optim.warmup_steps=0 and optim.warmup_fraction=-1 (warmup is {warmup} steps)")
    if kind == "trapezoidal" and warmup > total - decay_fraction * total:
        raise ValueError(f"optim.warmup_steps ({warmup}) must end before the cooldown of the last "
                         f"optim.decay_fraction={decay_fraction} of {counted} ({total})")
    weight_decay = _number(cfg, "weight_decay", 0.0)
    b1 = _number(cfg, "b1", 0.0, 1.0, hi_open=True)
    b2 = _number(cfg, "b2", 0.0, 1.0, hi_open=True)
    eps = _number(cfg, "eps", 0.0)
    clip = cfg.get("grad_clip_norm", default_config().grad_clip_norm)
    clip = 0.0 if clip is None else _number(cfg, "grad_clip_norm", 0.0)

    schedule = make_schedule(kind, lr, total, warmup, end_lr=end_lr, power=power, peak_fraction=peak_fraction,
                             initial_lr_fraction=initial_lr_fraction, decay_fraction=decay_fraction,
                             decay_shape=decay_shape)
    if plan is not None and not by_updates:  # over data steps: update u takes the lr where it starts
        schedule = at_update_starts(schedule, plan)
    if optimizer == "lamb":
        tx = lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        tx = adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                   bias_correction=optimizer == "adamw")
    tx = optax.chain(optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(), tx)
    if plan is None:
        return tx, schedule
    return with_accumulation(tx, plan), per_data_step(schedule, plan)
