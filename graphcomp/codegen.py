"""Code generation: the step and its adjoint as Python source with explicit loops, for Numba.

Values are laid out batch-major: a batched vector is an ``(R, n)`` array, a batched scalar
``(R,)``, where R is B inside a time loop and T·B outside it. What reads no state is hoisted
out of the time loops and computed once over all T·B rows (input projections, outputs, the
loss and its cotangents, parameter gradients), so the loops hold only the recurrence; a
parameter's gradient Σ_t Σ_b δ hᵀ becomes one matrix product over the T·B rows.
"""
from __future__ import annotations

import itertools

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from . import ir
from .autodiff import LOSS, adjoint, grad_var
from .ir import X, Node
from .step import Step

LOSS_SEED = ir.var(("grad", LOSS), ())   # per-row weight of the loss: valid / B


class Unsupported(Exception):
    """A model feature the generator does not handle (such a model runs on the NumPy backend)."""


class _Printer(PythonCodePrinter):
    """Scalar sympy expressions as Python that Numba compiles."""

    def _print_sigmoid(self, e):
        return f"_sigmoid({self._print(e.args[0])})"

    def _print_relu(self, e):
        return f"max({self._print(e.args[0])}, 0.0)"

    def _print_Heaviside(self, e):
        x = self._print(e.args[0])
        h0 = self._print(e.args[1]) if len(e.args) > 1 else "0.5"
        return f"(1.0 if {x} > 0 else ({h0} if {x} == 0 else 0.0))"


def scalar_code(expr: sp.Expr) -> str:
    return _Printer({"standard": "python3"}).doprint(expr)


def _vector(shape: tuple) -> int | None:
    """The length of a vector-like per-example shape (n,1) or (1,n); None for a scalar."""
    if shape == ():
        return None
    if 1 in shape:
        return shape[0] * shape[1]
    raise Unsupported(f"a per-example {shape[0]}x{shape[1]} matrix value")


class Emitter:
    """Writes the code of IR nodes over R rows. ``names`` maps nodes whose value already has
    an array (leaves, hoisted values) to a Python expression for it."""

    def __init__(self, gen: "Generator", rows: str, names: dict, mask: str | None = None):
        self.gen, self.rows, self.names, self.mask = gen, rows, dict(names), mask

    def value(self, node: Node) -> str:
        """A name for the node's value: an array (R, n) / (R,), or a constant."""
        if node not in self.names:
            if not node.batched:
                self.names[node] = self.gen.constant(node)
            else:
                self.emit([node])
        name = self.names[node]
        if not name.isidentifier() and node.batched:   # a slice or view: bind it once
            name = self.names[node] = self.gen.bind(name)
        return name

    def emit(self, roots: list, into: dict | None = None) -> None:
        """Compute ``roots`` (and what they need); ``into`` maps a root to the array it is
        written to (in place, row by row, under the mask ``valid``)."""
        into = into or {}
        for root, dest in into.items():
            if root in self.names or root.op in ir.LEAVES:   # already a value: copy it in
                n = _vector(root.shape)
                src = self._element(root, "i")
                dest = self.gen.bind(dest)
                self.gen.loop(self.rows, n, [f"{dest}[r{'' if n is None else ', i'}] = {src}"], self.mask)
        roots = [r for r in roots if r not in self.names and r.op not in ir.LEAVES]
        order = ir.toposort(roots, stop=set(self.names))
        uses: dict = {}
        for node in order:
            if node not in self.names:
                for a in node.args:
                    uses[a] = uses.get(a, 0) + 1
        for node in order:
            if node in self.names or (not node.batched and node not in into):
                continue
            fusable = node.op == "map" and node not in roots and uses.get(node, 0) == 1 and \
                all(u.op == "map" for u in order if node in u.args)
            if fusable:
                continue
            self._compute(node, into.get(node), uses)

    def _fused(self, node: Node, uses: dict) -> tuple[sp.Expr, list]:
        """The elementwise expression of a map with its single-use map arguments inlined, and
        the nodes it reads (as X(0), X(1), ...)."""
        leaves: list = []

        def walk(n):
            if n.op == "map" and n not in self.names and n.batched and uses.get(n, 0) == 1 and n is not node \
                    or n is node:
                return n.attr.xreplace({X(i): walk(a) for i, a in enumerate(n.args)})
            if n not in leaves:
                leaves.append(n)
            return sp.Symbol(f"a{leaves.index(n)}")

        return walk(node), leaves

    def _element(self, node: Node, index: str) -> str:
        """Element access for one row r (and component ``index``) of a node's value."""
        name = self.value(node)
        n = _vector(node.shape)
        if not node.batched:
            return name if n is None else f"{name}[{index}]"
        return f"{name}[r]" if n is None else f"{name}[r, {index}]"

    def _compute(self, node: Node, dest: str | None, uses: dict) -> None:
        g, R = self.gen, self.rows
        n = _vector(node.shape)
        if dest is not None and node.op != "map":   # computed whole, then copied in under the mask
            self._compute(node, None, uses)
            src, dest = self._element(node, "i"), g.bind(dest)
            g.loop(R, n, [f"{dest}[r{'' if n is None else ', i'}] = {src}"], self.mask)
            return
        if node.op == "transpose":
            self.names[node] = self.value(node.args[0])   # a batched row and column share a layout
            return
        if dest is not None:
            dest = g.bind(dest)
        out = dest or g.temp(node, R)
        if node.op == "map":
            expr, leaves = self._fused(node, uses)
            loads = "; ".join(f"a{k} = {self._element(l, 'i')}" for k, l in enumerate(leaves))
            code = scalar_code(expr)
            target = f"{out}[r]" if n is None else f"{out}[r, i]"
            g.loop(R, n, [loads, f"{target} = {code}"], self.mask if dest else None)
        elif node.op == "matmul":
            self._matmul(node, out)
        elif node.op == "concat":
            lo = 0
            for part in node.args:
                k = _vector(part.shape)
                g.loop(R, k, [f"{out}[r, {lo} + i] = {self._element(part, 'i')}"])
                lo += k
        elif node.op == "take":
            lo, hi = node.attr
            g.loop(R, n, [f"{out}[r, i] = {self._element(node.args[0], f'{lo} + i')}"])
        elif node.op == "total":
            g.row_sums(R, _vector(node.args[0].shape), self._element(node.args[0], "i"), f"{out}[r]")
        elif node.op == "broadcast":
            g.loop(R, n, [f"{out}[r, i] = {self._element(node.args[0], 'i')}"])
        elif node.op == "logsumexp":
            k = _vector(node.args[0].shape)
            a = self._element(node.args[0], "i")
            g.line(f"for r in range({R}):")
            g.line(f"    m = -np.inf")
            g.line(f"    for i in range({k}):")
            g.line(f"        m = max(m, {a})")
            g.line(f"    acc = 0.0")
            g.line(f"    for i in range({k}):")
            g.line(f"        acc += math.exp({a} - m)")
            g.line(f"    {out}[r] = m + math.log(acc)")
        else:
            raise Unsupported(f"op {node.op!r}")
        self.names[node] = out

    def _matmul(self, node: Node, out: str) -> None:
        a, b = node.args
        g = self.gen
        if not a.batched and b.batched and b.shape[1] == 1:          # W v: rows times Wᵀ
            g.line(f"{out}[:] = np.dot({self.value(b)}, {g.transposed(a)})")
        elif a.batched and not b.batched and a.shape[0] == 1:        # vᵀ W
            g.line(f"{out}[:] = np.dot({self.value(a)}, {g.constant(b)})")
        elif a.batched and b.batched and a.shape[0] == 1 and b.shape[1] == 1:   # vᵀ w, per row
            term = f"{self._element(a, 'i')} * {self._element(b, 'i')}"
            g.row_sums(self.rows, a.shape[1], term, f"{out}[r, 0]")
        else:
            raise Unsupported(f"a matrix product of shapes {a.shape} and {b.shape} per example")


class Generator:
    """Builds one module's source: constants, temporaries, loops."""

    def __init__(self, step: Step):
        self.step = step
        self.lines: list = []
        self.depth = 1
        self.counter = itertools.count()
        self.constants: dict = {}
        self.const_lines: list = []
        self.time_loop = None   # (line index, depth) of the time loop being written

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def bind(self, expr: str) -> str:
        """A local name for an array expression (a view), assigned here once."""
        if expr.isidentifier():
            return expr
        name = f"u{next(self.counter)}"
        self.line(f"{name} = {expr}")
        return name

    def temp(self, node: Node, rows: str) -> str:
        """A new array for a node's value; inside a time loop it is allocated once, before it."""
        name = f"v{next(self.counter)}"
        n = _vector(node.shape)
        text = f"{name} = np.empty({rows if n is None else f'({rows}, {n})'}, dtype)"
        if self.time_loop is None:
            self.line(text)
        else:
            index, depth = self.time_loop
            self.lines.insert(index, "    " * depth + text)
            self.time_loop = (index + 1, depth)
        return name

    def begin_time_loop(self, times: str) -> None:
        self.time_loop = (len(self.lines), self.depth)
        self.line(f"for t in {times}:")
        self.depth += 1

    def end_time_loop(self) -> None:
        self.depth -= 1
        self.time_loop = None

    def row_sums(self, rows: str, n: int, term: str, target: str) -> None:
        """For each row r: target = Σ_i term."""
        self.line(f"for r in range({rows}):")
        self.line("    acc = 0.0")
        self.line(f"    for i in range({n}):")
        self.line(f"        acc += {term}")
        self.line(f"    {target} = acc")

    def loop(self, rows: str, n: int | None, body: list, mask: str | None = None) -> None:
        """``for r in range(rows)`` [``if mask``] [``for i in range(n)``]: body."""
        start = self.depth
        self.line(f"for r in range({rows}):")
        self.depth += 1
        if mask:
            self.line(f"if {mask}:")
            self.depth += 1
        if n is not None:
            self.line(f"for i in range({n}):")
            self.depth += 1
        for text in body:
            if text:
                self.line(text)
        self.depth = start

    def constant(self, node: Node) -> str:
        """An unbatched value (parameters and what is computed from them alone)."""
        if node in self.constants:
            return self.constants[node]
        if node.op == "param":
            name = f"p_{node.attr}"
        elif node.op == "const":
            if node.shape == ():
                return f"{float(node.attr)!r}"
            name = f"c{next(self.counter)}"
            n = _vector(node.shape)
            self.const_lines.append(f"{name} = np.full({n}, {float(node.attr)!r}, dtype)")
        elif node.op == "transpose" and node.args[0].op == "param":
            name = f"{self.constant(node.args[0])}.T"
        else:
            raise Unsupported(f"a parameter-only {node.op}")
        self.constants[node] = name
        return name

    def transposed(self, node: Node) -> str:
        """A C-contiguous Wᵀ for the matrix products of rows."""
        key = ("T", node)
        if key not in self.constants:
            if node.op == "transpose" and node.args[0].op == "param":
                self.constants[key] = self.constant(node.args[0])
            elif node.op == "param":
                name = f"{self.constant(node)}_T"
                self.const_lines.append(f"{name} = np.ascontiguousarray({self.constant(node)}.T)")
                self.constants[key] = name
            else:
                raise Unsupported(f"a product with a computed matrix {node!r}")
        return self.constants[key]


# ---------------------------------------------------------------- kernels

HEADER = '''"""Generated by graphcomp: the forward and loss-and-gradient kernels of one recurrence."""
import math

import numpy as np
from numba import njit

dtype = np.{dtype}


@njit(cache=True, inline="always")
def _sigmoid(x):
    return 0.5 * (1.0 + math.tanh(0.5 * x))
'''


def _reads_state(step: Step, roots: list) -> dict:
    """For every node under ``roots``: does its value depend on a state?"""
    dep = {}
    for node in ir.toposort(roots):
        if node.op == "read":
            dep[node] = node.attr[0] in step.updates
        else:
            dep[node] = any(dep[a] for a in node.args)
    return dep


class KernelSource:
    """The generated module for a step, and the argument order of its two functions."""

    def __init__(self, step: Step, dtype: str):
        self.step = step
        self.adjoint = adjoint(step, loss_seed=LOSS_SEED)
        self.margins = {n: (max(0, -min(i.offsets, default=0)), max(0, max(i.offsets, default=0)))
                        for n, i in step.signals.items()}
        self.signals = list(step.signals)
        self.params = list(step.params)
        for name, info in step.signals.items():
            if info.shape:
                _vector(info.shape)   # raises for a matrix-valued signal
        functions = [self._function("forward", with_grad=False)]
        if step.loss is not None:
            functions.append(self._function("loss_and_grad", with_grad=True))
        self.text = HEADER.format(dtype=dtype) + "\n\n" + "\n\n\n".join(functions) + "\n"

    # the arguments: sizes, lengths, (loss weights), every signal's timeline, (cotangents), params
    def arguments(self, with_grad: bool) -> list:
        args = ["T", "B", "lengths"] + (["w"] if with_grad else [])
        args += [f"ext_{n}" for n in self.signals]
        if with_grad:
            args += [f"cot_{s}" for s in self.step.states]
        return args + [f"p_{p}" for p in self.params]

    def _read(self, name: str, offset: int, t: str) -> str:
        return f"ext_{name}[{t} - 1 + {offset + self.margins[name][0]}]"

    def _rows(self, array: str, name: str, offset: int) -> str:
        """All T steps of a timeline, shifted by ``offset``, as (T·B, n) rows."""
        lo = offset + self.margins[name][0]
        n = _vector(self.step.signals[name].shape)
        shape = "R" if n is None else f"(R, {n})"
        return f"{array}[{lo}:{lo} + T].reshape({shape})"

    def _row_names(self, roots: list, grads: bool) -> dict:
        names = {}
        for node in ir.toposort(roots):
            if node.op == "read":
                names[node] = self._rows(f"ext_{node.attr[0]}", *node.attr)
            elif node.op == "var" and node is LOSS_SEED:
                names[node] = "w"
            elif node.op == "var" and grads:
                names[node] = self._rows(f"cot_{node.attr[1]}", node.attr[1], 0)
        return names

    def _function(self, fname: str, with_grad: bool) -> str:
        step, adj = self.step, self.adjoint
        gen = Generator(step)
        gen.line("R = T * B")
        # the recurrence's parts that read no state, over all rows at once
        roots = list(step.updates.values())
        dep = _reads_state(step, roots)
        hoist = [n for n in ir.toposort(roots) if n.batched and not dep[n] and n.op != "read"
                 and (n in roots or any(dep[u] and n in u.args for u in dep))]
        hoisted = Emitter(gen, "R", self._row_names(hoist, False))
        hoisted.emit(hoist)
        # values of the forward step that the adjoint reads are kept (the tape), not recomputed
        inside = {n for n in dep if dep[n]}
        adjoint_nodes = ir.toposort([n for who in adj.reads for n in adj.reads[who].values()] +
                                    [n for who in adj.params for n in adj.params[who].values()], stop=inside)
        tape = {n: f"tape{k}" for k, n in enumerate(n for n in adjoint_nodes
                                                     if n in inside and n.args and n.op != "transpose")}
        if with_grad:
            for node, name in tape.items():
                n = _vector(node.shape)
                gen.line(f"{name} = np.zeros((T, B{'' if n is None else f', {n}'}), dtype)")
        for sweep in step.sweeps:
            gen.begin_time_loop("range(1, T + 1)" if sweep.direction > 0 else "range(T, 0, -1)")
            names = {n: f"{hoisted.names[n]}[(t - 1) * B:t * B]" for n in hoist}
            em = Emitter(gen, "B", names, mask="t <= lengths[r]")
            for node in ir.toposort([step.updates[s] for s in sweep.states]):
                if node.op == "read":
                    em.names.setdefault(node, self._read(*node.attr, "t"))
            for s in sweep.states:
                root = step.updates[s]
                if with_grad:
                    kept = [n for n in ir.toposort([root]) if n in tape and n not in em.names and n is not root]
                    em.emit(kept, into={n: f"{tape[n]}[t - 1]" for n in kept})
                em.emit([root], into={root: self._read(s, 0, "t")})
            gen.end_time_loop()
        if not with_grad:
            outs = list(step.outputs.values())
            em = Emitter(gen, "R", self._row_names(outs, False))
            values = [em.value(o) for o in outs]
            gen.line("return (" + "".join(f"{v}, " for v in values) + ")")
            return self._wrap(fname, gen, with_grad=False)
        # the loss and what it sends to the states it reads, over all rows
        every = [node for who in adj.params for node in adj.params[who].values()]
        names = self._row_names([step.loss, *adj.reads[LOSS].values(), *every], True)
        names.update({n: hoisted.names[n] for n in hoist})
        names.update({n: f"{name}.reshape({'R' if _vector(n.shape) is None else f'(R, {_vector(n.shape)})'})"
                      for n, name in tape.items()})
        rows = Emitter(gen, "R", names)
        value = rows.value(step.loss)
        gen.line(f"loss = np.sum(w * {value})")
        for (name, off), node in adj.reads[LOSS].items():
            self._accumulate(gen, rows, node, self._rows(f"cot_{name}", name, off), "R")
        # the adjoint step, backwards in time
        for sweep in reversed(step.sweeps):
            gen.begin_time_loop("range(T, 0, -1)" if sweep.direction > 0 else "range(1, T + 1)")
            names = {n: f"{hoisted.names[n]}[(t - 1) * B:t * B]" for n in hoist}
            names.update({n: f"{name}[t - 1]" for n, name in tape.items()})
            em = Emitter(gen, "B", names)
            for s in reversed(sweep.states):
                seed = f"cot_{s}[t - 1 + {self.margins[s][0]}]"
                n = _vector(step.signals[s].shape)
                gen.line("for r in range(B):")
                gen.line("    if t > lengths[r]:")
                gen.line(f"        {seed}[r] = 0.0" if n is None else f"        {seed}[r, :] = 0.0")
                reads = adj.reads[s]
                for node in ir.toposort(list(reads.values())):
                    if node.op == "read":
                        em.names.setdefault(node, self._read(*node.attr, "t"))
                    elif node.op == "var":
                        em.names.setdefault(node, f"cot_{node.attr[1]}[t - 1 + {self.margins[node.attr[1]][0]}]")
                for (name, off), node in reads.items():
                    self._accumulate(gen, em, node, self._read(name, off, "t").replace("ext_", "cot_", 1), "B")
            gen.end_time_loop()
        # parameter gradients: sums over all rows, a matrix product for δ hᵀ
        grads = []
        for p, shape in step.params.items():
            name = f"g_{p}"
            grads.append(name)
            gen.line(f"{name} = {_zeros(shape)}")
            for who in adj.params:
                if p in adj.params[who]:
                    self._reduce(gen, rows, adj.params[who][p], name)
        gen.line("return (loss, " + "".join(f"{g}, " for g in grads) + ")")
        return self._wrap(fname, gen, with_grad=True)

    def _accumulate(self, gen, em, node, dest: str, rows: str) -> None:
        n = _vector(node.shape)
        src = em._element(node, "i")
        dest = gen.bind(dest)
        gen.loop(rows, n, [f"{dest}[r{'' if n is None else ', i'}] += {src}"])

    def _reduce(self, gen, em, node, grad: str) -> None:
        """grad += Σ over rows of a per-example contribution."""
        if node.op == "matmul" and all(a.batched for a in node.args) and node.args[0].shape[1] == 1:
            a, b = node.args
            gen.line(f"{grad} += np.dot(np.ascontiguousarray({em.value(a)}.T), {em.value(b)})")
            return
        if not node.batched:
            raise Unsupported("a parameter gradient that is the same for every example")
        n = _vector(node.shape)
        src = em._element(node, "i")
        if n is None:
            gen.line(f"for r in range(R):")
            gen.line(f"    {grad} += {src}")
        else:
            gen.line(f"for r in range(R):")
            gen.line(f"    for i in range({n}):")
            gen.line(f"        {grad}[i] += {src}")

    def _wrap(self, fname: str, gen: Generator, with_grad: bool) -> str:
        head = [f"@njit(cache=True, error_model='numpy')",
                f"def {fname}({', '.join(self.arguments(with_grad))}):"]
        consts = ["    " + c for c in gen.const_lines]
        return "\n".join(head + consts + gen.lines)


def _zeros(shape: tuple) -> str:
    if shape == ():
        return "0.0"
    if shape[1] == 1:
        return f"np.zeros({shape[0]}, dtype)"
    return f"np.zeros(({shape[0]}, {shape[1]}), dtype)"
