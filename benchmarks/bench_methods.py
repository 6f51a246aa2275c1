"""Gradient algorithms against sequence length: time (median of interleaved runs) and peak
memory (tracemalloc, the kernel's kept workspace dropped first) of one loss_and_grad by
bptt, checkpoint (every ≈ sqrt(T)), tbptt(100, 100) and rtrl, beside the cost model's estimate.

    python benchmarks/bench_methods.py            # the scalar map to T = 10^6, an LSTM to 10^4
    python benchmarks/bench_methods.py --quick    # T to 10^4 and 10^3
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import sympy as sp

import graphcomp as gc

sys.path.insert(0, str(Path(__file__).parent))
from bench import interleaved_ms, lstm_model  # noqa: E402

t = gc.t
METHODS = {"bptt": {}, "checkpoint": {}, "tbptt": {"k1": 100}, "rtrl": {}}


def scalar_map():
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
    return model, {"a": 0.5, "b": 0.3, "c": 0.2}, lambda T, B, r: {"x": r.normal(size=(T, B)), "y": r.normal(size=(T, B))}


def small_lstm(D=4, H=16, O=4):
    model = lstm_model(D, H, O)
    return model, model.init_params(seed=0), lambda T, B, r: {"x": r.normal(size=(T, B, D)),
                                                             "y": r.normal(size=(T, B, O))}


def peak_bytes(kernel, call) -> int:
    call()   # compiled, then measured without the workspace a previous call left
    kernel.impl.release()
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def run(name, build, lengths, B, rounds, budget):
    model, params, data = build()
    kernel = gc.compile(model)
    print(f"\n## {name}, B = {B}, float64\n")
    print("| T | method | ms | peak MB | estimated MB | estimated Gflop |")
    print("|---|---|---|---|---|---|")
    slow = set()
    for T in lengths:
        inputs = data(T, B, np.random.default_rng(0))
        calls = {m: (lambda m=m: kernel.loss_and_grad(params, inputs, method=m, **METHODS[m]))
                 for m in METHODS if m not in slow}
        for m in list(calls):
            try:
                calls[m]()
            except Exception as e:   # a method in progress elsewhere: reported, not timed
                print(f"| {T:,} | {m} | failed: {type(e).__name__}: {e} | | | |")
                slow.add(m)
                del calls[m]
        start = time.perf_counter()
        ms = interleaved_ms(calls, rounds)
        for m in calls:
            peak = peak_bytes(kernel, calls[m])
            est = kernel.cost(m, T, B, **METHODS[m])
            print(f"| {T:,} | {m} | {ms[m]:.1f} | {peak / 1e6:.3f} | {est['bytes'] / 1e6:.3f} | {est['flops'] / 1e9:.3f} |",
                  flush=True)
            if ms[m] > budget * 1e3:   # too slow to run at the next length
                slow.add(m)
        print(f"<!-- T={T}: {time.perf_counter() - start:.0f} s -->", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter sequences")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per call above which a method stops growing T")
    args = ap.parse_args()
    top = 4 if args.quick else 6
    run("scalar map s(t) = a s(t-1) + b tanh(s(t-1)) + c x(t)", scalar_map,
        [10 ** e for e in range(3, top + 1)], 1, args.rounds, args.budget)
    run("LSTM D=4, H=16, O=4", small_lstm, [10 ** e for e in range(2, top - 1)], 4, args.rounds, args.budget)


if __name__ == "__main__":
    main()
