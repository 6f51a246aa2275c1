"""The kernel plan: what a kernel does, as small frozen dataclasses with no code in them.

A plan is the schedule of a step and its adjoint (in Halide's sense): loops over a domain,
products with weight matrices, fused loops over rows and components, loads, stores and their
guards, and the memory they use. A back end renders it; ``pretty`` prints it; ``check``
verifies it after it is built.

Values are laid out batch-major. A buffer holds ``rows`` rows of ``width`` components (one
value per row when ``width`` is None). A ``Place`` is a block of rows of one buffer: in a loop
over steps, the B rows of step ``t + shift`` (for a timeline with margins, a ring, or a
per-step block); in a pass over all rows, every step's rows moved by ``shift`` steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..errors import GraphcompError

# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class Buffer:
    """An array of the kernel. ``rows``: ``("steps", extra)`` (T + extra steps of B rows),
    ``("grid", ((before, after), ...))`` (every point of a grid with these margins per axis),
    ``("ring", K)`` (K steps of B rows, step t at (t - 1) mod K), ``("block", 1)`` (B rows: one
    step) or ``("one", 1)`` (one row: a sum over all rows). ``before``: steps stored before
    step 1 (a timeline's margin). ``role`` says what it holds (for the driver and for people):
    signal, tape, cot, temp, acc, factor, grad, out."""

    name: str
    role: str
    rows: tuple
    width: int | None
    before: int = 0
    zero: bool = False


@dataclass(frozen=True)
class Place:
    """A block of a buffer's rows, from column ``col``: step ``t + shift`` in a step loop."""

    buffer: str
    shift: int = 0
    col: int = 0

    def at(self, col: int) -> "Place":
        return Place(self.buffer, self.shift, self.col + col)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Load:
    """A component of a place: ``comp`` is "i" (the component loop's) or 0."""

    place: Place
    comp: str | int = "i"


@dataclass(frozen=True)
class Local:
    """A value of the current row kept in a local variable."""

    name: str


@dataclass(frozen=True)
class Value:
    """An unbatched value the driver computes (a parameter, or a value of parameters alone):
    a scalar, or component ``comp`` of a vector."""

    name: str
    comp: str | int | None = None


@dataclass(frozen=True)
class Weight:
    """The loss's weight of the current row: 1/B while its sequence lasts, else 0."""


Operand = Load | Local | Value | Weight


@dataclass(frozen=True)
class Expr:
    """A scalar sympy expression in ``X(0), X(1), ...`` (see ``ir.X``) over ``args``; ``vector``:
    computed inside a loop over components (branch-free functions vectorize there)."""

    expr: sp.Expr
    args: tuple
    vector: bool = False


# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Let:
    """``name = expr``, or with ``op="+="`` an accumulation (``name`` set before)."""

    name: str
    expr: Expr
    op: str = "="


@dataclass(frozen=True)
class Store:
    """``place[row, comp] op expr``; ``guard`` says what a row past its sequence's end gets: None
    (the value), "zero" (0, or nothing added) or "keep" (its old value)."""

    place: Place
    expr: Expr
    op: str = "="
    guard: str | None = None
    comp: str | int = "i"


@dataclass(frozen=True)
class Components:
    """``for i in range(n)``: one loop over the components of vectors of length ``n``."""

    n: int
    body: tuple


@dataclass(frozen=True)
class Rows:
    """A loop over the rows of a block (``span="block"``: the B rows of step t) or of every
    step (``span="all"``). ``guard``: "branch" (rows within their sequence run ``body``, the
    others ``otherwise``), "select" (every store chooses its value: the loop vectorizes across
    rows), or None (no guarded store)."""

    span: str
    body: tuple
    guard: str | None = None
    otherwise: tuple = ()
    weight: bool = False


@dataclass(frozen=True)
class Product:
    """``out = src @ matrix``: rows times an unbatched (k, n) matrix (W v is written vᵀ Wᵀ),
    for the rows of a block or of every step."""

    out: Place
    src: Place
    matrix: str
    span: str
    k: int
    n: int


@dataclass(frozen=True)
class Outer:
    """``grad (+)= coef · aᵀ b`` over every step's rows: a weight matrix's gradient."""

    grad: str
    a: Place
    b: Place
    coef: float = 1.0
    add: bool = False


@dataclass(frozen=True)
class Seed:
    """Add ``seed``'s rows (the cotangents of each sequence's last ``k`` values of a state,
    oldest first) into ``place`` at the steps they belong to (the seeded kernels)."""

    place: Place
    seed: str
    k: int


@dataclass(frozen=True)
class Clear:
    """Zero a place's block (a ring's rows, free again for a later step)."""

    place: Place


@dataclass(frozen=True)
class Steps:
    """A loop over the domain's steps, forward (``direction=1``) or backwards; ``note`` names
    what it computes, for people reading the generated code."""

    direction: int
    body: tuple
    note: str = ""


@dataclass(frozen=True)
class Kernel:
    """One kernel: its signals' timelines (in order), the unbatched values the driver gives
    (name -> IR node), its buffers, its statements, and what it returns: the loss's buffer,
    each boundary value's gradient sum (node -> buffer), outputs and states (name -> buffer),
    and the initial-step cotangents of seeded states (name -> buffer)."""

    name: str
    signals: tuple
    values: dict
    buffers: tuple
    body: tuple
    loss: str | None = None
    sums: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)   # state -> (seed buffer, cot buffer, k)
    axes: int = 1                                # 1 over time, else a grid's axes
    tree: int = 0                                # over trees: the child slots read, else 0

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)


# ---------------------------------------------------------------- printing and checking


def _shift(k) -> str:
    if isinstance(k, tuple) and k[:1] == ("child",):
        return f"child{k[1]}"
    return f"t{k:+d}" if isinstance(k, int) else "(" + ",".join(f"{d:+d}" for d in k) + ")"


def _operand(a) -> str:
    if isinstance(a, Load):
        p = a.place
        return f"{p.buffer}[{_shift(p.shift)}][{p.col}+{a.comp}]" if p.col else f"{p.buffer}[{_shift(p.shift)}][{a.comp}]"
    if isinstance(a, Local):
        return a.name
    if isinstance(a, Value):
        return a.name if a.comp is None else f"{a.name}[{a.comp}]"
    return "weight"


def _expr(e: Expr) -> str:
    from ..ir import X
    return str(e.expr.xreplace({X(k): sp.Symbol(_operand(a)) for k, a in enumerate(e.args)}))


def _place(p: Place) -> str:
    return f"{p.buffer}[{_shift(p.shift)}]" + (f"[{p.col}:]" if p.col else "")


def pretty(kernel: Kernel) -> str:
    """The plan as indented text, one line per statement."""
    lines = [f"kernel {kernel.name}({', '.join(kernel.signals)}; {', '.join(kernel.values)})"]
    for b in kernel.buffers:
        extra = f"{b.rows[1]:+d}" if isinstance(b.rows[1], int) else str(list(b.rows[1]))
        lines.append(f"  buffer {b.name}: {b.role} {b.rows[0]}{extra} x {b.width or 1}"
                     + (f" before {b.before}" if b.before else "") + (" zero" if b.zero else ""))

    def walk(stmts, depth):
        pad = "  " * depth
        for s in stmts:
            if isinstance(s, Steps):
                way = (" ".join("+" if d > 0 else "-" for d in s.direction) if isinstance(s.direction, tuple)
                       else "forward" if s.direction > 0 else "backward")
                lines.append(f"{pad}steps {way}" + (f"  # {s.note}" if s.note else ""))
                walk(s.body, depth + 1)
            elif isinstance(s, Rows):
                note = computes(kernel, s)
                lines.append(f"{pad}rows {s.span}" + (f" guard={s.guard}" if s.guard else "") + (f"  # {note}" if note else ""))
                walk(s.body, depth + 1)
                if s.otherwise:
                    lines.append(f"{pad}otherwise")
                    walk(s.otherwise, depth + 1)
            elif isinstance(s, Components):
                lines.append(f"{pad}components {s.n}")
                walk(s.body, depth + 1)
            elif isinstance(s, Let):
                lines.append(f"{pad}{s.name} {s.op} {_expr(s.expr)}")
            elif isinstance(s, Store):
                guard = f"  [{s.guard}]" if s.guard else ""
                lines.append(f"{pad}{_place(s.place)}[{s.comp}] {s.op} {_expr(s.expr)}{guard}")
            elif isinstance(s, Product):
                lines.append(f"{pad}{_place(s.out)}[:{s.n}] = {_place(s.src)}[:{s.k}] @ {s.matrix}  ({s.span})")
            elif isinstance(s, Outer):
                lines.append(f"{pad}{s.grad} {'+=' if s.add else '='} {s.coef:g} * {_place(s.a)}ᵀ {_place(s.b)}")
            elif isinstance(s, Seed):
                lines.append(f"{pad}seed {_place(s.place)} += {s.seed} (last {s.k})")
            elif isinstance(s, Clear):
                lines.append(f"{pad}clear {_place(s.place)}")
    walk(kernel.body, 1)
    return "\n".join(lines)


def _when(shift, axes: int) -> str:
    """A place's step for people: t - 1, a tree node's child, or a grid point (i0-1, i1)."""
    if isinstance(shift, int) and axes > 1:
        shift = (shift,) * axes
    if isinstance(shift, int):
        return "t" if shift == 0 else f"t {'+' if shift > 0 else '-'} {abs(shift)}"
    if shift[:1] == ("child",):
        return "child"
    return ", ".join(f"i{axis}" + (f"{d:+d}" if d else "") for axis, d in enumerate(shift))


def computes(kernel: Kernel, rows: Rows) -> str:
    """What a nest of loops stores, for people reading a plan or generated code: the signals,
    cotangents and outputs it writes, the loss and the gradient sums it adds to."""
    said: dict = {}
    for s in walk(rows.body):
        if not isinstance(s, Store):
            continue
        b, when = kernel.buffer(s.place.buffer), _when(s.place.shift, kernel.axes)
        label = {"signal": f"{b.name[:-1]}({when})", "cot": f"∇{b.name[1:-1]}({when})",
                 "out": f"output {b.name[4:]}({when})", "factor": "rows for the weight gradients",
                 "acc": "the loss" if b.name == kernel.loss else "gradient sums"}.get(b.role)
        if label:
            said[label + (" +=" if s.op == "+=" and b.role == "cot" else "")] = None
    return ", ".join(said)


def walk(stmts):
    """Every statement, nested ones included, in order."""
    for s in stmts:
        yield s
        for inner in (getattr(s, "body", ()), getattr(s, "otherwise", ())):
            yield from walk(inner)


def check(kernel: Kernel) -> None:
    """Structural invariants: every place names a buffer, every local is set before it is
    read, components stay within their buffers, products and stores sit where they can run."""
    buffers = {b.name: b for b in kernel.buffers}
    if len(buffers) != len(kernel.buffers):
        raise GraphcompError(f"plan {kernel.name}: two buffers share a name")

    def place(p: Place, n: int | None) -> None:
        b = buffers.get(p.buffer)
        if b is None:
            raise GraphcompError(f"plan {kernel.name}: no buffer {p.buffer!r}")
        if n is not None and (b.width is None or p.col + n > b.width):
            raise GraphcompError(f"plan {kernel.name}: {n} components from column {p.col} overflow {p.buffer!r}")

    def operands(e: Expr, defined: set, n: int | None) -> None:
        for a in e.args:
            if isinstance(a, Local) and a.name not in defined:
                raise GraphcompError(f"plan {kernel.name}: local {a.name!r} read before it is set")
            if isinstance(a, Load):
                place(a.place, n if a.comp == "i" else None)
            if isinstance(a, Value) and a.name not in kernel.values:
                raise GraphcompError(f"plan {kernel.name}: no value {a.name!r}")

    def visit(stmts, defined: set, n: int | None, depth: str) -> None:
        for s in stmts:
            if isinstance(s, Steps):
                visit(s.body, set(defined), n, "steps")
            elif isinstance(s, Rows):
                if s.span == "block" and depth != "steps":
                    raise GraphcompError(f"plan {kernel.name}: a block of rows outside a loop over steps")
                inner = set(defined)
                visit(s.body, inner, n, "rows")
                visit(s.otherwise, set(defined), n, "rows")
            elif isinstance(s, Components):
                visit(s.body, defined, s.n, depth)
            elif isinstance(s, Let):
                operands(s.expr, defined | ({s.name} if s.op == "+=" else set()), n)
                if s.op == "+=" and s.name not in defined:
                    raise GraphcompError(f"plan {kernel.name}: accumulation into unset {s.name!r}")
                defined.add(s.name)
            elif isinstance(s, Store):
                place(s.place, n if s.comp == "i" else None)
                operands(s.expr, defined, n)
            elif isinstance(s, Product):
                place(s.src, s.k)
                place(s.out, s.n)
            elif isinstance(s, (Outer, Seed, Clear)):
                for p in (getattr(s, f) for f in ("out", "src", "a", "b", "place") if hasattr(s, f)):
                    place(p, None)
    visit(kernel.body, set(), None, "top")
