#!/usr/bin/env bash
# CI stage: the real TPU compiler, no TPU. Installs libtpu (the TPU compiler, ~300 MB) into .tpu_site
# beside .venv (git-ignored; --no-deps --target: nothing in .venv changes) and compiles a tiny BERT's
# train, eval and predict steps for v5p-8 / v4-8 / v5p-16 meshes with fsdp, data and tensor
# parallelism (tests/test_tpu_compile.py). BERT_JAX_REQUIRE_TPU=1 makes a missing libtpu a failure.
# Run from the repository root after the test stage (.venv present): bash .ci/tpu_stage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== TPU compiler (libtpu, compile-only) =="
# libtpu's version follows jax's (jax[tpu]==0.10.2 pins libtpu 0.0.42.*).
if [ ! -d .tpu_site/libtpu ]; then
  .venv/bin/python -m pip install -q --no-deps --target .tpu_site 'libtpu==0.0.42.*'
fi
# TPU_SKIP_MDS_QUERY: no GCE metadata server here; libtpu's warnings about TPU metadata are harmless.
# ALLOW_MULTIPLE_LIBTPU_LOAD: compile-only, so no exclusive /tmp/libtpu_lockfile.
BERT_JAX_REQUIRE_TPU=1 TPU_SKIP_MDS_QUERY=1 ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=.tpu_site:. \
  .venv/bin/python -m pytest -p no:xdist -q -m tpu_compile tests/test_tpu_compile.py
