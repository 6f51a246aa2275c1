"""Scaling out on a local Dask cluster (gc.scale), on this machine's cores:

1. many fits at once: the throughput of gc.scale.fits (fits per second) with 1 and 2 worker
   processes, against the same fits one after the other in this process;
2. data-parallel training: an epoch of gc.Trainer(..., client=client) (gradients combined
   every update) and of local SGD (average_every=8) against the single-process trainer,
   for the small and medium Elman and LSTM sizes of benchmarks/bench_train.py;
3. Dask's own cost: the added latency of a data-parallel update, a task's round trip, the
   scheduler's time per task and the time to send parameters and return a gradient of P
   values: the inputs of the cost model in docs/performance.md, which this script evaluates.

Each part checks its results first: many fits equal the serial fits exactly, data-parallel
parameters equal the single-process ones to 1e-12. Times are medians of interleaved rounds.

    python benchmarks/bench_dask.py             # everything (about 3 minutes)
    python benchmarks/bench_dask.py --quick     # fewer fits and rounds, the small size only
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_dask.py   # a loaded machine

Dask's workers run one BLAS thread each (the nanny sets OPENBLAS_NUM_THREADS=1); on a loaded
machine this process's two BLAS threads spin against the load (an epoch 10 times slower, at
random), so give it one too, as the workers have (OpenBLAS reads it when it loads).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench import interleaved_ms  # noqa: E402

import graphcomp as gc  # noqa: E402
from graphcomp.scale.cluster import PLUGIN, Model, prepare  # noqa: E402
from graphcomp.train.trainer import _minibatches, sequences  # noqa: E402

SIZES = {  # H, T, B, minibatches per epoch (benchmarks/bench_train.py's); input and output H/2
    "small": (32, 50, 32, 32),
    "medium": (128, 100, 32, 16),
}
FIT = (16, 40, 128, 16, 100)   # many fits: an Elman network of H units, T steps, N sequences, batch, epochs


def series(H, T, N, seed=1):
    """N sequences (T, N, H/2) of inputs and of targets that depend on the past."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, N, H // 2))
    return {"x": X, "y": np.sin(np.cumsum(X, 0) / 4)}


def warm(client, model) -> None:
    """Build the model's kernel on every worker (and run it once), so that timings exclude compiling."""
    prepare(client)   # gives the workers their kernel cache
    spec, params = Model.of(model), model.init_params(seed=0)
    data = {n: np.zeros((2, 1) + model.step.signals[n].array_shape) for n in model.inputs}

    def build(dask_worker):
        dask_worker.plugins[PLUGIN].kernels.get(spec).loss_and_grad(params, data)
    client.run(build)


# ---------------------------------------------------------------- 1. many fits

def spin(n: int) -> int:
    """Pure Python arithmetic: what the cores give two processes at this moment, with no
    data, no BLAS and no graphcomp (the ceiling of any speed-up from a second worker)."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def many_fits(jobs_n: int, rounds: int) -> dict:
    H, T, N, B, epochs = FIT
    model = gc.models.elman(H // 2, H, H // 2)
    data = series(H, T, N)
    jobs = [gc.scale.Train(model, model.init_params(seed=i), gc.optim.Adam(1e-2), epochs=epochs, batch_size=B,
                           seed=i) for i in range(jobs_n)]
    serial = gc.scale.fits(None, jobs, data, progress=False)   # also compiles the model here
    times = {"serial": [], 1: [], 2: [], "spin 1": [], "spin 2": []}
    for r in range(rounds):
        start = time.perf_counter()
        gc.scale.fits(None, jobs, data, progress=False)
        times["serial"].append(time.perf_counter() - start)
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            with gc.scale.local(workers) as client:
                warm(client, model)
                start = time.perf_counter()
                results = gc.scale.fits(client, jobs, data, progress=False)
                times[workers].append(time.perf_counter() - start)
                start = time.perf_counter()
                client.gather([client.submit(spin, 3_000_000, pure=False) for _ in range(jobs_n)])
                times[f"spin {workers}"].append(time.perf_counter() - start)
            assert all(all(np.array_equal(a.params[p], b.params[p]) for p in a.params)
                       for a, b in zip(results, serial)), "many fits differ from the serial fits"
    return {k: float(np.median(v)) for k, v in times.items()} | {"jobs": jobs_n, "updates": epochs * -(-N // B)}


# ---------------------------------------------------------------- 2. data-parallel epochs

def data_parallel(client, kind: str, size: str, rounds: int) -> dict:
    H, T, B, n = SIZES[size]
    model = (gc.models.lstm if kind == "lstm" else gc.models.elman)(H // 2, H, H // 2)
    data = series(H, T, B * n)
    params = model.init_params(seed=0)
    warm(client, model)
    trainers = {"one process": gc.Trainer(model, gc.optim.Adam(1e-3), progress=False, compiled=False),
                "data-parallel": gc.Trainer(model, gc.optim.Adam(1e-3), progress=False, client=client),
                "local SGD k=8": gc.Trainer(model, gc.optim.Adam(1e-3), progress=False, client=client,
                                            average_every=8)}
    epoch = {name: (lambda tr=tr: tr.fit(params, data, epochs=1, batch_size=B, seed=0)) for name, tr in trainers.items()}
    for fit in epoch.values():
        fit()
    one, many = trainers["one process"].params, trainers["data-parallel"].params
    diff = max(float(np.abs(many[p] - one[p]).max() / np.abs(one[p]).max()) for p in one)
    assert diff < 1e-12, f"data-parallel parameters differ by {diff:.1e}"
    kernel = trainers["one process"].kernel
    batches = [sequences(data).batch(i) for i in _minibatches(np.full(B * n, T), B, np.random.default_rng(0))]
    alone = lambda: [kernel.loss_and_grad(params, inputs, lengths=lens) for inputs, lens in batches]
    times = interleaved_ms({**epoch, "loss_and_grad": alone}, rounds, budget=60.0)
    return {"case": f"{'LSTM' if kind == 'lstm' else 'Elman'} {size} (H={H}, T={T}, B={B}, {n} batches)",
            "params": sum(math.prod(np.shape(v)) for v in params.values()), "batches": n, "diff": diff, **times}


# ---------------------------------------------------------------- 3. Dask's own cost

def echo(values):
    return values


def noop():
    return None


def latency(client, rounds: int) -> dict:
    """Seconds: an update's added latency (a data-parallel update of a 1-step model, less the
    kernel call), a task's round trip, the scheduler's time per task (200 at once), and the
    round trip of a task that takes and returns P float64 values, for several P."""
    model = gc.models.elman(1, 1, 1)
    data = series(2, 1, 4)
    warm(client, model)
    trainer = gc.Trainer(model, gc.optim.SGD(1e-3), progress=False, client=client)
    trainer.fit(model.init_params(seed=0), data, epochs=1, batch_size=4)   # places the data
    params, index = trainer._params, np.arange(4)
    local = trainer.kernel
    inputs, lengths = sequences(data).batch(index)
    out = {}
    ms = interleaved_ms({"update": lambda: trainer._cluster.loss_and_grad(params, index),
                         "kernel": lambda: local.loss_and_grad(params, inputs, lengths=lengths),
                         "task": lambda: client.submit(noop, pure=False).result(),
                         "200 tasks": lambda: client.gather([client.submit(noop, pure=False) for _ in range(200)])},
                        rounds)
    out["update"], out["task"], out["per task"] = (ms["update"] - ms["kernel"]) / 1e3, ms["task"] / 1e3, \
        ms["200 tasks"] / 200 / 1e3
    for P in (10 ** 3, 10 ** 4, 10 ** 5, 10 ** 6):
        values = np.ones(P)
        out[P] = interleaved_ms({"echo": lambda: client.submit(echo, values, pure=False).result()}, rounds)["echo"] / 1e3
    return out


def bandwidth(lat: dict) -> tuple[float, float]:
    """A least-squares line through the echo times: (seconds per round trip, bytes per second
    for a value sent both ways)."""
    P = np.array([k for k in lat if isinstance(k, int)], float)
    t = np.array([lat[int(k)] for k in P])
    slope, intercept = np.polyfit(2 * 8 * P, t, 1)
    return float(intercept), float(1 / slope)


def model_costs(lat: dict, rows: list) -> list:
    """Per-update seconds with W workers on a cluster, for a fixed minibatch: the gradient's
    computation split W ways plus the exchange, (a) through the driver as gc.scale does it: W
    tasks scheduled, the parameters sent to and a gradient received from each worker over the
    driver's link, one after the other; (b) a tree all-reduce between the workers: log2 W
    levels up and down, each a task's latency and one gradient's transfer."""
    alpha, beta = bandwidth(lat)
    out = []
    for r in rows:
        compute = r["loss_and_grad"] / 1e3 / r["batches"]
        nbytes = 8 * r["params"]
        for W in (1, 2, 8, 32, 128):
            driver = compute / W + lat["update"] + (W - 1) * lat["per task"] + W * 2 * nbytes / beta
            levels = math.ceil(math.log2(W)) if W > 1 else 0
            tree = compute / W + lat["update"] + 2 * levels * (alpha + nbytes / beta)
            out.append((r["case"], W, compute, driver, tree))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="4 fits, 1 round, the small size only")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    jobs, rounds, sizes = (4, 1, ["small"]) if args.quick else (8, args.rounds, list(SIZES))
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load:.1f} at the start; dask "
          f"{__import__('distributed').__version__}; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')} here\n")
    start = time.perf_counter()

    f = many_fits(jobs, rounds)
    print(f"## many fits: {f['jobs']} fits of an Elman network (H={FIT[0]}, T={FIT[1]}, {FIT[2]} sequences, "
          f"batch {FIT[3]}, {FIT[4]} epochs: {f['updates']} updates each)\n")
    print("| where | seconds | fits per second | speed-up over 1 worker |")
    print("|---|---|---|---|")
    print(f"| this process, one after the other | {f['serial']:.2f} | {f['jobs'] / f['serial']:.2f} | "
          f"{f[1] / f['serial']:.2f}× |")
    for w in (1, 2):
        print(f"| gc.scale.fits, {w} worker{'s' if w > 1 else ''} | {f[w]:.2f} | {f['jobs'] / f[w]:.2f} | "
              f"**{f[1] / f[w]:.2f}×** |")
    print(f"\nThe same number of pure-Python tasks (no data, no BLAS) in the same clusters: "
          f"{f['spin 1']:.2f} s on 1 worker, {f['spin 2']:.2f} s on 2, **{f['spin 1'] / f['spin 2']:.2f}×**: "
          "the speed-up the machine's load left to gain.")

    rows = []
    with gc.scale.local(2) as client:
        print("\n## data-parallel epochs on 2 workers, Adam, equal lengths\n")
        print("| case | parameters | one process ms | data-parallel ms | ratio | local SGD k=8 ms | ratio "
              "| loss_and_grad alone ms | params differ by |")
        print("|---|---|---|---|---|---|---|---|---|")
        for size in sizes:
            for kind in ("elman", "lstm"):
                r = data_parallel(client, kind, size, rounds)
                rows.append(r)
                one = r["one process"]
                print(f"| {r['case']} | {r['params']} | {one:.1f} | {r['data-parallel']:.1f} | "
                      f"**{one / r['data-parallel']:.2f}×** | {r['local SGD k=8']:.1f} | "
                      f"**{one / r['local SGD k=8']:.2f}×** | {r['loss_and_grad']:.1f} | {r['diff']:.0e} |",
                      flush=True)
        lat = latency(client, max(rounds, 3))
    alpha, beta = bandwidth(lat)
    print("\n## Dask's own cost (2 local workers, loopback)\n")
    print(f"- a data-parallel update's added latency (2 tasks, a 1-unit model): {1e3 * lat['update']:.2f} ms")
    print(f"- one task's round trip (submit, run nothing, result): {1e3 * lat['task']:.2f} ms")
    print(f"- the scheduler's time per task, 200 at once: {1e3 * lat['per task']:.3f} ms")
    print("- a task that takes and returns P float64: " + ", ".join(
        f"P = {P:.0e}: {1e3 * lat[P]:.2f} ms" for P in lat if isinstance(P, int)))
    print(f"- fitted: {1e3 * alpha:.2f} ms per round trip + {beta / 1e9:.2f} GB/s")
    print("\n## on paper: seconds per update with W workers, a minibatch of 32 (inputs above)\n")
    print("| case | W | gradient alone (1 process) ms | through the driver ms | tree all-reduce ms |")
    print("|---|---|---|---|---|")
    for case, W, compute, driver, tree in model_costs(lat, rows):
        print(f"| {case} | {W} | {1e3 * compute:.2f} | {1e3 * driver:.2f} | {1e3 * tree:.2f} |")
    print(f"\n{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
