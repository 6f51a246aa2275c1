"""gc.simulate and gc.predict on lists of sequences of different lengths: the values are the
recursions by hand (NARX, state-space), forward on each sequence alone, and gc.generate
from a prompt; each returned array has one row per step of its sequence, fed outputs aligned
on the step they forecast, NaN where there is no forecast; bad calls are errors."""
import re

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc

t = gc.t
A, B, C = np.array([[0.9, 0.1], [0.0, 0.8]]), np.array([1.0, 0.5]), np.array([[1.0, -1.0]])


@pytest.fixture(scope="module")
def narx():
    """yhat(t) = a y(t-1) + b y(t-2), fitted to the series y itself."""
    y, yhat = sp.Function("y"), sp.Function("yhat")
    a, b = sp.symbols("a b")
    model = gc.Recurrence({}, outputs={"yhat": a * y(t - 1) + b * y(t - 2)}, loss=(yhat(t) - y(t)) ** 2)
    return gc.compile(model, backend="reference"), {"a": 0.9, "b": -0.2}


@pytest.fixture(scope="module")
def elman():
    """A next-step predictor: o(t) reads x(t), so it forecasts x(t+1)."""
    model = gc.models.elman(1, 4, 1)
    return gc.compile(model, backend="reference"), model.init_params(seed=2)


def narx_by_hand(measured, start: int, steps: int) -> list:
    """y(t) for t = start+1 .. start+steps: measured through start, then y(t) := yhat(t)."""
    ys = [0.0, 0.0] + list(measured[:start])    # y(-1), y(0) are zeros
    for _ in range(steps):
        ys.append(0.9 * ys[-1] - 0.2 * ys[-2])
    return ys[2 + start:]


def test_simulate_without_feed_is_forward_on_each_sequence():
    x, u = gc.signal("x", 2), sp.Function("u")
    Cm = gc.param("C", 1, 2)
    model = gc.Recurrence({x(t): gc.param("A", 2, 2) * x(t - 1) + gc.param("B", 2) * u(t)},
                          outputs={"y": Cm * x(t)}, loss=gc.mse(Cm * x(t), gc.signal("ym", 1)(t)))
    kernel, params = gc.compile(model, backend="reference"), {"A": A, "B": B, "C": C}
    rng = np.random.default_rng(0)
    seqs = [{"u": rng.normal(size=n), "ym": rng.normal(size=(n, 1))} for n in (5, 8, 3)]
    out = gc.simulate(kernel, params, seqs)
    assert [o["y"].shape for o in out] == [(5, 1), (8, 1), (3, 1)] and out[1]["x"].shape == (8, 2)
    for s, o in zip(seqs, out):
        state, ys = np.zeros(2), []
        for value in s["u"]:
            state = A @ state + B * value
            ys.append(C @ state)
        np.testing.assert_allclose(o["y"], ys, rtol=1e-12)
        np.testing.assert_allclose(o["x"][-1], state, rtol=1e-12)


def test_simulate_narx_free_runs_after_the_warmup(narx):
    kernel, params = narx
    rng = np.random.default_rng(1)
    seqs = [{"y": rng.normal(size=n)} for n in (7, 5, 9)]
    out = gc.simulate(kernel, params, seqs, feed={"y": "yhat"}, warmup=2)
    for s, o in zip(seqs, out):
        n = len(s["y"])
        assert o["yhat"].shape == o["y"].shape == (n,)
        assert np.isnan(o["yhat"][:2]).all()                    # measured steps: no forecast
        np.testing.assert_allclose(o["yhat"][2:], narx_by_hand(s["y"], 2, n - 2), rtol=1e-12)
        np.testing.assert_array_equal(o["y"], o["yhat"])
    cold = gc.simulate(kernel, params, [{"y": np.ones(4)}], feed={"y": "yhat"})[0]   # warmup 0: from zeros
    np.testing.assert_array_equal(cold["yhat"], 0)


def test_simulate_a_next_step_model_equals_generate_from_a_prompt(elman):
    kernel, params = elman
    rng = np.random.default_rng(2)
    seqs = [{"x": rng.normal(size=(n, 1)), "y": rng.normal(size=(n, 1))} for n in (9, 6)]
    out = gc.simulate(kernel, params, seqs, feed={"x": "o"}, warmup=3)
    for s, o in zip(seqs, out):
        n = len(s["x"])
        gen = gc.generate(kernel, params, n - 3, feed={"x": "o"}, prompt={"x": s["x"][:3, None]})
        np.testing.assert_allclose(o["o"][3:], gen["o"][:, 0], rtol=1e-12)
        np.testing.assert_allclose(o["h"][3:], gen["h"][:, 0], rtol=1e-12)
        assert np.isnan(o["o"][:3]).all() and np.isnan(o["x"][:3]).all()
        teacher = kernel.forward(params, {"x": s["x"][:3, None]})
        np.testing.assert_allclose(o["h"][:3], teacher["h"][:, 0], rtol=1e-12)   # states: teacher-forced
        np.testing.assert_allclose(o["o"][3], teacher["o"][-1, 0], rtol=1e-12)   # x(4) forecast from o(3)


def test_predict_one_step_ahead_is_forward(narx, elman):
    kernel, params = elman
    rng = np.random.default_rng(3)
    seqs = [{"x": rng.normal(size=(n, 1))} for n in (6, 4)]
    for s, o in zip(seqs, gc.predict(kernel, params, seqs, feed={"x": "o"})):
        whole = kernel.forward(params, {"x": s["x"][:, None]})
        assert np.isnan(o["o"][0]).all()                        # x(1) has no output before it
        np.testing.assert_allclose(o["o"][1:], whole["o"][:-1, 0], rtol=1e-12)
        np.testing.assert_allclose(o["x"][1:], whole["o"][:-1, 0], rtol=1e-12)
    kernel, params = narx
    seqs = [{"y": rng.normal(size=n)} for n in (6, 4)]
    for s, o in zip(seqs, gc.predict(kernel, params, seqs, feed={"y": "yhat"})):
        np.testing.assert_allclose(o["yhat"], kernel.forward(params, {"y": s["y"][:, None]})["yhat"][:, 0], rtol=1e-12)


def test_predict_n_steps_ahead_is_a_free_run_from_every_origin(narx, elman):
    kernel, params = narx
    rng = np.random.default_rng(4)
    seqs = [{"y": rng.normal(size=n)} for n in (8, 3, 5)]
    out = gc.predict(kernel, params, seqs, feed={"y": "yhat"}, horizon=3)
    for s, o in zip(seqs, out):
        assert o["yhat"].shape == (len(s["y"]),) and np.isnan(o["yhat"][:2]).all()
        for step in range(3, len(s["y"]) + 1):                 # measured through step - 3
            assert o["yhat"][step - 1] == pytest.approx(narx_by_hand(s["y"], step - 3, 3)[-1], rel=1e-12)
    kernel, params = elman
    seqs = [{"x": rng.normal(size=(n, 1))} for n in (7, 5)]
    out = gc.predict(kernel, params, seqs, feed={"x": "o"}, horizon=2)
    for s, o in zip(seqs, out):
        assert np.isnan(o["o"][:2]).all()                       # needs o at step 1 of a run from step 1
        for step in range(3, len(s["x"]) + 1):
            free = gc.simulate(kernel, params, [s], feed={"x": "o"}, warmup=step - 2)[0]
            np.testing.assert_allclose(o["o"][step - 1], free["o"][step - 1], rtol=1e-12)
            np.testing.assert_allclose(o["h"][step - 1], free["h"][step - 1], rtol=1e-12)


def test_bad_calls_are_errors(narx, elman):
    kernel, params = elman
    x = np.zeros((5, 1))
    cases = [
        (lambda: gc.simulate(kernel, params, [{"x": x}], feed={"x": "o"}),
         "the first forecast, x(1) = o(0), needs o at a step that was not run: pass warmup=1 or more"),
        (lambda: gc.simulate(kernel, params, [{"x": x}], feed={"x": "o"}, warmup=5),
         "sequence 0 has 5 steps and warmup=5 leaves nothing to simulate"),
        (lambda: gc.simulate(kernel, params, {"x": x[:, None]}, feed={"x": "o"}, warmup=1),
         "sequences must be a list of dicts {input name: array (T_i, ...)}, one per sequence"),
        (lambda: gc.simulate(kernel, params, [{"x": x}, {"x": x[:, 0]}], feed={"x": "o"}, warmup=1),
         "sequence 1: 'x' has shape (5,); expected (T_i, 1): one sequence, time along the first axis"),
        (lambda: gc.simulate(kernel, params, [{"x": x, "y": x[:3]}], feed={"x": "o"}, warmup=1),
         "sequence 0: 'y' has 3 steps, the others 5"),
        (lambda: gc.simulate(kernel, params, [{"x": x, "h": x}], feed={"x": "o"}, warmup=1),
         "sequence 0 gives 'h', which is not an input of the model"),
        (lambda: gc.simulate(kernel, params, [{"y": x}]), "sequence 0 lacks input 'x'"),
        (lambda: gc.simulate(kernel, params, [{"x": x}], warmup=2), "warmup teacher-forces the fed inputs, but there is no feed"),
        (lambda: gc.predict(kernel, params, [{"x": x}], feed=None), "predict forecasts fed inputs: pass feed="),
        (lambda: gc.predict(kernel, params, [{"x": x}], feed={"x": "o"}, horizon=5),
         "every sequence is shorter than horizon + 1 = 6 steps"),
        (lambda: gc.predict(kernel, params, [{"x": x}], feed={"x": "o"}, horizon=0), "horizon must be a positive number"),
        (lambda: gc.predict(kernel, params, [{"x": x}], feed={"y": "o"}), "'o' does not depend on 'y'"),
    ]
    for call, message in cases:
        with pytest.raises(gc.GraphcompError, match=re.escape(message)):
            call()
