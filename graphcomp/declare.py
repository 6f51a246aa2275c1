"""The declaration language: time-indexed signals, parameters and the elementwise functions
a user writes a recurrence with. Scalars are plain sympy; vectors are sympy matrix
expressions whose leaves are ``SignalRef`` (``h(t-1)``) and ``MatrixSymbol`` (``W``)."""
from __future__ import annotations

import sympy as sp
from sympy.core.symbol import Str
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from .errors import GraphcompError

t = sp.Symbol("t", integer=True)
"""The time index. Signals are read at ``t`` plus an integer constant."""


class SignalRef(sp.MatrixExpr):
    """``h(t-1)``: the (column-vector or matrix) value of signal ``h`` at one time."""

    def __new__(cls, name: str, time, rows: int, cols: int = 1):
        name = name if isinstance(name, Str) else Str(name)  # sympy rebuilds with func(*args)
        return sp.Basic.__new__(cls, name, sp.sympify(time), sp.Integer(rows), sp.Integer(cols))

    name = property(lambda self: self.args[0].name)
    time = property(lambda self: self.args[1])
    shape = property(lambda self: (self.args[2], self.args[3]))

    def _entry(self, i, j, **kwargs):
        return sp.MatrixElement(self, i, j)

    def _sympystr(self, printer) -> str:
        return f"{self.name}({printer._print(self.time)})"

    def _latex(self, printer) -> str:
        return signal_latex(self.name, printer._print(self.time))


def signal_latex(name: str, time: str) -> str:
    """``h^{(t-1)}``; an adjoint ``∇h`` is written ``\\nabla_{h^{(t)}} L``."""
    at = f"{sp.latex(sp.Symbol(name.lstrip('∇')))}^{{({time})}}"
    return rf"\nabla_{{{at}}} L" if name.startswith("∇") else at


class Signal:
    """A time-indexed vector (or matrix) signal; call it with a time: ``h(t-1)``."""

    def __init__(self, name: str, rows: int, cols: int = 1):
        self.name, self.rows, self.cols = name, rows, cols

    def __call__(self, time) -> SignalRef:
        return SignalRef(self.name, time, self.rows, self.cols)

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
    return sp.MatrixSymbol(name, rows, 1 if cols is None else _size(name, "parameter", cols))


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
        return sp.HadamardProduct(a, b)
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
    return parts[0] if len(parts) == 1 else sp.BlockMatrix([[p] for p in parts])


def _shape(e) -> str:
    return "x".join(str(n) for n in e.shape)


class MeanSquaredError(sp.Expr):
    """mse(pred, target): the mean over components of the squared error (a scalar)."""

    is_commutative = True

    def _sympystr(self, printer):
        return f"mse({printer._print(self.args[0])}, {printer._print(self.args[1])})"

    def _latex(self, printer):
        n = self.args[0].shape[0] * self.args[0].shape[1]
        d = printer._print(sp.MatAdd(self.args[0], -self.args[1]))
        return rf"\frac{{1}}{{{n}}}\left\lVert {d} \right\rVert^{{2}}"


class CrossEntropy(sp.Expr):
    """cross_entropy(logits, onehot) = -sum(onehot ⊙ log softmax(logits)) (a scalar)."""

    is_commutative = True

    def _sympystr(self, printer):
        return f"cross_entropy({printer._print(self.args[0])}, {printer._print(self.args[1])})"

    def _latex(self, printer):
        z, y = (printer._print(a) for a in self.args)
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
