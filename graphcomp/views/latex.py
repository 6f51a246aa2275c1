"""Equations as a reader wants them: LaTeX in textbook notation (h^{(t)}, \\tanh, \\sigma,
\\odot, W^\\top, adjoints written \\nabla_{h^{(t)}} L) and a plain-text ``str`` (⊙, ᵀ, ∘2, σ,
∇h(t + 1)). Every operand is parenthesized by the precedence of the place it lands in, so
what is printed is the model's mathematics."""
from __future__ import annotations

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import precedence_traditional
from sympy.printing.str import StrPrinter

from ..lang.declare import HAS_CHILD, CrossEntropy, MeanSquaredError, SignalRef, signal_latex
from ..errors import GraphcompError
from ..ir import X, elementwise_sympy

GRAD = "∇"
# binding strengths, sympy's scale: ⊙ binds tighter than + and looser than a product (W h)
ADD, HADAMARD, MUL, POW, FUNC, ATOM = 40, 45, 50, 60, 70, 1000
_LEAVES = (sp.MatrixSymbol, SignalRef, sp.OneMatrix, sp.ZeroMatrix, sp.BlockMatrix)


class _Raw(sp.Dummy):
    """An already printed argument, substituted into a function body; it keeps the
    precedence of what it stands for, so the body's printer parenthesizes it."""

    def __new__(cls, text: str, precedence: int):
        obj = super().__new__(cls, text)
        obj.precedence = precedence
        return obj

    def _latex(self, printer):
        return self.name

    def _sympystr(self, printer):
        return self.name


def _factors(e: sp.MatMul) -> tuple:
    """A matrix product as (scalar coefficient, matrix factors), nested products flattened."""
    coeff, mats = sp.Integer(1), []
    for a in e.args:
        if isinstance(a, sp.MatMul):
            c, m = _factors(a)
            coeff, mats = coeff * c, mats + m
        elif isinstance(a, sp.MatrixExpr):
            mats.append(a)
        else:
            coeff *= a
    # a 1x1 matrix of ones (sympy's I for 1x1) is the unit of any product it is in
    unit = lambda m: isinstance(m, (sp.OneMatrix, sp.Identity)) and m.shape == (1, 1)
    return coeff, [m for m in mats if not unit(m)] or mats[:1]


def _product(coeff, mats: list):
    return mats[0] if coeff == 1 and len(mats) == 1 else sp.MatMul(*([] if coeff == 1 else [coeff]), *mats)


def _split_sign(e) -> tuple:
    """(True, -e) when ``e`` is a matrix product or Hadamard product with a negative sign
    that can be written in front of it, else (False, e)."""
    if isinstance(e, sp.MatMul):
        coeff, mats = _factors(e)
        if coeff.could_extract_minus_sign():
            return True, _product(-coeff, mats)
    if isinstance(e, sp.HadamardProduct):
        signs = [_split_sign(a) for a in e.args]
        if any(neg for neg, _ in signs):
            return sum(neg for neg, _ in signs) % 2 == 1, sp.HadamardProduct(*(a for _, a in signs))
    return False, e


def _is_reciprocal(e) -> bool:
    return isinstance(e, sp.HadamardPower) and e.exp.could_extract_minus_sign()


def _lambda(e: ElementwiseApplyFunction) -> tuple:
    f = e.function
    if isinstance(f, sp.Lambda):
        return f.variables[0], f.expr
    z = sp.Dummy("z")
    return z, f(z)


def _matrix_form(e: ElementwiseApplyFunction):
    """A user's elementwise function of a matrix as Hadamard products, powers and functions of
    one argument (``z/(1+exp(-z))`` of a vector: a ⊙ (1 + e^{-a})∘-1); None when the body is
    already one function of the argument (tanh(a)) or has no matrix form."""
    var, body = _lambda(e)
    if isinstance(body, sp.Function) and all(a == var or not a.has(var) for a in body.args):
        return None
    try:
        form = elementwise_sympy(body.xreplace({var: X(0)}), [e.expr])
    except GraphcompError:
        return None
    return form if isinstance(form, sp.MatrixExpr) else form * sp.OneMatrix(*e.shape)


def _is_grad(e) -> bool:
    """An adjoint leaf: ∇h(t), ∇W, ∇a, ∇s(t)."""
    if isinstance(e, (sp.Symbol, sp.MatrixSymbol, SignalRef)):
        return e.name.startswith(GRAD)
    return isinstance(e, AppliedUndef) and e.func.__name__.startswith(GRAD)


def _common_prec(e) -> int | None:
    """The precedence both printers give ``e``, or None where they differ."""
    if isinstance(e, (sp.MatMul, sp.HadamardProduct)) and _split_sign(e)[0]:
        return ADD
    if isinstance(e, sp.MatMul):
        return MUL
    if isinstance(e, sp.Mul) and e.could_extract_minus_sign():
        return ADD      # -a b prints with a leading minus (sympy's table says Mul)
    if isinstance(e, sp.Transpose):
        return POW
    if isinstance(e, sp.MatrixSlice):
        return MUL          # X[:3, :]: bracketed as a power's base
    return None


def _terms(printer, e: sp.MatAdd) -> str:
    """A matrix sum, negative terms subtracted and written last (1 - h∘2, not -h∘2 + 1)."""
    terms = []
    for a in e.args:   # a sum inside a sum needs no brackets
        terms += [_split_sign(b) for b in a.args] if isinstance(a, sp.MatAdd) else [_split_sign(a)]
    terms.sort(key=lambda nt: nt[0])
    out = ""
    for i, (neg, a) in enumerate(terms):
        s = printer.parenthesize(a, ADD) if i or neg else printer._print(a)
        out += ((" - " if neg else " + ") if i else ("- " if neg else "")) + s
    return out


class TextbookPrinter(LatexPrinter):
    """sympy's LaTeX printer with the notation of a recurrent-networks chapter."""

    def _prec(self, e) -> int:
        """How tightly ``e`` binds as this printer writes it."""
        p = _common_prec(e)
        if p is not None:
            return p
        if _is_grad(e):
            return POW          # \nabla_{x} L: an operator applied to L, bracketed as a power base
        if isinstance(e, sp.HadamardProduct):
            return MUL if any(_is_reciprocal(a) for a in e.args) else HADAMARD   # a fraction or a ⊙ b
        if isinstance(e, sp.HadamardPower):
            return MUL if _is_reciprocal(e) else POW
        if isinstance(e, ElementwiseApplyFunction):
            form = _matrix_form(e)
            if form is not None:
                return self._prec(form)
            body = _lambda(e)[1]
            if not isinstance(body, sp.Function):
                return MUL          # (z ↦ ...)_∘(a): bracketed as a power's base
            return POW if body.func == sp.exp else FUNC    # e^{a} is a power
        return precedence_traditional(e)

    def parenthesize(self, item, level, is_neg=False, strict=False) -> str:
        p = self._prec(item)
        if (is_neg and strict) or p < level or (not strict and p <= level):
            return self._add_parens(self._print(item))
        return self._print(item)

    def _needs_add_brackets(self, expr) -> bool:
        # a term that prints with a leading minus it does not extract (a cross-entropy)
        return super()._needs_add_brackets(expr) or self._prec(expr) <= ADD

    def _name(self, name: str) -> str:
        return super()._print_Symbol(sp.Symbol(name))

    def _print_Function(self, e, exp=None):
        if isinstance(e, AppliedUndef) and e.func.__name__ == HAS_CHILD:   # 1 where the child exists
            return rf"\mathbb{{1}}\left[{self._print(e.args[0])} \neq 0\right]"
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
        form = _matrix_form(e)
        if form is not None:
            return self._print(form)
        var, body = _lambda(e)
        if not isinstance(body, sp.Function):   # max(z, 1 - z): sympy's (z ↦ ...)_∘(a)
            return super()._print_ElementwiseApplyFunction(e)
        return self._print(body.xreplace({var: _Raw(self._print(e.expr), self._prec(e.expr))}))

    def _hadamard(self, factors: list) -> str:
        if len(factors) == 1:      # the whole numerator or denominator of a fraction
            return self._print(factors[0])
        return r" \odot ".join(self.parenthesize(a, HADAMARD, strict=True) for a in factors)

    def _hadamard_factors(self, factors: list) -> str:
        """a ⊙ b, or an elementwise division written as a fraction of vectors."""
        num = [a for a in factors if not _is_reciprocal(a)]
        den = [a.base if a.exp == -1 else sp.HadamardPower(a.base, -a.exp) for a in factors if _is_reciprocal(a)]
        s = self._hadamard(num) or self._print(sp.OneMatrix(1, 1))
        return rf"\frac{{{s}}}{{{self._hadamard(den)}}}" if den else s

    def _print_HadamardProduct(self, e):
        neg, e = _split_sign(e)
        s = self._hadamard_factors(list(e.args))
        return "- " + s if neg else s

    def _print_HadamardPower(self, e):
        if _is_reciprocal(e):
            return self._hadamard_factors([e])
        return f"{{{self.parenthesize(e.base, POW)}}}^{{\\circ {self._print(e.exp)}}}"

    def _print_MatAdd(self, e):
        return _terms(self, e)

    def _print_MatMul(self, e):
        coeff, mats = _factors(e)
        neg = coeff.could_extract_minus_sign()
        coeff = -coeff if neg else coeff
        parts = [] if coeff == 1 else [self.parenthesize(coeff, MUL, strict=True)]
        s = " ".join(parts + [self.parenthesize(m, MUL, strict=True) for m in mats])
        return "- " + s if neg else s

    def _print_MatPow(self, e):
        base = self._print(e.base)
        if not isinstance(e.base, sp.MatrixSymbol) or _is_grad(e.base):
            base = self._add_parens(base)
        return f"{base}^{{{self._print(e.exp)}}}"

    def _print_Transpose(self, e):
        inner = self._print(e.arg)
        if _is_grad(e.arg) or not (isinstance(e.arg, _LEAVES) or self._prec(e.arg) >= FUNC):
            inner = rf"\left({inner}\right)"
        return f"{{{inner}}}^{{\\top}}"

    def _print_OneMatrix(self, e):
        return r"\mathbf{1}"

    def _print_ZeroMatrix(self, e):
        return r"\mathbf{0}"

    def _print_Identity(self, e):   # sympy turns a 1x1 matrix of ones into I
        return r"\mathbf{1}" if e.shape == (1, 1) else super()._print_Identity(e)

    def _print_Sum(self, e):
        """One \\sum per axis, outermost first: \\sum_{i=1}^{I} \\sum_{j=1}^{J} f."""
        sums = "".join(rf"\sum_{{{self._print(i)}={self._print(lo)}}}^{{{self._print(hi)}}} " for i, lo, hi in e.limits)
        return sums + self.parenthesize(e.function, MUL, strict=True)


def latex(expr) -> str:
    """``expr`` in textbook notation."""
    return TextbookPrinter().doprint(expr)


def aligned(equations: list) -> str:
    """A list of ``sympy.Eq`` as one LaTeX ``aligned`` block."""
    rows = [f"{latex(eq.lhs)} &= {latex(eq.rhs)}" for eq in equations]
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"


# ---------------------------------------------------------------- plain text

class TextPrinter(StrPrinter):
    """sympy's str printer with ⊙, ᵀ, ∘ and σ instead of HadamardProduct(...), .T, Lambda."""

    def _prec(self, e) -> int:
        p = _common_prec(e)
        if p is not None:
            return p
        if isinstance(e, sp.HadamardProduct):
            return HADAMARD
        if isinstance(e, sp.HadamardPower):
            return POW
        if isinstance(e, (MeanSquaredError, CrossEntropy)):
            return FUNC          # mse(a, b): a call
        if isinstance(e, ElementwiseApplyFunction):
            form = _matrix_form(e)
            return FUNC if form is None else self._prec(form)
        return precedence_traditional(e)

    def parenthesize(self, item, level, strict=False) -> str:
        p = self._prec(item)
        return f"({self._print(item)})" if p < level or (not strict and p <= level) else self._print(item)

    def _print_ElementwiseApplyFunction(self, e):
        form = _matrix_form(e)
        if form is not None:
            return self._print(form)
        var, body = _lambda(e)
        if not isinstance(body, sp.Function):   # max(z, 1 - z): (z ↦ ...)∘(a)
            return f"({self._print(var)} ↦ {self._print(body)})∘({self._print(e.expr)})"
        return self._print(body.xreplace({var: _Raw(self._print(e.expr), self._prec(e.expr))}))

    def _print_sigmoid(self, e):
        return f"σ({self._print(e.args[0])})"

    def _print_HadamardProduct(self, e):
        neg, e = _split_sign(e)
        s = " ⊙ ".join(self.parenthesize(a, MUL) for a in e.args)   # (W*h) ⊙ b: no rule to learn
        return "-" + s if neg else s

    def _print_HadamardPower(self, e):
        exp = self._print(e.exp)
        return f"{self.parenthesize(e.base, POW)}∘{exp if e.exp.is_Integer and e.exp > 0 else f'({exp})'}"

    def _print_MatAdd(self, e):
        return _terms(self, e)

    def _print_MatMul(self, e):
        coeff, mats = _factors(e)
        neg = coeff.could_extract_minus_sign()
        coeff = -coeff if neg else coeff
        parts = [] if coeff == 1 else [self.parenthesize(coeff, POW if coeff.is_Rational else MUL, strict=True)]
        s = "*".join(parts + [self.parenthesize(m, MUL, strict=True) for m in mats])
        return "-" + s if neg else s

    def _print_Transpose(self, e):
        return f"{self.parenthesize(e.arg, POW)}ᵀ"

    def _print_Identity(self, e):
        return "1" if e.shape == (1, 1) else "I"

    def _print_BlockMatrix(self, e):
        rows = e.blocks.tolist()
        return "[" + "; ".join(", ".join(self._print(b) for b in row) for row in rows) + "]"

    def _print_Sum(self, e):
        sums = "".join(f"Σ_{{{self._print(i)}={self._print(lo)}..{self._print(hi)}}} " for i, lo, hi in e.limits)
        return sums + self.parenthesize(e.function, MUL, strict=True)


def text(expr) -> str:
    """``expr`` as readable plain text."""
    return TextPrinter().doprint(expr)


class Equation(sp.Equality):
    """A ``sympy.Eq`` whose ``str`` reads like the LaTeX (``∇h(t) = Wᵀ*(∇h(t + 1) ⊙ ...)``)
    and whose ``sympy.latex`` is the textbook printer's."""

    def _sympystr(self, printer) -> str:
        return f"{text(self.lhs)} = {text(self.rhs)}"

    def _latex(self, printer) -> str:
        return f"{latex(self.lhs)} = {latex(self.rhs)}"
