"""The step IR: hash-consing, shape rules, simplification, and every op's VJP and JVP checked
against finite differences and against each other (<v, J u> = <Jᵀ v, u>)."""
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import ir
from graphcomp.lang.declare import relu, sigmoid
from graphcomp.ir import X

B = 3


def leaf(name, shape, batched=True):
    return ir.var(name, shape, batched)


def test_equal_nodes_are_the_same_object():
    a, b = leaf("a", (3, 1)), leaf("b", (3, 1))
    assert ir.add(a, b) is ir.add(a, b)
    assert ir.matmul(ir.param("W", (3, 3)), a) is ir.matmul(ir.param("W", (3, 3)), a)
    assert ir.read("h", -1, (3, 1)) is ir.read("h", -1, (3, 1))
    assert ir.read("h", -1, (3, 1)) is not ir.read("h", -2, (3, 1))
    # shared subexpressions appear once in a traversal
    w = ir.matmul(ir.param("W", (3, 3)), a)
    e = ir.add(ir.emap(sp.tanh(X(0)), [w]), ir.emap(sp.exp(X(0)), [w]))
    assert sum(1 for n in ir.toposort([e]) if n.op == "matmul") == 1


def test_sums_of_aligned_stacks_add_block_by_block():
    g1, g2, g3 = leaf("g1", (2, 1)), leaf("g2", (3, 1)), leaf("g3", (2, 1))
    z2, z3 = ir.zeros((2, 1)), ir.zeros((3, 1))
    # the cotangents of the slices of a stack, as reverse mode makes them
    total = ir.add(ir.concat(g1, z3), ir.concat(ir.zeros((2, 1)), g2), ir.concat(g3, z3))
    assert total.op == "concat" and total.args[1] is g2
    assert total.args[0] is ir.add(g1, g3)
    # a block cut by another stack's boundary: no block structure, a plain sum
    crossing = ir.add(ir.concat(g1, z3), ir.concat(leaf("g4", (1, 1)), leaf("g5", (4, 1))))
    assert crossing.op == "map"
    assert ir.add(z2, g1) is g1 and ir.add(z2) is None


def test_products_sharing_a_factor_are_one_product():
    W, V = ir.param("W", (3, 2)), ir.param("V", (3, 2))
    a, b = leaf("a", (2, 1)), leaf("b", (2, 1))
    s = ir.add(ir.matmul(W, a), ir.matmul(W, b))
    assert s.op == "matmul" and s.args[0] is W and s.args[1] is ir.add(a, b)
    g = leaf("g", (3, 1))   # outer products sharing a batched vector
    outer = ir.add(ir.matmul(g, ir.transpose(a)), ir.matmul(leaf("f", (3, 1)), ir.transpose(a)))
    assert outer.op == "matmul" and outer.args[1] is ir.transpose(a)
    assert ir.add(ir.matmul(W, a), ir.matmul(V, b)).op == "map"   # nothing shared


def test_take_of_a_stack_is_the_block():
    a, b = leaf("a", (2, 1)), leaf("b", (3, 1))
    stack = ir.concat(a, b)
    assert ir.take(stack, 0, 2) is a and ir.take(stack, 2, 5) is b
    assert ir.take(stack, 1, 3).op == "take"
    assert ir.take(ir.zeros((5, 1)), 1, 3) is ir.zeros((2, 1))


def test_vjp_stops_at_stop_nodes():
    W = ir.param("W", (2, 2))
    stack = ir.concat(W, ir.param("V", (1, 2)))
    y = ir.total(ir.matmul(stack, leaf("x", (2, 1))))
    ct = ir.vjp({y: ir.const(1)}, stop=[stack])
    assert stack in ct and W not in ct
    assert W in ir.vjp({y: ir.const(1)})


def test_emap_simplifies():
    a, b = leaf("a", ()), leaf("b", ())
    assert ir.emap(X(0), [a]) is a                                    # a bare argument
    assert ir.emap(X(1), [a, b]) is b                                 # unused arguments drop
    assert ir.emap(X(0) * X(1), [a, a]).attr == X(0) ** 2             # repeated ones merge
    two = ir.const(2)
    assert ir.emap(X(0) * X(1), [two, a]).attr == 2 * X(0)            # constants fold
    assert ir.emap(X(0) + X(1), [two, ir.const(3)]).op == "const"
    v = leaf("v", (2, 1))
    assert ir.emap(X(0) * X(1), [a, v]).shape == (2, 1)               # a scalar broadcasts
    assert ir.transpose(ir.transpose(v)) is v


def test_shape_rules():
    with pytest.raises(gc.GraphcompError, match=r"matrix product of shapes \(2, 3\) and \(2, 1\)"):
        ir.matmul(ir.param("W", (2, 3)), leaf("v", (2, 1)))
    with pytest.raises(gc.GraphcompError, match="concat needs matrices with equal columns"):
        ir.concat(leaf("a", (2, 1)), leaf("b", (2, 2)))
    with pytest.raises(gc.GraphcompError, match="operands have different shapes"):
        ir.add(leaf("a", (2, 1)), leaf("b", (3, 1)))
    with pytest.raises(gc.GraphcompError, match=r"rows 1:4 of a \(3, 1\) matrix"):
        ir.take(leaf("a", (3, 1)), 1, 4)
    assert ir.matmul(ir.param("W", (2, 3)), leaf("v", (3, 1))).batched
    assert not ir.matmul(ir.param("W", (2, 3)), ir.param("U", (3, 1))).batched


def test_typecheck_and_pretty():
    h = ir.read("h", -1, (3, 1))
    e = ir.emap(sp.tanh(X(0)), [ir.matmul(ir.param("W", (3, 3)), h)])
    ir.typecheck([e])
    text = ir.pretty({"h(t)": e})
    assert text.splitlines() == ["  v0: (3, 1) = @(W, h(t-1))", "  v1: (3, 1) = map[tanh(x0)](v0)", "  h(t) = v1"]


# ---------------------------------------------------------------- derivatives

def expressions():
    """(name, root, leaves): one small expression per op and elementwise function."""
    v, w = leaf("v", (3, 1)), leaf("w", (3, 1))
    s, q = leaf("s", ()), leaf("q", ())
    M, N = leaf("M", (2, 3), batched=False), leaf("N", (3, 3))
    out = {
        "tanh": (ir.emap(sp.tanh(X(0)), [v]), [v]),
        "sigmoid": (ir.emap(sigmoid(X(0)), [v]), [v]),
        "relu": (ir.emap(relu(X(0)), [v]), [v]),
        "exp_log": (ir.emap(sp.log(1 + sp.exp(X(0))), [v]), [v]),
        "pow": (ir.emap(X(0) ** 3 - X(0) / (2 + X(1) ** 2), [v, w]), [v, w]),
        "sin_product": (ir.emap(sp.sin(X(0)) * X(1), [v, s]), [v, s]),
        "variable_power": (ir.emap((1 + X(0) ** 2) ** X(1), [s, q]), [s, q]),
        "lambda": (ir.emap(sp.Lambda(sp.Symbol("z"), sp.Symbol("z") / (1 + sp.Abs(sp.Symbol("z"))))(X(0)), [v]), [v]),
        "matmul": (ir.matmul(M, v), [M, v]),
        "batched_matmul": (ir.matmul(N, w), [N, w]),
        "transpose": (ir.matmul(ir.transpose(v), w), [v, w]),
        "concat": (ir.concat(v, ir.emap(X(0) * X(1), [s, w])), [v, w, s]),
        "take": (ir.take(v, 1, 3), [v]),
        "total": (ir.total(ir.emap(X(0) * X(1), [v, w])), [v, w]),
        "broadcast": (ir.emap(X(0) * X(1), [ir.broadcast(s, (3, 1)), v]), [s, v]),
        "logsumexp": (ir.logsumexp(v), [v]),
    }
    return out


CASES = expressions()


def random_values(leaves, rng):
    return {l: rng.normal(size=((B,) if l.batched else ()) + l.shape) for l in leaves}


def evaluate(root, values):
    out = ir.evaluate([root], values.__getitem__)[root]
    return np.broadcast_to(out, (B,) + root.shape) if not root.batched else out


@pytest.mark.parametrize("name", list(CASES))
def test_vjp_against_finite_differences(name):
    root, leaves = CASES[name]
    rng = np.random.default_rng(1)
    values = random_values(leaves, rng)
    g = ir.var("g", root.shape)
    cts = ir.vjp({root: g})
    gval = rng.normal(size=(B,) + root.shape)
    env = dict(values)
    env[g] = gval
    for l in leaves:
        ct = ir.evaluate([cts[l]], env.__getitem__)[cts[l]]
        ct = ct.sum(0) if not l.batched and cts[l].batched else ct
        fd = np.zeros_like(values[l])
        for i in np.ndindex(values[l].shape):
            plus, minus = dict(values), dict(values)
            plus[l], minus[l] = values[l].copy(), values[l].copy()
            plus[l][i] += 1e-6
            minus[l][i] -= 1e-6
            fd[i] = np.sum(gval * (evaluate(root, plus) - evaluate(root, minus))) / 2e-6
        assert np.allclose(ct, fd, rtol=1e-6, atol=1e-8), (name, l)


@pytest.mark.parametrize("name", list(CASES))
def test_jvp_is_the_transpose_of_vjp(name):
    """<v, J u> = <Jᵀ v, u> (autograd's check_vjp), with J u from the JVP rules."""
    root, leaves = CASES[name]
    rng = np.random.default_rng(2)
    values = random_values(leaves, rng)
    tangents = {l: ir.var(("dot", l.attr), l.shape, True) for l in leaves}
    (tan,) = ir.jvp([root], tangents)
    g = ir.var("g", root.shape)
    cts = ir.vjp({root: g})
    env = dict(values)
    for l in leaves:
        env[tangents[l]] = rng.normal(size=(B,) + l.shape)
    env[g] = rng.normal(size=(B,) + root.shape)
    ju = ir.evaluate([tan], env.__getitem__)[tan]
    lhs = np.sum(env[g] * ju)
    rhs = 0.0
    for l in leaves:
        ct = np.broadcast_to(ir.evaluate([cts[l]], env.__getitem__)[cts[l]], (B,) + l.shape)
        rhs += np.sum(ct * env[tangents[l]])
    assert np.isclose(lhs, rhs, rtol=1e-10, atol=1e-12), name


def test_derivatives_use_the_result_like_the_textbook():
    v = leaf("v", (3, 1))
    y = ir.emap(sp.tanh(X(0)), [v])
    (ct,) = [c for n, c in ir.vjp({y: ir.var("g", (3, 1))}).items() if n is v]
    assert ct.op == "map" and y in ct.args and v not in ct.args     # g ⊙ (1 - y²)
    assert ir.derivative(sigmoid(X(0)), 0, 1) == X(1) * (1 - X(1))
