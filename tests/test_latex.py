"""Equations in textbook notation, and the strong test of them: every printed equation is read
back into numbers and must equal the model's own expression at random points."""
import importlib.util
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sympy.core.function import AppliedUndef
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

import graphcomp as gc
from graphcomp.lang.declare import HAS_CHILD, Child, ChildOf, CrossEntropy, IsChild, MeanSquaredError, Parent, SignalRef
from graphcomp.ir.core import Reduction
from graphcomp.views.latex import latex, text

from catalogue import CATALOGUE, bidirectional, delays, elman, lstm, nonlinear_map, vector_delays
from test_property import cases

t = gc.t
TV = 3    # the value of T (and I, J), the steps (cells) a parameter's gradient sums over
EXTENTS = ("T", "I", "J")
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the model's values

def key_of(leaf) -> tuple:
    """(name, point) of a leaf at a concrete point (a time, a grid cell, a tree node), point
    None for a parameter; with its shape."""
    if isinstance(leaf, SignalRef):
        return (leaf.name, leaf.time), tuple(int(n) for n in leaf.shape)
    if isinstance(leaf, AppliedUndef):
        return (leaf.func.__name__, leaf.args), ()
    if isinstance(leaf, IsChild):
        return ("is_child", leaf.args), ()
    if isinstance(leaf, sp.MatrixSymbol):
        return (leaf.name, None), tuple(int(n) for n in leaf.shape)
    return (leaf.name, None), ()


class Env:
    """A random value for every leaf: signals at each concrete point, parameters once."""

    def __init__(self, seed: int):
        self.rng, self.values = np.random.default_rng(seed), {}

    def value(self, leaf):
        if isinstance(leaf, sp.Symbol) and leaf.name in EXTENTS:
            return TV
        key, shape = key_of(leaf)
        if key not in self.values:
            self.values[key] = self.rng.normal(0, 0.6, shape)
        return self.values[key]


def leaves(expr, axes=(t,)) -> set:
    """Signals, parameters, adjoints, tree indicators and T: everything an equation reads."""
    out = expr.atoms(SignalRef, AppliedUndef, sp.MatrixSymbol, IsChild)
    return out | {s for s in expr.free_symbols
                  if isinstance(s, sp.Symbol) and s not in axes and not isinstance(s, Child)}


def explicit(e) -> np.ndarray:
    """An expression of explicit matrices, evaluated by sympy, as NumPy floats."""
    e = e.doit()
    if isinstance(e, (sp.MatrixExpr, sp.MatrixBase)):
        return np.array(e.as_explicit().evalf(), dtype=float)
    return np.array(float(e.evalf()))


class Applied(sp.MatrixExpr):
    """f applied to every entry of a matrix, left alone by sympy until it is evaluated here
    (ElementwiseApplyFunction calls f on a 1x1 matrix when it is rebuilt)."""

    shape = property(lambda self: self.args[1].shape)


def applied(e):
    """``e`` with every ElementwiseApplyFunction made an ``Applied`` (bottom-up, by hand: sympy's
    replace would rebuild the outer ones first)."""
    if not e.args:
        return e
    args = [applied(a) for a in e.args]
    if isinstance(e, ElementwiseApplyFunction):
        return Applied(*args)
    return e.func(*args) if args != list(e.args) else e


def sympy_value(expr, env: Env, at: dict) -> np.ndarray:
    """``expr`` evaluated by sympy itself at the point ``at`` ({t: 5} or {i: 2, j: 3}), every
    leaf replaced by its number."""
    expr = applied(expr)
    expr = expr.xreplace({s: sp.Integer(TV) for s in expr.free_symbols if s.name in EXTENTS})

    def unroll(s):
        f = s.function
        for i, lo, hi in reversed(s.limits):
            terms = [f.xreplace({i: k}) for k in range(int(lo), int(hi) + 1)]
            f = sp.MatAdd(*terms) if isinstance(f, sp.MatrixExpr) else sp.Add(*terms)
        return f

    expr = expr.replace(lambda e: isinstance(e, sp.Sum), unroll).xreplace(at)
    expr = expr.replace(lambda e: isinstance(e, gc.sigmoid), lambda e: 1 / (1 + sp.exp(-e.args[0])))
    expr = expr.replace(lambda e: isinstance(e, gc.relu), lambda e: sp.Max(e.args[0], 0))

    def number(leaf):
        v = env.value(leaf)
        return sp.ImmutableMatrix(v) if np.ndim(v) else sp.Float(float(v))

    expr = expr.xreplace({leaf: number(leaf) for leaf in leaves(expr, tuple(at))})

    def reduce(e):
        if isinstance(e, MeanSquaredError):
            d = explicit(e.args[0]) - explicit(e.args[1])
            return sp.Float(np.mean(d ** 2))
        if isinstance(e, CrossEntropy):
            z, y = explicit(e.args[0]), explicit(e.args[1])
            return sp.Float(-np.sum(y * (z - np.log(np.sum(np.exp(z))))))
        if isinstance(e, sp.Trace):
            return sp.Float(np.trace(explicit(e.arg)))
        if isinstance(e, Applied):
            f = e.args[0]
            return sp.ImmutableMatrix(np.vectorize(lambda u: float(f(sp.Float(u)).evalf()))(explicit(e.args[1])))
        v = explicit(e.args[1])
        return sp.Float(np.sum(v) if e.name == "sum" else np.log(np.sum(np.exp(v))))

    expr = expr.replace(lambda e: isinstance(e, (MeanSquaredError, CrossEntropy, Reduction, sp.Trace, Applied)), reduce)
    return explicit(expr)


# ---------------------------------------------------------------- reading the LaTeX back

class Ones:
    """c·𝟏, a matrix of ones scaled by c, of the shape of what it meets (\\mathbf{1})."""

    def __init__(self, c):
        self.c = c


def is_matrix(v) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 2


def as_scalar(v):
    """A 1×1 matrix is a scalar where it meets one (yᵀ log softmax z)."""
    return v.reshape(()) if is_matrix(v) and v.shape == (1, 1) else v


def need(ok: bool, what: str):
    if not ok:
        raise AssertionError(f"the printed LaTeX is not well formed: {what}")


def add(a, b):
    if isinstance(a, Ones) and isinstance(b, Ones):
        return Ones(a.c + b.c)
    if isinstance(a, Ones):
        a, b = b, a
    if isinstance(b, Ones):
        need(is_matrix(a), "𝟏 added to a scalar")
        return a + b.c
    if np.ndim(a) != np.ndim(b):
        a, b = as_scalar(a), as_scalar(b)
    need(np.shape(a) == np.shape(b), f"sum of shapes {np.shape(a)} and {np.shape(b)}")
    return a + b


def neg(a):
    return Ones(-a.c) if isinstance(a, Ones) else -a


def mul(a, b):
    """Juxtaposition: a scalar multiple, or a matrix product of compatible shapes."""
    if isinstance(a, Ones) or isinstance(b, Ones):
        o, v = (a, b) if isinstance(a, Ones) else (b, a)
        need(np.ndim(v) == 0, "𝟏 in a matrix product")
        return Ones(o.c * v)
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return a * b
    if a.shape[1] != b.shape[0]:
        a, b = as_scalar(a), as_scalar(b)
        need(np.ndim(a) == 0 or np.ndim(b) == 0, f"product of shapes {a.shape} and {b.shape}")
        return a * b
    return a @ b


def hadamard(a, b):
    if isinstance(a, Ones) or isinstance(b, Ones):
        o, v = (a, b) if isinstance(a, Ones) else (b, a)
        need(is_matrix(v) or isinstance(v, Ones), "⊙ of a scalar")
        return Ones(o.c * v.c) if isinstance(v, Ones) else o.c * v
    need(is_matrix(a) and a.shape == np.shape(b), f"⊙ of shapes {np.shape(a)} and {np.shape(b)}")
    return a * b


def divide(a, b):
    if isinstance(b, Ones):
        return Ones(a.c / b.c) if isinstance(a, Ones) else a / b.c
    if isinstance(a, Ones):
        need(is_matrix(b), "𝟏 over a scalar")
        return a.c / b
    need(np.ndim(b) == 0 or np.shape(a) == np.shape(b), f"fraction of shapes {np.shape(a)} and {np.shape(b)}")
    return a / b


def elementwise(f, a):
    return Ones(f(a.c)) if isinstance(a, Ones) else f(a)


def softmax(v):
    need(is_matrix(v), "softmax of a scalar")
    e = np.exp(v - v.max())
    return e / e.sum()


def trace(v):
    if isinstance(v, Ones):
        need(v.c == 0, "trace of 𝟏, whose shape is unknown")
        return np.array(0.0)
    return np.array(np.trace(v))


FUNCTIONS = {   # the printer's function names, read as NumPy functions
    r"\tanh": np.tanh, r"\sin": np.sin, r"\cos": np.cos, r"\log": np.log, r"\sqrt": np.sqrt,
    r"\sigma": lambda x: 1 / (1 + np.exp(-x)), r"\operatorname{relu}": lambda x: np.maximum(x, 0),
    r"\theta": lambda x, h0=0.0: np.heaviside(x, h0), r"\max": np.maximum, r"\min": np.minimum,
    r"\operatorname{softmax}": softmax, r"\operatorname{sum}": lambda v: np.array(np.sum(v)),
    r"\operatorname{logsumexp}": lambda v: np.array(np.log(np.sum(np.exp(v)))),
    r"\operatorname{tr}": lambda v: trace(v),
}
TOKEN = re.compile(r"\\left\\lVert|\\right\\rVert|\\left[(\[|]|\\right[)\]|]|\\begin\{matrix\}|\\end\{matrix\}"
                   r"|\\operatorname\{\w+\}|\\mathbf\{[01]\}|\\\\|\\[A-Za-z]+|\d+\.\d+|\d+|\S")
ENDS = {"+", "-", r"\odot", "}", r"\right)", r"\right]", r"\right\rVert", "&", "\\\\", r"\end{matrix}", ",", None}


class Reader:
    """The printer's LaTeX as numbers: a recursive-descent reader of sums, ⊙ (binding tighter
    than + and looser than juxtaposition), products, fractions, powers, ᵀ, ∘k, functions,
    \\sum over t, block matrices and slices. Leaves are looked up by their printed names."""

    def __init__(self, tex: str, names: dict, env: Env, at: int):
        self.names, self.env, self.at, self.pos, self.bound = names, env, at, 0, {}
        self.tokens = self.tokenize(tex, sorted(names, key=len, reverse=True))

    @staticmethod
    def tokenize(tex: str, names: list) -> list:
        out, i = [], 0
        while i < len(tex):
            if tex[i].isspace():
                i += 1
                continue
            name = next((n for n in names if tex.startswith(n, i)), None)
            if name is not None:
                out.append(("name", name))
                i += len(name)
            else:
                m = TOKEN.match(tex, i)
                out.append(("tok", m.group()))
                i = m.end()
        return out

    def peek(self, k=0):
        return self.tokens[self.pos + k][1] if self.pos + k < len(self.tokens) else None

    def next(self):
        self.pos += 1
        return self.tokens[self.pos - 1]

    def accept(self, tok) -> bool:
        if self.pos < len(self.tokens) and self.tokens[self.pos] == ("tok", tok):
            self.pos += 1
            return True
        return False

    def expect(self, tok):
        need(self.accept(tok), f"expected {tok} at token {self.pos}: {self.tokens[self.pos:self.pos + 5]}")

    def read(self):
        v = self.sum()
        need(self.pos == len(self.tokens), f"trailing tokens {self.tokens[self.pos:]}")
        return v

    # each rule sets self.simple: whether it read one atom and nothing else, so that a
    # superscript after a braced group can be refused when the braces hide several factors

    def sum(self):
        minus = self.accept("-")
        v = neg(self.hadamard()) if minus else self.hadamard()
        simple = self.simple and not minus
        while self.peek() in ("+", "-"):
            sign, simple = self.next()[1], False
            w = self.hadamard()
            v = add(v, w if sign == "+" else neg(w))
        self.simple = simple
        return v

    def hadamard(self):
        v = self.product()
        simple = self.simple
        while self.accept(r"\odot"):
            v, simple = hadamard(v, self.product()), False
        self.simple = simple
        return v

    def product(self):
        v = self.factor()
        simple = self.simple
        while self.peek() not in ENDS:
            self.accept(r"\cdot")
            v, simple = mul(v, self.factor()), False
        self.simple = simple
        return v

    def group(self):
        self.expect("{")
        v = self.sum()
        self.expect("}")
        return v

    def factor(self):
        v = self.atom()
        opaque, simple = self.opaque, not self.opaque
        while True:
            if self.peek() in ("^", r"\left[", "_"):
                need(not opaque, f"a superscript or index after {self.tokens[self.pos - 3:self.pos]}: it would "
                                 "attach to the last symbol only, the braces are invisible")
                simple = False
            if self.accept("^"):
                self.expect("{")
                if self.accept(r"\top"):
                    need(is_matrix(v) or isinstance(v, Ones), "ᵀ of a scalar")
                    v = v if isinstance(v, Ones) else v.T
                elif self.accept(r"\circ"):
                    k = self.sum()
                    need(is_matrix(v) or isinstance(v, Ones), "∘ power of a scalar")
                    v = elementwise(lambda x: x ** k, v)
                else:
                    k = self.sum()
                    if is_matrix(v):   # W^{2}: a matrix power
                        need(v.shape[0] == v.shape[1] and float(k).is_integer(), f"power {k} of a {v.shape} matrix")
                        v = np.linalg.matrix_power(v, int(k))
                    else:
                        need(np.ndim(v) == 0 and np.ndim(k) == 0, "a power of 𝟏")
                        v = v ** k
                self.expect("}")
            elif self.peek() == r"\left[" and self.peek(1) != r"\begin{matrix}":
                v = self.slice(v)
            elif self.accept("_"):        # {(z ↦ body)}_{∘}(a): body at every entry of a
                for tok in ("{", r"\circ", "}", r"\left("):
                    self.expect(tok)
                v = self.apply(v, self.sum())
                self.expect(r"\right)")
            else:
                self.simple = simple
                return v

    def mapping(self):
        """z ↦ body: remember where the body is, to read it once per entry."""
        var = self.next()[1]
        self.expect(r"\mapsto")
        start, depth = self.pos, 0
        while depth or self.peek() != r"\right)":
            depth += {r"\left(": 1, r"\right)": -1}.get(self.next()[1], 0)
        self.expect(r"\right)")
        return ("map", var, start)

    def apply(self, f, arg):
        need(isinstance(f, tuple) and is_matrix(arg), "_∘ of something that is not a mapping of a matrix")
        _, var, start = f
        back, out = self.pos, np.empty_like(arg)
        for i in np.ndindex(arg.shape):
            self.pos, self.bound[var] = start, np.array(arg[i])
            out[i] = self.sum()
        del self.bound[var]
        self.pos = back
        return out

    def slice(self, v):
        self.expect(r"\left[")
        lo = int(self.next()[1]) if self.peek() != ":" else 0
        self.expect(":")
        hi = int(self.next()[1]) if self.peek() != "," else v.shape[0]
        self.expect(",")
        self.expect(":")
        self.expect(r"\right]")
        return v[lo:hi, :]

    def atom(self):
        """One atom; self.opaque says whether a superscript after it would attach to its last
        symbol only: a braced group of several factors, e^{x}, \\nabla_{x} L, a fraction."""
        kind, tok = self.tokens[self.pos]
        v = self.read_atom()
        if tok == "{":
            self.opaque = not self.simple
        else:
            self.opaque = tok in ("e", r"\frac") or (kind == "name" and tok.startswith(r"\nabla"))
        return v

    def read_atom(self):
        kind, tok = self.next()
        if kind == "name":
            return self.env.value(self.names[tok].xreplace(self.at))
        if re.fullmatch(r"\d+(\.\d+)?", tok):
            return np.array(float(tok))
        if tok in self.bound:
            return self.bound[tok]
        if tok == r"\left(" and self.peek(1) == r"\mapsto":
            return self.mapping()
        if tok == r"\left(":
            v = self.sum()
            self.expect(r"\right)")
            return v
        if tok == "{":
            self.pos -= 1
            return self.group()
        if tok == r"\frac":
            return divide(self.group(), self.group())
        if tok in (r"\mathbf{1}", r"\mathbf{0}"):
            return Ones(float(tok[-2]))
        if tok == "e" and self.peek() == "^":
            self.next()
            return elementwise(np.exp, self.group())
        if tok == r"\left\lVert":
            v = self.sum()
            self.expect(r"\right\rVert")
            need(is_matrix(v), "norm of a scalar")
            return np.array(np.sqrt(np.sum(v ** 2)))
        if tok == r"\left[":
            return self.block()
        if tok == r"\sum":
            return self.sigma()
        if tok in FUNCTIONS:
            return self.call(FUNCTIONS[tok])
        raise AssertionError(f"unknown LaTeX {tok!r} at token {self.pos}")

    def call(self, f):
        power = self.group() if self.accept("^") else None     # \tanh^{2}{\left(x \right)}
        if self.peek() == "{":
            args = [self.group()]
        elif self.accept(r"\left("):
            args = [self.sum()]
            while self.accept(","):
                args.append(self.sum())
            self.expect(r"\right)")
        else:                                                   # \log \operatorname{softmax}(z)
            args = [self.factor()]
        v = elementwise(f, args[0]) if len(args) == 1 else f(*args)
        return v if power is None else v ** power

    def block(self):
        self.expect(r"\begin{matrix}")
        rows = [[self.sum()]]
        while not self.accept(r"\end{matrix}"):
            if self.accept("&"):
                rows[-1].append(self.sum())
            else:
                self.expect("\\\\")
                rows.append([self.sum()])
        self.expect(r"\right]")
        return np.block(rows)

    def sigma(self):
        """\\sum_{i=lo}^{hi} followed by a product, read once for every value of the axis i."""
        self.expect("_")
        self.expect("{")
        name = self.next()[1]
        axis = next((a for a in self.at if a.name == name), None)
        need(axis is not None, f"a sum over an axis that is not one of {list(self.at)}")
        self.expect("=")
        lo = self.sum()
        self.expect("}")
        self.expect("^")
        hi = self.group()
        start, outer, total = self.pos, self.at, None
        for k in range(int(lo), int(hi) + 1):
            self.pos, self.at = start, {**outer, axis: k}
            v = self.product()
            total = v if total is None else add(total, v)
        self.at = outer
        return total


def latex_value(tex: str, expr, env: Env, at: dict, where: dict | None = None):
    """``tex`` read as numbers at ``at``; a leaf printed as ``latex(leaf)`` is looked up in
    ``env`` as ``leaf.xreplace(where)`` at that point."""
    names = {}
    for leaf in leaves(expr, tuple(at)):
        key = latex(leaf)
        assert key not in names, f"{names.get(key)} and {leaf} both print as {key}"
        names[key] = leaf.xreplace(where or {})
    return Reader(tex, names, env, at).read()


def assert_reads_back(expr, seed=0, at=None):
    """The LaTeX of ``expr``, read back, is ``expr``'s value at random points (two draws), at
    the point ``at`` (default t = 5)."""
    tex, at = latex(expr), at or {t: 5}
    for s in (seed, seed + 1):
        env = Env(s)
        want = sympy_value(expr, env, at)
        try:
            got = latex_value(tex, expr, env, at)
        except AssertionError as e:
            raise AssertionError(f"{e}\nin {tex}") from None
        if isinstance(got, Ones):
            got = np.full(want.shape, got.c)
        got = as_scalar(got) if want.ndim == 0 else got
        assert np.shape(got) == want.shape, (tex, np.shape(got), want.shape)
        assert np.allclose(got, want, rtol=1e-9, atol=1e-12), (tex, got, want)


def assert_model_reads_back(model):
    axes = model.step.axes if model.step.grid else (t,)
    at = dict(zip(axes, (5, 4, 3)))
    for eq in model.equations() + model.gradient_equations():
        assert_reads_back(eq.rhs, at=at)
        assert_reads_back(eq.lhs, at=at)


# ---------------------------------------------------------------- the gallery and catalogue

def gallery() -> list:
    spec = importlib.util.spec_from_file_location("make_gallery", ROOT / "docs" / "make_gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(key, make) for key, _, make, *_ in module.GALLERY]


@pytest.mark.parametrize("key, make", gallery(), ids=[k for k, _ in gallery()])
def test_gallery_equations_read_back(key, make):
    assert_model_reads_back(make())


@pytest.mark.parametrize("make", CATALOGUE, ids=[m.__name__ for m in CATALOGUE])
def test_catalogue_equations_read_back(make):
    assert_model_reads_back(make().model)


@pytest.mark.parametrize("make", [
    lambda: gc.models.lstm(2, 3, 2, layers=2), lambda: gc.models.elman(2, 3, 1, activation="relu"),
    lambda: gc.models.leaky(2, 3, 2, alpha=0.3), lambda: gc.models.gru(2, 3, 2, variant="original", bidirectional=True),
    lambda: gc.models.seq2seq(2, 3, 2, cell="lstm"), lambda: gc.models.jordan(2, 3, 2),
])
def test_model_library_equations_read_back(make):
    assert_model_reads_back(make())


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_random_recurrences_read_back(case):
    """The property test's random recurrences: equations and derived gradients."""
    assert_model_reads_back(case[0])


# ---------------------------------------------------------------- random expressions

z = sp.Symbol("z", real=True)
N, M = 3, 2   # vector sizes
h, g, x = gc.signal("h", N), gc.signal("∇h", N), gc.signal("x", M)
s, ds = sp.Function("s"), sp.Function("∇s")
W, U, b = gc.param("W", N, N), gc.param("U", N, M), gc.param("b", N)
a, c, da = sp.symbols("a c ∇a")
USER = [sp.Lambda(z, z / (1 + sp.exp(-z))), sp.Lambda(z, -z), sp.Lambda(z, 1 - z / (1 + z ** 2)),
        sp.Lambda(z, -z ** 2 / (2 + z)), sp.Lambda(z, z * sp.tanh(z) - sp.sin(-z)),
        sp.Lambda(z, sp.log(1 + z ** 2)), sp.Lambda(z, sp.sqrt(1 + z ** 2)), sp.Lambda(z, sp.Max(z, 1 - 2 * z)),
        sp.Lambda(z, sp.Min(z ** 2, 1 - z)),
        sp.Lambda(z, sp.exp(-z) / (1 + sp.exp(-z)) - 2 * z)]
FUNCS = [gc.tanh, gc.sigmoid, gc.relu, gc.exp, lambda e: gc.elementwise(sp.sin, e)] + \
        [lambda e, f=f: gc.elementwise(f, e) for f in USER]


def scalar_leaf(draw):
    k = draw(st.integers(-2, 2))
    return draw(st.sampled_from([a, c, da, s(t + k), ds(t + 1), sp.Integer(2), sp.Rational(1, 2),
                                 sp.Float(0.25), sp.Integer(-3)]))


def vector_leaf(draw):
    k = draw(st.integers(-2, 2))
    return draw(st.sampled_from([h(t + k), g(t + 1), b, W * h(t - 1), U * x(t + k)]))


@st.composite
def vectors(draw, depth=3):
    """An N×1 matrix expression."""
    if depth == 0 or draw(st.integers(0, 4)) == 0:
        return vector_leaf(draw)
    sub = lambda: draw(vectors(depth - 1))
    kind = draw(st.integers(0, 12))
    if kind == 0:
        return sub() + sub()
    if kind == 1:
        return sub() - sub()
    if kind == 2:
        return draw(scalars(depth - 1)) * sub()
    if kind == 3:
        return gc.hadamard(sub(), sub())
    if kind == 4:
        return sp.HadamardPower(sub(), draw(st.sampled_from([2, 3])))
    if kind == 5:   # a reciprocal of something away from zero
        return sp.HadamardPower(sp.OneMatrix(N, 1) + sp.HadamardPower(sub(), 2), draw(st.sampled_from([-1, -2])))
    if kind == 6:
        return draw(st.sampled_from([W, W.T, (W - W.T), 2 * W])) * sub()
    if kind == 7:
        return sp.Transpose(sub().T * W) if draw(st.booleans()) else (sub() * sub().T) * sub()
    if kind == 8:
        return -sub()
    if kind == 9:
        return gc.concat(sub(), sub())[1:N + 1, :] if draw(st.booleans()) else gc.concat(sub(), sub())[:N, :]
    if kind == 10:
        return sp.OneMatrix(N, 1) * draw(scalars(depth - 1)) - sub()
    return draw(st.sampled_from(FUNCS))(sub())


@st.composite
def scalars(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return scalar_leaf(draw)
    sub = lambda: draw(scalars(depth - 1))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return sub() + sub()
    if kind == 1:
        return sub() - sub()
    if kind == 2:
        return sub() * sub()
    if kind == 3:
        return sub() / (1 + sub() ** 2)
    if kind == 4:
        return sub() ** draw(st.sampled_from([2, 3]))
    if kind == 5:
        return draw(st.sampled_from([sp.tanh, gc.sigmoid, sp.exp, sp.sin, gc.relu] + USER[:5]))(sub())
    if kind == 6:
        return sp.Trace(draw(vectors(depth - 1)).T * draw(vectors(depth - 1)))
    if kind == 7:
        return gc.mse(draw(vectors(depth - 1)), draw(vectors(depth - 1)))
    if kind == 8:
        return sub() * gc.cross_entropy(draw(vectors(depth - 1)), h(t))
    return -sub()


@st.composite
def expressions(draw):
    e = draw(vectors()) if draw(st.booleans()) else draw(scalars())
    assume(not e.has(sp.ZeroMatrix) and all(tr.arg != 0 for tr in e.atoms(sp.Trace)))   # v - v: no shape to read
    return sp.Sum(e, (t, 1, sp.Symbol("T", integer=True, positive=True))) if draw(st.integers(0, 4)) == 0 else e


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(expressions())
def test_random_expressions_read_back(expr):
    assert_reads_back(expr)


# ---------------------------------------------------------------- what a reader sees

def test_signals_and_adjoints():
    h = gc.signal("h", 3)
    assert latex(h(t - 1)) == "h^{(t - 1)}"
    assert sp.latex(h(t + 1)) == "h^{(t + 1)}"          # sympy's own printer knows signals too
    assert latex(gc.signal("∇h", 3)(t + 1)) == r"\nabla_{h^{(t + 1)}} L"
    s = sp.Function("s")
    assert latex(s(t - 3)) == "s^{(t - 3)}"
    assert latex(sp.Function("∇s")(t)) == r"\nabla_{s^{(t)}} L"


def test_swish_keeps_its_parentheses():
    """The issue's example: a user's swish printed e^{-Ux + Wh}, flipping the sign of W h."""
    H, D = 3, 2
    h, x = gc.signal("h", H), gc.signal("x", D)
    W, U = gc.param("W", H, H), gc.param("U", H, D)
    m = gc.Recurrence({h(t): gc.elementwise(sp.Lambda(z, z / (1 + sp.exp(-z))), W * h(t - 1) + U * x(t))},
                      loss=gc.mse(h(t), gc.signal("y", H)(t)))
    eqs = m.equations()
    assert latex(eqs[0].rhs) == r"\frac{U x^{(t)} + W h^{(t - 1)}}{e^{- U x^{(t)} - W h^{(t - 1)}} + \mathbf{1}}"
    grad = latex(m.gradient_equations()[0].rhs)
    assert r"\frac{\mathbf{1}}{e^{- U x^{(t + 1)} - W h^{(t)}} + \mathbf{1}}" in grad
    assert_model_reads_back(m)


def test_precedence_of_matrix_operations():
    A, B = gc.param("A", 2, 2), gc.param("B", 2, 2)
    v, w = gc.signal("v", 2)(t), gc.signal("w", 2)(t)
    assert latex(A * (v - w)) == r"A \left(v^{(t)} - w^{(t)}\right)"
    assert latex(gc.hadamard(v + w, v)) == r"\left(v^{(t)} + w^{(t)}\right) \odot v^{(t)}"
    assert latex(A * gc.hadamard(v, w)) == r"A \left(v^{(t)} \odot w^{(t)}\right)"
    assert latex(sp.HadamardPower(v + w, 2)) == r"{\left(v^{(t)} + w^{(t)}\right)}^{\circ 2}"
    assert latex(sp.Transpose(A + B)) == r"{\left(A + B\right)}^{\top}"
    assert latex((a - c) * v) == r"\left(a - c\right) v^{(t)}"
    assert latex(sp.MatAdd(v, sp.MatMul(-1, v + w))) == r"v^{(t)} - \left(v^{(t)} + w^{(t)}\right)"
    assert latex(sp.MatAdd(v, sp.MatMul(-1, sp.MatMul(-1, v + w)))) == r"v^{(t)} + \left(v^{(t)} + w^{(t)}\right)"
    assert latex(sp.MatAdd(sp.MatMul(-1, v + w), w)) == r"w^{(t)} - \left(v^{(t)} + w^{(t)}\right)"
    assert latex(sp.MatMul(A, sp.MatMul(-1, v))) == r"- A v^{(t)}"
    assert latex(gc.hadamard(-v, w) + v) == r"v^{(t)} - v^{(t)} \odot w^{(t)}"
    assert latex(da ** 2) == r"\left(\nabla_{a} L\right)^{2}"


def test_mse_of_one_output_has_no_fraction():
    y1, o1 = gc.signal("y", 1)(t), gc.signal("o", 1)(t)
    assert latex(gc.mse(o1, y1)) == r"\left\lVert o^{(t)} - y^{(t)} \right\rVert^{2}"
    y4, o4 = gc.signal("y", 4)(t), gc.signal("o", 4)(t)
    assert latex(gc.mse(o4, y4)) == r"\frac{1}{4}\left\lVert o^{(t)} - y^{(t)} \right\rVert^{2}"
    assert latex(gc.mse(gc.signal("M", 2, 3)(t), gc.signal("N", 2, 3)(t))).startswith(r"\frac{1}{6}")
    assert latex(gc.mse(o4, y4) ** 2).startswith(r"\left(\frac{1}{4}\left\lVert")


def test_cross_entropy_is_bracketed_as_a_factor():
    o, y, src = gc.signal("o", 3)(t), gc.signal("y", 3)(t), sp.Function("src")(t)
    loss = (1 - src) * gc.cross_entropy(o, y)
    want = r"\left(1 - src^{(t)}\right) \left(-{y^{(t)}}^{\top} \log \operatorname{softmax}\left(o^{(t)}\right)\right)"
    assert latex(loss) == want
    assert sp.latex(loss) == want.replace("src^{(t)}", r"\operatorname{src}{\left(t \right)}")   # sympy's printer too


def test_elman_reads_like_the_textbook():
    tex = elman().model.latex()
    lines = tex.splitlines()
    assert lines[0] == r"\begin{aligned}" and lines[-1] == r"\end{aligned}"
    assert r"h^{(t)} &= \tanh{\left(U x^{(t)} + W h^{(t - 1)} + b \right)} \\" in lines
    grad = next(l for l in lines if l.startswith(r"\nabla_{h^{(t)}} L"))
    assert r"{W}^{\top} \left(\nabla_{h^{(t + 1)}} L \odot \left(\mathbf{1} - {h^{(t + 1)}}^{\circ 2}\right)\right)" in grad
    assert r"{V}^{\top}" in grad
    w = next(l for l in lines if l.startswith(r"\nabla_{W} L"))
    assert r"\sum_{t=1}^{T}" in w and r"{h^{(t - 1)}}^{\top}" in w


def test_lstm_uses_sigma_and_odot():
    tex = lstm().model.latex(gradient=False)
    assert r"\sigma\left(" in tex and r"\odot" in tex and "Lambda" not in tex
    assert r"\log \operatorname{softmax}" in tex


def double_superscripts(tex: str) -> list:
    """Places like h^{(t)}^{2}, which LaTeX refuses."""
    bad = []
    for i, ch in enumerate(tex):
        if ch == "^" and tex[i - 1] == "}":
            depth, j = 0, i - 1
            while j >= 0:
                depth += {"}": 1, "{": -1}.get(tex[j], 0)
                if depth == 0:
                    break
                j -= 1
            if j > 0 and tex[j - 1] == "^":
                bad.append(tex[max(0, j - 20):i + 10])
    return bad


def test_no_double_superscripts():
    assert double_superscripts("h^{(t)}^{2}") and not double_superscripts("{h^{(t)}}^{2}")
    for make in (elman, lstm, bidirectional, nonlinear_map):
        assert double_superscripts(make().model.latex()) == []


def test_jupyter_shows_the_equations():
    m = nonlinear_map().model
    assert m._repr_latex_().startswith("$$\\begin{aligned}")


# ---------------------------------------------------------------- the printed equations against the kernel

class KernelEnv:
    """The values of a compiled run of one example (B = 1): parameters, inputs, and the
    kernel's states and outputs at every point; zeros outside the domain (as the kernel reads
    there). Tree points (c_k(t), p(t)) are resolved through ``children``. Adjoints are
    filled in by ``set`` as the printed gradient equations are evaluated."""

    def __init__(self, params: dict, arrays: dict, extents: dict, children=None):
        self.params, self.arrays, self.extents, self.children = params, arrays, extents, children
        self.adjoints = {}

    def node(self, e) -> int:
        """A point coordinate as an integer: a time, a cell index, or a tree node (0: none)."""
        if isinstance(e, Parent):
            v = self.node(e.args[0])
            return next((u + 1 for u in range(len(self.children)) if v and v in self.children[u]), 0)
        if isinstance(e, ChildOf):
            v = self.node(e.args[1])
            return int(self.children[v - 1, int(e.args[0])]) if v else 0
        return int(e)

    def index(self, point):
        """The array index of a point, or None outside the domain."""
        idx = tuple(self.node(p) for p in (point if isinstance(point, (tuple, sp.Tuple)) else (point,)))
        return idx if all(1 <= k <= n for k, n in zip(idx, self.extents.values())) else None

    def value(self, leaf):
        if isinstance(leaf, sp.Symbol) and leaf.name in EXTENTS:
            return self.extents[leaf.name]
        (name, point), shape = key_of(leaf)
        if point is None:
            return np.asarray(self.params[name], float).reshape(shape)
        if name == "is_child":   # [c_k(p(v)) = v]
            k, v = int(point[0]), self.node(point[1])
            return np.array(float(v != 0 and self.node(ChildOf(k, Parent(v))) == v))
        if name == HAS_CHILD:
            return np.array(float(self.index(point) is not None))
        idx = self.index(point)
        if idx is None:
            return np.zeros(shape)
        if name.startswith("∇"):
            return self.adjoints.get((name, idx), np.zeros(shape))
        return np.asarray(self.arrays[name][tuple(k - 1 for k in idx)][0], float).reshape(shape)

    def set(self, name: str, idx: tuple, v):
        self.adjoints[(name, idx)] = v


def printed_value(expr, env, at: dict):
    """The printed LaTeX of ``expr`` read back as numbers at the point ``at``."""
    where = {c: ChildOf(c.k, t) for c in expr.free_symbols if isinstance(c, Child)}   # c_k(t) at each t
    v = latex_value(latex(expr), expr, env, at, where)
    return as_scalar(v) if np.size(v) == 1 else v


def points_of(model, extents: dict):
    """Every point of the domain, in the order the forward sweep visits it, with its ``at``."""

    if model.step.grid:
        return [(p, dict(zip(model.step.axes, p))) for p in itertools.product(*(range(1, n + 1) for n in extents.values()))]
    return [((v,), {t: v}) for v in range(1, extents["T"] + 1)]


def check_against_kernel(model, params: dict, inputs: dict, extents: dict, children=None):
    """Evaluate the printed forward equations at every point against the kernel's forward,
    the printed per-step losses summed against its loss, and the printed backward equations
    (adjoints swept backwards, then the parameters' sums) against its gradient."""
    k = gc.compile(model)
    kw = {} if children is None else {"children": children[:, None, :], "lengths": np.array([extents["T"]])}
    out = k.forward(params, inputs, **kw)
    loss, grads = k.loss_and_grad(params, inputs, **kw)
    env = KernelEnv(params, {**inputs, **out}, extents, None if children is None else children)
    points = points_of(model, extents)
    eqs, n = model.equations(), len(model.states) + len(model.outputs)
    for eq in eqs[:n]:
        name = eq.lhs.name if isinstance(eq.lhs, SignalRef) else eq.lhs.func.__name__
        for p, at in points:
            want = np.asarray(out[name][tuple(i - 1 for i in p)][0], float)
            got = printed_value(eq.rhs, env, at)
            assert np.allclose(np.ravel(got), np.ravel(want), rtol=1e-9, atol=1e-12), (name, p, latex(eq.rhs))
    if len(eqs) > n:
        total = sum(float(printed_value(eqs[n].rhs, env, at)) for _, at in points)
        assert total == pytest.approx(loss, rel=1e-9)
    backward = model.gradient_equations()
    states = backward[:len(model.states)]
    for sweep in range(30):   # backwards and forwards until nothing changes: each state's adjoint
        changed = False       # runs against its own sweep (t+1 for a forward state, t-1 for a backward one)
        for order in (points[::-1], points):
            for p, at in order:
                for eq in states:
                    name = eq.lhs.name if isinstance(eq.lhs, SignalRef) else eq.lhs.func.__name__
                    v = np.asarray(printed_value(eq.rhs, env, at), float).reshape(env.value(eq.lhs.xreplace(at)).shape)
                    changed |= not np.array_equal(v, env.adjoints.get((name, p)))
                    env.set(name, p, v)
        if not changed:
            break
    assert not changed
    at0 = points[0][1]
    for eq in backward[len(model.states):]:
        name = eq.lhs.name[1:]
        got = np.ravel(printed_value(eq.rhs, env, at0))
        assert np.allclose(got, np.ravel(grads[name]), rtol=1e-7, atol=1e-10), (name, latex(eq.rhs))


def one_example(case):
    """A catalogue case cut to its first example, full length, zero initial state."""
    inputs = {n: a[:, :1] for n, a in case.inputs.items()}
    T = next(iter(inputs.values())).shape[0]
    return case.model, case.params, inputs, {"T": T}


@pytest.mark.parametrize("make", [nonlinear_map, delays, elman, lstm, bidirectional, vector_delays],
                         ids=lambda m: m.__name__)
def test_printed_equations_compute_what_the_kernel_computes(make):
    """Scalar maps, delays t-1..t-3 and x(t-2), mse and cross-entropy losses, sigmoid and tanh,
    a user's z/(1+z²), concat and ⊙, a state read ahead at t+1: the LaTeX, read as numbers."""
    check_against_kernel(*one_example(make()))


def test_precedence_and_activations_against_the_kernel():
    """a*(b+c), -(x), powers, relu, sigmoid, a matrix product of a Hadamard product, Wᵀ in the
    gradient: printed, read back, computed."""
    H, D = 3, 2
    hh, xx, yy = gc.signal("h", H), gc.signal("x", D), gc.signal("y", H)
    W, U, V, bb = gc.param("W", H, H), gc.param("U", H, D), gc.param("V", H, H), gc.param("b", H)
    aa, cc = gc.param("a"), gc.param("c")
    pre = W * gc.hadamard(hh(t - 1), gc.sigmoid(U * xx(t))) - (aa + cc) * (hh(t - 2) - bb)
    m = gc.Recurrence({hh(t): gc.tanh(pre) + aa * gc.relu(-(V * hh(t - 1))) - gc.elementwise(lambda v: v ** 2 / 4, hh(t - 1))},
                      loss=gc.mse(hh(t), yy(t)))
    rng = np.random.default_rng(3)
    params = {"W": rng.normal(0, .5, (H, H)), "U": rng.normal(0, .5, (H, D)), "V": rng.normal(0, .5, (H, H)),
              "b": rng.normal(0, .5, H), "a": 0.3, "c": -0.7}
    T = 5
    check_against_kernel(m, params, {"x": rng.normal(size=(T, 1, D)), "y": rng.normal(size=(T, 1, H))}, {"T": T})
    tex = latex(m.equations()[0].rhs)
    assert r"- \left(a + c\right) \left(h^{(t - 2)} - b\right)" in tex
    assert r"W \left(\sigma\left(U x^{(t)}\right) \odot h^{(t - 1)}\right)" in tex
    assert r"a \operatorname{relu}\left(- V h^{(t - 1)}\right)" in tex and tex.endswith(r"- \frac{1}{4} {h^{(t - 1)}}^{\circ 2}")


@pytest.mark.parametrize("directions", [1, 4])
def test_grid_equations_show_both_offsets_and_compute_what_the_kernel_computes(directions):
    m = gc.models.mdrnn(2, 3, 2, directions=directions)
    tex = m.latex()
    assert r"h" in tex and r"^{(i - 1, j)}" in tex and r"^{(i, j - 1)}" in tex
    assert r"\sum_{i=1}^{I} \sum_{j=1}^{J}" in tex
    if directions == 4:
        assert r"^{(i + 1, j)}" in tex and r"^{(i, j + 1)}" in tex
    rng = np.random.default_rng(4)
    I, J = 3, 4
    params = {n: rng.normal(0, .5, s[:1] if s[1:] == (1,) else s) for n, s in m.step.params.items()}
    check_against_kernel(m, params, {"x": rng.normal(size=(I, J, 1, 2)), "y": rng.normal(size=(I, J, 1, 2))},
                         {"I": I, "J": J})


def test_grid_equation_text():
    m = gc.models.mdrnn(1, 2, 2)
    eqs = m.equations() + m.gradient_equations()
    assert str(eqs[0]) == "h(i, j) = tanh(U*x(i, j) + Wi*h(i - 1, j) + Wj*h(i, j - 1) + b)"
    assert latex(eqs[0].lhs) + " = " + latex(eqs[0].rhs) == sp.latex(eqs[0])
    assert sp.latex(eqs[0]) == (r"h^{(i, j)} = \tanh{\left(U x^{(i, j)} + Wi h^{(i - 1, j)} + Wj h^{(i, j - 1)} "
                                r"+ b \right)}")
    dW = next(e for e in eqs if str(e.lhs) == "∇Wi")
    assert str(dW) == "∇Wi = Σ_{i=1..I} Σ_{j=1..J} ((1 - h(i, j)∘2) ⊙ ∇h(i, j))*h(i - 1, j)ᵀ"


TREE_CHILDREN = np.array([[0, 0], [0, 0], [1, 2], [0, 0], [3, 4], [0, 0], [5, 6]])   # 7 nodes, root 7


@pytest.mark.parametrize("name", ["tree_rnn", "nary_lstm", "childsum_lstm"])
def test_tree_equations_compute_what_the_kernel_computes(name):
    import test_tree
    m = test_tree.MODELS[name]()
    assert_model_reads_back(m)
    K = m.step.children
    C = np.zeros((7, K), np.int64)
    C[:, :2] = TREE_CHILDREN
    if K > 2:
        C[6] = [5, 6, 4]   # node 7 has three children
        C[4] = [0, 3, 0]   # node 5 one, in its second slot
    rng = np.random.default_rng(5)
    params = {n: rng.normal(0, .5, s[:1] if s[1:] == (1,) else s) for n, s in m.step.params.items()}
    inputs = {"x": rng.normal(size=(7, 1, test_tree.D)), "y": rng.normal(size=(7, 1, test_tree.O))}
    check_against_kernel(m, params, inputs, {"T": 7}, C)


def test_tree_equations_read_as_a_tree():
    import test_tree
    eqs = test_tree.tree_rnn().equations() + test_tree.tree_rnn().gradient_equations()
    assert sp.latex(eqs[0]) == (r"h^{(t)} = \tanh{\left(U x^{(t)} + Wl h^{(c_{0}(t))} + Wr h^{(c_{1}(t))} "
                                r"+ b \right)}")
    grad = sp.latex(eqs[2])
    assert grad.startswith(r"\nabla_{h^{(t)}} L = \mathbb{1}\left[c_{1}(p(t)) = t\right] {Wr}^{\top} "
                           r"\left(\left(\mathbf{1} - {h^{(p(t))}}^{\circ 2}\right) \odot \nabla_{h^{(p(t))}} L\right)")
    assert str(eqs[2]).startswith("∇h(t) = [c1(p(t)) = t]*Wrᵀ*((1 - h(p(t))∘2) ⊙ ∇h(p(t)))")
