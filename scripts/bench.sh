#!/usr/bin/env bash
# Set up a fresh machine and run the benchmark against PyTorch and JAX (installs both).
# Arguments go to benchmarks/bench.py, e.g. `bash scripts/bench.sh --sizes tiny small`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore jax jaxlib
python3 benchmarks/bench.py "$@"
python3 benchmarks/bench_models.py   # gc.models' stacked/bidirectional LSTMs and GRU against torch's fused modules
python3 benchmarks/bench_train.py   # a training epoch (Trainer, both modes) against PyTorch (about 8 minutes)
python3 benchmarks/bench_methods.py   # gradient algorithms against T (about 6 minutes)
python3 benchmarks/bench_grid.py   # 2-D RNN and MD-LSTM against PyTorch and JAX (about 25 minutes: the PyTorch double loop)
