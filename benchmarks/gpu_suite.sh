#!/usr/bin/env bash
# The accelerator checks for one NVIDIA GPU, as one short script (about 8 minutes on an H200):
# kernel parity on the GPU (cuDNN and Pallas/Triton against `xla`), then the benchmark grid, JAX
# and transformers' PyTorch (on the same GPU) interleaved in each run.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR     # needs jax[cuda], flax, optax, torch, transformers
#
# Every step has its own time limit and the script goes on after a failure, so one bad variant
# does not cost the others; OUT_DIR/summary.txt lists each step's exit status.
set -u
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results="$out/gpu-results.md"

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  echo "== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$out/summary.txt"
  tail -n 25 "$out/$name.log"
}

# SMOKE=1: every step on a tiny model for one step (checks this script on a CPU; figures meaningless).
smoke=()
[ "${SMOKE:-0}" = 1 ] && smoke=(--config=tiny --batch=2 --seq=32 --steps=1 --warmup=1 --matmul_size=64 --output_when_loaded)

bench() {  # bench NAME LIMIT_S BENCHMARK_FLAGS...
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" "$py" -m bert_jax.benchmark --output="$results" "$@" "${smoke[@]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt" || true
"$py" -c "import jax, flax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

# Kernels on the GPU: cuDNN and Pallas (Triton) against the xla reference, fp32 and bf16, with gradients.
[ "${SMOKE:-0}" = 1 ] || step kernels 240 "$py" -m pytest -q -p no:cacheprovider -k "not pallas_tpu" tests/test_attention.py
# Our Pallas flash kernel (in-kernel dropout) compiled by Triton: parity with the reference and speed.
[ "${SMOKE:-0}" = 1 ] || step flash_tests 180 "$py" -m pytest -q -p no:cacheprovider tests/test_flash.py
[ "${SMOKE:-0}" = 1 ] || step flash_check 120 "$py" benchmarks/flash_gpu_check.py

# BERT-base, bf16, 32 x 128: dropout on (xla attention: the fused kernels refuse attention dropout).
bench base_bf16_b32s128 240 --config=base --dtype=bfloat16 --batch=32 --seq=128 --steps=20 --warmup=5
# Without dropout the fused kernels serve training too.
bench base_bf16_b32s128_cudnn 150 --config=base --dtype=bfloat16 --batch=32 --seq=128 --steps=20 --warmup=5 \
  --nodropout --attention_impl=cudnn --mlm_head=sparse
bench base_bf16_b32s128_pallas 150 --config=base --dtype=bfloat16 --batch=32 --seq=128 --steps=20 --warmup=5 \
  --nodropout --attention_impl=pallas_gpu --mlm_head=sparse --notorch
# Long sequences (Hugging Face's BERT page: 0.025 s per 8 x 512 training step on an A100, fp16).
bench base_bf16_b8s512 150 --config=base --dtype=bfloat16 --batch=8 --seq=512 --steps=20 --warmup=5 --mlm_head=dense
# BERT-large phase-1 shape (NVIDIA: ~580 seq/s per A100).
bench large_bf16_b64s128 240 --config=large --dtype=bfloat16 --batch=64 --seq=128 --steps=10 --warmup=3 \
  --mode=train --mlm_head=sparse
# fp32 (TF32 matmuls where the frameworks allow them).
bench base_fp32_b32s128 150 --config=base --dtype=float32 --batch=32 --seq=128 --steps=10 --warmup=3 \
  --mode=train --mlm_head=sparse
cat "$out/summary.txt"
