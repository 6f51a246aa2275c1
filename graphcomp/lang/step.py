"""The step program: a recurrence lowered from sympy to IR, with its signals' roles and the
order of its time sweeps. Every check of a declaration happens here."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping

import networkx as nx
import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from .. import ir
from .declare import HAS_CHILD, TIME_ONLY, Child, CrossEntropy, MeanSquaredError, SignalRef, misapplied, t, undefined
from ..errors import GraphcompError
from ..ir import X, Node


LOSS_NAME = "L"   # the per-step loss L(t), in equations and in the unfolded graph


@dataclass(frozen=True)
class SignalInfo:
    """A time-indexed signal: a state (computed by an update) or an input (given). Over a
    grid, an offset and a direction have one entry per axis."""

    name: str
    role: str            # "state" or "input"
    shape: tuple         # per example, IR form: () or (rows, cols)
    offsets: tuple       # every offset it is read at, sorted
    direction: int | tuple = 1   # +1 computed forward in time, -1 backwards (states only)

    @cached_property
    def array_shape(self) -> tuple:
        """Per-example NumPy shape: (), (n,) for a column vector, (r, c) for a matrix."""
        return ir.user_shape(self.shape)

    @cached_property
    def margins(self) -> tuple:
        """How many steps before t and after t it is read: the rows its timeline keeps before
        the first step and after the last. Over a grid: one such pair per axis."""
        if isinstance(self.direction, tuple):
            return tuple(_margins([o[k] for o in self.offsets]) for k in range(len(self.direction)))
        return _margins([o for o in self.offsets if isinstance(o, int)])   # a child read needs no margin

    @cached_property
    def history(self) -> int:
        """How many values before its boundary are read (the rows ``initial`` may give);
        over a grid, 1 if any value outside the grid is read (``initial`` gives one value)."""
        if isinstance(self.direction, tuple):
            return int(any(a or b for a, b in self.margins))
        before, after = self.margins
        return before if self.direction > 0 else after


def _margins(offsets) -> tuple[int, int]:
    return max(0, -min(offsets, default=0)), max(0, max(offsets, default=0))


@dataclass(frozen=True)
class Sweep:
    """States computed together in one loop over time, in this order, in one direction (over
    a grid, one per axis: the loops nest in the axes' order)."""

    direction: int | tuple
    states: tuple


@dataclass(frozen=True)
class Step:
    signals: dict        # name -> SignalInfo, states in evaluation order then inputs
    params: dict         # name -> IR shape
    updates: dict        # state name -> Node: its value at t
    outputs: dict        # output name -> Node
    loss: Node | None    # per-step scalar loss L(t)
    sweeps: tuple        # of Sweep, in evaluation order
    axes: tuple = (t,)   # the index axes: (t,), or a grid's (i, j, ...)

    @property
    def grid(self) -> bool:
        """Over two or more axes (a read's offset is then a tuple, one entry per axis)."""
        return len(self.axes) > 1

    @cached_property
    def tree(self) -> bool:
        """Over trees: some signal is read at a child (a read's offset is then ("child", k))."""
        return self.children > 0

    @cached_property
    def children(self) -> int:
        """The child slots a tree model reads (1 + the largest k of ``gc.child(k)``), else 0."""
        return 1 + max((o[1] for i in self.signals.values() for o in i.offsets if _is_child(o)), default=-1)

    @property
    def here(self):
        """The offset of a read at the current step: 0, or over a grid (0, 0, ...)."""
        return _zero(self.axes)

    @cached_property
    def states(self) -> list:
        return [n for n, s in self.signals.items() if s.role == "state"]

    @cached_property
    def inputs(self) -> list:
        return [n for n, s in self.signals.items() if s.role == "input"]

    @cached_property
    def weights(self) -> frozenset:
        """The parameters that multiply a signal, or a value that depends on one (``W h``,
        ``u(t) U``, ``V.T h``, ``p ⊙ c``, both factors of ``P Q h``): weights, drawn at random by
        ``init_params``. The others are only added (biases, also ``b`` in ``r ⊙ (W h + b)``)
        and start at zero: a weight at zero would leave its input unseen, a bias is harmless."""
        factors = set()                                   # nodes that multiply a signal
        for node in reversed(ir.toposort(self.roots())):  # every user before its arguments
            for i, arg in enumerate(node.args):
                # a factor made of parameters alone (P Q, V.T) passes the role to its parts
                if _multiplies(node, i) or (node in factors and not node.batched and _linear(node, i)):
                    factors.add(arg)
        return frozenset(n.attr for n in factors if n.op == "param")

    def roots(self, with_loss: bool = True) -> list:
        """The nodes the step computes: its updates, outputs and (if asked) loss."""
        loss = [self.loss] if with_loss and self.loss is not None else []
        return [*self.updates.values(), *self.outputs.values(), *loss]

    def inputs_needed(self, with_loss: bool) -> list:
        """Inputs read by the updates and outputs (and the loss, if asked)."""
        roots = self.roots(with_loss)
        names = {n.attr[0] for n in ir.toposort(roots) if n.op == "read"}
        return [n for n in self.inputs if n in names]

    def pretty(self) -> str:
        roots = {f"{s}(t)": n for s, n in self.updates.items()}
        roots.update({f"{o}(t)": n for o, n in self.outputs.items()})
        if self.loss is not None:
            roots[f"{LOSS_NAME}(t)"] = self.loss
        return ir.pretty(roots)


def _multiplies(node: Node, i: int) -> bool:
    """Argument i of ``node`` is a factor of a product whose other factor reads a signal."""
    if node.op == "matmul":
        return node.args[1 - i].batched
    if node.op != "map" or not _linear(node, i):
        return False
    coefficient = sp.diff(node.attr, X(i)).free_symbols
    return any(a.batched and X(j) in coefficient for j, a in enumerate(node.args) if j != i)


def _linear(node: Node, i: int) -> bool:
    """``node`` is linear in its argument i, so being a factor of a product passes to it:
    (A + B) h multiplies both A and B by h; tanh(A) h multiplies neither."""
    if node.op == "map":
        return sp.diff(node.attr, X(i), 2) == 0
    return node.op in ("matmul", "transpose", "concat", "take", "total", "broadcast")


def _time_offset(arg, shown, where: str) -> int:
    """The integer k of a time argument ``t + k``; anything else is an error."""
    arg = sp.sympify(arg)
    arg = arg.xreplace({s: t for s in arg.free_symbols if isinstance(s, sp.Symbol) and s.name == "t"})
    if t not in arg.free_symbols:
        axes = f"{TIME_ONLY}; " if arg.free_symbols else ""   # another axis: h(i-1), or a child
        raise GraphcompError(f"{shown} in {where}: {axes}signals are read at t plus an integer "
                             f"constant, like {_name(shown)}(t-1); {_name(shown)}({arg}) does not involve t")
    k = sp.simplify(arg - t)
    if not k.is_Integer:
        raise GraphcompError(f"{shown} in {where}: the time offset {k} is not an integer constant; "
                             "delays must be integers like t-1 or t-3")
    return int(k)


def _is_child(offset) -> bool:
    return isinstance(offset, tuple) and len(offset) == 2 and offset[0] == "child"


def _point_offset(args: tuple, axes: tuple, shown, where: str):
    """A read's offset: the k of ``t + k``, over a grid the tuple of each axis's constant, at a
    tree node's k-th child ("child", k)."""
    if len(args) == 1 and isinstance(args[0], Child):
        if len(axes) > 1:
            raise GraphcompError(f"{shown} in {where}: a grid's signals are read at points, not at children")
        return ("child", args[0].k)
    if len(axes) == 1:
        if len(args) != 1:
            raise GraphcompError(f"{shown} in {where}: the model's updates are over time t alone, so a "
                                 f"signal takes one argument, like {_name(shown)}(t-1)")
        return _time_offset(args[0], shown, where)
    names = ", ".join(map(str, axes))
    if len(args) != len(axes):
        raise GraphcompError(f"{shown} in {where}: the model's updates are over the axes ({names}), so a "
                             f"signal takes {len(axes)} arguments, one per axis, like {_name(shown)}({names})")
    out = []
    for a, axis in zip(args, axes):
        k = sp.simplify(sp.sympify(a) - axis)
        if not k.is_Integer:
            raise GraphcompError(f"{shown} in {where}: on axis {axis} the offset {k} is not an integer constant; "
                                 f"read each axis at itself plus a constant, like {_name(shown)}({names}) with {axis}-1")
        out.append(int(k))
    return tuple(out)


def _order(offset):
    """Offsets in order: times, then children by slot."""
    return (1, offset[1]) if _is_child(offset) else (0, offset)


def _name(e) -> str:
    return e.name if isinstance(e, SignalRef) else e.func.__name__ if isinstance(e, AppliedUndef) else str(e)


class _Lowering:
    """Turns sympy expressions into IR, recording every signal and parameter it meets."""

    def __init__(self, axes: tuple = (t,)):
        self.axes = axes
        self.signals: dict[str, tuple] = {}      # name -> IR shape
        self.params: dict[str, tuple] = {}
        self.offsets: dict[str, set] = defaultdict(set)
        self.bound: dict[str, Node] = {}         # names read at t that stand for a node (outputs)
        self.where = ""

    def lower(self, e) -> Node:
        e = sp.sympify(e)
        return self.matrix(e) if isinstance(e, sp.MatrixExpr) else self.scalar(e)

    def read(self, name: str, point: tuple, shape: tuple, shown) -> Node:
        offset = _point_offset(point, self.axes, shown, self.where)
        if name in self.params:
            raise GraphcompError(f"{name!r} is used both as a parameter and as a signal ({shown}) in "
                                 f"{self.where}; give them different names")
        old = self.signals.setdefault(name, shape)
        if old != shape:
            raise GraphcompError(f"signal {name!r} is read as {_fmt(old)} and as {_fmt(shape)} "
                                 f"({shown} in {self.where}); use one size")
        if name in self.bound:
            if offset != _zero(self.axes):
                raise GraphcompError(f"{shown} in {self.where}: output {name!r} can only be read at t; "
                                     f"to read it at another time make it a state (put {name}(t) in the updates)")
            return self.bound[name]
        self.offsets[name].add(offset)
        return ir.read(name, offset, shape)

    def param(self, name: str, shape: tuple, shown) -> Node:
        if name in self.signals:
            raise GraphcompError(f"{name!r} is used both as a signal and as a parameter ({shown}) in "
                                 f"{self.where}; give them different names")
        old = self.params.setdefault(name, shape)
        if old != shape:
            raise GraphcompError(f"parameter {name!r} appears as {_fmt(old)} and as {_fmt(shape)} "
                                 f"in {self.where}; one name, one shape")
        return ir.param(name, shape)

    def scalar(self, e) -> Node:
        if isinstance(e, sp.MatrixExpr):
            raise GraphcompError(f"{e} in {self.where} is a {_fmt(e.shape)} matrix where a scalar is needed")
        if e.is_Number:
            if not e.is_finite:
                raise GraphcompError(f"the constant {e} in {self.where} is not finite")
            return ir.const(e)
        if isinstance(e, sp.Symbol):
            if e.name == "t" or e in self.axes:
                which = "time index" if e.name == "t" else "grid index"
                raise GraphcompError(f"the {which} {e} appears outside a signal's argument in {self.where}; "
                                     f"a step cannot depend on {e} directly: pass values that vary with it as an input signal")
            return self.param(e.name, (), e)
        if isinstance(e, MeanSquaredError):
            pred, target = (self.matrix(a) for a in e.args)
            n = pred.shape[0] * pred.shape[1]
            return ir.emap(X(0) / X(1), [ir.total(ir.emap((X(0) - X(1)) ** 2, [pred, target])), ir.count(n)])
        if isinstance(e, CrossEntropy):
            z, y = (self.matrix(a) for a in e.args)
            lse = ir.logsumexp(z)
            return ir.emap(-X(0), [ir.total(ir.emap(X(0) * (X(1) - X(2)), [y, z, lse]))])
        if isinstance(e, sp.Trace) and e.arg.shape == (1, 1):
            return ir.total(self.matrix(e.arg))
        if isinstance(e, MatrixElement) and e.i.is_Integer and e.j.is_Integer:   # h(t)[i]: one entry
            row = ir.take(self.matrix(e.parent), int(e.i), int(e.i) + 1)
            return ir.total(ir.take(ir.transpose(row), int(e.j), int(e.j) + 1))
        for a in e.args:
            if isinstance(a, sp.MatrixExpr):
                what = misapplied(e) if isinstance(e, sp.Function) else f"the matrix {a} is mixed into a scalar"
                raise GraphcompError(f"{e} in {self.where}: {what}")
        if isinstance(e, AppliedUndef):
            if any(a.atoms(AppliedUndef) for a in e.args):   # applied to a value, not to a time
                raise GraphcompError(f"{e} in {self.where}: {undefined(e.func.__name__, e.args[0])}")
            return self.read(e.func.__name__, e.args, (), e)
        if isinstance(e, (sp.Add, sp.Mul, sp.Pow, sp.Function)):
            args = [self.scalar(a) for a in e.args]
            return ir.emap(e.func(*(X(i) for i in range(len(args)))), args)
        return self.opaque(e)

    def opaque(self, e) -> Node:
        """Any other scalar sympy expression (Piecewise, ...): one elementwise op over its atoms."""
        atoms = sorted(e.atoms(AppliedUndef) | {s for s in e.free_symbols if isinstance(s, sp.Symbol)}, key=str)
        if any(isinstance(a, sp.MatrixExpr) for a in sp.preorder_traversal(e)):
            raise GraphcompError(f"{e} in {self.where} mixes matrices into an expression graphcomp cannot lower")
        args = [self.scalar(a) for a in atoms]
        return ir.emap(e.xreplace({a: X(i) for i, a in enumerate(atoms)}), args)

    def matrix(self, e) -> Node:
        if isinstance(e, SignalRef):
            return self.read(e.name, e.point, tuple(int(n) for n in e.shape), e)
        if isinstance(e, sp.MatrixSymbol):
            return self.param(e.name, tuple(int(n) for n in e.shape), e)
        if isinstance(e, sp.MatAdd):
            args = [self.lower(a) for a in e.args]
            return ir.emap(sum(X(i) for i in range(len(args))), args)
        if isinstance(e, sp.MatMul):
            scalars = [a for a in e.args if not isinstance(a, sp.MatrixExpr)]
            node = None
            for a in e.args:
                if isinstance(a, sp.MatrixExpr):
                    node = self.matrix(a) if node is None else ir.matmul(node, self.matrix(a))
            if scalars:
                node = ir.mul(self.scalar(sp.Mul(*scalars)), node)
            return node
        if isinstance(e, sp.Transpose):
            return ir.transpose(self.matrix(e.arg))
        if isinstance(e, sp.HadamardProduct):
            args = [self.matrix(a) for a in e.args]
            return ir.emap(sp.Mul(*(X(i) for i in range(len(args)))), args)
        if isinstance(e, sp.HadamardPower):
            return ir.emap(X(0) ** X(1), [self.matrix(e.base), self.scalar(e.exp)])
        if isinstance(e, ElementwiseApplyFunction):
            body = e.function(X(0))
            atoms = sorted(body.free_symbols - {X(0)}, key=str)  # parameters inside the function
            args = [self.matrix(e.expr)] + [self.scalar(a) for a in atoms]
            return ir.emap(body.xreplace({a: X(i + 1) for i, a in enumerate(atoms)}), args)
        if isinstance(e, sp.BlockMatrix):
            if e.blocks.shape[1] != 1:
                raise GraphcompError(f"{e} in {self.where}: only vertical stacks (gc.concat) are supported")
            return ir.concat(*(self.matrix(b) for b in e.blocks[:, 0]))
        if isinstance(e, sp.MatPow) and e.exp.is_Integer and e.exp > 0:
            base = node = self.matrix(e.base)
            for _ in range(int(e.exp) - 1):
                node = ir.matmul(node, base)
            return node
        if isinstance(e, (sp.ZeroMatrix, sp.OneMatrix)):
            return ir.const(0 if isinstance(e, sp.ZeroMatrix) else 1, tuple(int(n) for n in e.shape))
        if isinstance(e, sp.MatrixSlice) and e.colslice == (0, e.parent.shape[1], 1) and e.rowslice[2] == 1:
            return ir.take(self.matrix(e.parent), int(e.rowslice[0]), int(e.rowslice[1]))
        raise GraphcompError(f"{type(e).__name__} {e} in {self.where} is not supported: graphcomp lowers "
                             "+, *, transpose, gc.hadamard, gc.concat and elementwise functions")


def _fmt(shape) -> str:
    return "a scalar" if not shape else "x".join(str(n) for n in shape)


def _key(lhs) -> tuple[str, tuple, tuple]:
    """An update key's name, shape and point (its arguments)."""
    if isinstance(lhs, SignalRef):
        return lhs.name, tuple(int(n) for n in lhs.shape), lhs.point
    if isinstance(lhs, AppliedUndef):
        return lhs.func.__name__, (), lhs.args
    raise GraphcompError(f"the update key {lhs!r} is not a signal at time t; write updates as "
                         "{s(t): expression} with s = sympy.Function('s') or gc.signal('s', n)")


def _axes(keys: list) -> tuple:
    """The index axes, from the update keys: (t,), or a grid's symbols, the same for every key."""
    if not keys:
        return (t,)
    name, _, point = _key(keys[0])
    if len(point) == 1:
        return (t,)
    if not all(isinstance(a, sp.Symbol) for a in point) or len(set(point)) != len(point):
        raise GraphcompError(f"the update key {keys[0]}: over a grid, a state is updated at a point of distinct "
                             f"axis symbols, like {name}(i, j) with i, j = sympy.symbols('i j', integer=True)")
    return tuple(point)


def _lhs_name(lhs, axes: tuple, where: str) -> tuple[str, tuple]:
    name, shape, point = _key(lhs)
    if len(axes) > 1 and tuple(point) != axes:
        raise GraphcompError(f"the update key {lhs}: every state of a grid is updated at the same point with the "
                             f"axes in one order, like {name}({', '.join(map(str, axes))})")
    if _point_offset(tuple(point), axes, lhs, where) != _zero(axes):
        raise GraphcompError(f"the update key {lhs} must be at time t: write {name}(t) = f({name}(t-1), ...)")
    return name, shape


def _zero(axes: tuple):
    """The offset of a read at the current step (or point)."""
    return 0 if len(axes) == 1 else (0,) * len(axes)


def build(updates: Mapping, outputs: Mapping | None = None, loss=None) -> Step:
    """Lower a declared recurrence and check it: shapes, delays, same-step cycles, roles."""
    if not isinstance(updates, Mapping):
        raise GraphcompError("updates must be a dict {state(t): expression}")
    outputs = dict(outputs or {})
    if not updates and not outputs and loss is None:
        raise GraphcompError("the recurrence is empty: give updates, outputs or a loss")
    axes = _axes([sp.sympify(k) for k in updates])
    low = _Lowering(axes)
    lhs, exprs = {}, {}
    for key, expr in updates.items():
        name, shape = _lhs_name(sp.sympify(key), axes, "the updates")
        if name in lhs:
            raise GraphcompError(f"state {name!r} is updated twice")
        lhs[name], exprs[name] = shape, expr
        low.signals[name] = shape
    for name in outputs:
        if not isinstance(name, str):
            raise GraphcompError(f"output names must be strings, got {name!r}")
        if name in lhs:
            raise GraphcompError(f"{name!r} is both a state and an output; rename the output")
    new = {}
    for name, expr in exprs.items():
        low.where = f"the update of {name}"
        node = low.lower(expr)
        if node.shape != lhs[name]:
            raise GraphcompError(f"the update of {name} has shape {_fmt(node.shape)} but {name} is "
                                 f"{_fmt(lhs[name])}; make both sides the same size")
        new[name] = node
    outs = {}
    for name, expr in outputs.items():
        low.where = f"output {name!r}"
        if name in low.signals:
            raise GraphcompError(f"output {name!r} has the name of a signal the model reads; rename it")
        outs[name] = low.lower(expr)
    loss_node = None
    if loss is not None:
        low.where = "the loss"
        low.bound = outs
        for name, node in outs.items():
            low.signals.setdefault(name, node.shape)
        loss_node = low.lower(loss)
        if loss_node.shape == (1, 1):
            loss_node = ir.total(loss_node)
        if loss_node.shape != ():
            raise GraphcompError(f"the loss must be a scalar per step, but it is {_fmt(loss_node.shape)}; "
                                 "reduce it, e.g. with gc.mse(pred, target)")
        for name in outs:
            low.signals.pop(name)
    for name in outs:
        if name in low.params:
            raise GraphcompError(f"output {name!r} has the name of a parameter; rename it")
    sweeps, direction = _sweeps(list(lhs), new, axes)
    signals = {}
    for sw in sweeps:
        for s in sw.states:
            signals[s] = SignalInfo(s, "state", lhs[s], tuple(sorted(low.offsets[s], key=_order)), direction[s])
    for name, shape in low.signals.items():
        if name not in signals and name not in outs:
            signals[name] = SignalInfo(name, "input", shape, tuple(sorted(low.offsets[name], key=_order)),
                                       1 if len(axes) == 1 else (1,) * len(axes))
    return Step(signals, dict(low.params), new, outs, loss_node, tuple(sweeps), axes)


def _sweeps(order: list, updates: dict, axes: tuple = (t,)) -> tuple[list, dict]:
    """Group the states into loops over time. A recurrence (a cycle of reads) runs forward if it
    reads the past, backwards if it reads the future; same-step reads must not form a cycle.
    Over a grid, each axis has its own direction."""
    reads = nx.DiGraph()
    reads.add_nodes_from(order)
    for s, node in updates.items():
        for leaf in ir.toposort([node]):
            if leaf.op == "read" and leaf.attr[0] in updates:
                src, off = leaf.attr
                if not reads.has_edge(src, s):
                    reads.add_edge(src, s, offsets=set())
                reads.edges[src, s]["offsets"].add(off)
    here = _zero(axes)
    same = nx.DiGraph([(u, v) for u, v, d in reads.edges(data=True) if here in d["offsets"]])
    try:
        cycle = nx.find_cycle(same)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        at = ", ".join(map(str, axes))
        path = " -> ".join(f"{u}({at})" for u, _ in cycle) + f" -> {cycle[0][0]}({at})"
        raise GraphcompError(f"same-step cycle between states {sorted({u for u, _ in cycle})}: {path} "
                             "(each reads the next at the same t); delay one of the reads, e.g. to t-1")
    rank = {s: i for i, s in enumerate(order)}
    comps = list(nx.strongly_connected_components(reads))
    for comp in comps:
        _direction(reads, comp, axes)   # raises if a recurrence reads both past and future
    cond = nx.condensation(reads, comps)
    comp_order = list(nx.lexicographical_topological_sort(cond, key=lambda c: min(rank[s] for s in cond.nodes[c]["members"])))
    sweeps, direction = [], {}
    current: list = []
    for c in comp_order:
        members = cond.nodes[c]["members"]
        inner = nx.DiGraph(same.subgraph(members))
        inner.add_nodes_from(members)
        ordered = list(nx.lexicographical_topological_sort(inner, key=rank.get))
        if current and _direction(reads, set(current) | members, axes, quiet=True) is not None:
            current += ordered
        else:
            if current:
                sweeps.append(current)
            current = ordered
    if current:
        sweeps.append(current)
    out = []
    for sw in sweeps:
        d = _direction(reads, set(sw), axes)
        d = (d or 1) if len(axes) == 1 else tuple(k or 1 for k in d)
        out.append(Sweep(d, tuple(sw)))
        direction.update({s: d for s in sw})
    return out, direction


def _direction(reads: nx.DiGraph, states: set, axes: tuple = (t,), quiet: bool = False):
    """+1 if the reads among ``states`` look only into the past, -1 only into the future,
    0 if only at the same step; a mix raises (or returns None when ``quiet``). Over a grid:
    a tuple, one per axis."""
    if len(axes) > 1:
        return _grid_direction(reads, states, axes, quiet)
    past, future = [], []
    for u, v, d in reads.subgraph(states).edges(data=True):
        for off in d["offsets"]:
            if _is_child(off):   # a child is computed before its parent
                past.append(f"{v}(t) reads {u}(child{off[1]})")
                continue
            (past if off < 0 else future if off > 0 else []).append(f"{v}(t) reads {u}(t{off:+d})")
    if past and future:
        if quiet:
            return None
        raise GraphcompError(f"states {sorted(states)} form one recurrence that reads both the past "
                             f"({past[0]}) and the future ({future[0]}); a state runs in one direction: "
                             "read its own past (t-k) or its own future (t+k), not both")
    return 1 if past else -1 if future else 0


def _grid_direction(reads: nx.DiGraph, states: set, axes: tuple, quiet: bool):
    """Per axis: +1 if the reads among ``states`` look back along it, -1 ahead, 0 neither."""
    out = []
    for k, axis in enumerate(axes):
        back, ahead = [], []
        for u, v, d in reads.subgraph(states).edges(data=True):
            for off in d["offsets"]:
                shown = f"{v}({', '.join(map(str, axes))}) reads {u}({_at(axes, off)})"
                (back if off[k] < 0 else ahead if off[k] > 0 else []).append(shown)
        if back and ahead:
            if quiet:
                return None
            raise GraphcompError(f"states {sorted(states)} are read both ways along axis {axis} ({back[0]}; "
                                 f"{ahead[0]}); a state sweeps one way per axis: read it at {axis}-k or at "
                                 f"{axis}+k, not both")
        out.append(1 if back else -1 if ahead else 0)
    return tuple(out)


def _at(axes: tuple, off: tuple) -> str:
    """A grid point as written: ``i - 1, j``."""
    return ", ".join(str(a + k) for a, k in zip(axes, off))
