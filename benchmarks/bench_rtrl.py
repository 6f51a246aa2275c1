"""Real-time recurrent learning against backpropagation through time: time and peak memory
of one whole-sequence loss + gradient against T.

- rtrl: ``gc.rtrl.loss_and_grad(kernel, ...)`` (forward-mode sensitivities, NumPy over the
  step IR, all P parameter directions at once);
- bptt: ``kernel.loss_and_grad(...)`` (the compiled Numba kernel, which keeps a tape).

Models: the scalar map s(t) = a s(t-1) + b tanh(s(t-1)) + c x(t) (P = 3) and a small LSTM
(``gc.models.lstm(D, H, 2)``). Peak memory is tracemalloc's peak during one call, the inputs
(given, O(T) for both) not counted; for bptt it includes the kernel's first allocation of its
workspace at that T. Time is the median of up to 3 calls (1 when a call takes over 10 s).

    python benchmarks/bench_rtrl.py            # scalar map T = 10^3..10^5, LSTM H=8 T = 10^2..10^4, H=16
    python benchmarks/bench_rtrl.py --quick    # T up to 10^4 and 10^3
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t


def scalar_map():
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
    data = lambda r, T, B: {"x": r.normal(size=(T, B)), "y": r.normal(size=(T, B))}
    return model, {"a": 0.5, "b": 0.3, "c": 0.2}, data


def lstm(D: int = 4, H: int = 8):
    model = gc.models.lstm(D, H, 2)
    data = lambda r, T, B: {"x": r.normal(size=(T, B, D)), "y": r.normal(size=(T, B, 2))}
    return model, model.init_params(seed=0), data


def median_s(fn, budget: float = 10.0) -> float:
    times = []
    while len(times) < 3 and sum(times) < budget:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_bytes(fn) -> int:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def run(name, make, Ts, B=1) -> list:
    model, params, data = make()
    kernel = gc.compile(model)
    r = np.random.default_rng(0)
    methods = {"rtrl": lambda d: gc.rtrl.loss_and_grad(kernel, params, d),
               "bptt": lambda d: kernel.loss_and_grad(params, d)}
    small = data(r, 5, B)
    for fn in methods.values():   # warm: compile, sympy's and lambdify's caches
        fn(small)
    rows = []
    P = sum(int(np.size(v)) for v in params.values())
    for T in Ts:
        d = data(r, T, B)
        row = {"model": name, "T": T, "B": B, "P": P}
        for method, fn in methods.items():
            row[f"{method}_peak_kb"] = peak_bytes(lambda: fn(d)) / 1024
            row[f"{method}_s"] = median_s(lambda: fn(d))
        l1, g1 = methods["rtrl"](d)
        l2, g2 = methods["bptt"](d)
        row["rel_err"] = max(float(np.abs(g1[p] - g2[p]).max() / max(1e-300, np.abs(g2[p]).max())) for p in g1)
        rows.append(row)
        print(f"{name:10s} T={T:6d} B={B} P={P:4d}  rtrl {row['rtrl_s']:9.4f} s ({T / row['rtrl_s']:9.0f} steps/s) "
              f"{row['rtrl_peak_kb']:9.1f} KiB   bptt {row['bptt_s']:9.4f} s ({T / row['bptt_s']:11.0f} steps/s) "
              f"{row['bptt_peak_kb']:9.1f} KiB   grad rel. diff {row['rel_err']:.1e}", flush=True)
    return rows


def main(quick: bool = False) -> list:
    rows = run("scalar map", scalar_map, [10 ** 3, 10 ** 4] if quick else [10 ** 3, 10 ** 4, 10 ** 5])
    rows += run("lstm H=8", lstm, [10 ** 2, 10 ** 3] if quick else [10 ** 2, 10 ** 3, 10 ** 4])
    if not quick:
        rows += run("lstm H=16", lambda: lstm(4, 16), [10 ** 2, 10 ** 3])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    main(parser.parse_args().quick)
