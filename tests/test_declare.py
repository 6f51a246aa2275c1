"""The declaration language: signals, parameters and elementwise functions."""
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

import graphcomp as gc
from graphcomp.declare import CrossEntropy, MeanSquaredError, SignalRef

t = gc.t


def test_time_is_an_integer_symbol():
    assert gc.t == sp.Symbol("t", integer=True) and gc.t.is_integer


def test_signals():
    x = gc.signal("x")
    assert isinstance(x(t), sp.Function) and x(t) == sp.Function("x")(t)   # a scalar is plain sympy
    h = gc.signal("h", 4)
    ref = h(t - 1)
    assert isinstance(ref, SignalRef) and ref.shape == (4, 1) and ref.name == "h" and ref.time == t - 1
    assert str(ref) == "h(t - 1)" and sp.latex(ref) == "h^{(t - 1)}"
    assert gc.signal("M", 2, 3)(t).shape == (2, 3)
    assert ref.subs(t, t + 1) == h(t)                                      # time shifts like sympy


def test_parameters():
    assert gc.param("a") == sp.Symbol("a")
    assert gc.param("b", 4).shape == (4, 1)
    W = gc.param("W", 4, 3)
    assert isinstance(W, sp.MatrixSymbol) and W.shape == (4, 3)


def test_functions_are_plain_sympy_on_scalars():
    s = sp.Function("s")(t)
    assert gc.tanh(s) == sp.tanh(s) and gc.exp(s) == sp.exp(s) and gc.log(s) == sp.log(s)
    assert gc.sigmoid(s).diff(s) == gc.sigmoid(s) * (1 - gc.sigmoid(s))
    assert gc.relu(s).diff(s) == sp.Heaviside(s, 0)
    z = sp.Symbol("z")
    assert gc.elementwise(sp.Lambda(z, z ** 3), s) == s ** 3
    assert gc.hadamard(s, 2) == 2 * s
    assert gc.mse(s, 1) == (s - 1) ** 2


def test_functions_are_elementwise_on_vectors():
    h = gc.signal("h", 3)(t)
    for fn in (gc.tanh, gc.sigmoid, gc.relu, gc.exp, gc.log):
        e = fn(h)
        assert isinstance(e, ElementwiseApplyFunction) and e.shape == (3, 1)
    z = sp.Symbol("z")
    e = gc.elementwise(sp.Lambda(z, z / (1 + z ** 2)), h)
    assert e.function(z) == z / (1 + z ** 2)
    assert gc.hadamard(h, h).shape == (3, 1)
    assert gc.concat(h, gc.signal("x", 2)(t)).shape == (5, 1)
    assert isinstance(gc.mse(h, h), MeanSquaredError) and str(gc.mse(h, h)) == "mse(h(t), h(t))"
    assert isinstance(gc.cross_entropy(h, h), CrossEntropy)
    assert (gc.mse(h, h) + 1).is_commutative    # a scalar that combines with sympy scalars
