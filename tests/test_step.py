"""Declarations: roles, sweeps, and every declaration error, named in the user's symbols."""
import pytest
import sympy as sp

import graphcomp as gc

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
    with err(r"tanh is applied to the matrix expression W\*h\(t - 1\) in the update of h; use gc.tanh"):
        gc.Recurrence({h(t): sp.tanh(W * h(t - 1))})


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
