"""Free-running generation: a compiled model run one step at a time, an output fed back as
an input (forecasting), or a one-hot token picked from it (language models).

A feed ``{input: output}`` closes a loop: the input at step t is the output at step
t - ahead. ``ahead`` is what the output forecasts: 1 when the model reads the input at the
same step (o(t) reads x(t), so it forecasts x(t+1): a next-step predictor), 0 when it reads
the input only with a delay (the NARX form ŷ(t) = f(y(t-1), y(t-2)): ŷ(t) estimates y(t)).
Every result is aligned on the steps it forecasts (see ``generate``)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import networkx as nx
import numpy as np

from .. import ir
from ..errors import GraphcompError, is_count
from ..kernel import Kernel

SAMPLERS = (None, "greedy", "sample")


@dataclass(frozen=True)
class Loop:
    """A fed input: ``name`` at step t is ``source`` at step t - ``ahead``."""
    name: str
    source: str
    ahead: int


def generate(kernel: Kernel, params: dict, steps: int, *, feed: dict | None, prompt: dict | None = None,
             inputs: dict | None = None, initial: dict | None = None, sample: str | None = None,
             temperature: float = 1.0, seed: int = 0, batch: int | None = None) -> dict:
    """Run ``kernel`` for ``steps`` steps past a prompt, free-running: each input named in
    ``feed`` ({input: output or state}, or {input: (output, ahead)}) reads that output.

    Alignment: row i of every returned array is step P+i+1 (P = the prompt's length). A fed
    input and its output come back aligned on the step they forecast: ``out[x][i]`` is the
    value fed as x(P+i+1) and ``out[o][i]`` the output it came from, o(P+i+1-ahead), so with
    ``sample=None`` the two are equal and either is the forecast of step P+i+1. States and
    the other outputs are their values at step P+i+1. ``ahead`` defaults to 1 when the model
    reads the input at the same step (o(t) forecasts x(t+1)) and to 0 when it reads it only
    delayed (NARX: ŷ(t) = f(y(t-1), ...) estimates y(t)); a feed that closes no loop the
    model can run is an error.

    ``sample``: ``None`` feeds the value as is; ``"greedy"`` the one-hot of its argmax;
    ``"sample"`` a one-hot drawn from softmax(output / ``temperature``) with
    ``np.random.default_rng(seed)``. ``prompt`` ({input: (P, B, ...)}) runs first,
    teacher-forced, from ``initial`` (Kernel.step's state); a fed value whose source step
    lies before the first step is zero. ``inputs`` ({input: (steps, B, ...)}) drives the
    inputs that are not fed; ``batch`` sequences without prompt or inputs."""
    if not isinstance(kernel, Kernel):
        raise GraphcompError(f"gc.generate runs a compiled kernel, got {type(kernel).__name__}: "
                             "pass gc.compile(model)")
    if not is_count(steps):
        raise GraphcompError(f"steps must be a positive number of steps to generate, got {steps!r}")
    if sample not in SAMPLERS:
        raise GraphcompError(f"unknown sample={sample!r}; choose None (feed the value), 'greedy' or 'sample'")
    if not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise GraphcompError(f"temperature must be a positive number, got {temperature!r}; "
                             "for the most likely token use sample='greedy'")
    program = kernel.program
    check_runs_forward(program, "generate free-running")
    loops = feed_loops(program, feed, sample)
    prompt, P, B = _sequences(program, prompt, "prompt", None, None)
    inputs, _, B = _sequences(program, inputs, "inputs", steps, B)
    B = _batch(B, batch)
    fed = {l.name for l in loops}
    missing = [n for n in program.inputs_needed(False) if n not in fed and n not in inputs]
    if missing:
        raise GraphcompError(f"input {missing[0]!r} drives the model but is not fed back: pass "
                             f"inputs={{{missing[0]!r}: array ({steps}, {B}, ...)}} for the generated steps")
    for n in inputs:
        if n in fed:
            raise GraphcompError(f"input {n!r} is fed back from {feed[n]!r}; leave it out of inputs")
    state, warm = initial, []
    for i in range(P):   # teacher-forced: warms the state
        out, state = kernel.step(params, state, {n: a[i] for n, a in prompt.items()})
        warm.append(out)
    K = max((l.ahead for l in loops), default=0)
    past = [None] * max(K - P, 0) + warm[max(P - K, 0):]
    rng = np.random.default_rng(seed)
    pick = lambda value: _pick(value, sample, temperature, rng)
    drive = lambda i, n: {k: a[i] for k, a in inputs.items()}
    record = free_run(kernel, params, state, past, loops, [B] * steps, drive, pick)
    return {n: np.stack([r[n] for r in record]) for n in record[0]}


def free_run(kernel: Kernel, params: dict, state: dict | None, past: list, loops: list, rows: list,
             drive, pick=lambda value: value) -> list:
    """Step ``kernel`` ``len(rows)`` times from ``state`` (Kernel.step's), ``rows[i]`` leading
    sequences at step i (a non-increasing count). ``past`` holds the step results before the
    first (oldest first; None before step 1); ``drive(i, n)`` the driving inputs at step i.
    Returns per step the states and outputs, each fed input and its source aligned (see
    ``generate``)."""
    history, record = list(past), []
    for i, n in enumerate(rows):
        if state is not None:
            state = {k: a[:, :n] for k, a in state.items()}
        now, raw = dict(drive(i, n)), {}
        for l in loops:
            if l.ahead:   # the source was computed l.ahead steps ago
                before = history[len(history) - l.ahead]
                raw[l.source] = _zeros(kernel, l.name, n) if before is None else before[l.source][:n]
                now[l.name] = pick(raw[l.source]) if before is not None else raw[l.source]
            else:         # fed after this step: the step reads it only with a delay
                now[l.name] = _zeros(kernel, l.name, n)
        out, state = kernel.step(params, state, now)
        for l in loops:
            if not l.ahead:
                raw[l.source] = out[l.source]
                now[l.name] = pick(out[l.source])
                state[l.name][-1] = now[l.name]
        history.append(out)
        record.append({**out, **raw, **{l.name: now[l.name] for l in loops}})
    return record


def _zeros(kernel: Kernel, name: str, n: int) -> np.ndarray:
    return np.zeros((n,) + kernel.program.signals[name].array_shape, kernel.dtype)


def check_runs_forward(program, what: str) -> None:
    """A model that reads its own future cannot run one step at a time."""
    backward = [s for s in program.states if program.signals[s].direction < 0]
    if backward:
        info = program.signals[backward[0]]
        raise GraphcompError(f"state {backward[0]!r} reads its own future ({backward[0]}(t+{max(info.offsets)})): "
                             f"a model that runs backwards in time cannot {what}")


def feed_loops(program, feed: dict | None, sample: str | None = None) -> list:
    """The loops a feed closes, checked: each fed input exists and the output it is fed from
    depends on it, with the shape it will be given, at an ``ahead`` the model can run."""
    if feed is None or feed == {}:
        return []
    if not isinstance(feed, dict):
        raise GraphcompError("feed must be a dict {input name: output name}, e.g. feed={'x': 'o'}")
    produced = {o: ir.user_shape(n.shape) for o, n in program.outputs.items()}
    produced.update({s: program.signals[s].array_shape for s in program.states})
    reads, now = _reads(program)
    loops = []
    for name, spec in feed.items():
        source, ahead = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, None)
        if name not in program.inputs:
            raise GraphcompError(f"feed names {name!r}, which is not an input of the model; its inputs "
                                 f"are {program.inputs}")
        if not isinstance(source, str) or source not in produced:
            raise GraphcompError(f"feed[{name!r}] = {source!r} is not an output or state of the model; "
                                 f"choose one of {sorted(produced)}, or (name, ahead)")
        if name not in reads or not nx.has_path(reads, name, source):
            how = "only in the loss" if name not in reads else "but not to compute it"
            uses = [n for n in program.inputs if n in reads and nx.has_path(reads, n, source)]
            hint = (f"feed an input it is computed from, e.g. feed={{{uses[0]!r}: {source!r}}}" if uses
                    else f"{source!r} reads no input")
            raise GraphcompError(f"feed[{name!r}] = {source!r}, but {source!r} does not depend on {name!r} "
                                 f"(the model reads {name!r} {how}), so feeding it closes no loop: {hint}")
        if ahead is None:
            ahead = 1 if name in now else 0
        elif not (isinstance(ahead, numbers.Integral) and not isinstance(ahead, bool) and ahead >= 0):
            raise GraphcompError(f"feed[{name!r}] = ({source!r}, {ahead!r}): ahead must be an integer >= 0, "
                                 f"the number of steps {source}(t) forecasts {name} ahead")
        elif ahead == 0 and name in now:
            raise GraphcompError(f"feed[{name!r}] = ({source!r}, 0) would set {name}(t) = {source}(t), but the "
                                 f"model reads {name}(t) to compute step t, before {source}(t) exists: "
                                 f"{source}(t) forecasts a later step; use ({source!r}, 1), the default")
        want, have = program.signals[name].array_shape, produced[source]
        if sample is not None and len(want) != 1:
            raise GraphcompError(f"sample={sample!r} feeds a one-hot vector, but input {name!r} has per-step "
                                 f"shape {want}; sample into a vector input, or use sample=None")
        if want != have:
            size = "size" if sample is not None else "per-step shape"
            raise GraphcompError(f"{source!r} has {size} {have} but input {name!r} has {want}: "
                                 f"the fed output must have the {size} of the input it feeds")
        for other in loops:
            if other.source == source and other.ahead != ahead:
                raise GraphcompError(f"{source!r} feeds {other.name!r} {other.ahead} step(s) ahead and {name!r} "
                                     f"{ahead}: its result cannot be aligned on both; feed them from different outputs")
        loops.append(Loop(name, source, ahead))
    return loops


def _reads(program) -> tuple[nx.DiGraph, set]:
    """Which signal the step computes from which (an edge per read, any delay; the loss
    left out), and the inputs it reads at the same step."""
    graph, now = nx.DiGraph(), set()
    for target, node in {**program.updates, **program.outputs}.items():
        graph.add_node(target)
        for leaf in ir.toposort([node]):
            if leaf.op == "read":
                name, offset = leaf.attr
                graph.add_edge(name, target)
                if offset == 0 and name in program.inputs:
                    now.add(name)
    return graph, now


def _sequences(program, arrays, what: str, T: int | None, B: int | None) -> tuple[dict, int, int | None]:
    """Time-major arrays ``{name: (T, B, ...)}`` as NumPy arrays, with their common T and B."""
    if arrays is None:
        return {}, 0, B
    if not isinstance(arrays, dict) or not arrays:
        raise GraphcompError(f"{what} must be a dict {{input name: array (T, B, ...)}}")
    arrays = {n: np.asarray(a) for n, a in arrays.items()}
    for n, a in arrays.items():
        step = program.signals[n].array_shape if n in program.signals else ()
        if a.ndim != 2 + len(step):
            raise GraphcompError(f"{what}[{n!r}] has shape {a.shape}; expected time-major (T, B"
                                 + "".join(f", {k}" for k in step) + ")")
        T = a.shape[0] if T is None else T
        B = a.shape[1] if B is None else B
        if a.shape[:2] != (T, B):
            raise GraphcompError(f"{what}[{n!r}] has {a.shape[0]} steps and batch {a.shape[1]}, expected "
                                 f"{T} steps and batch {B}" + (" (one row per generated step)" if what == "inputs" else "")
                                 + "; arrays are time-major (T, B, ...)")
    return arrays, T, B


def _batch(B: int | None, batch: int | None) -> int:
    if batch is None:
        return 1 if B is None else B
    if not is_count(batch):
        raise GraphcompError(f"batch must be a positive number of sequences, got {batch!r}")
    if B is not None and batch != B:
        raise GraphcompError(f"batch={batch} but the prompt or inputs hold {B} sequences")
    return batch


def _pick(value: np.ndarray, sample: str | None, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """The next fed input from an output ``(B, ...)``: the value, or a one-hot token."""
    if sample is None:
        return value
    if sample == "greedy":
        token = value.argmax(-1)
    else:   # inverse CDF of softmax(value / T): one uniform per sequence
        p = np.exp((value - value.max(-1, keepdims=True)) / temperature)
        cdf = p.cumsum(-1)
        token = (cdf > rng.random((len(value), 1)) * cdf[:, -1:]).argmax(-1)
    onehot = np.zeros_like(value)
    onehot[np.arange(len(value)), token] = 1
    return onehot
