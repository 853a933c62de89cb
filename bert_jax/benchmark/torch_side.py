"""The PyTorch peer of the benchmark: transformers' `BertForMaskedLM` built and timed on the same batch."""

from __future__ import annotations

import gc
from typing import Any, Dict, Optional

import jax
import numpy as np

from bert_jax.benchmark.inputs import LEARNING_RATE, WEIGHT_DECAY
from bert_jax.benchmark.measure import Prepared, _PeakSampler, _finish, _time_steps, num_cores
from bert_jax.config import BertConfig


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
