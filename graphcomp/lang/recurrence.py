"""``Recurrence``: the user's model. It keeps the equations as written, the lowered step and
its adjoint, and shows them as equations and as the unfolded graph."""
from __future__ import annotations

from typing import Mapping

import networkx as nx
import numpy as np
import sympy as sp

from .. import ir
from ..errors import GraphcompError
from ..ir.autodiff import LOSS, adjoint
from .declare import HAS_CHILD, Child, ChildOf, IsChild, Parent, SignalRef, t
from .step import LOSS_NAME, build
from ..views.latex import Equation
from ..views.unfold import unfold


def _signal_at(name: str, shape: tuple, time):
    """The sympy form of signal ``name`` at ``time``: ``s(t)`` or the vector ``h(t)``; over a
    grid ``time`` is a point, a ``Tuple`` (i, j, ...)."""
    return SignalRef(name, time, *shape) if shape else sp.Function(name)(*_args(time))


def _args(time) -> tuple:
    return tuple(time) if isinstance(time, sp.Tuple) else (time,)


class Recurrence:
    """A recurrent system: ``updates`` {state(t): expression}, optional ``outputs``
    {name: expression} and a per-step scalar ``loss``. Checked when built: shapes, delays,
    same-step cycles; every problem is a ``GraphcompError`` naming the symbols involved."""

    def __init__(self, updates: Mapping, outputs: Mapping | None = None, loss=None):
        self.step = build(updates, outputs, loss)
        self._updates = {_key_name(k): sp.sympify(v) for k, v in updates.items()}
        self._keys = dict(zip(self._updates, updates))
        self._outputs = {k: sp.sympify(v) for k, v in (outputs or {}).items()}
        self._loss = None if loss is None else sp.sympify(loss)
        self._adjoint = None

    # ------------------------------------------------------------ roles
    @property
    def states(self) -> list[str]:
        """Names of the states (the keys of the updates), in the order written."""
        return list(self._updates)

    @property
    def inputs(self) -> list[str]:
        """Names of the signals that are read but never updated (targets included): what a
        call's ``inputs`` hold (a tree model's ``has_child``, which graphcomp fills in, left out)."""
        return [n for n in self.step.inputs if n != HAS_CHILD]

    @property
    def params(self) -> list[str]:
        """Names of the parameters: the remaining free symbols."""
        return list(self.step.params)

    @property
    def outputs(self) -> list[str]:
        return list(self._outputs)

    def __repr__(self) -> str:
        lines = [f"  {eq}" for eq in self.equations()]
        return "Recurrence(\n" + "\n".join(lines) + "\n)"

    # ------------------------------------------------------------ equations
    def equations(self) -> list[sp.Eq]:
        """The forward step as written: the updates, then outputs, then the loss L(t); each a
        ``sympy.Eq`` whose ``str`` reads h(t) = tanh(W*h(t - 1) + ...)."""
        here = self._point(self.step.here)
        eqs = [Equation(self._keys[s], e, evaluate=False) for s, e in self._updates.items()]
        for o, e in self._outputs.items():
            eqs.append(Equation(_signal_at(o, self.step.outputs[o].shape, here), e, evaluate=False))
        if self._loss is not None:
            eqs.append(Equation(sp.Function(LOSS_NAME)(*_args(here)), self._loss, evaluate=False))
        return eqs

    def _point(self, offset, shift=None):
        """``t + offset`` (moved by ``shift``), or over a grid the point (i + offset_i, ...). In
        a tree, ``shift`` ("child", k) moves to the parent p(t) of a node that is its k-th child."""
        if isinstance(shift, tuple) and shift[0] == "child":
            parent = Parent(t)
            if offset == shift:
                return t
            if isinstance(offset, tuple):
                return ChildOf(offset[1], parent)
            return parent + offset
        if isinstance(offset, tuple) and offset[0] == "child":
            return Child(offset[1])
        if not self.step.grid:
            return t + offset + (shift or 0)
        shift = shift or (0,) * len(offset)
        return sp.Tuple(*(a + o + k for a, o, k in zip(self.step.axes, offset, shift)))

    def latex(self, gradient: bool = True) -> str:
        """The equations (and, unless ``gradient=False``, the derived BPTT equations) in
        textbook notation, as a LaTeX ``aligned`` block."""
        from ..views.latex import aligned
        eqs = self.equations() + (self.gradient_equations() if gradient else [])
        return aligned(eqs)

    def _repr_latex_(self) -> str:
        return f"$${self.latex(gradient=False)}$$"

    @property
    def adjoint(self):
        if self._adjoint is None:
            self._adjoint = adjoint(self.step)
        return self._adjoint

    def gradient_equations(self) -> list[sp.Eq]:
        """The derived backward (BPTT) recurrence: for each state, ∇s(t) = ∂L/∂s(t) in terms of
        the adjoints of the steps that read s(t); then each parameter's gradient as a sum
        over t. Written for sequences long enough that no boundary is in sight."""
        step, adj = self.step, self.adjoint
        eqs = []
        for s in self.states:
            shape = step.signals[s].shape
            terms = []
            for who in [*self.states, LOSS]:
                for (name, off), node in adj.reads.get(who, {}).items():
                    if name != s:
                        continue
                    if isinstance(off, tuple) and off[0] == "child":   # sent by the parent, if t is its k-th child
                        terms.append(IsChild(off[1], t) * self._sympy(node, off))
                    else:
                        terms.append(self._sympy(node, tuple(-k for k in off) if step.grid else -off))
            rhs = _sum(terms, shape)
            if not shape:   # a ∇s(t+1) (a + b tanh'(...)) reads better than two terms
                adjoints = [f for f in rhs.atoms(sp.Function) if str(getattr(f, "func", "")).startswith("∇")]
                rhs = sp.collect(rhs, adjoints) if adjoints else rhs
            eqs.append(Equation(_signal_at(f"∇{s}", shape, self._point(step.here)), rhs, evaluate=False))
        if step.grid:   # Σ over every point of the grid, each axis up to its extent
            limits = [(a, 1, sp.Symbol(str(a).upper(), integer=True, positive=True)) for a in step.axes]
        else:
            limits = [(t, 1, sp.Symbol("T", integer=True, positive=True))]
        for p, shape in step.params.items():
            terms = [self._sympy(adj.params[who][p], step.here) for who in [*self.states, LOSS]
                     if p in adj.params.get(who, {})]
            lhs = sp.MatrixSymbol(f"∇{p}", *shape) if shape else sp.Symbol(f"∇{p}")
            eqs.append(Equation(lhs, sp.Sum(_sum(terms, shape), *limits), evaluate=False))
        return eqs

    def _sympy(self, node: ir.Node, shift):
        """An adjoint IR expression as sympy, with every time (or grid point) moved by ``shift``."""
        def leaf(n):
            if n.op == "read":
                name, off = n.attr
                return _signal_at(name, n.shape, self._point(off, shift))
            if n.op == "param":
                return sp.MatrixSymbol(n.attr, *n.shape) if n.shape else sp.Symbol(n.attr)
            return _signal_at(f"∇{n.attr[1]}", n.shape, self._point(self.step.here, shift))

        return ir.to_sympy([node], leaf)[0]

    # ------------------------------------------------------------ graphs and arrays
    def unfold(self, steps=None, children=None, lengths=None) -> nx.DiGraph:
        """The computational graph over ``steps`` steps, as an acyclic networkx DiGraph; over a
        grid ``steps`` is the extents ``(I, J, ...)``; over trees ``children`` gives one tree
        ``(N, K)`` (``steps`` its node count, default N), or a minibatch ``(N, B, K)`` with
        ``lengths``: then every node's time is ``(b, v)``, tree b's node v."""
        if children is None:
            return unfold(self.step, steps)
        kids = np.asarray(children)
        if kids.ndim == 2:
            return unfold(self.step, steps or len(kids), kids)
        if kids.ndim != 3:
            raise GraphcompError(f"children has shape {kids.shape}; give one tree (N, K) or a minibatch (N, B, K)")
        lengths = np.full(kids.shape[1], len(kids)) if lengths is None else np.asarray(lengths)
        graph = nx.DiGraph()
        for b in range(kids.shape[1]):
            tree = unfold(self.step, int(lengths[b]), kids[:, b])
            rename = {n: n if n[0] == "param" else (n[0], n[1], (b, n[2])) for n in tree}
            for n, d in tree.nodes(data=True):
                if d.get("time") is not None:
                    d = {**d, "time": (b, d["time"])}
                if "args" in d:
                    d = {**d, "args": [rename[a] for a in d["args"]]}
                graph.add_node(rename[n], **d)
            graph.add_edges_from((rename[u], rename[v]) for u, v in tree.edges)
        return graph

    def draw(self, kind: str = "circuit", steps: int | None = None, max_columns: int = 6, children=None):
        """A ``graphviz.Digraph`` of the model: ``"circuit"`` (one node per variable, a black
        square marked k on every edge delayed by k steps), ``"unfolded"`` (one column per step,
        ``steps`` of them, default 3; the middle ones elided past ``max_columns``), ``"step"``
        (the ops of one step) or ``"gradient"`` (unfolded, with the backward flow in red).
        Over a grid the squares name the axes of each delay (``i−1``, ``j+1``) and ``steps``
        is a tuple of extents, default (3, 3): the cells are laid out as the grid. Over a tree
        a diamond marks each read at a child with its slot, and ``"unfolded"``/``"gradient"``
        draw one tree, ``children`` ``(N, K)`` (default: a root with a child in every slot), as
        a tree, root at the top. Jupyter shows it inline; ``.render(path, format="svg")``
        writes a file."""
        from ..views.draw import draw
        return draw(self.step, kind, steps, max_columns, children)

    def init_params(self, seed: int = 0) -> dict:
        """Seeded parameters in their NumPy shapes, by role: a weight (it multiplies a signal,
        ``model.step.weights``) Glorot-uniform over the fans of its declared shape, a bias
        (only added) zero, a scalar uniform in (-0.5, 0.5). Every H x 1 parameter, weight or
        bias, comes back as ``(H,)``, as from ``gc.models.init``; kernels also take an H x 1
        weight as ``(H, 1)`` and return its gradient in that shape."""
        rng = np.random.default_rng(seed)
        out = {}
        for p, shape in self.step.params.items():
            given = ir.user_shape(shape)
            if not shape:
                out[p] = float(rng.uniform(-0.5, 0.5))
            elif p in self.step.weights:
                limit = np.sqrt(6.0 / (shape[0] + shape[1]))
                out[p] = rng.uniform(-limit, limit, given)
            else:
                out[p] = np.zeros(given)
        return out


def _key_name(key) -> str:
    key = sp.sympify(key)
    return key.name if isinstance(key, SignalRef) else key.func.__name__


def _sum(terms: list, shape: tuple):
    if not terms:
        return sp.ZeroMatrix(*shape) if shape else sp.Integer(0)
    return sp.MatAdd(*terms) if shape else sp.Add(*terms)
