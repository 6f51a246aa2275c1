"""The declaration language: signals, parameters and elementwise functions."""
import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

import graphcomp as gc
from graphcomp.lang.declare import CrossEntropy, MeanSquaredError, SignalRef

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


# ---------------------------------------------------------------- declaration mistakes

import numpy as np
import pytest

H, D = 3, 2
h, xv = gc.signal("h", H), gc.signal("x", D)
W, U, b = gc.param("W", H, H), gc.param("U", H, D), gc.param("b", H)


def err(match):
    return pytest.raises(gc.GraphcompError, match=match)


def test_a_product_of_mismatched_sizes_names_both_operands():
    with err(r"W\*h\(t\): W is 3x4 and h\(t\) is 3x1; a matrix product needs the columns of W \(4\) "
             r"to equal the rows of h\(t\) \(3\): check the sizes given to gc.param and gc.signal"):
        gc.param("W", 3, 4) * h(t)
    with err(r"\(U\*x\(t\) \+ b\)\*h\(t - 1\).*for the elementwise product write gc.hadamard"):
        (U * xv(t) + b) * h(t - 1)                  # two columns: the user meant ⊙
    with err(r"V\*\(U\*x\(t\) \+ W\*h\(t - 1\)\): V is 2x2 and U\*x\(t\) \+ W\*h\(t - 1\) is 3x1"):
        gc.param("V", 2, 2) * (W * h(t - 1) + U * xv(t))


def test_a_sum_of_mismatched_sizes_names_both_terms():
    with err(r"W\*h\(t - 1\) \+ V\*x\(t\): W\*h\(t - 1\) is 3x1 and V\*x\(t\) is 4x1; the terms of a sum "
             r"must have the same shape"):
        W * h(t - 1) + gc.param("V", 4, D) * xv(t)  # both products: sympy's own MatAdd is not reached
    with err(r"h\(t\) \+ x\(t\): h\(t\) is 3x1 and x\(t\) is 2x1"):
        h(t) + xv(t)


def test_a_scalar_plus_a_vector_broadcasts():
    z = gc.sigmoid(W * h(t - 1))
    for e in (1 - z, gc.ones(H) - z):
        assert e.shape == (H, 1) and e == sp.OneMatrix(H, 1) - z
    a = gc.param("a")
    assert a + h(t) == a * sp.OneMatrix(H, 1) + h(t)
    assert h(t) - 1 == h(t) - gc.ones(H) and 0 + h(t) == h(t) and sum([h(t), h(t)]) == 2 * h(t)
    assert gc.ones(2, 3).shape == (2, 3)


def test_checked_expressions_equal_plain_sympy():
    plain = sp.MatAdd(sp.MatMul(sp.MatrixSymbol("W", H, H), h(t - 1)), sp.MatrixSymbol("b", H, 1))
    e = W * h(t - 1) + b
    assert e == plain and hash(e) == hash(plain) and {e: 1}[plain] == 1
    assert isinstance(W, sp.MatrixSymbol) and isinstance(W.T, sp.Transpose) and W.T.T == W


def test_sympy_functions_of_a_vector_point_to_gc():
    with err(r"tanh\(U\*x\(t\)\), where it meets b: sympy's scalar tanh is applied to the 3x1 matrix U\*x\(t\); "
             r"for the elementwise tanh write gc.tanh\(U\*x\(t\)\)"):
        sp.tanh(U * xv(t)) + b
    with err(r"sympy's scalar cos is applied to the 3x1 matrix h\(t\); for the elementwise cos write "
             r"gc.elementwise\(sp.cos, h\(t\)\)"):
        W * h(t) - sp.cos(h(t))
    with err(r"sympy's scalar tanh .* write gc.tanh"):
        W * sp.tanh(h(t)) + b * sp.tanh(h(t))


def test_numpy_functions_of_a_vector_point_to_gc():
    with err(r"np.tanh is applied to the sympy expression U\*x\(t\) \+ W\*h\(t - 1\): NumPy functions work "
             r"on arrays, not on declarations; write gc.tanh\(U\*x\(t\) \+ W\*h\(t - 1\)\)"):
        np.tanh(W * h(t - 1) + U * xv(t))
    with err(r"np.cos .* write gc.elementwise\(sp.cos, h\(t\)\)"):
        np.cos(h(t))
    with err(r"np.maximum .* write gc.relu"):
        np.maximum(h(t), 0)
    with err(r"a NumPy array meets h\(t\) under \+: .* make the array a parameter \(gc.param\)"):
        h(t) + np.ones((H, 1))
    assert np.float64(0.5) * h(t) == 0.5 * h(t)   # NumPy scalars are numbers


def test_an_undefined_function_needs_its_formula():
    myact = sp.Function("myact")
    with err(r"myact is an undefined sympy Function, applied to U\*x\(t\) \+ W\*h\(t - 1\): graphcomp cannot "
             r"compute or differentiate it; give its formula in z, e.g. gc.elementwise\(lambda z: "):
        gc.elementwise(myact, W * h(t - 1) + U * xv(t))
    z = sp.Symbol("z")
    with err(r"myact is an undefined sympy Function, applied to s\(t\)"):
        gc.elementwise(sp.Lambda(z, 2 * myact(z)), sp.Function("s")(t))
    with err(r"myact\(U\*x\(t\)\), where it meets b: myact is an undefined sympy Function"):
        myact(U * xv(t)) + b


def test_matrix_operators_that_mean_an_elementwise_one():
    with err(r"h\(t\)\*\*2: \*\* on the 3x1 matrix h\(t\) is a matrix power; for the elementwise power "
             r"write gc.elementwise\(lambda v: v\*\*2, h\(t\)\)"):
        h(t) ** 2
    assert (W ** 2).shape == (H, H)                 # a square matrix's power is a matrix power
    with err(r"1/h\(t\) divides by a matrix; .* gc.elementwise\(lambda v: 1/v, h\(t\)\)"):
        1 / h(t)
    with err(r"h\(t\)/h\(t - 1\) divides by a matrix"):
        h(t) / h(t - 1)
    with err(r"2\*\*h\(t\): a matrix exponent is not supported"):
        2 ** h(t)
    with err(r"abs\(h\(t\)\): write gc.elementwise\(sp.Abs, h\(t\)\)"):
        abs(h(t))
    with err(r"'a' \(str\) cannot be combined with h\(t\) under \+"):
        h(t) + "a"


def test_a_signal_at_a_grid_point_or_at_a_child():
    i, j = sp.symbols("i j", integer=True)
    assert h(i - 1, j).point == (i - 1, j) and str(h(i - 1, j)) == "h(i - 1, j)"
    with err(r"signal 'h' needs its time, like h\(t-1\), or a point of a grid, like h\(i-1, j\)"):
        h()
    assert h(gc.child(1)).point == (gc.child(1),) and str(h(gc.child(1))) == "h(child1)"
    with err(r"gc.child\(-1\): a child slot is an integer k >= 0 \(0 for the first child\)"):
        gc.child(-1)
    with err(r"over_children\(..., most=0\): give the largest number of children a node has"):
        gc.over_children(lambda c: h(c), most=0)
