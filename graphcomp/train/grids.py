"""Training data over a grid: images (or volumes) of different sizes, padded index-major as the
kernels take them, cut into minibatches of images of similar size."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GraphcompError


@dataclass
class Grids:
    """Padded index-major arrays {name: (I, J, ..., N, ...)} and each example's extents (N, axes)."""
    arrays: dict
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def key(self) -> np.ndarray:
        """The order that puts images of similar size together: by height, then width, ..."""
        return np.ravel_multi_index(self.lengths.T - 1, tuple(self.lengths.max(0)))

    def batch(self, index: np.ndarray) -> tuple[dict, tuple]:
        """The examples ``index``, cut to their largest extents, and their ``lengths`` tuple."""
        lengths = self.lengths[index]
        cut = tuple(slice(0, int(n)) for n in lengths.max(0))
        return {n: np.take(a[cut], index, axis=len(cut)) for n, a in self.arrays.items()}, tuple(lengths.T)


def grids(data, lengths, axes: tuple) -> Grids:
    """Training data over the grid ``axes`` as ``Grids``: a dict of padded index-major arrays
    ``(I, J, ..., N, ...)`` with ``lengths=(heights, widths, ...)`` (each ``(N,)``; None: every
    example fills the arrays), or a list of examples, each a dict of arrays ``(I_n, J_n, ..., ...)``."""
    n = len(axes)
    names = ", ".join(str(a).upper() for a in axes)
    if isinstance(data, Grids):
        return data
    if isinstance(data, dict):
        arrays = {k: np.asarray(a) for k, a in data.items()}
        if not arrays:
            raise GraphcompError(f"the data holds no arrays: pass {{name: array ({names}, N, ...)}}")
        leads = {k: a.shape[:n + 1] for k, a in arrays.items()}
        if any(len(s) < n + 1 for s in leads.values()) or len(set(leads.values())) > 1:
            raise GraphcompError(f"grid arrays must share their first {n + 1} axes, index-major ({names}, N); "
                                 f"got {leads}")
        lead = next(iter(leads.values()))
        extents, N = lead[:n], lead[n]
        if lengths is None:
            return Grids(arrays, np.tile(np.array(extents, np.int64), (N, 1)))
        if not isinstance(lengths, (tuple, list)) or len(lengths) != n:
            raise GraphcompError(f"lengths over a grid is a tuple of {n} arrays ({N},), each example's extent "
                                 f"along ({', '.join(map(str, axes))}); got {type(lengths).__name__}")
        cols = []
        for k, (axis, raw) in enumerate(zip(axes, lengths)):
            raw = np.asarray(raw)
            if raw.shape != (N,) or not np.issubdtype(raw.dtype, np.integer) or raw.min() < 1 or raw.max() > extents[k]:
                raise GraphcompError(f"lengths[{k}] (the extents along {axis}) must be {N} integers in "
                                     f"1..{extents[k]}, one per example; got {raw!r}")
            cols.append(raw.astype(np.int64))
        return Grids(arrays, np.stack(cols, axis=1))
    if isinstance(data, (list, tuple)):
        if lengths is not None:
            raise GraphcompError("lengths are taken from a list of examples; pass lengths only with padded arrays")
        if not data or not all(isinstance(s, dict) and s for s in data):
            raise GraphcompError(f"a list of examples must hold dicts {{name: array (extents..., ...)}}, one "
                                 f"extent per axis ({', '.join(map(str, axes))}); at least one example")
        keys = set(data[0])
        sizes = []
        for e, example in enumerate(data):
            if set(example) != keys:
                raise GraphcompError(f"example {e} has arrays {sorted(example)}, example 0 has {sorted(keys)}")
            shapes = {k: np.shape(a)[:n] for k, a in example.items()}
            if len(set(shapes.values())) > 1 or any(len(s) < n or min(s) < 1 for s in shapes.values()):
                raise GraphcompError(f"example {e}: its arrays' extents {shapes} differ or are empty; every array of "
                                     f"an example has the same extents ({names}), each at least 1")
            sizes.append(next(iter(shapes.values())))
        sizes = np.array(sizes, np.int64)
        top = tuple(sizes.max(0))
        arrays = {}
        for k in keys:
            first = np.asarray(data[0][k], np.float64)
            a = np.zeros(top + (len(data),) + first.shape[n:])
            for e, example in enumerate(data):
                a[tuple(slice(0, m) for m in sizes[e]) + (e,)] = example[k]
            arrays[k] = a
        return Grids(arrays, sizes)
    raise GraphcompError(f"grid data must be a dict of padded index-major arrays or a list of examples, got "
                         f"{type(data).__name__}")
