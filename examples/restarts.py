"""Random restarts of a system identification on a local Dask cluster: recover the natural
frequency of a lightly damped oscillator and the gain of the sensor that measures it. The
oscillator is discretised with semi-implicit Euler steps of dt,

    v(t) = v(t-1) - dt (ω² p(t-1) + 2 ζ ω v(t-1))
    p(t) = p(t-1) + dt v(t) + p0(t)              measured: gain · p(t) + noise

each trajectory starting from its own known displacement p0 (an input at t = 1). The sum of
squares has a local minimum near almost every frequency it is started from (a wrong
frequency fits best with the gain near zero), so a Gauss-Newton fit from one guess usually
fails. Sixteen fits from random guesses run at once with gc.scale.fits, each a
gc.least_squares fit on data sent to the workers once; the one with the lowest loss on
held-out trajectories wins.

Run: python examples/restarts.py [--short] [--workers N]"""
import argparse
import time

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t
DT, ZETA = 0.1, 0.02
TRUE = {"omega": 2.0, "gain": 1.5}
RESTARTS = 16


def oscillator() -> gc.Recurrence:
    p, v, p0, seen = (sp.Function(n) for n in ("p", "v", "p0", "seen"))
    omega, gain = sp.symbols("omega gain")
    return gc.Recurrence({v(t): v(t - 1) - DT * (omega ** 2 * p(t - 1) + 2 * ZETA * omega * v(t - 1)),
                          p(t): p(t - 1) + DT * v(t) + p0(t)},
                         loss=(gain * p(t) - seen(t)) ** 2)


def measure(kernel: gc.Kernel, n: int, T: int, rng: np.random.Generator, noise: float = 0.05) -> dict:
    """n trajectories of T steps from random known displacements, measured with noise."""
    start = np.zeros((T, n))
    start[0] = rng.uniform(0.5, 2.0, n)
    p = kernel.forward(TRUE, {"p0": start})["p"]
    return {"p0": start, "seen": TRUE["gain"] * p + noise * rng.normal(size=(T, n))}


def main(short: bool = False, workers: int | None = None) -> dict:
    n, T = (4, 300) if short else (8, 600)
    model = oscillator()
    for eq in model.equations():
        print("  ", eq.lhs, "=", eq.rhs)
    kernel = gc.compile(model)
    rng = np.random.default_rng(0)
    data, validation = measure(kernel, n, T, rng), measure(kernel, n, T, rng)
    starts = [{"omega": rng.uniform(0.5, 5.0), "gain": rng.uniform(0.5, 3.0)} for _ in range(RESTARTS)]
    jobs = [gc.scale.LeastSquares(kernel, start, name=f"restart {i}") for i, start in enumerate(starts)]
    print(f"\n{n} trajectories of {T} steps (dt = {DT}) and {n} held out; {RESTARTS} restarts from random guesses")
    begin = time.perf_counter()
    with gc.scale.local(workers) as client:
        ready = time.perf_counter()
        results = gc.scale.fits(client, jobs, data, validation=validation, progress=False)
        done = time.perf_counter()
        print(f"a local cluster of {len(client.nthreads())} workers started in {ready - begin:.1f} s; "
              f"the {RESTARTS} fits took {done - ready:.1f} s\n")
    best = results.best()
    print(f"{'restart':>8} {'start ω':>8} {'start gain':>10} {'fitted ω':>9} {'fitted gain':>11} {'val loss':>9}")
    for i, (start, r) in enumerate(zip(starts, results)):
        mark = "  <- best" if r is best else ""
        print(f"{i:>8} {start['omega']:8.3f} {start['gain']:10.3f} {float(r.params['omega']):9.4f} "
              f"{float(r.params['gain']):11.4f} {r.val_loss:9.4g}{mark}")
    found = {p: float(v) for p, v in best.params.items()}
    print(f"\nbest: {best.name}: ω = {found['omega']:.4f} ± {float(best.fit.stderr['omega']):.4f} "
          f"(true {TRUE['omega']}), gain = {found['gain']:.4f} ± {float(best.fit.stderr['gain']):.4f} "
          f"(true {TRUE['gain']})")
    return {"true": TRUE, "best": found, "fitted": [{p: float(v) for p, v in r.params.items()} for r in results],
            "val_loss": [r.val_loss for r in results], "seconds": done - ready}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    args = parser.parse_args()
    main(args.short, args.workers)
