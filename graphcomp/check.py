"""Call-time checks: every array a kernel is given is validated here, in the user's names,
before any backend sees it, and converted to the layout the backends use."""
from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import ir
from .errors import GraphcompError
from .lang.step import SignalInfo, Step


@dataclass
class Batch:
    """Validated arrays in IR layout: parameters ``(m, n)``, ``(n, 1)`` or ``()``; inputs
    ``(T, B, *shape)``, zero past each sequence's length; ``initial`` rows ordered by time."""

    T: int | tuple      # steps, or over a grid the extent of each axis
    B: int
    params: dict
    inputs: dict
    lengths: np.ndarray  # (B,), or over a grid (B, axes): each example's extent
    initial: dict       # name -> (k, B, *shape) for every signal read beyond its boundary
    dtype: np.dtype
    children: np.ndarray | None = None   # over trees (N, B, K): node v's k-th child, 0 for none

    @property
    def valid(self) -> np.ndarray:
        """(T, B) booleans: step t of sequence b exists; over a grid (I, J, ..., B)."""
        if isinstance(self.T, tuple):
            ok = np.ones(self.T + (self.B,), bool)
            for k, n in enumerate(self.T):
                shape = [1] * len(self.T) + [self.B]
                shape[k] = n
                ok &= (np.arange(1, n + 1)[:, None] <= self.lengths[None, :, k]).reshape(shape)
            return ok
        return np.arange(1, self.T + 1)[:, None] <= self.lengths[None, :]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _unknown(kind: str, name, known) -> GraphcompError:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return GraphcompError(f"unknown {kind} {name!r}: the model's {kind}s are {sorted(known)}{hint}")


def _array(value, what: str, dtype) -> np.ndarray:
    if type(value) is np.ndarray and value.dtype == dtype:   # the common case, checked fast
        return value
    try:
        a = np.asarray(value)
    except Exception as e:
        raise GraphcompError(f"{what} is not an array: {e}") from None
    if a.dtype.kind == "c":
        raise GraphcompError(f"{what} is complex; graphcomp works with real numbers")
    if a.dtype.kind not in "biuf":
        raise GraphcompError(f"{what} has dtype {a.dtype}; give real numbers")
    return a.astype(dtype, copy=False)


def _plain(a: np.ndarray) -> np.ndarray:
    """``a`` as the back ends take it: C-ordered and writable. A Fortran-ordered, strided,
    broadcast or read-only array is copied, so that compiled code sees one array type (and
    compiles once) whatever the caller's layout."""
    return a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")


def sums_finite(values) -> bool:
    """The cheap first test that ``values`` (arrays or numbers) hold no NaN or infinity: their
    sum is finite (a sum of finite values is finite unless it overflows). False: search them."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for v in values:
            total += float(np.add.reduce(v, None)) if isinstance(v, np.ndarray) else float(v)
    return math.isfinite(total)


def _finite(arrays: dict) -> None:
    """NaN or infinity in any of ``arrays`` (what -> array) is an error naming the array and
    its first index; the arrays are searched only when their sum is not finite."""
    if sums_finite(arrays.values()):
        return
    for what, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise GraphcompError(f"{what} contains {a[where]} at index {where}; give finite values")


def _names(given, kind: str, required: list, allowed: list, step: Step) -> Mapping:
    if not isinstance(given, Mapping):
        raise GraphcompError(f"{kind}s must be a dict name -> array, got {type(given).__name__}")
    if len(given) == len(required) and all(n in given for n in required):   # the common case
        return given
    for name in given:
        if name not in allowed:
            if kind == "input" and name in step.states:
                raise GraphcompError(f"{name!r} is a state (computed by the model), not an input; "
                                     f"to set its value before the first step pass initial={{{name!r}: ...}}")
            if kind == "input" and name in step.outputs:
                raise GraphcompError(f"{name!r} is an output of the model, not an input")
            raise _unknown(kind, name, allowed)
    missing = [n for n in required if n not in given]
    if missing:
        raise GraphcompError(f"missing {kind}{'s' if len(missing) > 1 else ''} {missing}: the model reads "
                             f"{', '.join(repr(n) for n in required)}")
    return given


def prepare(step: Step, params, inputs, lengths=None, initial=None, *, with_loss: bool,
            dtype=np.float64, steps: int | None = None, needed: list | None = None, children=None) -> Batch:
    """Validate and convert one call's arrays (see the module docstring)."""
    dtype = np.dtype(dtype)
    if step.tree or children is not None:
        return _prepare_tree(step, params, inputs, lengths, initial, with_loss, dtype, needed, children)
    out_params = _params(step, params, dtype)
    if step.grid:
        return _prepare_grid(step, out_params, inputs, lengths, initial, with_loss, dtype, needed)
    inputs = {} if inputs is None else inputs
    needed = step.inputs_needed(with_loss) if needed is None else needed
    _names(inputs, "input", needed, step.inputs, step)
    T = B = None
    for name in inputs:
        try:
            a = np.asarray(inputs[name]) if not isinstance(inputs[name], np.ndarray) else inputs[name]
        except Exception as e:
            raise GraphcompError(f"input {name!r} is not an array: {e}") from None
        info = step.signals[name]
        if a.ndim != 2 + len(info.array_shape):
            raise GraphcompError(f"input {name!r} has shape {_fmt(a.shape)}; expected time-major (T, B"
                                 + "".join(f", {n}" for n in info.array_shape) + f"){BATCH_FIRST}")
        if T is None:
            T, B, first = a.shape[0], a.shape[1], name
        elif a.shape[:2] != (T, B):
            raise GraphcompError(f"input {name!r} has {a.shape[0]} steps and batch {a.shape[1]} but "
                                 f"{first!r} has {T} steps and batch {B}; all inputs share their first two "
                                 f"axes, time-major (T, B, ...){BATCH_FIRST}")
    if T is None:
        if steps is None:
            raise GraphcompError("the model reads no input, so the number of steps is unknown: pass steps=T")
        T, B = int(steps), None
    elif steps is not None and steps != T:
        raise GraphcompError(f"steps={steps} but the inputs have {T} steps")
    if T < 1:
        raise GraphcompError("the inputs have 0 time steps; give at least one")
    if B is None:
        B = _batch_from(step, lengths, initial)
    if B < 1:
        raise GraphcompError("the batch is empty (B = 0)")

    partial = False
    if lengths is None:
        lens = np.full(B, T, dtype=np.int64)
    else:
        try:
            raw = np.asarray(lengths)
        except Exception as e:
            raise GraphcompError(f"lengths must be ({B},) integers, one per sequence: {e}") from None
        if raw.shape != (B,):
            raise GraphcompError(f"lengths has shape {_fmt(raw.shape)}; expected ({B},), one length per sequence"
                                 + _transposed(inputs, T, B, raw.shape == (T,)))
        if not (np.issubdtype(raw.dtype, np.integer) or
                (np.issubdtype(raw.dtype, np.floating) and np.all(raw == np.round(raw)))):
            raise GraphcompError(f"lengths must be integers, got {raw.dtype}")
        outside = (raw < 1) | (raw > T)   # before any cast: an unsigned 2**63 or an inf is no wrap-around
        if outside.any():
            b = int(np.argmax(outside))
            raise GraphcompError(f"lengths[{b}] = {raw[b]} is outside 1..{T} (T = {T} steps)")
        lens = raw.astype(np.int64)
        partial = bool(lens.min() < T)
    if partial and T == B and inputs:
        warn_if_batch_major({n: inputs[n] for n in inputs}, lens, stacklevel=4)
    valid = np.arange(1, T + 1)[:, None] <= lens[None, :] if partial else None

    out_inputs, finite = {}, {}
    for name in inputs:
        info = step.signals[name]
        a = _array(inputs[name], f"input {name!r}", dtype)
        if a.shape[2:] != info.array_shape:
            raise GraphcompError(f"input {name!r} has per-step shape {_fmt(a.shape[2:])}, expected "
                                 f"{_fmt(info.array_shape)} (the model declares {name} as {_what(info)}; "
                                 "arrays are time-major (T, B, ...))")
        if partial:   # past its length a sequence reads zeros
            a = np.where(valid.reshape(valid.shape + (1,) * (a.ndim - 2)), a, 0).astype(dtype, copy=False)
        out_inputs[name] = _plain(a.reshape((T, B) + info.shape))
        finite[f"input {name!r}"] = a
    _finite(finite)

    initial = {} if initial is None else initial
    if not isinstance(initial, Mapping):
        raise GraphcompError(f"initial must be a dict name -> array, got {type(initial).__name__}")
    out_init = {}
    for name in initial:
        if name not in step.signals or (step.signals[name].history == 0):
            readable = [n for n, i in step.signals.items() if i.history]
            if name in step.signals:
                raise GraphcompError(f"initial value for {name!r}, but {name} is never read "
                                     f"{'before its first' if step.signals[name].direction > 0 else 'after its last'} "
                                     f"step; signals with initial values: {readable}")
            raise _unknown("signal", name, readable or list(step.signals))
    for name, info in step.signals.items():
        k = info.history
        if not k:
            continue
        if name not in initial:
            out_init[name] = np.zeros((k, B) + info.shape, dtype)
            continue
        given = a = _array(initial[name], f"initial value of {name!r}", dtype)
        full = (k, B) + info.array_shape
        if k == 1 and a.shape == full[1:]:
            a = a[None]
        if a.shape != full:
            hint = (f"({B}{''.join(f', {n}' for n in info.array_shape)}) or " if k == 1 else "")
            order = "oldest first" if info.direction > 0 else "in time order, first the step after the last"
            raise GraphcompError(f"initial value of {name!r} has shape {_fmt(a.shape)}; expected {hint}"
                                 f"{_fmt(full)}: {k} value(s) per sequence, {order}")
        _finite({f"initial value of {name!r}": given})   # an index in the layout given
        out_init[name] = _plain(a.reshape((k, B) + info.shape))
    return Batch(T, B, out_params, out_inputs, lens, out_init, dtype)


def _params(step: Step, params, dtype) -> dict:
    """The parameters, checked, in their IR shapes."""
    _names(params, "parameter", list(step.params), list(step.params), step)
    out, finite = {}, {}
    for name, shape in step.params.items():
        what = f"parameter {name!r}"
        a = _array(params[name], what, dtype)
        if a.shape != ir.user_shape(shape) and not (a.shape == shape and name in step.weights):
            raise GraphcompError(f"{what} has shape {_fmt(a.shape)}, expected {_expected(step, name, a)}")
        out[name] = _plain(a.reshape(shape))
        finite[what] = a
    _finite(finite)
    return out


def _prepare_grid(step: Step, params: dict, inputs, lengths, initial, with_loss: bool, dtype,
                  needed: list | None) -> Batch:
    """A grid's arrays: inputs index-major ``(I, J, ..., B, ...)``, ``lengths`` one ``(B,)``
    array of extents per axis, ``initial`` one value per example ``(B, ...)`` for each state
    read outside the grid."""
    axes = ", ".join(map(str, step.axes))
    n = len(step.axes)
    inputs = {} if inputs is None else inputs
    needed = step.inputs_needed(with_loss) if needed is None else needed
    _names(inputs, "input", needed, step.inputs, step)
    extents = B = None
    for name in inputs:
        a = np.asarray(inputs[name])
        info = step.signals[name]
        if a.ndim != n + 1 + len(info.array_shape):
            raise GraphcompError(f"input {name!r} has shape {_fmt(a.shape)}; the model is a grid over ({axes}): "
                                 f"expected index-major ({', '.join(str(x).upper() for x in step.axes)}, B"
                                 + "".join(f", {k}" for k in info.array_shape) + ")")
        if extents is None:
            extents, B, first = tuple(a.shape[:n]), a.shape[n], name
        elif tuple(a.shape[:n + 1]) != extents + (B,):
            raise GraphcompError(f"input {name!r} has extents {a.shape[:n]} and batch {a.shape[n]} but {first!r} "
                                 f"has {extents} and {B}; all inputs of a grid share (extents..., B)")
    if extents is None:
        raise GraphcompError(f"the grid model reads no input, so its extents over ({axes}) are unknown")
    if min(extents) < 1 or B < 1:
        raise GraphcompError(f"the inputs have extents {extents} and batch {B}; give at least one point and example")
    if lengths is None:
        lens = np.tile(np.array(extents, np.int64), (B, 1))
    else:
        if not isinstance(lengths, (tuple, list)) or len(lengths) != n:
            raise GraphcompError(f"lengths over a grid is a tuple of {n} arrays (B,), each example's extent "
                                 f"along ({axes}); got {type(lengths).__name__}")
        cols = []
        for k, (axis, raw) in enumerate(zip(step.axes, lengths)):
            raw = np.asarray(raw)
            if raw.shape != (B,) or not (np.issubdtype(raw.dtype, np.integer) or
                                         (np.issubdtype(raw.dtype, np.floating) and np.all(raw == np.round(raw)))):
                raise GraphcompError(f"lengths[{k}] (the extents along {axis}) must be {B} integers, one per "
                                     f"example, got shape {_fmt(raw.shape)} of {raw.dtype}")
            raw = raw.astype(np.int64)
            if raw.min() < 1 or raw.max() > extents[k]:
                b = int(np.argmax((raw < 1) | (raw > extents[k])))
                raise GraphcompError(f"lengths[{k}][{b}] = {raw[b]}: example {b}'s extent along {axis} is outside "
                                     f"1..{extents[k]} (the inputs' extent along {axis})")
            cols.append(raw)
        lens = np.stack(cols, axis=1)
    batch = Batch(extents, B, params, {}, lens, {}, dtype)
    valid = batch.valid
    for name in inputs:
        info = step.signals[name]
        a = _array(inputs[name], f"input {name!r}", dtype)
        if a.shape[n + 1:] != info.array_shape:
            raise GraphcompError(f"input {name!r} has per-point shape {_fmt(a.shape[n + 1:])}, expected "
                                 f"{_fmt(info.array_shape)} (the model declares {name} as {_what(info)})")
        a = np.where(valid.reshape(valid.shape + (1,) * len(info.array_shape)), a, 0).astype(dtype, copy=False)
        _finite({f"input {name!r}": a})
        batch.inputs[name] = a.reshape(extents + (B,) + info.shape)
    initial = {} if initial is None else initial
    if not isinstance(initial, Mapping):
        raise GraphcompError(f"initial must be a dict name -> array, got {type(initial).__name__}")
    readable = [s for s, i in step.signals.items() if i.role == "state" and i.history]
    for name, value in initial.items():
        if name not in readable:
            raise _unknown("state read outside the grid", name, readable or step.states)
        info = step.signals[name]
        a = _array(value, f"initial value of {name!r}", dtype)
        if a.shape != (B,) + info.array_shape:
            raise GraphcompError(f"initial value of {name!r} has shape {_fmt(a.shape)}; over a grid it is the value "
                                 f"every read outside an example's extent sees: ({B}"
                                 + "".join(f", {k}" for k in info.array_shape) + ")")
        _finite({f"initial value of {name!r}": a})
        batch.initial[name] = a.reshape((1, B) + info.shape)
    return batch


def _prepare_tree(step: Step, params: dict, inputs, lengths, initial, with_loss: bool, dtype,
                  needed: list | None, children) -> Batch:
    """A tree's arrays: node-major inputs ``(N, B, ...)`` as time-major ones, ``lengths`` each
    tree's node count, ``children`` ``(N, B, K)`` (node v's k-th child, 0 for none: every child
    numbered below its parent, one parent each), ``initial`` the value a missing child reads
    ``(B, ...)``. The input ``has_child`` is filled in: 1 at every node of a tree."""
    if not step.tree:
        raise GraphcompError("children= is given but the model reads no child (gc.child(k)); drop children= "
                             "or write the update over a node's children, like h(gc.child(0))")
    if children is None:
        raise GraphcompError(f"the model is a tree recurrence (it reads gc.child(k)): pass children=C, an int array "
                             f"(N, B, {step.children}) with C[v-1, b, k] the k-th child of node v, 0 for none")
    from .lang.declare import HAS_CHILD
    inputs = {} if inputs is None else dict(inputs)
    if HAS_CHILD in inputs:
        raise GraphcompError(f"{HAS_CHILD!r} is filled in by graphcomp for a tree model (1 at each node); leave it out")
    raw = np.asarray(children)
    if raw.ndim != 3 or not (np.issubdtype(raw.dtype, np.integer) or
                             (np.issubdtype(raw.dtype, np.floating) and np.all(raw == np.round(raw)))):
        raise GraphcompError(f"children has shape {_fmt(raw.shape)} of {raw.dtype}; expected integers (N, B, K): "
                             "C[v-1, b, k] is the k-th child of node v of tree b, 0 for none")
    N, B, K = raw.shape
    C = raw.astype(np.int64)
    if K > step.children and np.any(C[:, :, step.children:]):
        raise GraphcompError(f"children gives nodes a child in slot {step.children} or beyond, but the model reads "
                             f"only {step.children} child slot(s) (gc.child(0..{step.children - 1})); declare more or drop them")
    C = np.concatenate([C[:, :, :step.children], np.zeros((N, B, max(0, step.children - K)), np.int64)], axis=2)
    shapes = {n: np.shape(a)[:2] for n, a in inputs.items()}
    if any(s != (N, B) for s in shapes.values()):
        raise GraphcompError(f"children is {N} nodes by {B} trees but the inputs are {shapes}; node-major arrays "
                             "(N, B, ...) share their first two axes with children")
    lens = np.full(B, N, np.int64) if lengths is None else np.asarray(lengths)
    if lens.shape != (B,) or lens.min() < 1 or lens.max() > N:
        raise GraphcompError(f"lengths must be ({B},) node counts in 1..{N}, one per tree, got {lengths!r}")
    lens = lens.astype(np.int64)
    check_trees(C, lens)
    v = np.arange(1, N + 1)[:, None, None]
    C = np.where(v <= lens[None, :, None], C, 0)
    if HAS_CHILD in step.signals:
        inputs[HAS_CHILD] = (np.arange(1, N + 1)[:, None] <= lens[None, :]).astype(dtype)
    tree_initial = {}
    for name, value in (initial or {}).items():
        if name not in step.states:
            raise _unknown("state", name, step.states)
        info = step.signals[name]
        a = _array(value, f"initial value of {name!r}", dtype)
        if a.shape != (B,) + info.array_shape:
            raise GraphcompError(f"initial value of {name!r} has shape {_fmt(a.shape)}; over a tree it is what a "
                                 f"missing child reads: ({B}" + "".join(f", {k}" for k in info.array_shape) + ")")
        _finite({f"initial value of {name!r}": a})
        tree_initial[name] = a.reshape((1, B) + info.shape)
    batch = prepare(_as_time(step), params, inputs, lens, None, with_loss=with_loss, dtype=dtype,
                    needed=None if needed is None else [n for n in needed if n != HAS_CHILD] + (
                        [HAS_CHILD] if HAS_CHILD in inputs else []))
    return Batch(batch.T, batch.B, batch.params, batch.inputs, batch.lengths, tree_initial, dtype, C)


def check_trees(C: np.ndarray, lens: np.ndarray) -> None:
    """Trees ``C`` (N, B, K) of ``lens`` nodes: every child numbered below its parent, inside
    its tree, with one parent."""
    v = np.arange(1, C.shape[0] + 1)[:, None, None]
    live = (v <= lens[None, :, None]) & (C != 0)
    bad = live & ((C >= v) | (C < 0))
    if bad.any():
        node, b, k = (int(x) for x in np.argwhere(bad)[0])
        raise GraphcompError(f"node {node + 1} of tree {b} has child {C[node, b, k]} in slot {k}: a child is numbered "
                             f"below its parent (1..{node}), so that node order is a topological order")
    for b in range(C.shape[1]):
        kids = C[:lens[b], b][C[:lens[b], b] != 0]
        if kids.size and kids.max() > lens[b]:
            raise GraphcompError(f"tree {b} has {lens[b]} nodes but names child {kids.max()}: a child outside its tree")
        seen, counts = np.unique(kids, return_counts=True)
        if (counts > 1).any():
            raise GraphcompError(f"node {seen[counts > 1][0]} of tree {b} is the child of two nodes: each node has one "
                                 "parent in a tree (a DAG that is not a tree is not supported)")


def _as_time(step: Step) -> Step:
    """A tree step seen as a time recurrence, for checking its node-major inputs as time-major."""
    import dataclasses
    signals = {n: dataclasses.replace(i, offsets=tuple(o for o in i.offsets if isinstance(o, int)) or (0,))
               for n, i in step.signals.items()}
    return dataclasses.replace(step, signals=signals)


BATCH_FIRST = "; for batch-major arrays (B, T, ...) pass batch_first=True"


def _transposed(inputs, T: int, B: int, fits: bool) -> str:
    """The hint for lengths that have one entry per step: the inputs may be batch-major."""
    if not inputs or T == B or not fits:
        return ""
    return (f"; the inputs {sorted(inputs)} are read time-major (T, B, ...) as T = {T} steps of B = {B} "
            "sequences: if they are batch-major (B, T, ...), pass batch_first=True")


def time_major(step: Step, inputs, batch_first: bool):
    """Inputs given batch-major ``(B, T, ...)`` (``batch_first=True``) as time-major views
    ``(T, B, ...)``, their shapes checked in the caller's layout; anything else as given."""
    if not batch_first or not isinstance(inputs, Mapping):
        return inputs
    out, first = {}, None
    for name, value in inputs.items():
        info = step.signals.get(name)
        try:
            a = np.asarray(value)
        except Exception:   # prepare reports it
            a = None
        if a is None or info is None or info.role != "input":
            out[name] = value
            continue
        if a.ndim != 2 + len(info.array_shape):
            raise GraphcompError(f"input {name!r} has shape {_fmt(a.shape)}; expected batch-major (B, T"
                                 + "".join(f", {n}" for n in info.array_shape) + ") since batch_first=True "
                                 "(without it, arrays are time-major (T, B, ...))")
        if first is None:
            first = name, a.shape[:2]
        elif a.shape[:2] != first[1]:
            raise GraphcompError(f"input {name!r} has batch {a.shape[0]} and {a.shape[1]} steps but {first[0]!r} "
                                 f"has batch {first[1][0]} and {first[1][1]} steps; with batch_first=True all "
                                 "inputs are (B, T, ...)")
        out[name] = np.swapaxes(a, 0, 1)
    return out


def batch_major(arrays: dict) -> dict:
    """Time-major results ``(T, B, ...)`` as batch-major arrays ``(B, T, ...)``."""
    return {n: np.ascontiguousarray(np.swapaxes(a, 0, 1)) for n, a in arrays.items()}


def warn_if_batch_major(arrays: Mapping, lengths: np.ndarray, stacklevel: int = 2) -> None:
    """A UserWarning when square arrays (T == B, so both layouts fit) look read the wrong way
    round: every cell past a sequence's length along the batch axis is padding (all zero or
    not finite, in every array) while the cells past it along time, where time-major
    padding lies, are not all padding."""
    arrays = {n: np.asarray(a) for n, a in arrays.items()}
    n = len(lengths)
    if any(a.ndim < 2 or a.shape[:2] != (n, n) or a.dtype.kind not in "biuf" for a in arrays.values()):
        return
    pad = np.arange(n)[:, None] >= lengths[None, :]     # (T, B): past the end, time-major
    if not pad.any() or (pad == pad.T).all():
        return
    empty = np.ones((n, n), bool)
    for a in arrays.values():
        with np.errstate(invalid="ignore"):
            empty &= ((a == 0) | ~np.isfinite(a)).reshape(n, n, -1).all(-1)
    if empty[pad.T].all() and not empty[pad].all():
        warnings.warn(f"graphcomp: the arrays {sorted(arrays)} look transposed: with these lengths their padding "
                      "(zeros) lies past each sequence's end along the axis read as the batch, not along time. "
                      "Check their layout: time-major (T, B, ...), or batch-major (B, T, ...) with batch_first=True",
                      UserWarning, stacklevel=stacklevel + 1)


def seeds(step: Step, given, B: int, dtype) -> dict:
    """Validate ``final_cotangents``: for a forward state read at delays up to k, the
    cotangents of each sequence's last k values ``(k, B, ...)``, oldest first (``(B, ...)``
    when k <= 1). Returns them as (k, B, *IR shape)."""
    if not isinstance(given, Mapping):
        raise GraphcompError(f"final_cotangents must be a dict state -> array, got {type(given).__name__}")
    out = {}
    for name, value in given.items():
        info = step.signals.get(name)
        if info is None or info.role != "state":
            raise _unknown("state", name, step.states)
        if info.direction < 0:
            raise GraphcompError(f"state {name!r} runs backwards in time, so it has no final value to seed; "
                                 "give final_cotangents for forward states only")
        k = max(info.history, 1)
        a = _array(value, f"final cotangent of {name!r}", dtype)
        full = (k, B) + info.array_shape
        if k == 1 and a.shape == full[1:]:
            a = a[None]
        if a.shape != full:
            hint = f"({B}{''.join(f', {n}' for n in info.array_shape)}) or " if k == 1 else ""
            raise GraphcompError(f"final cotangent of {name!r} has shape {_fmt(a.shape)}; expected {hint}{_fmt(full)}: "
                                 f"the cotangents of each sequence's last {k} value(s), oldest first")
        _finite({f"final cotangent of {name!r}": a})
        out[name] = a.reshape((k, B) + info.shape)
    return out


def _expected(step: Step, name: str, given: np.ndarray) -> str:
    """The shapes parameter ``name`` may have: ``(n,)`` for an n x 1 column, and also ``(n, 1)``
    for a weight (it multiplies a signal); a bias is ``(n,)`` only."""
    shape = step.params[name]
    if shape[1:] != (1,):
        return _fmt(shape)
    if name in step.weights:
        return f"{_fmt(shape[:1])} or {_fmt(shape)} (a weight with one column)"
    return f"{_fmt(shape[:1])}" + (" (a bias: a 1-D array; use .ravel())" if given.size == shape[0] else "")


def _what(info: SignalInfo) -> str:
    return "a scalar" if not info.shape else "x".join(str(n) for n in info.shape)


def _batch_from(step: Step, lengths, initial) -> int:
    """The batch size of a call without inputs: from ``lengths`` or an initial value (1 if
    neither tells; a value that cannot tell is reported by the checks that follow)."""
    try:
        if lengths is not None:
            return int(np.size(lengths))
        for name, a in (initial or {}).items() if isinstance(initial, Mapping) else ():
            info = step.signals.get(name)
            shape, rank = np.shape(a), 0 if info is None else len(info.array_shape)
            if info is not None and len(shape) > rank:
                return shape[0] if len(shape) == rank + 1 else shape[1]
    except (TypeError, ValueError):
        pass
    return 1
