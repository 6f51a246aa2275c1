"""Optimizers equal torch.optim update by update; schedules and clipping by hand; the
init/update API of a custom loop does what the trainer does and refuses what it cannot update."""
import math
import re

import numpy as np
import pytest

import graphcomp as gc
from graphcomp import optim

torch = pytest.importorskip("torch")


def run_both(ours, theirs, steps=6):
    """Apply the same gradient sequence (a fixed quadratic's) with both optimizers."""
    rng = np.random.default_rng(0)
    start = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=3), "a": np.array(0.7)}
    params = {k: v.copy() for k, v in start.items()}
    state = ours.init(params)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    topt = theirs(list(tp.values()))
    for k in range(steps):
        grads = {n: np.sin(p * (k + 1)) + p for n, p in params.items()}
        ours.update(params, grads, state, k)
        for n, p in tp.items():
            p.grad = torch.sin(p.detach() * (k + 1)) + p.detach()
        topt.step()
    for n in params:
        np.testing.assert_allclose(params[n], tp[n].detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ours, theirs", [
    (optim.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (optim.SGD(0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (optim.SGD(0.1, momentum=0.5, dampening=0.3), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3)),
    (optim.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (optim.Adam(0.01, betas=(0.8, 0.99), weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    (optim.Adam(0.01, weight_decay=0.1, decoupled=True), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    (optim.RMSProp(0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)),
    (optim.RMSProp(0.01, alpha=0.9, weight_decay=0.05), lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, weight_decay=0.05)),
    (optim.AdaGrad(0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    (optim.AdaGrad(0.1, weight_decay=0.02), lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.02)),
], ids=lambda v: type(v).__name__ if isinstance(v, optim.Optimizer) else "")
def test_updates_equal_torch(ours, theirs):
    run_both(ours, theirs)


def test_adam_first_update_by_hand():
    """Bias-corrected, Adam's first step moves every component by lr · sign(g)."""
    p, g = {"w": np.array([1.0, -2.0, 3.0])}, {"w": np.array([0.5, -4.0, 1e-3])}
    opt = optim.Adam(0.1)
    opt.update(p, g, opt.init(p), 0)
    np.testing.assert_allclose(p["w"], [0.9, -1.9, 2.9], rtol=1e-6)


def test_schedules():
    s = optim.step_decay(1.0, every=10, gamma=0.5)
    assert [s(0), s(9), s(10), s(25)] == [1.0, 1.0, 0.5, 0.25]
    c = optim.cosine(1.0, steps=100, min_lr=0.1)
    assert c(0) == 1.0 and math.isclose(c(50), 0.55) and math.isclose(c(100), 0.1) and math.isclose(c(500), 0.1)
    w = optim.warmup(0.4, steps=4)
    assert [w(0), w(1), w(3), w(10)] == [0.1, 0.2, 0.4, 0.4]
    wc = optim.warmup(c, steps=2)
    assert wc(0) == 0.5 and wc(5) == c(5)


def test_a_schedule_drives_the_update():
    p, opt = {"w": np.array([0.0])}, optim.SGD(optim.step_decay(1.0, every=1, gamma=0.1))
    state = opt.init(p)
    for k in range(3):
        opt.update(p, {"w": np.array([1.0])}, state, k)
    np.testing.assert_allclose(p["w"], [-1.11])


def test_clip_by_norm_and_value():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert optim.clip(g, norm=1.0) == 5.0
    np.testing.assert_allclose(g["a"], [0.6, 0.0])
    np.testing.assert_allclose(g["b"], [[0.8]])
    g = {"a": np.array([3.0, -0.5]), "b": np.array([[-4.0]])}
    optim.clip(g, value=1.0)
    np.testing.assert_allclose(g["a"], [1.0, -0.5])
    np.testing.assert_allclose(g["b"], [[-1.0]])
    g = {"a": np.array([0.3])}
    assert optim.clip(g, norm=1.0) == pytest.approx(0.3) and g["a"][0] == 0.3   # under the norm: unchanged


@pytest.mark.parametrize("make, message", [
    (lambda: optim.SGD(-1.0), "learning rate must be a positive number"),
    (lambda: optim.SGD(0.1, nesterov=True), "Nesterov momentum needs momentum > 0"),
    (lambda: optim.Adam(0.1, betas=(0.9, 1.0)), "betas must lie in"),
    (lambda: optim.Adam(0.1, weight_decay=-1), "weight_decay must be >= 0"),
    (lambda: optim.cosine(0.1, steps=0), "steps must be a positive integer"),
])
def test_bad_settings_are_refused(make, message):
    with pytest.raises(gc.GraphcompError, match=message):
        make()


def test_a_custom_loop_with_init_and_update_is_what_the_trainer_does():
    model = gc.models.elman(2, 3, 2)
    kernel = gc.compile(model, backend="reference")
    rng = np.random.default_rng(1)
    data = {"x": rng.normal(size=(6, 4, 2)), "y": rng.normal(size=(6, 4, 2))}
    opt = optim.Adam(1e-2)
    params = {p: np.array(v, np.float64) for p, v in model.init_params(seed=0).items()}
    state = opt.init(params)
    assert set(state) == set(params) and state["W"]["m"].shape == (3, 3)
    for step in range(5):
        loss, grads = kernel.loss_and_grad(params, data)
        optim.clip(grads, norm=1.0)
        opt.update(params, grads, state, step)
    trainer = gc.Trainer(kernel, optim.Adam(1e-2), clip_norm=1.0, progress=False)
    trainer.fit(model.init_params(seed=0), data, epochs=5, batch_size=4)   # one minibatch an epoch
    for p in params:
        np.testing.assert_allclose(params[p], trainer.params[p], rtol=1e-12, atol=1e-15)


def test_update_refuses_arrays_it_cannot_change_in_place():
    opt = optim.SGD(0.1)
    good = {"w": np.zeros((2, 3))}
    state = opt.init(good)
    cases = [
        ({"w": 0.5}, "update changes params in place, but params['w'] is float: give np.array(value, np.float64)"),
        ({"w": np.zeros((2, 3), np.float32)}, "params['w'] is a float32 array: give np.array(value, np.float64)"),
        ({"w": np.zeros((3, 2)).T}, "params['w'] is a float64 array, not C-contiguous"),
    ]
    for params, message in cases:
        with pytest.raises(gc.GraphcompError, match=re.escape(message)):
            opt.update(params, {"w": np.ones((2, 3))}, state, 0)
    with pytest.raises(gc.GraphcompError, match=re.escape("the optimizer state has no slots for 'w': call "
                                                          "state = optimizer.init(params)")):
        opt.update(good, {"w": np.ones((2, 3))}, {}, 0)
    opt.update(good, {"w": np.ones((2, 3))}, state, 0)
    np.testing.assert_array_equal(good["w"], -0.1)
