"""Scheduling one block of rows: the IR nodes that a list of sinks needs, as plan statements.

A region computes, for the rows of one block (the B rows of step t inside a loop over steps,
or every step's rows at once), the values its *sinks* need (a state's timeline, a tape, a
gradient) and stores them there. A product with a weight matrix runs over the whole block,
so it splits the region into *nests* (loops over rows); inside a nest every node gets a
*level*: vectors of one length at one level share one loop over components, scalars of
level L are computed before the loops of level L, and a sum over a vector's components
accumulates in the loop computing it. A value lives in a local variable unless something
outside its loop reads it; then it gets a buffer: one of its sinks' when that fits, else a
temporary. ``docs/architecture.md`` explains the choices."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import sympy as sp

from .. import ir
from ..ir import X, Node
from .nodes import (Buffer, Components, Expr, Let, Load, Local, Place, Product, Rows, Store, Value,
                    Weight)


class Unsupported(Exception):
    """A model feature the compiled back ends do not handle (it runs on the NumPy backend)."""


def length(shape: tuple) -> int | None:
    """The length of a vector-like per-example shape (n,1) or (1,n); None for a scalar."""
    if shape == ():
        return None
    if 1 in shape:
        return shape[0] * shape[1]
    raise Unsupported(f"a per-example {shape[0]}x{shape[1]} matrix value")


def resolve(node: Node) -> Node:
    """A batched vector and its transpose share a layout: look through the transpose."""
    while node.op == "transpose" and node.batched:
        node = node.args[0]
    return node


def kind(n: Node) -> str:
    """How a batched node is computed: ``product`` (with a weight matrix, over all rows of the
    block), ``map`` (elementwise), ``dot`` (vᵀw per row), ``total``/``logsumexp`` (reductions),
    ``concat`` or ``take`` (views of a buffer)."""
    found = ir.OPS[n.op].lowering(n)
    if found is None:
        what = f"a per-example product {n.args[0].shape} x {n.args[1].shape}" if n.op == "matmul" else f"op {n.op!r}"
        raise Unsupported(f"{what} on batched values")
    return found


def scalar_like(n: Node) -> bool:
    """One value per row: a scalar, or a row dot product (shape 1x1)."""
    return n.shape == () or (n.op == "matmul" and kind(n) == "dot")


def width(n: Node) -> int | None:
    return None if scalar_like(n) else length(n.shape)


@dataclass(frozen=True)
class Sink:
    """Store ``node`` into ``place`` (None: a buffer of its own over the region's rows) with
    ``op`` "=" or "+="; ``guard``: what a row past its sequence's end gets (None, "zero", "keep")."""

    node: Node
    place: Place | None
    op: str = "="
    guard: str | None = None


class Builder:
    """The memory and names of one kernel under construction: buffers, the unbatched values
    the driver computes, and fresh local names."""

    def __init__(self, axes: int = 1, tree: bool = False):
        self.axes, self.tree = axes, tree
        self.buffers: dict[str, Buffer] = {}
        self.values: dict[str, tuple] = {}    # name -> (node, layout)
        self._names: dict[tuple, str] = {}
        self._ids = itertools.count()

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def buffer(self, role: str, rows: tuple, width_: int | None, *, zero: bool = False, before: int = 0,
               name: str | None = None) -> str:
        name = name or self.fresh({"temp": "v", "factor": "f", "grad": "gw"}.get(role, role))
        old = self.buffers.get(name)
        new = Buffer(name, role, rows, width_, before, zero)
        if old is not None and old != new:
            raise Unsupported(f"buffer {name!r} declared twice differently")
        self.buffers[name] = new
        return name

    def width(self, place: Place) -> int | None:
        return self.buffers[place.buffer].width

    def everywhere(self, margins=None) -> tuple:
        """The rows of a buffer over every step (and ``margins``): ("steps", before + after),
        or over a grid ("grid", ((before, after) per axis))."""
        if self.tree:   # a timeline's B rows after the nodes: what each tree's missing children read
            return ("nodes", 1 if margins is not None else 0)
        if self.axes == 1:
            return ("steps", sum(margins or (0, 0)))
        return ("grid", tuple(margins or ((0, 0),) * self.axes))

    def over_steps(self, place: Place) -> bool:
        """Does the place's buffer hold every step's rows (a timeline, tape, factor)?"""
        return self.buffers[place.buffer].rows[0] in ("steps", "grid", "nodes") and not (
            isinstance(place.shift, tuple) and place.shift[:1] == ("child",))

    def value(self, node: Node, layout: str | None = None) -> str:
        """The name of an unbatched value: a parameter ``p_<name>``, or one computed from them.
        ``layout``: "scalar", "vector" (1-D) or "matrix" (2-D, for products)."""
        layout = layout or ("scalar" if node.shape == () else "vector" if 1 in node.shape else "matrix")
        key = (node, layout)
        if key not in self._names:
            plain = node.op == "param" and layout == ("scalar" if node.shape == () else
                                                      "vector" if 1 in node.shape else "matrix")
            self._names[key] = f"p_{node.attr}" if plain else self.fresh("c")
            self.values[self._names[key]] = (node, layout)
        return self._names[key]


class Region:
    """Schedules what a list of sinks needs, for the rows of one block, into plan statements.

    ``span``: "block" (the B rows of step t, inside a loop over steps) or "all" (every step's
    rows). ``leaf(node)`` says where an available node lives: a ``Place``, an operand (the loss
    weight), or None (computed here)."""

    def __init__(self, build: Builder, leaf, span: str):
        self.b, self.leaf, self.span = build, leaf, span
        self.homes: dict = {}   # node -> Place of everything materialized here

    # -------------------------------------------------------- what is known
    def available(self, n: Node):
        n = resolve(n)
        found = self.leaf(n)
        if found is None and n.op == "take":
            base = self.available(n.args[0])
            if isinstance(base, Place):
                return base.at(n.attr[0])
        return found

    def _known(self, n: Node) -> bool:
        return not n.batched or self.available(n) is not None

    def run(self, sinks: list) -> list:
        """The region's statements; ``homes`` then holds where each materialized value lives."""
        sinks = [replace(s, node=resolve(s.node)) for s in sinks]
        self.order = [n for n in ir.toposort([s.node for s in sinks], stop=self._known)
                      if n.op != "transpose" and not self._known(n)]
        self.kind = {n: kind(n) for n in self.order}
        self.users = {n: [] for n in self.order}
        for n in self.order:
            for a in {resolve(a) for a in n.args}:
                if a in self.users:
                    self.users[a].append(n)
        self._schedule()
        self._assign_homes(sinks)
        return self._emit(sinks)

    # -------------------------------------------------------- scheduling
    def _ready(self, a: Node) -> int:
        return self.ready.get(resolve(a), 0)

    def _complete(self, a: Node) -> int:
        """The first nest before which every row of ``a`` is computed."""
        a = resolve(a)
        if a not in self.kind:
            return 0
        if self.kind[a] == "product":
            return self.ready[a]
        if self.kind[a] == "take":
            return self._complete(a.args[0])
        return self.nest[a] + 1

    def _fusable(self, n: Node) -> bool:
        """An elementwise vector: computed in a loop over components, kept in a local."""
        return self.kind.get(n) == "map" and not scalar_like(n)

    def _inside(self, n: Node) -> tuple:
        """The arguments of ``n`` computed in its nest: read directly from the loop computing
        them, or (``sliced``) through a slice (``take``) of one, from its buffer."""
        direct, sliced = [], []
        for a in {resolve(a) for a in n.args}:
            via = False
            while self.kind.get(a) == "take":
                a, via = resolve(a.args[0]), True
            if a in self.nest and self.nest[a] == self.nest[n]:
                (sliced if via else direct).append(a)
        return direct, sliced

    def _schedule(self) -> None:
        self.ready, self.nest, self.level, self.fused = {}, {}, {}, {}
        for n in self.order:
            k = self.kind[n]
            if k == "product":
                a, b = n.args
                self.ready[n] = self._complete(b if b.batched else a)
            elif k == "take":
                self.ready[n] = self._ready(n.args[0])
            else:
                self.nest[n] = self.ready[n] = max((self._ready(a) for a in n.args if a.batched), default=0)
        for n in self.order:
            k = self.kind[n]
            if k == "product":
                continue
            if k == "take":
                self.level[n] = self.level.get(resolve(n.args[0]), -1)
                continue
            inside, sliced = self._inside(n)
            vectors = [a for a in inside if not scalar_like(a)]
            scalars = max((self.level[a] for a in inside if scalar_like(a)), default=0)
            later = [self.level[a] + 1 for a in sliced]   # read from a buffer, once its loop is done
            if k == "map" and not scalar_like(n):
                same = [self.level[a] for a in vectors if self._fusable(a) and length(a.shape) == length(n.shape)]
                other = [self.level[a] + 1 for a in vectors
                         if not (self._fusable(a) and length(a.shape) == length(n.shape))]
                self.level[n] = max([scalars, *same, *other, *later])
            elif k == "concat":
                self.level[n] = max([0, *later, *(self.level[a] if self._fusable(a) else self._copy_level(a)
                                                  for a in inside)])
            elif k == "map":
                self.level[n] = max([scalars, *later])
            else:
                loops = {(self.level[a], length(a.shape)) for a in vectors}
                whole = not sliced and len(vectors) == len({resolve(a) for a in n.args if a.batched})
                if k in ("total", "dot") and whole and len(loops) == 1 and all(map(self._fusable, vectors)) \
                        and scalars <= next(iter(loops))[0]:
                    self.fused[n] = next(iter(loops))
                    self.level[n] = self.fused[n][0] + 1
                else:
                    self.level[n] = max([scalars, *later, *(self.level[a] + 1 for a in vectors)])

    def _copy_level(self, a: Node) -> int:
        """The level at which a value that is not a fusable local can be copied."""
        if a not in self.level:
            return 0
        return self.level[a] if scalar_like(a) else self.level[a] + 1

    def _same_loop(self, a: Node, user: Node) -> bool:
        """Does ``user`` read ``a`` from a local variable of the loop (or row) computing both?"""
        if a not in self.nest or self.nest.get(user) != self.nest[a]:
            return False
        if scalar_like(a):
            return True
        if not self._fusable(a):
            return False
        if self.fused.get(user) == (self.level[a], length(a.shape)):
            return True
        return self._fusable(user) and self.level[user] == self.level[a] and length(user.shape) == length(a.shape)

    def _rows(self) -> tuple:
        return ("block", 1) if self.span == "block" else self.b.everywhere()

    def _assign_homes(self, sinks: list) -> None:
        """A buffer for everything read outside the loop computing it: one of its ``=`` sinks'
        when that fits, else a temporary."""
        stores: dict = {}
        for s in sinks:
            if s.op == "=" and s.place is not None and self.b.buffers[s.place.buffer].rows[0] in ("steps", "grid", "nodes", "ring"):
                stores.setdefault(s.node, []).append(s)
        self.parts: dict = {}     # part -> [(concat, offset)]
        for n in self.order:
            if self.kind[n] == "concat":
                lo = 0
                for a in n.args:
                    self.parts.setdefault(resolve(a), []).append((n, lo))
                    lo += a.shape[0]
        need = {s.node for s in sinks if s.place is None}
        for n in self.order:
            if self.kind[n] in ("product", "concat"):
                need.add(n)
            for u in self.users[n]:
                if self.kind[u] == "concat":
                    continue   # a part is stored into the stack, or copied from its own buffer
                if self.kind[u] in ("product", "take") or not self._same_loop(n, u):
                    need.add(n)
            if n in self.parts and not (self._fusable(n) or scalar_like(n)):
                need.add(n)
        self.satisfied, self.guards = set(), {}
        for n in self.order:
            if n not in need or self.kind[n] == "take":
                continue
            w = width(n)
            fits = [s for s in stores.get(n, []) if s.place.col == 0 and self.b.width(s.place) == w
                    and (self.kind[n] == "map" or s.guard is None or self.kind[n] == "concat" and s.guard == "zero")]
            if fits:
                self.homes[n] = fits[0].place
                self.satisfied.add(fits[0])
                self.guards[n] = fits[0].guard
            else:
                self.homes[n] = Place(self.b.buffer("temp", self._rows(), w))
        for n in self.order:
            if self.kind[n] == "take":
                self.homes[n] = self.home(n.args[0]).at(n.attr[0])

    def home(self, n: Node) -> Place:
        n = resolve(n)
        if n in self.homes:
            return self.homes[n]
        found = self.available(n)
        if isinstance(found, Place):
            return found
        raise Unsupported(f"no array holds {n!r}")

    # -------------------------------------------------------- operands
    def read(self, a: Node, comp, user: Node | None = None):
        """Component ``comp`` of ``a``, as ``user`` reads it: an operand."""
        a = resolve(a)
        if not a.batched:
            name = self.b.value(a)
            return Value(name, None if a.shape == () else comp)
        if scalar_like(a):
            comp = 0
        if a not in self.kind:
            found = self.available(a)
            return found if not isinstance(found, Place) else Load(found, comp)
        if a in self.local and (user is None or self._same_loop(a, user)):
            return Local(self.local[a])
        return Load(self.home(a), comp)

    def _value(self, n: Node, comp) -> Expr:
        """The expression of component ``comp`` of an elementwise node."""
        if n.op == "matmul":   # one side is 1x1: a scalar times a vector
            return Expr(X(0) * X(1), tuple(self.read(a, 0 if a.shape == (1, 1) else comp, n) for a in n.args))
        if n.op == "broadcast":
            return Expr(X(0), (self.read(n.args[0], comp, n),))
        return Expr(n.attr, tuple(self.read(a, comp, n) for a in n.args), not scalar_like(n))

    def _reduced(self, n: Node, comp) -> Expr:
        if self.kind[n] == "dot":
            return Expr(X(0) * X(1), tuple(self.read(a, comp, n) for a in n.args))
        return Expr(X(0), (self.read(n.args[0], comp, n),))

    # -------------------------------------------------------- statements
    def _store(self, out: list, sink: Sink, value, comp) -> None:
        """Store a value. Past a sequence's end a guarded sink keeps its old value or gets
        zero: in a nest of vectors by the nest's branch (the zeros in its ``otherwise``), in a
        nest of scalars by a select per store, so that the loop still vectorizes across rows."""
        guard = sink.guard
        if guard:
            self.guarded = True
        if guard and self.branch:
            if guard == "zero" and sink.op == "=":
                self.zeros.append((sink.place, comp, self.n if comp == "i" else None))
            guard = None
        out.append(Store(sink.place, Expr(X(0), (value,)), sink.op, guard, comp))

    def _rows_loop(self, body: list, vectors: bool) -> Rows:
        """The nest's loop over rows around ``body`` (built with ``branch`` set)."""
        ops = [a for s in _all(body) for a in _operands(s)]
        weight = any(isinstance(a, Weight) for a in ops)
        guard = None if not self.guarded else "branch" if self.branch else "select"
        otherwise = []
        for place, comp, n in self.zeros:
            if n is None:
                otherwise.append(Store(place, Expr(sp.Integer(0), ()), "=", None, comp))
        for n in dict.fromkeys(n for _, _, n in self.zeros if n is not None):
            otherwise.append(Components(n, tuple(Store(p, Expr(sp.Integer(0), ()), "=", None, "i")
                                                 for p, _, m in self.zeros if m == n)))
        return Rows(self.span, tuple(body), guard, tuple(otherwise), weight)

    def _open(self, branch: bool) -> list:
        self.branch, self.guarded, self.zeros = branch, False, []
        return []

    def _emit(self, sinks: list) -> list:
        todo: dict = {}
        for s in sinks:
            if s not in self.satisfied and s.place is not None:
                todo.setdefault(s.node, []).append(s)
        for part, stacks in self.parts.items():
            for c, lo in stacks:   # a part goes into its stack's buffer, with the stack's guard
                todo.setdefault(part, []).append(Sink(part, self.homes[c].at(lo), "=", self.guards.get(c)))
        products: dict = {}
        for n in self.order:
            if self.kind[n] == "product":
                products.setdefault(self.ready[n], []).append(n)
        copies: dict = {}   # nest -> level -> nodes whose sinks copy a value computed elsewhere
        for n, targets in todo.items():
            if n not in self.nest or not (self._fusable(n) or scalar_like(n)):
                nest = self._complete(n) if n in self.kind else 0
                copies.setdefault(nest, {}).setdefault(self._copy_level(n) if n in self.nest else 0, []).append(n)
        out = []
        for p in range(max([*self.ready.values(), *copies, 0]) + 1):
            for g in products.get(p, []):
                out += self._product(g)
            members = [n for n in self.order if self.nest.get(n) == p]
            if members or p in copies:
                vectors = any(self._fusable(n) for n in members) or any(
                    not scalar_like(n) for level in copies.get(p, {}).values() for n in level if n.shape != ())
                body = self._open(vectors)
                self._nest(body, members, copies.get(p, {}), todo)
                out.append(self._rows_loop(body, vectors))
        return out

    def _nest(self, out: list, members: list, copies: dict, todo: dict) -> None:
        self.local = {}
        levels = sorted({self.level[n] for n in members if self.kind[n] != "take"} | set(copies) | {0})
        for level in levels:
            for n in copies.get(level, []):
                self._copy(out, n, todo[n])
            for n in members:
                if self.level[n] == level and scalar_like(n) and n not in self.fused:
                    self._scalar(out, n, todo.get(n, []))
            loops: dict = {}
            for n in members:
                if self.level[n] == level and self._fusable(n):
                    loops.setdefault(length(n.shape), []).append(n)
            for n_len, nodes in loops.items():
                reductions = [n for n in members if self.fused.get(n) == (level, n_len)]
                for red in reductions:
                    self.local[red] = self.b.fresh("s")
                    out.append(Let(self.local[red], Expr(sp.Integer(0), ())))
                self.n = n_len
                body = []
                for n in nodes:
                    self.local[n] = self.b.fresh("e")
                    body.append(Let(self.local[n], self._value(n, "i")))
                    for s in todo.get(n, []):
                        self._store(body, s, Local(self.local[n]), "i")
                    if n in self.homes and not any(s.place == self.homes[n] for s in todo.get(n, [])):
                        self._store(body, Sink(n, self.homes[n], "=", self.guards.get(n)), Local(self.local[n]), "i")
                for red in reductions:
                    body.append(Let(self.local[red], self._reduced(red, "i"), "+="))
                out.append(Components(n_len, tuple(body)))
                for red in reductions:
                    self._finish(out, red, todo.get(red, []))

    def _scalar(self, out: list, n: Node, sinks: list) -> None:
        """A per-row value: an elementwise function of scalars, or a reduction in loops of its own."""
        name = self.local[n] = self.b.fresh("e")
        k = self.kind[n]
        if k == "map":
            out.append(Let(name, self._value(n, 0)))
        elif k in ("total", "dot"):
            out.append(Let(name, Expr(sp.Integer(0), ())))
            self.n = length(resolve(n.args[0]).shape)
            out.append(Components(self.n, (Let(name, self._reduced(n, "i"), "+="),)))
        else:   # logsumexp: the largest component, then the sum of exp of the differences
            a = resolve(n.args[0])
            m, total = self.b.fresh("m"), self.b.fresh("s")
            self.n = length(a.shape)
            out.append(Let(m, Expr(-sp.oo, ())))
            out.append(Components(self.n, (Let(m, Expr(sp.Max(X(0), X(1)), (Local(m), self.read(a, "i", n)))),)))
            out.append(Let(total, Expr(sp.Integer(0), ())))
            out.append(Components(self.n, (Let(total, Expr(sp.exp(X(0) - X(1)), (self.read(a, "i", n), Local(m))), "+="),)))
            out.append(Let(name, Expr(X(0) + sp.log(X(1)), (Local(m), Local(total)))))
        self._finish(out, n, sinks)

    def _finish(self, out: list, n: Node, sinks: list) -> None:
        for s in sinks:
            self._store(out, s, Local(self.local[n]), 0)
        if n in self.homes and not any(s.place == self.homes[n] for s in sinks):
            self._store(out, Sink(n, self.homes[n], "=", self.guards.get(n)), Local(self.local[n]), 0)

    def _copy(self, out: list, n: Node, sinks: list) -> None:
        """Store a value that is not a local of this nest into its sinks."""
        w = None if not n.batched and n.shape == () else (None if n.batched and scalar_like(n) else length(n.shape))
        if w is None:
            for s in sinks:
                self._store(out, s, self.read(n, 0), 0)
            return
        self.n = w
        body = []
        for s in sinks:
            self._store(body, s, self.read(n, "i"), "i")
        out.append(Components(w, tuple(body)))

    def _product(self, n: Node) -> list:
        """rows @ M for a product with a weight matrix (W v: M = Wᵀ; vᵀ W: M = W)."""
        a, b = n.args
        v, m = (resolve(b), ir.transpose(a)) if b.batched else (resolve(a), b)
        return [Product(self.homes[n], self.home(v), self.b.value(m, "matrix"), self.span,
                        length(v.shape), length(n.shape))]


def _operands(s) -> list:
    expr = getattr(s, "expr", None)
    return list(expr.args) if expr is not None else []


def _all(stmts):
    for s in stmts:
        yield s
        yield from _all(getattr(s, "body", ()))
