"""System identification: recover the four rates of a predator-prey (Lotka-Volterra) system
from noisy measured trajectories. The system is discretised with Euler steps of dt,

    prey(t) = prey(t-1) + dt (α prey(t-1) - β prey(t-1) pred(t-1))
    pred(t) = pred(t-1) + dt (δ prey(t-1) pred(t-1) - γ pred(t-1))

declared as a scalar sympy recurrence; the loss is the squared distance of the simulated
populations to the measured ones at every step. Each trajectory starts from its own
known populations, which enter as inputs at t = 1 (zero afterwards), so the trainer fits
the rates by backpropagation through the whole simulated trajectory.

Run: python examples/system_id.py [--short]"""
import argparse
import time

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t
TRUE = {"alpha": 1.0, "beta": 0.5, "gamma": 1.0, "delta": 0.3}
DT = 0.1


def lotka_volterra() -> gc.Recurrence:
    prey, pred, prey0, pred0 = (sp.Function(n) for n in ("prey", "pred", "prey0", "pred0"))
    seen_prey, seen_pred = sp.Function("seen_prey"), sp.Function("seen_pred")
    alpha, beta, gamma, delta = sp.symbols("alpha beta gamma delta")
    p, q = prey(t - 1), pred(t - 1)
    return gc.Recurrence(
        {prey(t): p + DT * (alpha * p - beta * p * q) + prey0(t),   # prey0, pred0: the start, at t = 1
         pred(t): q + DT * (delta * p * q - gamma * q) + pred0(t)},
        loss=(prey(t) - seen_prey(t)) ** 2 + (pred(t) - seen_pred(t)) ** 2)


def measure(kernel: gc.Kernel, n: int, T: int, noise: float, rng: np.random.Generator) -> dict:
    """n experiments of T steps, each started from known random populations; every later
    count is measured with Gaussian noise of standard deviation ``noise`` (relative to its size)."""
    start = np.zeros((T, n, 2))
    start[0] = rng.uniform([1.0, 0.5], [4.0, 2.5], size=(n, 2))
    first = {"prey0": start[:, :, 0], "pred0": start[:, :, 1]}
    sim = kernel.forward(TRUE, first)
    seen = {f"seen_{s}": sim[s] * (1 + noise * rng.normal(size=(T, n))) for s in ("prey", "pred")}
    return {**first, **seen}


def main(short: bool = False) -> dict:
    n, T, epochs = (16, 60, 150) if short else (64, 150, 200)
    noise = 0.05
    model = lotka_volterra()
    for eq in model.equations():
        print("  ", eq.lhs, "=", eq.rhs)
    kernel = gc.compile(model)
    rng = np.random.default_rng(0)
    data = measure(kernel, n, T, noise, rng)
    guess = {"alpha": 0.7, "beta": 0.7, "gamma": 0.7, "delta": 0.7}
    print(f"\n{n} trajectories of {T} steps (dt = {DT}), measured with {100 * noise:.0f}% noise; "
          f"fitting from {guess}")
    start = time.perf_counter()
    trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(0.05, epochs * -(-n // 8), 1e-3)),
                         clip_norm=10.0, progress=False)
    history = trainer.fit(guess, data, epochs=epochs, batch_size=8, seed=0)
    seconds = time.perf_counter() - start
    fitted = {p: float(v) for p, v in trainer.params.items()}
    print(f"trained {epochs} epochs in {seconds:.1f} s; loss per trajectory {history.loss[0]:.3g} -> "
          f"{history.loss[-1]:.3g} (at the true rates, the noise alone: {trainer.evaluate(data, TRUE):.3g})\n")
    print(f"{'parameter':>10} {'true':>8} {'fitted':>8} {'error':>8}")
    for p in TRUE:
        print(f"{p:>10} {TRUE[p]:8.3f} {fitted[p]:8.3f} {100 * (fitted[p] / TRUE[p] - 1):7.1f}%")
    return {"true": TRUE, "fitted": fitted, "loss": history.loss, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    main(parser.parse_args().short)
