"""Real-time recurrent learning (Williams and Zipser, 1989): the gradient of a recurrence by
forward-mode sensitivities carried along with the state, instead of a tape swept backwards.

The *tangent step* is a recurrence of its own, derived from the step IR with the ops' JVP
rules: beside every state s it has a state s__tan = ds/dθ_p, the JVP of s's update with the
reads' tangents and the unit tangent of one parameter scalar θ_p; its outputs are the loss L
and dL/dθ_p. Each of the P parameter scalars is one row of its batch (P·B rows, row p·B + b),
so a kernel of the tangent step compiled like any other model (Numba, or the NumPy
reference) advances all sensitivities at once. It runs over chunks of time, carrying its
state from chunk to chunk: memory does not grow with T, and there is no tape.

A row learns which parameter scalar it differentiates from direction inputs: ``p__dir`` (1 on
the rows of a scalar p), ``p__row`` and ``p__col`` (the entry's row and column, -1 on other
rows). The unit tangent of a matrix W is e_i e_jᵀ; a product W b then has the tangent
e_i (e_j · b), so that the tangent step holds no per-example matrix.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp

from .. import ir
from ..check import prepare
from ..errors import GraphcompError, NotFinite, is_count
from ..ir import X, Node
from ..lang.step import SignalInfo, Step, Sweep

__all__ = ["tangent_step", "loss_and_grad", "sensitivities", "initial_entries", "Online"]

TAN, DIR, ROW, COL = "{}__tan", "{}__dir", "{}__row", "{}__col"
LOSS, DLOSS = "rtrl__L", "rtrl__dL"   # the tangent step's outputs
CLOCK = "rtrl__clock"   # a state of a stateless model's tangent step (see _compiled_outputs)
CHUNK_FLOATS, MIN_CHUNK = 1 << 16, 8   # a chunk of time: 512 KB of the tangent step's signals, >= 8 steps


def tangent_step(step: Step, outputs: dict | None = None) -> Step:
    """The tangent step of a recurrence: its states and their sensitivities, with outputs
    ``rtrl__L`` (the loss) and ``rtrl__dL`` (its derivative along the row's parameter scalar).
    ``outputs`` {name: node of ``step``} differentiates these nodes instead of the loss (a
    least-squares fit's residuals): the outputs are then each node under its name and its
    tangent under ``name__tan``."""
    _check_forward(step, need_loss=outputs is None)
    targets = {LOSS: step.loss} if outputs is None else dict(outputs)
    order = [s for sweep in step.sweeps for s in sweep.states]
    tangents, units = {}, {}
    for p, shape in step.params.items():
        if shape == ():
            tangents[ir.param(p, shape)] = ir.read(DIR.format(p), 0, ())
        elif shape[1] == 1:
            tangents[ir.param(p, shape)] = _unit(shape[0], ROW.format(p))
        else:   # e_i e_jᵀ, a placeholder until the products that read it are rewritten
            tangents[ir.param(p, shape)] = unit = ir.var(("rtrl", p), shape, batched=True)
            units[unit] = (_unit(shape[0], ROW.format(p)), _unit(shape[1], COL.format(p)))
    roots = [step.updates[s] for s in order] + list(targets.values())
    for node in ir.toposort(roots):
        if node.op == "read" and node.attr[0] in step.updates:
            tangents[node] = ir.read(TAN.format(node.attr[0]), node.attr[1], node.shape)
    tans = [d if d is not None else ir.zeros(r.shape) for d, r in zip(ir.jvp(roots, tangents), roots)]
    tans = _outer_products(tans, units)
    updates = {}
    for s, root, d in zip(order, roots, tans):
        updates[s], updates[TAN.format(s)] = root, d
    if outputs is None:
        outputs = {LOSS: step.loss, DLOSS: tans[-1]}
    else:
        outputs = {k: v for (name, node), d in zip(targets.items(), tans[len(order):])
                   for k, v in ((name, node), (TAN.format(name), d))}
    nodes = ir.toposort([*updates.values(), *outputs.values()])
    offsets: dict = {}
    for node in nodes:
        if node.op == "read":
            offsets.setdefault(node.attr[0], set()).add(node.attr[1])
    signals = {s: SignalInfo(s, "state", node.shape, tuple(sorted(offsets.get(s, ())))) for s, node in updates.items()}
    for name, offs in offsets.items():
        if name not in signals:
            shape = step.signals[name].shape if name in step.signals else ()
            signals[name] = SignalInfo(name, "input", shape, tuple(sorted(offs)))
    ours = {TAN.format(s) for s in order} | {f.format(p) for p in step.params for f in (DIR, ROW, COL)}
    ours |= {n for name in targets for n in (name, TAN.format(name)) if name != LOSS}
    clash = sorted(n for n in {*step.signals, *step.params, *step.outputs} if n in ours or n.startswith("rtrl__"))
    if clash:
        raise GraphcompError(f"the names {clash} are used by real-time recurrent learning for sensitivities; "
                             "rename these signals or parameters")
    params = {n.attr: n.shape for n in nodes if n.op == "param"}
    return Step(signals, {**step.params, **params}, updates, outputs, None, (Sweep(1, tuple(updates)),))


def _check_forward(step: Step, need_loss: bool = True) -> None:
    """RTRL runs forward in time: a loss (unless other nodes are differentiated), and no read
    of a value after step t."""
    if need_loss and step.loss is None:
        raise GraphcompError("the model has no loss: pass loss=... to gc.Recurrence")
    for name, info in step.signals.items():
        ahead = max(info.offsets, default=0)
        if info.role == "state" and info.direction < 0:
            raise GraphcompError(f"state {name!r} reads its own future ({name}(t+{ahead})): real-time "
                                 "recurrent learning carries sensitivities forward in time only; use "
                                 "backpropagation through time (kernel.loss_and_grad) for this model")
        if ahead > 0:
            raise GraphcompError(f"{name!r} is read at {name}(t+{ahead}), a value real-time recurrent learning "
                                 "does not have yet at step t; use backpropagation through time "
                                 "(kernel.loss_and_grad) for this model")


def _iota(n: int) -> Node:
    """The column (0, 1, ..., n-1): a parameter of the tangent step."""
    return ir.param(f"rtrl__iota{n}", (n, 1))


def _unit(n: int, index: str) -> Node:
    """e_i for the row's index i (the input ``index``): 1 at component i, zeros elsewhere."""
    return ir.emap(sp.Max(0, 1 - sp.Abs(X(0) - X(1))), [_iota(n), ir.read(index, 0, ())])


def _outer_products(tans: list, units: dict) -> list:
    """Products with a unit matrix e_i e_jᵀ without the matrix: W b as e_i (e_j · b) and
    a W as (a · e_i) e_jᵀ. Any other use of it stays (and needs a per-example matrix)."""
    dot = lambda a, b: ir.total(ir.mul(a, b))
    mapping = {}
    for node in ir.toposort(tans):
        if node.op == "matmul":
            a, b = node.args
            if a in units and b.shape[1] == 1:
                mapping[node] = ir.mul(units[a][0], dot(units[a][1], b))
            elif b in units and a.shape[0] == 1:
                mapping[node] = ir.mul(dot(ir.transpose(a), units[b][0]), ir.transpose(units[b][1]))
    rest = {n: ir.matmul(u, ir.transpose(v)) for n, (u, v) in units.items()}   # e_i e_jᵀ itself, wherever still read
    return ir.substitute(ir.substitute(tans, mapping), rest)


@functools.lru_cache(maxsize=8)
def _compiled(kernel):
    """The tangent step of a kernel's model and its kernel, compiled once per kernel."""
    step = tangent_step(kernel.program)
    return step, kernel.derived(step)


class Carry:
    """Runs the tangent step over chunks of time for a batch of B sequences, carrying its
    state from one chunk to the next: every signal's last values that later steps read."""

    def __init__(self, kernel, B: int, initial: dict):
        self.step, self.kernel = _compiled(kernel)
        self.program, self.B = kernel.program, B
        self.sizes = {p: math.prod(shape) for p, shape in self.program.params.items()}
        self.P = sum(self.sizes.values())
        self.rows = max(self.P, 1) * B
        self.carried = {}   # every signal read k steps back: its last k values, (k, P·B, ...)
        for name, info in self.step.signals.items():
            if info.history:   # a sensitivity starts at zero: initial values do not depend on θ
                shape = (info.history, B) + info.array_shape
                self.carried[name] = self._tile(initial[name].reshape(shape) if name in initial else np.zeros(shape), 1)
        self.directions = self._directions()
        self.iotas = {p: np.arange(shape[0], dtype=float) for p, shape in self.step.params.items()
                      if p not in self.program.params}

    def _tile(self, a: np.ndarray, axis: int) -> np.ndarray:
        """A (..., B, ...) array repeated for every parameter scalar: (..., P·B, ...)."""
        reps = self.rows // self.B
        shape = a.shape[:axis] + (reps,) + a.shape[axis:]
        tiled = np.broadcast_to(np.expand_dims(a, axis), shape)
        return tiled.reshape(a.shape[:axis] + (self.rows,) + a.shape[axis + 1:])

    def _directions(self) -> dict:
        """Each direction input's value on every row (P·B,)."""
        return _directions(self.program.params, self.step, max(self.P, 1), self.B)

    def run(self, params: dict, inputs: dict, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance over the steps of ``inputs`` ((C, B, ...) each, the user's layout); ``valid``
        (C, B) says which steps exist. Returns each example's loss L_b(t), (C, B), and its
        gradient dL_b(t)/dθ, (C, P, B), zero where a step does not exist."""
        C = len(valid)
        left = valid.sum(0)
        if not left.all():   # a sequence that has ended restarts from zeros, unread
            ended = self._tile(left == 0, axis=0)
            for name, value in self.carried.items():
                self.carried[name] = np.where(ended.reshape((1, -1) + (1,) * (value.ndim - 2)), 0.0, value)
        given = {n: self._tile(a, axis=1) for n, a in inputs.items()}
        given.update({n: np.broadcast_to(v, (C, self.rows)) for n, v in self.directions.items()})
        out = self.kernel.forward({**params, **self.iotas}, given, self._tile(np.maximum(left, 1), axis=0),
                                  self.carried)
        for name, value in self.carried.items():
            seq = out[name] if name in out else given[name]
            self.carried[name] = np.concatenate([value, seq])[-len(value):]
        P = max(self.P, 1)
        loss = np.where(valid, out[LOSS][:, :self.B], 0.0)
        grad = np.where(valid[:, None], out[DLOSS].reshape(C, P, self.B), 0.0)[:, :self.P]
        return loss, grad

    def state(self) -> dict:
        """The original signals' carried values, ``kernel.step``'s state: (k, B, ...)."""
        return {n: v[:, :self.B].copy() for n, v in self.carried.items() if n in self.program.signals}


def _directions(params: dict, tangent: Step, D: int, B: int) -> dict:
    """Each direction input's value on every row (D·B,), row d·B + b: direction d < P is
    the d-th parameter scalar (parameters in order, each raveled); later ones none."""
    out, lo = {}, 0
    for p, shape in params.items():
        size = math.prod(shape)
        entry = np.full(D, -1)   # the entry of p a row differentiates, or -1
        entry[lo:lo + size] = np.arange(size)[:max(0, min(size, D - lo))]
        cols = (shape + (1, 1))[1]
        out[DIR.format(p)] = (entry == 0).astype(float)
        out[ROW.format(p)] = np.where(entry >= 0, entry // cols, -1).astype(float)
        out[COL.format(p)] = np.where(entry >= 0, entry % cols, -1).astype(float)
        lo += size
    return {n: np.repeat(v, B) for n, v in out.items() if n in tangent.signals}


# ---------------------------------------------------------------- the public API

def loss_and_grad(kernel, params: dict, inputs: dict | None = None, lengths=None,
                  initial: dict | None = None, *, chunk: int | None = None) -> tuple[float, dict]:
    """The loss L = (1/B) Σ_b Σ_{t ≤ len_b} L_b(t) and its exact gradient, keyed and shaped like
    ``params``, by real-time recurrent learning: the same numbers as ``kernel.loss_and_grad``
    (backpropagation through time) in memory that does not grow with T. The tangent step runs
    ``chunk`` steps per call (None: as many as fit in 512 KB of its signals, at least 8: a
    call costs about as much as a step of an LSTM, and chunks beyond the cache ran slower)."""
    _check_forward(kernel.program)
    if chunk is not None and not is_count(chunk):
        raise GraphcompError(f"chunk must be a positive number of steps, got {chunk!r}")
    batch = prepare(kernel.program, params, inputs, lengths, initial, with_loss=True)
    carry = Carry(kernel, batch.B, batch.initial)
    width = sum(math.prod(i.shape) for i in carry.step.signals.values()) * carry.rows
    chunk = chunk or max(CHUNK_FLOATS // width, MIN_CHUNK)
    valid = batch.valid
    loss, grad = 0.0, np.zeros(carry.P)
    try:
        for t0 in range(0, batch.T, chunk):
            now = {n: _user(kernel.program, n, a[t0:t0 + chunk]) for n, a in batch.inputs.items()}
            L, dL = carry.run(params, now, valid[t0:t0 + chunk])
            loss += L.sum() / batch.B
            grad += dL.sum((0, 2)) / batch.B
    except NotFinite:
        kernel.forward(params, inputs, lengths, initial)   # names a state that overflows
        raise NotFinite("the sensitivities of the states overflow although every state is finite: the "
                        "recurrence is unstable for these parameters (its gradient grows without bound)") from None
    if not (np.isfinite(loss) and np.isfinite(grad).all()):
        raise NotFinite(f"the loss or its gradient is not finite ({loss}) although every state is: the loss or "
                        "its derivative overflows (e.g. log of 0); check targets and parameters")
    return kernel.dtype.type(loss), _unflatten(carry, grad, params, kernel.dtype)


def _user(step: Step, name: str, a: np.ndarray) -> np.ndarray:
    """An IR-layout array (C, B, *shape) in the user's layout (C, B, *array_shape)."""
    return a.reshape(a.shape[:2] + step.signals[name].array_shape)


def _unflatten(carry: Carry, grad: np.ndarray, params: dict, dtype: np.dtype) -> dict:
    """The flat gradient (P,) keyed and shaped like ``params``, in ``dtype``."""
    out, lo = {}, 0
    for p, size in carry.sizes.items():
        given = np.shape(params[p])
        g = grad[lo:lo + size]
        out[p] = np.ascontiguousarray(g.reshape(given), dtype=dtype) if given else dtype.type(g[0])
        lo += size
    return out


class Online:
    """Real-time recurrent learning on a stream: ``step(inputs)`` advances the recurrence by
    one step for a batch and returns the loss at this step, (1/B) Σ_b L_b(t), and its gradient.
    ``loss`` and ``grads`` hold the loss so far and its gradient (the sums over the steps).

    Change ``params`` between steps to learn online: the sensitivities carried from earlier
    steps were computed with the old parameters, so the gradient is then RTRL's usual
    approximation (Williams and Zipser, 1989), exact only while the parameters stay fixed.
    ``state`` is ``kernel.step``'s: for every signal read k steps back its last k values
    ``(k, B, ...)``, oldest first; the sensitivities start at zero."""

    def __init__(self, kernel, params: dict, state: dict | None = None):
        self.kernel, self.params = kernel, params
        _check_forward(kernel.program)
        _compiled(kernel)   # compile now: a model RTRL cannot run fails here
        self.reset(state)

    def reset(self, state: dict | None = None) -> None:
        """Start again from ``state`` (None: zeros), with zero sensitivities, loss and gradient."""
        self._start, self._carry, self.t = state, None, 0
        self.loss = self.kernel.dtype.type(0)
        self.grads = {p: np.zeros_like(np.asarray(v, dtype=self.kernel.dtype)) for p, v in self.params.items()}

    def step(self, inputs: dict | None = None) -> tuple[float, dict]:
        """Advance one step; ``inputs`` holds each input at this step, ``(B, ...)``. Returns the
        loss at this step and its gradient, keyed and shaped like ``params``."""
        if inputs is not None and not isinstance(inputs, dict):
            raise GraphcompError(f"inputs must be a dict name -> array (B, ...), got {type(inputs).__name__}")
        program = self.kernel.program
        now = {n: np.asarray(a)[None] for n, a in (inputs or {}).items()}   # a sequence of one step
        first = self._carry is None
        batch = prepare(program, self.params, now, initial=self._start if first else None, with_loss=True,
                        steps=1, lengths=None if now or first else np.ones(self._carry.B, int))
        if first:
            self._carry = Carry(self.kernel, batch.B, batch.initial)
        elif batch.B != self._carry.B:
            raise GraphcompError(f"the inputs have batch {batch.B} but the stream runs {self._carry.B} sequences; "
                                 "call reset() to start a stream with another batch")
        try:
            L, dL = self._carry.run(self.params, {n: _user(program, n, a) for n, a in batch.inputs.items()},
                                    np.ones((1, batch.B), bool))
        except NotFinite:
            raise NotFinite(f"a state or its sensitivity overflowed at step {self.t + 1} of the stream: the "
                            "recurrence diverges for these parameters and inputs (try smaller weights or a "
                            "smaller learning rate)") from None
        self.t += 1
        if not (np.isfinite(L).all() and np.isfinite(dL).all()):
            raise NotFinite(f"the loss or its gradient at step {self.t} of the stream is not finite: the loss or "
                            "its derivative overflows (e.g. log of 0); check targets and parameters")
        loss = self.kernel.dtype.type(L.mean())
        grads = _unflatten(self._carry, dL[0].mean(1), self.params, self.kernel.dtype)
        self.loss += loss
        self.grads = {p: self.grads[p] + g for p, g in grads.items()}
        return loss, grads

    @property
    def state(self) -> dict:
        """The state to pass to ``kernel.step`` or ``kernel.stream`` to go on from here."""
        return self._start if self._carry is None else self._carry.state()


# ---------------------------------------------------------------- whole-sequence sensitivities

def initial_entries(step: Step) -> dict:
    """The states' initial values, as ``initial`` takes them per sequence: {state: (k, *shape)}
    for every forward state read up to k steps back."""
    return {n: (i.history,) + i.array_shape for n, i in step.signals.items()
            if i.role == "state" and i.history and i.direction > 0}


@functools.lru_cache(maxsize=16)
def _compiled_outputs(kernel, outputs: tuple):
    step = tangent_step(kernel.program, dict(outputs))
    if not step.updates:
        # a stateless step whose work is all hoisted leaves the Numba emitter an empty time
        # loop, which it cannot write yet: a state that holds zero keeps the loop non-empty
        clock = ir.read(CLOCK, -1, ())
        step = Step({CLOCK: SignalInfo(CLOCK, "state", (), (-1,)), **step.signals}, step.params, {CLOCK: clock},
                    step.outputs, None, (Sweep(1, (CLOCK,)),))
    return step, kernel.derived(step)


def sensitivities(kernel, outputs: dict, params: dict, inputs: dict | None = None, lengths=None,
                  initial: dict | None = None, *, wrt_initial: bool = False, tangents: bool = True) -> dict:
    """Values and exact forward-mode derivatives of ``outputs`` {name: node of the kernel's
    step} (a fit's residuals, say) and of every state, over whole sequences.

    Returns {name: (value (T, B, ...), tangent (T, D, B, ...))}. The D directions are every
    parameter scalar (parameters in the order of ``kernel.program.params``, each raveled), then,
    with ``wrt_initial``, every entry of the states' initial values (``initial_entries``, state
    by state, each raveled): tangent[:, P + k, b] is the derivative with respect to entry k of
    sequence b's own initial values. Outputs are zero past a sequence's length, states keep
    their last value. One call of the tangent kernel on D·B rows, so memory grows with T·D·B.
    ``tangents=False``: the values alone (the tangents of one direction are computed, unused)."""
    step = kernel.program
    _check_forward(step, need_loss=False)
    tangent, tkernel = _compiled_outputs(kernel, tuple(outputs.items()))
    roots = [*step.updates.values(), *outputs.values()]
    read = {n.attr[0] for n in ir.toposort(roots) if n.op == "read"}
    batch = prepare(step, params, inputs, lengths, initial, with_loss=True,
                    needed=[n for n in step.inputs if n in read])
    B = batch.B
    P = sum(math.prod(shape) for shape in step.params.values())
    entries = initial_entries(step) if wrt_initial else {}
    D = max(P + sum(math.prod(e) for e in entries.values()), 1) if tangents else 1
    tile = lambda a, axis: np.broadcast_to(np.expand_dims(a, axis), a.shape[:axis] + (D,) + a.shape[axis:]) \
        .reshape(a.shape[:axis] + (D * B,) + a.shape[axis + 1:])
    given = {n: tile(_user(step, n, a), 1) for n, a in batch.inputs.items()}
    given.update({n: np.broadcast_to(v, (batch.T, D * B)) for n, v in _directions(step.params, tangent, D, B).items()})
    first, lo = {}, P   # each state's first direction
    for state, shape in entries.items():
        first[state], lo = lo, lo + math.prod(shape)
    carried = {}
    for name, info in tangent.signals.items():
        if not info.history:
            continue
        if name in step.signals or name == CLOCK:   # the original signals start from the given values
            if name == CLOCK:
                carried[name] = np.zeros((1, D * B))
                continue
            carried[name] = tile(_user(step, name, batch.initial[name]), 1)
            continue
        state = name[:-len(TAN.format(""))]
        seed = np.zeros((info.history, D, B) + info.array_shape)
        if state in entries and tangents:   # a unit tangent for each entry of the state's initial values
            k, size = entries[state][0], math.prod(entries[state][1:])
            for j in range(k - info.history, k):
                for c in range(size):
                    at = (j - k + info.history, first[state] + j * size + c, slice(None))
                    seed[at + np.unravel_index(c, entries[state][1:])] = 1.0
        carried[name] = seed.reshape((info.history, D * B) + info.array_shape)
    iotas = {p: np.arange(shape[0], dtype=float) for p, shape in tangent.params.items() if p not in step.params}
    try:
        out = tkernel.forward({**params, **iotas}, given, np.tile(batch.lengths, D), carried)
    except NotFinite:
        kernel.forward(params, {n: _user(step, n, a) for n, a in batch.inputs.items()}, batch.lengths, initial)
        raise NotFinite("the sensitivities of the states overflow although every state is finite: the "
                        "recurrence is too sensitive to its parameters over this many steps (cut the "
                        "sequences into windows, e.g. shooting=k in a fit)") from None
    result = {}
    for name in [*(s for s in step.states if step.signals[s].direction > 0), *outputs]:
        value, tan = out[name], out.get(TAN.format(name))
        if tan is None:   # a value that does not depend on θ
            tan = np.zeros_like(value)
        result[name] = (value[:, :B], tan.reshape((batch.T, D, B) + tan.shape[2:]) if tangents else None)
    return result
