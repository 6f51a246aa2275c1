"""Call-time checks: every bad array is a GraphcompError in the user's names."""
import re
import warnings

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc

from catalogue import delays, elman, bidirectional

t = gc.t


@pytest.fixture(scope="module")
def el():
    case = elman()
    return case, gc.compile(case.model, backend="reference")


def err(match):
    return pytest.raises(gc.GraphcompError, match=match)


def test_missing_and_unknown_parameters(el):
    case, k = el
    p = dict(case.params)
    del p["W"]
    with err(r"missing parameter \['W'\]"):
        k.loss_and_grad(p, case.inputs)
    with err(r"unknown parameter 'Ww'.*did you mean 'W'"):
        k.loss_and_grad({**case.params, "Ww": 1.0}, case.inputs)
    with err("parameters must be a dict"):
        k.loss_and_grad([1, 2], case.inputs)


def test_parameter_shapes_and_values(el):
    case, k = el
    with err(r"parameter 'W' has shape \(3, 4\), expected \(4, 4\)"):
        k.loss_and_grad({**case.params, "W": np.zeros((3, 4))}, case.inputs)
    with err(r"parameter 'b' has shape \(4, 1\), expected \(4,\) \(a bias: a 1-D array; use .ravel\(\)\)"):
        k.loss_and_grad({**case.params, "b": np.zeros((4, 1))}, case.inputs)
    bad = case.params["U"].copy()
    bad[1, 2] = np.nan
    with err(r"parameter 'U' contains nan at index \(1, 2\)"):
        k.loss_and_grad({**case.params, "U": bad}, case.inputs)
    with err("parameter 'W' is complex"):
        k.loss_and_grad({**case.params, "W": case.params["W"] + 0j}, case.inputs)
    with err("parameter 'W' has dtype <U1"):
        k.loss_and_grad({**case.params, "W": np.full((4, 4), "a")}, case.inputs)


def test_inputs(el):
    case, k = el
    with err(r"missing input \['y'\]"):
        k.loss_and_grad(case.params, {"x": case.inputs["x"]})
    # forward needs no target
    out = k.forward(case.params, {"x": case.inputs["x"]})
    assert out["h"].shape == (7, 3, 4)
    with err(r"unknown input 'xx'.*did you mean 'x'"):
        k.forward(case.params, {"x": case.inputs["x"], "xx": 0})
    with err(r"'h' is a state .*initial=\{'h': \.\.\.\}"):
        k.forward(case.params, {"x": case.inputs["x"], "h": 0})
    with err(r"'o' is an output"):
        k.forward(case.params, {"x": case.inputs["x"], "o": 0})
    with err(re.escape("input 'x' has shape (7, 3); expected time-major (T, B, 3); for batch-major arrays "
                       "(B, T, ...) pass batch_first=True")):
        k.forward(case.params, {"x": case.inputs["x"][..., 0]})
    with err(re.escape("input 'x' has per-step shape (2,), expected (3,) (the model declares x as 3x1; "
                       "arrays are time-major (T, B, ...))")):
        k.forward(case.params, {"x": case.inputs["x"][..., :2]})
    with err(re.escape("input 'y' has 5 steps and batch 3 but 'x' has 7 steps and batch 3; all inputs share "
                       "their first two axes, time-major (T, B, ...); for batch-major arrays (B, T, ...) pass "
                       "batch_first=True")):
        k.loss_and_grad(case.params, {"x": case.inputs["x"], "y": case.inputs["y"][:5]})
    x = case.inputs["x"].copy()
    x[2, 1, 0] = np.inf
    with err(r"input 'x' contains inf at index \(2, 1, 0\)"):
        k.forward(case.params, {"x": x})


def test_nan_past_a_sequence_end_is_padding(el):
    case, k = el
    x = case.inputs["x"].copy()
    lengths = np.array([7, 3, 5])
    ref = k.forward(case.params, {"x": x}, lengths)
    x[3:, 1] = np.nan   # padding of sequence 1
    out = k.forward(case.params, {"x": x}, lengths)
    assert np.array_equal(out["h"], ref["h"])


def test_lengths(el):
    case, k = el
    with err(r"lengths\[1\] = 9 is outside 1..7"):
        k.forward(case.params, case.inputs, lengths=[7, 9, 1])
    with err(r"lengths\[2\] = 0 is outside 1..7"):
        k.forward(case.params, case.inputs, lengths=[7, 1, 0])
    with err(r"lengths has shape \(2,\); expected \(3,\), one length per sequence$"):
        k.forward(case.params, case.inputs, lengths=[7, 1])
    with err("lengths must be integers"):
        k.forward(case.params, case.inputs, lengths=[7, 1.5, 2])
    out = k.forward(case.params, case.inputs, lengths=np.array([7.0, 1.0, 2.0]))
    assert out["h"].shape == (7, 3, 4)


def test_initial(el):
    case, k = el
    with err(r"initial value of 'h' has shape \(2, 4\); expected \(3, 4\) or \(1, 3, 4\)"):
        k.forward(case.params, case.inputs, initial={"h": np.zeros((2, 4))})
    with err(r"initial value for 'x', but x is never read before its first step"):
        k.forward(case.params, case.inputs, initial={"x": np.zeros((3, 3))})
    with err(r"unknown signal 'q'"):
        k.forward(case.params, case.inputs, initial={"q": 0})
    a = k.forward(case.params, case.inputs, initial={"h": np.ones((3, 4))})
    b = k.forward(case.params, case.inputs, initial={"h": np.ones((1, 3, 4))})
    assert np.array_equal(a["h"], b["h"])


def test_initial_with_deeper_history():
    case = delays()
    k = gc.compile(case.model)
    with err(r"initial value of 's' has shape \(3,\); expected \(3, 3\): 3 value\(s\) per sequence, oldest first"):
        k.forward(case.params, case.inputs, initial={"s": np.zeros(3)})


def test_backward_state_initial_is_after_the_end():
    case = bidirectional()
    k = gc.compile(case.model)
    with err(r"in time order, first the step after the last"):
        k.forward(case.params, case.inputs, initial={"g": np.zeros((2, 3, 3))})


def test_divergence_is_reported_not_returned():
    s, x = sp.Function("s"), sp.Function("x")
    a = sp.Symbol("a")
    m = gc.Recurrence({s(t): a * s(t - 1) + x(t)}, loss=s(t) ** 2)
    k = gc.compile(m)
    X = np.ones((800, 1))
    with err(r"state 's' became inf at t=\d+ in sequence 0: the recurrence diverges"):
        k.forward({"a": 3.0}, {"x": X})
    with err(r"state 's' became inf"):
        k.loss_and_grad({"a": 3.0}, {"x": X})


def test_model_without_inputs_needs_steps():
    s = sp.Function("s")
    a = sp.Symbol("a")
    m = gc.Recurrence({s(t): a * s(t - 1) + 1}, loss=s(t) ** 2)
    k = gc.compile(m)
    with err("reads no input.*steps=T"):
        k.forward({"a": 0.5})
    out = k.forward({"a": 0.5}, steps=3)
    assert np.allclose(out["s"][:, 0], [1, 1.5, 1.75])
    out = k.forward({"a": 0.5}, steps=3, initial={"s": np.array([2.0, 0.0])})
    assert np.allclose(out["s"][:, 0], [2, 2, 2])


def test_compile_arguments(el):
    case, _ = el
    with err("unknown backend 'cuda'"):
        gc.compile(case.model, backend="cuda")
    with err("dtype 'int8' is not supported"):
        gc.compile(case.model, dtype="int8")
    with err("gc.compile needs a gc.Recurrence"):
        gc.compile("model")
    m = gc.Recurrence({sp.Function("s")(t): sp.Function("s")(t - 1) + 1})
    with err("the model has no loss"):
        gc.compile(m).loss_and_grad({}, steps=2)


def test_batch_first_reads_and_returns_batch_major_arrays(el):
    case, k = el
    major = {n: np.swapaxes(a, 0, 1) for n, a in case.inputs.items()}      # (B, T, ...)
    lengths = np.array([7, 3, 5])
    out = k.forward(case.params, major, lengths, batch_first=True)
    ref = k.forward(case.params, case.inputs, lengths)
    assert out["h"].shape == (3, 7, 4) and out["o"].shape == ref["o"].shape[1::-1] + ref["o"].shape[2:]
    for n in ref:
        np.testing.assert_array_equal(out[n], np.swapaxes(ref[n], 0, 1))
    loss, grads = k.loss_and_grad(case.params, major, lengths, batch_first=True)
    ref_loss, ref_grads = k.loss_and_grad(case.params, case.inputs, lengths)
    assert loss == ref_loss and all(np.array_equal(grads[p], ref_grads[p]) for p in grads)
    loss, _ = k.loss_and_grad(case.params, major, lengths, batch_first=True, method="rtrl")
    assert loss == pytest.approx(ref_loss, rel=1e-12)


def test_batch_first_shape_errors_speak_batch_major(el):
    case, k = el
    major = {n: np.swapaxes(a, 0, 1) for n, a in case.inputs.items()}
    with err(re.escape("input 'x' has shape (3, 7); expected batch-major (B, T, 3) since batch_first=True "
                       "(without it, arrays are time-major (T, B, ...))")):
        k.forward(case.params, {"x": major["x"][..., 0]}, batch_first=True)
    with err(re.escape("input 'y' has batch 3 and 5 steps but 'x' has batch 3 and 7 steps; with "
                       "batch_first=True all inputs are (B, T, ...)")):
        k.loss_and_grad(case.params, {"x": major["x"], "y": major["y"][:, :5]}, batch_first=True)


def test_lengths_with_one_entry_per_step_suggest_batch_first(el):
    case, k = el
    major = {"x": np.swapaxes(case.inputs["x"], 0, 1)}   # (3, 7, 3) read as T = 3 steps of B = 7
    with err(re.escape("lengths has shape (3,); expected (7,), one length per sequence; the inputs ['x'] are read "
                       "time-major (T, B, ...) as T = 3 steps of B = 7 sequences: if they are batch-major "
                       "(B, T, ...), pass batch_first=True")):
        k.forward(case.params, major, lengths=[7, 3, 5])


def test_square_batch_major_arrays_with_lengths_warn():
    """With T == B both layouts fit: padding that lies along the wrong axis gives it away."""
    model = gc.models.elman(2, 3, 2)
    k, params = gc.compile(model, backend="reference"), model.init_params(seed=0)
    rng = np.random.default_rng(0)
    lengths = np.array([4, 2, 3, 1])
    valid = np.arange(4)[:, None] < lengths[None, :]                  # (T, B)
    x, y = rng.normal(size=(4, 4, 2)) * valid[..., None], rng.normal(size=(4, 4, 2)) * valid[..., None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # time-major and padded: no warning
        k.loss_and_grad(params, {"x": x, "y": y}, lengths)
        k.forward(params, {"x": rng.normal(size=(4, 4, 2))}, lengths)  # padding holding data: no warning
    major = {"x": np.swapaxes(x, 0, 1), "y": np.swapaxes(y, 0, 1)}
    with pytest.warns(UserWarning, match=re.escape("the arrays ['x', 'y'] look transposed: with these lengths their "
                                                   "padding (zeros) lies past each sequence's end along the axis "
                                                   "read as the batch")):
        k.loss_and_grad(params, major, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k.loss_and_grad(params, major, lengths, batch_first=True)


@pytest.fixture(scope="module", params=["numba", "reference"])
def scalar_input(request):
    """A network with a one-dimensional input u(t) and a column readout v.T h(t)."""
    H = 3
    h, u, y = gc.signal("h", H), sp.Function("u"), sp.Function("y")
    v = gc.param("v", H)
    m = gc.Recurrence({h(t): gc.tanh(gc.param("W", H, H) * h(t - 1) + gc.param("U", H, 1) * u(t) + gc.param("b", H))},
                      loss=gc.mse(v.T * h(t), gc.signal("y", 1)(t)))
    rng = np.random.default_rng(5)
    return m, gc.compile(m, backend=request.param), {"u": rng.normal(size=(6, 2)), "y": rng.normal(size=(6, 2, 1))}


def test_a_weight_with_one_column_is_taken_as_h_or_h_by_1(scalar_input):
    m, k, data = scalar_input
    flat = m.init_params(seed=2)
    assert flat["U"].shape == flat["v"].shape == flat["b"].shape == (3,)      # init_params: (H,) for every column
    loss, grads = k.loss_and_grad(flat, data)
    assert grads["U"].shape == grads["v"].shape == (3,) and np.abs(grads["U"]).max() > 0
    column = {**flat, "U": flat["U"][:, None], "v": flat["v"][:, None]}
    loss2, grads2 = k.loss_and_grad(column, data)
    assert loss2 == loss and grads2["U"].shape == grads2["v"].shape == (3, 1) and grads2["b"].shape == (3,)
    assert np.array_equal(grads2["U"][:, 0], grads["U"]) and np.array_equal(grads2["v"][:, 0], grads["v"])
    out = k.forward(column, data)
    assert np.array_equal(out["h"], k.forward(flat, data)["h"])


def test_a_weight_of_another_shape_names_both_shapes_it_takes(scalar_input):
    m, k, data = scalar_input
    p = m.init_params()
    with err(r"parameter 'U' has shape \(1, 3\), expected \(3,\) or \(3, 1\) \(a weight with one column\)"):
        k.loss_and_grad({**p, "U": p["U"][None]}, data)
    with err(r"parameter 'b' has shape \(3, 1\), expected \(3,\) \(a bias"):
        k.loss_and_grad({**p, "b": p["b"][:, None]}, data)
