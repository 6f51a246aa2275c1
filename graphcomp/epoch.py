"""A training epoch in one compiled function. For a small model the trainer's Python work per
minibatch (checks, slicing, the kernel's driver, the update) costs more than the model's own
arithmetic, so for such models the loop over an epoch's minibatches, gathering each one's
timelines, the gradient, clipping and the optimizer's update all run in Numba: a function
generated as text for one model and one optimizer, cached on disk like the kernels."""
from __future__ import annotations

import numba
import numpy as np
from numba import njit

from .compiled import load
from .errors import GraphcompError
from .optim import Optimizer
from .runtime import header

MARK = "\ndef loss_and_grad("


@njit(cache=True)
def _gather(data, index, T, before, ext):
    """Rows ``before`` .. ``before + T`` of a (rows · B, width) timeline from the data's
    (T_max, N, width) array, for the minibatch's sequences ``index``; margins stay zero."""
    B = index.size
    for t in range(T):
        for r in range(B):
            ext[(before + t) * B + r, :] = data[t, index[r], :]


def _driver(text: str) -> str:
    """The kernel module's ``loss_and_grad`` driver, made a Numba function: its conversions of
    parameter-only values go through ``_contig``, which Numba compiles."""
    start = text.index(MARK) + 1
    end = text.find("\n\n\n", start)
    driver = text[start:end if end >= 0 else None]
    return "@njit(cache=True, error_model='numpy')\n" + driver.replace("np.ascontiguousarray(", "_contig(")


def source(kernel, optimizer: Optimizer, train: list) -> str:
    """The epoch module of a kernel (Numba backend) and an optimizer: ``epoch(...)`` runs the
    minibatches ``order[starts[k]:starts[k + 1]]`` in turn and returns how many it finished
    (fewer when a loss or gradient is not finite: that minibatch is left for the caller)."""
    backend, step = kernel._impl, kernel.program
    kernels = backend.kernels
    names = kernels.args["loss_and_grad"]
    inputs = [n for n in names if step.signals[n].role == "input"]
    params = list(kernels.params)
    rule = type(optimizer).rule.__name__
    lines = [
        header(kernel.dtype.name),
        f"from {backend.module.__name__} import _loss_and_grad",
        f"from graphcomp.optim import {rule} as _rule",
        "from graphcomp.epoch import _gather",
        "",
        "",
        "@njit(cache=True)",
        "def _contig(a, _dtype):",
        "    return np.ascontiguousarray(a).astype(dtype)",
        "",
        "",
        _driver(kernels.text),
        "",
        "",
    ]
    slots = [f"s_{p}_{s}" for p in train for s in optimizer.slots]
    args = ["order", "starts", "lens", "work", *(f"d_{n}" for n in inputs), *(f"f_{p}" for p in params),
            *(f"prev_{p}" for p in train), *slots, "lrs", "h", "step0", "clip_norm", "clip_value", "losses"]
    body = [f"def epoch({', '.join(args)}):",
            "for k in range(starts.size - 1):",
            "    index = order[starts[k]:starts[k + 1]]",
            "    B = index.size",
            "    lengths = np.empty(B, np.int32)",
            "    for r in range(B):",
            "        lengths[r] = lens[index[r]]",
            "    T = np.int64(lengths.max())"]
    for n in names:
        before, after = kernels.margins[n]
        shape = step.signals[n].array_shape
        width = shape[0] if shape else 1
        body.append(f"    ext_{n} = np.zeros((({before} + T + {after}) * B, {width}), dtype)")
        if n in inputs:
            body.append(f"    _gather(d_{n}, index, T, {before}, ext_{n})")
        if not shape:
            body.append(f"    ext_{n} = ext_{n}.reshape(ext_{n}.shape[0])")
    call = []
    for p, shape in kernels.params.items():
        kshape = shape[:1] if shape[1:] == (1,) else shape
        call.append(f"f_{p}[0]" if shape == () else f"f_{p}" if len(kshape) == 1 else f"f_{p}.reshape({kshape})")
    work = ["work"] if kernels.work["loss_and_grad"] else []
    body.append(f"    out = loss_and_grad(T, B, lengths, {', '.join(work + [f'ext_{n}' for n in names] + call)})")
    body.append("    loss = out[0]")
    body.append("    ok = np.isfinite(loss)")
    for i, p in enumerate(params):
        if p in train:
            g = f"np.full(1, out[{i + 1}], np.float64)" if kernels.params[p] == () else \
                f"np.ascontiguousarray(out[{i + 1}]).reshape(f_{p}.size).astype(np.float64)"
            body += [f"    g_{p} = {g}", f"    ok = ok and np.all(np.isfinite(g_{p}))"]
    body += ["    if not ok:", "        return k",
             "    total = 0.0"]
    body.append("    if clip_value < np.inf:")
    body += [f"        np.clip(g_{p}, -clip_value, clip_value, g_{p})" for p in train]
    body += [f"    total += np.sum(g_{p} * g_{p})" for p in train]
    body += ["    if np.sqrt(total) > clip_norm:", "        scale = clip_norm / np.sqrt(total)"]
    body += [f"        g_{p} *= scale" for p in train]
    for p in train:
        their = ", ".join(f"s_{p}_{s}" for s in optimizer.slots)
        body += [f"    prev_{p}[:] = f_{p}", f"    _rule(f_{p}, g_{p}, {their}, lrs[k], h, step0 + k)"]
    body += ["    losses[k] = loss", "return starts.size - 1"]
    lines += ["@njit(cache=True, error_model='numpy')", "\n    ".join(body), ""]
    return "\n".join(lines)


class Epoch:
    """The compiled epoch of one trainer: ``run`` trains on a list of minibatches."""

    def __init__(self, kernel, optimizer: Optimizer, train: list):
        if kernel.backend != "numba":
            raise GraphcompError(f"a compiled epoch needs the Numba backend, this kernel's is {kernel.backend!r}; "
                                 "use compiled=False")
        self.kernel, self.optimizer, self.train = kernel, optimizer, train
        self.module = load(source(kernel, optimizer, train))

    def data(self, params: dict, data) -> dict:
        """Each input the loss needs as one (T_max, N, width) array of the kernel's dtype,
        checked once and zero past each sequence's length."""
        batch = self.kernel._prepare(params, data.arrays, data.lengths, None, None, with_loss=True)
        T, N = batch.T, batch.B
        names = self.kernel._impl.kernels.args["loss_and_grad"]
        return {n: np.ascontiguousarray(batch.inputs[n].reshape(T, N, -1), dtype=self.kernel._impl.dtype)
                for n in names if n in batch.inputs}

    def run(self, params: dict, state: dict, arrays: dict, lengths: np.ndarray, batches: list, step0: int,
            clip_norm: float | None, clip_value: float | None) -> tuple[np.ndarray, int, dict]:
        """Train on ``batches`` (index arrays) in order, updating ``params`` and ``state`` in
        place. Returns the minibatches' losses, how many finished, and the parameters before
        the last update."""
        impl = self.kernel._impl
        order = np.concatenate(batches).astype(np.int64)
        starts = np.cumsum([0] + [len(b) for b in batches]).astype(np.int64)
        Tmax = int(lengths.max())
        B = max(len(b) for b in batches)
        work = []
        if impl.kernels.work["loss_and_grad"]:
            work = [np.empty(max(impl.module.work_size_loss_and_grad(Tmax, B), 1), impl.dtype)]
        kernels = impl.kernels
        flat = {p: params[p].reshape(-1) for p in kernels.params}
        prev = {p: flat[p].copy() for p in self.train}
        slots = [state[p][s].reshape(-1) for p in self.train for s in self.optimizer.slots]
        lrs = np.array([self.optimizer.rate(step0 + k) for k in range(len(batches))], np.float64)
        losses = np.zeros(len(batches))
        inputs = [arrays[n] for n in kernels.args["loss_and_grad"] if n in arrays]
        try:
            done = self.module.epoch(order, starts, lengths.astype(np.int64), *work, *inputs, *flat.values(),
                                     *prev.values(), *slots, lrs, self.optimizer.hyper(), step0,
                                     np.inf if clip_norm is None else float(clip_norm),
                                     np.inf if clip_value is None else float(clip_value), losses)
        except numba.core.errors.NumbaError as e:
            raise GraphcompError(f"Numba could not compile the training epoch of this model: {str(e).splitlines()[0]}; "
                                 "use gc.Trainer(..., compiled=False)") from e
        return losses[:done], done, {p: v.reshape(np.shape(params[p])) for p, v in prev.items()}
