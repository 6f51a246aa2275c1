"""The test catalogue: models written in the public DSL, each with random data of the right
shapes (unequal lengths, initial values where the model has delays)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t


@dataclass
class Case:
    name: str
    model: gc.Recurrence
    params: dict
    inputs: dict
    lengths: np.ndarray | None = None
    initial: dict = field(default_factory=dict)


def _rng(seed):
    return np.random.default_rng(seed)


def _params(model, rng, scale=0.5):
    """Random parameters, biases included (init_params zeros them)."""
    out = {}
    for name, shape in model.step.params.items():
        shape = shape[:1] if shape[1:] == (1,) else shape
        out[name] = float(rng.normal(0, scale)) if not shape else rng.normal(0, scale / np.sqrt(shape[-1]), shape)
    return out


def linear_scalar(seed=0, T=8, B=3):
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, c = sp.symbols("a c")
    m = gc.Recurrence({s(t): a * s(t - 1) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
    r = _rng(seed)
    return Case("linear_scalar", m, {"a": 0.7, "c": -0.4}, {"x": r.normal(size=(T, B)), "y": r.normal(size=(T, B))},
                initial={"s": r.normal(size=B)})


def nonlinear_map(seed=1, T=9, B=3):
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    m = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, outputs={"o": s(t)},
                      loss=(s(t) - y(t)) ** 2)
    r = _rng(seed)
    return Case("nonlinear_map", m, {"a": 0.5, "b": 0.3, "c": 0.2},
                {"x": r.normal(size=(T, B)), "y": r.normal(size=(T, B))}, np.array([9, 4, 1]))


def delays(seed=2, T=10, B=3):
    """Delays up to 3 on the state and up to 2 on the input; initial values for the history."""
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c, d = sp.symbols("a b c d")
    m = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 3)) + c * x(t - 2) + d * x(t)},
                      loss=(s(t) - y(t)) ** 2 + 0.1 * s(t - 2) * y(t))
    r = _rng(seed)
    return Case("delays", m, {"a": 0.4, "b": 0.5, "c": -0.3, "d": 0.2},
                {"x": r.normal(size=(T, B)), "y": r.normal(size=(T, B))}, np.array([10, 6, 2]),
                {"s": r.normal(size=(3, B)), "x": r.normal(size=(2, B))})


def coupled(seed=3, T=8, B=2):
    """Two coupled scalar states (a damped nonlinear oscillator)."""
    u, v, x, y = (sp.Function(n) for n in "uvxy")
    a, b, c = sp.symbols("a b c")
    m = gc.Recurrence({u(t): a * u(t - 1) - b * sp.tanh(v(t - 1)) + c * x(t),
                       v(t): b * gc.sigmoid(u(t - 1)) + a * v(t - 1)},
                      outputs={"p": u(t) + v(t)}, loss=(u(t) + v(t) - y(t)) ** 2)
    r = _rng(seed)
    return Case("coupled", m, {"a": 0.6, "b": 0.5, "c": 0.3},
                {"x": r.normal(size=(T, B)), "y": r.normal(size=(T, B))}, np.array([8, 5]),
                {"u": r.normal(size=B), "v": r.normal(size=B)})


def elman(seed=4, T=7, B=3, D=3, H=4, O=2):
    h, x, y = gc.signal("h", H), gc.signal("x", D), gc.signal("y", O)
    W, U, V = gc.param("W", H, H), gc.param("U", H, D), gc.param("V", O, H)
    b, c = gc.param("b", H), gc.param("c", O)
    m = gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + U * x(t) + b)}, outputs={"o": V * h(t) + c},
                      loss=gc.mse(gc.signal("o", O)(t), y(t)))
    r = _rng(seed)
    return Case("elman", m, _params(m, r, 1.0), {"x": r.normal(size=(T, B, D)), "y": r.normal(size=(T, B, O))},
                np.array([7, 3, 5]), {"h": r.normal(size=(B, H))})


def lstm_model(D, H, O):
    h, c, x, y = gc.signal("h", H), gc.signal("c", H), gc.signal("x", D), gc.signal("y", O)
    W = {g: gc.param(f"W{g}", H, H) for g in "ifgo"}
    U = {g: gc.param(f"U{g}", H, D) for g in "ifgo"}
    b = {g: gc.param(f"b{g}", H) for g in "ifgo"}
    pre = {g: W[g] * h(t - 1) + U[g] * x(t) + b[g] for g in "ifgo"}
    i, f, o, g = gc.sigmoid(pre["i"]), gc.sigmoid(pre["f"]), gc.sigmoid(pre["o"]), gc.tanh(pre["g"])
    V = gc.param("V", O, H)
    return gc.Recurrence({c(t): gc.hadamard(f, c(t - 1)) + gc.hadamard(i, g),
                          h(t): gc.hadamard(o, gc.tanh(c(t)))},
                         outputs={"z": V * h(t)}, loss=gc.cross_entropy(gc.signal("z", O)(t), y(t)))


def lstm(seed=5, T=6, B=3, D=2, H=3, O=3):
    m = lstm_model(D, H, O)
    r = _rng(seed)
    onehot = np.eye(O)[r.integers(0, O, size=(T, B))]
    return Case("lstm", m, _params(m, r, 1.0), {"x": r.normal(size=(T, B, D)), "y": onehot},
                np.array([6, 2, 4]), {"h": r.normal(size=(B, H)), "c": r.normal(size=(B, H))})


def stacked(seed=6, T=6, B=2, D=2, H=3):
    """Two Elman layers: the second reads the first at the same step."""
    h1, h2, x, y = gc.signal("h1", H), gc.signal("h2", H), gc.signal("x", D), gc.signal("y", H)
    W1, U1, W2, U2 = gc.param("W1", H, H), gc.param("U1", H, D), gc.param("W2", H, H), gc.param("U2", H, H)
    m = gc.Recurrence({h2(t): gc.tanh(W2 * h2(t - 1) + U2 * h1(t)),
                       h1(t): gc.tanh(W1 * h1(t - 1) + U1 * x(t))},
                      loss=gc.mse(h2(t), y(t)))
    r = _rng(seed)
    return Case("stacked", m, _params(m, r, 1.0), {"x": r.normal(size=(T, B, D)), "y": r.normal(size=(T, B, H))},
                np.array([4, 6]))


def bidirectional(seed=7, T=6, B=3, D=2, H=3, O=2):
    f, g, x, y = gc.signal("f", H), gc.signal("g", H), gc.signal("x", D), gc.signal("y", O)
    A, Bm, Uf, Ub = gc.param("A", H, H), gc.param("B", H, H), gc.param("Uf", H, D), gc.param("Ub", H, D)
    Vf, Vb = gc.param("Vf", O, H), gc.param("Vb", O, H)
    m = gc.Recurrence({f(t): gc.tanh(A * f(t - 1) + Uf * x(t)), g(t): gc.tanh(Bm * g(t + 1) + Ub * x(t))},
                      outputs={"z": Vf * f(t) + Vb * g(t)}, loss=gc.mse(gc.signal("z", O)(t), y(t)))
    r = _rng(seed)
    return Case("bidirectional", m, _params(m, r, 1.0),
                {"x": r.normal(size=(T, B, D)), "y": r.normal(size=(T, B, O))}, np.array([6, 2, 4]),
                {"f": r.normal(size=(B, H)), "g": r.normal(size=(B, H))})


def vector_delays(seed=8, T=7, B=2, D=2, H=2):
    """Vector state with delays 1 and 2, an input read at t-1, concat and a Hadamard product."""
    h, x, y = gc.signal("h", H), gc.signal("x", D), gc.signal("y", H)
    W, U, a = gc.param("W", H, 2 * H), gc.param("U", H, D), gc.param("a")
    z = sp.Symbol("z")
    soft = sp.Lambda(z, z / (1 + z ** 2))
    m = gc.Recurrence({h(t): gc.elementwise(soft, W * gc.concat(h(t - 1), h(t - 2)) + U * x(t - 1))
                       + a * gc.hadamard(h(t - 1), h(t - 2))},
                      loss=gc.mse(h(t), y(t)))
    r = _rng(seed)
    return Case("vector_delays", m, _params(m, r, 1.0),
                {"x": r.normal(size=(T, B, D)), "y": r.normal(size=(T, B, H))}, np.array([7, 3]),
                {"h": r.normal(size=(2, B, H))})


CATALOGUE = [linear_scalar, nonlinear_map, delays, coupled, elman, lstm, stacked, bidirectional, vector_delays]


def finite_difference(kernel, case: Case, eps: float = 1e-6) -> dict:
    """Central finite differences of the loss, entry by entry."""
    def loss(params):
        return kernel.loss_and_grad(params, case.inputs, case.lengths, case.initial)[0]

    grads = {}
    for name, value in case.params.items():
        value = np.asarray(value, dtype=float)
        g = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            plus, minus = dict(case.params), dict(case.params)
            vp, vm = value.copy(), value.copy()
            vp[i] += eps
            vm[i] -= eps
            plus[name], minus[name] = vp, vm
            g[i] = (loss(plus) - loss(minus)) / (2 * eps)
        grads[name] = g
    return grads
