"""The JAX side of the benchmark: bert_jax `BertForMaskedLM` train/infer steps, jitted, timed one variant at a time."""

from __future__ import annotations

import functools
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.benchmark.inputs import LEARNING_RATE, WEIGHT_DECAY
from bert_jax.benchmark.measure import Prepared, _device_peak_bytes, _finish, _memory_analysis_bytes, _time_steps
from bert_jax.config import BertConfig
from bert_jax.modeling import BertForMaskedLM, init_params


def _jax_inputs(data: Dict[str, np.ndarray], head: str) -> Dict[str, jax.Array]:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    out = {k: jnp.asarray(data[k]) for k in keys}
    if head == "sparse":
        out["masked_positions"] = jnp.asarray(data["masked_positions"])
        out["labels"] = jnp.asarray(data["labels"])
    else:
        out["labels"] = jnp.asarray(data["dense_labels"])
    return out


def jax_train_step_fn(model: BertForMaskedLM, tx: optax.GradientTransformation, dropout: bool):
    """(params, opt_state, batch, rng, step) -> (params, opt_state, loss); jitted, state donated."""

    def loss_fn(params, batch, rng):
        out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                          masked_positions=batch.get("masked_positions"), labels=batch["labels"],
                          deterministic=not dropout, rngs={"dropout": rng} if dropout else None)
        return out.loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch, rng, step):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, jax.random.fold_in(rng, step))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def jax_infer_step_fn(model: BertForMaskedLM):
    @jax.jit
    def infer_step(params, batch):
        return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           masked_positions=batch.get("masked_positions")).logits

    return infer_step


def prepare_jax(config: BertConfig, data: Dict[str, np.ndarray], mode: str, head: str, seed: int = 0,
                dropout: bool = True, params_host=None) -> Prepared:
    """Compiles one JAX (mode, head) variant: the jitted AdamW train step (params and optimizer state
    donated) or the forward (inference) step."""
    model = BertForMaskedLM(config)
    if params_host is None:
        params_host = jax.device_get(init_params(model, jax.random.PRNGKey(seed)))
    params = jax.device_put(params_host)
    batch = _jax_inputs(data, head)
    state: Dict[str, Any] = {"params": params, "loss": None}
    if mode == "train":
        tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        opt_state = jax.jit(tx.init)(params)
        fn = jax_train_step_fn(model, tx, dropout)
        rng = jax.random.PRNGKey(seed + 1)
        start = time.perf_counter()
        compiled = fn.lower(params, opt_state, batch, rng, jnp.uint32(0)).compile()
        compile_s = time.perf_counter() - start
        state.update(opt_state=opt_state, step=0)

        def step():
            p, o, loss = compiled(state["params"], state["opt_state"], batch, rng, jnp.uint32(state["step"]))
            loss.block_until_ready()
            state.update(params=p, opt_state=o, step=state["step"] + 1, loss=loss)
    else:
        fn = jax_infer_step_fn(model)
        start = time.perf_counter()
        compiled = fn.lower(params, batch).compile()
        compile_s = time.perf_counter() - start

        def step():
            compiled(state["params"], batch).block_until_ready()

    def memory():
        peak = _device_peak_bytes()
        if peak is not None:
            return peak, "device peak_bytes_in_use (process)"
        return _memory_analysis_bytes(compiled), "XLA memory_analysis"

    return Prepared(step=step, compile_s=compile_s, memory=memory, close=state.clear, hlo_text=compiled.as_text,
                    loss=lambda: None if state.get("loss") is None else float(state["loss"]))


def bench_jax(config: BertConfig, data: Dict[str, np.ndarray], mode: str, head: str, steps: int, warmup: int,
              seed: int = 0, dropout: bool = True, params_host=None) -> Dict[str, Any]:
    """Times one JAX (mode, head) variant on its own; returns step times, compile time, memory, loss."""
    prep = prepare_jax(config, data, mode, head, seed, dropout, params_host)
    times = _time_steps(prep.step, steps, warmup)
    return _finish(prep, times)
