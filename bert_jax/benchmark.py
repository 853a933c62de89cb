"""Throughput benchmark: bert_jax `BertForMaskedLM` (training and inference steps) against
transformers' PyTorch `BertForMaskedLM` in the same process, on the same synthetic batch.

    python -m bert_jax.benchmark --config=base --batch=8 --seq=128 [--dtype=float32|bfloat16]
        [--steps=10 --warmup=3] [--mode=train,infer] [--mlm_head=sparse,dense] [--notorch]
        [--mlm_fraction=0.15] [--attention_impl=xla] [--output=benchmarks/results/<machine>.md]

What is measured
  * Inputs are synthetic and deterministic (fixed seeds): random ids, attention mask all ones,
    P = round(mlm_fraction * seq) masked positions per row (google-research style: sorted, never
    [CLS]/[SEP], replaced by [MASK]) with their original ids as labels.
  * Two MLM-head variants, the same on both sides:
      sparse: vocabulary logits only at the P masked positions. JAX: `masked_positions` [B, P];
              torch: `model.bert(...)` then `model.cls(hidden[rows, masked_positions])`.
      dense:  logits at every position, labels -100 except the masked ones. JAX: no
              `masked_positions`; torch: the stock `model(**inputs, labels=labels)`.
  * train: forward + backward + AdamW update (optax.adamw / torch.optim.AdamW, lr 1e-4, weight
    decay 0.01), dropout active (config's 0.1) on both sides; JAX step jitted with params and
    optimizer state donated. infer: forward only (eval mode, no dropout), returns the logits.
  * Warm-up steps are excluded; each timed step is synchronous (`block_until_ready` on JAX);
    the reported step time is the median. Compile time = jit lower + XLA compile.
  * Model FLOPs per token (training, bidirectional attention):
        6 * N_non_embedding + 12 * L * hidden * seq + 6 * hidden * vocab * f
    with f the fraction of positions projected onto the vocabulary (P/seq sparse, 1 dense);
    inference counts one third of it. N_non_embedding excludes the word/position/token-type tables
    and the embedding LayerNorm; the tied decoder is the third term.
  * Utilisation: on GPU/TPU, MFU against a table of peak (bf16 dense) TFLOP/s per chip. On CPU there
    is no table: a large jitted fp32 matmul is timed in the same run and model FLOP/s is reported as
    a fraction of it ("% of matmul").
  * Memory: JAX `device.memory_stats()['peak_bytes_in_use']` where the backend has it, else the
    compiled step's `memory_analysis()` (temp + argument + output - aliased). Torch on CPU: growth of
    the process RSS during the timed steps over the RSS before the model was built (approximate:
    allocators keep freed memory).

torch and transformers are optional: without them (or with --notorch) only the JAX side runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import functools
import gc
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from bert_jax.config import BertConfig
from bert_jax.flops import (PEAK_TFLOPS, count_non_embedding_params, flops_per_token,  # noqa: F401  (re-exported)
                            non_embedding_params, peak_tflops)
from bert_jax.modeling import BertForMaskedLM, init_params

# name: (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size)
MODEL_CONFIGS: Dict[str, tuple] = {
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (4, 512, 8, 2048),
    "medium": (8, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}

MASK_ID, CLS_ID, SEP_ID = 103, 101, 102  # bert-base-uncased vocabulary
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01


def make_config(name: str, dtype: str = "float32", attention_impl: str = "xla", dropout: bool = True,
                **overrides: Any) -> BertConfig:
    """A named BERT size (vocab 30522, 512 positions) as a `BertConfig`."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {list(MODEL_CONFIGS)}")
    layers, hidden, heads, inter = MODEL_CONFIGS[name]
    kwargs = dict(vocab_size=30522, max_position_embeddings=512, num_hidden_layers=layers, hidden_size=hidden,
                  num_attention_heads=heads, intermediate_size=inter, dtype=dtype, param_dtype="float32",
                  attention_impl=attention_impl)
    if not dropout:
        kwargs.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def num_masked(seq: int, mlm_fraction: float) -> int:
    """Masked positions per row (google-research's max_predictions_per_seq = round(f * seq))."""
    return max(1, min(seq - 2, int(round(mlm_fraction * seq))))


# --------------------------------------------------------------------------------------------------
# Inputs


def synthetic_batch(batch: int, seq: int, mlm_fraction: float, vocab_size: int = 30522, seed: int = 0
                    ) -> Dict[str, np.ndarray]:
    """Deterministic MLM batch: input_ids (masked), attention_mask, token_type_ids, masked_positions
    [B, P], labels [B, P] (original ids), dense_labels [B, L] (-100 where not masked)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1000, vocab_size, size=(batch, seq)).astype(np.int32)
    ids[:, 0] = CLS_ID
    ids[:, -1] = SEP_ID
    p = num_masked(seq, mlm_fraction)
    positions = np.stack([np.sort(rng.choice(np.arange(1, seq - 1), size=p, replace=False)) for _ in range(batch)]
                         ).astype(np.int32)
    rows = np.arange(batch)[:, None]
    labels = ids[rows, positions].copy()
    input_ids = ids.copy()
    input_ids[rows, positions] = MASK_ID
    dense_labels = np.full((batch, seq), -100, np.int32)
    dense_labels[rows, positions] = labels
    return dict(input_ids=input_ids, attention_mask=np.ones((batch, seq), np.int32),
                token_type_ids=np.zeros((batch, seq), np.int32), masked_positions=positions, labels=labels,
                dense_labels=dense_labels)


# --------------------------------------------------------------------------------------------------
# Measurement helpers


@dataclasses.dataclass
class Row:
    framework: str  # "jax" | "torch"
    mode: str  # "train" | "infer"
    head: str  # "sparse" | "dense"
    step_s: float  # median
    step_s_min: float
    compile_s: Optional[float]
    seq_per_s: float
    tokens_per_s: float
    flops_per_token: float
    tflops: float
    utilization: Optional[float]  # MFU (accelerator) or fraction of the measured matmul FLOP/s (CPU)
    peak_mem_bytes: Optional[int]
    mem_source: str
    loss: Optional[float]
    step_times: List[float]
    background_cores: Optional[float] = None  # other processes' CPU use while this variant was timed


def _time_steps(step, steps: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=None)
def _mallinfo2():
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def heap_in_use() -> Tuple[Optional[int], str]:
    """Bytes the process has allocated and not freed (glibc mallinfo2: in-use chunks + mmapped
    blocks); falls back to the RSS, which also counts freed memory the allocator kept."""
    fn = _mallinfo2()
    if fn is not None:
        info = fn()
        return int(info.uordblks + info.hblkhd), "malloc in-use"
    return _rss_bytes(), "RSS"


class _PeakSampler:
    """Samples `heap_in_use()` every few ms on a thread (torch ops release the GIL)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.baseline, self.source = heap_in_use()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            value, _ = heap_in_use()
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        value, _ = heap_in_use()
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value


def _cpu_snapshot() -> Optional[Tuple[float, float, float]]:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process) or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def background_cores(start, end) -> Optional[float]:
    """Average number of cores other processes kept busy between two `_cpu_snapshot()`s."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def cpu_model() -> str:
    """'model name' from /proc/cpuinfo, with family/model/MHz when the name alone is vague."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    extra = [f"{k} {fields[k]}" for k in ("cpu family", "model", "cpu MHz") if k in fields]
    return f"{name} ({', '.join(extra)})" if extra else name


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure_matmul_flops(n: int = 4096, reps: int = 5) -> float:
    """Best FLOP/s of a jitted fp32 [n, n] @ [n, n] on the default device."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = _time_steps(lambda: matmul(a, b).block_until_ready(), reps, 1)
    return 2.0 * n ** 3 / min(times)


def measure_torch_matmul_flops(n: int = 4096, reps: int = 5) -> Optional[float]:
    try:
        import torch
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.matmul(a, b)
    times = _time_steps(lambda: torch.matmul(a, b), reps, 0)
    return 2.0 * n ** 3 / min(times)


def _memory_analysis_bytes(compiled) -> Optional[int]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    total = 0
    for name in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
        total += int(getattr(m, name, 0) or 0)
    total -= int(getattr(m, "alias_size_in_bytes", 0) or 0)
    return total


def _device_peak_bytes() -> Optional[int]:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


# --------------------------------------------------------------------------------------------------
# JAX side


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


@dataclasses.dataclass
class Prepared:
    """One compiled/built variant, ready to step."""

    step: Callable[[], None]  # one synchronous step
    compile_s: Optional[float]
    loss: Callable[[], Optional[float]]  # last training loss
    memory: Callable[[], Tuple[Optional[int], str]]  # (peak bytes, how it was measured)
    close: Callable[[], None] = lambda: None


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

    return Prepared(step=step, compile_s=compile_s, memory=memory, close=state.clear,
                    loss=lambda: None if state.get("loss") is None else float(state["loss"]))


def bench_jax(config: BertConfig, data: Dict[str, np.ndarray], mode: str, head: str, steps: int, warmup: int,
              seed: int = 0, dropout: bool = True, params_host=None) -> Dict[str, Any]:
    """Times one JAX (mode, head) variant on its own; returns step times, compile time, memory, loss."""
    prep = prepare_jax(config, data, mode, head, seed, dropout, params_host)
    times = _time_steps(prep.step, steps, warmup)
    return _finish(prep, times)


def _finish(prep: Prepared, times: List[float]) -> Dict[str, Any]:
    peak, source = prep.memory()
    out = dict(times=times, compile_s=prep.compile_s, peak_mem_bytes=peak, mem_source=source, loss=prep.loss())
    prep.close()
    return out


# --------------------------------------------------------------------------------------------------
# PyTorch side


def torch_available() -> Optional[str]:
    """None when torch + transformers import, else the reason they do not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e}"
    return None


def torch_device() -> str:
    """'cuda' when JAX runs on a GPU and torch sees one (both sides on the accelerator), else 'cpu'."""
    import torch
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def prepare_torch(config: BertConfig, data: Dict[str, np.ndarray], mode: str, head: str, seed: int = 0,
                  threads: Optional[int] = None) -> Prepared:
    """Builds transformers' PyTorch BertForMaskedLM (sdpa attention) for one (mode, head) variant.

    Runs on CUDA when JAX runs on a GPU, else on the CPU. bfloat16 runs under `torch.autocast` with
    float32 weights (mixed precision, as the JAX side). Each step ends synchronised (CUDA) so step
    times are wall-clock, like JAX's `block_until_ready`. Memory: CUDA's `max_memory_allocated`
    over one extra step; on CPU one extra, untimed step with the heap sampled: peak = tensors held
    before it (params, grads, AdamW state) + the heap's growth during it."""
    import torch
    import torch.nn.functional as F
    import transformers

    device = torch_device()
    torch.set_num_threads(threads or num_cores())
    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(**config.to_hf())
    model = transformers.BertForMaskedLM._from_config(hf_config, attn_implementation="sdpa").to(device)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"transformers picked attention {model.config._attn_implementation!r}, not sdpa")
    autocast = config.dtype == "bfloat16"

    as_tensor = lambda key: torch.from_numpy(data[key]).long().to(device)
    ids, mask, types = as_tensor("input_ids"), as_tensor("attention_mask"), as_tensor("token_type_ids")
    positions, labels, dense_labels = as_tensor("masked_positions"), as_tensor("labels"), as_tensor("dense_labels")
    rows = torch.arange(ids.shape[0], device=device)[:, None]
    vocab = config.vocab_size
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward(with_loss: bool):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            if head == "sparse":
                hidden = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
                logits = model.cls(hidden[rows, positions])
                loss = F.cross_entropy(logits.float().view(-1, vocab), labels.view(-1)) if with_loss else None
                return logits, loss
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types,
                        labels=dense_labels if with_loss else None)
            return out.logits, out.loss

    state: Dict[str, Any] = {"loss": None}
    opt = None
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

        def step():
            opt.zero_grad(set_to_none=True)
            _, loss = forward(True)
            loss.backward()
            opt.step()
            state["loss"] = loss.detach()
            sync()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                forward(False)
            sync()

    def held_bytes() -> int:
        tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
        if opt is not None:
            tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def memory():
        gc.collect()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated (1 step)"
        held = held_bytes()
        with _PeakSampler() as sampler:
            step()
        if sampler.baseline is None or sampler.peak is None:
            return None, "n/a"
        return held + sampler.peak - sampler.baseline, f"tensors + {sampler.source} growth (1 step)"

    def close():
        state.clear()
        model.zero_grad(set_to_none=True)

    return Prepared(step=step, compile_s=None, memory=memory, close=close,
                    loss=lambda: None if state.get("loss") is None else float(state["loss"]))


def bench_torch(config: BertConfig, data: Dict[str, np.ndarray], mode: str, head: str, steps: int, warmup: int,
                seed: int = 0, threads: Optional[int] = None) -> Dict[str, Any]:
    """Times one PyTorch (mode, head) variant on its own."""
    prep = prepare_torch(config, data, mode, head, seed, threads)
    times = _time_steps(prep.step, steps, warmup)
    return _finish(prep, times)


# --------------------------------------------------------------------------------------------------
# Driver


def _version(dist: str) -> Optional[str]:
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - not installed
        return None


def machine_info() -> Dict[str, Any]:
    dev = jax.devices()[0]
    info = dict(cpu=cpu_model(), cores=num_cores(), backend=jax.default_backend(), device_kind=dev.device_kind,
                device_count=jax.device_count(), jax=jax.__version__, python=platform.python_version(),
                platform=platform.platform())
    for dist in ("jaxlib", "flax", "optax", "torch", "transformers"):
        info[dist] = _version(dist)
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


def run_benchmark(config: str = "base", batch: int = 8, seq: int = 128, dtype: str = "float32", steps: int = 10,
                  warmup: int = 3, modes: Sequence[str] = ("train", "infer"),
                  heads: Sequence[str] = ("sparse", "dense"), torch: bool = True, mlm_fraction: float = 0.15,
                  attention_impl: str = "xla", dropout: bool = True, matmul_size: int = 4096, seed: int = 0,
                  interleave: bool = True, log=print) -> Dict[str, Any]:
    """Runs every (framework, mode, head) variant; returns {'rows', 'ratios', 'meta', 'markdown'}."""
    for m in modes:
        if m not in ("train", "infer"):
            raise ValueError(f"mode must be train or infer, got {m!r}")
    for h in heads:
        if h not in ("sparse", "dense"):
            raise ValueError(f"mlm_head must be sparse or dense, got {h!r}")
    cfg = make_config(config, dtype=dtype, attention_impl=attention_impl, dropout=dropout)
    data = synthetic_batch(batch, seq, mlm_fraction, cfg.vocab_size, seed)
    p = data["masked_positions"].shape[1]
    meta = machine_info()
    meta.update(config=config, batch=batch, seq=seq, dtype=dtype, steps=steps, warmup=warmup, masked_per_row=p,
                mlm_fraction=mlm_fraction, attention_impl=attention_impl, dropout=dropout,
                interleave=interleave, loadavg_start=meta.pop("loadavg", None))

    torch_reason = None
    if torch:
        torch_reason = torch_available()
        if torch_reason:
            log(f"[benchmark] PyTorch side skipped: torch/transformers not importable ({torch_reason}); "
                "install torch and transformers or pass --notorch")
    else:
        torch_reason = "disabled (--notorch)"
    run_torch = torch_reason is None
    meta["torch_side"] = (f"transformers BertForMaskedLM, sdpa, on {torch_device()}" if run_torch
                          else f"skipped: {torch_reason}")
    if run_torch:
        import torch as _torch
        _torch.set_num_threads(num_cores())
        meta["torch_threads"] = _torch.get_num_threads()

    # Utilisation reference: chip peak table on accelerators, a measured matmul on CPU.
    peak = peak_tflops(meta["device_kind"]) if meta["backend"] != "cpu" else None
    if peak is not None:
        ref_flops, meta["utilization"] = peak * 1e12 * jax.device_count(), f"MFU vs {peak:g} TFLOP/s/chip (bf16)"
    elif matmul_size:
        log(f"[benchmark] timing a {matmul_size}^3 fp32 matmul (JAX) as the CPU reference ...")
        ref_flops = measure_matmul_flops(matmul_size)
        meta["utilization"] = f"% of a jitted {matmul_size}^3 fp32 matmul ({ref_flops / 1e9:.1f} GFLOP/s)"
        meta["jax_matmul_gflops"] = ref_flops / 1e9
        if run_torch:
            tm = measure_torch_matmul_flops(matmul_size)
            meta["torch_matmul_gflops"] = None if tm is None else tm / 1e9
    else:
        ref_flops, meta["utilization"] = None, "n/a"

    model_params_host = jax.device_get(init_params(BertForMaskedLM(cfg), jax.random.PRNGKey(seed)))
    meta["n_non_embedding"] = count_non_embedding_params(model_params_host)
    meta["n_params"] = int(sum(np.prod(x.shape) for x in jax.tree.leaves(model_params_host)))

    rows: List[Row] = []
    frameworks = ("jax", "torch") if run_torch else ("jax",)
    for mode in modes:
        for head in heads:
            # Both frameworks' steps alternate (JAX, torch, JAX, ...) so that background load on a
            # shared machine hits both alike; --nointerleave times them one after the other.
            prepared = {}
            for fw in frameworks:
                log(f"[benchmark] {fw} {mode} {head}: {'compiling' if fw == 'jax' else 'building'} ...")
                prepared[fw] = (prepare_jax(cfg, data, mode, head, seed, dropout, params_host=model_params_host)
                                if fw == "jax" else prepare_torch(cfg, data, mode, head, seed))
            times = {fw: [] for fw in frameworks}
            snap = _cpu_snapshot()
            if interleave:
                for fw in frameworks:
                    _time_steps(prepared[fw].step, 0, warmup)
                for _ in range(steps):
                    for fw in frameworks:
                        times[fw] += _time_steps(prepared[fw].step, 1, 0)
            else:
                for fw in frameworks:
                    times[fw] = _time_steps(prepared[fw].step, steps, warmup)
            background = background_cores(snap, _cpu_snapshot())
            for fw in frameworks:
                r = _finish(prepared.pop(fw), times[fw])
                step_s = statistics.median(r["times"])
                fpt = flops_per_token(cfg, seq, p / seq if head == "sparse" else 1.0, training=mode == "train")
                achieved = fpt * batch * seq / step_s
                row = Row(framework=fw, mode=mode, head=head, step_s=step_s, step_s_min=min(r["times"]),
                          compile_s=r["compile_s"], seq_per_s=batch / step_s, tokens_per_s=batch * seq / step_s,
                          flops_per_token=fpt, tflops=achieved / 1e12,
                          utilization=None if ref_flops is None else achieved / ref_flops,
                          peak_mem_bytes=r["peak_mem_bytes"], mem_source=r["mem_source"], loss=r["loss"],
                          step_times=r["times"], background_cores=background)
                rows.append(row)
                log(f"[benchmark]   {fw} {mode} {head}: {row.step_s * 1e3:.1f} ms/step (min "
                    f"{row.step_s_min * 1e3:.1f}), {row.seq_per_s:.2f} seq/s"
                    + (f", loss {row.loss:.3f}" if row.loss is not None else ""))
            gc.collect()

    ratios, ratios_min = {}, {}
    by_key = {(r.framework, r.mode, r.head): r for r in rows}
    for mode in modes:
        for head in heads:
            j, t = by_key.get(("jax", mode, head)), by_key.get(("torch", mode, head))
            if j and t:
                ratios[f"{mode}/{head}"] = t.step_s / j.step_s
                ratios_min[f"{mode}/{head}"] = t.step_s_min / j.step_s_min
    try:
        meta["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    result = dict(rows=[dataclasses.asdict(r) for r in rows], ratios=ratios, ratios_min=ratios_min, meta=meta)
    result["markdown"] = format_markdown(result)
    return result


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def format_markdown(result: Dict[str, Any], command: Optional[str] = None) -> str:
    meta = result["meta"]
    util_header = "MFU" if meta.get("utilization", "").startswith("MFU") else "% of matmul"
    lines = []
    if command:
        lines += [f"## {meta['config']} · batch {meta['batch']} · seq {meta['seq']} · {meta['dtype']} · "
                  f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "", "```", command, "```", ""]
    load = lambda k: ("n/a" if not meta.get(k) else " ".join(f"{x:.2f}" for x in meta[k]))
    lines += [
        f"- machine: {meta['cpu']}, {meta['cores']} cores; backend `{meta['backend']}` ({meta['device_kind']}"
        f" x{meta['device_count']}); load average at start {load('loadavg_start')}, at end {load('loadavg_end')}",
        f"- versions: jax {meta['jax']}, jaxlib {meta['jaxlib']}, flax {meta['flax']}, optax {meta['optax']}, "
        f"torch {meta['torch'] or 'n/a'}, transformers {meta['transformers'] or 'n/a'}, "
        f"python {meta['python']}; torch threads {meta.get('torch_threads', 'n/a')}",
        f"- model: BertForMaskedLM `{meta['config']}` ({meta['n_params'] / 1e6:.1f}M params, "
        f"{meta['n_non_embedding'] / 1e6:.1f}M non-embedding), attention_impl `{meta['attention_impl']}`, "
        f"dropout {'on (0.1) in train' if meta['dropout'] else 'off'}; {meta['masked_per_row']} masked "
        f"positions per row (mlm_fraction {meta['mlm_fraction']}); median of {meta['steps']} steps after "
        f"{meta['warmup']} warm-up" + ("; JAX and torch steps interleaved" if meta.get("interleave") else ""),
        f"- heads: *sparse* = vocabulary logits only at the masked positions (JAX `masked_positions`; torch "
        f"`model.cls(model.bert(...)[rows, positions])`); *dense* = logits at all positions (JAX without "
        f"`masked_positions`; torch stock `model(**inputs, labels=...)`)",
        f"- utilisation: {meta['utilization']}"
        + (f"; torch's own {meta.get('torch_matmul_gflops', 0):.1f} GFLOP/s on the same matmul"
           if meta.get("torch_matmul_gflops") else ""),
        f"- torch side: {meta['torch_side']}",
        "- *other load*: CPU cores kept busy by other processes while the variant was timed (from "
        "/proc/stat minus this process); anything well above 0 means the timings are contaminated",
        "",
        f"| framework | mode | MLM head | step (ms, median) | min (ms) | seq/s | tokens/s | compile (s) "
        f"| GFLOP/token | TFLOP/s | {util_header} | peak memory | memory source | other load (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        util = "n/a" if r["utilization"] is None else f"{100 * r['utilization']:.1f}%"
        compile_s = "—" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(
            f"| {r['framework']} | {r['mode']} | {r['head']} | {r['step_s'] * 1e3:.1f} | {r['step_s_min'] * 1e3:.1f} "
            f"| {r['seq_per_s']:.2f} | {r['tokens_per_s']:.0f} | {compile_s} | {r['flops_per_token'] / 1e9:.3f} "
            f"| {r['tflops']:.3f} | {util} | {_fmt_bytes(r['peak_mem_bytes'])} | {r['mem_source']} "
            f"| {'n/a' if r.get('background_cores') is None else format(r['background_cores'], '.2f')} |")
    if result["ratios"]:
        lines += ["", "Throughput ratio JAX / torch (torch step time / JAX step time; median steps, and fastest "
                  "steps in brackets):", ""]
        for key, value in result["ratios"].items():
            best = result.get("ratios_min", {}).get(key)
            lines.append(f"- {key}: **{value:.2f}x**" + ("" if best is None else f" ({best:.2f}x)"))
    return "\n".join(lines) + "\n"


def append_markdown(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a") as f:
        if new:
            f.write("# bert_jax benchmark results\n\nAppended by `python -m bert_jax.benchmark --output=...`.\n\n")
        else:
            f.write("\n")
        f.write(text)


# Above this many cores of other load, timings are contaminated (other jobs slow PyTorch more than XLA).
MAX_BACKGROUND_CORES = 0.3


def max_background_cores(result: Dict[str, Any]) -> Optional[float]:
    """The most other-process load seen while any variant was timed (None where unmeasurable)."""
    loads = [r.get("background_cores") for r in result["rows"] if r.get("background_cores") is not None]
    return max(loads) if loads else None


def write_output(path: str, text: str, result: Dict[str, Any], allow_loaded: bool = False) -> None:
    """Appends the report to `path` only if the machine was quiet while timing (else SystemExit),
    or, with `allow_loaded`, with a banner saying the figures are contaminated."""
    load = max_background_cores(result)
    if load is not None and load > MAX_BACKGROUND_CORES:
        if not allow_loaded:
            raise SystemExit(
                f"not writing {path}: other processes kept {load:.2f} cores busy while timing (limit "
                f"{MAX_BACKGROUND_CORES}); these figures are not results. Rerun on a quiet machine, or pass "
                "--output_when_loaded to record them marked as contaminated.")
        text = (f"> **Contaminated:** other processes kept up to {load:.2f} cores busy while timing "
                f"(limit {MAX_BACKGROUND_CORES}); written with --output_when_loaded. Not a result.\n\n" + text)
    append_markdown(path, text)


def define_flags(fv: flags.FlagValues) -> None:
    """The command line (absl: --helpfull and --flagfile work), defined on `fv` only when run as a
    program so that importing this module adds no global flags."""
    flags.DEFINE_enum("config", "base", list(MODEL_CONFIGS), "Model size.", flag_values=fv)
    flags.DEFINE_integer("batch", 8, "Sequences per step.", flag_values=fv)
    flags.DEFINE_integer("seq", 128, "Tokens per sequence.", flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (params stay float32).",
                      flag_values=fv)
    flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).", flag_values=fv)
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.", flag_values=fv)
    flags.DEFINE_list("mode", ["train", "infer"], "Comma list of train, infer.", flag_values=fv)
    flags.DEFINE_list("mlm_head", ["sparse", "dense"],
                      "Comma list: sparse (logits at masked positions only), dense (at every position).", flag_values=fv)
    for name, allowed in (("mode", {"train", "infer"}), ("mlm_head", {"sparse", "dense"})):
        flags.register_validator(name, lambda values, allowed=allowed: set(values) <= allowed,
                                 f"--{name} takes a comma list of {sorted(allowed)}", flag_values=fv)
    flags.DEFINE_bool("torch", True, "Time transformers' PyTorch BertForMaskedLM in the same run (--notorch: skip).",
                      flag_values=fv)
    flags.DEFINE_float("mlm_fraction", 0.15, "Fraction of positions masked per row.", flag_values=fv)
    flags.DEFINE_string("attention_impl", "xla", "bert_jax attention kernel (xla, dot_product, cudnn, pallas_gpu, "
                        "pallas_tpu, auto).", flag_values=fv)
    flags.DEFINE_bool("dropout", True, "Dropout 0.1 in training on both sides (--nodropout: off).", flag_values=fv)
    flags.DEFINE_bool("interleave", True, "Alternate JAX and torch steps (--nointerleave: one after the other).",
                      flag_values=fv)
    flags.DEFINE_integer("matmul_size", 4096, "CPU reference matmul size (0 = skip).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic batch and the parameters.", flag_values=fv)
    flags.DEFINE_string("output", None, "Append the markdown report to this file (refused when other processes "
                        f"kept more than {MAX_BACKGROUND_CORES} cores busy while timing).", flag_values=fv)
    flags.DEFINE_bool("output_when_loaded", False, "Write --output even from a loaded machine; the file then says "
                      "the figures are contaminated.", flag_values=fv)


def parse_args(argv: Sequence[str]) -> flags.FlagValues:
    """Parses `argv` (without the program name) on a fresh FlagValues; for tests and callers."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["bert_jax.benchmark"] + list(argv))
    return fv


def main(argv: Optional[Sequence[str]] = None, fv: Optional[flags.FlagValues] = None) -> Dict[str, Any]:
    """Runs the benchmark for parsed flags `fv` (or parses `argv`); returns the result dict."""
    if fv is None:
        fv = parse_args(argv or [])
        argv = list(argv or [])
    else:  # run as a program: absl has consumed the flags; the report shows the command line as typed
        argv = sys.argv[1:]
        result = run_benchmark(config=fv.config, batch=fv.batch, seq=fv.seq, dtype=fv.dtype, steps=fv.steps,
                           warmup=fv.warmup, modes=fv.mode, heads=fv.mlm_head, torch=fv.torch,
                           mlm_fraction=fv.mlm_fraction, attention_impl=fv.attention_impl, dropout=fv.dropout,
                           matmul_size=fv.matmul_size, seed=fv.seed, interleave=fv.interleave)
    command = "python -m bert_jax.benchmark " + " ".join(shlex.quote(a) for a in argv)
    text = format_markdown(result, command)
    print()
    print(text)
    if fv.output:
        write_output(fv.output, text, result, allow_loaded=fv.output_when_loaded)
        print(f"[benchmark] appended to {fv.output}")
    return result


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: main(argv, flags.FLAGS) and None)
