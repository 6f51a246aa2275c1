"""Prediction over measured sequences of different lengths: ``simulate`` (free run after a
teacher-forced warm-up) and ``predict`` (every step forecast n steps ahead). Both take a
list of sequences and return a list of per-sequence arrays, one row per step, as
``forward`` would for each sequence alone; fed inputs and outputs are aligned on the steps
they forecast, as in ``gc.generate``."""
from __future__ import annotations

import numpy as np

from ..check import _fmt
from ..errors import GraphcompError, is_count
from .generate import check_runs_forward, feed_loops, free_run
from ..kernel import Kernel


def simulate(kernel: Kernel, params: dict, sequences: list, *, feed: dict | None = None,
             warmup: int = 0) -> list:
    """Free-run simulation of each sequence ({input: (T_i, ...)}): the first ``warmup``
    steps read the measured fed inputs (teacher forcing), every later step reads its own
    forecasts (``feed`` as in ``gc.generate``); the other inputs drive every step.

    Returns, per sequence, {name: (T_i, ...)}: row j is step j+1. States and outputs are
    their values at that step. Each fed input x and its output o hold the forecast of x at
    that step made from the measurements of the first ``warmup`` steps (NaN for those
    steps, which were measured). Without ``feed`` it is ``forward`` on each sequence: a
    state-space model simulated from its inputs."""
    _check_kernel(kernel, "simulate")
    loops = feed_loops(kernel.program, feed)
    if not (isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0):
        raise GraphcompError(f"warmup must be a number of steps >= 0, got {warmup!r}")
    if warmup and not loops:
        raise GraphcompError("warmup teacher-forces the fed inputs, but there is no feed: "
                             "without feed, simulate is forward on every sequence")
    K = max((l.ahead for l in loops), default=0)
    if warmup < K:
        l = max(loops, key=lambda l: l.ahead)
        raise GraphcompError(f"the first forecast, {l.name}({warmup + 1}) = {l.source}({warmup + 1 - l.ahead}), "
                             f"needs {l.source} at a step that was not run: pass warmup={K} or more "
                             f"(the measured {l.name} of the first steps starts the run)")
    fed = {l.name for l in loops}
    driving = [n for n in kernel.program.inputs_needed(False) if n not in fed]
    arrays, lengths = _pad(kernel, sequences, driving + (sorted(fed) if warmup else []), optional=sorted(fed))
    if warmup and lengths.min() <= warmup:
        b = int(np.argmin(lengths))
        raise GraphcompError(f"sequence {b} has {lengths[b]} steps and warmup={warmup} leaves nothing "
                             "to simulate; give longer sequences or a shorter warmup")
    if not loops:
        out = kernel.forward(params, arrays, lengths)
        return [{n: a[:L, b] for n, a in out.items()} for b, L in enumerate(lengths)]
    B = len(lengths)
    order = np.argsort(-lengths, kind="stable")   # longest first: the running ones are a prefix
    arrays = {n: a[:, order] for n, a in arrays.items()}
    teacher = kernel.forward(params, {n: a[:warmup] for n, a in arrays.items()}) if warmup else {}
    origins = np.full(B, warmup)
    state = _state(kernel, teacher, arrays, np.arange(B), origins)
    past = _past(loops, teacher, np.arange(B), origins, K)
    rows = [int((lengths > t).sum()) for t in range(warmup, int(lengths.max()))]
    drive = lambda i, n: {k: arrays[k][warmup + i, :n] for k in driving}
    record = free_run(kernel, params, state, past, loops, rows, drive)
    results = [None] * B
    for rank, b in enumerate(order):
        L, out = int(lengths[b]), {}
        for name in record[0]:
            free = np.stack([r[name][rank] for r in record[:L - warmup]])
            head = teacher[name][:, rank] if name in teacher and name not in _aligned(loops) else \
                np.full((warmup,) + free.shape[1:], np.nan, free.dtype)
            out[name] = np.concatenate([head, free])
        results[b] = out
    return results


def predict(kernel: Kernel, params: dict, sequences: list, *, feed: dict, horizon: int = 1) -> list:
    """``horizon``-step-ahead prediction of each sequence ({input: (T_i, ...)}, fed inputs
    measured at every step): for every step t, the model runs teacher-forced through step
    t - horizon, then free-running (``feed`` as in ``gc.generate``) up to step t.

    Returns, per sequence, {name: (T_i, ...)}: row j is step t = j+1, as predicted from the
    measurements through step t - horizon. Each fed input x and its output o hold the
    forecast of x(t); states and the other outputs are their values at step t on that run.
    Rows with no such run are NaN: t < horizon + ahead (the first forecast of x needs the
    output ``ahead`` steps before it). ``horizon=1`` is one-step-ahead prediction."""
    _check_kernel(kernel, "predict")
    loops = feed_loops(kernel.program, feed)
    if not loops:
        raise GraphcompError("predict forecasts fed inputs: pass feed={input: output}; "
                             "to run a model from its inputs alone use gc.simulate")
    if not is_count(horizon):
        raise GraphcompError(f"horizon must be a positive number of steps, got {horizon!r}")
    fed = {l.name for l in loops}
    needed = kernel.program.inputs_needed(False)
    arrays, lengths = _pad(kernel, sequences, needed)
    teacher = kernel.forward(params, arrays, lengths)
    K = max(l.ahead for l in loops)
    seq = np.concatenate([np.full(max(L - horizon - K + 1, 0), b) for b, L in enumerate(lengths)]).astype(int)
    origins = np.concatenate([np.arange(K, L - horizon + 1) for L in lengths]).astype(int)
    if not len(seq):
        raise GraphcompError(f"every sequence is shorter than horizon + {K} = {horizon + K} steps, so none has a "
                             f"{horizon}-step-ahead forecast: give longer sequences or a shorter horizon")
    state = _state(kernel, teacher, arrays, seq, origins)
    past = _past(loops, teacher, seq, origins, K)
    drive = lambda i, n: {k: arrays[k][origins + i, seq] for k in needed if k not in fed}
    record = free_run(kernel, params, state, past, loops, [len(seq)] * horizon, drive)
    results = [{} for _ in lengths]
    last = record[-1]
    for b, L in enumerate(lengths):
        mine = seq == b
        for name, value in last.items():
            full = np.full((int(L),) + value.shape[1:], np.nan, value.dtype)
            full[origins[mine] + horizon - 1] = value[mine]
            results[b][name] = full
    return results


def _aligned(loops) -> set:
    return {l.name for l in loops} | {l.source for l in loops}


def _check_kernel(kernel, what: str) -> None:
    if not isinstance(kernel, Kernel):
        raise GraphcompError(f"gc.{what} runs a compiled kernel, got {type(kernel).__name__}: pass gc.compile(model)")
    check_runs_forward(kernel.program, what)


def _pad(kernel: Kernel, sequences, required: list, optional: list = ()) -> tuple[dict, np.ndarray]:
    """A list of sequences {input: (T_i, ...)} as padded time-major arrays (T, B, ...) of the
    ``required`` and ``optional`` inputs (the latter may be left out), and the lengths (B,)."""
    program = kernel.program
    if not isinstance(sequences, (list, tuple)) or not sequences:
        raise GraphcompError("sequences must be a list of dicts {input name: array (T_i, ...)}, one per "
                             "sequence (for padded arrays (T, B, ...) call kernel.forward)")
    names, lengths = None, []
    for i, s in enumerate(sequences):
        if not isinstance(s, dict):
            raise GraphcompError(f"sequence {i} is a {type(s).__name__}; give a dict {{input name: array (T_i, ...)}}")
        unknown = [n for n in s if n not in program.inputs]
        if unknown:
            raise GraphcompError(f"sequence {i} gives {unknown[0]!r}, which is not an input of the model; its "
                                 f"inputs are {program.inputs}")
        missing = [n for n in required if n not in s]
        if missing:
            raise GraphcompError(f"sequence {i} lacks input {missing[0]!r}: every sequence needs {required}")
        if names is None:
            names = set(s)
        elif set(s) != names:
            raise GraphcompError(f"sequence {i} gives {sorted(s)}, sequence 0 gives {sorted(names)}; give the same inputs")
        if not s:
            raise GraphcompError(f"sequence {i} gives no array, so its length is unknown: give its measured inputs")
        T_i = None
        for n, a in s.items():
            a = np.asarray(a)
            want = program.signals[n].array_shape
            if a.ndim != 1 + len(want) or a.shape[1:] != want:
                raise GraphcompError(f"sequence {i}: {n!r} has shape {a.shape}; expected "
                                     f"{_fmt(('T_i', *want))}: one sequence, time along the first axis")
            if T_i is not None and len(a) != T_i:
                raise GraphcompError(f"sequence {i}: {n!r} has {len(a)} steps, the others {T_i}; "
                                     "give every array of a sequence the same length")
            T_i = len(a)
        if T_i < 1:
            raise GraphcompError(f"sequence {i} is empty; every sequence needs a step")
        lengths.append(T_i)
    lengths = np.array(lengths)
    arrays = {}   # the inputs this call reads (a loss's targets are left out)
    for n in [n for n in names if n in required or n in optional]:
        a = np.zeros((lengths.max(), len(sequences)) + program.signals[n].array_shape, kernel.dtype)
        for b, s in enumerate(sequences):
            a[:lengths[b], b] = s[n]
        arrays[n] = a
    return arrays, lengths


def _state(kernel: Kernel, teacher: dict, arrays: dict, seq: np.ndarray, origins: np.ndarray) -> dict:
    """Kernel.step's state after step m of sequence b, for each (b, m): every delayed
    signal's values at steps m-k+1..m, zeros before step 1."""
    state = {}
    for name, info in kernel.program.signals.items():
        k = info.history
        if not k:
            continue
        values = teacher.get(name) if info.role == "state" else arrays.get(name)
        shape = info.array_shape
        if values is None or not len(values):
            values = np.zeros((0, int(seq.max(initial=0)) + 1) + shape, kernel.dtype)
        padded = np.concatenate([np.zeros((k,) + values.shape[1:], kernel.dtype), values])   # step s: row s-1+k
        state[name] = padded[origins[None, :] + np.arange(k)[:, None], seq[None, :]]
    return state


def _past(loops, teacher: dict, seq: np.ndarray, origins: np.ndarray, K: int) -> list:
    """The sources' values at the K steps up to each origin m (m >= K: all after step 0)."""
    return [{l.source: teacher[l.source][origins - j - 1, seq] for l in loops} for j in range(K - 1, -1, -1)]
