"""Code generation: the step and its adjoint as Python source for Numba.

Each kernel is a compiled function holding every loop and a plain-Python driver around it
(``Function``). The loops are a sequence of *regions*; each computes IR nodes for a block of
rows and stores them where they are needed (*sinks*: a state's timeline, a tape, a gradient).
A region runs inside a loop over time (its rows are the B examples of step t) or once over
all T·B rows. Values are batch-major arrays, ``(rows, n)`` for a vector and ``(rows,)`` for a
scalar; parameters and what is computed from them alone are the driver's (``Consts``).

Inside a region, a product with a weight matrix is one product over the block and
everything between two products is one loop over rows that fuses the elementwise work into
as few loops over components as possible; a value lives in a local variable unless
something outside its loop reads it. What reads no state and needs a product (``U x(t)``) is
hoisted out of the time loops into one product over all T·B rows; so are outputs and a loss
that needs products; after the backward loop, each weight's gradient is one ``Δᵀ H``
product. ``docs/architecture.md`` explains the choices.
"""
from __future__ import annotations

import itertools
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace

import sympy as sp
from sympy.printing.precedence import precedence
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from . import ir
from .autodiff import LOSS, adjoint, grad_var
from .ir import X, Node
from .passes import fused_step
from .runtime import header
from .step import Step

LOSS_SEED = ir.var(("grad", LOSS), ())   # the loss's weight per row: 1/B while the sequence lasts


class Unsupported(Exception):
    """A model feature the generator does not handle (such a model runs on the NumPy backend)."""


# ---------------------------------------------------------------- scalar expressions

class _Printer(PythonCodePrinter):
    """Scalar sympy expressions as Python for Numba: the branch-free ``_tanh``, ``_exp`` and
    ``_sigmoid`` of the generated module, and literals of the kernel's dtype."""

    def __init__(self, dtype: str, vector: bool = False):
        super().__init__({"standard": "python3"})
        self.f32, self.v = dtype == "float32", "v" if vector else ""

    def literal(self, value) -> str:
        text = repr(float(value))
        return f"np.float32({text})" if self.f32 else text

    def _print_Integer(self, e):
        return self.literal(int(e))

    def _print_Rational(self, e):
        return self.literal(e.p / e.q)

    def _print_Float(self, e):
        return self.literal(e)

    def _print_Pow(self, e, rational=False):
        base = self.parenthesize(e.base, precedence(e))
        if e.exp.is_Integer:   # stays an integer power: Numba multiplies
            n = int(e.exp)
            return f"{base}**{n}" if n > 0 else f"({self.literal(1)} / {base}**{-n})"
        if e.exp == sp.S.Half:
            return f"math.sqrt({self._print(e.base)})"
        return f"{base}**{self.parenthesize(e.exp, precedence(e))}"

    def _print_tanh(self, e):
        return f"_{self.v}tanh({self._print(e.args[0])})"

    def _print_exp(self, e):
        return f"_exp({self._print(e.args[0])})"

    def _print_sigmoid(self, e):
        return f"_{self.v}sigmoid({self._print(e.args[0])})"

    def _print_relu(self, e):
        return f"max({self._print(e.args[0])}, {self.literal(0)})"

    def _print_Heaviside(self, e):
        x = self._print(e.args[0])
        h0 = self._print(e.args[1]) if len(e.args) > 1 else self.literal(0.5)
        return f"({self.literal(1)} if {x} > 0 else ({h0} if {x} == 0 else {self.literal(0)}))"


def scalar_code(expr: sp.Expr, args: list, dtype: str, vector: bool = False) -> str:
    """``expr`` (in X(0), X(1), ...) with ``args[k]`` substituted for X(k); ``vector``: inside a
    loop over a vector's components (branch-free functions)."""
    named = expr.xreplace({X(k): sp.Symbol(a) for k, a in enumerate(args)})
    return _Printer(dtype, vector).doprint(named)


def _length(shape: tuple) -> int | None:
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


# ---------------------------------------------------------------- where values live

@dataclass(frozen=True)
class Home:
    """Where a batched value lives: ``array[row, col + i]`` for a vector, ``array[row]`` for a
    scalar. For an array over all steps, row r of step t - 1 + ``shift`` (outside the time
    loops: of step tt + ``shift``) is ``r`` in the view ``b{shift}_{array}`` of that step's B
    rows (``_direct`` may index the array itself instead); with ``shift`` None the array holds
    one row per example (a per-step temporary, an accumulator). ``rowless``: one value for all
    rows (a parameter's gradient being summed)."""

    array: str
    shift: int | None = 0
    width: int | None = None
    col: int = 0
    rowless: bool = False
    ring: int = 0          # a ring of this many steps' rows (a cotangent only a few steps need)

    @property
    def rows(self) -> tuple | None:
        """(array, shift, ring): the step's block of rows this home reads, through a view."""
        return None if self.shift is None or self.rowless else (self.array, self.shift, self.ring)

    def at(self, i: str) -> str:
        index = i if self.col == 0 else f"{self.col} + {i}"
        if self.rowless:
            return self.array if self.width is None else f"{self.array}[{index}]"
        array = self.array if self.shift is None else _view_name(self.rows)
        return f"{array}[r]" if self.width is None else f"{array}[r, {index}]"

    def view(self, lo: int) -> "Home":
        return replace(self, col=self.col + lo)


@dataclass(frozen=True)
class Sink:
    """Store ``node`` into ``home``: ``op`` is ``=`` or ``+=``; ``guard`` says what a row past
    its sequence's end gets: None (the value), ``keep`` (the old value) or ``zero``."""

    node: Node
    home: Home | None      # None: keep the value in a home of its own over all rows
    op: str = "="
    guard: str | None = None


# ---------------------------------------------------------------- one generated function

class Function:
    """A generated kernel: a Python driver (allocations, parameter-only values, the weight
    matrices' gradient products, the results) around one compiled function, ``_<name>``, that
    holds every loop. Numba's compile time grows with each statement it compiles, and the
    straight-line parts gain nothing from compilation."""

    def __init__(self, name: str, args: list, dtype: str):
        self.name, self.args, self.dtype = name, args, dtype
        self.allocs: list = []        # driver: arrays, from the workspace or fresh
        self.work: list = []          # the size of each workspace array
        self.consts: list = []        # driver: parameter-only values
        self.lines: list = []         # the compiled loops
        self.post: list = []          # driver: after the loops
        self.seeds: dict = {}         # seed array -> its zeros, for the plain driver (see text)
        self.cots: list = []          # cotangent arrays the seeded driver returns
        self.defined = ["T", "B", "R", "lengths", "inv_B", *args[3:]]   # what the loops may read
        self.depth = 1
        self.ids = itertools.count()

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids)}"

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    @contextmanager
    def block(self, header: str):
        self.line(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def array(self, prefix: str, rows: str, width: int | None, zero: bool = False, fresh: bool = False,
              name: str | None = None) -> str:
        """A new array of ``rows`` (a size expression) rows. One whose size grows with T is a
        slice of the workspace ``work`` the caller keeps between calls (a fresh allocation of
        that size costs a page fault per 4 kB on every call), unless ``fresh`` (returned)."""
        name = name or self.fresh(prefix)
        self.defined.append(name)
        size = rows if width is None else f"{rows} * {width}"
        if ("T" in rows or "R" in rows) and not fresh:
            self.work.append(size)
            view = f"work[w:w + {size}]" if width is None else f"work[w:w + {size}].reshape(({rows}, {width}))"
            self.allocs += [f"{name} = {view}"] + ([f"{name}[...] = 0"] if zero else []) + [f"w += {size}"]
        else:
            shape = rows if width is None else f"({rows}, {width})"
            self.allocs.append(f"{name} = np.{'zeros' if zero else 'empty'}({shape}, dtype)")
        return name

    def const(self, name: str) -> str:
        self.defined.append(name)
        return name

    def work_size(self) -> str:
        """A Python function of T and B: how many elements ``work`` needs."""
        total = " + ".join(f"({s})" for s in self.work) or "0"
        return f"def work_size_{self.name}(T, B):\n    R = T * B\n    return {total}\n"

    def text(self, returns: str) -> str:
        body = "\n".join(self.lines)
        used = [n for n in dict.fromkeys(self.defined) if re.search(rf"\b{re.escape(n)}\b", body)]
        loops = ["@njit(cache=True, error_model='numpy')", f"def _{self.name}({', '.join(used)}):", body]
        args = self.args[:3] + (["work"] if self.work else []) + self.args[3:]
        drivers = [self._driver(args, used, returns)]
        if self.seeds:   # a first driver takes the final states' cotangents, returns the initial ones
            drivers.insert(0, self._driver(args + list(self.seeds), used, returns[:-1] + "".join(
                f"{c}, " for c in self.cots) + ")", seeded=True))
        return "\n".join(loops) + "\n\n\n" + "\n\n\n".join(drivers)

    def _driver(self, args: list, used: list, returns: str, seeded: bool = False) -> str:
        name = f"{self.name}_seeded" if seeded else self.name
        driver = [f"def {name}({', '.join(args)}):", "R = T * B", "inv_B = dtype(1.0 / B)"]
        driver += (["w = 0"] if self.work else []) + self.allocs + self.consts
        if self.seeds:   # steps after tseed may end a sequence's last K values: the loops add its seeds
            driver += ["tseed = np.int64(np.min(lengths)) - " + str(max(k for k, _ in self.seeds.values()))] \
                if seeded else ["tseed = np.int64(T)"] + [f"{n} = {z}" for n, (_, z) in self.seeds.items()]
        driver += [f"_{self.name}({', '.join(used)})"] + self.post + [f"return {returns}"]
        return "\n    ".join(driver)


# ---------------------------------------------------------------- parameter-only values

class _NumPyPrinter(NumPyPrinter):
    """Elementwise sympy expressions over NumPy arrays, for the driver."""

    def _print_sigmoid(self, e):
        return f"1/(1 + numpy.exp(-({self._print(e.args[0])})))"

    def _print_relu(self, e):
        return f"numpy.maximum({self._print(e.args[0])}, 0)"

    def _print_Heaviside(self, e):
        h0 = self._print(e.args[1]) if len(e.args) > 1 else "0.5"
        return f"numpy.heaviside({self._print(e.args[0])}, {h0})"


def numpy_code(expr: sp.Expr, args: list) -> str:
    named = expr.xreplace({X(k): sp.Symbol(a) for k, a in enumerate(args)})
    return _NumPyPrinter({"standard": "python3"}).doprint(named).replace("numpy.", "np.")


class Consts:
    """Unbatched values (parameters and what is computed from them alone), computed once per
    call by the driver with NumPy: scalars as numbers, vectors as 1-D and matrices as 2-D
    contiguous arrays of the kernel's dtype, which the loops read by name."""

    def __init__(self, fn: Function, lines: list, names: dict | None = None):
        self.fn, self.out, self.names = fn, lines, dict(names or {})

    def name(self, node: Node) -> str:
        """The value's name, computed on first use (a parameter graph is shallow: recursion)."""
        if node not in self.names:
            self.names[node] = self._compute(node)
        return self.names[node]

    def element(self, node: Node, i: str) -> str:
        """Component ``i`` of an unbatched scalar or vector, in the loops."""
        name = self.name(node)
        if node.shape == ():
            return name
        if 1 not in node.shape:
            raise Unsupported(f"a weight matrix {node!r} read elementwise with a vector")
        return f"{name}[{i}]"

    def _compute(self, n: Node) -> str:
        if n.op == "param":
            return f"p_{n.attr}"
        if n.op == "var":
            raise Unsupported(f"an unbatched placeholder {n.attr!r}")
        if n.op == "const" and n.shape == ():
            return _Printer(self.fn.dtype).doprint(n.attr)
        a = [self.name(x) for x in n.args]
        layout = "()" if n.shape == () else str((_length(n.shape),)) if 1 in n.shape else str(n.shape)
        if n.op == "const":
            value = f"np.full({layout}, {float(n.attr)!r})"
        elif n.op == "map":
            value = numpy_code(n.attr, a)
        elif n.op == "matmul":
            x, y = n.args
            value = f"np.dot(np.reshape({a[0]}, {x.shape}), np.reshape({a[1]}, {y.shape})).reshape({layout})"
        elif n.op == "transpose":
            value = a[0] if 1 in n.shape else f"{a[0]}.T"
        elif n.op == "concat":   # a matrix stacks its parts as 2-D, rows included
            parts = a if 1 in n.shape else [f"np.reshape({x}, {p.shape})" if 1 in p.shape else x
                                            for x, p in zip(a, n.args)]
            value = f"np.concatenate(({', '.join(parts)},))"
        elif n.op == "take":
            value = f"{a[0]}[{n.attr[0]}:{n.attr[1]}]"
        elif n.op == "total":
            value = f"np.sum({a[0]})"
        elif n.op == "broadcast":
            value = f"np.full({layout}, {a[0]})"
        elif n.op == "logsumexp":
            value = f"np.max({a[0]}) + np.log(np.sum(np.exp({a[0]} - np.max({a[0]}))))"
        else:
            raise Unsupported(f"a parameter-only {n.op}")
        name = self.fn.const(self.fn.fresh("c"))
        cast = f"dtype({value})" if n.shape == () else f"np.ascontiguousarray({value}, dtype)"
        self.out.append(f"{name} = {cast}")
        return name


# ---------------------------------------------------------------- regions

def _kind(n: Node) -> str:
    """How a batched node is computed: ``gemm`` (a product with a weight matrix over all rows),
    ``map`` (elementwise), ``dot`` (vᵀw per row), ``total``/``logsumexp`` (reductions),
    ``concat`` or ``take`` (a view)."""
    if n.op == "matmul":
        a, b = n.args
        if a.shape == (1, 1) or b.shape == (1, 1):
            return "map"                                  # a scalar times a vector
        if not a.batched or not b.batched:
            return "gemm"
        if a.shape[0] == 1 and b.shape[1] == 1:
            return "dot"
        raise Unsupported(f"a per-example outer product {a.shape} x {b.shape}")
    if n.op in ("map", "broadcast"):
        return "map"
    if n.op in ("total", "logsumexp", "concat", "take"):
        return n.op
    raise Unsupported(f"op {n.op!r} on batched values")


def _scalar_like(n: Node) -> bool:
    """One value per row: a scalar, or a row dot product (shape 1x1)."""
    return n.shape == () or (n.op == "matmul" and _kind(n) == "dot")


def _width(n: Node) -> int | None:
    return None if _scalar_like(n) else _length(n.shape)


class Region:
    """Computes what a list of sinks needs, for the rows of one block, and stores it there.

    ``time``: the block is the B rows of step t inside a loop over time; else all T·B rows.
    ``leaf(node)`` says where an available node lives: a ``Home``, an expression, or None.

    Scheduling: a product with a weight matrix runs over the whole block, so it splits the
    region into *nests* (loops over rows); within a nest every node gets a *level*. Vectors of
    one length at one level share one loop over components; scalars of level L are computed
    before the loops of level L; a sum over components is accumulated in the loop of its
    argument. A value read by a later loop, a later nest or a product gets an array (a home):
    the array of one of its sinks when that fits, else a temporary."""

    def __init__(self, fn: Function, consts: Consts, leaf, time: bool):
        self.fn, self.consts, self.leaf, self.time = fn, consts, leaf, time
        self.rows = "B" if time else "R"
        self.zero = _Printer(fn.dtype).literal(0)
        self.homes: dict = {}        # node -> Home of everything materialized here
        self.loop_shifts: set = set()  # views of step rows the enclosing time loop must define
        self.written: set = set()      # arrays this region writes
        self.across_rows = False       # some loop vectorizes across rows
        self.nest_written: set = set()
        self.local: dict = {}
        self.flags: set = set()

    # -------------------------------------------------------- what is known
    def available(self, n: Node):
        """Where an available batched node lives (Home or expression); None if computed here."""
        n = resolve(n)
        found = self.leaf(n)
        if found is None and n.op == "take":
            base = self.available(n.args[0])
            if isinstance(base, Home):
                return base.view(n.attr[0])
        return found

    def _known(self, n: Node) -> bool:
        return not n.batched or self.available(n) is not None

    def run(self, sinks: list) -> dict:
        """Emit this region; returns the homes of what it materialized."""
        sinks = [replace(s, node=resolve(s.node)) for s in sinks]
        self.order = [n for n in ir.toposort([s.node for s in sinks], stop=self._known)
                      if n.op != "transpose" and not self._known(n)]
        self.kind = {n: _kind(n) for n in self.order}
        self.users = {n: [] for n in self.order}
        for n in self.order:
            for a in {resolve(a) for a in n.args}:
                if a in self.users:
                    self.users[a].append(n)
        self._schedule()
        self._assign_homes(sinks)
        self._emit(sinks)
        return self.homes

    # -------------------------------------------------------- scheduling
    def _ready(self, a: Node) -> int:
        a = resolve(a)
        return self.ready.get(a, 0)

    def _complete(self, a: Node) -> int:
        """The first nest before which every row of ``a`` is computed."""
        a = resolve(a)
        if a not in self.kind:
            return 0
        if self.kind[a] == "gemm":
            return self.ready[a]
        if self.kind[a] == "take":
            return self._complete(a.args[0])
        return self.nest[a] + 1

    def _fusable(self, n: Node) -> bool:
        """An elementwise vector: computed in a loop over components, kept in a local."""
        return self.kind.get(n) == "map" and not _scalar_like(n)

    def _inside(self, n: Node) -> tuple:
        """The arguments of ``n`` computed in the same nest: those ``n`` can read from the loop
        computing them, and those read through a slice (``take``) of one, from its home."""
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
            if k == "gemm":
                a, b = n.args
                self.ready[n] = self._complete(b if b.batched else a)
            elif k == "take":
                self.ready[n] = self._ready(n.args[0])
            else:
                self.nest[n] = self.ready[n] = max((self._ready(a) for a in n.args if a.batched), default=0)
        for n in self.order:
            k = self.kind[n]
            if k == "gemm":
                continue
            if k == "take":
                base = resolve(n.args[0])
                self.level[n] = self.level.get(base, -1)
                continue
            inside, sliced = self._inside(n)
            vectors = [a for a in inside if not _scalar_like(a)]
            scalars = max((self.level[a] for a in inside if _scalar_like(a)), default=0)
            later = [self.level[a] + 1 for a in sliced]   # read from a home, once its loop is done
            if k == "map" and not _scalar_like(n):
                same = [self.level[a] for a in vectors if self._fusable(a) and _length(a.shape) == _length(n.shape)]
                other = [self.level[a] + 1 for a in vectors if not (self._fusable(a) and _length(a.shape) == _length(n.shape))]
                self.level[n] = max([scalars, *same, *other, *later])
            elif k == "concat":
                self.level[n] = max([0, *later, *(self.level[a] if self._fusable(a) else self._copy_level(a) for a in inside)])
            elif k == "map":
                self.level[n] = max([scalars, *later])
            else:
                loops = {(self.level[a], _length(a.shape)) for a in vectors}
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
        return self.level[a] if _scalar_like(a) else self.level[a] + 1

    def _same_loop(self, a: Node, user: Node) -> bool:
        """Does ``user`` read ``a`` from a local variable of the loop (or row) computing both?"""
        if a not in self.nest or self.nest.get(user) != self.nest[a]:
            return False
        if _scalar_like(a):
            return True
        if not self._fusable(a):
            return False
        if self.fused.get(user) == (self.level[a], _length(a.shape)):
            return True
        return self._fusable(user) and self.level[user] == self.level[a] and _length(user.shape) == _length(a.shape)

    def _assign_homes(self, sinks: list) -> None:
        """A home for everything read outside the loop computing it: the array of one of its
        ``=`` sinks when that fits, else a temporary."""
        stores: dict = {}
        for s in sinks:
            if s.op == "=" and s.home is not None and not s.home.rowless and s.home.shift is not None:
                stores.setdefault(s.node, []).append(s)
        self.parts: dict = {}     # part -> [(concat, offset)]
        for n in self.order:
            if self.kind[n] == "concat":
                lo = 0
                for a in n.args:
                    self.parts.setdefault(resolve(a), []).append((n, lo))
                    lo += a.shape[0]
        need = {s.node for s in sinks if s.home is None}
        for n in self.order:
            if self.kind[n] in ("gemm", "concat"):
                need.add(n)
            for u in self.users[n]:
                if self.kind[u] == "concat":
                    continue   # a part is stored into the stack, or copied from its own home
                if self.kind[u] in ("gemm", "take") or not self._same_loop(n, u):
                    need.add(n)
            if n in self.parts and not (self._fusable(n) or _scalar_like(n)):
                need.add(n)
        self.satisfied, self.guards = set(), {}
        for n in self.order:
            if n not in need or self.kind[n] == "take":
                continue
            width = _width(n)
            fits = [s for s in stores.get(n, []) if s.home.col == 0 and s.home.width == width
                    and (self.kind[n] == "map" or s.guard is None or self.kind[n] == "concat" and s.guard == "zero")]
            if fits:
                self.homes[n] = fits[0].home
                self.satisfied.add(fits[0])
                self.guards[n] = fits[0].guard
            else:
                self.homes[n] = Home(self.fn.array("v", self.rows, width), None if self.time else 0, width)
        for n in self.order:
            if self.kind[n] == "take":
                self.homes[n] = self.home(n.args[0]).view(n.attr[0])

    def home(self, n: Node) -> Home:
        n = resolve(n)
        if n in self.homes:
            return self.homes[n]
        found = self.available(n)
        if isinstance(found, Home):
            return found
        raise Unsupported(f"no array holds {n!r}")

    # -------------------------------------------------------- expressions
    def _at(self, home: Home, i: str) -> str:
        if home.rows is not None:
            self.shifts.add(home.rows)
        return home.at(i)

    def read(self, a: Node, i: str, user: Node | None = None) -> str:
        """Component ``i`` of ``a``, as ``user`` reads it."""
        a = resolve(a)
        if not a.batched:
            return self.consts.element(a, i)
        if _scalar_like(a):
            i = "0"
        if a not in self.kind:
            found = self.available(a)
            if isinstance(found, str):
                self.flags.add(found)
                return found
            return self._at(found, i)
        if a in self.local and (user is None or self._same_loop(a, user)):
            return self.local[a]
        return self._at(self.home(a), i)

    def _value(self, n: Node, i: str) -> str:
        """The expression of component ``i`` of an elementwise node."""
        if n.op == "matmul":   # one side is 1x1: a scalar times a vector
            return " * ".join(f"({self.read(a, '0' if a.shape == (1, 1) else i, n)})" for a in n.args)
        if n.op == "broadcast":
            return self.read(n.args[0], i, n)
        return scalar_code(n.attr, [self.read(a, i, n) for a in n.args], self.fn.dtype, not _scalar_like(n))

    def _reduced(self, n: Node, i: str) -> str:
        if self.kind[n] == "dot":
            return " * ".join(f"({self.read(a, i, n)})" for a in n.args)
        return self.read(n.args[0], i, n)

    def _store(self, sink: Sink, value: str, i: str) -> None:
        """Store a value; past a sequence's end (``ok`` false) a guarded sink keeps its old
        value or gets zero: by a select per store in a nest of scalars (it vectorizes across
        rows), else by one branch per row (``_rows_loop``), the zeros written in its else."""
        target = self._at(sink.home, i)
        self.written.add(sink.home.array)
        self.nest_written.add(sink.home.array)
        if sink.guard:
            self.flags.add("ok")
        if sink.guard and self.branch:
            if sink.guard == "zero" and sink.op == "=":
                self.zeros.append((sink.home, i, self.length if i == "i" else None))
        elif sink.guard == "keep":
            value = f"{value} if ok else {target}"
        elif sink.guard == "zero":
            value = f"({value} if ok else {self.zero})"
        self.fn.line(f"{target} {sink.op} {value}")

    # -------------------------------------------------------- emission
    @contextmanager
    def _rows_loop(self, branch: bool = False):
        """``for r in range(B)`` (outside time loops: inside ``for tt in range(T)``), then the
        definitions the body turned out to need: step rows, the validity flag, the loss weight.
        ``branch``: the body runs only for rows within their sequence (``if ok:``), an ``else``
        writes the zeros of its guarded stores."""
        fn = self.fn
        self.shifts, self.flags, self.branch, self.zeros = set(), set(), branch, []
        self.nest_written = set()
        self.across_rows |= not branch   # a nest of scalars vectorizes across rows: it needs views
        depth, start = fn.depth, len(fn.lines)
        if not self.time:
            fn.line("for tt in range(T):")
            fn.depth += 1
        fn.line("for r in range(B):")
        fn.depth += 1
        top = len(fn.lines)
        try:
            yield
        finally:
            row = []
            if self.flags & {"ok", "wt"}:
                row.append(f"ok = {'t' if self.time else 'tt + 1'} <= lengths[r]")
            if branch and "ok" in self.flags:
                body = ["    " + line for line in fn.lines[top:]]
                fn.lines[top:] = ["    " * fn.depth + "if ok:"] + body
                if self.zeros:
                    inner = "    " * (fn.depth + 1)
                    fn.lines.append("    " * fn.depth + "else:")
                    fn.lines += [inner + f"{home.at(i)} = {self.zero}" for home, i, n in self.zeros if n is None]
                    for n in dict.fromkeys(n for _, _, n in self.zeros if n is not None):
                        fn.lines.append(inner + f"for i in range({n}):")
                        fn.lines += [inner + f"    {home.at('i')} = {self.zero}" for home, _, m in self.zeros if m == n]
                if "wt" in self.flags:
                    row.append("wt = inv_B")
            elif "wt" in self.flags:
                row.append(f"wt = inv_B if ok else {self.zero}")
            fn.lines[top:top] = ["    " * fn.depth + text for text in row]
            if self.time:
                self.loop_shifts |= self.shifts
            elif self.shifts:
                fn.lines[start:], views = _direct(fn.lines[start:], self.shifts, self.nest_written, not branch)
                fn.lines[start + 1:start + 1] = ["    " * (depth + 1) + d for d in _row_defs(self.shifts, views, "tt")]
            fn.depth = depth

    def _emit(self, sinks: list) -> None:
        todo: dict = {}
        for s in sinks:
            if s not in self.satisfied and s.home is not None:
                todo.setdefault(s.node, []).append(s)
        for part, stacks in self.parts.items():
            for c, lo in stacks:   # a part goes into its stack's array, with the stack's guard
                todo.setdefault(part, []).append(Sink(part, self.homes[c].view(lo), "=", self.guards.get(c)))
        gemms: dict = {}
        for n in self.order:
            if self.kind[n] == "gemm":
                gemms.setdefault(self.ready[n], []).append(n)
        copies: dict = {}   # nest -> level -> nodes whose sinks copy a value computed elsewhere
        for n, targets in todo.items():
            if n not in self.nest or not (self._fusable(n) or _scalar_like(n)):
                nest = self._complete(n) if n in self.kind else 0
                copies.setdefault(nest, {}).setdefault(self._copy_level(n) if n in self.nest else 0, []).append(n)
        last = max([*self.ready.values(), *copies, 0])
        for p in range(last + 1):
            for g in gemms.get(p, []):
                self._gemm(g)
            members = [n for n in self.order if self.nest.get(n) == p]
            if members or p in copies:
                vectors = any(self._fusable(n) for n in members) or any(
                    not _scalar_like(n) for level in copies.get(p, {}).values() for n in level if n.shape != ())
                with self._rows_loop(branch=vectors):
                    self._nest(members, copies.get(p, {}), todo)

    def _nest(self, members: list, copies: dict, todo: dict) -> None:
        fn = self.fn
        self.local = {}
        levels = sorted({self.level[n] for n in members if self.kind[n] != "take"} | set(copies) | {0})
        for level in levels:
            for n in copies.get(level, []):
                self._copy(n, todo[n])
            for n in members:
                if self.level[n] == level and _scalar_like(n) and n not in self.fused:
                    self._scalar(n, todo.get(n, []))
            loops: dict = {}
            for n in members:
                if self.level[n] == level and self._fusable(n):
                    loops.setdefault(_length(n.shape), []).append(n)
            for length, nodes in loops.items():
                reductions = [n for n in members if self.fused.get(n) == (level, length)]
                for red in reductions:
                    self.local[red] = fn.fresh("s")
                    fn.line(f"{self.local[red]} = {self.zero}")
                self.length = length
                with fn.block(f"for i in range({length}):"):
                    for n in nodes:
                        self.local[n] = fn.fresh("e")
                        fn.line(f"{self.local[n]} = {self._value(n, 'i')}")
                        for s in todo.get(n, []):
                            self._store(s, self.local[n], "i")
                        if n in self.homes and not any(s.home == self.homes[n] for s in todo.get(n, [])):
                            self._store(Sink(n, self.homes[n], "=", self.guards.get(n)), self.local[n], "i")
                    for red in reductions:
                        fn.line(f"{self.local[red]} += {self._reduced(red, 'i')}")
                for red in reductions:
                    self._finish(red, todo.get(red, []))

    def _scalar(self, n: Node, sinks: list) -> None:
        """A per-row value: an elementwise function of scalars, or a reduction in loops of its own."""
        fn = self.fn
        name = self.local[n] = fn.fresh("e")
        k = self.kind[n]
        if k == "map":
            fn.line(f"{name} = {self._value(n, '0')}")
        elif k in ("total", "dot"):
            fn.line(f"{name} = {self.zero}")
            with fn.block(f"for i in range({_length(resolve(n.args[0]).shape)}):"):
                fn.line(f"{name} += {self._reduced(n, 'i')}")
        else:   # logsumexp
            a = resolve(n.args[0])
            m, total = fn.fresh("m"), fn.fresh("s")
            fn.line(f"{m} = dtype(-np.inf)")
            with fn.block(f"for i in range({_length(a.shape)}):"):
                fn.line(f"{m} = max({m}, {self.read(a, 'i', n)})")
            fn.line(f"{total} = {self.zero}")
            with fn.block(f"for i in range({_length(a.shape)}):"):
                fn.line(f"{total} += _exp({self.read(a, 'i', n)} - {m})")
            fn.line(f"{name} = {m} + dtype(math.log({total}))")
        self._finish(n, sinks)

    def _finish(self, n: Node, sinks: list) -> None:
        for s in sinks:
            self._store(s, self.local[n], "0")
        if n in self.homes and not any(s.home == self.homes[n] for s in sinks):
            self._store(Sink(n, self.homes[n], "=", self.guards.get(n)), self.local[n], "0")

    def _copy(self, n: Node, sinks: list) -> None:
        """Store a value that is not a local of this nest into its sinks."""
        width = None if not n.batched and n.shape == () else (None if n.batched and _scalar_like(n) else _length(n.shape))
        if width is None:
            for s in sinks:
                self._store(s, self.read(n, "0"), "0")
            return
        self.length = width
        with self.fn.block(f"for i in range({width}):"):
            for s in sinks:
                self._store(s, self.read(n, "i"), "i")

    def _block(self, home: Home) -> str:
        """The contiguous rows of this block of an array."""
        if home.shift is None:
            return home.array
        if self.time:
            self.loop_shifts.add(home.rows)
            return _view_name(home.rows)
        start = f"{home.shift} * B" if home.shift else ""
        return f"{home.array}[{start}:{start + ' + ' if start else ''}R]"

    def _gemm(self, n: Node) -> None:
        """rows @ M for a product with a weight matrix (W v: M = Wᵀ; vᵀ W: M = W): BLAS, or
        explicit loops, vectorized over the output's components, for a small matrix."""
        a, b = n.args
        v, m = (resolve(b), ir.transpose(a)) if b.batched else (resolve(a), b)
        k, width = _length(v.shape), _length(n.shape)
        src, out = self.home(v), self.homes[n]
        M = self.consts.name(m)
        matrix = 1 not in m.shape
        whole = src.col == 0 and src.width == k and out.col == 0 and out.width == width
        self.written.add(out.array)
        if matrix and whole:
            self.fn.line(f"_mm({self._block(src)}, {M}, {self._block(out)})")
            return
        element = f"{M}[q, j]" if matrix else (f"{M}[j]" if m.shape[0] == 1 else f"{M}[q]")
        with self._rows_loop():
            self.nest_written.add(out.array)
            target = self._at(out, "j")
            with self.fn.block(f"for j in range({width}):"):
                self.fn.line(f"{target} = {self.zero}")
            with self.fn.block(f"for q in range({k}):"):
                self.fn.line(f"vq = {self._at(src, 'q')}")
                with self.fn.block(f"for j in range({width}):"):
                    self.fn.line(f"{target} += vq * {element}")


def _row_name(shift: int, ring: int) -> str:
    """The variable holding the first row of step t - 1 + shift (in a ring: modulo its size)."""
    return f"b{shift}" if not ring else f"k{ring}_{shift}" if shift >= 0 else f"k{ring}_m{-shift}"


def _view_name(rows: tuple) -> str:
    array, shift, ring = rows
    return f"{_row_name(shift, ring)}_{array}"


def _direct(lines: list, used: set, written: set, across_rows: bool) -> tuple:
    """Index an array directly (``a[b1 + r]``) unless the loops write it and read it at more
    than one step, or a loop vectorizes across rows: views are for LLVM to see distinct
    arrays, and each costs compile time. Returns the rewritten lines and the views needed."""
    steps: dict = {}
    for key in used:
        steps.setdefault(key[0], []).append(key)
    text, views = "\n".join(lines), set()
    for array, keys in steps.items():
        if across_rows or (array in written and len(keys) > 1):
            views.update(keys)
            continue
        for key in keys:
            view, row = _view_name(key), _row_name(key[1], key[2])
            text = re.sub(rf"\b{view}\[r\b", f"{array}[{row} + r", text)
            text = re.sub(rf"\b{view}\b", f"{array}[{row}:{row} + B]", text)
    return text.split("\n"), views


def _row_defs(used: set, views: set, step: str) -> list:
    """Lines defining the first row of each step used (``step`` is ``tt``, or ``t - 1`` in a
    time loop), then a view of the block of B rows of each array in ``views``."""
    lines = []
    for shift, ring in sorted({(s, k) for _, s, k in used}):
        at = step if shift == 0 else (f"{step} + {shift}" if step == "tt" else
                                      "t" if shift == 1 else f"t + {shift - 1}" if shift > 1 else f"t - {1 - shift}")
        base = f"({at}) % {ring}" if ring else at
        lines.append(f"{_row_name(shift, ring)} = {base} * B" if base in ("t", "tt") else
                     f"{_row_name(shift, ring)} = ({base}) * B")
    for array, shift, ring in sorted(views):
        row = _row_name(shift, ring)
        lines.append(f"{_view_name((array, shift, ring))} = {array}[{row}:{row} + B]")
    return lines


# ---------------------------------------------------------------- the module

def _costly(expr: sp.Expr) -> bool:
    """Does an elementwise expression apply a function (tanh, exp, ...) or a fractional power?"""
    return any(isinstance(e, sp.Function) or (isinstance(e, sp.Pow) and not e.exp.is_Integer)
               for e in sp.preorder_traversal(expr))


def _boundary(step: Step) -> list:
    """The unbatched values that batched code reads and that depend on a parameter. The
    gradient of each is summed over the rows, then sent back to the parameters once."""
    out = []
    for n in ir.toposort(step.roots()):
        for a in n.args if n.batched else ():
            if not a.batched and a not in out and any(m.op == "param" for m in ir.toposort([a])):
                out.append(a)
    return out


def _outer_terms(node: Node) -> list:
    """A weight matrix's cotangent per example as Σ coef · a bᵀ over batched vectors a, b."""
    if node.op == "matmul" and all(x.batched for x in node.args) \
            and node.args[0].shape[1] == 1 and node.args[1].shape[0] == 1:
        return [(1.0, resolve(node.args[0]), resolve(node.args[1]))]
    if node.op == "transpose":
        return [(c, b, a) for c, a, b in _outer_terms(node.args[0])]
    if node.op == "map":
        out = []
        for term in sp.Add.make_args(sp.expand(node.attr)):
            coef, rest = term.as_coeff_Mul()
            if not (rest.is_Symbol and rest.name.startswith("x")):
                break
            out += [(float(coef) * c, a, b) for c, a, b in _outer_terms(node.args[int(rest.name[1:])])]
        else:
            return out
    raise Unsupported(f"the gradient of a weight matrix of the form {node!r}")


class Gradients:
    """Sums each boundary value's cotangent over all rows, as regions compute it: scalars and
    vectors in accumulators, weight matrices as Σ a bᵀ products after the last region (their
    factors kept over all rows); then sends the sums back to the parameters."""

    def __init__(self, fn: Function, boundary: list):
        self.fn, self.boundary = fn, boundary
        self.acc: dict = {}
        self.outer: dict = {}

    def _accumulator(self, q: Node) -> Home:
        if q not in self.acc:
            if q.shape == ():
                self.acc[q] = Home(self.fn.array("acc", "B", None, zero=True), None, None)
            else:
                self.acc[q] = Home(self.fn.array("acc", str(_length(q.shape)), None, zero=True), None,
                                   _length(q.shape), rowless=True)
        return self.acc[q]

    def sinks(self, contributions: dict, region: Region) -> list:
        """Sinks that add a region's contributions (boundary node -> cotangent IR)."""
        out, kept = [], {}
        for q, node in contributions.items():
            if q.shape == () or 1 in q.shape:
                out.append(Sink(node, self._accumulator(q), "+=", "zero"))
                continue
            for coef, a, b in _outer_terms(node):
                homes = []
                for f in (a, b):
                    # a cotangent's timeline holds what later steps sent past a sequence's end:
                    # a factor is copied into a buffer, zero there, unless it already is one
                    home = kept.get(f) or (None if f.op == "var" else region.available(f))
                    if not (isinstance(home, Home) and home.shift is not None and home.col == 0
                            and not home.rowless and home.width == _length(f.shape)):
                        width = _length(f.shape)
                        home = kept[f] = Home(self.fn.array("f", "R", width), 0, width)
                        out.append(Sink(f, home, "=", "zero"))
                    homes.append(home)
                self.outer.setdefault(q, []).append((coef, *homes))
        return out

    def finish(self, consts: Consts, params: dict) -> list:
        """Driver lines after the loops: the weight matrices' products, then each parameter's
        gradient, its sum over rows sent back through the parameter-only values."""
        fn = self.fn
        totals = {}
        for q, terms in self.outer.items():
            name = totals[q] = fn.array("gw", str(q.shape), None)
            for k, (coef, a, b) in enumerate(terms):
                blocks = [f"{h.array}[{f'{h.shift} * B:{h.shift} * B + R' if h.shift else ':R'}]" for h in (a, b)]
                if coef != 1.0:   # Σ c a bᵀ = (c a)ᵀ b
                    blocks[0] = f"np.ascontiguousarray({coef!r} * {blocks[0]}, dtype)"
                fn.post.append(f"_mtm({blocks[0]}, {blocks[1]}, {name}, {1.0 if k else 0.0})")
        for q, home in self.acc.items():
            totals[q] = home.array if home.rowless else f"dtype({home.array}.sum())"
        seeds = {q: ir.var(("sum", k), q.shape, batched=False) for k, q in enumerate(self.boundary) if q in totals}
        chain = Consts(fn, fn.post, {**consts.names, **{seeds[q]: totals[q] for q in seeds}})
        ct = ir.vjp(seeds)
        names = []
        for p, shape in params.items():
            node = ct.get(ir.param(p, shape))
            layout = "()" if shape == () else str((_length(shape),)) if 1 in shape else str(shape)
            names.append(chain.name(node) if node is not None else
                         "dtype(0.0)" if shape == () else f"np.zeros({layout}, dtype)")
        return names


class KernelSource:
    """The generated module of a step: ``forward`` and, with a loss, ``loss_and_grad``.

    ``args[name]`` lists the signals whose timelines a function takes, in order; ``work[name]``
    says whether it takes a workspace (of ``work_size_<name>(T, B)`` elements)."""

    def __init__(self, step: Step, dtype: str):
        self.user_step, self.dtype = step, dtype
        for info in step.signals.values():
            if info.shape:
                _length(info.shape)   # raises for a matrix-valued signal
        self.step = fused_step(step)
        self.margins = {n: i.margins for n, i in step.signals.items()}
        self.params = dict(step.params)
        self.boundary = _boundary(self.step)
        self.adjoint = adjoint(self.step, loss_seed=LOSS_SEED, wrt=frozenset(self.boundary))
        self.fuse_loss = self._loss_fusable()
        self.rings = self._rings()
        self.args: dict = {}
        functions = [self._forward()] + ([self._loss_and_grad()] if step.loss is not None else [])
        self.work = {fn.name: bool(fn.work) for fn in functions}
        self.seeded = [n[len("seed_"):] for fn in functions for n in fn.seeds]   # loss_and_grad_seeded's seeds
        body = "".join(f"\n\n{fn.text(fn.returns)}\n\n\n{fn.work_size()}" for fn in functions)
        self.text = header(dtype) + body
        self.standalone = header(dtype, standalone=True) + body

    # -------------------------------------------------------- signals and graphs
    def timeline(self, name: str, offset: int, array: str = "ext") -> Home:
        shape = self.step.signals[name].shape
        width = None if shape == () else _length(shape)
        if array == "cot" and name in self.rings:
            return Home(f"cot_{name}", offset, width, ring=self.rings[name])
        return Home(f"{array}_{name}", offset + self.margins[name][0], width)

    def leaf(self, known: dict):
        def find(n: Node):
            if n in known:
                return known[n]
            if n.op == "read":
                return self.timeline(*n.attr)
            if n.op == "var" and n.attr[0] == "cot":
                return self.timeline(n.attr[1], 0, "cot")
            return None
        return find

    def _loss_fusable(self) -> bool:
        """Can the first backward loop compute the loss and its cotangents step by step? Yes if
        they need no product with a weight matrix (those run best over all rows at once) and
        send nothing to a step of that loop's states that it has already processed."""
        step, adj = self.step, self.adjoint
        if step.loss is None:
            return False
        graph = ir.toposort([step.loss, *adj.reads[LOSS].values(), *adj.params[LOSS].values()])
        if any(n.batched and n.op == "matmul" and _kind(n) == "gemm" for n in graph):
            return False
        last = step.sweeps[-1]
        return all(off * last.direction <= 0 for (s, off) in adj.reads[LOSS] if s in last.states)

    def _rings(self) -> dict:
        """States whose cotangents only their own backward loop sends: a ring of K steps' rows
        (K = the largest delay + 1) instead of a timeline over all steps."""
        adj, step = self.adjoint, self.step
        writers: dict = {s: set() for s in step.states}
        window: dict = {s: 1 for s in step.states}
        for k, sweep in enumerate(step.sweeps):
            consumers = list(sweep.states) + ([LOSS] if self.fuse_loss and k == len(step.sweeps) - 1 else [])
            for who in consumers:
                for (s, off) in adj.reads[who]:
                    writers[s].add(k)
                    window[s] = max(window[s], abs(off) + 1)
        if step.loss is not None and not self.fuse_loss:
            for (s, off) in adj.reads[LOSS]:
                writers[s].add("loss")
        rings = {}
        for k, sweep in enumerate(step.sweeps):
            for s in sweep.states:
                if writers[s] <= {k}:
                    rings[s] = window[s]
        return rings

    def _depends_on_state(self):
        memo: dict = {}

        def dep(n: Node) -> bool:
            for m in ir.toposort([n], stop=memo):
                if m not in memo:
                    memo[m] = (m.op == "read" and m.attr[0] in self.step.updates) or any(memo[a] for a in m.args)
            return memo[n]
        return dep

    def _sweeps(self) -> list:
        """Per sweep: every node under its updates mapped to its form in the forward loop, where
        a state read at the same step is the node computing it."""
        out = []
        for sweep in self.step.sweeps:
            mapping: dict = {}
            for s in sweep.states:
                node = self.step.updates[s]
                mapping.update(ir.rewrite([node], mapping))
                mapping[ir.read(s, 0, node.shape)] = mapping[node]
            out.append(mapping)
        return out

    def _backward_sweeps(self) -> list:
        """Per sweep, in backward order: the cotangent sinks of its adjoint step and its
        boundary contributions. A state's seed ∇s(t) is written out as what was sent to s(t)
        before plus what the states of the sweep that read s(t) (and a fused loss) send now,
        so that one loop computes all of them."""
        adj, out = self.adjoint, []
        for k, sweep in enumerate(reversed(self.step.sweeps)):
            seeds: dict = {}
            sends: dict = {}
            grads: dict = {}
            consumers = [LOSS] if self.fuse_loss and k == 0 else []
            consumers += list(reversed(sweep.states))
            for who in consumers:
                if who != LOSS:
                    shape = self.step.updates[who].shape
                    same = [ir.substitute([adj.reads[o][(who, 0)]], seeds)[0] for o in [LOSS, *sweep.states]
                            if (o == LOSS and LOSS in consumers or o != LOSS and grad_var(o, self.step.updates[o].shape) in seeds)
                            and (who, 0) in adj.reads[o]]
                    seeds[grad_var(who, shape)] = ir.add(ir.var(("cot", who), shape), *same)
                for (name, off), node in adj.reads[who].items():
                    if not (off == 0 and name in sweep.states):
                        sends.setdefault((name, off), []).append(ir.substitute([node], seeds)[0])
                for q, node in adj.params[who].items():
                    grads.setdefault(q, []).append(ir.substitute([node], seeds)[0])
            sinks = [Sink(ir.add(*nodes), self.timeline(name, off, "cot"), "+=", "zero")
                     for (name, off), nodes in sends.items()]
            out.append((sweep, sinks, {q: ir.add(*nodes) for q, nodes in grads.items()}))
        return out

    def _tapes(self, fn: Function, roots: list, sweeps: list, known: dict, dep) -> dict:
        """Forward values the backward loops read that depend on a state: kept by the forward
        loop (a tape over all rows), unless cheap arithmetic on the timelines gives them again
        (reading a tape costs less than a tanh, more than a multiplication)."""
        computed = set().union(*(m.keys() for m in sweeps)) if sweeps else set()
        find = self.leaf(known)
        free: dict = {}

        def recomputable(n: Node) -> bool:
            for m in ir.toposort([n], stop=free):
                if m not in free:
                    free[m] = (not m.batched or m.op == "read") or (
                        m.op in ("map", "broadcast", "take", "concat", "transpose", "total")
                        and not (m.op == "map" and _costly(m.attr)) and all(free[a] for a in m.args))
            return free[n]
        backward: dict = {}
        for n in ir.toposort(roots):
            backward[n] = n.op == "var" or any(backward[a] for a in n.args)

        def kept(n: Node) -> bool:
            return n.batched and not backward.get(n, True) and dep(n) and not recomputable(n)
        tapes: dict = {}
        for n in ir.toposort(roots, stop=lambda n: not n.batched or find(n) is not None or kept(n)):
            if not kept(n) or find(n) is not None:
                continue
            n = resolve(n)
            while n.op == "take":
                n = resolve(n.args[0])
            if n in computed and n not in tapes:
                width = _width(n)
                tapes[n] = Home(fn.array("tape", "R", width), 0, width)
        return tapes

    # -------------------------------------------------------- the functions
    def _start(self, name: str, signals: list) -> tuple:
        self.args[name] = signals
        args = ["T", "B", "lengths", *(f"ext_{n}" for n in signals), *(f"p_{p}" for p in self.params)]
        fn = Function(name, args, self.dtype)
        for p, shape in self.params.items():   # the layout the loops read: a vector 1-D, either way up
            fn.consts.append(f"p_{p} = dtype(p_{p})" if shape == () else
                             f"p_{p} = np.ascontiguousarray(p_{p}, dtype).reshape({(_length(shape),)})" if 1 in shape else
                             f"p_{p} = np.ascontiguousarray(p_{p}, dtype)")
        return fn, Consts(fn, fn.consts)

    def _hoist(self, fn: Function, consts: Consts, sweeps: list, dep) -> dict:
        """The products that read no state, over all rows before the time loops."""
        gemms = []
        for mapping in sweeps:
            for n in mapping.values():
                if n.batched and n.op == "matmul" and _kind(n) == "gemm" and not dep(n) and n not in gemms:
                    gemms.append(n)
        return Region(fn, consts, self.leaf({}), time=False).run([Sink(n, None) for n in gemms])

    def _time_loop(self, fn: Function, consts: Consts, direction: int, sinks: list, known: dict,
                   gradients: "Gradients | None" = None, contributions: dict | None = None,
                   consumed: list = (), seeded: list = ()) -> None:
        """One loop over time running a region per step; ``consumed``: ring rows to clear after;
        ``seeded``: states whose cotangents first take the seeds of a sequence's last steps."""
        with fn.block("for t in range(1, T + 1):" if direction > 0 else "for t in range(T, 0, -1):"):
            for s in seeded:
                self._seed(fn, s)
            top = len(fn.lines)
            region = Region(fn, consts, self.leaf(known), time=True)
            if gradients is not None:
                sinks = sinks + gradients.sinks(contributions, region)
            region.run(sinks)
            for home in consumed:   # this step's ring rows are free for step t - K
                region.loop_shifts.add(home.rows)
                fn.line(f"_zero({_view_name(home.rows)})")
            fn.lines[top:], views = _direct(fn.lines[top:], region.loop_shifts, region.written, region.across_rows)
            fn.lines[top:top] = ["    " * fn.depth + d for d in _row_defs(region.loop_shifts, views, "t - 1")]

    def _seed(self, fn: Function, s: str) -> None:
        """Add ``seed_<s>``, the cotangents of s's last K values of each sequence (K rows of B,
        oldest first), to ∇s(t) where t is one of them: the gradient of L + Σ <seed, s(end)>."""
        home, k = self.timeline(s, 0, "cot"), max(self.user_step.signals[s].history, 1)
        zeros = f"np.zeros({k} * B, dtype)" if home.width is None else f"np.zeros(({k} * B, {home.width}), dtype)"
        fn.seeds[fn.const(f"seed_{s}")] = (k, zeros)
        fn.cots.append(home.array)
        fn.const("tseed")
        row = f"((t - 1) % {home.ring}) * B" if home.ring else f"(t - 1 + {self.margins[s][0]}) * B"
        with fn.block("if t > tseed:"):
            with fn.block("for r in range(B):"):
                fn.line("j = lengths[r] - t")
                with fn.block(f"if j >= 0 and j < {k}:"):
                    fn.line(f"{home.array}[{row} + r] += seed_{s}[({k - 1} - j) * B + r]")

    def _forward_loops(self, fn, consts, sweeps, known, tapes) -> None:
        for sweep, mapping in zip(self.step.sweeps, sweeps):
            guard = "zero" if sweep.direction > 0 else "keep"   # past its end: zero, or its boundary values
            sinks = [Sink(mapping[self.step.updates[s]], self.timeline(s, 0), "=", guard) for s in sweep.states]
            sinks += [Sink(mapping[n], home, "=", "zero") for n, home in tapes.items() if n in mapping]
            self._time_loop(fn, consts, sweep.direction, sinks, known)

    def _forward(self) -> str:
        step = self.step
        sweeps, dep = self._sweeps(), self._depends_on_state()
        reads = set(step.updates) | {n.attr[0] for n in ir.toposort(step.roots(with_loss=False)) if n.op == "read"}
        fn, consts = self._start("forward", [n for n in step.signals if n in reads])
        known = self._hoist(fn, consts, sweeps, dep)
        self._forward_loops(fn, consts, sweeps, known, {})
        outs, sinks = [], []
        for o, node in step.outputs.items():
            width = None if node.shape == () else _length(node.shape)
            outs.append(fn.array(f"out_{o}_", "R", width, fresh=True))
            sinks.append(Sink(node, Home(outs[-1], 0, width)))
        if sinks:
            Region(fn, consts, self.leaf(known), time=False).run(sinks)
        fn.returns = "(" + "".join(f"{o}, " for o in outs) + ")"
        return fn

    def _loss_and_grad(self) -> str:
        step, adj = self.step, self.adjoint
        sweeps, dep = self._sweeps(), self._depends_on_state()
        fn, consts = self._start("loss_and_grad", list(step.signals))
        for s in step.states:
            home = self.timeline(s, 0, "cot")
            before, after = self.margins[s]
            rows = f"{home.ring} * B" if home.ring else f"(T + {before + after}) * B" if before + after else "R"
            fn.array("cot", rows, home.width, zero=True, name=f"cot_{s}")
        known = dict(self._hoist(fn, consts, sweeps, dep))
        backward = self._backward_sweeps()
        loss = Home(fn.array("acc", "B", None, zero=True), None, None)
        loss_sink = Sink(ir.emap(X(0) * X(1), [LOSS_SEED, step.loss]), loss, "+=", "zero")
        roots = [s.node for _, sinks, _ in backward for s in sinks] + \
                [n for _, _, grads in backward for n in grads.values()] + ([loss_sink.node] if self.fuse_loss else [])
        tapes = self._tapes(fn, roots, sweeps, known, dep)
        self._forward_loops(fn, consts, sweeps, known, tapes)
        known.update(tapes)
        gradients = Gradients(fn, self.boundary)
        if not self.fuse_loss:   # the loss and the cotangents it sends, over all rows
            sinks = [loss_sink] + [Sink(node, self.timeline(name, off, "cot"), "+=", "zero")
                                   for (name, off), node in adj.reads[LOSS].items()]
            region = Region(fn, consts, self.leaf({**known, LOSS_SEED: "wt"}), time=False)
            region.run(sinks + gradients.sinks(adj.params[LOSS], region))
        for k, (sweep, sinks, contributions) in enumerate(backward):   # the adjoint step, backwards in time
            sinks = sinks + ([loss_sink] if self.fuse_loss and k == 0 else [])
            rings = [self.timeline(s, 0, "cot") for s in sweep.states if s in self.rings]
            self._time_loop(fn, consts, -sweep.direction, sinks, {**known, LOSS_SEED: "wt"},
                            gradients, contributions, rings, [s for s in sweep.states if sweep.direction > 0])
        grads = gradients.finish(consts, self.params)
        fn.returns = f"(dtype({loss.array}.sum()), " + "".join(f"{g}, " for g in grads) + ")"
        return fn
