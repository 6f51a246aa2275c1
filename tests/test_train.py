"""The trainer: minibatches of variable-length sequences equal per-sequence gradients,
truncated BPTT equals full BPTT where it must, freezing, early stopping, divergence caught
wherever a value overflows, checkpoints refused whenever they are damaged, fits resumed after
a SIGKILL ending as if never stopped, progress, batch-first data, float32 parameters, and
fitting a system's parameters."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import optim
from graphcomp.train import checkpoint, trainer as trainer_module

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
    with pytest.raises(gc.GraphcompError, match="is not a graphcomp checkpoint: it is not an .npz archive"):
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


# ---------------------------------------------------------------- damaged checkpoints

@pytest.fixture
def saved(kernel, tmp_path):
    trainer = gc.Trainer(kernel, optim.Adam(0.02), progress=False)
    trainer.fit(START, simulate(kernel, 3, 6, seed=11), epochs=2, batch_size=2)
    return trainer, trainer.save(tmp_path / "run.npz")


def refusal(trainer, path) -> str:
    with pytest.raises(gc.GraphcompError) as e:
        trainer.load(path)
    assert str(e.value).startswith(str(path))
    return str(e.value)[len(str(path)):]


def places(data: bytes) -> list:
    """Where to cut or change a file: its first and last 200 bytes (the archive's first
    header; its directory, last record and checksum), and 200 places between."""
    n = len(data)
    return sorted(set(range(min(n, 200))) | set(range(max(n - 200, 0), n)) |
                  set(np.random.default_rng(1).integers(0, n, 200).tolist()))


def test_a_checkpoint_cut_short_anywhere_is_refused(saved, tmp_path):
    trainer, path = saved
    data, bad = path.read_bytes(), tmp_path / "bad.npz"
    for n in places(data):
        bad.write_bytes(data[:n])
        why = refusal(trainer, bad)
        if n == 0:
            assert why == " is empty (0 bytes): it holds no checkpoint; use another one or start over"
        elif n < 4:
            assert why == " is not a graphcomp checkpoint: it is not an .npz archive"
        else:
            assert why.startswith(f" is cut short or damaged: its {n} bytes do not end with the checksum"), n


def test_a_checkpoint_with_any_one_bit_changed_is_refused(saved, tmp_path):
    trainer, path = saved
    data, bad = path.read_bytes(), tmp_path / "bad.npz"
    damaged = " is damaged: its contents do not match the checksum saved with them (a byte changed on disk or in " \
              "a copy); use another checkpoint or start over"
    seen = []
    for i in places(data):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        bad.write_bytes(bytes(flipped))
        why = refusal(trainer, bad)
        seen.append(why == damaged)
        assert why == damaged or why.startswith(" is cut short or damaged"), i   # the archive's last record
    assert sum(seen) >= len(seen) - 6   # all but the 4 + 2 bytes that frame the checksum


def test_files_that_are_not_checkpoints_say_what_they_are(saved, tmp_path):
    trainer, path = saved
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
    assert refusal(trainer, noise) == " is not a graphcomp checkpoint: it is not an .npz archive"
    plain = tmp_path / "plain.npz"
    np.savez(plain, **{f"param/{p}": v for p, v in trainer.params.items()})
    assert refusal(trainer, plain).startswith(" has no checksum: it is an .npz archive, but not a checkpoint written "
                                              "by Trainer.save of this graphcomp (format 2)")
    with pytest.raises(gc.GraphcompError, match="there is no checkpoint at .*none.npz"):
        trainer.load(tmp_path / "none.npz")
    with pytest.raises(gc.GraphcompError, match="is a folder, not a checkpoint file"):
        trainer.load(tmp_path)


def rewritten(path, tmp_path, meta=None, drop=()):
    """The checkpoint at ``path`` written again, whole and checksummed, with ``meta`` changed
    and the fields ``drop`` (of meta or arrays) left out: what a buggy or a newer writer
    could leave."""
    old, arrays = checkpoint.read(path)
    old = {k: v for k, v in {**old, **(meta or {})}.items() if k not in drop and k not in ("kind", "version")}
    if meta and "version" in meta:
        old["version"] = meta["version"]
    return checkpoint.write(tmp_path / "edited.npz", old, {k: v for k, v in arrays.items() if k not in drop})


def test_checkpoints_missing_fields_or_of_a_newer_format_are_refused(saved, tmp_path):
    trainer, path = saved
    meta, _ = checkpoint.read(path)
    assert meta["version"] == checkpoint.VERSION == 2 and meta["kind"] == "graphcomp checkpoint"
    newer = rewritten(path, tmp_path, {"version": 3})
    assert refusal(trainer, newer) == (" was written by a newer graphcomp (checkpoint format 3; this one reads "
                                       "format 2): upgrade graphcomp to load it")
    lacks = " lacks {}: it was not written whole by Trainer.save; use another checkpoint or start over"
    assert refusal(trainer, rewritten(path, tmp_path, drop=["steps"])) == lacks.format("'steps'")
    assert refusal(trainer, rewritten(path, tmp_path, drop=["param/b"])) == lacks.format("'param/b'")
    assert refusal(trainer, rewritten(path, tmp_path, drop=["slot/c/v"])) == lacks.format("'slot/c/v'")
    assert refusal(trainer, rewritten(path, tmp_path, {"steps": -1})).startswith(" holds steps=-1")
    with pytest.raises(gc.GraphcompError, match="saved from a different model"):
        trainer.load(rewritten(path, tmp_path, {"model": "0123456789abcdef"}))
    with pytest.raises(gc.GraphcompError, match="holds the state of SGD, this trainer uses Adam"):
        trainer.load(rewritten(path, tmp_path, {"optimizer": {"name": "SGD", "weight_decay": 0.0}}))
    assert trainer.load(rewritten(path, tmp_path)) == trainer.params   # rewritten whole: taken


def test_save_syncs_the_file_renames_it_then_syncs_the_folder(saved, tmp_path, monkeypatch):
    """Watched, not replaced: the real calls run, in this order."""
    trainer, path = saved
    calls, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(a), str(b))), replace(a, b))[1])
    trainer.save(path)
    tmp = str(tmp_path / f".run.npz.{os.getpid()}.tmp")
    assert calls == [("fsync", tmp), ("replace", tmp, str(path)), ("fsync", str(tmp_path))]
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_a_save_that_fails_leaves_the_old_checkpoint_and_no_temporary(saved, tmp_path):
    trainer, path = saved
    before = path.read_bytes()
    (tmp_path / "sub").mkdir()
    with pytest.raises(gc.GraphcompError, match=r"could not write the checkpoint .*sub \(Is a directory\): check that"):
        trainer.save(tmp_path / "sub")   # the rename fails: a folder has the name
    with pytest.raises(gc.GraphcompError, match=r"could not write the checkpoint .*run.npz \(No such file"):
        trainer.save(tmp_path / "missing" / "run.npz")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "sub"]


# ---------------------------------------------------------------- resumed fits

def resumable(compiled: bool, **options):
    """The fit the tests interrupt: the module's model, a cosine schedule, clipping, a
    validation set and early stopping, many minibatches."""
    model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 2)) + c * x(t) + d * x(t - 1)},
                          loss=(s(t) - y(t)) ** 2)
    kernel = gc.compile(model)
    seqs = simulate(kernel, 64, 14, seed=12, noise=0.3)
    trainer = gc.Trainer(kernel, optim.Adam(optim.cosine(0.02, 600, 0.001)), clip_norm=2.0, progress=False,
                         compiled=compiled, **options)
    return trainer, dict(params=START, data=seqs[:60], validation=seqs[60:], epochs=40, batch_size=4, patience=10,
                         seed=5)


def same_fit(one, h1, two, h2):
    assert h1.loss == h2.loss and h1.val_loss == h2.val_loss and h1.stopped == h2.stopped
    assert one.steps == two.steps
    for p in START:
        assert one.params[p] == two.params[p]
        assert all(np.array_equal(one.state[p][k], two.state[p][k]) for k in one.state[p])


@pytest.mark.parametrize("compiled", [False, True])
def test_checkpoints_every_few_updates_change_nothing(compiled, tmp_path):
    one, fit = resumable(compiled)
    h1 = one.fit(**fit)
    two, _ = resumable(compiled)
    h2 = two.fit(**fit, checkpoint=tmp_path / "run.npz", every=3)
    same_fit(one, h1, two, h2)
    assert h1.stopped and len(h1.loss) < fit["epochs"]   # early stopping had its say
    three, _ = resumable(compiled)   # resuming a finished fit: nothing more to do
    same_fit(one, h1, three, three.fit(**fit, checkpoint=tmp_path / "run.npz", resume=True))


@pytest.mark.parametrize("every, tbptt", [(None, None), (7, None), (7, (2, 4))])
def test_a_fit_stopped_by_an_exception_resumes_as_if_never_stopped(tmp_path, every, tbptt):
    """Stopped at epoch 2's end: resumed from that epoch's end (checkpoints after every
    epoch), or from its last checkpoint within it (every 7 updates; under tbptt, at the end
    of the minibatch the 7th update falls in)."""
    one, fit = resumable(False, tbptt=tbptt)
    fit["epochs"] = 3
    h1 = one.fit(**fit)

    def stop(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt
    two, _ = resumable(False, tbptt=tbptt, callback=stop)
    with pytest.raises(KeyboardInterrupt):
        two.fit(**fit, checkpoint=tmp_path / "run.npz", every=every)
    meta, _ = checkpoint.read(tmp_path / "run.npz")
    assert meta["fit"]["epoch"] == 1 and (meta["fit"]["batch"] > 0) == (every is not None) and meta["steps"] > 0
    three, _ = resumable(False, tbptt=tbptt)
    h3 = three.fit(**fit, checkpoint=tmp_path / "run.npz", every=every, resume=True)
    same_fit(one, h1, three, h3)


def test_resuming_checks_it_is_the_same_fit(tmp_path):
    trainer, fit = resumable(False)
    path = tmp_path / "run.npz"
    trainer.fit(**{**fit, "epochs": 2}, checkpoint=path)
    again, _ = resumable(False)
    more = again.fit(**{**fit, "epochs": 3}, checkpoint=path, resume=True)   # more epochs: the same fit, longer
    longer, _ = resumable(False)
    same_fit(again, more, longer, longer.fit(**{**fit, "epochs": 3}))
    for change, what in (({"seed": 6}, "seed=5, this one seed=6"), ({"batch_size": 5}, "batch_size=4, this one "
                         "batch_size=5"), ({"data": fit["data"][1:]}, "other data"),
                         ({"params": {**START, "a": 0.2}}, "other starting parameters")):
        with pytest.raises(gc.GraphcompError, match=re.escape(f"holds another fit ({what}): resume it with the "
                                                              "arguments it was started with, or pass resume=False")):
            resumable(False)[0].fit(**{**fit, **change}, checkpoint=path, resume=True)
    trainer.save(path)
    with pytest.raises(gc.GraphcompError, match=r"holds parameters but no fit to resume .* trainer.load\(path\)"):
        resumable(False)[0].fit(**fit, checkpoint=path, resume=True)
    for options, message in (({"every": 3}, "every and resume are about checkpoints"),
                             ({"checkpoint": path, "every": 0}, "every must be a positive number of updates, got 0"),
                             ({"checkpoint": tmp_path / "no" / "run.npz"}, "there is no folder .*no to write it in")):
        with pytest.raises(gc.GraphcompError, match=message):
            resumable(False)[0].fit(**fit, **options)


CHILD = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_train import resumable
trainer, fit = resumable({compiled})
history = trainer.fit(**fit, checkpoint={path!r}, every=3, resume=True)
np.savez({out!r}, loss=history.loss, val=history.val_loss, steps=trainer.steps, **trainer.params)
"""


@pytest.mark.parametrize("compiled", [False, True])
def test_a_fit_killed_at_any_moment_resumes_to_the_same_parameters(compiled, tmp_path):
    """SIGKILL at random moments (during updates, compiled epochs, saves: a few random saves
    into each run, then up to 20 ms more), each run resumed from its checkpoint: the end is
    the uninterrupted fit's, to the last bit."""
    one, fit = resumable(compiled)
    h1 = one.fit(**fit)
    assert h1.stopped and one.steps > 300
    path, out = tmp_path / "run.npz", tmp_path / "out.npz"
    script = CHILD.format(tests=str(Path(__file__).parent), compiled=compiled, path=str(path), out=str(out))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    rng, steps = np.random.default_rng(0), []
    for saves, delay in zip(rng.integers(1, 12, 2), rng.uniform(0.0, 0.02, 2)):
        child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        seen = path.stat().st_ino if path.exists() else None
        while child.poll() is None and saves:
            if path.exists() and path.stat().st_ino != seen:   # each save renames a new file into place
                seen, saves = path.stat().st_ino, saves - 1
            time.sleep(0.0005)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL, child.stderr.read().decode()
        steps.append(json.loads(str(np.load(path)["meta"]))["steps"])
    assert 0 < steps[0] < steps[1] < one.steps   # each run got further, none to the end
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with np.load(out) as result:
        assert list(result["loss"]) == h1.loss and list(result["val"]) == h1.val_loss
        assert int(result["steps"]) == one.steps
        for p in START:
            assert result[p] == one.params[p]


# ---------------------------------------------------------------- divergence, wherever a value overflows

Z = sp.Function("z")


@pytest.fixture(scope="module")
def wild():
    """s(t) = a s(t-1) + c x(t), read as d s(t) against y(t), plus b z(t): with z large, b's
    gradient (or its square) overflows while everything else is finite."""
    model = gc.Recurrence({s(t): a * s(t - 1) + c * x(t)}, loss=(d * s(t) - y(t)) ** 2 + b * Z(t))
    return gc.compile(model)


def wild_data(xs=1.0, zs=0.0):
    rng = np.random.default_rng(0)
    return {"x": xs * rng.normal(size=(40, 8)), "y": np.ones((40, 8)), "z": np.full((40, 8), zs)}


def jump(lr):   # a schedule: two careful updates, then a reckless one
    return lambda step: 1e-3 if step < 2 else lr


WILD = {"a": 0.5, "b": 0.0, "c": 0.5, "d": 0.5}
OVERFLOWS = {   # what overflows: the optimizer, the trainer's options, the data, and what graphcomp says
    "a state": (optim.SGD(jump(1e10)), {}, wild_data(), 2,
                r"after 3 updates: state 's' became -?inf at t=\d+ in sequence \d+"),
    "the loss": (optim.SGD(jump(1e305)), {}, wild_data(xs=0.0, zs=10.0), 2,
                 r"after 3 updates: the loss is not finite \(-inf\) although every state is"),
    "a parameter": (optim.SGD(jump(1e308)), {}, wild_data(zs=10.0), 2,
                    r"after 2 updates: the next update made parameter 'a' -?inf although its loss and gradient"),
    "the optimizer's state": (optim.Adam(1e-3), {}, wild_data(zs=1e160), 0,
                              r"after 0 updates: the next update made the optimizer's 'v' of parameter 'b' inf"),
    "the gradient's norm": (optim.SGD(1e-3), {"clip_norm": 1.0}, wild_data(zs=1e160), 0,
                            r"^the gradient's norm overflows \(its entries are too large to square\)"),
    "a gradient": (optim.SGD(1e-3), {}, wild_data(zs=1e308), 0,
                   r"^the gradient of 'b' is not finite \(inf/nan\) although every state is"),
}


@pytest.mark.parametrize("where", OVERFLOWS)
def test_an_overflow_anywhere_stops_training_with_the_last_finite_parameters(wild, where):
    """In the Python loop and in the compiled epoch alike: the same error, and the parameters,
    optimizer state and step count from before the update that led to the overflow."""
    optimizer, options, data, good, message = OVERFLOWS[where]
    careful = {p: np.array(v) for p, v in WILD.items()}   # the updates before, made by hand
    for index in trainer_module._minibatches(np.full(8, 40), 1, np.random.default_rng(0))[:good]:
        _, grads = wild.loss_and_grad(careful, {n: v[:, index] for n, v in data.items()})
        careful = {p: careful[p] - 1e-3 * grads[p] for p in careful}
    errors = []
    for compiled in (False, True):
        trainer = gc.Trainer(wild, optimizer, progress=False, compiled=compiled, **options)
        with pytest.raises(gc.GraphcompError, match=message) as e:
            trainer.fit(WILD, data, epochs=2, batch_size=1)
        errors.append(str(e.value))
        if good:
            assert str(e.value).startswith("training diverged in epoch 1") and "lower the learning rate" in str(e.value)
        assert trainer.steps == good
        for p in WILD:
            assert trainer.params[p] == pytest.approx(careful[p], rel=1e-12, abs=0)
        assert all(np.isfinite(v).all() for slots in trainer.state.values() for v in slots.values())
    assert errors[0] == errors[1]


def test_a_validation_loss_that_overflows_stops_training(wild):
    trainer = gc.Trainer(wild, optim.SGD(1e-3), progress=False)
    with pytest.raises(gc.GraphcompError, match=r"training diverged in epoch 1 on the validation data: the gradient of "
                                                r"'b' is not finite .* trainer.params holds the parameters after that "
                                                r"epoch; lower the learning rate"):
        trainer.fit(WILD, wild_data(zs=1.0), epochs=2, batch_size=4, validation=wild_data(zs=1e308))
    assert trainer.steps == 2 and all(np.isfinite(v) for v in trainer.params.values())
