"""The declaration language: time-indexed signals, parameters and the elementwise functions
a user writes a recurrence with. Scalars are plain sympy; vectors are sympy matrix
expressions whose leaves are ``SignalRef`` (``h(t-1)``) and ``MatrixSymbol`` (``W``)."""
from __future__ import annotations

import operator

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.core.symbol import Str
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction as _SympyElementwise
from sympy.matrices.expressions.matexpr import MatrixElement

from ..errors import GraphcompError

t = sp.Symbol("t", integer=True)
"""The time index. Signals are read at ``t`` plus an integer constant."""

TIME_ONLY = ("a recurrence runs over the time index gc.t, over a grid of two or more axes "
             "(h(i, j)), or over trees (h(gc.child(k)))")


# ---------------------------------------------------------------- checked matrix arithmetic

class _Checked:
    """The arithmetic of every matrix expression graphcomp hands out (signals, parameters and
    all that is built from them): sympy's, except that a mistake sympy would report as a
    ShapeError or a TypeError is a GraphcompError naming the operands, a scalar plus a matrix
    broadcasts (``1 - z`` is ones minus z), and NumPy's functions are refused with the gc
    spelling. Its ``_op_priority`` above sympy's makes sympy hand an operator with one of
    these operands to it. A checked expression compares and hashes as the sympy one it extends
    (the classes carry sympy's names), so it can be compared with plain sympy."""

    _op_priority = 20.0

    def __add__(self, other):
        return _sum(self, _operand(other, "+", self))

    def __radd__(self, other):
        return _sum(_operand(other, "+", self), self)

    def __sub__(self, other):
        return _sum(self, _negate(_operand(other, "-", self)))

    def __rsub__(self, other):
        return _sum(_operand(other, "-", self), _negate(self))

    def __neg__(self):
        return _negate(self)

    def __mul__(self, other):
        return _product(self, _operand(other, "*", self))

    def __rmul__(self, other):
        return _product(_operand(other, "*", self), self)

    __matmul__, __rmatmul__ = __mul__, __rmul__

    def __truediv__(self, other):
        other = _operand(other, "/", self)
        if isinstance(other, sp.MatrixExpr):
            raise GraphcompError(f"{_show(self)}/{_show(other)} divides by a matrix; for the elementwise "
                                 f"quotient write gc.hadamard({self}, gc.elementwise(lambda v: 1/v, {other}))")
        return _product(self, 1 / other)

    def __rtruediv__(self, other):
        raise GraphcompError(f"{other}/{_show(self)} divides by a matrix; for the elementwise quotient write "
                             f"gc.elementwise(lambda v: {other}/v, {self})")

    def __pow__(self, k):
        k = _operand(k, "**", self)
        if self.shape[0] != self.shape[1] or not (k.is_Integer and k > 0):
            shown = k if (k.is_Integer and k >= 0) or k.is_Symbol else f"({k})"
            raise GraphcompError(f"{_show(self)}**{shown}: ** on the {_shape(self)} matrix {self} is a matrix power; "
                                 f"for the elementwise power write gc.elementwise(lambda v: v**{shown}, {self})")
        return _adopt(sp.MatPow(self, k).doit())

    def __rpow__(self, base):
        raise GraphcompError(f"{base}**{_show(self)}: a matrix exponent is not supported; for the elementwise "
                             f"power write gc.elementwise(lambda v: {base}**v, {self})")

    def __abs__(self):
        raise GraphcompError(f"abs({self}): write gc.elementwise(sp.Abs, {self}) for the elementwise absolute value")

    def transpose(self):
        return _adopt(super().transpose())

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except IndexError:
            raise GraphcompError(f"{_show(self)}[{key}]: {self} is {_shape(self)}, so its entries are "
                                 f"[0..{self.shape[0] - 1}, 0..{self.shape[1] - 1}]") from None

    def __eq__(self, other):
        return sp.Basic.__eq__(_plain(self), _plain(other))

    __hash__ = sp.Basic.__hash__

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's arithmetic with a NumPy scalar is sympy's; a NumPy function is refused."""
        name = ufunc.__name__
        if method == "__call__" and name in _ARITHMETIC and not kwargs:
            return _ARITHMETIC[name](*(sp.sympify(float(a)) if isinstance(a, np.generic) else a for a in inputs))
        gc_name = {"maximum": "relu"}.get(name, name)
        fix = (f"gc.{gc_name}({self})" if gc_name in ("tanh", "exp", "log", "relu")
               else f"gc.elementwise(sp.{name}, {self})" if hasattr(sp, name)
               else f"gc.elementwise(lambda z: ..., {self}) with the formula of {name}")
        raise GraphcompError(f"np.{name} is applied to the sympy expression {self}: NumPy functions work on "
                             f"arrays, not on declarations; write {fix}")


_ARITHMETIC = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul,
               "matmul": operator.mul, "true_divide": operator.truediv, "negative": operator.neg,
               "power": operator.pow}


def _operand(x, op: str, other):
    """``x`` as a sympy object, or an error saying why it cannot meet ``other`` under ``op``."""
    if isinstance(x, np.ndarray):
        raise GraphcompError(f"a NumPy array meets {other} under {op}: a declaration is made of sympy "
                             "expressions; make the array a parameter (gc.param) and pass its value in params")
    try:
        return sp.sympify(x, strict=True)
    except sp.SympifyError:
        raise GraphcompError(f"{x!r} ({type(x).__name__}) cannot be combined with {other} under {op}; "
                             "give a number or a sympy expression") from None


def _show(e) -> str:
    """An operand as written in a product or quotient: a sum in parentheses."""
    return f"({e})" if isinstance(e, sp.MatAdd) else str(e)


def _shape(e) -> str:
    return "x".join(str(n) for n in e.shape)


def undefined(name: str, arg) -> str:
    """What to write instead of an undefined ``sp.Function(name)`` applied to ``arg``."""
    return (f"{name} is an undefined sympy Function, applied to {arg}: graphcomp cannot compute or differentiate "
            f"it; give its formula in z, e.g. gc.elementwise(lambda z: sp.log(1 + sp.exp(z)), {arg}) for a "
            "softplus, or use gc.tanh, gc.sigmoid, gc.relu, gc.exp, gc.log")


def misapplied(f) -> str:
    """What to write instead of a scalar sympy function applied to a matrix: ``sp.tanh(W*h)``
    is ``gc.tanh(W*h)``; an undefined ``sp.Function("f")`` needs its formula."""
    arg = next(a for a in f.args if isinstance(a, sp.MatrixExpr))
    name = getattr(f.func, "__name__", str(f.func))
    if isinstance(f, AppliedUndef):
        return undefined(name, arg)
    fix = f"gc.{name}({arg})" if name in ("tanh", "exp", "log") else f"gc.elementwise(sp.{name}, {arg})"
    return f"sympy's scalar {name} is applied to the {_shape(arg)} matrix {arg}; for the elementwise {name} write {fix}"


def _scalar(e, other):
    """A scalar that may meet a matrix: not a sympy function of a matrix (a scalar to sympy)."""
    for f in sp.preorder_traversal(e):
        if isinstance(f, sp.Function) and any(isinstance(a, sp.MatrixExpr) for a in f.args):
            raise GraphcompError(f"{f}, where it meets {other}: {misapplied(f)}")
    return e


def _sum(a, b):
    """``a + b``; a scalar term is broadcast over the matrix one (times a matrix of ones)."""
    am, bm = isinstance(a, sp.MatrixExpr), isinstance(b, sp.MatrixExpr)
    if am and bm and a.shape != b.shape:
        raise GraphcompError(f"{a} + {b}: {a} is {_shape(a)} and {b} is {_shape(b)}; the terms of a sum "
                             "must have the same shape: check the sizes given to gc.param and gc.signal")
    if not am:
        a = _broadcast(_scalar(a, b), b.shape)
    if not bm:
        b = _broadcast(_scalar(b, a), a.shape)
    return _adopt(sp.MatAdd(a, b).doit())


def _broadcast(s, shape):
    return sp.ZeroMatrix(*shape) if s == 0 else sp.MatMul(s, ones(*shape)).doit()


def _negate(e):
    return _adopt(sp.MatMul(sp.S.NegativeOne, e).doit()) if isinstance(e, sp.MatrixExpr) else -e


def _product(a, b):
    """``a * b``: a matrix product, or a scalar times a matrix."""
    if isinstance(a, sp.MatrixExpr) and isinstance(b, sp.MatrixExpr):
        if a.shape[1] != b.shape[0]:
            same = (f"; for the elementwise product write gc.hadamard({a}, {b})" if a.shape == b.shape else
                    ": check the sizes given to gc.param and gc.signal")
            raise GraphcompError(f"{_show(a)}*{_show(b)}: {a} is {_shape(a)} and {b} is {_shape(b)}; a matrix "
                                 f"product needs the columns of {a} ({a.shape[1]}) to equal the rows of {b} "
                                 f"({b.shape[0]}){same}")
    elif isinstance(a, sp.MatrixExpr):
        b = _scalar(b, a)
    else:
        a = _scalar(a, b)
    return _adopt(sp.MatMul(a, b).doit())


def _plain(e):
    """A checked expression as the sympy class it extends (itself for graphcomp's own)."""
    base = _SYMPY.get(type(e))
    return sp.Basic.__new__(base, *e.args) if base else e


def _adopt(e):
    """The same expression as one of the checked classes, so that its arithmetic is checked too."""
    cls = _CHECKED.get(type(e))
    return sp.Basic.__new__(cls, *e.args) if cls else e


# sympy's matrix expressions with checked arithmetic; they keep sympy's names, so they print,
# compare and hash as sympy's do


class MatrixSymbol(_Checked, sp.MatrixSymbol):
    """A matrix parameter (``gc.param("W", H, D)``)."""


class MatAdd(_Checked, sp.MatAdd):
    pass


class MatMul(_Checked, sp.MatMul):
    pass


class MatPow(_Checked, sp.MatPow):
    pass


class Transpose(_Checked, sp.Transpose):
    pass


class HadamardProduct(_Checked, sp.HadamardProduct):
    pass


class BlockMatrix(_Checked, sp.BlockMatrix):
    pass


class OneMatrix(_Checked, sp.OneMatrix):
    pass


class ElementwiseApplyFunction(_Checked, _SympyElementwise):
    pass


_CHECKED = {c.__bases__[1]: c for c in (MatrixSymbol, MatAdd, MatMul, MatPow, Transpose, HadamardProduct,
                                      BlockMatrix, OneMatrix, ElementwiseApplyFunction)}
_SYMPY = {c: base for base, c in _CHECKED.items()}


def ones(rows: int, cols: int = 1) -> OneMatrix:
    """The rows x cols matrix of ones (a column by default): ``gc.ones(H) - z``, also written
    ``1 - z``."""
    return OneMatrix(_size("ones", "matrix", rows), _size("ones", "matrix", cols))


# ---------------------------------------------------------------- signals and parameters

class SignalRef(_Checked, sp.MatrixExpr):
    """``h(t-1)``: the (column-vector or matrix) value of signal ``h`` at one time."""

    def __new__(cls, name: str, time, rows: int, cols: int = 1):
        name = name if isinstance(name, Str) else Str(name)  # sympy rebuilds with func(*args)
        return sp.Basic.__new__(cls, name, sp.sympify(time), sp.Integer(rows), sp.Integer(cols))

    name = property(lambda self: self.args[0].name)
    time = property(lambda self: self.args[1])
    shape = property(lambda self: (self.args[2], self.args[3]))

    @property
    def point(self) -> tuple:
        """Its arguments: (time,) or, over a grid, one per axis."""
        return tuple(self.time) if isinstance(self.time, sp.Tuple) else (self.time,)

    def _entry(self, i, j, **kwargs):
        return MatrixElement(self, i, j)

    def _sympystr(self, printer) -> str:
        return f"{self.name}({', '.join(printer._print(a) for a in self.point)})"

    def _latex(self, printer) -> str:
        return signal_latex(self.name, ", ".join(printer._print(a) for a in self.point))


def signal_latex(name: str, time: str) -> str:
    """``h^{(t-1)}``; an adjoint ``∇h`` is written ``\\nabla_{h^{(t)}} L``."""
    at = f"{sp.latex(sp.Symbol(name.lstrip('∇')))}^{{({time})}}"
    return rf"\nabla_{{{at}}} L" if name.startswith("∇") else at


class Signal:
    """A time-indexed vector (or matrix) signal; call it with a time: ``h(t-1)``."""

    def __init__(self, name: str, rows: int, cols: int = 1):
        self.name, self.rows, self.cols = name, rows, cols

    def __call__(self, *axes) -> SignalRef:
        """At a time (``h(t-1)``) or, over a grid, at a point given per axis (``h(i-1, j)``)."""
        if not axes:
            raise GraphcompError(f"signal {self.name!r} needs its time, like {self.name}(t-1), or a point of "
                                 f"a grid, like {self.name}(i-1, j)")
        return SignalRef(self.name, axes[0] if len(axes) == 1 else sp.Tuple(*axes), self.rows, self.cols)

    def __repr__(self) -> str:
        return f"signal({self.name!r}, {self.rows}{'' if self.cols == 1 else f', {self.cols}'})"


def _size(name: str, what: str, n) -> int:
    if not (isinstance(n, int) or (hasattr(n, "is_Integer") and n.is_Integer)) or int(n) < 1:
        raise GraphcompError(f"{what} {name!r}: size {n!r} must be a positive integer")
    return int(n)


def signal(name: str, rows: int | None = None, cols: int = 1):
    """A time-indexed signal: ``signal("x")`` is a scalar (a sympy Function), ``signal("h", H)``
    an H x 1 column vector, ``signal("M", r, c)`` an r x c matrix."""
    if not isinstance(name, str) or not name:
        raise GraphcompError(f"a signal needs a non-empty string name, got {name!r}")
    if rows is None:
        return sp.Function(name)
    return Signal(name, _size(name, "signal", rows), _size(name, "signal", cols))


def param(name: str, rows: int | None = None, cols: int | None = None):
    """A parameter: ``param("a")`` a scalar Symbol, ``param("b", H)`` an H x 1 vector (a NumPy
    array of shape (H,)), ``param("W", H, D)`` an H x D matrix."""
    if not isinstance(name, str) or not name:
        raise GraphcompError(f"a parameter needs a non-empty string name, got {name!r}")
    if rows is None:
        return sp.Symbol(name)
    rows = _size(name, "parameter", rows)
    return MatrixSymbol(name, rows, 1 if cols is None else _size(name, "parameter", cols))


class Child(sp.Symbol):
    """The k-th child of the current node of a tree: ``h(gc.child(0))`` reads h there."""

    def __new__(cls, k):
        k = int(str(k)[5:]) if isinstance(k, str) else k   # sympy rebuilds a symbol from its name
        node = sp.Symbol.__new__(cls, f"child{k}", integer=True)
        node.k = k
        return node

    def __getnewargs_ex__(self):
        return (self.k,), {}

    def _latex(self, printer) -> str:
        return f"c_{{{self.k}}}(t)"


HAS_CHILD = "has_child"   # the input a tree kernel fills: 1 where a node's child k exists, else 0


class Parent(sp.Function):
    """p(v): the parent of node v, as the gradient equations of a tree write it."""

    nargs = 1

    def _sympystr(self, printer) -> str:
        return f"p({printer._print(self.args[0])})"

    def _latex(self, printer, exp=None) -> str:
        return f"p({printer._print(self.args[0])})"


class ChildOf(sp.Function):
    """c_k(v): the k-th child of node v (``ChildOf(k, Parent(t))`` is a sibling of t, or t)."""

    nargs = 2

    def _sympystr(self, printer) -> str:
        return f"c{self.args[0]}({printer._print(self.args[1])})"

    def _latex(self, printer, exp=None) -> str:
        return f"c_{{{self.args[0]}}}({printer._print(self.args[1])})"


class IsChild(sp.Function):
    """[c_k(p(v)) = v]: 1 where node v is its parent's k-th child, else 0."""

    nargs = 2

    def _sympystr(self, printer) -> str:
        k, v = self.args
        return f"[c{k}(p({printer._print(v)})) = {printer._print(v)}]"

    def _latex(self, printer, exp=None) -> str:
        k, v = self.args[0], printer._print(self.args[1])
        return rf"\mathbb{{1}}\left[c_{{{k}}}(p({v})) = {v}\right]"


def child(k: int) -> Child:
    """The k-th child of a tree node (k = 0, 1, ...): a recurrence over trees reads its
    children's states as ``h(gc.child(k))`` and the node's own values at ``t``. A node with
    no k-th child reads zeros there (or ``initial``)."""
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
        raise GraphcompError(f"gc.child({k!r}): a child slot is an integer k >= 0 (0 for the first child)")
    return Child(k)


def over_children(fn, most: int):
    """The sum over a node's children (up to ``most`` of them) of ``fn(c)``, where ``c`` is
    one child (read a signal there as ``h(c)``): a node with fewer children sums fewer terms.
    The child-sum Tree-LSTM writes its ``Σ_k f_k ⊙ c(k)`` and ``Σ_k h(k)`` with it."""
    if not (isinstance(most, int) and not isinstance(most, bool) and most >= 1):
        raise GraphcompError(f"over_children(..., most={most!r}): give the largest number of children a node "
                             "has (the children array's last axis), a positive integer")
    terms = []
    for k in range(most):
        term = sp.sympify(fn(Child(k)))
        terms.append(sp.Function(HAS_CHILD)(Child(k)) * term)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


# ---------------------------------------------------------------- elementwise functions

class sigmoid(sp.Function):
    """The logistic function 1 / (1 + exp(-x)), elementwise on a matrix expression."""

    @classmethod
    def eval(cls, arg):
        if isinstance(arg, sp.MatrixExpr):
            return elementwise(cls, arg)

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0]) * (1 - sigmoid(self.args[0]))

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _latex(self, printer, exp=None):
        s = rf"\sigma\left({printer._print(self.args[0])}\right)"
        return s if exp is None else rf"{s}^{{{exp}}}"


class relu(sp.Function):
    """max(x, 0), elementwise on a matrix expression; its derivative is the step function,
    0 at 0 (as in PyTorch)."""

    @classmethod
    def eval(cls, arg):
        if isinstance(arg, sp.MatrixExpr):
            return elementwise(cls, arg)

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0], 0)

    def _latex(self, printer, exp=None):
        s = rf"\operatorname{{relu}}\left({printer._print(self.args[0])}\right)"
        return s if exp is None else rf"{s}^{{{exp}}}"


def _as_lambda(fn) -> sp.Lambda:
    if isinstance(fn, sp.Lambda):
        if len(fn.variables) != 1:
            raise GraphcompError(f"elementwise function {fn} must take exactly one argument")
        return fn
    z = sp.Dummy("z", real=True)
    try:
        body = fn(z)
    except Exception as e:  # a user's callable that is not a one-argument sympy function
        raise GraphcompError(f"elementwise function {fn!r} cannot be applied to a sympy symbol: {e}") from None
    if not isinstance(body, sp.Expr) or isinstance(body, sp.MatrixExpr):
        raise GraphcompError(f"elementwise function {fn!r} must map a scalar to a scalar sympy expression")
    return sp.Lambda(z, body)


def elementwise(fn, expr):
    """Apply a one-argument sympy function (or ``sympy.Lambda``) to every entry of ``expr``."""
    expr = sp.sympify(expr)
    lam = _as_lambda(fn)
    for f in lam.expr.atoms(AppliedUndef):   # sp.Function("f"): nothing to compute or differentiate
        if f.has(lam.variables[0]):
            raise GraphcompError(undefined(f.func.__name__, expr))
    if isinstance(expr, sp.MatrixExpr):
        # built directly: sympy's constructor calls the function on a 1x1 matrix, and
        # gc.sigmoid of a matrix is this very constructor
        return sp.Basic.__new__(ElementwiseApplyFunction, lam, expr)
    return lam(expr)


def tanh(expr):
    return elementwise(sp.tanh, expr)


def exp(expr):
    return elementwise(sp.exp, expr)


def log(expr):
    return elementwise(sp.log, expr)


def hadamard(a, b):
    """The elementwise product ``a ⊙ b`` (a plain product on scalars)."""
    a, b = sp.sympify(a), sp.sympify(b)
    if isinstance(a, sp.MatrixExpr) and isinstance(b, sp.MatrixExpr):
        if a.shape != b.shape:
            raise GraphcompError(f"hadamard({a}, {b}): shapes {_shape(a)} and {_shape(b)} differ")
        return HadamardProduct(a, b)
    return a * b


def concat(*parts):
    """Stack column vectors (or matrices with equal columns) on top of each other."""
    parts = [sp.sympify(p) for p in parts]
    if not parts:
        raise GraphcompError("concat() needs at least one part")
    for p in parts:
        if not isinstance(p, sp.MatrixExpr):
            raise GraphcompError(f"concat: {p} is a scalar; make it a 1-vector signal or parameter")
    if len({p.shape[1] for p in parts}) != 1:
        raise GraphcompError("concat: parts have different numbers of columns: "
                             + ", ".join(f"{p} is {_shape(p)}" for p in parts))
    return parts[0] if len(parts) == 1 else _adopt(sp.BlockMatrix([[p] for p in parts]))


class MeanSquaredError(sp.Expr):
    """mse(pred, target): the mean over components of the squared error (a scalar)."""

    is_commutative = True
    precedence = 60   # printed (1/n) ||d||²: a power's base takes brackets (sympy's scale)

    def _sympystr(self, printer):
        return f"mse({printer._print(self.args[0])}, {printer._print(self.args[1])})"

    def _latex(self, printer):
        n = self.args[0].shape[0] * self.args[0].shape[1]
        d = printer._print(sp.MatAdd(self.args[0], -self.args[1]))
        norm = rf"\left\lVert {d} \right\rVert^{{2}}"
        return norm if n == 1 else rf"\frac{{1}}{{{n}}}{norm}"


class CrossEntropy(sp.Expr):
    """cross_entropy(logits, onehot) = -sum(onehot ⊙ log softmax(logits)) (a scalar)."""

    is_commutative = True
    precedence = 40   # printed with a leading minus: a factor takes brackets, like a sum

    def _sympystr(self, printer):
        return f"cross_entropy({printer._print(self.args[0])}, {printer._print(self.args[1])})"

    def _latex(self, printer):
        z, y = printer._print(self.args[0]), printer.parenthesize(self.args[1], 1000, strict=True)
        return rf"-{{{y}}}^{{\top}} \log \operatorname{{softmax}}\left({z}\right)"


def mse(pred, target):
    """Mean over components of the squared error between ``pred`` and ``target``."""
    pred, target = sp.sympify(pred), sp.sympify(target)
    pm, tm = isinstance(pred, sp.MatrixExpr), isinstance(target, sp.MatrixExpr)
    if not pm and not tm:
        return (pred - target) ** 2
    if pm != tm or pred.shape != target.shape:
        raise GraphcompError(f"mse({pred}, {target}): shapes "
                             f"{_shape(pred) if pm else 'scalar'} and {_shape(target) if tm else 'scalar'} differ")
    return MeanSquaredError(pred, target)


def cross_entropy(logits, onehot):
    """``-Σ onehot ⊙ log softmax(logits)`` over the components of column vectors."""
    logits, onehot = sp.sympify(logits), sp.sympify(onehot)
    if not isinstance(logits, sp.MatrixExpr) or not isinstance(onehot, sp.MatrixExpr):
        raise GraphcompError(f"cross_entropy({logits}, {onehot}) needs vector logits and a vector "
                             "one-hot target (gc.signal(name, classes))")
    if logits.shape != onehot.shape or logits.shape[1] != 1:
        raise GraphcompError(f"cross_entropy: logits {logits} is {_shape(logits)} and target "
                             f"{onehot} is {_shape(onehot)}; both must be the same column vector shape")
    return CrossEntropy(logits, onehot)
