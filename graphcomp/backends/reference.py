"""The two NumPy backends. ``loop`` runs the step over time and its adjoint step backwards,
as the compiled kernels do; ``unfolded`` builds the unfolded DAG for each sequence length and
walks it forward and in reverse (slow, and the oracle the others are held against).

Both take a validated ``Batch`` and return IR-layout arrays; states come back "as read": zero
past a sequence's end for a forward state, its boundary values for a backward one."""
from __future__ import annotations

import numpy as np

from .. import ir
from ..ir.autodiff import LOSS, Adjoint, adjoint, backprop, grad_var
from ..check import Batch
from ..layout import at, cells, interior, timelines
from ..lang.step import LOSS_NAME, Step
from ..views.unfold import evaluate, unfold


def _per_example(value: np.ndarray, node: ir.Node, B: int) -> np.ndarray:
    return value if node.batched else np.broadcast_to(value, (B,) + np.shape(value))


def _weighted(value: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Multiply a (B, ...) value by per-example weights (B,)."""
    return value * w.reshape(w.shape + (1,) * (value.ndim - 1))


class LoopBackend:
    """Time loops over the step IR; the backward loop runs the adjoint step."""

    name = "reference"
    capabilities = frozenset({"seeds", "delayed_input_cotangents", "stream"})

    def __init__(self, step: Step, dtype: str = "float64"):
        self.step = step
        self.adjoint: Adjoint = adjoint(step)
        self.delayed = _delayed_inputs(step)
        self._orders = {}

    def _order(self, roots: tuple) -> list:
        if roots not in self._orders:
            self._orders[roots] = ir.toposort(roots)
        return self._orders[roots]

    def _leaf(self, batch, ext, pre, t, seeds=None):
        def leaf(node):
            if node.op == "read":
                name, off = node.attr
                if _is_child(off):
                    return self._child(batch, ext[name], pre[name], name, t, off[1])
                return ext[name][at(t, off, pre[name])]
            if node.op == "param":
                return batch.params[node.attr]
            return seeds[node]
        return leaf

    @staticmethod
    def _child(batch, timeline, pre, name, t, k):
        """Each tree's node t's k-th child's value (B, ...): a gather; a missing child reads
        zeros, or ``initial``."""
        rows = batch.children[t - 1, :, k] - 1
        out = timeline[pre + np.maximum(rows, 0), np.arange(batch.B)].copy()
        init = batch.initial.get(name)
        out[rows < 0] = 0 if init is None else init[0][rows < 0]
        return out

    def _eval(self, roots, leaf) -> dict:
        roots = tuple(roots)
        return ir.evaluate(roots, leaf, self._order(roots))

    def _steps(self, batch: Batch, direction=1):
        """The steps (or the points of a grid) in the order of a sweep in ``direction``, each
        with its index into arrays without margins."""
        if self.step.grid:
            direction = (direction,) * len(batch.T) if isinstance(direction, int) else direction
            return ((p, tuple(k - 1 for k in p)) for p in cells(batch.T, direction))
        return ((t, t - 1) for t in (range(1, batch.T + 1) if direction > 0 else range(batch.T, 0, -1)))

    def _run(self, batch: Batch):
        step, valid = self.step, batch.valid
        ext, pre = timelines(self.step, batch)
        for sweep in step.sweeps:
            for t, k in self._steps(batch, sweep.direction):
                v = valid[k]
                leaf = self._leaf(batch, ext, pre, t)
                for s in sweep.states:
                    root = step.updates[s]
                    val = _per_example(self._eval([root], leaf)[root], root, batch.B)
                    ext[s][at(t, _here(t), pre[s])][v] = val[v]
        return ext, pre

    def forward(self, batch: Batch) -> tuple[dict, dict]:
        step = self.step
        ext, pre = self._run(batch)
        states = {s: interior(ext[s], pre[s], batch.T).copy() for s in step.states}
        lead = batch.T if step.grid else (batch.T,)
        outputs = {o: np.zeros(lead + (batch.B,) + n.shape) for o, n in step.outputs.items()}
        if outputs:
            roots = tuple(step.outputs.values())
            for t, k in self._steps(batch):
                vals = self._eval(roots, self._leaf(batch, ext, pre, t))
                v = batch.valid[k]
                for o, n in step.outputs.items():
                    outputs[o][k][v] = _per_example(vals[n], n, batch.B)[v]
        return states, outputs

    def loss_and_grad(self, batch: Batch, seeds: dict | None = None) -> tuple:
        """The loss and gradients; with ``seeds`` (state -> (K, B, ...) cotangents of each
        sequence's last K values) also the initial values' cotangents (states and inputs)."""
        step, adj, B = self.step, self.adjoint, batch.B
        ext, pre = self._run(batch)
        cot = {s: np.zeros_like(ext[s]) for s in step.states}
        delayed = self.delayed if seeds is not None else {}
        cot.update({name: np.zeros_like(ext[name]) for sends in delayed.values() for name, _ in sends})
        for s, seed in (seeds or {}).items():   # ∇s(len_b - j) starts at the seed of s's j-th last value
            for j in range(len(seed)):
                b = np.flatnonzero(batch.lengths - j >= 1)
                cot[s][batch.lengths[b] - j - 1 + pre[s], b] += seed[len(seed) - 1 - j][b]
        grads = {p: np.zeros(shape) for p, shape in step.params.items()}
        loss = 0.0

        def send(who, t, leaf, w):
            """Add consumer ``who``'s cotangents at step t, weighted per example by w."""
            reads, params = adj.reads[who], adj.params[who]
            if delayed:   # and to the delayed inputs' initial values, at the first steps
                reads = {**reads, **{(n, off): g for (n, off), g in delayed[who].items() if t + off <= 0}}
            vals = self._eval([*reads.values(), *params.values()], leaf)
            for (name, off), node in reads.items():
                value = _weighted(_per_example(vals[node], node, B), w)
                if _is_child(off):   # scatter to each tree's node t's k-th child, if it has one
                    rows = batch.children[t - 1, :, off[1]] - 1
                    b = np.flatnonzero(rows >= 0)
                    np.add.at(cot[name], (pre[name] + rows[b], b), value[b])
                    continue
                cot[name][at(t, off, pre[name])] += value
            for p, node in params.items():
                grads[p] += (_weighted(vals[node], w).sum(0) if node.batched else vals[node] * w.sum())

        if step.loss is not None:
            for t, k in self._steps(batch):
                w = batch.valid[k] / B
                leaf = self._leaf(batch, ext, pre, t)
                value = self._eval([step.loss], leaf)[step.loss]
                loss += float((_per_example(value, step.loss, B) * w).sum())
                send(LOSS, t, leaf, w)
        for sweep in reversed(step.sweeps):
            back = tuple(-d for d in sweep.direction) if step.grid else -sweep.direction
            for t, k in self._steps(batch, back):
                v = batch.valid[k]
                for s in reversed(sweep.states):
                    g = _weighted(cot[s][at(t, _here(t), pre[s])], v.astype(float))
                    seed = grad_var(s, step.updates[s].shape)
                    send(s, t, self._leaf(batch, ext, pre, t, {seed: g}), np.ones(B))
        if seeds is None:
            return loss, grads
        initial = {s: cot[s][:pre[s]] for s in cot if step.signals[s].direction > 0 and pre[s]}
        return loss, grads, initial


def _is_child(offset) -> bool:
    return isinstance(offset, tuple) and offset[:1] == ("child",)


def _index(point):
    """The index of a step (or grid point) in an array without margins."""
    return tuple(k - 1 for k in point) if isinstance(point, tuple) else point - 1


def _here(point):
    """The offset of the current step (or grid point)."""
    return (0,) * len(point) if isinstance(point, tuple) else 0


def _delayed_inputs(step: Step) -> dict:
    """Per consumer (as in ``Adjoint``), the cotangents it sends to inputs read at t - k: the
    gradient w.r.t. their initial values, which the kernels treat as data (time only)."""
    if step.grid or step.tree:
        return {}
    consumers = {s: (node, grad_var(s, node.shape)) for s, node in step.updates.items()}
    if step.loss is not None:
        consumers[LOSS] = (step.loss, ir.const(1))
    out = {}
    for who, (root, seed) in consumers.items():
        ct = ir.vjp({root: seed})
        out[who] = {n.attr: g for n, g in ct.items() if n.op == "read" and n.attr[1] < 0
                    and step.signals[n.attr[0]].role == "input"}
    return out if any(out.values()) else {}


class UnfoldedBackend:
    """Forward and reverse over the unfolded DAG, one DAG per distinct sequence length."""

    name = "unfolded"
    capabilities = frozenset({"stream"})

    def __init__(self, step: Step, dtype: str = "float64"):
        self.step = step
        self._graphs = {}

    def _graph(self, steps):
        if steps not in self._graphs:
            self._graphs[steps] = unfold(self.step, steps)
        return self._graphs[steps]

    def _boundary(self, batch: Batch, idx, name: str, time, length):
        info = self.step.signals[name]
        init, k = batch.initial.get(name), info.history
        if self.step.grid or self.step.tree:   # one value outside the grid (or for a missing child), or zeros
            return init[0][idx] if init is not None else np.zeros((len(idx),) + info.shape)
        row = k + time - 1 if time < 1 and info.direction > 0 else time - length - 1 if time > length and info.direction < 0 else None
        if init is not None and row is not None and 0 <= row < k:
            return init[row][idx]
        return np.zeros((len(idx),) + info.shape)

    def _groups(self, batch: Batch):
        if self.step.tree:   # one DAG per tree
            yield from self._trees(batch)
            return
        grid = self.step.grid
        keys = np.unique(batch.lengths, axis=0) if grid else np.unique(batch.lengths)
        for key in keys:
            idx = np.flatnonzero((batch.lengths == key).all(1) if grid else batch.lengths == key)
            length = tuple(int(k) for k in key) if grid else int(key)
            graph = self._graph(length)

            def leaf(nid, attrs, idx=idx, length=length):
                if attrs["kind"] == "param":
                    return batch.params[attrs["name"]]
                if attrs.get("initial"):
                    return self._boundary(batch, idx, attrs["name"], attrs["time"], length)
                if attrs["name"] not in batch.inputs:   # forward() without the loss's targets
                    return np.zeros((len(idx),) + attrs["shape"])
                return batch.inputs[attrs["name"]][_index(attrs["time"])][idx]

            yield length, idx, graph, evaluate(graph, leaf)

    def _trees(self, batch: Batch):
        for b in range(batch.B):
            n, idx = int(batch.lengths[b]), np.array([b])
            graph = unfold(self.step, n, batch.children[:n, b])

            def leaf(nid, attrs, idx=idx, n=n):
                if attrs["kind"] == "param":
                    return batch.params[attrs["name"]]
                if attrs.get("initial"):
                    return self._boundary(batch, idx, attrs["name"], attrs["time"], n)
                if attrs["name"] not in batch.inputs:
                    return np.zeros((1,) + attrs["shape"])
                return batch.inputs[attrs["name"]][attrs["time"] - 1][idx]

            yield n, idx, graph, evaluate(graph, leaf)

    def _points(self, extents):
        if self.step.grid:
            return list(cells(extents, (1,) * len(extents)))
        return range(1, extents + 1)

    def forward(self, batch: Batch) -> tuple[dict, dict]:
        step = self.step
        lead = batch.T if step.grid else (batch.T,)
        states = {s: np.zeros(lead + (batch.B,) + i.shape) for s, i in step.signals.items() if i.role == "state"}
        outputs = {o: np.zeros(lead + (batch.B,) + n.shape) for o, n in step.outputs.items()}
        for length, idx, graph, values in self._groups(batch):
            mine = set(self._points(length))
            for time in self._points(batch.T):
                for s in states:
                    states[s][_index(time)][idx] = (values[("state", s, time)] if time in mine else
                                                    self._boundary(batch, idx, s, time, length))
                for o in outputs:
                    if time in mine:
                        outputs[o][_index(time)][idx] = values[("output", o, time)]
        return states, outputs

    def loss_and_grad(self, batch: Batch) -> tuple[float, dict]:
        loss = 0.0
        grads = {p: np.zeros(shape) for p, shape in self.step.params.items()}
        for length, idx, graph, values in self._groups(batch):
            seeds = {("loss", LOSS_NAME, time): np.full(len(idx), 1.0 / batch.B) for time in self._points(length)}
            loss += sum(float(np.sum(values[nid])) for nid in seeds) / batch.B
            ct = backprop(graph, values, seeds)
            for p in grads:
                if ("param", p, None) in ct:
                    grads[p] += ct[("param", p, None)].sum(0)
        return loss, grads

