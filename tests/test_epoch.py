"""The compiled epoch trains exactly as the Python loop does: same updates, clipping, frozen
parameters, losses and divergence report, for scalar and matrix parameters."""
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import optim
from graphcomp.train import trainer as trainer_module

t = gc.t
s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
a, b, c = sp.symbols("a b c")
START = {"a": 0.1, "b": 0.2, "c": 0.3}


@pytest.fixture(scope="module")
def scalar():
    """A map with a delay-2 state and a delayed input, scalar parameters, sequences of
    unequal lengths."""
    model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 2)) + c * x(t - 1)}, loss=(s(t) - y(t)) ** 2)
    kernel = gc.compile(model)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 13, 24)
    xs = rng.normal(size=(12, 24))
    ys = kernel.forward({"a": 0.6, "b": 0.5, "c": 0.8}, {"x": xs}, lengths=lengths)["s"] + 0.1 * rng.normal(size=(12, 24))
    return kernel, {"x": xs, "y": ys}, lengths


def fit_both(kernel, params, data, lengths, **options):
    fit = {k: options.pop(k) for k in ("epochs", "batch_size") if k in options}
    optimizer = options.pop("optimizer")
    out = []
    for compiled in (False, True):
        trainer = gc.Trainer(kernel, optimizer, progress=False, compiled=compiled, **options)
        history = trainer.fit(params, data, lengths=lengths, seed=3, **fit)
        out.append((trainer, history))
    return out


def test_the_compiled_epoch_equals_the_python_loop(scalar):
    kernel, data, lengths = scalar
    (slow, h1), (fast, h2) = fit_both(kernel, START, data, lengths, optimizer=optim.Adam(0.05), clip_norm=1.0,
                                      clip_value=0.5, epochs=3, batch_size=5)
    assert fast._epoch is not None and slow._epoch is None
    assert h2.loss == pytest.approx(h1.loss, rel=1e-12)
    assert fast.steps == slow.steps == 3 * 5
    for p in START:
        assert fast.params[p] == pytest.approx(slow.params[p], rel=1e-12)
        assert fast.state[p]["v"] == pytest.approx(slow.state[p]["v"], rel=1e-12)


def test_frozen_parameters_and_matrices_in_the_compiled_epoch():
    model = gc.models.elman(3, 5, 2)
    kernel = gc.compile(model)
    params = model.init_params(seed=1)
    rng = np.random.default_rng(1)
    data = {"x": rng.normal(size=(7, 20, 3)), "y": rng.normal(size=(7, 20, 2))}
    lengths = rng.integers(2, 8, 20)
    (slow, h1), (fast, h2) = fit_both(kernel, params, data, lengths, train=["W", "b", "V"], epochs=2, batch_size=6,
                                      optimizer=optim.SGD(0.1, momentum=0.9, nesterov=True))
    assert h2.loss == pytest.approx(h1.loss, rel=1e-12)
    for p in params:
        np.testing.assert_allclose(fast.params[p], slow.params[p], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(fast.params["U"], params["U"])   # frozen


def test_a_float32_kernel_trains_in_the_compiled_epoch_as_in_python():
    """The float64 master parameters go to a float32 kernel in its dtype (they went as
    float64, and Numba could not compile the epoch); the updates, norm clipping included,
    match the Python loop's to the last bit."""
    model = gc.models.lstm(3, 4, 2)
    kernel = gc.compile(model, dtype="float32")
    params = model.init_params(seed=2)
    rng = np.random.default_rng(2)
    data = {"x": rng.normal(size=(6, 16, 3)), "y": rng.normal(size=(6, 16, 2))}
    (slow, h1), (fast, h2) = fit_both(kernel, params, data, None, optimizer=optim.Adam(0.01), clip_norm=0.1,
                                      epochs=2, batch_size=4)
    assert fast._epoch is not None and fast.params["W_i"].dtype == np.float32
    assert h2.loss == pytest.approx(h1.loss, rel=1e-6)
    for p in params:
        np.testing.assert_array_equal(fast.params[p], slow.params[p])


def test_divergence_in_the_compiled_epoch_is_reported_as_in_python(scalar):
    kernel, data, lengths = scalar
    big = {n: v * 50 for n, v in data.items()}
    errors, kept = [], []
    for compiled in (False, True):
        trainer = gc.Trainer(kernel, optim.SGD(1e3), progress=False, compiled=compiled)
        with pytest.raises(gc.GraphcompError, match="training diverged in epoch 1 after .* updates") as e:
            trainer.fit(START, big, lengths=lengths, epochs=3, batch_size=1)
        errors.append(str(e.value))
        kept.append(trainer.params)
    assert errors[0] == errors[1]
    for p in START:
        assert kept[1][p] == pytest.approx(kept[0][p], rel=1e-12)


def test_auto_compiles_the_epoch_only_for_long_fits(scalar, monkeypatch):
    kernel, data, lengths = scalar
    trainer = gc.Trainer(kernel, optim.SGD(0.01), progress=False)
    trainer.fit(START, data, lengths=lengths, epochs=1, batch_size=4)
    assert trainer._epoch is None
    monkeypatch.setattr(trainer_module, "COMPILED_EPOCH_UPDATES", 6)
    trainer.fit(START, data, lengths=lengths, epochs=1, batch_size=4)
    assert trainer._epoch is not None


@pytest.mark.parametrize("options, message", [
    (dict(compiled="yes"), "compiled must be True, False or 'auto', got 'yes'"),
    (dict(compiled=True, tbptt=3), "compiled=True cannot be: tbptt runs in Python"),
])
def test_bad_compiled_options_say_what_to_do(scalar, options, message):
    with pytest.raises(gc.GraphcompError, match=message):
        gc.Trainer(scalar[0], **options)


def test_the_reference_backend_has_no_compiled_epoch():
    model = gc.Recurrence({s(t): a * s(t - 1) + x(t)}, loss=(s(t) - y(t)) ** 2)
    with pytest.raises(gc.GraphcompError, match="the 'reference' backend has none"):
        gc.Trainer(gc.compile(model, backend="reference"), compiled=True)
