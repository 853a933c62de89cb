"""Jittable pretraining train/eval steps: MLM (+ NSP) with sparse MLM logits, gradient
accumulation over micro-batches, non-finite handling.

Losses are normalised by the whole batch's target count before the micro-batch split, so k
micro-batches of b rows produce the same gradient as one batch of k·b rows.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    step: Array
    params: Any
    opt_state: Any
    rng: Array


def pretraining_sums(model, params, batch: Dict[str, Array], rng: Array, deterministic: bool) -> Dict[str, Array]:
    """Unnormalised MLM/NSP sums for one (micro-)batch."""
    kwargs = dict(masked_positions=batch["masked_lm_positions"], deterministic=deterministic)
    if not deterministic:
        kwargs["rngs"] = {"dropout": rng}
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                      **kwargs)
    mlm_logits = getattr(out, "prediction_logits", None)
    if mlm_logits is None:
        mlm_logits = out.logits
    ids, weights = batch["masked_lm_ids"], batch["masked_lm_weights"].astype(jnp.float32)
    # Invalid ids (counted by the loop's data checks) are left out, not gathered out of bounds into NaN.
    valid_ids = (ids >= 0) & (ids < mlm_logits.shape[-1])
    ids, weights = jnp.where(valid_ids, ids, 0), jnp.where(valid_ids, weights, 0.0)
    log_probs = jax.nn.log_softmax(mlm_logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    sums = {"mlm_nll": jnp.sum(nll * weights),
            "mlm_correct": jnp.sum((jnp.argmax(mlm_logits, -1) == ids) * weights)}
    nsp_logits = getattr(out, "seq_relationship_logits", None)
    if nsp_logits is not None:
        labels = batch["next_sentence_labels"].reshape(-1).astype(jnp.int32)
        valid_labels = (labels >= 0) & (labels < 2)
        labels = jnp.where(valid_labels, labels, 0)
        nsp_log_probs = jax.nn.log_softmax(nsp_logits.astype(jnp.float32), axis=-1)
        nsp_nll = jnp.take_along_axis(nsp_log_probs, labels[:, None], axis=-1)[:, 0]
        sums["nsp_nll"] = -jnp.sum(jnp.where(valid_labels, nsp_nll, 0.0))
        sums["nsp_correct"] = jnp.sum((jnp.argmax(nsp_logits, -1) == labels) & valid_labels).astype(jnp.float32)
    return sums


def _denominators(batch) -> Tuple[Array, Array]:
    return (jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1.0),
            jnp.asarray(batch["input_ids"].shape[0], jnp.float32))


def _loss(sums, mlm_denominator, nsp_denominator):
    loss = sums["mlm_nll"] / mlm_denominator
    if "nsp_nll" in sums:
        loss = loss + sums["nsp_nll"] / nsp_denominator
    return loss


def _summarise(sums, mlm_denominator, nsp_denominator) -> Dict[str, Array]:
    metrics = {"mlm_loss": sums["mlm_nll"] / mlm_denominator, "mlm_accuracy": sums["mlm_correct"] / mlm_denominator}
    if "nsp_nll" in sums:
        metrics.update(nsp_loss=sums["nsp_nll"] / nsp_denominator, nsp_accuracy=sums["nsp_correct"] / nsp_denominator)
    metrics["loss"] = metrics["mlm_loss"] + metrics.get("nsp_loss", 0.0)
    return metrics


def sum_over_micro_batches(fn: Callable[[Dict[str, Array], Array], Any], batch: Dict[str, Array],
                           micro_batches: int) -> Any:
    """Sum of `fn(micro_batch, index)` over `micro_batches` equal row slices of `batch` (one
    `lax.scan`, so memory is that of one micro-batch); `fn(batch, 0)` when `micro_batches` is 1."""
    if micro_batches == 1:
        return fn(batch, jnp.asarray(0))
    split = jax.tree.map(lambda x: x.reshape((micro_batches, -1) + x.shape[1:]), batch)

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, fn(*xs)), None

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, jax.tree.map(lambda x: x[0], split), jnp.asarray(0)))
    total, _ = jax.lax.scan(body, zero, (split, jnp.arange(micro_batches)))
    return total


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation, finite: Array,
                    skip_nonfinite: bool) -> TrainState:
    """One optimizer step; with `skip_nonfinite` a step whose loss or gradients are not finite keeps
    the old params and optimizer state (the step counter still advances)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def make_train_step(model, tx: optax.GradientTransformation, schedule: Callable, *, micro_batches: int = 1,
                    skip_nonfinite: bool = False) -> Callable[[TrainState, Dict[str, Array]], Tuple[TrainState, Dict]]:
    """Returns `train_step(state, batch) -> (state, metrics)`; batch rows must divide by `micro_batches`."""

    def train_step(state: TrainState, batch: Dict[str, Array]):
        mlm_den, nsp_den = _denominators(batch)
        step_rng = jax.random.fold_in(state.rng, state.step)

        def grads_of(micro, index):
            def loss_fn(params):
                sums = pretraining_sums(model, params, micro, jax.random.fold_in(step_rng, index), False)
                return _loss(sums, mlm_den, nsp_den), sums
            (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return grads, sums

        grads, sums = sum_over_micro_batches(grads_of, batch, micro_batches)
        metrics = _summarise(sums, mlm_den, nsp_den)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step), finite=finite.astype(jnp.float32))
        return apply_gradients(state, grads, tx, finite, skip_nonfinite), metrics

    return train_step


def make_eval_step(model) -> Callable[[Any, Dict[str, Array]], Dict[str, Array]]:
    """`eval_step(params, batch) -> sums` (add them up over batches, then `summarise_eval`)."""

    def eval_step(params, batch):
        sums = pretraining_sums(model, params, batch, None, True)
        sums["mlm_weight"] = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
        sums["sequences"] = jnp.asarray(batch["input_ids"].shape[0], jnp.float32)
        return sums

    return eval_step


def summarise_eval(total: Dict[str, Array]) -> Dict[str, float]:
    return {k: float(v) for k, v in _summarise(total, jnp.maximum(total["mlm_weight"], 1.0),
                                               jnp.maximum(total["sequences"], 1.0)).items()}
