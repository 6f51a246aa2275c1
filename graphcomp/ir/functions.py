"""The elementwise functions graphcomp knows by name, one entry each: its NumPy evaluation,
its NumPy source, the fast routines of the compiled runtime (with a branch for scalar
recurrences, branch-free for loops over components) and its diagram label. Any other sympy
function or ``Lambda`` works too: sympy's printers give its code, ``sympy.diff`` its derivative.

The two printers here turn scalar sympy expressions into source: ``LoopPrinter`` for the
compiled loops (the runtime's routines, literals of the kernel's dtype) and ``NumPyPrinter``
for arrays in a driver."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp
from sympy.printing.numpy import NumPyPrinter as _SympyNumPy
from sympy.printing.precedence import precedence
from sympy.printing.pycode import PythonCodePrinter


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class Elementwise:
    """One named elementwise function."""

    name: str                      # the sympy class's name
    numpy: Callable | None         # evaluation on arrays (None: sympy's lambdify knows it)
    source: str | None             # NumPy source, with {0} for the argument (None: sympy's printer)
    scalar: str | None             # the runtime routine for a scalar recurrence (None: the printer's)
    vector: str | None             # the branch-free routine for a loop over components
    label: str                     # the diagram label


FUNCTIONS = {f.name: f for f in (
    Elementwise("tanh", None, None, "_tanh", "_vtanh", "tanh"),
    Elementwise("sigmoid", _sigmoid, "(1/(1 + np.exp(-({0}))))", "_sigmoid", "_vsigmoid", "σ"),
    Elementwise("exp", None, None, "_exp", "_exp", "exp"),
    Elementwise("log", None, None, None, None, "log"),
    Elementwise("relu", lambda x: np.maximum(x, 0.0), "np.maximum({0}, 0)", None, None, "relu"),
)}

NUMPY_MODULES = [{f.name: f.numpy for f in FUNCTIONS.values() if f.numpy is not None}, "numpy", "scipy"]


def label(fn) -> str:
    """A function's name in diagrams."""
    entry = FUNCTIONS.get(type(fn).__name__ if not isinstance(fn, type) else fn.__name__)
    return entry.label if entry else (fn.__name__ if isinstance(fn, type) else type(fn).__name__)


class LoopPrinter(PythonCodePrinter):
    """Scalar sympy expressions as Python for Numba: the runtime's fast functions, and
    literals of the kernel's dtype. ``vector``: inside a loop over components."""

    def __init__(self, dtype: str, vector: bool = False):
        super().__init__({"standard": "python3"})
        self.f32, self.vector = dtype == "float32", vector

    def literal(self, value) -> str:
        text = repr(float(value))
        return f"np.float32({text})" if self.f32 else text

    def _print_Integer(self, e):
        return self.literal(int(e))

    def _print_Rational(self, e):
        return self.literal(e.p / e.q)

    def _print_Float(self, e):
        return self.literal(e)

    def _print_NegativeInfinity(self, e):
        return "dtype(-np.inf)"

    def _print_Pow(self, e, rational=False):
        base = self.parenthesize(e.base, precedence(e))
        if e.exp.is_Integer:   # stays an integer power: Numba multiplies
            n = int(e.exp)
            return f"{base}**{n}" if n > 0 else f"({self.literal(1)} / {base}**{-n})"
        if e.exp == sp.S.Half:
            return f"math.sqrt({self._print(e.base)})"
        return f"{base}**{self.parenthesize(e.exp, precedence(e))}"

    def _print_Function(self, e):
        entry = FUNCTIONS.get(type(e).__name__)
        routine = entry and (entry.vector if self.vector else entry.scalar)
        if routine:
            return f"{routine}({self._print(e.args[0])})"
        return super()._print_Function(e)

    _print_tanh = _print_sigmoid = _print_exp = _print_Function

    def _print_relu(self, e):
        return f"max({self._print(e.args[0])}, {self.literal(0)})"

    def _print_Heaviside(self, e):
        x = self._print(e.args[0])
        h0 = self._print(e.args[1]) if len(e.args) > 1 else self.literal(0.5)
        return f"({self.literal(1)} if {x} > 0 else ({h0} if {x} == 0 else {self.literal(0)}))"


class NumPyPrinter(_SympyNumPy):
    """Elementwise sympy expressions over NumPy arrays, written with ``np.``."""

    def _print_Function(self, e):
        entry = FUNCTIONS.get(type(e).__name__)
        if entry and entry.source:
            return entry.source.format(self._print(e.args[0]))
        return super()._print_Function(e)

    _print_sigmoid = _print_relu = _print_Function

    def _print_Heaviside(self, e):
        h0 = self._print(e.args[1]) if len(e.args) > 1 else "0.5"
        return f"np.heaviside({self._print(e.args[0])}, {h0})"


def loop_code(expr: sp.Expr, args: list, dtype: str, vector: bool = False) -> str:
    """``expr`` in ``X(0), X(1), ...`` with ``args[k]`` (source text) for X(k), for the loops."""
    from .core import X
    named = expr.xreplace({X(k): sp.Symbol(a) for k, a in enumerate(args)})
    return LoopPrinter(dtype, vector).doprint(named)


def numpy_code(expr: sp.Expr, args: list) -> str:
    """``expr`` in ``X(0), X(1), ...`` over NumPy arrays named ``args``."""
    from .core import X
    named = expr.xreplace({X(k): sp.Symbol(a) for k, a in enumerate(args)})
    return NumPyPrinter({"standard": "python3"}).doprint(named).replace("numpy.", "np.")
