"""The model library: the classic recurrent networks, written in the public DSL.

Each function returns a ``Model``, a ``gc.Recurrence`` that also knows how its parameters are
initialised (``init``). Textbook names throughout: ``x`` the input, ``h`` the hidden state,
``o = V top(t) + b_V`` the readout and ``y`` the target of the per-step loss. In a weight's
name, ``W`` multiplies the previous state and ``U`` the layer's input (PyTorch's
``weight_hh`` and ``weight_ih``); a gate's weights carry its letter (``W_f``, ``U_f``, ``b_f``).

Common keyword arguments:

- ``layers=n``: layer k reads layer k-1's state at the same step; its names end in ``k``
  (``h1``, ``h2``, ``W_f2``); one layer keeps the plain names.
- ``bidirectional=True``: every layer also runs a backward state read at t+1 (names ending in
  ``_bw``: ``h_bw``, ``W_bw``); the next layer and the readout read ``[h; h_bw]``.
- ``loss``: ``"mse"`` (``gc.mse(o, y)``), ``"cross_entropy"`` (logits ``o``, one-hot ``y``) or
  ``None`` (no loss, no target).
- ``prefix`` goes in front of every state and parameter name; ``x``, ``o`` and ``y`` rename
  the input, the output and the target."""
from __future__ import annotations

from typing import Callable

import numpy as np
import sympy as sp

from .declare import concat, cross_entropy, hadamard, mse, param, relu, sigmoid, signal, t, tanh
from .errors import GraphcompError, is_count
from .recurrence import Recurrence

ACTIVATIONS = {"tanh": tanh, "relu": relu, "sigmoid": sigmoid}
LOSSES = ("mse", "cross_entropy", None)


class Model(Recurrence):
    """A library model: a ``gc.Recurrence`` plus the rule that initialises each parameter
    (``"glorot"``, ``"orthogonal"``, ``"forget"`` for an LSTM's forget bias, or a constant)."""

    def __init__(self, updates: dict, outputs: dict, loss, rules: dict):
        super().__init__(updates, outputs, loss)
        self.rules = rules

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        """The architecture's initialisation (see ``gc.models.init``)."""
        return init(self, seed)


# ---------------------------------------------------------------- the networks

def elman(D: int, H: int, O: int, *, activation: str = "tanh", layers: int = 1, bidirectional: bool = False,
          loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o", y: str = "y") -> Model:
    """Elman's simple recurrent network (PyTorch's ``nn.RNN``)::

        h(t) = act(W h(t-1) + U x(t) + b)        o(t) = V h(t) + b_V

    Parameters ``W`` (H x H), ``U`` (H x D), ``b`` (H), ``V`` (O x H), ``b_V`` (O);
    ``activation`` is ``"tanh"``, ``"relu"`` or ``"sigmoid"``.

    >>> model = gc.models.elman(3, 8, 2)
    >>> model.params
    ['U', 'W', 'b', 'V', 'b_V']"""
    D, H, O = _sizes("elman", D, H, O)
    act = ACTIVATIONS[_choice("elman", "activation", activation, ACTIVATIONS)]

    def cell(inp, n_in, name, d):
        h, W, U, b = signal(name("h"), H), param(name("W"), H, H), param(name("U"), H, n_in), param(name("b"), H)
        return {h(t): act(W * h(t + d) + U * inp + b)}, h, _rules(W, U, b)

    return _network("elman", cell, D, H, O, layers, bidirectional, loss, prefix, x, o, y)


def jordan(D: int, H: int, O: int, *, activation: str = "tanh", loss: str | None = "mse", prefix: str = "",
           x: str = "x", o: str = "o", y: str = "y") -> Model:
    """Jordan's network: the hidden layer reads the previous *output*, not its own state::

        h(t) = act(W o(t-1) + U x(t) + b)        o(t) = V h(t) + b_V

    ``o`` is a state (read at t-1) and the model's output. Parameters ``W`` (H x O),
    ``U`` (H x D), ``b`` (H), ``V`` (O x H), ``b_V`` (O).

    >>> model = gc.models.jordan(3, 8, 2)
    >>> model.states
    ['h', 'o']"""
    D, H, O = _sizes("jordan", D, H, O)
    act = ACTIVATIONS[_choice("jordan", "activation", activation, ACTIVATIONS)]
    _names("jordan", prefix, x, o, y)
    xs, h, out = signal(x, D), signal(prefix + "h", H), signal(o, O)
    W, U, b = param(prefix + "W", H, O), param(prefix + "U", H, D), param(prefix + "b", H)
    V, b_V = param(prefix + "V", O, H), param(prefix + "b_V", O)
    updates = {h(t): act(W * out(t - 1) + U * xs(t) + b), out(t): V * h(t) + b_V}
    return Model(updates, {}, _loss("jordan", loss, out(t), O, y), {**_rules(W, U, b), **_rules(None, V, b_V)})


def lstm(D: int, H: int, O: int, *, peephole: bool = False, layers: int = 1, bidirectional: bool = False,
         loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o", y: str = "y") -> Model:
    """Long short-term memory (PyTorch's ``nn.LSTM``), gates i, f, g, o::

        i(t) = σ(W_i h(t-1) + U_i x(t) + b_i)     f(t) = σ(W_f h(t-1) + U_f x(t) + b_f)
        g(t) = tanh(W_g h(t-1) + U_g x(t) + b_g)  o(t) = σ(W_o h(t-1) + U_o x(t) + b_o)
        c(t) = f(t) ⊙ c(t-1) + i(t) ⊙ g(t)        h(t) = o(t) ⊙ tanh(c(t))

    and the readout ``V h(t) + b_V``. With ``peephole=True`` the gates also read the cell
    (Gers and Schmidhuber): ``+ p_i ⊙ c(t-1)`` in i, ``+ p_f ⊙ c(t-1)`` in f and
    ``+ p_o ⊙ c(t)`` in o, with per-unit vectors ``p_i``, ``p_f``, ``p_o`` (H).
    Parameters ``W_*`` (H x H), ``U_*`` (H x D), ``b_*`` (H); states ``c`` then ``h``.

    >>> model = gc.models.lstm(3, 8, 2, layers=2)
    >>> model.states
    ['c1', 'h1', 'c2', 'h2']"""
    D, H, O = _sizes("lstm", D, H, O)
    _flag("lstm", "peephole", peephole)

    def cell(inp, n_in, name, d):
        h, c = signal(name("h"), H), signal(name("c"), H)
        W = {g: param(name(f"W_{g}"), H, H) for g in "ifgo"}
        U = {g: param(name(f"U_{g}"), H, n_in) for g in "ifgo"}
        b = {g: param(name(f"b_{g}"), H) for g in "ifgo"}
        pre = {g: W[g] * h(t + d) + U[g] * inp + b[g] for g in "ifgo"}
        rules = {n: r for g in "ifgo" for n, r in _rules(W[g], U[g], b[g]).items()}
        rules[b["f"].name] = "forget"
        if peephole:
            p = {g: param(name(f"p_{g}"), H) for g in "ifo"}
            pre = {"i": pre["i"] + hadamard(p["i"], c(t + d)), "f": pre["f"] + hadamard(p["f"], c(t + d)),
                   "g": pre["g"], "o": pre["o"] + hadamard(p["o"], c(t))}
            rules.update({v.name: 0.0 for v in p.values()})
        i, f, g, og = sigmoid(pre["i"]), sigmoid(pre["f"]), tanh(pre["g"]), sigmoid(pre["o"])
        updates = {c(t): hadamard(f, c(t + d)) + hadamard(i, g), h(t): hadamard(og, tanh(c(t)))}
        return updates, h, rules

    return _network("lstm", cell, D, H, O, layers, bidirectional, loss, prefix, x, o, y)


def gru(D: int, H: int, O: int, *, variant: str = "pytorch", layers: int = 1, bidirectional: bool = False,
        loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o", y: str = "y") -> Model:
    """Gated recurrent unit, reset gate r and update gate z::

        r(t) = σ(W_r h(t-1) + U_r x(t) + b_r)     z(t) = σ(W_z h(t-1) + U_z x(t) + b_z)
        h(t) = (1 - z(t)) ⊙ n(t) + z(t) ⊙ h(t-1)

    ``variant="pytorch"`` (``nn.GRU``): ``n(t) = tanh(U_n x(t) + b_n + r(t) ⊙ (W_n h(t-1) + b_hn))``,
    whose second bias ``b_hn`` is not the same as ``b_n``: r scales it.
    ``variant="original"`` (Cho et al., 2014): ``n(t) = tanh(W_n (r(t) ⊙ h(t-1)) + U_n x(t) + b_n)``.
    Parameters ``W_*`` (H x H), ``U_*`` (H x D), ``b_*`` (H).

    >>> model = gc.models.gru(3, 8, 2, bidirectional=True)
    >>> model.states
    ['h', 'h_bw']"""
    D, H, O = _sizes("gru", D, H, O)
    variant = _choice("gru", "variant", variant, ("pytorch", "original"))

    def cell(inp, n_in, name, d):
        h = signal(name("h"), H)
        W = {g: param(name(f"W_{g}"), H, H) for g in "rzn"}
        U = {g: param(name(f"U_{g}"), H, n_in) for g in "rzn"}
        b = {g: param(name(f"b_{g}"), H) for g in "rzn"}
        r = sigmoid(W["r"] * h(t + d) + U["r"] * inp + b["r"])
        z = sigmoid(W["z"] * h(t + d) + U["z"] * inp + b["z"])
        rules = {n: v for g in "rzn" for n, v in _rules(W[g], U[g], b[g]).items()}
        if variant == "pytorch":
            b_hn = param(name("b_hn"), H)
            n = tanh(U["n"] * inp + b["n"] + hadamard(r, W["n"] * h(t + d) + b_hn))
            rules[b_hn.name] = 0.0
        else:
            n = tanh(W["n"] * hadamard(r, h(t + d)) + U["n"] * inp + b["n"])
        return {h(t): n + hadamard(z, h(t + d) - n)}, h, rules

    return _network("gru", cell, D, H, O, layers, bidirectional, loss, prefix, x, o, y)


def leaky(D: int, H: int, O: int, *, alpha: float | str = 0.5, layers: int = 1, bidirectional: bool = False,
          loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o", y: str = "y") -> Model:
    """A leaky-integrator network: each unit moves a fraction α of the way to its target::

        h(t) = (1 - α) ⊙ h(t-1) + α ⊙ tanh(W h(t-1) + U x(t) + b)        o(t) = V h(t) + b_V

    ``alpha`` is a constant in (0, 1], or ``"learned"``: a per-unit parameter vector
    ``alpha`` (H), initialised to 0.5 and trained, unconstrained, like any other parameter.
    Parameters ``W`` (H x H), ``U`` (H x D), ``b`` (H).

    >>> model = gc.models.leaky(3, 8, 2, alpha="learned")
    >>> model.params
    ['U', 'W', 'b', 'alpha', 'V', 'b_V']"""
    D, H, O = _sizes("leaky", D, H, O)
    if alpha != "learned" and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha <= 1):
        raise GraphcompError(f"leaky: alpha={alpha!r} must be a number in (0, 1] or 'learned' (a per-unit vector)")

    def cell(inp, n_in, name, d):
        h, W, U, b = signal(name("h"), H), param(name("W"), H, H), param(name("U"), H, n_in), param(name("b"), H)
        target, rules = tanh(W * h(t + d) + U * inp + b), _rules(W, U, b)
        if alpha != "learned":
            a = sp.Float(alpha)
            return {h(t): (1 - a) * h(t + d) + a * target}, h, rules
        a = param(name("alpha"), H)    # (1 - α) ⊙ h written h + α ⊙ (target - h): no ones vector needed
        return {h(t): h(t + d) + hadamard(a, target - h(t + d))}, h, rules | {a.name: 0.5}

    return _network("leaky", cell, D, H, O, layers, bidirectional, loss, prefix, x, o, y)


# ---------------------------------------------------------------- initialisation

def init(model: Recurrence, seed: int = 0, *, forget_bias: float = 1.0) -> dict[str, np.ndarray]:
    """Seeded parameters for a library model, shaped as its kernels take them: input and
    readout weights Glorot-uniform, recurrent weights orthogonal, biases zero, an LSTM's
    forget bias ``forget_bias``. The same seed gives the same arrays.

    >>> params = gc.models.init(gc.models.lstm(3, 8, 2), seed=0)
    >>> params["W_f"].shape, float(params["b_f"][0])
    ((8, 8), 1.0)"""
    rules = getattr(model, "rules", None)
    if rules is None:
        raise GraphcompError("gc.models.init initialises the models of gc.models; for your own "
                             "gc.Recurrence use model.init_params(seed)")
    rng = np.random.default_rng(seed)
    out = {}
    for p, shape in model.step.params.items():
        shape = shape[:1] if shape[1:] == (1,) else shape
        rule = rules[p]
        if rule == "glorot":
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            out[p] = rng.uniform(-limit, limit, shape)
        elif rule == "orthogonal":
            out[p] = orthogonal(rng, shape)
        else:
            out[p] = np.full(shape, forget_bias if rule == "forget" else float(rule))
    return out


def orthogonal(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """A random matrix with orthonormal rows or columns (whichever are fewer), uniformly
    distributed (QR of a Gaussian matrix, signs fixed by R's diagonal)."""
    m, n = shape
    q, r = np.linalg.qr(rng.normal(size=(max(m, n), min(m, n))))
    q = q * np.sign(np.diag(r))
    return q if m >= n else q.T


# ---------------------------------------------------------------- shared construction

def _network(kind: str, cell: Callable, D: int, H: int, O: int, layers: int, bidirectional: bool,
             loss: str | None, prefix: str, x: str, o: str, y: str) -> Model:
    """Stack ``layers`` cells (each direction one cell), then the readout and the loss."""
    if not is_count(layers):
        raise GraphcompError(f"{kind}: layers={layers!r} must be an integer >= 1 (the number of stacked layers)")
    _flag(kind, "bidirectional", bidirectional)
    _names(kind, prefix, x, o, y)
    updates, rules = {}, {}
    top, n_in = signal(x, D)(t), D
    for k in range(1, layers + 1):
        outs = []
        for d in ((-1, 1) if bidirectional else (-1,)):
            suffix = (str(k) if layers > 1 else "") + ("_bw" if d > 0 else "")
            u, h, r = cell(top, n_in, lambda base, s=suffix: prefix + base + s, d)
            updates.update(u)
            rules.update(r)
            outs.append(h(t))
        top, n_in = concat(*outs), H * len(outs)
    V, b_V = param(prefix + "V", O, n_in), param(prefix + "b_V", O)
    rules.update(_rules(None, V, b_V))
    return Model(updates, {o: V * top + b_V}, _loss(kind, loss, signal(o, O)(t), O, y), rules)


def _rules(W, U, b) -> dict:
    """Recurrent weight orthogonal, input weight Glorot, bias zero."""
    return {**({W.name: "orthogonal"} if W is not None else {}), U.name: "glorot", b.name: 0.0}


def _loss(kind: str, loss: str | None, pred, O: int, y: str):
    loss = _choice(kind, "loss", loss, LOSSES)
    if loss is None:
        return None
    target = signal(y, O)(t)
    return mse(pred, target) if loss == "mse" else cross_entropy(pred, target)


def _choice(kind: str, what: str, value, options):
    if not (value is None or isinstance(value, str)) or value not in options:
        raise GraphcompError(f"{kind}: unknown {what} {value!r}; choose one of {', '.join(map(repr, options))}")
    return value


def _flag(kind: str, what: str, value) -> None:
    if not isinstance(value, bool):
        raise GraphcompError(f"{kind}: {what}={value!r} must be True or False")


def _sizes(kind: str, D, H, O) -> tuple[int, int, int]:
    what = {"D": "the input size", "H": "the hidden size", "O": "the output size"}
    for n, v in zip("DHO", (D, H, O)):
        if not is_count(v):
            raise GraphcompError(f"{kind}: {n}={v!r} must be a positive integer ({what[n]})")
    return int(D), int(H), int(O)


def _names(kind: str, prefix: str, *signals: str) -> None:
    if not isinstance(prefix, str) or (prefix and not prefix.isidentifier()):
        raise GraphcompError(f"{kind}: prefix={prefix!r} must be a string that starts a Python identifier, like 'enc_'")
    for s in signals:
        if not isinstance(s, str) or not s.isidentifier():
            raise GraphcompError(f"{kind}: signal name {s!r} must be a Python identifier, like 'x'")
    if len(set(signals)) < len(signals):
        raise GraphcompError(f"{kind}: the input, output and target names {signals} must differ")
