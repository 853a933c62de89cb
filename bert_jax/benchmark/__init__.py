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

Modules, one job each: `inputs` (sizes, synthetic batch), `measure` (timing, memory, load, machine),
`jax_side`, `torch_side` (one variant each), `runner` (`run_benchmark`), `report` (markdown, results
file), `cli` (the flags; `python -m bert_jax.benchmark` runs it). Their public names are importable
from here.
"""

from bert_jax.benchmark.cli import define_flags, main, parse_args  # noqa: F401
from bert_jax.benchmark.inputs import (CLS_ID, LEARNING_RATE, MASK_ID, MODEL_CONFIGS, SEP_ID,  # noqa: F401
                                       WEIGHT_DECAY, make_config, num_masked, synthetic_batch)
from bert_jax.benchmark.jax_side import bench_jax, jax_infer_step_fn, jax_train_step_fn, prepare_jax  # noqa: F401
from bert_jax.benchmark.measure import (Prepared, Row, background_cores, cpu_model, heap_in_use,  # noqa: F401
                                        machine_info, measure_matmul_flops, measure_torch_matmul_flops, num_cores)
from bert_jax.benchmark.report import (MAX_BACKGROUND_CORES, append_markdown, format_markdown,  # noqa: F401
                                       max_background_cores, write_output)
from bert_jax.benchmark.runner import run_benchmark  # noqa: F401
from bert_jax.benchmark.torch_side import bench_torch, prepare_torch, torch_available, torch_device  # noqa: F401
from bert_jax.flops import (PEAK_TFLOPS, count_non_embedding_params, flops_per_token,  # noqa: F401  (re-exported)
                            non_embedding_params, peak_tflops)
