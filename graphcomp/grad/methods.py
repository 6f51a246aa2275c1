"""Gradient algorithms over one kernel: full BPTT, checkpointed BPTT (segments recomputed
in the backward sweep, each seeded with the next segment's initial-state cotangents),
truncated BPTT(k1, k2), RTRL (graphcomp.rtrl), and the cost model that chooses between them.

Every method runs the backend's ``loss_and_grad`` on segments of the batch: a segment is the
batch cut to steps t0+1..t1, each sequence to its own part of them (0 steps once it has
ended), its initial values the states (and delayed inputs) just before t0+1."""
from __future__ import annotations

import math

import numpy as np

from .. import ir
from ..ir.autodiff import adjoint
from ..check import Batch
from ..errors import GraphcompError, is_count

METHODS = ("bptt", "checkpoint", "tbptt", "rtrl", "auto")
OPTIONS = {"bptt": (), "checkpoint": ("every", "memory"), "tbptt": ("k1", "k2"), "rtrl": (), "auto": ("memory",)}


def check_options(step, method: str, options: dict) -> None:
    """A known method, options it takes, and a model it can cut in time."""
    if method == "bptt" and not options:   # the common case
        return
    if method not in METHODS:
        raise GraphcompError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    unknown = [o for o in options if o not in OPTIONS[method]]
    if unknown:
        takes = f"takes {list(OPTIONS[method])}" if OPTIONS[method] else "takes no options"
        raise GraphcompError(f"method={method!r} {takes}, got {unknown}")
    for name in ("every", "k1", "k2", "memory"):
        if name in options and options[name] is not None and not is_count(options[name]):
            unit = "bytes" if name == "memory" else "steps"
            raise GraphcompError(f"{name} must be a positive integer number of {unit}, got {options[name]!r}")
    if method == "tbptt":
        k1, k2 = options.get("k1"), options.get("k2", options.get("k1"))
        if k1 is None:
            raise GraphcompError("method='tbptt' needs k1 (and optionally k2 >= k1): the steps per chunk "
                                 "and how far back each chunk's losses are backpropagated")
        if k2 < k1:
            raise GraphcompError(f"tbptt backpropagates each chunk's k1 steps through the last k2, so k2 must "
                                 f"be at least k1; got k1={k1}, k2={k2}")
    if method in ("checkpoint", "tbptt"):
        check_cuttable(step, f"method={method!r}", "use method='bptt'")
    if method == "rtrl" and (step.grid or step.tree):
        raise GraphcompError(f"method='rtrl' carries sensitivities forward in time, but this model runs over a "
                             f"{'grid' if step.grid else 'tree'}; use method='bptt'")


def check_cuttable(step, what: str, instead: str) -> None:
    """Segments need every read to look back only: no backward state, no input read ahead.
    ``what`` cuts time; ``instead`` says what to do."""
    if step.grid or step.tree:
        raise GraphcompError(f"{what} cuts time into segments, but this model runs over a "
                             f"{'grid' if step.grid else 'tree'}; {instead}")
    for name, info in step.signals.items():
        ahead = info.margins[1]
        if info.role == "state" and info.direction < 0:
            raise GraphcompError(f"{what} cuts time into segments, but state {name!r} runs backwards "
                                 f"in time ({name}(t+{ahead})) and needs the whole sequence; {instead}")
        if ahead > 0:
            raise GraphcompError(f"{what} cuts time into segments, but {name!r} is read at "
                                 f"{name}(t+{ahead}), across a segment's end; {instead}")


# ---------------------------------------------------------------- segments

def segment(step, batch: Batch, t0: int, t1: int, initial: dict) -> Batch:
    """Steps t0+1..t1 of ``batch``; ``initial``: each state's values before t0+1 (k, B, ...)."""
    lengths = np.clip(batch.lengths - t0, 0, t1 - t0)
    init = {}
    for name, info in step.signals.items():
        h = info.history
        if not h:
            continue
        if info.role == "state":
            init[name] = initial[name]
        else:   # a delayed input: its rows t0-h+1..t0, from its initial values and the inputs
            init[name] = np.concatenate([batch.initial[name][t0:], batch.inputs[name][max(t0 - h, 0):t0]])
    inputs = {n: a[t0:t1] for n, a in batch.inputs.items()}
    return Batch(t1 - t0, batch.B, batch.params, inputs, lengths, init, batch.dtype)


def carry(step, impl, batch: Batch, starts: list) -> dict:
    """Run forward once, in segments, keeping the states' initial values at each step t0 of
    ``starts`` (ascending): the checkpoints, one array per state (len(starts), k, B, ...)."""
    states = [s for s in step.states if step.signals[s].history]
    kept = {s: np.empty((len(starts),) + batch.initial[s].shape, batch.initial[s].dtype) for s in states}
    now, t0 = {s: batch.initial[s] for s in states}, 0
    for i, t1 in enumerate(starts):
        if t1 > t0 and states:
            values, _ = impl.forward(segment(step, batch, t0, t1, now))
            now = {s: np.concatenate([now[s], values[s]])[-step.signals[s].history:] for s in states}
        for s in states:
            kept[s][i] = now[s]
        t0 = t1
    return kept


def _row(kept: dict, i: int) -> dict:
    """The states' initial values at the i-th checkpoint."""
    return {s: a[i] for s, a in kept.items()}


def pass_through(step, lengths: np.ndarray, seeds: dict, initial: dict) -> dict:
    """Add to the initial values' cotangents the seeds of a sequence's last values that are
    initial values (a sequence shorter than the state's history, or one already ended)."""
    out = dict(initial)
    for s, seed in seeds.items():
        h = step.signals[s].history
        if lengths.min() >= len(seed):   # every sequence's last values are past its start
            continue
        out[s] = np.array(out[s])
        for j in range(len(seed)):
            row = lengths - j + h - 1            # s(len_b - j) is initial row len_b - j + h - 1
            b = np.flatnonzero((lengths - j <= 0) & (row >= 0))
            out[s][row[b], b] += seed[len(seed) - 1 - j][b]
    return out


def _bptt(step, impl, batch: Batch, seeds: dict) -> tuple:
    """One backend call; the initial cotangents include the seeds that fall on them."""
    loss, grads, init = impl.loss_and_grad(batch, seeds)
    init = {n: init.get(n, np.zeros_like(a)) for n, a in batch.initial.items()}
    return loss, grads, pass_through(step, batch.lengths, seeds, init)


def _add(total: dict, grads: dict, sign: float = 1.0) -> None:
    """total += sign * grads, key by key."""
    for p, g in grads.items():
        total[p] = total[p] + sign * np.asarray(g) if p in total else sign * np.asarray(g, dtype=float)


def checkpoint(step, impl, batch: Batch, seeds: dict, starts: list, head=None) -> tuple:
    """Checkpointed BPTT: states kept at each step of ``starts`` in a forward pass, then the
    segments from the last to the first, each recomputed and seeded with the cotangents of
    the next one's initial states (or, for a sequence that ends in it, ``seeds``). ``head``:
    the backend for the first segment, if not ``impl``."""
    kept = carry(step, impl, batch, starts)
    names = [s for s in step.states if step.signals[s].history or s in seeds]
    loss, grads, carried, ends = 0.0, {}, {}, [*starts[1:], batch.T]
    for i in reversed(range(len(starts))):
        t0, t1 = starts[i], ends[i]
        mine = {}
        for s in names:
            info = step.signals[s]
            zeros = np.zeros((max(info.history, 1), batch.B) + info.shape)
            going_on = (batch.lengths > t1).reshape((1, -1) + (1,) * len(info.shape))
            mine[s] = np.where(going_on, carried.get(s, zeros), seeds.get(s, zeros))
        backend = head if head is not None and t0 == 0 else impl
        part_loss, part_grads, carried = _bptt(step, backend, segment(step, batch, t0, t1, _row(kept, i)), mine)
        loss += part_loss
        _add(grads, part_grads)
    return loss, grads, carried


def tbptt(step, impl, batch: Batch, k1: int, k2: int) -> tuple:
    """Truncated BPTT(k1, k2), parameters fixed: for each chunk of k1 steps ending at e, the
    gradient of its losses through the window e-k2+1..e, the state entering it a constant.
    The window's gradient minus that of its first e-k1 steps leaves the chunk's losses'."""
    ends = list(range(k1, batch.T, k1)) + [batch.T]
    windows = [(max(0, e - k2), e) for e in ends]
    starts = sorted({w for w, _ in windows})
    kept, at = carry(step, impl, batch, starts), {w: i for i, w in enumerate(starts)}
    loss, grads = 0.0, {}
    for (w, e), start in zip(windows, [0] + ends[:-1]):
        initial = _row(kept, at[w])
        whole, whole_grads = impl.loss_and_grad(segment(step, batch, w, e, initial))
        loss += whole
        _add(grads, whole_grads)
        if start > w:   # the losses of the window's first part belong to earlier chunks
            first, first_grads = impl.loss_and_grad(segment(step, batch, w, start, initial))
            loss -= first
            _add(grads, first_grads, -1.0)
    return loss, grads


# ---------------------------------------------------------------- the cost model

def step_flops(step) -> tuple[int, int, int, int]:
    """One step for one example, from the IR's shapes: flops (forward, backward, parameter-only)
    and the floats of its batched values. A product of (m, k) by (k, n) costs 2mkn flops,
    every other node one per entry."""
    def flops(roots) -> tuple[int, int, int]:
        batched = fixed = values = 0
        for n in ir.toposort(roots):
            if n.op in ("read", "param", "const", "var"):
                continue
            cost = (2 * n.args[0].shape[0] * n.args[0].shape[1] * n.shape[1]) if n.op == "matmul" \
                else max(1, math.prod(n.shape))
            if n.batched:
                batched, values = batched + cost, values + max(1, math.prod(n.shape))
            else:
                fixed += cost
        return batched, fixed, values
    forward, fixed, values = flops(step.roots())
    adj = adjoint(step)
    backward, fixed_b, _ = flops([n for who in adj.reads for n in (*adj.reads[who].values(), *adj.params[who].values())])
    return forward, backward, fixed + fixed_b, values


def _state_floats(step) -> int:
    """Floats per example that carry the state across a step boundary."""
    return sum(info.history * max(1, math.prod(info.shape)) for info in step.signals.values()
               if info.role == "state")


def _timeline_floats(step, T: int) -> int:
    """Floats per example of the signals' timelines a call allocates (inputs with margins only)."""
    total = 0
    for info in step.signals.values():
        before, after = info.margins
        if info.role == "state" or before + after:
            total += (T + before + after) * max(1, math.prod(info.shape))
    return total


def cost(kernel, method: str, T: int, B: int, **options) -> dict:
    """Estimated flops and peak bytes (of the arrays the method allocates) of one gradient
    of T steps and B sequences: {"method", "flops", "bytes", and the options used}."""
    step = kernel.program
    check_options(step, method, options)
    for what, v in (("T", T), ("B", B)):
        if not is_count(v):
            raise GraphcompError(f"cost needs a positive integer {what}, got {v!r}")
    if method == "auto":
        return choose(kernel, T, B, options.get("memory"))
    item = kernel.dtype.itemsize
    if kernel._flops is None:
        kernel._flops = step_flops(step)
    fwd, bwd, fixed, values = kernel._flops
    bptt_bytes = _bptt_bytes(kernel, B)

    if method == "bptt":
        return {"method": "bptt", "flops": T * B * (fwd + bwd) + fixed, "bytes": bptt_bytes(T)}
    if method == "checkpoint":
        every = options.get("every") or _every(T, B, step, bptt_bytes, options.get("memory"), item)
        keep = math.ceil(T / every) * B * _state_floats(step) * item
        return {"method": "checkpoint", "every": every, "flops": T * B * (2 * fwd + bwd) + math.ceil(T / every) * fixed,
                "bytes": keep + bptt_bytes(min(every, T))}
    if method == "tbptt":
        k1 = options["k1"]
        k2 = options.get("k2") or k1
        windows = math.ceil(T / k1)
        steps = windows * (min(k2, T) + min(k2 - k1, T))   # each window, and its first part when k2 > k1
        return {"method": "tbptt", "k1": k1, "k2": k2, "flops": B * (T * fwd + steps * (fwd + bwd)) + 2 * windows * fixed,
                "bytes": windows * B * _state_floats(step) * item + bptt_bytes(min(k2, T))}
    params = sum(max(1, math.prod(s)) for s in step.params.values())
    # the sensitivities of the states' last values, and the step's values along P + 1 directions
    return {"method": "rtrl", "flops": T * B * fwd * (params + 1),
            "bytes": B * (params + 1) * (_state_floats(step) + values) * item}


def _bptt_bytes(kernel, B: int):
    """Bytes a backend call of ``steps`` steps allocates: the signals' timelines and the tapes
    and cotangents (the Numba kernel's exact workspace; for the NumPy backends, cotangents)."""
    step, item = kernel.program, kernel.dtype.itemsize
    if hasattr(kernel.impl, "workspace"):
        tape = lambda steps: kernel.impl.workspace("loss_and_grad", steps, B)
    else:
        tape = lambda steps: B * _timeline_floats(step, steps)
    return lambda steps: (tape(steps) + B * _timeline_floats(step, steps)) * item


def _every(T: int, B: int, step, bptt_bytes, memory: int | None, item: int) -> int:
    """The segment length: ≈ sqrt(T), or with a budget the longest that fits it."""
    if memory is None:
        return max(1, math.isqrt(T))
    keep = B * _state_floats(step) * item
    fits = [k for k in _candidates(T) if math.ceil(T / k) * keep + bptt_bytes(k) <= memory]
    if not fits:
        least = min(_candidates(T), key=lambda k: math.ceil(T / k) * keep + bptt_bytes(k))
        need = math.ceil(T / least) * keep + bptt_bytes(least)
        raise GraphcompError(f"method='checkpoint' needs at least {need:,} bytes for T={T}, B={B} (segments of "
                             f"{least} steps); memory={memory:,} is too small: raise it or shorten the sequences")
    return max(fits)


def _candidates(T: int) -> list:
    """Segment lengths to try: T, then geometrically down to 1."""
    out, k = [], T
    while k >= 1:
        out.append(k)
        k = min(k - 1, int(k / 1.25))
    return out


def choose(kernel, T: int, B: int, memory: int | None) -> dict:
    """The cheapest method in flops whose peak bytes fit ``memory`` (no budget: bptt)."""
    if memory is None:
        return cost(kernel, "bptt", T, B)
    options = []
    for method in ("bptt", "checkpoint", "rtrl"):
        try:
            c = cost(kernel, method, T, B, memory=memory) if method == "checkpoint" else cost(kernel, method, T, B)
        except GraphcompError:   # checkpoint does not fit, or the model cannot be cut in time
            continue
        if c["bytes"] <= memory:
            options.append(c)
    if not options:
        sizes = ", ".join(f"{m} {cost(kernel, m, T, B)['bytes']:,}" for m in ("bptt", "rtrl"))
        raise GraphcompError(f"no gradient method fits memory={memory:,} bytes for T={T}, B={B} (peak bytes: {sizes}, "
                             "checkpoint more than the budget at any segment length); raise memory, or shorten "
                             "the sequences or the batch")
    return min(options, key=lambda c: c["flops"])


# ---------------------------------------------------------------- dispatch

def run(kernel, batch: Batch, method: str, seeds: dict | None, options: dict) -> tuple:
    """(loss, grads, initial cotangents or None) by ``method`` on a validated batch."""
    step, impl = kernel.program, kernel.impl
    if "seeds" not in impl.capabilities and (method != "bptt" or seeds is not None):
        raise GraphcompError("the 'unfolded' backend (the oracle) runs method='bptt' without final_cotangents or "
                             "with_initial; use backend='reference' or 'numba'")
    if method == "auto":
        plan = choose(kernel, batch.T, batch.B, options.get("memory"))
        method, options = plan["method"], {k: v for k, v in plan.items() if k == "every"}
    if method == "tbptt":
        if seeds is not None:
            raise GraphcompError("method='tbptt' gives the truncated gradient of the loss alone; final_cotangents "
                                 "and with_initial need an exact method ('bptt' or 'checkpoint')")
        k1 = options["k1"]
        return (*tbptt(step, impl, batch, k1, options.get("k2") or k1), None)
    starts = [0]
    if method == "checkpoint":
        every = options.get("every") or _every(batch.T, batch.B, step, _bptt_bytes(kernel, batch.B),
                                                options.get("memory"), kernel.dtype.itemsize)
        starts = list(range(0, batch.T, every))
    elif seeds is None:
        return (*impl.loss_and_grad(batch), None)
    head = None
    delayed = max((i.history for i in step.signals.values() if i.role == "input"), default=0)
    if seeds is not None and delayed and "delayed_input_cotangents" not in impl.capabilities:
        # the compiled kernels treat inputs as data: the first steps, which read the delayed
        # inputs' initial values, run on the reference backend to give their cotangents
        from ..backends.reference import LoopBackend
        head = LoopBackend(step)
        starts = [0, *(t for t in {*starts, delayed} if delayed <= t < batch.T)]
    if len(starts) == 1 and head is None:
        return _bptt(step, impl, batch, seeds)
    return checkpoint(step, impl, batch, seeds or {}, sorted(starts), head)
