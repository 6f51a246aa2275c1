"""Compile time, as a new user feels it: from "make the model" to "first loss+gradient", each
in a fresh process, graphcomp beside JAX's jit(value_and_grad) over lax.scan of the same
model, interleaved, medians of several runs. Also the import, and a new hidden size inside
one process (a notebook session, a sweep).

    python benchmarks/bench_compile.py            # the small LSTM and Elman, 3 runs each
    python benchmarks/bench_compile.py --runs 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

GRAPHCOMP = textwrap.dedent(f"""
    import sys, time
    start = time.perf_counter()
    sys.path.insert(0, {HERE!r})
    import numpy as np
    import graphcomp as gc
    from bench import elman_model, lstm_model, params_for
    imported = time.perf_counter()
    kind, H, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "wait"
    def first(H):
        t0 = time.perf_counter()
        model = (lstm_model if kind == "lstm" else elman_model)(32, H, 32)
        rng = np.random.default_rng(0)
        P = params_for(model, rng, np.float64)
        X, Y = rng.normal(size=(100, 32, 32)), rng.normal(size=(100, 32, 32))
        k = gc.compile(model, wait=wait)
        k.loss_and_grad(P, {{"x": X, "y": Y}})
        t1 = time.perf_counter()
        k.wait()
        return t1 - t0, time.perf_counter() - t0
    result, ready = first(H)
    again, _ = first(H + 1)   # another hidden size in the same process
    print(imported - start, result, ready, again)
""")

JAX = textwrap.dedent(f"""
    import sys, time
    start = time.perf_counter()
    sys.path.insert(0, {HERE!r})
    import numpy as np
    import jax
    from bench import jax_peer
    imported = time.perf_counter()
    kind, H = sys.argv[1], int(sys.argv[2])
    def first(H):
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        P = {{}}
        gates = "ifgo" if kind == "lstm" else [None]
        for g in gates:
            s = "" if g is None else "_" + g
            P["W" + s], P["U" + s], P["b" + s] = rng.normal(size=(H, H)) * .1, rng.normal(size=(H, 32)) * .1, np.zeros(H)
        P["V"], P["d"] = rng.normal(size=(32, H)) * .1, np.zeros(32)
        X, Y = rng.normal(size=(100, 32, 32)), rng.normal(size=(100, 32, 32))
        jax_peer(kind, P, X, Y, np.float64)()
        return time.perf_counter() - t0
    result = first(H)
    again = first(H + 1)
    print(imported - start, result, result, again)
""")


def run(code: str, args: list, cache: str) -> list:
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return [float(v) for v in out.stdout.split()]


def clear_loops(cache: str) -> None:
    """Forget compiled models, keep the runtime (compiled once per machine)."""
    for root, _, files in os.walk(cache):
        for f in files:
            if "graphcomp_loops_" in f or "graphcomp_kernels_" in f:
                os.remove(os.path.join(root, f))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["lstm", "elman"])
    args = parser.parse_args()
    try:
        import jax  # noqa: F401
        have_jax = True
    except ImportError:
        have_jax = False
    print("| model | situation | graphcomp s | JAX s | ratio (JAX / graphcomp) |")
    print("|---|---|---|---|---|")
    for kind in args.models:
        rows: dict = {}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cache:
                jax_run = run(JAX, [kind, 64], cache) if have_jax else [np.nan] * 4
                empty = run(GRAPHCOMP, [kind, 64, "wait"], cache)          # the runtime compiles too
                clear_loops(cache)
                new = run(GRAPHCOMP, [kind, 64, "wait"], cache)            # a model never seen (runtime cached)
                size = run(GRAPHCOMP, [kind, 80, "wait"], cache)           # a new hidden size: a cache hit
                clear_loops(cache)
                early = run(GRAPHCOMP, [kind, 64, "nowait"], cache)        # wait=False: first result early
            for name, g, j in (("import", empty[0], jax_run[0]),
                               ("empty cache", empty[1], jax_run[1]),
                               ("a model never seen", new[1], jax_run[1]),
                               ("a new hidden size, fresh process", size[1], jax_run[1]),
                               ("a new hidden size, same process", new[3], jax_run[3]),
                               ("wait=False: first result", early[1], jax_run[1]),
                               ("wait=False: compiled kernels ready", early[2], jax_run[1])):
                rows.setdefault(name, []).append((g, j))
        for name, pairs in rows.items():
            g = float(np.median([p[0] for p in pairs]))
            j = float(np.median([p[1] for p in pairs]))
            print(f"| {kind} small | {name} | {g:.2f} | {j:.2f} | {j / g:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
