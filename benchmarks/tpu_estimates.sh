#!/usr/bin/env bash
# Compiler estimates for benchmarks/results/tpu-compiler-estimates.md: bert_jax.aot (the real train
# step, the real TPU compiler from libtpu, no TPU needed) over a grid of sizes, sequence lengths,
# topologies, attention kernels and attention dropout. One JSON per compile in
# benchmarks/results/tpu-estimates/; then
#   .venv/bin/python benchmarks/tpu_estimates_table.py > benchmarks/results/tpu-compiler-estimates.md
# Needs libtpu on PYTHONPATH (e.g. PYTHONPATH=.tpu_site:. after .ci/tpu_stage.sh's install).
# Each BERT-base compile takes ~2.5 min on 2 CPU cores (BERT-large ~2x); existing JSONs are kept.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/tpu-estimates
mkdir -p "$OUT"
export TPU_SKIP_MDS_QUERY=1 ALLOW_MULTIPLE_LIBTPU_LOAD=1
run() {  # name topology size seq impl dropout [extra flags...]
  local name=$1 topo=$2 size=$3 seq=$4 impl=$5 drop=$6; shift 6
  [ -s "$OUT/$name.json" ] && return 0
  echo "== $name ($(date -u +%H:%M:%S))"
  # bf16 compute, fp32 params. Attention dropout is a row parameter: with 0, xla and the library
  # flash kernel compute the same thing; with BERT's 0.1, xla draws a jax.random mask on the
  # [B, N, S, S] probabilities and pallas_tpu hands the call to bert_jax/modeling/flash.py, which
  # draws a counter-based mask in-kernel.
  .venv/bin/python -m bert_jax.aot --config="configs/pretrain.py:size=$size,seq=$seq" --topology="$topo" \
    --vocab_size=30522 --fallback=false --config.model.dtype=bfloat16 \
    --config.model.attention_probs_dropout_prob="$drop" --config.model.attention_impl="$impl" "$@" \
    --json_out="$OUT/$name.json" > "$OUT/$name.log" 2>&1 || echo "   FAILED: see $OUT/$name.log"
}
SCAN=(--config.model.scan_layers=true --config.model.remat_policy=dots_with_no_batch_dims_saveable)
# Row = topology:size:seq:dropout[:scan[:impls]] (impls comma-separated, default xla,pallas_tpu).
# Most informative first (a row takes 5-15 min on 2 shared cores; rerunning skips what exists):
# BERT's default attention dropout 0.1 (the kernel that serves training), then BERT-large unrolled,
# then the own flash kernel without dropout (separates the kernel from the dropout), then the rest.
for row in v5p-8:base:128:0.1 v5p-8:base:512:0.1 v5p-8:large:128:0 v5p-8:large:512:0 \
           v5p-8:base:128:0::flash v5p-8:base:512:0::flash \
           v5p-8:base:128:0 v5p-8:base:512:0 v4-8:base:128:0 v5p-8:base:512:0:scan \
           v4-8:base:512:0 v4-8:large:128:0 v5p-8:large:512:0:scan v4-8:large:512:0 \
           v5p-8:large:128:0.1 v5p-8:large:512:0.1; do
  IFS=: read -r topo size seq drop scan impls <<< "$row"
  impls=${impls:-xla,pallas_tpu}
  for impl in ${impls//,/ }; do
    name="$topo-$size-$seq-$impl"
    [ "$drop" != 0 ] && name="$name-drop$drop"  # dropout-0 rows keep their names
    if [ -n "$scan" ]; then
      run "$name-scan-dots" "$topo" "$size" "$seq" "$impl" "$drop" "${SCAN[@]}"
    else
      run "$name" "$topo" "$size" "$seq" "$impl" "$drop"
    fi
  done
done
