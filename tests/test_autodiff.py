"""Gradients three ways on the catalogue: reverse mode over the unfolded DAG, the loop that
runs the derived adjoint step, and central finite differences."""
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import ir
from graphcomp.ir.autodiff import LOSS, adjoint

from catalogue import CATALOGUE, finite_difference, linear_scalar

t = gc.t


def close(a, b, rtol):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(1.0, np.abs(a).max(initial=0), np.abs(b).max(initial=0))
    return np.abs(a - b).max(initial=0) <= rtol * scale


@pytest.fixture(scope="module", params=CATALOGUE, ids=lambda f: f.__name__)
def case(request):
    return request.param()


def run(case, backend):
    k = gc.compile(case.model, backend=backend)
    return k.loss_and_grad(case.params, case.inputs, case.lengths, case.initial)


def test_dag_and_adjoint_loop_agree(case):
    loss_dag, g_dag = run(case, "unfolded")
    loss_loop, g_loop = run(case, "reference")
    assert close(loss_dag, loss_loop, 1e-12)
    assert set(g_dag) == set(g_loop) == set(case.params)
    for p in case.params:
        assert np.shape(g_loop[p]) == np.shape(case.params[p])
        assert close(g_dag[p], g_loop[p], 1e-10), p


def test_finite_differences_agree(case):
    k = gc.compile(case.model, backend="reference")
    _, grads = run(case, "reference")
    fd = finite_difference(k, case)
    for p in case.params:
        assert close(grads[p], fd[p], 1e-6), (p, grads[p], fd[p])


def test_forward_backends_agree(case):
    a = gc.compile(case.model, backend="unfolded").forward(case.params, case.inputs, case.lengths, case.initial)
    b = gc.compile(case.model, backend="reference").forward(case.params, case.inputs, case.lengths, case.initial)
    assert set(a) == set(b) == set(case.model.states) | set(case.model.outputs)
    for n in a:
        assert a[n].shape == b[n].shape
        assert close(a[n], b[n], 1e-12), n


def test_linear_recurrence_closed_form():
    """s(t) = a s(t-1) + c x(t): s(t) = a^t s0 + Σ_j a^(t-j) c x(j), differentiated by hand."""
    case = linear_scalar()
    a, c = case.params["a"], case.params["c"]
    X, Y, s0 = case.inputs["x"], case.inputs["y"], case.initial["s"]
    T, B = X.shape
    loss, ga, gc_ = 0.0, 0.0, 0.0
    for b in range(B):
        for tt in range(1, T + 1):
            js = np.arange(1, tt + 1)
            s = a ** tt * s0[b] + np.sum(a ** (tt - js) * c * X[js - 1, b])
            ds_da = tt * a ** (tt - 1) * s0[b] + np.sum((tt - js) * a ** np.maximum(tt - js - 1, 0) * c * X[js - 1, b])
            ds_dc = np.sum(a ** (tt - js) * X[js - 1, b])
            r = s - Y[tt - 1, b]
            loss += r ** 2 / B
            ga += 2 * r * ds_da / B
            gc_ += 2 * r * ds_dc / B
    for backend in ("reference", "unfolded"):
        l, g = run(case, backend)
        assert l == pytest.approx(loss, rel=1e-12)
        assert g["a"] == pytest.approx(ga, rel=1e-10)
        assert g["c"] == pytest.approx(gc_, rel=1e-10)


def test_adjoint_step_is_derived_once_as_ir():
    case = CATALOGUE[4]()   # elman
    adj = adjoint(case.model.step)
    assert set(adj.reads) == {"h", LOSS}
    (key,) = adj.reads["h"]
    assert key == ("h", -1)            # the update sends a cotangent to h(t-1) only
    assert set(adj.params["h"]) == {"W", "U", "b"}
    assert set(adj.params[LOSS]) == {"V", "c"}
    # the adjoint reads the tape (h(t)) instead of recomputing tanh
    nodes = ir.toposort(adj.params["h"].values())
    assert not any(n.op == "map" and n.attr.has(sp.tanh) for n in nodes)
    assert ir.read("h", 0, (4, 1)) in nodes


def test_gradient_equations_scalar_map():
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    m = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
    eqs = m.gradient_equations()
    grad_s = sp.Function("∇s")
    assert eqs[0].lhs == grad_s(t)
    expected = (a + b * (1 - sp.tanh(s(t)) ** 2)) * grad_s(t + 1) + 2 * (s(t) - y(t))
    assert sp.simplify(eqs[0].rhs - expected) == 0
    by_param = {str(e.lhs): e.rhs for e in eqs[1:]}
    T = sp.Symbol("T", integer=True, positive=True)
    assert sp.simplify(by_param["∇a"] - sp.Sum(s(t - 1) * grad_s(t), (t, 1, T))) == 0
    assert sp.simplify(by_param["∇c"] - sp.Sum(x(t) * grad_s(t), (t, 1, T))) == 0


def test_gradient_equations_elman_read_like_the_textbook():
    case = CATALOGUE[4]()
    eqs = case.model.gradient_equations()
    text = str(eqs[0])
    assert text.startswith("∇h(t) = Wᵀ*(∇h(t + 1) ⊙ (1 - h(t + 1)∘2))")     # Wᵀ (∇h(t+1) ⊙ tanh')
    assert "Vᵀ*" in text                                                     # the readout's term
    by_lhs = {str(e.lhs): e.rhs for e in eqs}
    assert list(by_lhs)[0] == "∇h(t)"
    assert set(by_lhs) == {"∇h(t)", "∇W", "∇U", "∇b", "∇V", "∇c"}
    assert all(isinstance(e.rhs, sp.Sum) for e in eqs[1:])
    assert "h(t - 1).T" in str(by_lhs["∇W"])                                 # ∇W = Σ δ(t) h(t-1)ᵀ
    assert "x(t).T" in str(by_lhs["∇U"])


def test_bidirectional_gradient_equation_runs_forward_in_time():
    case = CATALOGUE[7]()
    eqs = {str(e.lhs): str(e.rhs) for e in case.model.gradient_equations()}
    assert "∇f(t + 1)" in eqs["∇f(t)"]
    assert "∇g(t - 1)" in eqs["∇g(t)"]   # a backward state's adjoint runs forward in time
