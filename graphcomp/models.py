"""The model library: the classic recurrent networks, written in the public DSL.

Each function returns a ``Model``, a ``gc.Recurrence`` that also knows how its parameters are
initialised (``init``) and which of them to train (``trainable``). Textbook names throughout:
``x`` the input, ``h`` the hidden state, ``o = V top(t) + b_V`` the readout and ``y`` the target
of the per-step loss. In a weight's name, ``W`` multiplies the previous state and ``U`` the
layer's input (PyTorch's ``weight_hh`` and ``weight_ih``); a gate's weights carry its letter
(``W_f``, ``U_f``, ``b_f``).

Common keyword arguments:

- ``layers=n``: layer k reads layer k-1's state at the same step; its names end in ``k``
  (``h1``, ``h2``, ``W_f2``); one layer keeps the plain names.
- ``bidirectional=True``: every layer also runs a backward state read at t+1 (names ending in
  ``_bw``: ``h_bw``, ``W_bw``); the next layer and the readout read ``[h; h_bw]``.
- ``loss``: ``"mse"`` (``gc.mse(o, y)``), ``"cross_entropy"`` (logits ``o``, one-hot ``y``) or
  ``None`` (no loss, no target).
- ``prefix`` goes in front of every state and parameter name; ``x``, ``o`` and ``y`` rename
  the input, the output and the target.

The grid networks (``mdrnn``, ``mdlstm``, ``gru2d``) run over the axes ``i`` (rows) and ``j``
(columns), ``gc.models.GRID``; in their weights' names ``Wi`` multiplies the neighbour along
i, ``Wj`` the one along j, and ``directions=2`` or ``4`` adds sweeps from other corners,
whose names end in the corner the sweep starts from (``_tl``, ``_tr``, ``_bl``, ``_br``)."""
from __future__ import annotations

import numbers
from typing import Callable, Sequence

import numpy as np
import sympy as sp

from .lang.declare import concat, cross_entropy, hadamard, mse, param, relu, sigmoid, signal, t, tanh
from .errors import GraphcompError, is_count
from .lang.recurrence import Recurrence

ACTIVATIONS = {"tanh": tanh, "relu": relu, "sigmoid": sigmoid}
GRID = sp.symbols("i j", integer=True)   # the axes of the grid networks: rows i, columns j
# each sweep by the corner it starts from, and the offsets (along i, j) of the neighbours it reads
CORNERS = {"tl": (-1, -1), "tr": (-1, 1), "bl": (1, -1), "br": (1, 1)}
DIRECTIONS = {1: ("tl",), 2: ("tl", "br"), 4: ("tl", "tr", "bl", "br")}
LOSSES = ("mse", "cross_entropy", None)


class Model(Recurrence):
    """A library model: a ``gc.Recurrence`` plus the rule that initialises each parameter
    (``"glorot"``, ``"orthogonal"``, ``"forget"`` for an LSTM's forget bias, a constant, or a
    function ``rule(rng, shape)``) and the parameters to train (``trainable``: all of them,
    except an echo-state network's fixed reservoir)."""

    def __init__(self, updates: dict, outputs: dict, loss, rules: dict, trainable: list | None = None):
        super().__init__(updates, outputs, loss)
        self.rules = rules
        self.trainable = self.params if trainable is None else trainable

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
    return _network("elman", _elman_cell(H, act), D, H, O, layers, bidirectional, loss, prefix, x, o, y)


def jordan(D: int, H: int, O: int, *, activation: str = "tanh", teacher_forcing: bool = False, layers: int = 1,
           bidirectional: bool = False, loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o",
           y: str = "y") -> Model:
    """Jordan's network: the hidden layer reads the previous *output*, not its own state::

        h(t) = act(W o(t-1) + U x(t) + b)        o(t) = V h(t) + b_V

    ``o`` is a state (read at t-1) and the model's output. With ``teacher_forcing=True`` the
    hidden layer reads the previous *target* instead, ``h(t) = act(W y(t-1) + U x(t) + b)``,
    and ``o`` is a plain output: train that model, then run the free-running one (same
    parameter names) with the trained parameters. Parameters ``W`` (H x O), ``U`` (H x D),
    ``b`` (H), ``V`` (O x H), ``b_V`` (O). The feedback runs through the single output, so
    there is one hidden layer and one direction.

    >>> model = gc.models.jordan(3, 8, 2)
    >>> model.states
    ['h', 'o']"""
    D, H, O = _sizes("jordan", D, H, O)
    act = ACTIVATIONS[_choice("jordan", "activation", activation, ACTIVATIONS)]
    _flag("jordan", "teacher_forcing", teacher_forcing)
    if layers != 1 or bidirectional is not False:
        raise GraphcompError("jordan: the recurrence runs through the output o(t-1), so the network has one hidden "
                             "layer and runs forward only; for layers=... or bidirectional=True use elman, lstm or gru")
    _names("jordan", prefix, x, o, y)
    xs, h, out = signal(x, D), signal(prefix + "h", H), signal(o, O)
    W, U, b = param(prefix + "W", H, O), param(prefix + "U", H, D), param(prefix + "b", H)
    V, b_V = param(prefix + "V", O, H), param(prefix + "b_V", O)
    fed = signal(y, O) if teacher_forcing else out
    updates = {h(t): act(W * fed(t - 1) + U * xs(t) + b)}
    outputs = {o: V * h(t) + b_V} if teacher_forcing else {}
    if not teacher_forcing:
        updates[out(t)] = V * h(t) + b_V
    return Model(updates, outputs, _loss("jordan", loss, out(t), O, y), {**_rules(W, U, b), **_rules(None, V, b_V)})


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
    return _network("lstm", _lstm_cell(H, peephole), D, H, O, layers, bidirectional, loss, prefix, x, o, y)


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
    return _network("gru", _gru_cell(H, variant), D, H, O, layers, bidirectional, loss, prefix, x, o, y)


def leaky(D: int, H: int, O: int, *, alpha: float | str = 0.5, layers: int = 1, bidirectional: bool = False,
          loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o", y: str = "y") -> Model:
    """A leaky-integrator network: each unit moves a fraction α of the way to its target::

        h(t) = (1 - α) ⊙ h(t-1) + α ⊙ tanh(W h(t-1) + U x(t) + b)        o(t) = V h(t) + b_V

    ``alpha`` is a constant in (0, 1], or ``"learned"``: per-unit rates ``α = σ(alpha_logit)``
    with a trained parameter vector ``alpha_logit`` (H), initialised to 0 (α = 0.5). The
    sigmoid keeps every rate in (0, 1) whatever the optimizer does, so a unit can neither
    overshoot its target nor run away. Parameters ``W`` (H x H), ``U`` (H x D), ``b`` (H).

    >>> model = gc.models.leaky(3, 8, 2, alpha="learned")
    >>> model.params
    ['U', 'W', 'b', 'alpha_logit', 'V', 'b_V']"""
    D, H, O = _sizes("leaky", D, H, O)
    if alpha != "learned":
        _fraction("leaky", "alpha", alpha, " or 'learned' (per-unit rates)")
    return _network("leaky", _leaky_cell(H, alpha), D, H, O, layers, bidirectional, loss, prefix, x, o, y)


def esn(D: int, H: int, O: int, *, spectral_radius: float = 0.9, density: float = 0.1, input_scaling: float = 1.0,
        leak: float = 1.0, loss: str | None = "mse", prefix: str = "", x: str = "x", o: str = "o",
        y: str = "y") -> Model:
    """An echo-state network: a fixed random reservoir of leaky units and a trained readout::

        h(t) = (1 - a) h(t-1) + a tanh(W h(t-1) + U x(t) + b)        o(t) = V h(t) + b_V

    ``init_params(seed)`` draws the reservoir: ``W`` (H x H) with a fraction ``density`` of
    nonzero weights, uniform in (-1, 1), then scaled so that its spectral radius (largest
    |eigenvalue|) is ``spectral_radius``; ``U`` (H x D) and ``b`` (H) uniform in
    ``(-input_scaling, input_scaling)``; ``a`` is the leak rate ``leak``. Only the readout
    ``V``, ``b_V`` is trained: ``model.trainable`` names them, for
    ``gc.Trainer(model, optimizer, train=model.trainable)``.

    >>> model = gc.models.esn(1, 100, 1, spectral_radius=0.95)
    >>> model.trainable
    ['V', 'b_V']"""
    D, H, O = _sizes("esn", D, H, O)
    radius = _positive("esn", "spectral_radius", spectral_radius)
    density = _fraction("esn", "density", density)
    scale = _positive("esn", "input_scaling", input_scaling)
    leaky_cell, uniform = _leaky_cell(H, _fraction("esn", "leak", leak)), _uniform(scale)

    def cell(inp, n_in, state, name, d):
        updates, h, _ = leaky_cell(inp, n_in, state, name, d)
        return updates, h, {name("W"): _reservoir(radius, density), name("U"): uniform, name("b"): uniform}

    model = _network("esn", cell, D, H, O, 1, False, loss, prefix, x, o, y)
    model.trainable = [prefix + "V", prefix + "b_V"]
    return model


class Seq2Seq(Model):
    """An encoder–decoder on one time axis: each sequence's source steps, then its target
    steps, the input flag ``src`` (1 on a source step, 0 on a target step) switching from the
    encoder's weights to the decoder's. ``pack`` lays pairs out so; ``decode`` runs free."""

    def __init__(self, updates, outputs, loss, rules, D: int, O: int, names: tuple, loss_kind: str | None):
        super().__init__(updates, outputs, loss, rules)
        self.D, self.O, self.loss_kind = D, O, loss_kind
        self.x, self.o, self.y, self.src = names

    def pack(self, sources: Sequence, targets: Sequence) -> tuple[dict, np.ndarray]:
        """Source/target pairs -> ``(inputs, lengths)`` for a kernel or a trainer. Sequence b
        holds ``sources[b]`` (S_b, D) at t = 1..S_b and ``targets[b]`` (T_b, O) at
        t = S_b+1..S_b+T_b, so ``lengths[b] = S_b + T_b``; every other entry is zero."""
        if len(sources) != len(targets) or not len(sources):
            raise GraphcompError(f"seq2seq.pack needs as many targets as sources (at least one), got "
                                 f"{len(sources)} sources and {len(targets)} targets")
        sources = [_rows("source", i, s, self.D) for i, s in enumerate(sources)]
        targets = [_rows("target", i, s, self.O) for i, s in enumerate(targets)]
        S, L = np.array([len(s) for s in sources]), np.array([len(s) + len(g) for s, g in zip(sources, targets)])
        steps, B = int(L.max()), len(sources)
        xs, ys, flag = np.zeros((steps, B, self.D)), np.zeros((steps, B, self.O)), np.zeros((steps, B))
        for b, (s, g) in enumerate(zip(sources, targets)):
            xs[:S[b], b], ys[S[b]:L[b], b], flag[:S[b], b] = s, g, 1.0
        return {self.x: xs, self.y: ys, self.src: flag}, L

    def decode(self, kernel, params: dict, sources: Sequence, steps: int) -> np.ndarray:
        """Free-running greedy decoding: ``steps`` target steps after each source, each one's
        prediction (the one-hot of its argmax under a cross-entropy loss, else the output
        itself) fed back as the next step's previous target. Returns ``(steps, B, O)``.
        It reruns ``kernel.forward`` once per step: meant for short targets."""
        if not is_count(steps):
            raise GraphcompError(f"seq2seq.decode: steps={steps!r} must be a positive number of target steps")
        made = np.zeros((0, len(sources), self.O))
        for _ in range(steps):
            inputs, lengths = self.pack(sources, [np.vstack([m, np.zeros((1, self.O))]) for m in made.swapaxes(0, 1)])
            last = kernel.forward(params, inputs, lengths)[self.o][lengths - 1, np.arange(len(sources))]
            pick = np.eye(self.O)[last.argmax(-1)] if self.loss_kind == "cross_entropy" else last
            made = np.concatenate([made, pick[None]])
        return made


SEQ2SEQ_CELLS = {"elman": lambda H: _elman_cell(H, tanh), "lstm": lambda H: _lstm_cell(H, False),
                 "gru": lambda H: _gru_cell(H, "pytorch")}


def seq2seq(D: int, H: int, O: int, *, cell: str = "gru", layers: int = 1, loss: str | None = "cross_entropy",
            prefix: str = "", x: str = "x", o: str = "o", y: str = "y", src: str = "src") -> Seq2Seq:
    """Encoder–decoder (Sutskever et al., 2014): the encoder reads the source, its final state
    starts the decoder, which reads the previous target and predicts the next. Both share
    one time axis and one state; the input flag ``src(t)`` (1 on source steps) picks the
    weights::

        h(t) = src(t) enc(h(t-1), x(t)) + (1 - src(t)) dec(h(t-1), y(t-1))
        o(t) = V h(t) + b_V        L(t) = (1 - src(t)) loss(o(t), y(t))

    ``enc`` and ``dec`` are ``cell`` steps (``"elman"``, ``"lstm"`` or ``"gru"``) with their
    own weights (``enc_W``, ``dec_U``, …); an LSTM switches ``c`` and ``h`` alike. The decoder
    reads ``y(t-1)``: teacher forcing, the first target step reading zeros (the start token).
    ``model.pack(sources, targets)`` lays pairs of any lengths out with their ``lengths``;
    ``model.decode(kernel, params, sources, steps)`` generates without the targets.

    >>> model = gc.models.seq2seq(4, 16, 4)
    >>> inputs, lengths = model.pack([np.eye(4)[[0, 1, 2]]], [np.eye(4)[[2, 1, 0]]])
    >>> lengths
    array([6])"""
    D, H, O = _sizes("seq2seq", D, H, O)
    make = SEQ2SEQ_CELLS[_choice("seq2seq", "cell", cell, SEQ2SEQ_CELLS)]
    if not is_count(layers):
        raise GraphcompError(f"seq2seq: layers={layers!r} must be an integer >= 1 (the number of stacked layers)")
    _names("seq2seq", prefix, x, o, y, src)
    on = signal(src)(t)
    updates, rules = {}, {}
    inputs = {"enc_": (signal(x, D)(t), D), "dec_": (signal(y, O)(t - 1), O)}
    for k in range(1, layers + 1):
        state = lambda base, k=k: prefix + base + (str(k) if layers > 1 else "")
        step = {}
        for side, (inp, n_in) in inputs.items():
            step[side], h, r = make(H)(inp, n_in, state, lambda base, s=side: state(s + base), -1)
            rules.update(r)
        # src enc + (1 - src) dec, written so that sympy's printers need no parentheses
        updates.update({s: d + on * (step["enc_"][s] - d) for s, d in step["dec_"].items()})
        inputs = dict.fromkeys(inputs, (h(t), H))
    V, b_V = param(prefix + "V", O, H), param(prefix + "b_V", O)
    rules.update(_rules(None, V, b_V))
    per_step = _loss("seq2seq", loss, signal(o, O)(t), O, y)
    return Seq2Seq(updates, {o: V * h(t) + b_V}, None if per_step is None else (1 - on) * per_step, rules,
                   D, O, (x, o, y, src), loss)


# ---------------------------------------------------------------- cells
# A cell maps (its input, the input's size, state names, parameter names, d) to its updates,
# its output state and its parameters' initialisation rules; d = -1 reads h(t-1), d = +1 h(t+1).

def _elman_cell(H: int, act: Callable) -> Callable:
    def cell(inp, n_in, state, name, d):
        h, W, U, b = signal(state("h"), H), param(name("W"), H, H), param(name("U"), H, n_in), param(name("b"), H)
        return {h(t): act(W * h(t + d) + U * inp + b)}, h, _rules(W, U, b)
    return cell


def _lstm_cell(H: int, peephole: bool) -> Callable:
    def cell(inp, n_in, state, name, d):
        h, c = signal(state("h"), H), signal(state("c"), H)
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
            rules.update({v.name: "glorot" for v in p.values()})   # weights: each multiplies c
        i, f, g, og = sigmoid(pre["i"]), sigmoid(pre["f"]), tanh(pre["g"]), sigmoid(pre["o"])
        updates = {c(t): hadamard(f, c(t + d)) + hadamard(i, g), h(t): hadamard(og, tanh(c(t)))}
        return updates, h, rules
    return cell


def _gru_cell(H: int, variant: str) -> Callable:
    def cell(inp, n_in, state, name, d):
        h = signal(state("h"), H)
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
    return cell


def _leaky_cell(H: int, alpha: float | str) -> Callable:
    def cell(inp, n_in, state, name, d):
        h, W, U, b = signal(state("h"), H), param(name("W"), H, H), param(name("U"), H, n_in), param(name("b"), H)
        target, rules = tanh(W * h(t + d) + U * inp + b), _rules(W, U, b)
        if alpha == 1:
            return {h(t): target}, h, rules
        if alpha != "learned":
            a = sp.Float(alpha)
            return {h(t): (1 - a) * h(t + d) + a * target}, h, rules
        a = param(name("alpha_logit"), H)   # (1 - α) ⊙ h written h + α ⊙ (target - h): no ones vector needed
        return {h(t): h(t + d) + hadamard(sigmoid(a), target - h(t + d))}, h, rules | {a.name: 0.0}
    return cell


# ---------------------------------------------------------------- grid networks

def mdrnn(D: int, H: int, O: int, *, directions: int = 1, activation: str = "tanh", loss: str | None = "mse",
          prefix: str = "", x: str = "x", o: str = "o", y: str = "y") -> Model:
    """A multi-dimensional RNN over images (Graves et al., 2007): each point reads its
    neighbours along both axes::

        h(i, j) = act(Wi h(i-1, j) + Wj h(i, j-1) + U x(i, j) + b)        o(i, j) = V h(i, j) + b_V

    ``directions=2`` adds a sweep from the bottom-right corner (reading ``h(i+1, j)`` and
    ``h(i, j+1)``), ``4`` sweeps from all four corners; the readout reads every direction's
    state, stacked in the order tl, tr, bl, br. Parameters ``Wi``, ``Wj`` (H x H, orthogonal),
    ``U`` (H x D), ``b`` (H), ``V`` (O x directions·H), ``b_V`` (O).

    >>> model = gc.models.mdrnn(1, 8, 10, directions=2)
    >>> model.states
    ['h_tl', 'h_br']"""
    D, H, O = _sizes("mdrnn", D, H, O)
    act = ACTIVATIONS[_choice("mdrnn", "activation", activation, ACTIVATIONS)]
    return _grid_network("mdrnn", _mdrnn_cell(H, act), D, H, O, directions, loss, prefix, x, o, y)


def mdlstm(D: int, H: int, O: int, *, directions: int = 1, loss: str | None = "mse", prefix: str = "",
           x: str = "x", o: str = "o", y: str = "y") -> Model:
    """Graves' multi-dimensional LSTM: gates i, g, o as in an LSTM and one forget gate per axis,
    each gate reading both neighbours::

        q(i, j) = Wi_q h(i-1, j) + Wj_q h(i, j-1) + U_q x(i, j) + b_q     for q in i, fi, fj, g, o
        c(i, j) = σ(q_fi) ⊙ c(i-1, j) + σ(q_fj) ⊙ c(i, j-1) + σ(q_i) ⊙ tanh(q_g)
        h(i, j) = σ(q_o) ⊙ tanh(c(i, j))

    and the readout ``V h(i, j) + b_V``; ``directions`` as in ``mdrnn``. The forget biases
    ``b_fi``, ``b_fj`` start at ``gc.models.init``'s ``forget_bias``. Two forget gates near 1
    let the cell grow with the number of paths to a point: on large images, a smaller
    ``forget_bias`` (0 gives each gate 1/2) keeps it in range.

    >>> gc.models.mdlstm(1, 8, 10).states
    ['c', 'h']"""
    D, H, O = _sizes("mdlstm", D, H, O)
    return _grid_network("mdlstm", _mdlstm_cell(H), D, H, O, directions, loss, prefix, x, o, y)


def gru2d(D: int, H: int, O: int, *, directions: int = 1, loss: str | None = "mse", prefix: str = "",
          x: str = "x", o: str = "o", y: str = "y") -> Model:
    """A 2-D gated recurrent unit: PyTorch's GRU with the previous state replaced by a gated
    mix of the two neighbours, ``p = h(i, j-1) + m ⊙ (h(i-1, j) - h(i, j-1))``::

        q(i, j) = σ(Wi_q h(i-1, j) + Wj_q h(i, j-1) + U_q x(i, j) + b_q)     for q in r, z, m
        n(i, j) = tanh(U_n x(i, j) + b_n + r ⊙ (Wi_n h(i-1, j) + Wj_n h(i, j-1) + b_hn))
        h(i, j) = n + z ⊙ (p - n)

    so ``h`` is a convex combination of the candidate ``n`` and the two neighbours: it stays in
    (-1, 1) however large the image. ``directions`` as in ``mdrnn``.

    >>> gc.models.gru2d(1, 8, 10, directions=4).states
    ['h_tl', 'h_tr', 'h_bl', 'h_br']"""
    D, H, O = _sizes("gru2d", D, H, O)
    return _grid_network("gru2d", _gru2d_cell(H), D, H, O, directions, loss, prefix, x, o, y)


# A grid cell maps (its input, the input's size, state names, parameter names, the offsets
# (di, dj) of the neighbours it reads) to its updates, its output state and its rules.

def _neighbours(s, d: tuple) -> tuple:
    """State ``s`` at the two points a sweep with offsets ``d`` reads: along i, along j."""
    i, j = GRID
    return s(i + d[0], j), s(i, j + d[1])


def _axis_weights(name: Callable, gate: str, H: int) -> tuple:
    """The recurrent weights of one gate, one per axis: Wi_q, Wj_q (Wi, Wj for no gate)."""
    q = f"_{gate}" if gate else ""
    return param(name(f"Wi{q}"), H, H), param(name(f"Wj{q}"), H, H)


def _gate_rules(Wi, Wj, U, b) -> dict:
    return {**_rules(Wi, U, b), Wj.name: "orthogonal"}


def _mdrnn_cell(H: int, act: Callable) -> Callable:
    def cell(inp, n_in, state, name, d):
        h = signal(state("h"), H)
        (Wi, Wj), U, b = _axis_weights(name, "", H), param(name("U"), H, n_in), param(name("b"), H)
        up, side = _neighbours(h, d)
        return {h(*GRID): act(Wi * up + Wj * side + U * inp + b)}, h, _gate_rules(Wi, Wj, U, b)
    return cell


def _mdlstm_cell(H: int) -> Callable:
    def cell(inp, n_in, state, name, d):
        h, c = signal(state("h"), H), signal(state("c"), H)
        (h_up, h_side), (c_up, c_side) = _neighbours(h, d), _neighbours(c, d)
        pre, rules = {}, {}
        for q in ("i", "fi", "fj", "g", "o"):
            (Wi, Wj), U, b = _axis_weights(name, q, H), param(name(f"U_{q}"), H, n_in), param(name(f"b_{q}"), H)
            pre[q] = Wi * h_up + Wj * h_side + U * inp + b
            rules.update(_gate_rules(Wi, Wj, U, b))
        rules[name("b_fi")] = rules[name("b_fj")] = "forget"
        cell_value = hadamard(sigmoid(pre["fi"]), c_up) + hadamard(sigmoid(pre["fj"]), c_side) \
            + hadamard(sigmoid(pre["i"]), tanh(pre["g"]))
        updates = {c(*GRID): cell_value, h(*GRID): hadamard(sigmoid(pre["o"]), tanh(c(*GRID)))}
        return updates, h, rules
    return cell


def _gru2d_cell(H: int) -> Callable:
    def cell(inp, n_in, state, name, d):
        h = signal(state("h"), H)
        up, side = _neighbours(h, d)
        gates, rules = {}, {}
        for q in ("r", "z", "m", "n"):
            (Wi, Wj), U, b = _axis_weights(name, q, H), param(name(f"U_{q}"), H, n_in), param(name(f"b_{q}"), H)
            gates[q] = (Wi * up + Wj * side, U * inp + b)
            rules.update(_gate_rules(Wi, Wj, U, b))
        r, z, m = (sigmoid(gates[q][0] + gates[q][1]) for q in "rzm")
        b_hn = param(name("b_hn"), H)
        rules[b_hn.name] = 0.0
        n = tanh(gates["n"][1] + hadamard(r, gates["n"][0] + b_hn))
        mixed = side + hadamard(m, up - side)
        return {h(*GRID): n + hadamard(z, mixed - n)}, h, rules
    return cell


def _grid_network(kind: str, cell: Callable, D: int, H: int, O: int, directions: int, loss: str | None,
                  prefix: str, x: str, o: str, y: str) -> Model:
    """One cell per direction, each sweeping from its corner; the readout reads them all."""
    if isinstance(directions, bool) or directions not in DIRECTIONS:
        raise GraphcompError(f"{kind}: directions={directions!r} must be 1 (a sweep from the top-left corner), "
                             "2 (also from the bottom-right) or 4 (from every corner)")
    _names(kind, prefix, x, o, y)
    updates, rules, tops = {}, {}, []
    for corner in DIRECTIONS[directions]:
        name = lambda base, c=corner: prefix + base + (f"_{c}" if directions > 1 else "")
        u, h, r = cell(signal(x, D)(*GRID), D, name, name, CORNERS[corner])
        updates.update(u)
        rules.update(r)
        tops.append(h(*GRID))
    V, b_V = param(prefix + "V", O, H * len(tops)), param(prefix + "b_V", O)
    rules.update(_rules(None, V, b_V))
    return Model(updates, {o: V * concat(*tops) + b_V}, _loss(kind, loss, signal(o, O)(*GRID), O, y, GRID), rules)


# ---------------------------------------------------------------- initialisation

def init(model: Recurrence, seed: int = 0, *, forget_bias: float = 1.0) -> dict[str, np.ndarray]:
    """Seeded parameters for a library model, shaped as its kernels take them: input and
    readout weights Glorot-uniform, recurrent weights orthogonal, biases zero, an LSTM's
    forget bias ``forget_bias``, an echo-state reservoir at its spectral radius. The same seed
    gives the same arrays.

    >>> params = gc.models.init(gc.models.lstm(3, 8, 2), seed=0)
    >>> params["W_f"].shape, float(params["b_f"][0])
    ((8, 8), 1.0)"""
    rules = getattr(model, "rules", None)
    if rules is None:
        raise GraphcompError("gc.models.init initialises the models of gc.models; for your own "
                             "gc.Recurrence use model.init_params(seed)")
    rng = np.random.default_rng(seed)
    out = {}
    for p, full in model.step.params.items():
        shape = full[:1] if full[1:] == (1,) else full   # a column (n, 1) is given as (n,)
        rule = rules[p]
        if callable(rule):
            out[p] = rule(rng, shape)
        elif rule == "glorot":   # fans of the matrix, a column included
            limit = np.sqrt(6.0 / (full[0] + full[1]))
            out[p] = rng.uniform(-limit, limit, shape)
        elif rule == "orthogonal":
            out[p] = orthogonal(rng, full).reshape(shape)
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


def _reservoir(radius: float, density: float) -> Callable:
    """The rule of an echo-state reservoir: sparse uniform weights scaled to ``radius``."""
    def rule(rng, shape):
        W = rng.uniform(-1.0, 1.0, shape) * (rng.random(shape) < density)
        largest = np.abs(np.linalg.eigvals(W)).max()
        if largest == 0:
            raise GraphcompError(f"esn: this random reservoir ({shape[0]} units, density={density}) has no nonzero "
                                 "eigenvalue to scale to the spectral radius; raise density or the number of units")
        return W * (radius / largest)
    return rule


def _uniform(scale: float) -> Callable:
    return lambda rng, shape: rng.uniform(-scale, scale, shape)


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
            name = lambda base, s=suffix: prefix + base + s
            u, h, r = cell(top, n_in, name, name, d)
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


def _loss(kind: str, loss: str | None, pred, O: int, y: str, at: tuple = (t,)):
    loss = _choice(kind, "loss", loss, LOSSES)
    if loss is None:
        return None
    target = signal(y, O)(*at)
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


def _positive(kind: str, what: str, value) -> float:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 and np.isfinite(value)):
        raise GraphcompError(f"{kind}: {what}={value!r} must be a positive number")
    return float(value)


def _fraction(kind: str, what: str, value, other: str = "") -> float:
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value <= 1):
        raise GraphcompError(f"{kind}: {what}={value!r} must be a number in (0, 1]{other}")
    return float(value)


def _rows(what: str, i: int, a, n: int) -> np.ndarray:
    """One sequence of a seq2seq pair as a (steps, n) float array."""
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.shape[1] != n or not len(a):
        raise GraphcompError(f"seq2seq.pack: {what} {i} has shape {a.shape}; each {what} must be (steps, {n}), "
                             "steps >= 1")
    return a
