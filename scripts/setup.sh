#!/usr/bin/env bash
# Install everything graphcomp needs on a fresh Debian machine: the graphviz `dot` binary
# and the package with its Python dependencies. `setup.sh test` adds the test tools, matplotlib
# and statsmodels (the figures and the system-identification examples' baselines), scikit-learn
# (the digits example), Dask's distributed scheduler (gc.scale, tested on a local cluster) and
# the CPU build of PyTorch the parity tests compare against.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq graphviz >/dev/null
    else
        echo "warning: graphviz's dot binary is missing; install graphviz to render diagrams" >&2
    fi
fi
PIP="python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore"
if [ "${1:-}" = "test" ]; then
    $PIP -e ".[test,fit,dask]"
    $PIP "torch==2.13.0"
else
    $PIP -e .
fi
