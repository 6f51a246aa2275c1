"""Gradient algorithms: boundary cotangents, checkpointed and truncated BPTT, the cost model,
held against the reference backend, the unfolded DAG and finite differences."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import graphcomp as gc
from graphcomp.ir.autodiff import backprop
from graphcomp.grad import methods
from graphcomp.grad.methods import segment
from graphcomp.views.unfold import evaluate

from catalogue import CATALOGUE, elman

FORWARD = [f for f in CATALOGUE if f.__name__ != "bidirectional"]


def rel(a: dict, b: dict) -> float:
    """The largest error of a against b, relative to b's largest entry, over every key."""
    return max(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))) / max(np.max(np.abs(np.asarray(b[k]))), 1e-300)
               for k in b)


@pytest.fixture(scope="module", params=FORWARD, ids=lambda f: f.__name__)
def case(request):
    c = request.param()
    return c, gc.compile(c.model), gc.compile(c.model, backend="reference")


def _seeds(c, B: int) -> dict:
    r = np.random.default_rng(1)
    out = {}
    for s in c.model.states:
        info = c.model.step.signals[s]
        k = max(info.history, 1)
        out[s] = r.normal(size=((B,) if k == 1 else (k, B)) + info.array_shape)
    return out


def _shape(c):
    return next(iter(c.inputs.values())).shape[:2]


def test_boundary_cotangents_agree_across_backends_and_with_finite_differences(case):
    """The gradient of L + Σ <λ, s(end)> w.r.t. the parameters and the initial values."""
    c, kn, kr = case
    T, B = _shape(c)
    seeds = _seeds(c, B)
    ln, gn, inn = kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, final_cotangents=seeds, with_initial=True)
    lr, gr, inr = kr.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, final_cotangents=seeds, with_initial=True)
    assert abs(ln - lr) <= 1e-9 * abs(lr) and rel(gn, gr) < 1e-9 and rel(inn, inr) < 1e-9
    histories = {s: c.model.step.signals[s].history for s in c.model.states}
    assert set(inn) == {n for n, i in c.model.step.signals.items() if i.history}   # delayed inputs too
    lengths = np.full(B, T) if c.lengths is None else c.lengths
    initial = {s: np.asarray(c.initial.get(s, np.zeros_like(inn[s])), float) for s in inn}

    def objective(params, initial):   # L + Σ <λ, s(len_b - j)>, s read from forward()
        value = kr.loss_and_grad(params, c.inputs, c.lengths, {**c.initial, **initial})[0]
        states = kr.forward(params, c.inputs, c.lengths, {**c.initial, **initial})
        for s, seed in seeds.items():
            h, k = histories[s], max(histories[s], 1)
            before = initial[s].reshape((h, B) + states[s].shape[2:]) if h else states[s][:0]
            full, seed = np.concatenate([before, states[s]]), seed.reshape((k, B) + states[s].shape[2:])
            value += sum(np.sum(seed[k - 1 - j, b] * full[lengths[b] - j - 1 + h, b]) for j in range(k) for b in range(B))
        return value

    for s, a in initial.items():
        fd = central(lambda v: objective(c.params, {**initial, s: v}), a)
        assert rel({s: inn[s]}, {s: fd}) < 1e-6
    name, value = next(iter(c.params.items()))   # one parameter's entries, by finite differences
    fd = central(lambda v: objective({**c.params, name: v}, initial), np.asarray(value, float))
    assert rel({name: gn[name]}, {name: fd}) < 1e-6


def central(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar function of an array, entry by entry."""
    fd = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[i] += eps
        down[i] -= eps
        fd[i] = (f(up) - f(down)) / (2 * eps)
    return fd


def test_without_seeds_the_initial_cotangents_are_the_loss_gradient(case):
    c, kn, _ = case
    loss, grads = kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial)
    loss2, grads2, initial = kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, with_initial=True)
    assert abs(loss2 - loss) < 1e-12 * abs(loss) and rel(grads2, grads) < 1e-12
    for s, a in initial.items():
        given = c.initial.get(s)
        assert a.shape == (np.shape(given) if given is not None else a.shape) and a.dtype == np.float64


@pytest.mark.parametrize("every", [1, 3, None])
def test_checkpoint_equals_bptt(case, every):
    c, kn, kr = case
    T, B = _shape(c)
    seeds = _seeds(c, B)
    for k in (kn, kr) if every == 3 else (kn,):
        full = k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, final_cotangents=seeds, with_initial=True)
        cp = k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, final_cotangents=seeds, with_initial=True,
                             method="checkpoint", every=every)
        assert abs(cp[0] - full[0]) <= 1e-9 * abs(full[0]) and rel(cp[1], full[1]) < 1e-9 and rel(cp[2], full[2]) < 1e-9
        plain = k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, method="checkpoint", every=every)
        assert len(plain) == 2 and rel(plain[1], k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial)[1]) < 1e-9


def _oracle_tbptt(c, kr, k1: int, k2: int) -> dict:
    """Truncated BPTT from the unfolded DAG: per chunk, reverse mode seeded at its losses only,
    over the window's DAG started from the true states."""
    T, B = _shape(c)
    step, impl = c.model.step, kr.impl
    batch = kr.prepare(c.params, c.inputs, c.lengths, c.initial, with_loss=True)
    states, _ = impl.forward(batch)
    grads = {p: np.zeros(shape) for p, shape in step.params.items()}
    for e in [*range(k1, T, k1), T]:
        w, start = max(0, e - k2), e - k1 if e % k1 == 0 else e - e % k1
        init = {s: np.concatenate([batch.initial[s], states[s]])[w:w + i.history]
                for s, i in step.signals.items() if i.role == "state" and i.history}
        part = segment(step, batch, w, e, init)
        for b in range(B):
            n = int(part.lengths[b])
            if n == 0:
                continue
            one = gc.check.Batch(n, 1, part.params, {x: a[:n, b:b + 1] for x, a in part.inputs.items()},
                                 np.array([n]), {x: a[:, b:b + 1] for x, a in part.initial.items()}, part.dtype)
            graph = c.model.unfold(n)
            values = evaluate(graph, _leaf(step, one))
            seeds = {("loss", "L", t): np.full(1, 1.0 / B) for t in range(start - w + 1, n + 1)}
            ct = backprop(graph, values, seeds)
            for p in grads:
                grads[p] += ct.get(("param", p, None), np.zeros((1,) + step.params[p])).sum(0)
    return {p: g.reshape(np.shape(c.params[p])) for p, g in grads.items()}


def _leaf(step, one):
    def leaf(nid, attrs):
        if attrs["kind"] == "param":
            return one.params[attrs["name"]]
        if attrs.get("initial"):
            init, t = one.initial.get(attrs["name"]), attrs["time"]
            k = step.signals[attrs["name"]].history
            return init[k + t - 1] if init is not None and 0 <= k + t - 1 < k else np.zeros((1,) + attrs["shape"])
        return one.inputs[attrs["name"]][attrs["time"] - 1]
    return leaf


@pytest.mark.parametrize("k1, k2", [(2, 2), (2, 5), (3, 4)])
def test_tbptt_equals_the_unfolded_oracle(case, k1, k2):
    c, kn, kr = case
    loss, grads = kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, method="tbptt", k1=k1, k2=k2)
    assert abs(loss - kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial)[0]) < 1e-12 * max(1, abs(loss))
    assert rel(grads, _oracle_tbptt(c, kr, k1, k2)) < 1e-9


def test_tbptt_with_k_at_least_T_is_bptt_and_k1_k2_chunks_carry_the_state(case):
    c, kn, _ = case
    T, _ = _shape(c)
    full = kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial)
    long = kn.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, method="tbptt", k1=T, k2=T + 5)
    assert rel(long[1], full[1]) < 1e-12
    # k1 = k2 = k dividing T: the sum of the chunks' gradients, each from the state the last one ended in
    k = 2
    T = k * (T // k)
    inputs = {n: a[:T] for n, a in c.inputs.items()}
    lengths = np.minimum(np.full(_shape(c)[1], T) if c.lengths is None else np.asarray(c.lengths), T)
    states = kn.forward(c.params, inputs, lengths, c.initial)
    total = {}
    for t0 in range(0, T, k):
        alive = lengths > t0
        init = {}
        for s, info in c.model.step.signals.items():
            if info.history:
                given = np.zeros((info.history, len(lengths)) + info.array_shape) if s not in c.initial else \
                    np.reshape(c.initial[s], (info.history, len(lengths)) + info.array_shape)
                init[s] = np.concatenate([given, inputs[s] if info.role == "input" else states[s]])[t0:t0 + info.history][:, alive]
        _, g = kn.loss_and_grad(c.params, {n: a[t0:t0 + k, alive] for n, a in inputs.items()},
                                np.minimum(lengths[alive] - t0, k), init)
        for p, v in g.items():   # a chunk's loss is a mean over its own sequences: weight it back
            total[p] = total.get(p, 0) + v * alive.sum() / len(lengths)
    chunks = kn.loss_and_grad(c.params, inputs, lengths, c.initial, method="tbptt", k1=k)
    assert rel(chunks[1], total) < 1e-9


def test_rtrl_dispatches_to_graphcomp_rtrl(monkeypatch):
    c = elman()
    k = gc.compile(c.model, backend="reference")
    seen = []
    monkeypatch.setattr(gc.rtrl, "loss_and_grad", lambda kernel, *args: seen.append((kernel, args)) or (1.0, {}))
    assert k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, method="rtrl") == (1.0, {})
    assert seen[0][0] is k and seen[0][1][2] is c.lengths


@pytest.fixture(scope="module")
def mid():
    """An Elman network of 32 units over 1500 steps: big enough for its arrays to dominate."""
    c = elman(T=1500, B=4, D=8, H=32, O=4)
    return c, gc.compile(c.model)


def _peak(kernel, c, **kw) -> int:
    """Peak traced bytes of a call, with the kernels compiled and no workspace kept."""
    kernel.loss_and_grad(c.params, c.inputs, None, c.initial, **kw)
    kernel.impl.release()
    tracemalloc.start()
    tracemalloc.reset_peak()
    kernel.loss_and_grad(c.params, c.inputs, None, c.initial, **kw)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("method, options", [("bptt", {}), ("checkpoint", {}), ("checkpoint", {"every": 100})])
def test_peak_bytes_are_within_a_factor_two_of_the_estimate(mid, method, options):
    c, k = mid
    T, B = _shape(c)
    estimate = k.cost(method, T, B, **options)
    measured = _peak(k, c, method=method, **options)
    assert estimate["bytes"] / 2 <= measured <= 2 * estimate["bytes"], (estimate, measured)


def test_auto_picks_checkpoint_when_the_budget_excludes_bptt(mid):
    c, k = mid
    T, B = _shape(c)
    bptt, cp = k.cost("bptt", T, B), k.cost("checkpoint", T, B)
    assert cp["bytes"] < bptt["bytes"] / 4 and cp["flops"] > bptt["flops"] and cp["every"] == 38
    assert k.cost("auto", T, B, memory=10 * bptt["bytes"])["method"] == "bptt"
    plan = k.cost("auto", T, B, memory=bptt["bytes"] // 2)
    assert plan["method"] == "checkpoint" and plan["bytes"] <= bptt["bytes"] // 2
    loss, grads = k.loss_and_grad(c.params, c.inputs, None, c.initial, method="auto", memory=bptt["bytes"] // 2)
    assert rel(grads, k.loss_and_grad(c.params, c.inputs, None, c.initial)[1]) < 1e-9
    with pytest.raises(gc.GraphcompError, match=r"no gradient method fits memory=1,000 bytes for T=1500, B=4"):
        k.cost("auto", T, B, memory=1000)


def test_the_cost_counts_products_and_elementwise_work():
    c = elman(D=3, H=4, O=2)
    k = gc.compile(c.model, backend="reference")
    bptt, rtrl = k.cost("bptt", 100, 2), k.cost("rtrl", 100, 2)
    # W h + U x: 2*4*4 + 2*4*3 flops of products, plus the adds, tanh and the readout and loss
    forward = methods.step_flops(c.model.step)[0]
    assert forward > 2 * 4 * 4 + 2 * 4 * 3 + 2 * 2 * 4
    params = sum(np.size(v) for v in c.params.values())
    assert rtrl["flops"] == 100 * 2 * forward * (params + 1) and rtrl["bytes"] < bptt["bytes"] * params
    assert k.cost("tbptt", 100, 2, k1=10)["flops"] < k.cost("tbptt", 100, 2, k1=10, k2=30)["flops"]


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "adjoint"}, r"unknown method 'adjoint'; choose one of \['bptt', 'checkpoint', 'tbptt', 'rtrl', 'auto'\]"),
    ({"method": "checkpoint", "every": 0}, r"every must be a positive integer number of steps, got 0"),
    ({"method": "checkpoint", "every": 2.5}, r"every must be a positive integer"),
    ({"method": "checkpoint", "memory": -1}, r"memory must be a positive integer number of bytes"),
    ({"method": "checkpoint", "memory": 10}, r"method='checkpoint' needs at least [\d,]+ bytes for T=7, B=3"),
    ({"method": "bptt", "every": 3}, r"method='bptt' takes no options, got \['every'\]"),
    ({"method": "tbptt"}, r"method='tbptt' needs k1"),
    ({"method": "tbptt", "k1": 4, "k2": 2}, r"k2 must be at least k1; got k1=4, k2=2"),
    ({"method": "tbptt", "k1": 2, "with_initial": True}, r"method='tbptt' gives the truncated gradient"),
    ({"method": "rtrl", "with_initial": True}, r"method='rtrl' gives the gradient of the loss w.r.t. the parameters only"),
    ({"final_cotangents": {"x": np.zeros(3)}}, r"unknown state 'x': the model's states are \['h'\]"),
    ({"final_cotangents": {"h": np.zeros((3, 5))}}, r"final cotangent of 'h' has shape \(3, 5\); expected \(3, 4\) or \(1, 3, 4\)"),
    ({"final_cotangents": {"h": np.full((3, 4), np.nan)}}, r"final cotangent of 'h' contains nan at index \(0, 0, 0\)"),
])
def test_bad_options_are_errors_in_the_users_terms(kwargs, message):
    c = elman()
    k = gc.compile(c.model, backend="reference")
    with pytest.raises(gc.GraphcompError, match=message):
        k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, **kwargs)


def test_a_model_that_reads_its_future_cannot_be_cut_in_time():
    c = next(f for f in CATALOGUE if f.__name__ == "bidirectional")()
    k = gc.compile(c.model, backend="reference")
    for kwargs in ({"method": "tbptt", "k1": 2}, {"method": "checkpoint"}):
        with pytest.raises(gc.GraphcompError, match=r"state 'g' runs backwards in time \(g\(t\+1\)\).*method='bptt'"):
            k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, **kwargs)
    with pytest.raises(gc.GraphcompError, match="state 'g' runs backwards in time; call without with_initial"):
        k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, with_initial=True)
    with pytest.raises(gc.GraphcompError, match="state 'g' runs backwards in time, so it has no final value"):
        k.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, final_cotangents={"g": np.zeros((3, 3))})
    assert k.cost("auto", 100, 2, memory=10 ** 9)["method"] == "bptt"


def test_float32_kernels_give_float32_boundary_cotangents_close_to_float64():
    c = elman()
    k32, k64 = gc.compile(c.model, dtype="float32"), gc.compile(c.model, backend="reference")
    seeds = _seeds(c, 3)
    for method in ("bptt", "checkpoint"):
        l32, g32, i32 = k32.loss_and_grad(c.params, c.inputs, c.lengths, c.initial, method=method,
                                          final_cotangents=seeds, with_initial=True)
        l64, g64, i64 = k64.loss_and_grad(c.params, c.inputs, c.lengths, c.initial,
                                          final_cotangents=seeds, with_initial=True)
        assert l32.dtype == np.float32 and i32["h"].dtype == np.float32 and i32["h"].shape == (3, 4)
        assert rel(g32, g64) < 1e-4 and rel(i32, i64) < 1e-4
