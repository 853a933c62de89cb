#!/usr/bin/env bash
# Create .venv and install bert_jax. `bash setup.sh test` adds the test dependencies:
# PyTorch + transformers 5 (the numerical reference) and, in .legacy_hf/, transformers 4.57,
# the last release whose BERT has relative position embeddings and head_mask (tests run it
# in a subprocess so it never meets transformers 5).
#
# Safe to rerun: a .venv that does not work here (a dangling or foreign symlink, a file, a venv
# whose interpreter is gone or older than 3.10) is replaced; a working one is reused.
# `bash setup.sh venv` only creates (or repairs) .venv.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

venv_works() {
  [ -d .venv ] && [ ! -L .venv ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}
if ! venv_works; then
  if [ -e .venv ] || [ -L .venv ]; then
    echo "setup.sh: replacing .venv, which is not a working virtualenv of this checkout" >&2
    rm -rf .venv
  fi
  "$PY" -m venv .venv
fi
[ "${1:-}" = "venv" ] && exit 0
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -r requirements-test.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  if ! [ -f .legacy_hf/transformers/__init__.py ] || [ -L .legacy_hf ]; then
    rm -rf .legacy_hf
    .venv/bin/python -m pip install -q --no-deps --target .legacy_hf \
      'transformers==4.57.*' 'huggingface-hub>=0.34,<1.0' 'tokenizers>=0.22,<0.23'
  fi
else
  .venv/bin/python -m pip install -q -e .
fi
