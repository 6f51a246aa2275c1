"""Training data over trees: trees of different sizes, padded node-major as the kernels take
them with their children, cut into minibatches of trees of similar size."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..check import check_trees
from ..errors import GraphcompError

CHILDREN = "children"   # the key of a tree's children among its arrays


@dataclass
class Trees:
    """Padded node-major arrays {name: (N, B, ...)}, the children (N, B, K) and each tree's node count (B,)."""
    arrays: dict
    children: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def key(self) -> np.ndarray:
        """The order that puts trees of similar size together."""
        return self.lengths

    def batch(self, index: np.ndarray) -> tuple[dict, tuple]:
        """The trees ``index``, cut to the largest, and ``(lengths, children)``."""
        lengths = self.lengths[index]
        N = int(lengths.max())
        return {n: a[:N, index] for n, a in self.arrays.items()}, (lengths, self.children[:N, index])


def trees(data, lengths=None) -> Trees:
    """Training data as ``Trees``: a list of trees, each a dict of node-major arrays ``(n, ...)``
    and its ``"children"`` ``(n, K)`` (node v's k-th child, 0 for none), or a dict of padded
    arrays ``(N, B, ...)`` with ``"children"`` ``(N, B, K)`` and ``lengths`` (B,) (None: all N)."""
    if isinstance(data, Trees):
        return data
    if isinstance(data, dict):
        if CHILDREN not in data:
            raise GraphcompError(f"tree data holds each node's children under {CHILDREN!r}: add "
                                 f"{CHILDREN!r}: an int array (N, B, K), 0 for no child")
        arrays = {n: np.asarray(a) for n, a in data.items() if n != CHILDREN}
        C = _children(data[CHILDREN], 3, "(N, B, K)")
        N, B = C.shape[:2]
        shapes = {n: a.shape[:2] for n, a in arrays.items()}
        if any(s != (N, B) for s in shapes.values()):
            raise GraphcompError(f"children is {N} nodes by {B} trees but the arrays are {shapes}; node-major arrays "
                                 "(N, B, ...) share their first two axes with children")
        lens = np.full(B, N) if lengths is None else np.asarray(lengths)
        if lens.shape != (B,) or not np.issubdtype(lens.dtype, np.integer) or lens.min() < 1 or lens.max() > N:
            raise GraphcompError(f"lengths must be ({B},) node counts in 1..{N}, one per tree, got {lengths!r}")
        lens = lens.astype(np.int64)
    elif isinstance(data, (list, tuple)):
        if lengths is not None:
            raise GraphcompError("lengths are taken from a list of trees; pass lengths only with padded arrays")
        if not data or not all(isinstance(tree, dict) and CHILDREN in tree for tree in data):
            raise GraphcompError(f"a list of trees must hold dicts {{name: array (n, ...), {CHILDREN!r}: (n, K)}}, "
                                 "at least one")
        names = set(data[0]) - {CHILDREN}
        kids = [_children(tree[CHILDREN], 2, "(n, K)", f"tree {b}: ") for b, tree in enumerate(data)]
        lens = np.array([len(c) for c in kids], np.int64)
        for b, tree in enumerate(data):
            if set(tree) - {CHILDREN} != names:
                raise GraphcompError(f"tree {b} has arrays {sorted(tree)}, tree 0 has {sorted(data[0])}")
            for n in names:
                if len(np.asarray(tree[n])) != lens[b]:
                    raise GraphcompError(f"tree {b}: {n!r} has {len(np.asarray(tree[n]))} nodes, its children "
                                         f"{lens[b]}; give every array one row per node")
        if lens.min() < 1:
            raise GraphcompError(f"tree {int(np.argmin(lens))} is empty; every tree needs a node")
        N, B, K = lens.max(), len(data), max(c.shape[1] for c in kids)
        C = np.zeros((N, B, K), np.int64)
        arrays = {n: np.zeros((N, B) + np.shape(data[0][n])[1:]) for n in names}
        for b, tree in enumerate(data):
            C[:lens[b], b, :kids[b].shape[1]] = kids[b]
            for n in names:
                arrays[n][:lens[b], b] = tree[n]
    else:
        raise GraphcompError(f"tree data must be a list of trees or a dict of padded node-major arrays with "
                             f"{CHILDREN!r}, got {type(data).__name__}")
    check_trees(C, lens)
    return Trees(arrays, C, lens)


def _children(raw, ndim: int, shape: str, where: str = "") -> np.ndarray:
    C = np.asarray(raw)
    if C.ndim != ndim or not np.issubdtype(C.dtype, np.integer):
        raise GraphcompError(f"{where}children has shape {C.shape} of {C.dtype}; expected integers {shape}: "
                             "node v's k-th child in row v-1, column k, 0 for none")
    return C.astype(np.int64)
