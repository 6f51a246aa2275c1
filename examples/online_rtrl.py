"""Online learning with real-time recurrent learning: track the parameters of a nonlinear
scalar map from a noisy stream, one observation at a time.

A hidden system runs s(t) = a s(t-1) + b tanh(s(t-1)) + c x(t) and we observe
y(t) = s(t) + noise. A model of the same form starts from wrong parameters; at every step
``gc.rtrl.Online`` returns the gradient of this step's squared error, carried forward with
the state (no tape, no look back), and plain SGD updates the parameters before the next
step. Run ``python examples/online_rtrl.py`` (``--short`` for a few seconds).
"""
from __future__ import annotations

import argparse

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t
TRUE = {"a": 0.6, "b": 0.5, "c": 0.8}


def model() -> gc.Recurrence:
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    return gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)},
                         outputs={"pred": s(t)}, loss=(s(t) - y(t)) ** 2)


def main(short: bool = False) -> dict:
    steps, every, lr = (2_000, 500, 0.002) if short else (20_000, 2_000, 0.002)
    rng = np.random.default_rng(0)
    kernel = gc.compile(model())
    teacher = kernel.stream(TRUE)                        # the hidden system
    params = {"a": 0.1, "b": 0.0, "c": 0.3}
    online = gc.rtrl.Online(kernel, params)
    running, window = [], []
    for i in range(1, steps + 1):
        x = rng.normal(size=1)
        y = teacher.step({"x": x})["s"] + 0.05 * rng.normal(size=1)
        loss, grads = online.step({"x": x, "y": y})
        for p in params:                                 # SGD between steps: RTRL's online approximation
            params[p] -= lr * float(grads[p])
        window.append(float(loss))
        if i % every == 0:
            running.append(float(np.mean(window)))
            window = []
            shown = ", ".join(f"{p}={v:+.3f}" for p, v in params.items())
            print(f"step {i:6d}  running loss {running[-1]:.5f}  {shown}")
    print("true parameters:", ", ".join(f"{p}={v:+.3f}" for p, v in TRUE.items()))
    return {"running_loss": running, "params": dict(params), "true": dict(TRUE), "steps": steps}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few seconds instead of a minute")
    main(parser.parse_args().short)
