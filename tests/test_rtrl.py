"""Real-time recurrent learning: the same gradient as backpropagation through time and as
finite differences on the catalogue and the model library, the online API, and its errors."""
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import rtrl

from catalogue import CATALOGUE, bidirectional, delays, elman, lstm, nonlinear_map

t = gc.t
ROOT = Path(__file__).resolve().parent.parent
FORWARD = [f for f in CATALOGUE if f is not bidirectional]


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b).max(initial=0) / max(1e-300, np.abs(b).max(initial=0))


def fd_gradient(kernel, case, h=1e-4) -> dict:
    """Fourth-order central differences of the loss, entry by entry (error ~h⁴ + 1e-16 L / h)."""
    def loss(name, i, delta):
        value = np.array(case.params[name], dtype=float)
        value[i] += delta
        return kernel.loss_and_grad({**case.params, name: value}, case.inputs, case.lengths, case.initial)[0]

    out = {}
    for name, value in case.params.items():
        g = np.zeros(np.shape(value))
        for i in np.ndindex(g.shape):
            f = [loss(name, i, k * h) for k in (-2, -1, 1, 2)]
            g[i] = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h)
        out[name] = g
    return out


@pytest.fixture(scope="module", params=FORWARD, ids=lambda f: f.__name__)
def case(request):
    case = request.param()
    return case, gc.compile(case.model, backend="reference")


def args(case):
    return case.params, case.inputs, case.lengths, case.initial


def test_equals_bptt_on_the_catalogue(case):
    case, k = case
    l1, g1 = rtrl.loss_and_grad(k, *args(case))
    l2, g2 = k.loss_and_grad(*args(case))
    assert rel(l1, l2) < 1e-12
    assert set(g1) == set(case.params)
    for p in case.params:
        assert np.shape(g1[p]) == np.shape(case.params[p])
        assert rel(g1[p], g2[p]) < 1e-10, p


def test_equals_finite_differences_on_the_catalogue(case):
    case, k = case
    _, grads = rtrl.loss_and_grad(k, *args(case))
    fd = fd_gradient(k, case)
    scale = max(np.abs(g).max() for g in fd.values())   # relative to the whole gradient
    for p in case.params:
        assert np.abs(grads[p] - fd[p]).max() < 1e-9 * scale, (p, grads[p], fd[p])


@pytest.mark.parametrize("make", [gc.models.lstm, gc.models.gru], ids=["lstm", "gru"])
def test_model_library_equals_bptt(make):
    model = make(2, 3, 2)
    params = model.init_params(seed=3)
    params = {p: v + 0.1 * np.random.default_rng(4).normal(size=np.shape(v)) for p, v in params.items()}
    r = np.random.default_rng(5)
    data = {"x": r.normal(size=(7, 2, 2)), "y": r.normal(size=(7, 2, 2))}
    k = gc.compile(model, backend="reference")
    l1, g1 = rtrl.loss_and_grad(k, params, data, [7, 4])
    l2, g2 = k.loss_and_grad(params, data, [7, 4])
    assert rel(l1, l2) < 1e-12
    for p in params:
        assert g1[p].shape == np.shape(params[p]) and rel(g1[p], g2[p]) < 1e-10, p


@pytest.fixture(scope="module")
def scalar():
    """The nonlinear scalar map, compiled with Numba (its bptt is what rtrl is held against)."""
    case = nonlinear_map()
    return case, gc.compile(case.model, backend="numba")


def test_equals_the_compiled_bptt_and_keeps_the_kernels_dtype(scalar):
    case, k = scalar
    l1, g1 = rtrl.loss_and_grad(k, *args(case))
    l2, g2 = k.loss_and_grad(*args(case))
    assert isinstance(l1, np.float64) and isinstance(g1["a"], np.float64)
    assert rel(l1, l2) < 1e-12 and all(rel(g1[p], g2[p]) < 1e-10 for p in g1)
    k32 = gc.compile(case.model, backend="reference", dtype="float32")
    l32, g32 = rtrl.loss_and_grad(k32, *args(case))
    assert isinstance(l32, np.float32) and isinstance(g32["a"], np.float32)
    assert all(rel(g32[p], g2[p]) < 1e-5 for p in g1)


@pytest.mark.parametrize("make", [delays, lstm], ids=["delays", "lstm"])
def test_chunks_carry_delays_and_ended_sequences(make):
    """Chunks of 1 and 3 steps: a state read 3 steps back and an input read 2 steps back cross
    chunk boundaries, and sequences end inside and before a chunk."""
    case = make()
    k = gc.compile(case.model, backend="reference")
    l0, g0 = k.loss_and_grad(*args(case))
    for chunk in (1, 3):
        l1, g1 = rtrl.loss_and_grad(k, *args(case), chunk=chunk)
        assert rel(l1, l0) < 1e-12 and all(rel(g1[p], g0[p]) < 1e-10 for p in g0), chunk
    with pytest.raises(gc.GraphcompError, match="chunk must be a positive number of steps, got 0"):
        rtrl.loss_and_grad(k, *args(case), chunk=0)


def test_tangent_step_is_a_recurrence_of_its_own():
    step = rtrl.tangent_step(nonlinear_map().model.step)
    assert step.states == ["s", "s__tan"]
    assert sorted(step.inputs) == ["a__dir", "b__dir", "c__dir", "x", "y"]
    assert list(step.outputs) == ["rtrl__L", "rtrl__dL"] and step.signals["s__tan"].offsets == (-1, 0)
    s, tan, y = sp.Function("s"), sp.Function("s__tan"), sp.Function("y")
    a = sp.Symbol("a")
    clash = gc.Recurrence({s(t): a * s(t - 1) + tan(t)}, loss=(s(t) - y(t)) ** 2)
    with pytest.raises(gc.GraphcompError, match=r"the names \['s__tan'\] are used by real-time recurrent"):
        rtrl.tangent_step(clash.step)


def test_memory_does_not_grow_with_T(scalar):
    case, k = scalar
    r = np.random.default_rng(0)
    rtrl.loss_and_grad(k, *args(case))   # warm: sympy's and lambdify's caches
    peaks = []
    for T in (1000, 5000):   # several chunks of time each
        data = {"x": r.normal(size=(T, 128)), "y": r.normal(size=(T, 128))}
        tracemalloc.start()
        rtrl.loss_and_grad(k, case.params, data)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] + 1_000_000, peaks   # one state's values over T would be 5 MB


def test_online_sums_to_the_whole_sequence_gradient():
    case = delays()   # the state read at t-1 and t-3, the input at t-2, the loss at t-2
    k = gc.compile(case.model, backend="reference")
    loss, grads = k.loss_and_grad(case.params, case.inputs, initial=case.initial)
    online = rtrl.Online(k, case.params, state=case.initial)
    stream = k.stream(case.params, state=case.initial)
    T = len(case.inputs["x"])
    per_step = [online.step({n: a[i] for n, a in case.inputs.items()}) for i in range(T)]
    for i in range(T):
        stream.step({"x": case.inputs["x"][i]})
    assert rel(sum(l for l, _ in per_step), loss) < 1e-12 and rel(online.loss, loss) < 1e-12
    for p in case.params:
        assert rel(sum(g[p] for _, g in per_step), grads[p]) < 1e-10, p
        assert rel(online.grads[p], grads[p]) < 1e-10, p
    assert online.t == T and set(online.state) == set(stream.state) == {"s", "x"}
    for n in stream.state:
        assert online.state[n].shape == stream.state[n].shape and rel(online.state[n], stream.state[n]) < 1e-12
    online.reset(case.initial)
    assert online.t == 0 and online.loss == 0 and all(np.all(g == 0) for g in online.grads.values())
    again = online.step({n: a[0] for n, a in case.inputs.items()})
    assert rel(again[0], per_step[0][0]) < 1e-15


def test_online_vector_state_shapes_and_batch_check():
    case = elman()
    k = gc.compile(case.model, backend="reference")
    online = rtrl.Online(k, case.params)
    loss, grads = online.step({"x": case.inputs["x"][0], "y": case.inputs["y"][0]})
    assert np.ndim(loss) == 0
    assert {p: g.shape for p, g in grads.items()} == {p: np.shape(v) for p, v in case.params.items()}
    assert online.state["h"].shape == (1, 3, 4)
    with pytest.raises(gc.GraphcompError, match="the inputs have batch 2 but the stream runs 3 sequences; call reset"):
        online.step({"x": case.inputs["x"][0, :2], "y": case.inputs["y"][0, :2]})
    with pytest.raises(gc.GraphcompError, match="input 'x' has per-step shape"):
        online.step({"x": case.inputs["x"][0, :, :2], "y": case.inputs["y"][0]})


def test_errors_say_to_use_bptt():
    k = gc.compile(bidirectional().model, backend="reference")
    with pytest.raises(gc.GraphcompError, match=r"state 'g' reads its own future \(g\(t\+1\)\).*use backpropagation"):
        rtrl.loss_and_grad(k, {}, {})
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a = sp.Symbol("a")
    ahead = gc.compile(gc.Recurrence({s(t): a * s(t - 1) + x(t + 1)}, loss=(s(t) - y(t)) ** 2), backend="reference")
    with pytest.raises(gc.GraphcompError, match=r"'x' is read at x\(t\+1\).*use backpropagation through time"):
        rtrl.Online(ahead, {"a": 0.5})
    lossless = gc.compile(gc.Recurrence({s(t): a * s(t - 1) + x(t)}), backend="reference")
    with pytest.raises(gc.GraphcompError, match="the model has no loss"):
        rtrl.loss_and_grad(lossless, {"a": 0.5}, {"x": np.ones((3, 1))})


def test_divergence_names_the_state(scalar):
    case, k = scalar
    with pytest.raises(gc.errors.NotFinite, match="state 's' became"):
        rtrl.loss_and_grad(k, {"a": 1e200, "b": 0.0, "c": 1.0}, {"x": np.ones((5, 1)), "y": np.ones((5, 1))})


def test_example_learns_online():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import online_rtrl
    finally:
        sys.path.pop(0)
    result = online_rtrl.main(short=True)
    losses = result["running_loss"]
    assert len(losses) == 4 and losses[-1] < 0.05 * losses[0]
    assert all(abs(result["params"][p] - v) < 0.1 for p, v in result["true"].items())
