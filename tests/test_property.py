"""Property test: random well-formed recurrences (1-3 coupled scalar or vector states, delays
up to 3, same-step reads, backward states, several activations) get the same loss, states
and gradient from the unfolded DAG, the adjoint-step loop and finite differences."""
import numpy as np
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import graphcomp as gc

t = gc.t
z = sp.Symbol("z")
ACTIVATIONS = [gc.tanh, gc.sigmoid, lambda e: gc.elementwise(sp.sin, e),
               lambda e: gc.elementwise(sp.Lambda(z, z / (1 + z ** 2)), e), lambda e: e]


class Builder:
    """Names parameters uniquely and remembers their shapes."""

    def __init__(self):
        self.shapes = {}

    def param(self, rows=None, cols=None):
        name = f"p{len(self.shapes)}"
        sym = gc.param(name, rows, cols)
        self.shapes[name] = () if rows is None else (rows,) if cols in (None, 1) else (rows, cols)
        return sym

    def project(self, src, src_size, size):
        """A term of the target's size from a read of size src_size (0 = scalar)."""
        if size and src_size:
            return self.param(size, src_size) * src
        if size:
            return self.param(size) * src
        if src_size:
            return sp.Trace(self.param(src_size).T * src)
        return self.param() * src


def signal(name, size):
    return gc.signal(name, size) if size else sp.Function(name)


@st.composite
def cases(draw):
    b = Builder()
    n = draw(st.integers(1, 3))
    sizes = [draw(st.sampled_from([0, 1, 2, 3])) for _ in range(n)]
    backward = [draw(st.booleans()) and draw(st.booleans()) for _ in range(n)]
    dx = draw(st.integers(1, 3))
    x = gc.signal("x", dx)
    names = [f"s{i}" for i in range(n)]
    sig = [signal(nm, sz) for nm, sz in zip(names, sizes)]
    updates = {}
    for i in range(n):
        direction = -1 if backward[i] else 1
        k = draw(st.integers(1, 3))
        terms = [b.project(sig[i](t - direction * k), sizes[i], sizes[i])]
        if draw(st.booleans()):
            k2 = draw(st.integers(1, 3))
            terms.append(b.project(sig[i](t - direction * k2), sizes[i], sizes[i]))
        off = draw(st.integers(-2, 1))
        terms.append(b.project(x(t + off), dx, sizes[i]))
        for j in range(i):   # earlier states: at the same step or at any delay
            if draw(st.booleans()):
                oj = draw(st.sampled_from([0, -1, -2, 1]))
                terms.append(b.project(sig[j](t + oj), sizes[j], sizes[i]))
        for j in range(i + 1, n):   # later states, delayed: coupled recurrences
            if draw(st.booleans()) and draw(st.booleans()):
                terms.append(b.project(sig[j](t - direction), sizes[j], sizes[i]))
        if sizes[i] and draw(st.booleans()):
            terms.append(gc.hadamard(sig[i](t - direction), b.param(sizes[i])))
        if not sizes[i] and draw(st.booleans()):
            terms.append(b.param() * sig[i](t - direction) * sig[i](t - direction))
        total = sum(terms[1:], terms[0])
        act = draw(st.sampled_from(ACTIVATIONS))
        updates[sig[i](t)] = act(total)
    outputs, loss = {}, 0
    for i in range(n):
        target = signal(f"y{i}", sizes[i])
        if sizes[i] and draw(st.booleans()):
            outputs[f"o{i}"] = b.param(sizes[i], sizes[i]) * sig[i](t)
            loss += gc.mse(gc.signal(f"o{i}", sizes[i])(t), target(t))
        elif sizes[i]:
            loss += gc.mse(sig[i](t), target(t))
        else:
            loss += (sig[i](t) - target(t)) ** 2
    try:
        model = gc.Recurrence(updates, outputs=outputs, loss=loss)
    except gc.GraphcompError as e:   # a coupled pair that reads both past and future: not a model
        assume("reads both the past" not in str(e) and "same-step cycle" not in str(e))
        raise

    T, B = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    params = {p: (float(rng.normal(0, 0.5)) if not s else rng.normal(0, 0.5, s)) for p, s in b.shapes.items()}
    inputs = {}
    for name, info in model.step.signals.items():
        if info.role == "input":
            inputs[name] = rng.normal(size=(T, B) + info.array_shape)
    lengths = rng.integers(1, T + 1, size=B) if draw(st.booleans()) else None
    initial = {}
    if draw(st.booleans()):
        for name, info in model.step.signals.items():
            if info.history:
                initial[name] = rng.normal(size=(info.history, B) + info.array_shape)
    return model, params, inputs, lengths, initial


def close(a, b, rtol, atol=1e-12):
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol)


def assert_agree(kernel, oracle, params, inputs, lengths, initial) -> dict:
    """The loss, every gradient (and its shape) and every forward value agree; the kernel's
    gradients come back."""
    l1, g1 = kernel.loss_and_grad(params, inputs, lengths, initial)
    l2, g2 = oracle.loss_and_grad(params, inputs, lengths, initial)
    assert close(l1, l2, 1e-10)
    for p in params:
        assert np.shape(g1[p]) == np.shape(params[p])
        assert close(g1[p], g2[p], 1e-9, 1e-11), p
    f1 = kernel.forward(params, inputs, lengths, initial)
    f2 = oracle.forward(params, inputs, lengths, initial)
    for name in f1:
        assert close(f1[name], f2[name], 1e-10), name
    return g1


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_three_ways_agree(case):
    model, params, inputs, lengths, initial = case
    loop, dag = gc.compile(model, backend="reference"), gc.compile(model, backend="unfolded")
    g1 = assert_agree(loop, dag, params, inputs, lengths, initial)

    # central differences along a random direction: <∇L, v> = dL(θ + εv)/dε
    rng = np.random.default_rng(0)
    v = {p: rng.normal(size=np.shape(params[p])) for p in params}
    eps = 1e-6
    plus = {p: params[p] + eps * v[p] for p in params}
    minus = {p: params[p] - eps * v[p] for p in params}
    fd = (loop.loss_and_grad(plus, inputs, lengths, initial)[0]
          - loop.loss_and_grad(minus, inputs, lengths, initial)[0]) / (2 * eps)
    exact = sum(float(np.sum(g1[p] * v[p])) for p in params)
    assert abs(fd - exact) <= 1e-6 * max(1.0, abs(exact)), (fd, exact)


@settings(max_examples=12, deadline=None, derandomize=True,   # a compile each: seconds
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_the_compiled_kernel_agrees(case):
    """The generated Numba kernels on random recurrences: the code generator's every path
    (delays, same-step reads, backward sweeps, row dot products, fused losses, rings)."""
    model, params, inputs, lengths, initial = case
    ref, k = gc.compile(model, backend="reference"), gc.compile(model, backend="numba")
    assert_agree(k, ref, params, inputs, lengths, initial)
