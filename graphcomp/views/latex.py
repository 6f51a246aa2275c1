"""Equations in textbook notation: h^{(t)}, \\tanh, \\sigma, \\odot, W^\\top, and adjoints
written \\nabla_{h^{(t)}} L."""
from __future__ import annotations

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.latex import LatexPrinter

from ..lang.declare import SignalRef, signal_latex

GRAD = "∇"


class _Raw(sp.Symbol):
    """A symbol printed as the LaTeX it is named with (an already printed argument)."""

    def _latex(self, printer):
        return self.name


class TextbookPrinter(LatexPrinter):
    """sympy's LaTeX printer with the notation of a recurrent-networks chapter."""

    def _name(self, name: str) -> str:
        return super()._print_Symbol(sp.Symbol(name))

    def _print_Function(self, e, exp=None):
        if isinstance(e, AppliedUndef):   # a scalar signal at a time, or at a grid point
            s = signal_latex(e.func.__name__, ", ".join(self._print(a) for a in e.args))
            return s if exp is None else rf"\left({s}\right)^{{{exp}}}"
        return super()._print_Function(e, exp)

    def _print_Symbol(self, e, style="plain"):
        if e.name.startswith(GRAD):
            return rf"\nabla_{{{self._name(e.name[1:])}}} L"
        return super()._print_Symbol(e, style)

    def _print_MatrixSymbol(self, e):
        if e.name.startswith(GRAD):
            return rf"\nabla_{{{self._name(e.name[1:])}}} L"
        return self._name(e.name)

    def _print_ElementwiseApplyFunction(self, e):
        var, body = e.function.variables[0], e.function.expr
        return self._print(body.xreplace({var: _Raw(self._print(e.expr))}))

    def _print_HadamardPower(self, e):
        return f"{{{self._print(e.base)}}}^{{\\circ {self._print(e.exp)}}}"

    def _print_MatAdd(self, e):
        terms = sorted(e.args, key=lambda a: _negative(a))   # 1 - h∘2, not -h∘2 + 1
        out = ""
        for a in terms:
            if _negative(a):
                out += " - " + self._print(-a)
            else:
                out += (" + " if out else "") + self._print(a)
        return out

    def _print_HadamardProduct(self, e):
        return r" \odot ".join(self.parenthesize(a, 1000) if isinstance(a, sp.MatAdd) else self._print(a)
                               for a in e.args)

    def _print_Transpose(self, e):
        inner = self._print(e.arg)
        if not isinstance(e.arg, (sp.MatrixSymbol, SignalRef)):
            inner = rf"\left({inner}\right)"
        return f"{{{inner}}}^{{\\top}}"

    def _print_OneMatrix(self, e):
        return r"\mathbf{1}"

    def _print_MatMul(self, e):
        parts = []
        for a in e.args:
            s = self._print(a)
            parts.append(rf"\left({s}\right)" if isinstance(a, (sp.MatAdd, sp.HadamardProduct)) else s)
        return " ".join(parts)


def _negative(e) -> bool:
    return bool(isinstance(e, sp.MatMul) and e.args[0].is_number and e.args[0] < 0)


def latex(expr) -> str:
    """``expr`` in textbook notation."""
    return TextbookPrinter().doprint(expr)


def aligned(equations: list) -> str:
    """A list of ``sympy.Eq`` as one LaTeX ``aligned`` block."""
    rows = [f"{latex(eq.lhs)} &= {latex(eq.rhs)}" for eq in equations]
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"
