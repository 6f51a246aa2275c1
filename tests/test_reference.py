"""Semantics of the NumPy backends: masks, held states, zero outputs past the end, the
backward sweep of a bidirectional network, dtypes and result shapes."""
import numpy as np
import pytest

import graphcomp as gc

from catalogue import CATALOGUE, bidirectional, delays, elman

BACKENDS = ["reference", "unfolded"]


def one(case, b):
    """Sequence b alone, cut to its length."""
    L = int(case.lengths[b]) if case.lengths is not None else next(iter(case.inputs.values())).shape[0]
    inputs = {n: a[:L, b:b + 1] for n, a in case.inputs.items()}
    initial = {}
    for n, a in case.initial.items():
        a = np.asarray(a)
        depth = case.model.step.signals[n].history
        initial[n] = a[:, b:b + 1] if a.ndim == len(case.model.step.signals[n].array_shape) + 2 else a[b:b + 1]
    return inputs, initial, L


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", CATALOGUE, ids=lambda f: f.__name__)
def test_a_batch_is_the_mean_of_its_sequences(make, backend):
    """L = (1/B) Σ_b Σ_{t ≤ len_b} L_b(t): each sequence as if run alone, cut to its length."""
    case = make()
    k = gc.compile(case.model, backend=backend)
    loss, grads = k.loss_and_grad(case.params, case.inputs, case.lengths, case.initial)
    B = next(iter(case.inputs.values())).shape[1]
    total, gsum = 0.0, {p: 0.0 for p in case.params}
    fwd = k.forward(case.params, case.inputs, case.lengths, case.initial)
    for b in range(B):
        inputs, initial, L = one(case, b)
        l, g = k.loss_and_grad(case.params, inputs, None, initial)
        total += l / B
        for p in g:
            gsum[p] = gsum[p] + g[p] / B
        alone = k.forward(case.params, inputs, None, initial)
        for s in case.model.states:
            assert np.allclose(fwd[s][:L, b], alone[s][:, 0], rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(total, rel=1e-12)
    for p in grads:
        assert np.allclose(grads[p], gsum[p], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_past_the_end_states_hold_and_outputs_are_zero(backend):
    case = elman()
    out = gc.compile(case.model, backend=backend).forward(case.params, case.inputs, case.lengths, case.initial)
    L = case.lengths
    for b in range(3):
        assert np.all(out["h"][L[b]:, b] == out["h"][L[b] - 1, b])
        assert np.all(out["o"][L[b]:, b] == 0)
        assert np.all(out["o"][:L[b], b] != 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_state_starts_at_each_sequence_end(backend):
    case = bidirectional()
    k = gc.compile(case.model, backend=backend)
    out = k.forward(case.params, case.inputs, case.lengths, case.initial)
    P, X, g0 = case.params, case.inputs["x"], case.initial["g"]
    for b, L in enumerate(case.lengths):
        g = g0[b]
        for tt in range(L, 0, -1):  # by hand: g(t) = tanh(B g(t+1) + Ub x(t)), from g(L+1) = initial
            g = np.tanh(P["B"] @ g + P["Ub"] @ X[tt - 1, b])
            assert np.allclose(out["g"][tt - 1, b], g, rtol=1e-12)
        if L < 6:
            assert np.allclose(out["g"][L, b], g0[b])       # the value read after the end
            assert np.all(out["g"][L + 1:, b] == 0)


def test_forward_by_hand_delays():
    case = delays()
    out = gc.compile(case.model).forward(case.params, case.inputs, case.lengths, case.initial)
    P, X, s0, x0 = case.params, case.inputs["x"], case.initial["s"], case.initial["x"]
    for b, L in enumerate(case.lengths):
        s = {-2: s0[0, b], -1: s0[1, b], 0: s0[2, b]}
        x = {-1: x0[0, b], 0: x0[1, b], **{i + 1: X[i, b] for i in range(10)}}
        for tt in range(1, L + 1):
            s[tt] = P["a"] * s[tt - 1] + P["b"] * np.tanh(s[tt - 3]) + P["c"] * x[tt - 2] + P["d"] * x[tt]
            assert out["s"][tt - 1, b] == pytest.approx(s[tt], rel=1e-13)


def test_dtypes_and_result_types():
    case = elman()
    k32 = gc.compile(case.model, dtype="float32")
    k64 = gc.compile(case.model)
    params32 = {n: np.asarray(v, np.float32) for n, v in case.params.items()}
    loss32, g32 = k32.loss_and_grad(params32, case.inputs, case.lengths, case.initial)
    loss64, g64 = k64.loss_and_grad(case.params, case.inputs, case.lengths, case.initial)
    assert isinstance(loss32, np.float32) and isinstance(loss64, np.float64)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert loss32 == pytest.approx(loss64, rel=1e-4)
    out = k32.forward(case.params, case.inputs)
    assert out["h"].dtype == np.float32
    # integer inputs are converted
    ints = {n: np.round(a).astype(int) for n, a in case.inputs.items()}
    assert k64.forward(case.params, ints)["h"].dtype == np.float64


def test_scalar_parameters_come_back_as_floats():
    case = CATALOGUE[1]()
    loss, g = gc.compile(case.model).loss_and_grad(case.params, case.inputs, case.lengths)
    assert isinstance(loss, float) and all(isinstance(v, float) and np.shape(v) == () for v in g.values())
