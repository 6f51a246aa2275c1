"""Equations in textbook notation."""
import sympy as sp

import graphcomp as gc
from graphcomp.views.latex import latex

from catalogue import bidirectional, elman, lstm, nonlinear_map

t = gc.t


def test_signals_and_adjoints():
    h = gc.signal("h", 3)
    assert latex(h(t - 1)) == "h^{(t - 1)}"
    assert sp.latex(h(t + 1)) == "h^{(t + 1)}"          # sympy's own printer knows signals too
    assert latex(gc.signal("∇h", 3)(t + 1)) == r"\nabla_{h^{(t + 1)}} L"
    s = sp.Function("s")
    assert latex(s(t - 3)) == "s^{(t - 3)}"
    assert latex(sp.Function("∇s")(t)) == r"\nabla_{s^{(t)}} L"


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
