"""One kernel shared by threads: the compiled loops release the GIL, so two threads calling
``loss_and_grad`` on different data run on two cores at once. Times two calls one after the
other against two threads making one call each (medians of interleaved rounds). Products
large enough for BLAS already use both cores (OpenBLAS's own threads), so a model whose time
goes to BLAS gains nothing from two threads of its own.

    python benchmarks/bench_threads.py
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from bench import elman_model, lstm_model, params_for, scalar_model  # noqa: E402

import graphcomp as gc  # noqa: E402

CASES = {   # name: (model, B, T, D, O)
    "scalar map (B=1, T=100000)": (scalar_model(), 1, 100_000, None, None),
    "Elman (B=8, T=2000, H=16)": (elman_model(4, 16, 4), 8, 2000, 4, 4),
    "LSTM (B=16, T=500, H=32)": (lstm_model(8, 32, 8), 16, 500, 8, 8),
}


def main(rounds: int = 7) -> None:
    print("| case | two calls in turn ms | two threads ms | speed-up |")
    print("|---|---|---|---|")
    for name, (model, B, T, D, O) in CASES.items():
        k = gc.compile(model)
        rng = np.random.default_rng(0)
        params = {"a": 0.5, "b": 0.3, "c": 0.2} if D is None else params_for(model, rng, np.float64)
        shape = (T, B) if D is None else (T, B, D)
        jobs = [{"x": rng.normal(size=shape), "y": rng.normal(size=shape if O is None else (T, B, O))}
                for _ in range(2)]
        call = lambda data: k.loss_and_grad(params, data)
        serial = [call(d) for d in jobs]
        pool = ThreadPoolExecutor(2)
        assert all(a[0] == b[0] for a, b in zip(pool.map(call, jobs), serial))   # the serial results
        turn, both = [], []
        for _ in range(rounds):   # bursts of 5, interleaved, with no idle gap: a core woken from
            # idle takes milliseconds to join (measured: no gain at all after a 0.2 s sleep)
            for times, run in ((turn, lambda: [call(d) for d in jobs]), (both, lambda: list(pool.map(call, jobs)))):
                for i in range(6):
                    t0 = time.perf_counter()
                    run()
                    if i:
                        times.append(time.perf_counter() - t0)
        a, b = 1e3 * np.median(turn), 1e3 * np.median(both)
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
