#!/usr/bin/env bash
# Create .venv and install bert_jax. `bash setup.sh test` adds the test dependencies:
# PyTorch + transformers 5 (the numerical reference) and, in .legacy_hf/, transformers 4.57,
# the last release whose BERT has relative position embeddings and head_mask (tests run it
# in a subprocess so it never meets transformers 5).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -r requirements-test.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  if [ ! -f .legacy_hf/transformers/__init__.py ]; then
    .venv/bin/python -m pip install -q --no-deps --target .legacy_hf \
      'transformers==4.57.*' 'huggingface-hub>=0.34,<1.0' 'tokenizers>=0.22,<0.23'
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
