#!/usr/bin/env bash
# N JAX processes on one machine, each with K fake CPU devices, joined by jax.distributed over a
# localhost coordinator: the code path of a pod (process 0 coordinates, every process feeds its own
# slice of the global batch, collectives over gloo) on a laptop or CI box.
#
#   bash launch/local_multiprocess.sh --num-processes=2 --devices-per-process=2 -- \
#       --config=configs/pretrain.py:runlocal --workdir=/tmp/bert_local
#
# Everything after `--` goes unchanged to `python -m bert_jax.main` in every process. Process i
# logs to LOG_DIR/process_i.log (default: WORKDIR/logs). Exit status: 0 when every process exited
# 0; otherwise the first failure's status, after the remaining processes have been stopped.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] -- [bert_jax.main flags]

Options:
  --num-processes=N         processes to start (default 2)
  --devices-per-process=K   fake CPU devices per process (default 4)
  --port=P                  coordinator port on 127.0.0.1 (default: a free port)
  --log-dir=DIR             per-process logs DIR/process_<i>.log (default: WORKDIR/logs)
  --python=PY               interpreter (default: .venv/bin/python if present, else python3)
  --timeout=S               stop every process after S seconds (default: none)
  --dry-run                 print the commands and environment, start nothing
  -h, --help                this message
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NUM_PROCESSES=2
DEVICES_PER_PROCESS=4
PORT=""
LOG_DIR=""
PYTHON=""
TIMEOUT=""
DRY_RUN=0
MAIN_ARGS=()

die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --num-processes=*) NUM_PROCESSES="${1#*=}" ;;
    --devices-per-process=*) DEVICES_PER_PROCESS="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --log-dir=*) LOG_DIR="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --timeout=*) TIMEOUT="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (bert_jax.main flags go after --; see --help)" ;;
  esac
  shift
done

for pair in "num-processes:$NUM_PROCESSES" "devices-per-process:$DEVICES_PER_PROCESS"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ -z "$TIMEOUT" || "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer, got '$TIMEOUT'"

if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

WORKDIR=""
for arg in "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"; do
  case "$arg" in --workdir=*) WORKDIR="${arg#*=}" ;; esac
done
[[ -n "$WORKDIR" ]] || die "pass --workdir=DIR after -- (every process must share it: checkpoints are collective)"
LOG_DIR="${LOG_DIR:-$WORKDIR/logs}"

if [[ -z "$PORT" ]]; then  # the OS picks a free port; a race with another binder is unlikely on one box
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# Drop any inherited device-count flag (the last one would win anyway, but keep the env readable).
INHERITED_XLA_FLAGS=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || INHERITED_XLA_FLAGS+="$flag "
done

common_env=(
  JAX_PLATFORMS=cpu
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo  # cross-process collectives on CPU (the default has none)
  "XLA_FLAGS=${INHERITED_XLA_FLAGS}--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT"
  JAX_NUM_PROCESSES="$NUM_PROCESSES"
)

if ((DRY_RUN)); then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    printf 'env'; printf ' %q' "${common_env[@]}" "JAX_PROCESS_ID=$i"
    printf ' %q' "$PYTHON" -m bert_jax.main "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"
    printf ' > %q 2>&1 &\n' "$LOG_DIR/process_$i.log"
  done
  echo wait
  exit 0
fi

mkdir -p "$LOG_DIR"
PIDS=()
# Stops only the processes this script started: SIGTERM first (the trainer saves a checkpoint and
# exits), SIGKILL after 20 s for any stuck in a collective whose peer is gone.
stop_all() {
  local pid waited=0
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  while ((waited < 20)); do
    local alive=0
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 1
    waited=$((waited + 1))
  done
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

cd "$ROOT"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  env "${common_env[@]}" "JAX_PROCESS_ID=$i" "$PYTHON" -m bert_jax.main "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}" \
    >"$LOG_DIR/process_$i.log" 2>&1 &
  PIDS+=("$!")
done
echo "started $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices (coordinator 127.0.0.1:$PORT);" \
     "logs in $LOG_DIR/process_<i>.log" >&2

declare -A RANK_OF
for ((i = 0; i < NUM_PROCESSES; i++)); do RANK_OF[${PIDS[$i]}]=$i; done
TIMER=""
if [[ -n "$TIMEOUT" ]]; then  # a timer among the waited-for jobs: its end is the timeout
  sleep "$TIMEOUT" &
  TIMER=$!
fi

# One process failing leaves the others blocked in a collective: stop them at its first failure.
STATUS=0
while ((${#RANK_OF[@]})); do
  finished=""
  set +e
  wait -n -p finished "${!RANK_OF[@]}" ${TIMER:+"$TIMER"}
  rc=$?
  set -e
  [[ -n "$finished" ]] || break
  if [[ "$finished" == "$TIMER" ]]; then
    echo "local_multiprocess.sh: timeout after ${TIMEOUT}s; stopping the processes" >&2
    TIMER="" STATUS=124
    stop_all
    break
  fi
  rank=${RANK_OF[$finished]}
  unset "RANK_OF[$finished]"
  if ((rc != 0)); then
    echo "process $rank exited with status $rc; see $LOG_DIR/process_$rank.log" >&2
    STATUS=$rc
    stop_all
    break
  fi
done
for pid in "${!RANK_OF[@]}"; do wait "$pid" 2>/dev/null || true; done  # stopped: collect them
[[ -z "$TIMER" ]] || kill "$TIMER" 2>/dev/null || true
exit "$STATUS"
