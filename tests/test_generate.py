"""gc.generate: free-running values equal a hand-written loop over forward and, for the NARX
and state-space forms, the recursion by hand; every fed output comes back aligned on the step
it forecasts; sampling is seeded and follows softmax(logits / T); a prompt warms the state;
a feed that closes no loop, and other bad calls, are errors."""
import re

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc

t = gc.t
K = 5   # tokens


@pytest.fixture(scope="module")
def lm():
    """A small LSTM language model over K tokens, compiled once."""
    model = gc.models.lstm(K, 8, K, loss="cross_entropy")
    params = model.init_params(seed=3)
    params["b_V"] = np.linspace(-1, 1, K)   # spread the logits: no ties between tokens
    return gc.compile(model), params


@pytest.fixture(scope="module")
def driven():
    """A scalar map with delays, driven by u and fed back through x; the reference backend."""
    s, x, u = sp.Function("s"), sp.Function("x"), sp.Function("u")
    a, b, c, d = sp.symbols("a b c d")
    model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 2)) + c * x(t - 1) + d * u(t)},
                          outputs={"y": 0.5 * s(t) + 0.1})
    return gc.compile(model, backend="reference"), {"a": 0.5, "b": 0.3, "c": 0.4, "d": 0.2}


def onehot(tokens, n=K):
    return np.eye(n)[tokens]


def free_run(kernel, params, first, steps, pick, extra=None, prompt=None):
    """The reference: forward over the whole sequence so far, its last output fed back."""
    xs = first[None] if prompt is None else np.concatenate([prompt, first[None]])
    for i in range(steps):
        given = {n: a[:len(xs)] for n, a in (extra or {}).items()}
        out = kernel.forward(params, {"x": xs, **given})
        if i < steps - 1:
            xs = np.concatenate([xs, pick(out)[None]])
    return xs, out


def test_greedy_equals_a_loop_over_forward(lm):
    kernel, params = lm
    gen = gc.generate(kernel, params, 12, feed={"x": "o"}, sample="greedy", batch=3)
    xs, out = free_run(kernel, params, np.zeros((3, K)), 12, lambda o: onehot(o["o"][-1].argmax(-1)))
    assert gen["x"].shape == (12, 3, K) and gen["o"].shape == (12, 3, K) and gen["h"].shape == (12, 3, 8)
    np.testing.assert_array_equal(gen["x"], xs)
    # the fed output is aligned on the step it forecasts: row i holds o(i), the logits of token x(i+1)
    np.testing.assert_array_equal(gen["o"][0], 0)   # no prompt: x(1) is zero, from no output
    np.testing.assert_allclose(gen["o"][1:], out["o"][:-1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(gen["x"][1:], onehot(gen["o"][1:].argmax(-1)))
    np.testing.assert_allclose(gen["c"], out["c"], rtol=1e-12, atol=1e-12)   # states at their own step
    assert len(set(gen["x"].argmax(-1).ravel())) > 1   # it is not stuck on one token


def test_a_prompt_warms_the_state_like_forward(lm):
    kernel, params = lm
    rng = np.random.default_rng(0)
    prompt = onehot(rng.integers(0, K, (6, 2)))
    gen = gc.generate(kernel, params, 5, feed={"x": "o"}, prompt={"x": prompt}, sample="greedy")
    warm = kernel.forward(params, {"x": prompt})
    np.testing.assert_allclose(gen["o"][0], warm["o"][-1], rtol=1e-12)   # the prompt's last output seeds it
    np.testing.assert_array_equal(gen["x"][0], onehot(warm["o"][-1].argmax(-1)))
    xs, out = free_run(kernel, params, gen["x"][0], 5, lambda o: onehot(o["o"][-1].argmax(-1)), prompt=prompt)
    np.testing.assert_allclose(gen["h"], out["h"][6:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gen["o"], out["o"][5:-1], rtol=1e-12, atol=1e-12)


def test_forecasting_feeds_the_value_with_driving_inputs_and_initial(driven):
    kernel, params = driven
    rng = np.random.default_rng(1)
    P, steps, B = 4, 7, 2
    u = rng.normal(size=(P + steps, B))
    prompt = {"x": rng.normal(size=(P, B)), "u": u[:P]}
    initial = {"s": rng.normal(size=(2, B)), "x": rng.normal(size=B)}
    gen = gc.generate(kernel, params, steps, feed={"x": "y"}, prompt=prompt, inputs={"u": u[P:]}, initial=initial)
    assert gen["x"].shape == gen["y"].shape == gen["s"].shape == (steps, B)
    xs = prompt["x"]
    for i in range(steps):   # by hand: the model reads x(t-1) only, so y(t) estimates x(t): x(t) := y(t)
        xs = np.concatenate([xs, np.zeros((1, B))])          # x(t) is not read at step t
        out = kernel.forward(params, {"x": xs, "u": u[:len(xs)]}, initial=initial)
        xs[-1] = out["y"][-1]
    np.testing.assert_allclose(gen["x"], xs[P:], rtol=1e-12)
    np.testing.assert_array_equal(gen["y"], gen["x"])          # the forecast, under either name
    np.testing.assert_allclose(gen["y"], out["y"][P:], rtol=1e-12)
    np.testing.assert_allclose(gen["s"], out["s"][P:], rtol=1e-12)
    # read as a next-step predictor instead, y(t) forecasts x(t+1): x(t) := y(t-1)
    ahead = gc.generate(kernel, params, steps, feed={"x": ("y", 1)}, prompt=prompt, inputs={"u": u[P:]}, initial=initial)
    xs = prompt["x"]
    for i in range(steps):
        out = kernel.forward(params, {"x": xs, "u": u[:len(xs)]}, initial=initial)
        xs = np.concatenate([xs, out["y"][-1:]])
    out = kernel.forward(params, {"x": xs, "u": u[:len(xs)]}, initial=initial)
    np.testing.assert_allclose(ahead["x"], xs[P:], rtol=1e-12)
    np.testing.assert_allclose(ahead["y"], out["y"][P - 1:-1], rtol=1e-12)


def test_a_state_can_be_fed_back():
    model = gc.models.jordan(2, 4, 2, loss=None)   # o is a state, read at t-1 by h
    kernel, params = gc.compile(model, backend="reference"), model.init_params(seed=1)
    gen = gc.generate(kernel, params, 6, feed={"x": "o"}, batch=2)
    xs, out = free_run(kernel, params, np.zeros((2, 2)), 6, lambda o: o["o"][-1])
    np.testing.assert_allclose(gen["x"], xs, rtol=1e-12)
    np.testing.assert_array_equal(gen["o"], gen["x"])
    np.testing.assert_allclose(gen["h"], out["h"], rtol=1e-12)


@pytest.fixture(scope="module")
def narx():
    """The textbook NARX form: yhat(t) = a y(t-1) + b y(t-2), fitted to the series y itself."""
    y, yhat = sp.Function("y"), sp.Function("yhat")
    a, b = sp.symbols("a b")
    model = gc.Recurrence({}, outputs={"yhat": a * y(t - 1) + b * y(t - 2)}, loss=(yhat(t) - y(t)) ** 2)
    return gc.compile(model, backend="reference"), {"a": 0.9, "b": -0.2}


def test_narx_forecast_is_the_recursion_by_hand(narx):
    kernel, params = narx
    prompt = np.array([[1.0, 2.0], [0.5, -1.0]])            # y(1), y(2) of two series
    gen = gc.generate(kernel, params, 4, feed={"y": "yhat"}, prompt={"y": prompt})
    for b in range(2):
        ys = list(prompt[:, b])
        for _ in range(4):                                   # yhat(t) estimates y(t): y(t) := yhat(t)
            ys.append(0.9 * ys[-1] - 0.2 * ys[-2])
        np.testing.assert_allclose(gen["yhat"][:, b], ys[2:], rtol=1e-12)
    np.testing.assert_allclose(gen["yhat"][:2, 0], [0.25, 0.125], rtol=1e-12)
    np.testing.assert_array_equal(gen["y"], gen["yhat"])


def test_an_explicit_ahead_feeds_an_older_output(narx):
    kernel, params = narx
    prompt = np.array([[1.0], [0.5], [0.25]])
    gen = gc.generate(kernel, params, 3, feed={"y": ("yhat", 1)}, prompt={"y": prompt})
    # yhat(t) = .9 y(t-1) - .2 y(t-2) taken as a forecast of y(t+1): y(t) := yhat(t-1)
    ys, yh = [1.0, 0.5, 0.25], {3: 0.9 * 0.5 - 0.2 * 1.0}
    for t_ in range(4, 7):
        ys.append(yh[t_ - 1])
        yh[t_] = 0.9 * ys[-2] - 0.2 * ys[-3]
    np.testing.assert_allclose(gen["y"][:, 0], ys[3:], rtol=1e-12)
    np.testing.assert_allclose(gen["yhat"][:, 0], [yh[3], yh[4], yh[5]], rtol=1e-12)


def test_narx_with_a_hidden_state_feeds_its_output_at_the_same_step():
    h, y = sp.Function("h"), sp.Function("y")
    w, u, v = sp.symbols("w u v")
    model = gc.Recurrence({h(t): sp.tanh(w * h(t - 1) + u * y(t - 1))}, outputs={"yhat": v * h(t)},
                          loss=(v * h(t) - y(t)) ** 2)
    kernel, params = gc.compile(model, backend="reference"), {"w": 0.5, "u": 0.8, "v": 1.5}
    gen = gc.generate(kernel, params, 5, feed={"y": "yhat"}, prompt={"y": np.array([[0.3], [0.6]])})
    ys = [0.0, 0.3, 0.6]                                    # y(0) = 0 (before the first step), the prompt
    hs = np.tanh(0.5 * np.tanh(0.0) + 0.8 * 0.3)            # h(2): h(1) = tanh(0.8 y(0)) = 0
    expect = []
    for _ in range(5):                                      # yhat(t) estimates y(t): y(t) := yhat(t)
        hs = np.tanh(0.5 * hs + 0.8 * ys[-1])
        ys.append(1.5 * hs)
        expect.append(ys[-1])
    np.testing.assert_allclose(gen["yhat"][:, 0], expect, rtol=1e-12)
    np.testing.assert_array_equal(gen["y"], gen["yhat"])


def test_a_state_space_model_runs_from_its_inputs_without_feed():
    x, u = gc.signal("x", 2), sp.Function("u")
    A, Bm, C = gc.param("A", 2, 2), gc.param("B", 2), gc.param("C", 1, 2)
    model = gc.Recurrence({x(t): A * x(t - 1) + Bm * u(t)}, outputs={"y": C * x(t)})
    kernel = gc.compile(model, backend="reference")
    params = {"A": np.array([[0.9, 0.1], [0.0, 0.8]]), "B": np.array([1.0, 0.5]), "C": np.array([[1.0, -1.0]])}
    us = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
    gen = gc.generate(kernel, params, 3, feed=None, prompt={"u": us[:2, None]}, inputs={"u": us[2:, None]})
    state, ys = np.zeros(2), []
    for value in us:
        state = params["A"] @ state + params["B"] * value
        ys.append(params["C"] @ state)
    np.testing.assert_allclose(gen["y"][:, 0], np.array(ys[2:]), rtol=1e-12)
    np.testing.assert_allclose(gen["x"][-1, 0], state, rtol=1e-12)


def test_sampling_is_reproducible_by_seed_and_cold_sampling_is_greedy(lm):
    kernel, params = lm
    run = lambda **kw: gc.generate(kernel, params, 20, feed={"x": "o"}, batch=4, **kw)["x"].argmax(-1)
    first, again, other = run(sample="sample", seed=7), run(sample="sample", seed=7), run(sample="sample", seed=8)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    np.testing.assert_array_equal(run(sample="sample", temperature=1e-6, seed=1), run(sample="greedy"))


def test_token_frequencies_follow_softmax_of_logits_over_temperature():
    model = gc.models.elman(K, 2, K, loss=None)
    params = {p: np.zeros_like(v) for p, v in model.init_params().items()}   # V = 0: the logits are b_V
    logits = np.array([1.0, 0.0, -0.5, 2.0, 0.5])
    params["b_V"] = logits
    kernel = gc.compile(model, backend="reference")
    n = 20000
    for T in (0.7, 2.0):
        tokens = gc.generate(kernel, params, 2, feed={"x": "o"}, sample="sample", temperature=T,
                             batch=n, seed=5)["x"][1].argmax(-1)
        p = np.exp(logits / T) / np.exp(logits / T).sum()
        freq = np.bincount(tokens, minlength=K) / n
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n)), (freq, p)


def test_generation_refuses_bad_calls(lm, driven):
    kernel, params = lm
    scalar, sparams = driven
    cases = [
        (dict(feed={"z": "o"}), "feed names 'z', which is not an input of the model"),
        (dict(feed={"x": "out"}), "feed['x'] = 'out' is not an output or state of the model"),
        (dict(feed={"x": "h"}), "'h' has per-step shape (8,) but input 'x' has (5,)"),
        (dict(feed={"x": "h"}, sample="greedy"), "'h' has size (8,) but input 'x' has (5,)"),
        (dict(feed={"x": "o"}, sample="top-k"), "unknown sample='top-k'"),
        (dict(feed={"x": "o"}, sample="sample", temperature=0), "temperature must be a positive number, got 0"),
        (dict(feed={"x": "o"}, batch=2, prompt={"x": np.zeros((3, 4, K))}), "batch=2 but the prompt or inputs hold 4"),
        (dict(feed=["x", "o"]), "feed must be a dict"),
        (dict(feed={"x": "o"}, prompt={"x": np.zeros((3, K))}), "prompt['x'] has shape (3, 5); expected time-major (T, B, 5)"),
    ]
    for kw, message in cases:
        with pytest.raises(gc.GraphcompError, match=re.escape(message)):
            gc.generate(kernel, params, 3, **kw)
    with pytest.raises(gc.GraphcompError, match=r"input 'u' drives the model but is not fed back: pass inputs=\{'u'"):
        gc.generate(scalar, sparams, 3, feed={"x": "y"})
    with pytest.raises(gc.GraphcompError, match=r"inputs\['u'\] has 2 steps and batch 1, expected 3 steps"):
        gc.generate(scalar, sparams, 3, feed={"x": "y"}, inputs={"u": np.zeros((2, 1))})
    with pytest.raises(gc.GraphcompError, match="sample='greedy' feeds a one-hot vector, but input 'x'"):
        gc.generate(scalar, sparams, 3, feed={"x": "y"}, sample="greedy", inputs={"u": np.zeros((3, 1))})
    with pytest.raises(gc.GraphcompError, match="steps must be a positive number"):
        gc.generate(scalar, sparams, 0, feed={"x": "y"})


def test_a_feed_that_closes_no_loop_is_refused(narx):
    model = gc.models.elman(1, 3, 1)          # o(t) forecasts the target y(t), read only by the loss
    kernel, params = gc.compile(model, backend="reference"), model.init_params(seed=0)
    with pytest.raises(gc.GraphcompError, match=re.escape(
            "feed['y'] = 'o', but 'o' does not depend on 'y' (the model reads 'y' only in the loss), so feeding "
            "it closes no loop: feed an input it is computed from, e.g. feed={'x': 'o'}")):
        gc.generate(kernel, params, 3, feed={"y": "o"}, inputs={"x": np.zeros((3, 1, 1))})
    with pytest.raises(gc.GraphcompError, match=re.escape(
            "feed['x'] = ('o', 0) would set x(t) = o(t), but the model reads x(t) to compute step t")):
        gc.generate(kernel, params, 3, feed={"x": ("o", 0)})
    with pytest.raises(gc.GraphcompError, match=re.escape("feed['x'] = ('o', -1): ahead must be an integer >= 0")):
        gc.generate(kernel, params, 3, feed={"x": ("o", -1)})
    two = gc.Recurrence({sp.Function("s")(t): sp.Symbol("a") * sp.Function("p")(t - 1) + sp.Function("q")(t)},
                        outputs={"o": 2 * sp.Function("s")(t)})
    with pytest.raises(gc.GraphcompError, match=re.escape("'o' feeds 'p' 0 step(s) ahead and 'q' 1: its result "
                                                          "cannot be aligned on both")):
        gc.generate(gc.compile(two, backend="reference"), {"a": 0.5}, 3, feed={"p": "o", "q": "o"})


def test_a_model_that_runs_backwards_cannot_generate():
    model = gc.models.elman(2, 3, 2, bidirectional=True, loss=None)
    kernel = gc.compile(model, backend="reference")
    with pytest.raises(gc.GraphcompError, match=r"state 'h_bw' reads its own future \(h_bw\(t\+1\)\): a model that runs"):
        gc.generate(kernel, model.init_params(), 3, feed={"x": "o"})
