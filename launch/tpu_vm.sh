#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM pod slice (or several slices over DCN): optionally create the TPU,
# put the repository on every worker, install jax[tpu] + requirements there, and start
# `python -m bert_jax.main` with the same flags on every worker (one JAX process per host).
#
#   bash launch/tpu_vm.sh --name=bert-pod --zone=us-east5-a --accelerator-type=v5p-128 --create \
#       --workdir=gs://my-bucket/bert_base -- --config=configs/pretrain.py:size=base,seq=128
#   bash launch/tpu_vm.sh --name=bert-ms --zone=us-east5-a --accelerator-type=v5p-128 --num-slices=2 --create \
#       --workdir=gs://my-bucket/bert_large -- --config=configs/pretrain.py:size=large --config.mesh.ici_parallelism=1,-1,1
#
# Multi-slice (--num-slices=N > 1) creates N slices as one queued resource (nodes NAME-0 .. NAME-N-1),
# passes the slice layout to every worker (MEGASCALE_* for the TPU runtime's DCN transport) and puts
# data parallelism across slices: --config.mesh.dcn_parallelism=N,1,1 (override it after `--`).
# jax.distributed gets its coordinator (worker 0 of slice 0), process count and process id through
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (bert_jax.sharding reads them); a
# worker finds its own index and its slice's hosts in the TPU VM metadata server.
#
# --dry-run prints every command instead of running it. Everything after `--` goes to bert_jax.main.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name=NAME --zone=ZONE --workdir=gs://BUCKET/DIR [options] -- [bert_jax.main flags]

  --name=NAME               TPU VM name (multi-slice: node prefix; nodes are NAME-0 .. NAME-<N-1>)
  --zone=ZONE               e.g. us-east5-a
  --project=PROJECT         gcloud project (default: gcloud's configured one)
  --workdir=gs://...        checkpoints and metrics, shared by all workers (or a path mounted on all)
  --create                  create the TPU first (needs --accelerator-type)
  --accelerator-type=TYPE   e.g. v5p-128, v5e-256, v4-32 (for --create)
  --runtime-version=V       TPU software version (default: by accelerator family, e.g. v2-alpha-tpuv5)
  --spot                    create as Spot capacity
  --num-slices=N            N slices over DCN (queued resource with --node-count=N; default 1)
  --repo=URL                git clone URL on the workers (default: copy this checkout with tpu-vm scp)
  --branch=BRANCH           branch or tag for --repo (default main)
  --remote-dir=DIR          checkout directory on the workers (default bert_jax, in the home dir)
  --skip-setup              do not copy/install (already set up)
  --dry-run                 print the commands, run nothing
  -h, --help                this message
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

NAME="" ZONE="" PROJECT="" WORKDIR="" CREATE=0 ACCELERATOR="" RUNTIME="" SPOT=0 NUM_SLICES=1
REPO="" BRANCH="main" REMOTE_DIR="bert_jax" SKIP_SETUP=0 DRY_RUN=0
MAIN_ARGS=()
while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --create) CREATE=1 ;;
    --accelerator-type=*) ACCELERATOR="${1#*=}" ;;
    --runtime-version=*) RUNTIME="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --num-slices=*) NUM_SLICES="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --branch=*) BRANCH="${1#*=}" ;;
    --remote-dir=*) REMOTE_DIR="${1#*=}" ;;
    --skip-setup) SKIP_SETUP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown option '$1' (bert_jax.main flags go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ "$WORKDIR" == gs://* || "$WORKDIR" == /* ]] ||
  die "--workdir must be a gs:// path (or an absolute path mounted on every worker), got '${WORKDIR}'"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer, got '$NUM_SLICES'"
if ((CREATE)); then
  [[ "$ACCELERATOR" =~ ^v[0-9][a-z]*-[0-9]+$ ]] || die "--create needs --accelerator-type like v5p-128, got '${ACCELERATOR}'"
  if [[ -z "$RUNTIME" ]]; then
    case "$ACCELERATOR" in
      v4-*) RUNTIME=tpu-ubuntu2204-base ;;
      v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
      v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
      v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
      *) die "no default --runtime-version for '$ACCELERATOR': pass one" ;;
    esac
  fi
fi
for arg in "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"; do
  [[ "$arg" != --workdir=* ]] || die "pass the workdir as --workdir before --, not to bert_jax.main"
done

GCLOUD=(gcloud compute tpus)
SCOPE=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || SCOPE+=(--project="$PROJECT")
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Shell-quotes one word for printing: as is when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
# Prints a command (copy-pasteable) under --dry-run, runs it otherwise.
run() {
  if ((DRY_RUN)); then
    local out="" word
    for word in "$@"; do out+="$(quote "$word") "; done
    # A coordinator resolved at run time: close the single quotes around the shell variable.
    out="${out//@@COORDINATOR_IP@@/\'\"\$COORDINATOR_IP\"\'}"
    printf '%s\n' "${out% }"
  else
    "$@"
  fi
}

if ((NUM_SLICES > 1)); then
  NODES=()
  for ((i = 0; i < NUM_SLICES; i++)); do NODES+=("$NAME-$i"); done
else
  NODES=("$NAME")
fi

# ------------------------------------------------------------------------------------ create
if ((CREATE)); then
  spot=()
  ((SPOT)) && spot=(--spot)
  if ((NUM_SLICES > 1)); then
    # A queued resource provisions all slices together (nodes NAME-0 ... NAME-N-1).
    run "${GCLOUD[@]}" queued-resources create "$NAME" "${SCOPE[@]}" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME" --node-count="$NUM_SLICES" --node-prefix="$NAME" "${spot[@]+"${spot[@]}"}"
    if ((!DRY_RUN)); then
      echo "waiting for queued resource $NAME to become ACTIVE ..." >&2
      until [[ "$("${GCLOUD[@]}" queued-resources describe "$NAME" "${SCOPE[@]}" --format='value(state.state)')" == ACTIVE ]]; do
        sleep 30
      done
    fi
  else
    run "${GCLOUD[@]}" tpu-vm create "$NAME" "${SCOPE[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" "${spot[@]+"${spot[@]}"}"
  fi
fi

# ------------------------------------------------------------------------------------- setup
if ((!SKIP_SETUP)); then
  if [[ -n "$REPO" ]]; then
    fetch="if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch --depth=1 origin $BRANCH && git -C $REMOTE_DIR checkout -f FETCH_HEAD; else git clone --depth=1 --branch=$BRANCH $REPO $REMOTE_DIR; fi && "
  else
    fetch=""
    # This checkout (tracked and untracked files, minus what git ignores), as one archive.
    archive="/tmp/bert_jax_src.tar.gz"
    if ((DRY_RUN)); then
      echo "(cd $(printf '%q' "$ROOT") && git ls-files -co --exclude-standard | tar -czf $archive -T -)"
    else
      (cd "$ROOT" && git ls-files -co --exclude-standard | tar -czf "$archive" -T -)
    fi
    for node in "${NODES[@]}"; do
      run "${GCLOUD[@]}" tpu-vm scp "$archive" "$node:bert_jax_src.tar.gz" "${SCOPE[@]}" --worker=all
    done
    fetch="mkdir -p $REMOTE_DIR && tar -xzf bert_jax_src.tar.gz -C $REMOTE_DIR && "
  fi
  setup="${fetch}cd $REMOTE_DIR && python3 -m pip install --upgrade pip && python3 -m pip install -r requirements.txt 'jax[tpu]' gcsfs google-cloud-storage && python3 -m pip install --no-deps -e ."
  for node in "${NODES[@]}"; do
    run "${GCLOUD[@]}" tpu-vm ssh "$node" "${SCOPE[@]}" --worker=all --command="$setup"
  done
fi

# --------------------------------------------------------------------------------------- run
# Per-worker environment, evaluated on the worker: its index and its slice's hosts come from the
# metadata server (worker-network-endpoints: "id:port:ip,..." in worker order).
METADATA='curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes'
worker_env='WORKER=$('"$METADATA"'/agent-worker-number) && ENDPOINTS=$('"$METADATA"'/worker-network-endpoints) && HOSTS=$(echo "$ENDPOINTS" | tr , "\n" | wc -l)'
flags=()  # after the user's flags
if ((NUM_SLICES > 1)); then
  # Slice 0's worker 0 coordinates jax.distributed and the DCN transport; its address is resolved here.
  describe=("${GCLOUD[@]}" tpu-vm describe "${NODES[0]}" "${SCOPE[@]}" --format='value(networkEndpoints[0].ipAddress)')
  if ((DRY_RUN)); then
    echo "COORDINATOR_IP=\$($(run "${describe[@]}"))"
    COORDINATOR_IP=@@COORDINATOR_IP@@
  else
    COORDINATOR_IP="$("${describe[@]}")"
  fi
  has_dcn=0
  for arg in "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}"; do [[ "$arg" != --config.mesh.dcn_parallelism=* ]] || has_dcn=1; done
  ((has_dcn)) || flags+=(--config.mesh.dcn_parallelism="$NUM_SLICES,1,1")
fi
quoted_flags=""
for word in --workdir="$WORKDIR" "${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}" "${flags[@]+"${flags[@]}"}"; do
  quoted_flags+=" $(quote "$word")"
done

for ((slice = 0; slice < ${#NODES[@]}; slice++)); do
  if ((NUM_SLICES > 1)); then
    dist="export MEGASCALE_COORDINATOR_ADDRESS=$COORDINATOR_IP MEGASCALE_NUM_SLICES=$NUM_SLICES MEGASCALE_SLICE_ID=$slice MEGASCALE_PORT=8080"
    dist+=" JAX_COORDINATOR_ADDRESS=$COORDINATOR_IP:8476 JAX_NUM_PROCESSES=\$((HOSTS * $NUM_SLICES)) JAX_PROCESS_ID=\$(($slice * HOSTS + WORKER))"
  else
    dist='export JAX_COORDINATOR_ADDRESS=$(echo "$ENDPOINTS" | cut -d, -f1 | cut -d: -f3):8476 JAX_NUM_PROCESSES=$HOSTS JAX_PROCESS_ID=$WORKER'
  fi
  command="$worker_env && $dist && cd $REMOTE_DIR && python3 -m bert_jax.main$quoted_flags 2>&1 | tee -a \$HOME/bert_jax_run.log"
  if ((${#NODES[@]} > 1)); then
    # Slices start together (each waits in jax.distributed for the others): ssh to all in parallel.
    if ((DRY_RUN)); then
      printf '%s &\n' "$(run "${GCLOUD[@]}" tpu-vm ssh "${NODES[$slice]}" "${SCOPE[@]}" --worker=all --command="$command")"
    else
      run "${GCLOUD[@]}" tpu-vm ssh "${NODES[$slice]}" "${SCOPE[@]}" --worker=all --command="$command" &
    fi
  else
    run "${GCLOUD[@]}" tpu-vm ssh "${NODES[$slice]}" "${SCOPE[@]}" --worker=all --command="$command"
  fi
done
if ((${#NODES[@]} > 1)); then
  if ((DRY_RUN)); then echo wait; else wait; fi
fi
