"""The step IR: frozen, hash-consed nodes, and each op's rules in one class.

A node is an op, its argument nodes, an attribute and its *per-example* shape: ``()`` for a
scalar, ``(rows, cols)`` for a matrix (a vector is ``(n, 1)``). ``batched`` says whether the
value differs between the examples of a minibatch (it reads a signal) or not (parameters and
constants). Equal nodes are the same object, so common subexpressions are shared for free.

Each op is one class holding its shape rule, NumPy evaluation, VJP, JVP and sympy form; the
table ``OPS`` maps op names to them. Evaluated values are NumPy arrays: ``shape`` for an
unbatched node, ``(B, *shape)`` for a batched one.
"""
from __future__ import annotations

import functools
import math
import weakref
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from ..errors import GraphcompError
from .functions import NUMPY_MODULES, numpy_code

Shape = tuple


class Node:
    """One value of a step: ``op(args; attr)`` with a per-example ``shape``."""

    __slots__ = ("op", "args", "attr", "shape", "batched", "__weakref__")
    _interned: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()

    def __new__(cls, op: str, args: tuple, attr, shape: Shape, batched: bool) -> "Node":
        key = (op, args, attr, shape, batched)
        node = cls._interned.get(key)
        if node is None:  # hash-consing: an equal node already built is reused
            node = object.__new__(cls)
            for field, value in zip(cls.__slots__, key):
                object.__setattr__(node, field, value)
            cls._interned[key] = node
        return node

    def __setattr__(self, name, value):
        raise AttributeError("IR nodes are immutable")

    def __reduce__(self):
        return (Node, (self.op, self.args, self.attr, self.shape, self.batched))

    def __repr__(self) -> str:
        return f"<{OPS[self.op].label(self)} {self.shape}{' batched' if self.batched else ''}>"


def _make(op: str, args: Sequence[Node], attr=None) -> Node:
    args = tuple(args)
    shape = OPS[op].shape(args, attr)
    batched = any(a.batched for a in args)
    return Node(op, args, attr, shape, batched)


@functools.lru_cache(maxsize=None)
def X(i: int) -> sp.Symbol:
    """The i-th argument of an elementwise (``map``) expression."""
    return sp.Symbol(f"x{i}", real=True)


def _broadcast(shapes: Iterable[Shape], what: str) -> Shape:
    full = {s for s in shapes if s != ()}
    if len(full) > 1:
        raise GraphcompError(f"{what}: operands have different shapes {sorted(full)}")
    return full.pop() if full else ()


def _align(value: np.ndarray, node: Node, out: Node) -> np.ndarray:
    """Give a batched scalar trailing axes so that it broadcasts against a matrix value."""
    if node.shape == () and out.shape != () and node.batched:
        return value.reshape(value.shape + (1,) * len(out.shape))
    return value


# ---------------------------------------------------------------- node constructors

def read(name: str, offset, shape: Shape) -> Node:
    """The value of signal ``name`` at ``t + offset``; over a grid ``offset`` is one integer per
    axis, at a tree node's k-th child it is ("child", k)."""
    if isinstance(offset, tuple) and offset[:1] == ("child",):
        offset = ("child", int(offset[1]))
    else:
        offset = tuple(int(k) for k in offset) if isinstance(offset, tuple) else int(offset)
    return Node("read", (), (name, offset), tuple(shape), True)


def param(name: str, shape: Shape) -> Node:
    return Node("param", (), name, tuple(shape), False)


def user_shape(shape: Shape) -> tuple:
    """The NumPy shape a user gives and gets for an IR shape: () for a scalar, (n,) for a
    column vector (n, 1), (r, c) for a matrix."""
    return shape[:1] if shape[1:] == (1,) else shape


def const(value, shape: Shape = ()) -> Node:
    return Node("const", (), sp.sympify(value), tuple(shape), False)


def var(key, shape: Shape, batched: bool = True) -> Node:
    """A named placeholder: a cotangent seed, or an argument while applying a rule."""
    return Node("var", (), key, tuple(shape), batched)


def emap(expr, args: Sequence[Node], shape: Shape | None = None) -> Node:
    """Elementwise ``expr`` (in ``X(0), X(1), ...``) over ``args``; scalars broadcast.

    Simplifies on the way: unused and repeated arguments are dropped, a bare argument is
    returned as is and a constant becomes a ``const``.
    """
    expr = sp.sympify(expr)
    if shape is None:
        shape = _broadcast((a.shape for a in args), "elementwise op")
    expr = expr.xreplace({X(i): a.attr for i, a in enumerate(args) if a.op == "const"})
    used, renamed = [], {}
    for i, a in enumerate(args):
        if X(i) not in expr.free_symbols:
            continue
        if a in used:
            renamed[X(i)] = X(used.index(a))
        else:
            renamed[X(i)] = X(len(used))
            used.append(a)
    expr = expr.xreplace(renamed)
    if not used:
        return const(expr, shape)
    if expr == X(0) and len(used) == 1:
        return used[0] if used[0].shape == shape else broadcast(used[0], shape)
    node = _make("map", used, expr)
    return node if node.shape == shape else broadcast(node, shape)


def add(*xs: Node | None) -> Node | None:
    """Sum of the given nodes; ``None`` stands for zero. Stacks whose blocks line up add block
    by block, so the cotangents of a stack's slices (``take``) come back as one stack."""
    xs = [x for x in xs if x is not None and not _is_zero(x)]
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    xs = _factor_products(xs)
    if len(xs) == 1:
        return xs[0]
    return _add_blocks(xs) or emap(sum(X(i) for i in range(len(xs))), xs)


def _factor_products(xs: list) -> list:
    """``A x + A y`` as ``A (x + y)`` (and ``x A + y A`` as ``(x + y) A``): one product
    instead of several (a weight shared by two cotangents, a vector by two outer products)."""
    for side in (0, 1):
        groups: dict = {}
        for x in xs:
            if x.op == "matmul":
                groups.setdefault(x.args[side], []).append(x)
        if not any(len(g) > 1 for g in groups.values()):
            continue
        out = []
        for x in xs:
            group = groups.get(x.args[side]) if x.op == "matmul" else None
            if group is None or len(group) == 1:
                out.append(x)
            elif x is group[0]:
                other = add(*(g.args[1 - side] for g in group))
                out.append(matmul(x.args[0], other) if side == 0 else matmul(other, x.args[1]))
        xs = out
    return xs


def _is_zero(x: Node) -> bool:
    return x.op == "const" and x.attr == 0


def _add_blocks(xs: list) -> Node | None:
    """Σ of stacks (``concat``) as one stack of sums, if no block of one crosses a boundary
    of another; else None."""
    if any(x.op != "concat" for x in xs):
        return None
    cuts = set()
    spans = []   # per stack: [(lo, hi, part)]
    for x in xs:
        lo, parts = 0, []
        for part in x.args:
            parts.append((lo, lo + part.shape[0], part))
            lo += part.shape[0]
        spans.append(parts)
        cuts.update(hi for _, hi, _ in parts)
    cuts = sorted(cuts | {0})
    blocks = {}
    for parts in spans:
        for lo, hi, part in parts:
            if _is_zero(part):
                continue
            if any(lo < c < hi for c in cuts):
                return None
            blocks.setdefault(lo, []).append(part)
    cols = xs[0].shape[1]
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        out.append(add(*blocks[lo]) if lo in blocks else zeros((hi - lo, cols)))
    return concat(*out)


def mul(a: Node, b: Node) -> Node:
    return emap(X(0) * X(1), [a, b])


def matmul(a: Node, b: Node) -> Node:
    return _make("matmul", (a, b))


def transpose(a: Node) -> Node:
    return a.args[0] if a.op == "transpose" else _make("transpose", (a,))


def concat(*parts: Node) -> Node:
    return parts[0] if len(parts) == 1 else _make("concat", parts)


def take(a: Node, lo: int, hi: int) -> Node:
    """Rows ``lo:hi`` of a matrix; of a stack, the block that spans exactly those rows."""
    if (lo, hi) == (0, a.shape[0]):
        return a
    if a.op == "concat":
        start = 0
        for part in a.args:
            if (start, start + part.shape[0]) == (lo, hi):
                return part
            start += part.shape[0]
    if a.op == "const":
        return const(a.attr, (hi - lo, a.shape[1]))
    return _make("take", (a,), (lo, hi))


def total(a: Node) -> Node:
    """Sum of all entries: a scalar."""
    return a if a.shape == () else _make("total", (a,))


def broadcast(a: Node, shape: Shape) -> Node:
    """A scalar repeated into every entry of ``shape``."""
    if a.shape == tuple(shape):
        return a
    return const(a.attr, shape) if a.op == "const" else _make("broadcast", (a,), tuple(shape))


def logsumexp(a: Node) -> Node:
    return _make("logsumexp", (a,))


def zeros(shape: Shape) -> Node:
    return const(0, shape)


def count(n: int) -> Node:
    """The number ``n`` as a value read at run time (a size averaged over)."""
    return Node("count", (), int(n), (), False)


# ---------------------------------------------------------------- numeric functions

@functools.lru_cache(maxsize=None)
def numpy_function(expr: sp.Expr, nargs: int) -> Callable:
    """``expr`` over ``X(0..nargs-1)`` as a NumPy function (via sympy's printer)."""
    return sp.lambdify([X(i) for i in range(nargs)], expr, modules=NUMPY_MODULES)


@functools.lru_cache(maxsize=None)
def derivative(expr: sp.Expr, i: int, nargs: int) -> sp.Expr:
    """d expr / d X(i). For a function application the result ``X(nargs)`` stands in for the
    function's value, as the textbooks write it: tanh' = 1 - y**2, exp' = y, σ' = y (1 - y)."""
    d = sp.powsimp(sp.diff(expr, X(i)))
    return d.xreplace({expr: X(nargs)}) if isinstance(expr, sp.Function) else d


# ---------------------------------------------------------------- the ops

class Reduction(sp.Expr):
    """The sympy form of a matrix reduced to a scalar: ``sum(M)`` or ``logsumexp(M)``."""

    is_commutative = True
    name = property(lambda self: self.args[0].name)

    def _sympystr(self, printer):
        return f"{self.name}({printer._print(self.args[1])})"

    def _latex(self, printer):
        return rf"\operatorname{{{self.name}}}\left({printer._print(self.args[1])}\right)"


class Op:
    """The rules of one op. Leaves (no arguments) only need ``shape`` and ``label``."""

    name = ""

    def shape(self, args: tuple, attr) -> Shape:
        raise NotImplementedError(f"op {self.name!r} has no shape rule")

    def evaluate(self, node: Node, vals: list) -> np.ndarray:
        raise GraphcompError(f"op {self.name!r} is a leaf: its value must be supplied")

    def vjp(self, node: Node, g: Node) -> tuple:
        """Cotangents of the arguments given the cotangent ``g`` of the result (None = 0)."""
        return ()

    def jvp(self, node: Node, tangents: list) -> Node | None:
        """Tangent of the result given tangents of the arguments (None = 0)."""
        return None

    def label(self, node: Node) -> str:
        return self.name

    def sympy(self, node: Node, args: list):
        raise GraphcompError(f"op {self.name!r} has no sympy form")

    def code(self, node: Node, args: list) -> str:
        """NumPy source of an unbatched value from its arguments' names (IR shapes)."""
        raise GraphcompError(f"op {self.name!r} has no NumPy source")

    def flops(self, node: Node) -> int:
        """Floating-point operations for one example."""
        return max(1, math.prod(node.shape))

    def lowering(self, node: Node) -> str | None:
        """How the compiled loops compute a batched value of this op (see ``plan.region``):
        "map", "product", "dot", "total", "logsumexp", "concat", "take", or None."""
        return None


class Read(Op):
    name = "read"

    def label(self, node):
        name, offset = node.attr
        if isinstance(offset, tuple) and offset[0] == "child":
            return f"{name}(child{offset[1]})"
        if isinstance(offset, tuple):
            return f"{name}({', '.join(f'{k:+d}' if k else '0' for k in offset)})"
        return f"{name}(t{offset:+d})" if offset else f"{name}(t)"


class Param(Op):
    name = "param"

    def label(self, node):
        return str(node.attr)

    def code(self, node, args):
        return f"q_{node.attr}"


class Const(Op):
    name = "const"

    def evaluate(self, node, vals):
        return np.full(node.shape, float(node.attr))

    def label(self, node):
        return str(node.attr)

    def sympy(self, node, args):
        return node.attr * sp.OneMatrix(*node.shape) if node.shape else node.attr

    def code(self, node, args):
        return repr(float(node.attr)) if not node.shape else f"np.full({node.shape}, {float(node.attr)!r})"


class Count(Op):
    """A number of entries (a size the model averages over), kept apart from constants so
    that compiled code reads it at run time instead of having it written in."""

    name = "count"

    def shape(self, args, attr):
        return ()

    def evaluate(self, node, vals):
        return np.array(float(node.attr))

    def label(self, node):
        return str(node.attr)

    def sympy(self, node, args):
        return sp.Integer(node.attr)

    def code(self, node, args):
        return repr(float(node.attr))


class Var(Op):
    name = "var"

    def label(self, node):
        return str(node.attr)


class Map(Op):
    """Elementwise function of its arguments, given as a sympy expression in X(0..n-1)."""

    name = "map"

    def shape(self, args, attr):
        return _broadcast((a.shape for a in args), f"elementwise {attr}")

    def evaluate(self, node, vals):
        vals = [_align(v, a, node) for v, a in zip(vals, node.args)]
        out = np.asarray(numpy_function(node.attr, len(vals))(*vals))
        want = np.broadcast_shapes(*(np.shape(v) for v in vals))
        return np.broadcast_to(out, want) if out.shape != want else out

    def vjp(self, node, g):
        n = len(node.args)
        out = []
        for i, a in enumerate(node.args):
            d = derivative(node.attr, i, n)
            if d == 0:
                out.append(None)
                continue
            ct = emap(X(n + 1) * d, [*node.args, node, g], node.shape)
            out.append(total(ct) if a.shape == () else ct)
        return tuple(out)

    def jvp(self, node, tangents):
        n = len(node.args)
        terms, extra = 0, []
        for i, tan in enumerate(tangents):
            if tan is not None:
                terms += X(n + 1 + len(extra)) * derivative(node.attr, i, n)
                extra.append(tan)
        return emap(terms, [*node.args, node, *extra], node.shape) if extra else None

    def label(self, node):
        e = node.attr
        if isinstance(e, sp.Add):
            return "+"
        if isinstance(e, sp.Mul):
            return "-" if len(e.args) == 2 and e.args[0] == -1 else "⊙" if node.shape else "×"
        if isinstance(e, sp.Pow):
            return f"^{e.exp}" if e.exp != -1 else "1/"
        if isinstance(e, sp.Function) and len(e.args) == 1 and e.args[0] == X(0):
            return type(e).__name__
        return str(e)

    def sympy(self, node, args):
        return elementwise_sympy(node.attr, args)

    def code(self, node, args):
        return numpy_code(node.attr, args)

    def lowering(self, node):
        return "map"


class MatMul(Op):
    name = "matmul"

    def shape(self, args, attr):
        a, b = args
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[0]:
            raise GraphcompError(f"matrix product of shapes {a.shape} and {b.shape} is undefined")
        return (a.shape[0], b.shape[1])

    def evaluate(self, node, vals):
        return np.matmul(*vals)

    def vjp(self, node, g):
        a, b = node.args
        return matmul(g, transpose(b)), matmul(transpose(a), g)

    def jvp(self, node, tangents):
        a, b = node.args
        ta, tb = tangents
        return add(ta and matmul(ta, b), tb and matmul(a, tb))

    def label(self, node):
        return "@"

    def sympy(self, node, args):
        return sp.MatMul(*args)

    def code(self, node, args):
        return f"np.dot({args[0]}, {args[1]})"

    def flops(self, node):
        a, b = node.args
        return 2 * a.shape[0] * a.shape[1] * b.shape[1]

    def lowering(self, node):
        a, b = node.args
        if a.shape == (1, 1) or b.shape == (1, 1):
            return "map"                                  # a scalar times a vector
        if not a.batched or not b.batched:
            return "product"
        return "dot" if a.shape[0] == 1 and b.shape[1] == 1 else None


class Transpose(Op):
    name = "transpose"

    def shape(self, args, attr):
        (a,) = args
        if len(a.shape) != 2:
            raise GraphcompError("transpose of a scalar")
        return a.shape[::-1]

    def evaluate(self, node, vals):
        return np.swapaxes(vals[0], -1, -2)

    def vjp(self, node, g):
        return (transpose(g),)

    def jvp(self, node, tangents):
        return tangents[0] and transpose(tangents[0])

    def label(self, node):
        return "ᵀ"

    def sympy(self, node, args):
        return sp.Transpose(args[0])

    def code(self, node, args):
        return f"np.ascontiguousarray({args[0]}.T)"


class Concat(Op):
    """Stack matrices with the same number of columns on top of each other."""

    name = "concat"

    def shape(self, args, attr):
        if any(len(a.shape) != 2 for a in args) or len({a.shape[1] for a in args}) != 1:
            raise GraphcompError(f"concat needs matrices with equal columns, got {[a.shape for a in args]}")
        return (sum(a.shape[0] for a in args), args[0].shape[1])

    def evaluate(self, node, vals):
        if node.batched:
            b = next(len(v) for v, a in zip(vals, node.args) if a.batched)
            vals = [v if a.batched else np.broadcast_to(v, (b,) + v.shape) for v, a in zip(vals, node.args)]
        return np.concatenate(vals, axis=-2)

    def vjp(self, node, g):
        out, lo = [], 0
        for a in node.args:
            out.append(take(g, lo, lo + a.shape[0]))
            lo += a.shape[0]
        return tuple(out)

    def jvp(self, node, tangents):
        if all(t is None for t in tangents):
            return None
        return concat(*(t if t is not None else zeros(a.shape) for t, a in zip(tangents, node.args)))

    def sympy(self, node, args):
        return sp.BlockMatrix([[a] for a in args])

    def code(self, node, args):
        return f"np.concatenate(({', '.join(args)},))"

    def lowering(self, node):
        return "concat"


class Take(Op):
    name = "take"

    def shape(self, args, attr):
        (a,), (lo, hi) = args, attr
        if len(a.shape) != 2 or not 0 <= lo < hi <= a.shape[0]:
            raise GraphcompError(f"rows {lo}:{hi} of a {a.shape} matrix")
        return (hi - lo, a.shape[1])

    def evaluate(self, node, vals):
        lo, hi = node.attr
        return vals[0][..., lo:hi, :]

    def vjp(self, node, g):
        (a,), (lo, hi) = node.args, node.attr
        cols = a.shape[1]
        parts = [zeros((lo, cols))] if lo else []
        parts.append(g)
        if hi < a.shape[0]:
            parts.append(zeros((a.shape[0] - hi, cols)))
        return (concat(*parts),)

    def jvp(self, node, tangents):
        lo, hi = node.attr
        return tangents[0] and take(tangents[0], lo, hi)

    def label(self, node):
        return f"[{node.attr[0]}:{node.attr[1]}]"

    def sympy(self, node, args):
        lo, hi = node.attr
        return args[0][lo:hi, :]

    def code(self, node, args):
        return f"{args[0]}[{node.attr[0]}:{node.attr[1]}]"

    def lowering(self, node):
        return "take"


class Total(Op):
    name = "total"

    def shape(self, args, attr):
        return ()

    def evaluate(self, node, vals):
        return vals[0].sum(axis=(-2, -1))

    def vjp(self, node, g):
        return (broadcast(g, node.args[0].shape),)

    def jvp(self, node, tangents):
        return tangents[0] and total(tangents[0])

    def label(self, node):
        return "Σ"

    def sympy(self, node, args):
        return Reduction(Str("sum"), args[0])

    def code(self, node, args):
        return f"np.sum({args[0]})"

    def lowering(self, node):
        return "total"


class Broadcast(Op):
    name = "broadcast"

    def shape(self, args, attr):
        if args[0].shape != ():
            raise GraphcompError(f"only a scalar broadcasts, not a {args[0].shape} matrix")
        return attr

    def evaluate(self, node, vals):
        v = vals[0]
        return np.broadcast_to(np.reshape(v, np.shape(v) + (1, 1)), np.shape(v) + node.attr)

    def vjp(self, node, g):
        return (total(g),)

    def jvp(self, node, tangents):
        return tangents[0] and broadcast(tangents[0], node.attr)

    def label(self, node):
        return "broadcast"

    def sympy(self, node, args):
        return args[0] * sp.OneMatrix(*node.attr)

    def code(self, node, args):
        return f"np.full({node.attr}, {args[0]})"

    def lowering(self, node):
        return "map"


class LogSumExp(Op):
    name = "logsumexp"

    def shape(self, args, attr):
        return ()

    def evaluate(self, node, vals):
        v = vals[0]
        m = v.max(axis=(-2, -1), keepdims=True)
        return (m + np.log(np.exp(v - m).sum(axis=(-2, -1), keepdims=True)))[..., 0, 0]

    def vjp(self, node, g):
        return (emap(X(0) * sp.exp(X(1) - X(2)), [g, node.args[0], node]),)

    def jvp(self, node, tangents):
        t = tangents[0]
        return t and total(emap(X(0) * sp.exp(X(1) - X(2)), [t, node.args[0], node]))

    def sympy(self, node, args):
        return Reduction(Str("logsumexp"), args[0])

    def code(self, node, args):
        return f"(np.max({args[0]}) + np.log(np.sum(np.exp({args[0]} - np.max({args[0]})))))"

    def lowering(self, node):
        return "logsumexp"


OPS: dict[str, Op] = {op.name: op for op in (
    Read(), Param(), Const(), Count(), Var(), Map(), MatMul(), Transpose(), Concat(), Take(), Total(),
    Broadcast(), LogSumExp())}
LEAVES = ("read", "param", "var")


# ---------------------------------------------------------------- interpreters

def toposort(roots: Iterable[Node], stop: Iterable[Node] | Callable[[Node], bool] = ()) -> list[Node]:
    """All nodes reachable from ``roots``, arguments before their users (no recursion);
    the arguments of ``stop`` nodes (a collection or a predicate) are not followed."""
    order, seen = [], set()
    if not callable(stop):
        stop = set(stop).__contains__
    for root in roots:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif node not in seen:
                seen.add(node)
                stack.append((node, True))
                if not stop(node):
                    stack.extend((a, False) for a in reversed(node.args) if a not in seen)
    return order


def evaluate(roots: Iterable[Node], leaf: Callable[[Node], np.ndarray],
             order: list[Node] | None = None) -> dict[Node, np.ndarray]:
    """NumPy values of every node; ``leaf`` supplies reads, params and vars."""
    values: dict[Node, np.ndarray] = {}
    for node in order if order is not None else toposort(roots):
        if node.op in LEAVES:
            values[node] = leaf(node)
        else:
            values[node] = OPS[node.op].evaluate(node, [values[a] for a in node.args])
    return values


def vjp(seeds: Mapping[Node, Node], stop: Iterable[Node] = ()) -> dict[Node, Node]:
    """Reverse mode over the IR: the cotangent of every node reached, given the cotangents
    ``seeds`` of some roots. Contributions add up where a node has several users; nothing is
    sent on from the ``stop`` nodes."""
    ct: dict[Node, Node] = dict(seeds)
    stop = set(stop)
    for node in reversed(toposort(seeds, stop)):
        g = ct.get(node)
        if g is None or not node.args or node in stop:
            continue
        for a, ga in zip(node.args, OPS[node.op].vjp(node, g)):
            if ga is not None:
                ct[a] = add(ct.get(a), ga)
    return ct


def jvp(roots: Sequence[Node], tangents: Mapping[Node, Node]) -> list[Node | None]:
    """Forward mode over the IR: tangents of ``roots`` given tangents of some nodes."""
    tan: dict[Node, Node | None] = dict(tangents)
    for node in toposort(roots):
        if node not in tan:
            args = [tan.get(a) for a in node.args]
            tan[node] = OPS[node.op].jvp(node, args) if any(t is not None for t in args) else None
    return [tan.get(r) for r in roots]


def substitute(roots: Sequence[Node], mapping: Mapping[Node, Node]) -> list[Node]:
    """``roots`` with every occurrence of a key of ``mapping`` replaced by its value."""
    new = rewrite(roots, mapping)
    return [new[r] for r in roots]


def rewrite(roots: Iterable[Node], mapping: Mapping[Node, Node]) -> dict[Node, Node]:
    """Every node under ``roots`` mapped to its version with the keys of ``mapping`` replaced."""
    new: dict[Node, Node] = dict(mapping)
    for node in toposort(roots, stop=mapping):
        if node not in new:
            args = tuple(new[a] for a in node.args)
            new[node] = node if args == node.args else _rebuild(node, args)
    return new


def _rebuild(node: Node, args: tuple) -> Node:
    """``node`` with new arguments, through the simplifying constructors."""
    if node.op == "map":
        return emap(node.attr, args, node.shape)
    if node.op == "take":
        return take(args[0], *node.attr)
    if node.op == "concat":
        return concat(*args)
    if node.op == "transpose":
        return transpose(args[0])
    return _make(node.op, args, node.attr)


def typecheck(roots: Iterable[Node]) -> None:
    """Re-run every shape rule; raises if a node's recorded shape disagrees."""
    for node in toposort(roots):
        if node.args and OPS[node.op].shape(node.args, node.attr) != node.shape:
            raise GraphcompError(f"IR node {node!r} has an inconsistent shape")


def pretty(roots: Mapping[str, Node]) -> str:
    """The step as a flat list of equations, one per node (autodidax's jaxpr style)."""
    order = toposort(roots.values())
    names = {}
    lines = []
    for node in order:
        if node.op in LEAVES or not node.args:
            names[node] = OPS[node.op].label(node)
            continue
        names[node] = f"v{len(lines)}"
        args = ", ".join(names[a] for a in node.args)
        what = f"map[{node.attr}]" if node.op == "map" else OPS[node.op].label(node)
        lines.append(f"  {names[node]}: {node.shape or 'scalar'} = {what}({args})")
    lines += [f"  {key} = {names[node]}" for key, node in roots.items()]
    return "\n".join(lines)


def to_sympy(roots: Sequence[Node], leaf: Callable[[Node], sp.Basic]) -> list[sp.Basic]:
    """The sympy expression of each root; ``leaf`` gives reads, params and vars."""
    out: dict[Node, sp.Basic] = {}
    for node in toposort(roots):
        out[node] = leaf(node) if node.op in LEAVES else OPS[node.op].sympy(node, [out[a] for a in node.args])
    return [out[r] for r in roots]


def elementwise_sympy(expr: sp.Expr, args: list) -> sp.Basic:
    """``expr`` (in X(i)) with matrix arguments, written with Hadamard products and powers."""
    env = dict(zip((X(i) for i in range(len(args))), args))

    def conv(e):
        if e in env:
            return env[e]
        if not (e.free_symbols & {X(i) for i, a in enumerate(args) if isinstance(a, sp.MatrixExpr)}):
            return e.xreplace(env)
        parts = [conv(a) for a in e.args]
        mats = [p for p in parts if isinstance(p, sp.MatrixExpr)]
        scalars = [p for p in parts if not isinstance(p, sp.MatrixExpr)]
        if isinstance(e, sp.Add):
            shape = mats[0].shape
            return sp.MatAdd(*mats, *(s * sp.OneMatrix(*shape) for s in scalars))
        if isinstance(e, sp.Mul):
            m = sp.HadamardProduct(*mats) if len(mats) > 1 else mats[0]
            return sp.Mul(*scalars) * m if scalars else m
        if isinstance(e, sp.Pow) and not isinstance(parts[1], sp.MatrixExpr):
            return sp.HadamardPower(parts[0], parts[1])
        if len(mats) == 1 and (len(parts) == 1 or isinstance(e, sp.Function)):   # tanh(a), Heaviside(a, 0)
            return ElementwiseApplyFunction(sp.Lambda(X(0), e.func(*(X(0) if p is mats[0] else p for p in parts))),
                                            mats[0])
        raise GraphcompError(f"no matrix form for the elementwise expression {e}")

    return conv(expr)
