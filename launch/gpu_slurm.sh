#!/usr/bin/env bash
#SBATCH --job-name=bert_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#
# Multi-node GPU pretraining under SLURM: one JAX process per GPU (default) or per node.
#
#   sbatch --nodes=4 launch/gpu_slurm.sh --workdir=/shared/runs/bert_base -- --config=configs/pretrain.py:size=base
#   sbatch --nodes=4 --ntasks-per-node=1 launch/gpu_slurm.sh --per-node --workdir=... -- --config=...
#   bash launch/gpu_slurm.sh --dry-run --nodes=2 --gpus-per-node=8 --workdir=/shared/x -- --config=...   # no SLURM needed
#
# Inside the allocation `srun` starts the tasks; each task derives its jax.distributed settings from
# SLURM (bert_jax.sharding reads the JAX_* variables):
#   JAX_COORDINATOR_ADDRESS  first node of $SLURM_JOB_NODELIST : --port (default 29500)
#   JAX_NUM_PROCESSES        $SLURM_NTASKS
#   JAX_PROCESS_ID           $SLURM_PROCID
#   JAX_LOCAL_DEVICE_IDS     $SLURM_LOCALID (one process per GPU), unset with --per-node (all local GPUs)
# The workdir must be on a filesystem every node sees (checkpoints are written collectively).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: [sbatch [sbatch options]] launch/gpu_slurm.sh --workdir=DIR [options] -- [bert_jax.main flags]

  --workdir=DIR          shared checkpoint/metrics directory (required)
  --per-node             one process per node driving all its GPUs (default: one per GPU; then
                         run with --ntasks-per-node=1 instead of one task per GPU)
  --port=P               coordinator port on the first node (default 29500)
  --python=PY            interpreter on the nodes (default python3)
  --mem-fraction=F       XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9)
  --dry-run              print the srun command and each task's environment; needs no SLURM
  --nodes=N --gpus-per-node=G   (dry-run only) the allocation to print for (default 2 x 8)
  -h, --help             this message
EOF
}

die() { echo "gpu_slurm.sh: $*" >&2; exit 2; }

WORKDIR="" PER_NODE=0 PORT=29500 PYTHON=python3 MEM_FRACTION=0.9 DRY_RUN=0 DRY_NODES=2 DRY_GPUS=8
MAIN_ARGS=()
while (($#)); do
  case "$1" in
    --workdir=*) WORKDIR="${1#*=}" ;;
    --per-node) PER_NODE=1 ;;
    --port=*) PORT="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --mem-fraction=*) MEM_FRACTION="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    --nodes=*) DRY_NODES="${1#*=}" ;;
    --gpus-per-node=*) DRY_GPUS="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (bert_jax.main flags go after --; see --help)" ;;
  esac
  shift
done
[[ -n "$WORKDIR" ]] || die "--workdir is required (a directory every node can read and write)"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"

# --------------------------------------------------------------------- throughput settings
# XLA flags that matter for multi-GPU throughput (names as in current XLA; see
# https://docs.jax.dev/en/latest/gpu_performance_tips.html and NVIDIA JAX-Toolbox's GPU performance guide):
XLA_GPU_FLAGS=(
  # Overlap collectives (FSDP all-gathers, gradient reduce-scatters) with compute: the one flag
  # NVIDIA's JAX containers set by default.
  --xla_gpu_enable_latency_hiding_scheduler=true
  # Fewer, larger collectives: combine gradient all-reduces / FSDP all-gathers / reduce-scatters
  # up to this many bytes (BERT-large's ~1.3 GB of fp32 grads becomes a few NCCL calls, not hundreds).
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864
)
# Opt-in, measure first: --xla_gpu_triton_gemm_any=true (Triton for every GEMM it supports; can beat
# cuBLAS on small BERT matmuls), --xla_gpu_enable_command_buffer= (empty: disable CUDA graphs when
# debugging hangs). Flags removed from recent XLA (e.g. --xla_gpu_enable_async_all_gather) are not used.
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }${XLA_GPU_FLAGS[*]}"
# Let XLA preallocate 90% of each GPU (cuDNN/cuBLAS workspaces and NCCL need the rest).
export XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION"
# NCCL: warnings only (INFO to debug topology); keep NCCL's own InfiniBand/NVLink choices, which it
# detects per cluster. NCCL_IB_HCA / NCCL_SOCKET_IFNAME are site-specific: set them in the
# environment you submit from when NCCL picks the wrong interface.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

# --------------------------------------------------------------------------- the per-task env
# Evaluated by each task (inside srun), so the SLURM_* values are the task's own.
TASK_ENV='export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):'"$PORT"'" JAX_NUM_PROCESSES="$SLURM_NTASKS" JAX_PROCESS_ID="$SLURM_PROCID"'
if ((!PER_NODE)); then
  # Every task sees all of its node's GPUs (--gpus-per-node, not --gpus-per-task) and takes the one
  # at its local rank.
  TASK_ENV+=' JAX_LOCAL_DEVICE_IDS="$SLURM_LOCALID"'
fi
# Shell-quotes one word: as is when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quoted_main=""
for word in --workdir="$WORKDIR" "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"; do quoted_main+=" $(quote "$word")"; done
TASK_COMMAND="$TASK_ENV && exec $PYTHON -m bert_jax.main$quoted_main"
SRUN=(srun --kill-on-bad-exit=1 --cpu-bind=none bash -c "$TASK_COMMAND")

if ((DRY_RUN)); then
  ntasks_per_node=$((PER_NODE ? 1 : DRY_GPUS))
  echo "# sbatch --nodes=$DRY_NODES --ntasks-per-node=$ntasks_per_node --gpus-per-node=$DRY_GPUS launch/gpu_slurm.sh ..."
  echo "export XLA_FLAGS='$XLA_FLAGS'"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION NCCL_DEBUG=$NCCL_DEBUG"
  echo "srun --kill-on-bad-exit=1 --cpu-bind=none bash -c $(quote "$TASK_COMMAND")"
  echo "# what each task gets (first node: node0):"
  for ((node = 0; node < DRY_NODES; node++)); do
    for ((local = 0; local < ntasks_per_node; local++)); do
      rank=$((node * ntasks_per_node + local))
      line="node$node task $rank: JAX_COORDINATOR_ADDRESS=node0:$PORT JAX_NUM_PROCESSES=$((DRY_NODES * ntasks_per_node)) JAX_PROCESS_ID=$rank"
      ((PER_NODE)) || line+=" JAX_LOCAL_DEVICE_IDS=$local"
      echo "$line"
    done
  done
  exit 0
fi

[[ -n "${SLURM_JOB_ID:-}" ]] || die "not inside a SLURM allocation: submit with sbatch (or salloc), or use --dry-run"
mkdir -p "$WORKDIR"
echo "bert_jax: $SLURM_NTASKS processes on $SLURM_JOB_NUM_NODES nodes ($SLURM_JOB_NODELIST); XLA_FLAGS=$XLA_FLAGS" >&2
exec "${SRUN[@]}"
