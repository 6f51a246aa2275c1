"""Declarations: roles, sweeps, and every declaration error, named in the user's symbols."""
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import models

t = gc.t
s, r, x, y = (sp.Function(n) for n in "srxy")
a, b, d = sp.symbols("a b d")
H, D = 3, 2
h, g, xv, target = gc.signal("h", H), gc.signal("g", H), gc.signal("x", D), gc.signal("target", H)
W, U = gc.param("W", H, H), gc.param("U", H, D)


def err(match):
    return pytest.raises(gc.GraphcompError, match=match)


# ---------------------------------------------------------------- roles

def test_roles_are_inferred():
    m = gc.Recurrence({s(t): a * s(t - 1) + b * x(t)}, outputs={"o": 2 * s(t)}, loss=(s(t) - y(t)) ** 2)
    assert m.states == ["s"] and m.inputs == ["x", "y"] and m.params == ["a", "b"] and m.outputs == ["o"]


def test_an_output_read_by_the_loss_is_not_an_input():
    o = gc.signal("o", H)
    m = gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + U * xv(t))}, outputs={"o": W * h(t)},
                      loss=gc.mse(o(t), target(t)))
    assert m.inputs == ["x", "target"] and m.outputs == ["o"]
    assert m.step.loss is not None and m.step.outputs["o"].shape == (H, 1)


def test_equations_are_the_declaration():
    m = gc.Recurrence({s(t): a * s(t - 1) + x(t)}, outputs={"o": s(t)}, loss=s(t) ** 2)
    eqs = m.equations()
    assert [str(e.lhs) for e in eqs] == ["s(t)", "o(t)", "L(t)"]
    assert eqs[0].rhs == a * s(t - 1) + x(t) and eqs[2].rhs == s(t) ** 2


def test_delays_and_history():
    m = gc.Recurrence({s(t): a * s(t - 1) + b * s(t - 3) + x(t - 2)}, loss=(s(t) - y(t + 1)) ** 2)
    info = m.step.signals
    assert info["s"].offsets == (-3, -1, 0) and info["s"].history == 3
    assert info["x"].offsets == (-2,) and info["x"].history == 2
    assert info["y"].offsets == (1,) and info["y"].history == 0


def test_sweeps_forward_backward_and_stacked():
    h2 = gc.signal("h2", H)
    m = gc.Recurrence({h2(t): gc.tanh(W * h2(t - 1) + W * h(t)), h(t): gc.tanh(W * h(t - 1) + U * xv(t))})
    (sweep,) = m.step.sweeps
    assert sweep.direction == 1 and sweep.states == ("h", "h2")   # h2 reads h(t): h first
    bi = gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + U * xv(t)), g(t): gc.tanh(W * g(t + 1) + U * xv(t))})
    assert [(sw.direction, sw.states) for sw in bi.step.sweeps] == [(1, ("h",)), (-1, ("g",))]
    assert bi.step.signals["g"].direction == -1 and bi.step.signals["g"].history == 1


def test_a_user_lambda_activation_and_parameters_inside_it():
    z = sp.Symbol("z")
    softsign = sp.Lambda(z, z / (1 + sp.Abs(z)))
    m = gc.Recurrence({h(t): gc.elementwise(softsign, W * h(t - 1)) + gc.elementwise(sp.Lambda(z, a * z), U * xv(t))})
    assert set(m.params) == {"W", "U", "a"}


# ---------------------------------------------------------------- weights and biases

def test_a_parameter_that_multiplies_a_signal_is_a_weight():
    u = sp.Function("u")
    P, Q, V = gc.param("P", H, 2), gc.param("Q", 2, H), gc.param("V", 2, H)
    col, v, p, c, bias = (gc.param(n, H) for n in ("col", "v", "p", "c", "bias"))
    r = gc.sigmoid(W * h(t - 1))
    m = gc.Recurrence({h(t): gc.tanh(P * Q * h(t - 1) + col * u(t) + gc.hadamard(p, h(t - 1)) + bias)
                             + gc.hadamard(r, U * xv(t) + c)},
                      outputs={"o": V * h(t)}, loss=gc.mse(v.T * h(t), gc.signal("y", 1)(t)))
    # P Q h: both factors; u(t) col: a scalar signal times a column; p ⊙ h; V h and v.T h: readouts
    assert m.step.weights == {"P", "Q", "col", "p", "W", "U", "V", "v"}
    assert set(m.params) - m.step.weights == {"bias", "c"}   # c is added to U x(t), then gated


def test_init_params_by_role():
    m = gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + gc.param("u", H, 1) * x(t) + gc.param("b", H))},
                      loss=gc.mse(gc.param("v", H).T * h(t), gc.signal("y", 1)(t)))
    p = m.init_params(seed=4)
    assert {n: a.shape for n, a in p.items()} == {"W": (H, H), "u": (H,), "b": (H,), "v": (H,)}
    assert np.all(p["b"] == 0)
    for name, fans in (("W", H + H), ("u", H + 1), ("v", H + 1)):   # Glorot-uniform over the declared shape
        assert 0 < np.abs(p[name]).max() <= np.sqrt(6 / fans) and np.all(p[name] != 0)
    assert all(np.array_equal(p[n], m.init_params(seed=4)[n]) for n in p)


def test_init_params_agrees_with_the_model_library():
    """gc.models.init's rules: orthogonal and Glorot for the weights, constants for the biases
    (the echo-state network, left out, draws its reservoir's biases at random by design)."""
    for m in (models.elman(1, 4, 1), models.lstm(1, 4, 1, peephole=True), models.gru(1, 4, 1),
              models.jordan(1, 4, 1), models.leaky(1, 4, 1, alpha="learned"), models.seq2seq(3, 4, 3)):
        random = {n for n, rule in m.rules.items() if rule in ("glorot", "orthogonal")}
        assert random == m.step.weights, m
        plain = gc.Recurrence.init_params(m)
        assert {n: a.shape for n, a in plain.items()} == {n: a.shape for n, a in models.init(m).items()}


def test_a_scalar_input_is_seen_from_the_first_step():
    """The issue's classifier: one input, a logistic readout v.T h. With U and v zeroed as biases
    its loss sat at exactly ln 2 with every gradient zero; as weights it trains."""
    Hc, T, B = 8, 12, 64
    hc, u, label = gc.signal("h", Hc), sp.Function("u"), sp.Function("label")
    logit = gc.param("v", Hc).T * hc(t)
    m = gc.Recurrence({hc(t): gc.tanh(gc.param("W", Hc, Hc) * hc(t - 1) + gc.param("U", Hc, 1) * u(t)
                                      + gc.param("b", Hc))},
                      loss=gc.elementwise(lambda q: sp.log(1 + sp.exp(q)), logit) - label(t) * logit)
    rng = np.random.default_rng(0)
    series = rng.normal(size=(T, B))
    data = {"u": series, "label": (np.cumsum(series, 0) > 0).astype(float)}   # is the running sum positive?
    kernel, params = gc.compile(m, backend="reference"), m.init_params(seed=0)
    loss, grads = kernel.loss_and_grad(params, data)
    assert np.abs(grads["U"]).max() > 0.1 and np.abs(grads["v"]).max() > 0.1
    for _ in range(60):
        loss, grads = kernel.loss_and_grad(params, data)
        params = {n: params[n] - 0.1 / T * grads[n] for n in params}
    assert loss / T < 0.3 < np.log(2)


def test_one_minus_a_vector_and_an_entry_compute_what_they_say():
    """1 - z is ones minus z, a scalar parameter plus a vector adds it to every entry, h(t)[0]
    is the first entry: the same numbers as NumPy."""
    z = gc.sigmoid(U * xv(t))
    m = gc.Recurrence({h(t): gc.hadamard(1 - z, h(t - 1)) + gc.hadamard(z, gc.tanh(W * h(t - 1) + a))},
                      loss=(h(t)[0] - y(t)) ** 2)
    rng = np.random.default_rng(1)
    p = {"U": rng.normal(size=(H, D)), "W": rng.normal(size=(H, H)), "a": 0.3}
    X, Y = rng.normal(size=(4, 1, D)), rng.normal(size=(4, 1))
    loss, _ = gc.compile(m, backend="reference").loss_and_grad(p, {"x": X, "y": Y})
    state, want = np.zeros(H), 0.0
    for k in range(4):
        gate = 1 / (1 + np.exp(-p["U"] @ X[k, 0]))
        state = (1 - gate) * state + gate * np.tanh(p["W"] @ state + p["a"])
        want += (state[0] - Y[k, 0]) ** 2
    assert np.isclose(loss, want)


# ---------------------------------------------------------------- errors

def test_delays_must_be_integer_constants():
    with err(r"s\(t - 1/2\) in the update of s: the time offset -1/2 is not an integer constant"):
        gc.Recurrence({s(t): s(t - sp.Rational(1, 2))})
    with err(r"s\(-d \+ t\) in the update of s: the time offset -d is not an integer constant"):
        gc.Recurrence({s(t): s(t - d)})
    with err(r"x\(3\) in the update of s: signals are read at t plus an integer constant, like x\(t-1\)"):
        gc.Recurrence({s(t): s(t - 1) + x(3)})
    with err(r"h\(t - 0.5\) in the update of h"):
        gc.Recurrence({h(t): W * h(t - 0.5)})


def test_update_keys_must_be_signals_at_t():
    with err(r"the update key s\(t - 1\) must be at time t"):
        gc.Recurrence({s(t - 1): a * s(t - 2)})
    with err(r"the update key a is not a signal at time t"):
        gc.Recurrence({a: s(t - 1)})


def test_shapes_of_updates():
    with err(r"the update of h has shape 2x1 but h is 3x1"):
        gc.Recurrence({h(t): xv(t)})
    with err(r"the update of h has shape a scalar but h is 3x1"):
        gc.Recurrence({h(t): a * s(t - 1)})
    with err(r"the update of s has shape 3x1 but s is a scalar"):
        gc.Recurrence({s(t): W * h(t - 1), h(t): W * h(t - 1)})


def test_same_step_cycles_name_the_states():
    with err(r"same-step cycle between states \['r', 's'\]"):
        gc.Recurrence({s(t): a * r(t) + x(t), r(t): b * s(t)})
    with err(r"same-step cycle between states \['s'\]: s\(t\) -> s\(t\)"):
        gc.Recurrence({s(t): a * s(t) + x(t)})


def test_a_recurrence_runs_one_direction():
    with err(r"states \['s'\] form one recurrence that reads both the past \(s\(t\) reads s\(t-1\)\) "
             r"and the future \(s\(t\) reads s\(t\+1\)\)"):
        gc.Recurrence({s(t): a * s(t - 1) + b * s(t + 1)})
    with err(r"states \['r', 's'\] form one recurrence"):
        gc.Recurrence({s(t): a * r(t - 1), r(t): b * s(t + 1)})


def test_one_name_one_role_one_shape():
    with err(r"'a' is used both as a parameter and as a signal"):
        gc.Recurrence({s(t): a * s(t - 1) + sp.Function("a")(t)})
    with err(r"'x' is used both as a (signal|parameter) and as a (parameter|signal).*give them different names"):
        gc.Recurrence({s(t): x(t) * s(t - 1) + sp.Symbol("x")})
    with err(r"signal 'h' is read as 3x1 and as 2x1"):
        gc.Recurrence({h(t): W * h(t - 1), g(t): U * gc.signal("h", D)(t - 1)})
    with err(r"parameter 'W' appears as 3x3 and as 2x2"):
        gc.Recurrence({h(t): W * h(t - 1), gc.signal("q", D)(t): gc.param("W", D, D) * gc.signal("q", D)(t - 1)})


def test_scalar_functions_of_matrices_point_to_gc():
    with err(r"tanh\(W\*h\(t - 1\)\) in the update of h: sympy's scalar tanh is applied to the 3x1 matrix "
             r"W\*h\(t - 1\); for the elementwise tanh write gc.tanh\(W\*h\(t - 1\)\)"):
        gc.Recurrence({h(t): sp.tanh(W * h(t - 1))})
    with err(r"tanh\(h\(t - 1\)\), where it meets W: .* write gc.tanh\(h\(t - 1\)\)"):
        gc.Recurrence({h(t): W * sp.tanh(h(t - 1))})          # caught at the product, before the Recurrence
    with err(r"in the loss: sympy's scalar log is applied to the 3x1 matrix h\(t\)"):
        gc.Recurrence({h(t): W * h(t - 1)}, loss=sp.log(h(t)))


def test_an_undefined_function_is_not_mistaken_for_a_signal():
    myact = sp.Function("myact")
    with err(r"myact\(s\(t - 1\) \+ x\(t\)\) in the update of s: myact is an undefined sympy Function, applied "
             r"to s\(t - 1\) \+ x\(t\): graphcomp cannot compute or differentiate it; give its formula in z"):
        gc.Recurrence({s(t): myact(s(t - 1) + x(t))})
    with err(r"myact\(U\*x\(t\) \+ W\*h\(t - 1\)\) in the update of h: myact is an undefined sympy Function"):
        gc.Recurrence({h(t): myact(W * h(t - 1) + U * xv(t))})
    z = sp.Symbol("z")
    softplus = gc.Recurrence({s(t): gc.elementwise(sp.Lambda(z, sp.log(1 + sp.exp(z))), s(t - 1)) + x(t)})
    assert softplus.params == [] and softplus.inputs == ["x"]      # what the message says to write


def test_time_and_grid_axes():
    i, j = sp.symbols("i j", integer=True)
    axes = (r"a recurrence runs over the time index gc.t, over a grid of two or more axes \(h\(i, j\)\), "
            r"or over trees \(h\(gc.child\(k\)\)\)")
    grid = gc.Recurrence({s(i, j): s(i - 1, j) + s(i, j - 1) + x(i, j)})
    assert grid.step.axes == (i, j) and grid.step.signals["s"].offsets == ((-1, 0), (0, -1))
    with err(r"s\(t - 1, j\) in the update of s: the model's updates are over time t alone, so a signal "
             r"takes one argument, like s\(t-1\)"):
        gc.Recurrence({s(t): s(t - 1, j) + x(t)})
    with err(rf"s\(i - 1\) in the update of s: {axes}; signals are read at t plus an integer constant, like s\(t-1\)"):
        gc.Recurrence({s(t): s(i - 1) + x(t)})
    with err(rf"h\(i - 1\) in the update of h: {axes}"):
        gc.Recurrence({h(t): W * h(i - 1)})
    with err(rf"s\(i\) in the updates: {axes}"):
        gc.Recurrence({s(i): s(i - 1) + x(i)})
    with err(r"s\(i - 1\) in the update of s: the model's updates are over the axes \(i, j\), so a signal takes "
             r"2 arguments, one per axis, like s\(i, j\)"):
        gc.Recurrence({s(i, j): s(i - 1) + x(i, j)})
    with err(r"s\(i - 1, i \+ j - 1\) in the update of s: on axis j the offset i - 1 is not an integer constant"):
        gc.Recurrence({s(i, j): s(i - 1, j - 1 + i)})
    with err(r"the update key u\(j, i\): every state of a grid is updated at the same point with the axes in "
             r"one order, like u\(i, j\)"):
        gc.Recurrence({s(i, j): s(i - 1, j), sp.Function("u")(j, i): s(i, j)})
    with err(r"states \['s'\] are read both ways along axis j \(s\(i, j\) reads s\(i, j - 1\); s\(i, j\) reads "
             r"s\(i - 1, j \+ 1\)\); a state sweeps one way per axis"):
        gc.Recurrence({s(i, j): s(i, j - 1) + s(i - 1, j + 1)})
    with err(r"the grid index i appears outside a signal's argument in the update of s"):
        gc.Recurrence({s(i, j): s(i - 1, j) + i})


def test_time_outside_a_signal():
    with err(r"the time index t appears outside a signal's argument in the update of s"):
        gc.Recurrence({s(t): a * s(t - 1) + t})


def test_loss_and_outputs():
    with err(r"the loss must be a scalar per step, but it is 3x1"):
        gc.Recurrence({h(t): W * h(t - 1)}, loss=h(t))
    with err(r"output 'o' can only be read at t"):
        gc.Recurrence({s(t): a * s(t - 1)}, outputs={"o": s(t)}, loss=sp.Function("o")(t - 1) ** 2)
    with err(r"'s' is both a state and an output"):
        gc.Recurrence({s(t): a * s(t - 1)}, outputs={"s": s(t)})
    with err(r"output 'x' has the name of a signal the model reads"):
        gc.Recurrence({s(t): a * s(t - 1) + x(t)}, outputs={"x": s(t)})
    with err(r"the recurrence is empty"):
        gc.Recurrence({})


def test_unsupported_matrix_expressions():
    with err(r"Inverse W\*\*\(-1\) in the update of h is not supported"):
        gc.Recurrence({h(t): sp.Inverse(W) * h(t - 1)})


def test_dsl_shape_errors():
    with err(r"hadamard\(h\(t\), x\(t\)\): shapes 3x1 and 2x1 differ"):
        gc.hadamard(h(t), xv(t))
    with err(r"concat: parts have different numbers of columns"):
        gc.concat(h(t), W)
    with err(r"concat: a is a scalar"):
        gc.concat(h(t), a)
    with err(r"mse\(h\(t\), x\(t\)\): shapes 3x1 and 2x1 differ"):
        gc.mse(h(t), xv(t))
    with err(r"cross_entropy\(s\(t\), y\(t\)\) needs vector logits"):
        gc.cross_entropy(s(t), y(t))
    with err(r"signal 'h': size 0 must be a positive integer"):
        gc.signal("h", 0)
    with err(r"elementwise function .* must take exactly one argument"):
        gc.elementwise(sp.Lambda((a, b), a * b), h(t))
