"""The layout of arrays: how a signal's values over time sit in one array with margins,
how a ring keeps a few steps' rows, and the user's shapes against the IR's. Every backend and
the call-time checks go through here."""
from __future__ import annotations

import itertools

import numpy as np

from .check import Batch
from .lang.step import Step


def lengths32(lengths: np.ndarray) -> np.ndarray:
    """Sequence lengths as the compiled loops take them: int32 (8 lanes beside float32)."""
    return np.ascontiguousarray(lengths, dtype=np.int32)


def step_rows(tau: int, before: int, ring: int | None, B: int) -> int:
    """The first row of step ``tau`` in a timeline with ``before`` steps of margin, or in a
    ring of ``ring`` steps."""
    return ((tau - 1) % ring if ring else tau - 1 + before) * B


def cells(extents: tuple, direction: tuple):
    """The points of a grid (1-based, one index per axis) in the order of a sweep: the axes
    nest in order, each run in its direction."""
    ranges = [range(1, n + 1) if d > 0 else range(n, 0, -1) for n, d in zip(extents, direction)]
    return itertools.product(*ranges)


def at(point, offset, pre):
    """The index, in a timeline with ``pre`` steps of margin, of ``point + offset``: a row for
    a time, a tuple of indices over a grid."""
    if isinstance(point, tuple):
        return tuple(p + o - 1 + b for p, o, b in zip(point, offset, pre))
    return point + offset - 1 + pre


def interior(a: np.ndarray, pre, extents) -> np.ndarray:
    """A timeline without its margins: (T, B, ...), or over a grid (I, J, ..., B, ...)."""
    if isinstance(extents, tuple):
        return a[tuple(slice(b, b + n) for b, n in zip(pre, extents))]
    return a[pre:pre + extents]


def grid_timelines(step: Step, batch: Batch, flat: bool = False, dtype=np.float64) -> tuple[dict, dict]:
    """Over a grid: each signal with its margins per axis, (I + margins, J + margins, ..., B, ...),
    every point outside an example's extent holding its ``initial`` value (zeros by default),
    which is what a read outside the image sees; and each signal's margins before (a tuple)."""
    ext, pre = {}, {}
    extents, B = batch.T, batch.B
    for name, info in step.signals.items():
        if info.role == "input" and name not in batch.inputs:
            continue
        shape = info.array_shape if flat else info.shape
        margins = info.margins
        before = tuple(b for b, _ in margins)
        if info.role == "input" and not any(a or b for a, b in margins):
            ext[name], pre[name] = batch.inputs[name].reshape(extents + (B,) + shape), before
            continue
        full = tuple(b + n + a for (b, a), n in zip(margins, extents)) + (B,) + shape
        buf = np.zeros(full, dtype)
        init = batch.initial.get(name)
        if init is not None:
            buf[...] = init.reshape((B,) + shape)
        inside = tuple(slice(b, b + n) for b, n in zip(before, extents))
        if info.role == "input":
            buf[inside] = batch.inputs[name].reshape(extents + (B,) + shape)
        ext[name], pre[name] = buf, before
    return ext, pre


def timelines(step: Step, batch: Batch, flat: bool = False, dtype=np.float64,
              reuse: dict | None = None) -> tuple[dict, dict]:
    """Every signal over its whole time range plus margins, as the step reads it: rows before
    the first step hold ``initial`` values, rows after each sequence's end zeros (or, for a
    state that runs backwards, its ``initial`` values). Also the number of rows before step 1.
    ``flat`` drops the trailing 1 of column vectors: (rows, B, n) instead of (rows, B, n, 1).
    An input read only at t is the input array itself. ``reuse``: buffers kept from an earlier
    call, for a caller that overwrites every step of a forward state (only margins are reset)."""
    if step.grid:
        return grid_timelines(step, batch, flat, dtype)
    ext, pre = {}, {}
    T, B = batch.T, batch.B
    for name, info in step.signals.items():
        if info.role == "input" and name not in batch.inputs:
            continue
        before, after = info.margins
        shape = info.array_shape if flat else info.shape
        if info.role == "input" and before == after == 0:
            ext[name], pre[name] = batch.inputs[name].reshape((T, B) + shape), 0
            continue
        full = (before + T + after, B) + shape
        buf = None if reuse is None else reuse.get(name)
        if buf is None or buf.shape != full or buf.dtype != dtype:
            buf = np.zeros(full, dtype)
            if reuse is not None:
                reuse[name] = buf
        elif info.role == "state" and info.direction > 0:
            buf[:before] = 0
            buf[before + T:] = 0
        else:
            buf[...] = 0
        if info.role == "input":
            buf[before:before + T] = batch.inputs[name].reshape((T, B) + shape)
        init = batch.initial.get(name)
        if init is not None:
            init = init.reshape(init.shape[:2] + shape)
            if info.direction > 0:
                buf[:before] = init
            else:   # a backward state's values after each sequence's end
                for j in range(len(init)):
                    buf[before + batch.lengths + j, np.arange(B)] = init[j]
        ext[name], pre[name] = buf, before
    return ext, pre




def tree_levels(children: np.ndarray, lengths: np.ndarray) -> tuple:
    """The order the compiled kernels visit a minibatch of trees: every node of height 0 (the
    leaves of all trees), then height 1, ...; nodes of one height are independent. Returns the
    nodes in that order (node indices 0-based, their trees), the first row of each height and
    the row of each node's k-th child ((K, R); a missing child is row R + b, tree b's extra row)."""
    N, B, K = children.shape
    height = np.zeros((N, B), np.int64)
    for v in range(N):   # children are numbered below their parents
        kids = children[v]
        known = np.where(kids > 0, height[np.maximum(kids - 1, 0), np.arange(B)[:, None]] + 1, 0)
        height[v] = known.max(axis=1, initial=0)
    live = np.arange(1, N + 1)[:, None] <= lengths[None, :]
    nodes, trees = np.nonzero(live)
    order = np.lexsort((nodes, trees, height[nodes, trees]))
    nodes, trees = nodes[order], trees[order]
    R = len(nodes)
    row = np.full((N, B), -1, np.int64)
    row[nodes, trees] = np.arange(R)
    counts = np.bincount(height[nodes, trees])
    levels = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    kids = children[nodes, trees]                                    # (R, K)
    child = np.where(kids > 0, row[np.maximum(kids - 1, 0), trees[:, None]], R + trees[:, None])
    return nodes, trees, levels, np.ascontiguousarray(child.T)


def tree_timelines(step: Step, batch: Batch, nodes: np.ndarray, trees: np.ndarray, flat: bool = True,
                   dtype=np.float64) -> dict:
    """Every signal of a tree model in the kernels' order (``tree_levels``): R rows, then one
    row per tree holding what its missing children read (zeros, or ``initial``)."""
    ext = {}
    for name, info in step.signals.items():
        if info.role == "input" and name not in batch.inputs:
            continue
        shape = info.array_shape if flat else info.shape
        buf = np.zeros((len(nodes) + batch.B,) + shape, dtype)
        if info.role == "input":
            buf[:len(nodes)] = batch.inputs[name].reshape(batch.inputs[name].shape[:2] + shape)[nodes, trees]
        init = batch.initial.get(name)
        if init is not None:
            buf[len(nodes):] = init.reshape((batch.B,) + shape)
        ext[name] = buf
    return ext
