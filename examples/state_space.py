"""State-space models identified from input-output data whose initial states are unknown:
a linear second-order system (observer canonical form, so that its four parameters are
identifiable) and a nonlinear one (an Euler-discretised Duffing oscillator). Each is
measured in three experiments, each started from its own unknown state, with noise on the
output, and fitted by ``gc.least_squares`` with ``learn_initial=True``; the estimates ±
standard errors are set against the truth, and the fitted impulse response against the
true one, beside a fit that assumes zero initial states. Writes a PNG figure.

Run: python examples/state_space.py [--short] [--figure state_space.png]"""
import argparse
import time

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t
u, y = sp.Function("u"), sp.Function("y")
DT = 0.1


def linear() -> gc.Recurrence:
    """x(t) = A x(t-1) + B u(t) with A = [[a1, 1], [a2, 0]], B = [b1, b2]; y(t) = x1(t) + noise."""
    x1, x2 = sp.Function("x1"), sp.Function("x2")
    a1, a2, b1, b2 = sp.symbols("a1 a2 b1 b2")
    return gc.Recurrence({x1(t): a1 * x1(t - 1) + x2(t - 1) + b1 * u(t), x2(t): a2 * x1(t - 1) + b2 * u(t)},
                         loss=(x1(t) - y(t)) ** 2)


def duffing() -> gc.Recurrence:
    """p'' = -k p - c p' - d p³ + g u, Euler steps of DT; y(t) = p(t) + noise."""
    p, v = sp.Function("p"), sp.Function("v")
    k, c, d, g = sp.symbols("k c d g")
    return gc.Recurrence({p(t): p(t - 1) + DT * v(t - 1),
                          v(t): v(t - 1) + DT * (-k * p(t - 1) - c * v(t - 1) - d * p(t - 1) ** 3 + g * u(t))},
                         loss=(p(t) - y(t)) ** 2)


SYSTEMS = {   # name: (model, its measured state, true parameters, first guess, initial-state spread, impulse)
    "linear": (linear, "x1", {"a1": 1.8, "a2": -0.9, "b1": 1.0, "b2": 0.5}, {"a1": 1.5, "a2": -0.6, "b1": 0.5, "b2": 0.0},
               3.0, 1.0),
    "Duffing": (duffing, "p", {"k": 1.0, "c": 0.3, "d": 0.5, "g": 1.0}, {"k": 0.5, "c": 0.5, "d": 0.0, "g": 0.5},
                1.5, 20.0),
}


def experiments(kernel, truth: dict, T: int, B: int, spread: float, noise: float, rng) -> tuple[dict, dict]:
    """B experiments of T steps driven by white noise, from random initial states; y measured with noise."""
    U = rng.normal(size=(T, B))
    x0 = {s: spread * rng.normal(size=B) for s in kernel.program.states}
    out = kernel.forward(truth, {"u": U, "y": U}, initial=x0)
    first = kernel.program.states[0]   # the loss compares the first state with y
    return {"u": U, "y": out[first] + noise * rng.normal(size=(T, B))}, x0


def impulse(kernel, params: dict, amplitude: float, T: int = 80) -> np.ndarray:
    """The measured state's response to u = amplitude at t = 1, from rest."""
    U = np.zeros((T, 1))
    U[0] = amplitude
    try:
        return kernel.forward(params, {"u": U, "y": U})[kernel.program.states[0]][:, 0]
    except gc.GraphcompError:   # these parameters make the system diverge
        return np.full(T, np.nan)


def _error(response: np.ndarray, truth: np.ndarray) -> float:
    """The largest error relative to the true peak; infinite if the response diverges."""
    if not np.isfinite(response).all():
        return float("inf")
    return float(np.abs(response - truth).max() / np.abs(truth).max())


def main(short: bool = False, figure: str = "state_space.png") -> dict:
    T, B, noise = (120, 3, 0.05) if short else (300, 3, 0.05)
    rng = np.random.default_rng(0)
    results, panels = {}, []
    for name, (build, state, truth, guess, spread, amplitude) in SYSTEMS.items():
        kernel = gc.compile(build())
        data, x0 = experiments(kernel, truth, T, B, spread, noise, rng)
        start = time.perf_counter()
        fit = gc.least_squares(kernel, guess, data, learn_initial=True)
        seconds = time.perf_counter() - start
        zero = gc.least_squares(kernel, guess, data)   # pretending the experiments start at rest
        print(f"\n{name}: {B} experiments of {T} steps, output noise {noise}, unknown initial states; "
              f"fitted in {seconds:.2f} s ({fit.report.nfev} evaluations)")
        print(fit.summary().split("\n", 3)[0])
        print(f"{'':>6} {'true':>8} {'estimate':>9} {'± s.e.':>8} {'(est-true)/se':>14} {'zero-state fit':>15}")
        for p, v in truth.items():
            print(f"{p:>6} {v:8.4f} {fit.params[p]:9.4f} {fit.stderr[p]:8.2g} "
                  f"{(fit.params[p] - v) / fit.stderr[p]:14.2f} {zero.params[p]:15.4f}")
        for s, v in x0.items():
            print(f"{s + '(0)':>6} " + " ".join(f"{a:7.3f}/{b:<7.3f}" for a, b in zip(v, fit.initial[s]))
                  + "  (true/learned)")
        true_ir, fit_ir, zero_ir = (impulse(kernel, q, amplitude) for q in (truth, fit.params, zero.params))
        errors = {"learned": _error(fit_ir, true_ir), "zero": _error(zero_ir, true_ir)}
        shown = {k: f"{100 * e:.2f}%" if np.isfinite(e) else "diverges" for k, e in errors.items()}
        print(f"impulse response (u = {amplitude:g} at t = 1), largest error / peak: learned initial states "
              f"{shown['learned']}, zero initial states {shown['zero']}")
        results[name] = {"truth": truth, "params": fit.params, "stderr": fit.stderr, "initial": fit.initial,
                         "x0": x0, "impulse_error": errors, "seconds": seconds}
        panels.append((name, true_ir, fit_ir, zero_ir, amplitude))
    plt = gc.forecast.plot.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (name, true_ir, fit_ir, zero_ir, amplitude) in zip(axes, panels):
        gc.plot_forecast(true_ir, {"fit, learned initial states": fit_ir, "fit, zero initial states": zero_ir},
                         ax=ax, label="true system", title=f"{name}: impulse response (u = {amplitude:g} at t = 1)")
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    print(f"\nfigure: {figure}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    parser.add_argument("--figure", default="state_space.png", help="where to write the PNG figure")
    args = parser.parse_args()
    main(args.short, args.figure)
