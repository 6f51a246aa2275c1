#!/usr/bin/env bash
# Set up a fresh machine and run the benchmark against PyTorch and JAX (installs both).
# Arguments go to benchmarks/bench.py, e.g. `bash scripts/bench.sh --sizes tiny small`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore jax jaxlib
python3 benchmarks/bench.py "$@"
