"""The adding problem (Hochreiter and Schmidhuber, 1997): each step reads a number in [0, 1]
and a marker; two steps are marked, one in each half of the sequence, and at the last step
the network must output the sum of the two marked numbers. The loss is taken at that step
only, so the gradient must carry the first number across half the sequence. An LSTM learns
it; an Elman network of the same hidden size stays near the baseline of always answering 1.0
(mean squared error 1/6 ≈ 0.167, the variance of the sum).

Run: python examples/adding.py [--short]"""
import argparse
import time

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t


def problem(n: int, T: int, rng: np.random.Generator) -> dict:
    """n sequences: x (T, n, 2) holds the numbers and the markers; y the sum, m = 1 at the last step."""
    x = np.zeros((T, n, 2))
    x[:, :, 0] = rng.uniform(size=(T, n))
    rows = np.arange(n)
    first, second = rng.integers(0, T // 2, n), rng.integers(T // 2, T, n)
    x[first, rows, 1] = x[second, rows, 1] = 1.0
    y = np.zeros((T, n, 1))
    y[-1, :, 0] = x[first, rows, 0] + x[second, rows, 0]
    m = np.zeros((T, n))
    m[-1] = 1.0
    return {"x": x, "y": y, "m": m}


def at_the_end(net: gc.Recurrence) -> gc.Recurrence:
    """A library network (built with loss=None) with its squared error taken where m(t) = 1."""
    eqs, n = net.equations(), len(net.states)
    m, o, y = sp.Function("m"), gc.signal("o", 1), gc.signal("y", 1)
    return gc.Recurrence({e.lhs: e.rhs for e in eqs[:n]}, outputs={"o": eqs[n].rhs},
                         loss=m(t) * gc.mse(o(t), y(t)))


def train(kind: str, T: int, H: int, n_train: int, epochs: int, seed: int = 0) -> dict:
    """Train one network on the adding problem; its test MSE and accuracy (|error| < 0.04)."""
    net = getattr(gc.models, kind)(2, H, 1, loss=None)
    model = at_the_end(net)
    rng = np.random.default_rng(seed)
    data, test = problem(n_train, T, rng), problem(1000, T, rng)
    start = time.perf_counter()
    trainer = gc.Trainer(model, gc.optim.Adam(gc.optim.cosine(1e-2, epochs * -(-n_train // 50))),
                         clip_norm=1.0, progress=False)
    history = trainer.fit(net.init_params(seed), data, epochs=epochs, batch_size=50, seed=seed)
    pred = trainer.kernel.forward(trainer.params, {"x": test["x"]})["o"][-1, :, 0]
    error = pred - test["y"][-1, :, 0]
    return {"mse": float(np.mean(error ** 2)), "accuracy": float(np.mean(np.abs(error) < 0.04)),
            "train_loss": history.loss, "seconds": time.perf_counter() - start}


def main(short: bool = False) -> dict:
    T, H = (20, 16) if short else (100, 32)
    n_train, epochs = (2000, 8) if short else (16000, 10)
    print(f"adding problem: T = {T} steps, hidden size {H}, {n_train} training sequences, {epochs} epochs")
    print(f"baseline (always 1.0): MSE {1 / 6:.3f}")
    results = {}
    for kind in ("elman", "lstm"):
        r = train(kind, T, H, n_train, epochs)
        results[kind] = r
        print(f"{kind:>6}: test MSE {r['mse']:.4f}, accuracy {100 * r['accuracy']:5.1f}% "
              f"(|error| < 0.04), trained in {r['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    main(parser.parse_args().short)
