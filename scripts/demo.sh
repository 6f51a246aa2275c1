#!/usr/bin/env bash
# Set up a fresh machine and run the tour of graphcomp.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 examples/tour.py
