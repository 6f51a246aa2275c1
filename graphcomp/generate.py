"""Free-running generation: a compiled model run one step at a time, each step's output fed
back as the next step's input (forecasting), or a one-hot token picked from it (language models)."""
from __future__ import annotations

import numbers

import numpy as np

from .errors import GraphcompError, is_count
from .kernel import Kernel

SAMPLERS = (None, "greedy", "sample")


def generate(kernel: Kernel, params: dict, steps: int, *, feed: dict, prompt: dict | None = None,
             inputs: dict | None = None, initial: dict | None = None, sample: str | None = None,
             temperature: float = 1.0, seed: int = 0, batch: int | None = None) -> dict:
    """Run ``kernel`` for ``steps`` steps free-running: each input named in ``feed`` (input
    name -> output or state name) reads that output's value at the previous step.

    ``sample``: ``None`` feeds the value as is (y(t) becomes x(t+1)); ``"greedy"`` the one-hot
    of its argmax; ``"sample"`` a one-hot drawn from softmax(output / ``temperature``) with
    ``np.random.default_rng(seed)``. ``prompt`` ({input: (P, B, ...)}) runs first, teacher-forced,
    from ``initial``; its last output picks the first generated input (without a prompt that
    input is zero, for ``batch`` sequences). ``inputs`` ({input: (steps, B, ...)}) drives the
    inputs that are not fed. Returns the generated steps' outputs, states and fed inputs, each
    ``(steps, B, ...)`` under its name."""
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
    backward = [s for s in program.states if program.signals[s].direction < 0]
    if backward:
        info = program.signals[backward[0]]
        raise GraphcompError(f"state {backward[0]!r} reads its own future ({backward[0]}(t+{max(info.offsets)})): "
                             "a model that runs backwards in time cannot generate free-running")
    _check_feed(program, feed, sample)
    prompt, P, B = _sequences(prompt, "prompt", None, None)
    inputs, _, B = _sequences(inputs, "inputs", steps, B)
    B = _batch(B, batch)
    missing = [n for n in program.inputs_needed(False) if n not in feed and n not in inputs]
    if missing:
        raise GraphcompError(f"input {missing[0]!r} drives the model but is not fed back: pass "
                             f"inputs={{{missing[0]!r}: array ({steps}, {B}, ...)}} for the generated steps")
    for n in inputs:
        if n in feed:
            raise GraphcompError(f"input {n!r} is fed back from {feed[n]!r}; leave it out of inputs")
    stream = kernel.stream(params, initial)
    last = None
    for i in range(P):   # teacher-forced: warms the state
        last = stream.step({n: a[i] for n, a in prompt.items()})
    rng = np.random.default_rng(seed)
    if last is None:
        fed = {n: np.zeros((B,) + program.signals[n].array_shape, kernel.dtype) for n in feed}
    else:
        fed = {n: _pick(last[o], sample, temperature, rng) for n, o in feed.items()}
    record = []
    for i in range(steps):
        now = {**fed, **{n: a[i] for n, a in inputs.items()}}
        out = stream.step(now)
        record.append({**out, **fed})
        fed = {n: _pick(out[o], sample, temperature, rng) for n, o in feed.items()}
    return {n: np.stack([r[n] for r in record]) for n in record[0]}


def _check_feed(program, feed, sample) -> None:
    """Each fed input exists, names an output or state, and has the shape it will be given."""
    if not isinstance(feed, dict) or not feed:
        raise GraphcompError("feed must be a dict {input name: output name}, at least one, "
                             "e.g. feed={'x': 'o'}")
    produced = {o: (n.shape[:1] if n.shape[1:] == (1,) else n.shape) for o, n in program.outputs.items()}
    produced.update({s: program.signals[s].array_shape for s in program.states})
    for name, source in feed.items():
        if name not in program.inputs:
            raise GraphcompError(f"feed names {name!r}, which is not an input of the model; its inputs "
                                 f"are {program.inputs}")
        if source not in produced:
            raise GraphcompError(f"feed[{name!r}] = {source!r} is not an output or state of the model; "
                                 f"choose one of {sorted(produced)}")
        want, have = program.signals[name].array_shape, produced[source]
        if sample is not None and len(want) != 1:
            raise GraphcompError(f"sample={sample!r} feeds a one-hot vector, but input {name!r} has per-step "
                                 f"shape {want}; sample into a vector input, or use sample=None")
        if want != have:
            size = "size" if sample is not None else "per-step shape"
            raise GraphcompError(f"{source!r} has {size} {have} but input {name!r} has {want}: "
                                 f"the fed output must have the {size} of the input it feeds")


def _sequences(arrays, what: str, T: int | None, B: int | None) -> tuple[dict, int, int | None]:
    """Time-major arrays ``{name: (T, B, ...)}`` as NumPy arrays, with their common T and B."""
    if arrays is None:
        return {}, 0, B
    if not isinstance(arrays, dict) or not arrays:
        raise GraphcompError(f"{what} must be a dict {{input name: array (T, B, ...)}}")
    arrays = {n: np.asarray(a) for n, a in arrays.items()}
    for n, a in arrays.items():
        if a.ndim < 2:
            raise GraphcompError(f"{what}[{n!r}] has shape {a.shape}; give it time-major, (T, B, ...)")
        T = a.shape[0] if T is None else T
        B = a.shape[1] if B is None else B
        if a.shape[:2] != (T, B):
            raise GraphcompError(f"{what}[{n!r}] has {a.shape[0]} steps and batch {a.shape[1]}, expected "
                                 f"{T} steps and batch {B}" + (" (one row per generated step)" if what == "inputs" else ""))
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
