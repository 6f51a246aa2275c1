"""The trainer: minibatches of variable-length sequences equal per-sequence gradients,
truncated BPTT equals full BPTT where it must, freezing, early stopping, divergence,
checkpoints, progress, batch-first data, float32 parameters, and fitting a system's parameters."""
import re

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import optim

t = gc.t
s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
a, b, c, d = sp.symbols("a b c d")
TRUE = {"a": 0.6, "b": 0.5, "c": 0.8, "d": -0.3}


@pytest.fixture(scope="module")
def kernel():
    """A map with delays 1 and 2 in the state and 1 in the input: truncated BPTT must carry
    two steps of s and one of x across a chunk boundary."""
    model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 2)) + c * x(t) + d * x(t - 1)},
                          loss=(s(t) - y(t)) ** 2)
    return gc.compile(model)


def simulate(kernel, n, T, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(T // 2, T + 1, n)
    seqs = []
    for L in lengths:
        xs = rng.normal(size=(L, 1))
        out = kernel.forward(TRUE, {"x": xs})
        seqs.append({"x": xs[:, 0], "y": out["s"][:, 0] + noise * rng.normal(size=L)})
    return seqs


def pad(seqs):
    T = max(len(q["x"]) for q in seqs)
    arr = {n: np.zeros((T, len(seqs))) for n in seqs[0]}
    for i, q in enumerate(seqs):
        for n, v in q.items():
            arr[n][:len(v), i] = v
    return arr, np.array([len(q["x"]) for q in seqs])


START = {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1}


def test_a_minibatch_update_is_the_mean_of_per_sequence_gradients(kernel):
    seqs = simulate(kernel, 5, 12, noise=0.1)
    trainer = gc.Trainer(kernel, optim.SGD(0.05), progress=False)
    trainer.fit(START, seqs, epochs=1, batch_size=5)
    grads = [kernel.loss_and_grad(START, {n: v[:, None] for n, v in q.items()})[1] for q in seqs]
    for p in START:
        expected = START[p] - 0.05 * np.mean([g[p] for g in grads])
        assert trainer.params[p] == pytest.approx(expected, rel=1e-12)


def test_padded_arrays_and_a_list_of_sequences_train_alike(kernel):
    seqs = simulate(kernel, 6, 10, seed=1)
    arrays, lengths = pad(seqs)
    one = gc.Trainer(kernel, optim.Adam(0.01), progress=False)
    h1 = one.fit(START, seqs, epochs=3, batch_size=2, seed=4)
    two = gc.Trainer(kernel, optim.Adam(0.01), progress=False)
    h2 = two.fit(START, arrays, epochs=3, batch_size=2, lengths=lengths, seed=4)
    assert h1.loss == pytest.approx(h2.loss, rel=1e-12)
    for p in START:
        assert one.params[p] == pytest.approx(two.params[p], rel=1e-12)


def test_truncated_bptt_with_a_chunk_as_long_as_the_data_is_full_bptt(kernel):
    seqs = simulate(kernel, 4, 9, seed=2, noise=0.1)
    full = gc.Trainer(kernel, optim.Adam(0.02), progress=False)
    full.fit(START, seqs, epochs=2, batch_size=4)
    chunked = gc.Trainer(kernel, optim.Adam(0.02), tbptt=9, progress=False)
    chunked.fit(START, seqs, epochs=2, batch_size=4)
    for p in START:
        assert chunked.params[p] == pytest.approx(full.params[p], rel=1e-12)


def test_truncated_bptt_carries_the_delayed_state_and_input_across_chunks(kernel):
    """With a zero learning rate the chunks' losses add up to the whole sequences' loss, for
    chunks of 1, 2 and 3 steps and sequences of unequal lengths."""
    seqs = simulate(kernel, 5, 11, seed=3, noise=0.2)
    arrays, lengths = pad(seqs)
    whole, _ = kernel.loss_and_grad(START, arrays, lengths=lengths)
    for k in (1, 2, 3):
        trainer = gc.Trainer(kernel, optim.SGD(lambda step: 0.0), tbptt=k, progress=False)
        history = trainer.fit(START, seqs, epochs=1, batch_size=5)
        assert history.loss[0] == pytest.approx(whole, rel=1e-12)
        assert trainer.steps == -(-lengths.max() // k)   # one update per chunk


def test_truncated_bptt_updates_after_each_chunk(kernel):
    """Two chunks of 4 steps by hand: the first chunk's gradient, an update, then the second
    chunk from the first one's final state (under the parameters it ran with)."""
    seqs = simulate(kernel, 3, 8, seed=5, noise=0.1)
    arrays, lengths = pad(seqs)
    lengths[:] = 8
    arrays = {n: v[:8] for n, v in arrays.items()}
    trainer = gc.Trainer(kernel, optim.SGD(0.1), tbptt=4, progress=False)
    trainer.fit(START, arrays, epochs=1, batch_size=3)
    first = {n: v[:4] for n, v in arrays.items()}
    _, g1 = kernel.loss_and_grad(START, first)
    after = {p: START[p] - 0.1 * g1[p] for p in START}
    run = kernel.forward(START, first)
    initial = {"s": run["s"][2:4], "x": arrays["x"][3:4]}
    _, g2 = kernel.loss_and_grad(after, {n: v[4:] for n, v in arrays.items()}, initial=initial)
    for p in START:
        assert trainer.params[p] == pytest.approx(after[p] - 0.1 * g2[p], rel=1e-12)


@pytest.mark.parametrize("k1, k2", [(1, 3), (2, 3), (2, 5), (3, 20)])
def test_truncated_bptt_with_longer_windows_counts_each_loss_once(kernel, k1, k2):
    """tbptt=(k1, k2): with a zero learning rate the updates' losses still add up to the whole
    loss (each step's loss counted once, in the update of its k1 steps), one update per k1."""
    seqs = simulate(kernel, 5, 11, seed=3, noise=0.2)
    arrays, lengths = pad(seqs)
    whole, _ = kernel.loss_and_grad(START, arrays, lengths=lengths)
    trainer = gc.Trainer(kernel, optim.SGD(lambda step: 0.0), tbptt=(k1, k2), progress=False)
    history = trainer.fit(START, seqs, epochs=1, batch_size=5)
    assert history.loss[0] == pytest.approx(whole, rel=1e-12)
    assert trainer.steps == -(-lengths.max() // k1)


def test_truncated_bptt_k1_k2_gradient_is_the_last_k1_losses_through_k2_steps(kernel, monkeypatch):
    """Each update's gradient, by finite differences: the losses of its k1 steps, with the
    state entering its k2-step window held fixed (parameters unchanged: learning rate 0)."""
    B, k1, k2 = 3, 2, 3
    rng = np.random.default_rng(6)
    arrays = {"x": rng.normal(size=(9, B)), "y": rng.normal(size=(9, B))}
    T = 9
    seen = []
    trainer = gc.Trainer(kernel, optim.SGD(lambda step: 0.0), tbptt=(k1, k2), progress=False)
    update = trainer.optimizer.update
    monkeypatch.setattr(trainer.optimizer, "update", lambda p, g, *rest: (seen.append(dict(g)), update(p, g, *rest)))
    trainer.fit(START, arrays, epochs=1, batch_size=B)
    full = kernel.forward(START, arrays)["s"]
    padded = {"s": np.concatenate([np.zeros((2, B)), full]), "x": np.concatenate([np.zeros((1, B)), arrays["x"]])}

    def partial(params, lo, hi):   # Σ over steps lo..hi-1 of the loss, mean over the batch
        start = max(hi - k2, 0)
        initial = {"s": padded["s"][start:start + 2], "x": padded["x"][start:start + 1]}
        run = kernel.forward(params, {"x": arrays["x"][start:hi]}, initial=initial)["s"]
        return np.sum((run[lo - start:] - arrays["y"][lo:hi]) ** 2) / B

    assert len(seen) == 5
    for i, grads in enumerate(seen):
        lo, hi = i * k1, min(i * k1 + k1, T)
        for p in START:
            up, down = dict(START), dict(START)
            up[p] += 1e-6
            down[p] -= 1e-6
            assert grads[p] == pytest.approx((partial(up, lo, hi) - partial(down, lo, hi)) / 2e-6, rel=1e-6, abs=1e-9)


def test_training_recovers_the_parameters(kernel):
    seqs = simulate(kernel, 32, 60, seed=6, noise=0.01)
    trainer = gc.Trainer(kernel, optim.Adam(optim.cosine(0.05, 400, 0.005)), clip_norm=10.0, progress=False)
    history = trainer.fit(START, seqs, epochs=50, batch_size=8, seed=0)
    assert history.loss[-1] < 0.01 * history.loss[0]
    for p, v in TRUE.items():
        assert trainer.params[p] == pytest.approx(v, abs=0.03)


def test_frozen_parameters_stay(kernel):
    seqs = simulate(kernel, 4, 10, seed=7)
    trainer = gc.Trainer(kernel, optim.Adam(0.05), train=["c", "d"], progress=False)
    trainer.fit(START, seqs, epochs=3, batch_size=2)
    assert trainer.params["a"] == START["a"] and trainer.params["b"] == START["b"]
    assert trainer.params["c"] != START["c"] and trainer.params["d"] != START["d"]


def test_early_stopping_keeps_the_best_parameters(kernel):
    seqs = simulate(kernel, 4, 10, seed=8)
    trainer = gc.Trainer(kernel, optim.SGD(lambda step: 0.0), progress=False)   # the loss never improves
    history = trainer.fit(START, seqs, epochs=10, batch_size=4, validation=seqs, patience=2)
    assert len(history.loss) == len(history.val_loss) == 3
    assert "did not improve for 2 epochs" in history.stopped and "epoch 1" in history.stopped
    with pytest.raises(gc.GraphcompError, match="pass validation"):
        trainer.fit(START, seqs, epochs=2, patience=1)


def test_the_callback_sees_the_history_and_can_stop(kernel):
    seen = []
    trainer = gc.Trainer(kernel, optim.Adam(0.01), progress=False,
                         callback=lambda epoch, h: seen.append((epoch, len(h.loss))) or epoch == 1)
    history = trainer.fit(START, simulate(kernel, 3, 8), epochs=5, batch_size=3)
    assert seen == [(0, 1), (1, 2)] and len(history.loss) == 2 and "callback" in history.stopped


def test_divergence_stops_with_the_last_good_parameters(kernel):
    seqs = simulate(kernel, 4, 40, seed=9)
    trainer = gc.Trainer(kernel, optim.SGD(1e3), progress=False)
    with pytest.raises(gc.GraphcompError, match="training diverged in epoch 1 after .* updates.*lower the learning rate"):
        trainer.fit(START, seqs, epochs=5, batch_size=1)
    loss, _ = kernel.loss_and_grad(trainer.params, {n: v[:, None] for n, v in seqs[0].items()})
    assert np.isfinite(loss) and trainer.steps >= 1


def test_checkpoints_round_trip_and_resume(kernel, tmp_path):
    seqs = simulate(kernel, 4, 10, seed=10, noise=0.1)
    straight = gc.Trainer(kernel, optim.Adam(0.02), progress=False)
    straight.fit(START, seqs, epochs=4, batch_size=4)
    first = gc.Trainer(kernel, optim.Adam(0.02), progress=False)
    first.fit(START, seqs, epochs=2, batch_size=4)
    path = first.save(tmp_path / "run.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["run.npz"]   # no temporary left behind
    second = gc.Trainer(kernel, optim.Adam(0.02), progress=False)
    loaded = second.load(path)
    assert loaded["a"] == first.params["a"] and second.steps == 2
    second.fit(None, seqs, epochs=2, batch_size=4)
    for p in START:
        assert second.params[p] == pytest.approx(straight.params[p], rel=1e-12)


def test_a_checkpoint_refuses_another_model_or_optimizer(kernel, tmp_path):
    trainer = gc.Trainer(kernel, optim.Adam(0.02), progress=False)
    trainer.fit(START, simulate(kernel, 2, 6), epochs=1, batch_size=2)
    path = trainer.save(tmp_path / "run.npz")
    other = gc.Recurrence({s(t): a * s(t - 1) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
    with pytest.raises(gc.GraphcompError, match="saved from a different model"):
        gc.Trainer(other, optim.Adam(0.02), progress=False).load(path)
    with pytest.raises(gc.GraphcompError, match="holds the state of Adam, this trainer uses SGD"):
        gc.Trainer(kernel, optim.SGD(0.02), progress=False).load(path)
    (tmp_path / "junk.npz").write_text("not a checkpoint")
    with pytest.raises(gc.GraphcompError, match="is not a graphcomp checkpoint"):
        trainer.load(tmp_path / "junk.npz")


def test_progress_bar_shows_the_loss_and_rate(kernel, capsys):
    gc.Trainer(kernel, optim.Adam(0.01)).fit(START, simulate(kernel, 4, 8), epochs=2, batch_size=2)
    err = capsys.readouterr().err
    assert "4/4" in err and "loss=" in err and "batch/s" in err


@pytest.mark.parametrize("call, message", [
    (lambda k: gc.Trainer(k, clip_norm=0), "clip_norm must be a positive number"),
    (lambda k: gc.Trainer(k, train=["W"]), r"train names unknown parameters \['W'\]"),
    (lambda k: gc.Trainer(k, tbptt=0), "tbptt must be a positive number of steps"),
    (lambda k: gc.Trainer(k, tbptt=(2, 1)), "k2 must be at least k1; got k1=2, k2=1"),
    (lambda k: gc.Trainer(k, tbptt=(2, 3, 4)), r"or a pair \(k1, k2\), got \(2, 3, 4\)"),
    (lambda k: gc.Trainer(k, progress=False).fit(None, []), "no parameters to continue from"),
    (lambda k: gc.Trainer(k, progress=False).fit(START, {"x": np.zeros(3)}), "share their first two axes"),
    (lambda k: gc.Trainer(k, progress=False).fit(START, [{"x": np.zeros(3), "y": np.zeros(2)}]),
     "'y' has 2 steps, 'x' has 3"),
    (lambda k: gc.Trainer(k, progress=False).fit(START, {"x": np.zeros((3, 2)), "y": np.zeros((3, 2))},
                                                 lengths=[4, 1]), r"lengths must be \(2,\) integers in 1..3"),
    (lambda k: gc.Trainer(k, progress=False).fit(START, 5), "data must be a dict of padded arrays or a list"),
    (lambda k: gc.Trainer(k, progress=False).fit(START, [{"x": np.zeros(3), "y": np.zeros(3)}], batch_size=0),
     "batch_size must be a positive integer"),
    (lambda k: gc.Trainer(k, progress=False).fit({"a": 1.0}, [{"x": np.zeros(3), "y": np.zeros(3)}]), "missing"),
])
def test_bad_arguments_say_what_to_do(kernel, call, message):
    with pytest.raises(gc.GraphcompError, match=message):
        call(kernel)


def test_a_backward_state_refuses_tbptt():
    h = sp.Function("h")
    model = gc.Recurrence({h(t): a * h(t + 1) + x(t)}, loss=(h(t) - y(t)) ** 2)
    with pytest.raises(gc.GraphcompError, match="state 'h' runs backwards in time"):
        gc.Trainer(gc.compile(model, backend="reference"), tbptt=3)


def test_an_input_read_ahead_refuses_tbptt():
    """A chunk would read zeros past its end where the input has values: refused, not wrong."""
    model = gc.Recurrence({s(t): a * s(t - 1) + x(t + 1)}, loss=(s(t) - y(t)) ** 2)
    with pytest.raises(gc.GraphcompError, match=r"tbptt cuts time into segments, but 'x' is read at x\(t\+1\)"):
        gc.Trainer(gc.compile(model, backend="reference"), tbptt=3)


def test_batch_first_data_trains_like_time_major(kernel):
    seqs = simulate(kernel, 6, 10, seed=2)
    arr, lengths = pad(seqs)
    major = {n: v.T.copy() for n, v in arr.items()}          # (N, T)
    one = gc.Trainer(kernel, optim.Adam(0.05), progress=False)
    two = gc.Trainer(kernel, optim.Adam(0.05), progress=False)
    one.fit(START, arr, epochs=3, batch_size=2, lengths=lengths, validation=arr)
    two.fit(START, major, epochs=3, batch_size=2, lengths=lengths, validation=major, batch_first=True)
    for p in START:
        assert two.params[p] == one.params[p]
    assert two.evaluate(major, lengths=lengths, batch_first=True) == one.evaluate(arr, lengths=lengths)
    with pytest.raises(gc.GraphcompError, match=re.escape(
            "lengths must be (10,) integers in 1..6 for data of 10 sequences of 6 steps (time-major (T, N, ...)), "
            f"got {lengths!r}; if the arrays are (N, T, ...), pass batch_first=True")):
        one.fit(START, major, lengths=lengths)


def test_square_batch_major_data_warns(kernel):
    lengths = np.array([4, 2, 3, 1])
    valid = np.arange(4)[:, None] < lengths[None, :]
    rng = np.random.default_rng(0)
    arr = {"x": rng.normal(size=(4, 4)) * valid, "y": rng.normal(size=(4, 4)) * valid}
    trainer = gc.Trainer(kernel, optim.SGD(0.01), progress=False)
    with pytest.warns(UserWarning, match=r"the arrays \['x', 'y'\] look transposed"):
        trainer.fit(START, {n: v.T for n, v in arr.items()}, lengths=lengths)


def test_a_float32_trainer_hands_back_float32_parameters(kernel, tmp_path):
    model = gc.Recurrence({s(t): a * s(t - 1) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
    trainer = gc.Trainer(model, optim.SGD(0.05), dtype="float32", progress=False)
    seqs = [{"x": np.ones(5), "y": np.full(5, 0.5)}]
    trainer.fit({"a": 0.1, "c": 0.1}, seqs, epochs=3)
    assert trainer.kernel.dtype == np.float32
    assert all(np.asarray(v).dtype == np.float32 for v in trainer.params.values())
    trainer.save(tmp_path / "f32.npz")
    loaded = gc.Trainer(model, optim.SGD(0.05), dtype="float32", progress=False).load(tmp_path / "f32.npz")
    assert {p: v.dtype for p, v in loaded.items()} == {"a": np.float32, "c": np.float32}
    assert all(loaded[p] == trainer.params[p] for p in loaded)
    wide = gc.Trainer(model, optim.SGD(0.05), progress=False)
    wide.fit({"a": 0.1, "c": 0.1}, seqs, epochs=3)
    assert all(np.asarray(v).dtype == np.float64 for v in wide.params.values())
    assert all(trainer.params[p] == pytest.approx(wide.params[p], rel=1e-5) for p in ("a", "c"))
