"""A fit's residuals and their exact Jacobian with respect to every unknown: forward mode
(the RTRL tangent step with the residuals as its outputs: one run gives every column) or
reverse mode (one backward sweep per residual, for fewer residuals than unknowns); and the
loss and its gradient for gradient-based fits. The unknowns' layout is the ``Problem``'s."""
from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import GraphcompError, NotFinite
from ..grad import rtrl
from .problem import Problem, last_values
from .residuals import OUTPUT, WEIGHT, residual_step, residuals, size

MODES = ("auto", "forward", "reverse")


@functools.lru_cache(maxsize=16)
def _reverse_kernel(kernel, nodes: tuple):
    return kernel.derived(residual_step(kernel.program, nodes))


class Residuals:
    """r(x): the data residuals of every window's valid steps (window by window, step by
    step, the residuals' entries in order), then √weight times the continuity gaps; ``jac(x)``
    their derivatives (rows, n). ``mode``: "forward", "reverse" or "auto" (reverse when the
    directions forward mode needs, parameters plus initial entries, outnumber the residuals)."""

    def __init__(self, problem: Problem, names: list | None = None, mode: str = "auto"):
        if mode not in MODES:
            raise GraphcompError(f"jacobian must be one of {list(MODES)}, got {mode!r}")
        self.problem, kernel = problem, problem.kernel
        self.nodes = tuple(residuals(kernel.program, names))
        self.sizes = [size(r) for r in self.nodes]
        self.M = sum(self.sizes)
        win = problem.windows
        self.inside = np.arange(int(win.length.max()))[:, None] < win.length[None, :]   # (Tw, W)
        self.n_data = int(win.length.sum()) * self.M
        self.n_gaps = len(problem.pairs) * problem.K
        directions = problem.P + (problem.K if (problem.free.any() or problem.encoder) else 0)
        self.mode = mode if mode != "auto" else ("reverse" if directions > self.n_data + self.n_gaps else "forward")
        self.outputs = {OUTPUT.format(k): r for k, r in enumerate(self.nodes)}
        self.weight = 1.0
        self._last = None

    # ------------------------------------------------------------ values
    def _run(self, x: np.ndarray, tangents: bool) -> tuple:
        p = self.problem
        params, X0, enc = p.unpack(x)
        init = {**p.initial(X0), **p.input_initial}
        if self.mode == "forward":
            out = rtrl.sensitivities(p.kernel, self.outputs, params, p.inputs, p.windows.length, init,
                                     wrt_initial=True, tangents=tangents)
            values = {n: v for n, (v, _) in out.items()}
            return params, X0, values, out
        rk = _reverse_kernel(p.kernel, self.nodes)
        return params, X0, rk.forward(params, p.inputs, p.windows.length, init), None

    def _stack(self, values: dict) -> np.ndarray:
        """The residual outputs (Tw, W, ...) as (rows, M), rows ordered window by window."""
        parts = [values[OUTPUT.format(k)].reshape(self.inside.shape + (m,)) for k, m in enumerate(self.sizes)]
        return np.concatenate(parts, axis=2).transpose(1, 0, 2)[self.inside.T]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            params, X0, values, _ = self._run(x, tangents=False)
        except NotFinite:
            return np.full(self.n_data + self.n_gaps, np.inf)   # a trial point where the model diverges
        r = self._stack(values).ravel()
        gaps = self.problem.gaps(self.problem.ends(values, X0), X0).ravel()
        return np.concatenate([r, math.sqrt(self.weight) * gaps])

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The data residuals and the continuity gaps (unweighted) at x."""
        full = self(x)
        return full[:self.n_data], full[self.n_data:] / math.sqrt(self.weight) if self.n_gaps else full[self.n_data:]

    # ------------------------------------------------------------ the Jacobian
    def jac(self, x: np.ndarray) -> np.ndarray:
        key = x.tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        try:
            J = self._forward(x) if self.mode == "forward" else self._reverse(x)
        except NotFinite as e:
            raise GraphcompError(f"the residuals' Jacobian is not finite at these parameters ({e})") from None
        if not np.isfinite(J).all():
            raise GraphcompError("the residuals' Jacobian overflows: the model is too sensitive to its parameters "
                                 "over this many steps; cut the sequences into windows with shooting=k")
        self._last = (key, J)
        return J

    def _columns(self, Jd: np.ndarray, window: np.ndarray, C: np.ndarray) -> np.ndarray:
        """Derivatives along the directions (rows, P + K) as derivatives w.r.t. the unknowns:
        the parameters' columns as they are, the initial entries' through d X0 / d x."""
        P = self.problem.P
        J = np.zeros((len(Jd), self.problem.n))
        J[:, :P] = Jd[:, :P]
        if Jd.shape[1] > P:
            J += np.einsum("rk,rkn->rn", Jd[:, P:], C[window])
        return J

    def _forward(self, x: np.ndarray) -> np.ndarray:
        p = self.problem
        params, X0, values, out = self._run(x, tangents=True)
        C = p.initial_columns(x)
        D = next(iter(out.values()))[1].shape[1]
        parts = [out[OUTPUT.format(k)][1].reshape(self.inside.shape[:1] + (D,) + self.inside.shape[1:] + (m,))
                 for k, m in enumerate(self.sizes)]
        Jd = np.concatenate(parts, axis=3).transpose(2, 0, 3, 1)[self.inside.T]     # (rows, M, D)
        window = np.repeat(np.nonzero(self.inside.T)[0], self.M)
        J = self._columns(Jd.reshape(-1, D), window, C)
        if not self.n_gaps:
            return J
        ends = self._end_tangents(out, D)                                           # (W, K, D)
        pairs = p.pairs
        dend = self._columns(ends[pairs].reshape(-1, D), np.repeat(pairs, p.K), C)
        dx0 = C[p.windows.following[pairs]].reshape(-1, p.n)
        return np.vstack([J, math.sqrt(self.weight) * (dx0 - dend)])

    def _end_tangents(self, out: dict, D: int) -> np.ndarray:
        """d (each window's last state values) / d directions: (W, K, D)."""
        p = self.problem
        W, lo = len(p.windows), 0
        result = np.zeros((W, p.K, D))
        cols = np.arange(W)
        for s, shape in p.entries.items():
            k, size = shape[0], math.prod(shape)
            tan = out[s][1]                                                          # (Tw, D, W, ...)
            unit = np.zeros((k, D, W) + shape[1:])
            for j in range(k):
                for c in range(math.prod(shape[1:])):
                    unit[(j, p.P + lo + j * (size // k) + c, slice(None)) + np.unravel_index(c, shape[1:])] = 1.0
            run = np.concatenate([unit, tan])                                        # (k + Tw, D, W, ...)
            rows = p.windows.length[None, :] + np.arange(k)[:, None]                 # (k, W)
            picked = run[rows, :, cols[None, :]]                                     # (k, W, D, ...)
            picked = np.moveaxis(picked, 2, -1).reshape(k, W, -1, D)                 # (k, W, c, D)
            result[:, lo:lo + size] = np.moveaxis(picked, 1, 0).reshape(W, size, D)
            lo += size
        return result

    def _reverse(self, x: np.ndarray) -> np.ndarray:
        """One backward sweep per residual entry (and per continuity entry), each on its own
        window cut at the residual's step."""
        p = self.problem
        params, X0, _ = p.unpack(x)
        C = p.initial_columns(x)
        rk = _reverse_kernel(p.kernel, self.nodes)
        init = {**p.initial(X0), **p.input_initial}
        rows = []

        def grad_row(w: int, steps: int, weights: dict, seeds: dict | None) -> np.ndarray:
            inputs = {n: a[:steps, w:w + 1] for n, a in p.inputs.items()}
            inputs.update(weights)
            out = rk.loss_and_grad(params, inputs, [steps], {n: a[:, w:w + 1] for n, a in init.items()},
                                   with_initial=bool(p.entries), final_cotangents=seeds)
            g, gi = out[1], out[2] if p.entries else {}
            d = np.concatenate([np.ravel(g[q]) for q in p.shapes] +
                               [np.ravel(np.moveaxis(np.reshape(gi[s], (k[0], 1) + k[1:]), 1, 0)) for s, k in p.entries.items()])
            return self._columns(d[None], np.array([w]), C)[0]

        for w, L in enumerate(p.windows.length):
            for i in range(L):
                for k, m in enumerate(self.sizes):
                    for c in range(m):
                        weights = {WEIGHT.format(j): np.zeros((i + 1, 1) + self._shape(j)) for j in range(len(self.sizes))}
                        weights[WEIGHT.format(k)].reshape(i + 1, 1, -1)[i, 0, c] = 1.0
                        rows.append(grad_row(w, i + 1, weights, None))
        J = np.array(rows).reshape(-1, p.n)
        if not self.n_gaps:
            return J
        gap_rows = []
        for w in p.pairs:
            L = p.windows.length[w]
            zero = {WEIGHT.format(j): np.zeros((L, 1) + self._shape(j)) for j in range(len(self.sizes))}
            entry = 0   # the entry's place among the K initial values
            for s, shape in p.entries.items():
                for e in range(math.prod(shape)):
                    seed = {t: np.zeros((sh[0], 1) + sh[1:]) for t, sh in p.entries.items()}
                    unit = np.zeros(math.prod(shape))
                    unit[e] = 1.0
                    seed[s] = unit.reshape(shape)[:, None]
                    gap_rows.append(C[p.windows.following[w], entry] - grad_row(w, L, zero, seed))
                    entry += 1
        return np.vstack([J, math.sqrt(self.weight) * np.array(gap_rows)])

    def _shape(self, k: int) -> tuple:
        shape = self.nodes[k].shape
        return () if not shape else (shape[0],) if shape[1] == 1 else shape


# ---------------------------------------------------------------- a loss and its gradient

def objective(problem: Problem, params: dict, X0: np.ndarray, index: np.ndarray, weight: float,
              scale: float) -> tuple[float, dict, np.ndarray]:
    """(1/scale) Σ_{w ∈ index} (L_w + weight ‖x0 of the next window - last states of w‖²) for
    the windows ``index``: its value, its gradient w.r.t. the parameters, and w.r.t. every
    window's initial values (W, K). L_w is the model's loss summed over window w's steps."""
    p, kernel = problem, problem.kernel
    B = len(index)
    inputs = {n: a[:, index] for n, a in p.inputs.items()}
    lengths = p.windows.length[index]
    Tw = int(lengths.max())
    inputs = {n: a[:Tw] for n, a in inputs.items()}
    init = {**{s: a[:, index] for s, a in p.initial(X0).items()}, **{n: a[:, index] for n, a in p.input_initial.items()}}
    following = p.windows.following[index]
    linked = following >= 0
    seeds, penalty, gX0 = None, 0.0, np.zeros_like(X0)
    if weight and linked.any():
        states = kernel.forward(params, inputs, lengths, init)
        ends = last_values(p.entries, lengths, states, init)
        gap = np.where(linked[:, None], X0[np.maximum(following, 0)] - ends, 0.0)   # (B, K)
        penalty = weight * float((gap ** 2).sum())
        seeds = {s: a for s, a in p.initial(-2 * weight * gap / B).items()}
        np.add.at(gX0, following[linked], 2 * weight * gap[linked] / scale)
    out = kernel.loss_and_grad(params, inputs, lengths, init, with_initial=bool(p.entries), final_cotangents=seeds)
    loss, grads, ginit = out[0], out[1], out[2] if p.entries else {}
    f = (float(loss) * B + penalty) / scale
    grads = {q: np.asarray(g, np.float64) * B / scale for q, g in grads.items()}
    lo = 0
    for s, shape in p.entries.items():
        size = math.prod(shape)
        g = np.reshape(ginit[s], (shape[0], B) + shape[1:])
        gX0[index, lo:lo + size] += np.moveaxis(g, 1, 0).reshape(B, size) * B / scale
        lo += size
    return f, grads, gX0
