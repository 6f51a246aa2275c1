"""The unknowns of a fit and the windows they run on, shared by ``gc.least_squares``,
``gc.minimize`` and the Trainer: the model's parameters, learned initial states (one per
sequence, or one per window of multiple shooting), an encoder's parameters, packed into one
flat vector; the measured sequences cut into windows; the continuity gaps between windows."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import GraphcompError, is_count
from ..grad.rtrl import initial_entries
from ..kernel import Kernel
from ..lang.step import Step
from ..train.trainer import Sequences, sequences


@dataclass(frozen=True)
class Encoder:
    """Estimates a window's initial state from the ``steps`` measured steps before it (deepSI's
    SUBNET encoder): x0 = E z + e, or with ``hidden`` units x0 = V tanh(W z + b) + e, where z
    stacks the ``signals`` (None: every input the model reads, targets included) at those steps.
    The first ``steps`` steps of each sequence only feed the encoder: they are not fitted."""

    steps: int
    hidden: int = 0
    signals: tuple | None = None
    seed: int = 0

    def shapes(self, Z: int, K: int) -> dict:
        if not self.hidden:
            return {"E": (K, Z), "e": (K,)}
        return {"W": (self.hidden, Z), "b": (self.hidden,), "V": (K, self.hidden), "e": (K,)}

    def init(self, Z: int, K: int) -> dict:
        """Zeros for a linear encoder; small random first-layer weights for a hidden layer."""
        rng = np.random.default_rng(self.seed)
        out = {n: np.zeros(s) for n, s in self.shapes(Z, K).items()}
        if self.hidden:
            out["W"] = rng.normal(scale=1 / math.sqrt(Z), size=(self.hidden, Z))
            out["V"] = rng.normal(scale=1 / math.sqrt(self.hidden), size=(K, self.hidden))
        return out

    def __call__(self, p: dict, z: np.ndarray) -> np.ndarray:
        """The initial values (W, K) of windows whose measured steps before them are z (W, Z)."""
        if not self.hidden:
            return z @ p["E"].T + p["e"]
        return np.tanh(z @ p["W"].T + p["b"]) @ p["V"].T + p["e"]

    def jacobian(self, p: dict, z: np.ndarray) -> dict:
        """d x0 / d each parameter: {name: (W, K, *shape)}."""
        W, K = len(z), len(p["e"])
        eye = np.broadcast_to(np.eye(K), (W, K, K))
        if not self.hidden:
            return {"E": np.einsum("wij,wz->wijz", eye, z), "e": eye}
        a = np.tanh(z @ p["W"].T + p["b"])                          # (W, H)
        da = p["V"][None] * (1 - a ** 2)[:, None, :]                # d x0 / d (W z + b): (W, K, H)
        return {"W": np.einsum("wkh,wz->wkhz", da, z), "b": da,
                "V": np.einsum("wij,wh->wijh", eye, a), "e": eye}


@dataclass
class Windows:
    """Windows of the sequences: window w runs rows start[w] .. start[w] + length[w] - 1 of
    sequence seq[w]; following[w] is the next window of the same sequence, or -1."""

    seq: np.ndarray
    start: np.ndarray
    length: np.ndarray
    following: np.ndarray = field(init=False)

    def __post_init__(self):
        nxt = np.full(len(self.seq), -1)
        same = self.seq[1:] == self.seq[:-1]
        nxt[:-1][same] = np.arange(1, len(self.seq))[same]
        self.following = nxt

    @property
    def first(self) -> np.ndarray:
        """Each sequence's first window."""
        return np.r_[True, self.seq[1:] != self.seq[:-1]]

    def __len__(self) -> int:
        return len(self.seq)


def cut(lengths: np.ndarray, every: int | None, skip: int) -> Windows:
    """Each sequence from row ``skip`` on, in windows of ``every`` rows (None: one window)."""
    seq, start, length = [], [], []
    for b, L in enumerate(lengths):
        if L <= skip:
            raise GraphcompError(f"sequence {b} has {L} steps, but the encoder reads the first {skip}: give "
                                 "longer sequences or an encoder of fewer steps")
        step = every or L
        for s in range(skip, int(L), step):
            seq.append(b), start.append(s), length.append(min(step, int(L) - s))
    return Windows(np.array(seq), np.array(start), np.array(length))


def check_options(learn_initial, shooting, encoder, continuity, *, exact_allowed: bool = True):
    """The initial-state options, checked; returns the encoder (or None)."""
    if learn_initial not in (True, False):
        raise GraphcompError(f"learn_initial must be True or False, got {learn_initial!r}")
    if shooting is not None and not is_count(shooting):
        raise GraphcompError(f"shooting must be a number of steps per window, got {shooting!r}")
    if isinstance(encoder, int) and not isinstance(encoder, bool):
        encoder = Encoder(encoder)
    if encoder is not None and not (isinstance(encoder, Encoder) and is_count(encoder.steps)):
        raise GraphcompError(f"encoder must be a number of steps or gc.Encoder(steps, hidden=...), got {encoder!r}")
    if encoder is not None and learn_initial:
        raise GraphcompError("learn_initial=True learns each initial state freely and encoder=... estimates it "
                             "from the steps before it: choose one")
    exact = continuity == "exact"
    if exact and not exact_allowed:
        raise GraphcompError("continuity='exact' needs a fitter that converges (gc.least_squares or gc.minimize); "
                             "in the Trainer give a weight, or a function epoch -> weight that grows")
    if not exact and not callable(continuity) and not (isinstance(continuity, (int, float)) and continuity >= 0):
        raise GraphcompError(f"continuity must be 'exact' or a weight >= 0, got {continuity!r}")
    return encoder


class Problem:
    """One fit's unknowns and data: ``pack``/``unpack`` between the flat vector and the
    parameters, the windows' initial states and the encoder's parameters."""

    def __init__(self, kernel: Kernel, params: dict, data, lengths=None, *, learn_initial: bool = False,
                 shooting: int | None = None, encoder=None, initial: dict | None = None,
                 continuity="exact", exact_allowed: bool = True):
        if not isinstance(kernel, Kernel):
            raise GraphcompError(f"a fit runs a compiled kernel, got {type(kernel).__name__}: pass gc.compile(model)")
        self.kernel, step = kernel, kernel.program
        self.encoder = check_options(learn_initial, shooting, encoder, continuity, exact_allowed=exact_allowed)
        self.continuity = continuity
        for name, info in step.signals.items():
            if info.role == "state" and info.direction < 0:
                raise GraphcompError(f"state {name!r} runs backwards in time; fits run forward models only")
        names = list(step.params)
        if not isinstance(params, dict) or set(params) != set(names):
            given = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise GraphcompError(f"params must hold the model's parameters {names}, got {given}")
        self.shapes = {p: np.shape(params[p]) for p in names}
        self.start = {p: np.array(params[p], np.float64) for p in names}
        self.P = sum(math.prod(s) for s in self.shapes.values())
        self.data: Sequences = sequences(data, lengths)
        self.entries = initial_entries(step)          # {state: (k, *shape)}
        self.K = sum(math.prod(e) for e in self.entries.values())
        if (learn_initial or shooting or self.encoder) and not self.K:
            raise GraphcompError("the model has no state read at a delay, so it has no initial state to learn")
        skip = self.encoder.steps if self.encoder else 0
        self.windows = cut(self.data.lengths, shooting, skip)
        W = len(self.windows)
        first = self.windows.first
        self.free = np.zeros(W, bool) if self.encoder else (np.ones(W, bool) if learn_initial else ~first)
        self.known = np.zeros((W, self.K))   # the windows' initial values when not learned
        self.given = np.zeros(W, bool)       # initial= gave them
        if initial is not None:
            self.given = first.copy()
            given = self._flat_initial(initial, len(self.data))
            self.known[first] = given[self.windows.seq[first]]
        self.X0 = self.known.copy()
        self.inputs, self.input_initial = self._cut_inputs(step)
        self.z = self._encoder_data(step) if self.encoder else None
        self.enc_shapes = self.encoder.shapes(self.z.shape[1], self.K) if self.encoder else {}
        self.enc_start = self.encoder.init(self.z.shape[1], self.K) if self.encoder else {}
        self.n = self.P + int(self.free.sum()) * self.K + sum(math.prod(s) for s in self.enc_shapes.values())
        self.pairs = np.flatnonzero(self.windows.following >= 0)   # windows with a window after them

    # ------------------------------------------------------------ data
    def _cut_inputs(self, step: Step) -> tuple[dict, dict]:
        """The inputs in windows (Tw, W, ...), and the delayed inputs' values just before each."""
        win, T = self.windows, len(next(iter(self.data.arrays.values())))
        Tw = int(win.length.max())
        rows = win.start[None, :] + np.arange(Tw)[:, None]
        inside = np.arange(Tw)[:, None] < win.length[None, :]
        inputs, before = {}, {}
        for name, a in self.data.arrays.items():
            if name not in step.signals:
                raise GraphcompError(f"the data gives {name!r}, which is not an input of the model; its inputs are "
                                     f"{step.inputs}")
            if step.signals[name].role != "input":
                raise GraphcompError(f"the data gives {name!r}, a state of the model: give its measurements as an "
                                     "input (a target the loss reads)")
            cut = a[np.minimum(rows, T - 1), win.seq[None, :]]
            inputs[name] = np.where(inside.reshape(inside.shape + (1,) * (a.ndim - 2)), cut, 0.0)
            h = step.signals[name].history
            if h:
                back = win.start[None, :] - h + np.arange(h)[:, None]
                vals = a[np.maximum(back, 0), win.seq[None, :]]
                before[name] = np.where((back >= 0).reshape(back.shape + (1,) * (a.ndim - 2)), vals, 0.0)
        return inputs, before

    def _encoder_data(self, step: Step) -> np.ndarray:
        """Each window's encoder input z (W, Z): its signals at the ``steps`` rows before it."""
        names = list(self.encoder.signals or [n for n in step.inputs if n in self.data.arrays])
        missing = [n for n in names if n not in self.data.arrays]
        if missing:
            raise GraphcompError(f"the encoder reads {missing}, which the data does not give; it has "
                                 f"{sorted(self.data.arrays)}")
        m, win = self.encoder.steps, self.windows
        back = win.start[None, :] - m + np.arange(m)[:, None]
        parts = [self.data.arrays[n][back, win.seq[None, :]].reshape(m, len(win), -1) for n in names]
        return np.concatenate(parts, axis=2).transpose(1, 0, 2).reshape(len(win), -1)

    def _flat_initial(self, initial: dict, B: int) -> np.ndarray:
        """``initial`` in the kernel's layout, as (B, K)."""
        unknown = [n for n in initial if n not in self.entries]
        if unknown:
            raise GraphcompError(f"initial gives {unknown}, which are not states read at a delay; those are "
                                 f"{list(self.entries)}")
        out = np.zeros((B, self.K))
        lo = 0
        for s, shape in self.entries.items():
            size = math.prod(shape)
            if s in initial:
                a = np.asarray(initial[s], np.float64)
                if shape[0] == 1 and a.shape == (B,) + shape[1:]:
                    a = a[None]
                if a.shape != (shape[0], B) + shape[1:]:
                    raise GraphcompError(f"initial value of {s!r} has shape {a.shape}; expected "
                                         f"{(shape[0], B) + shape[1:]} ({B} sequences)")
                out[:, lo:lo + size] = np.moveaxis(a, 1, 0).reshape(B, size)
            lo += size
        return out

    def initial(self, X0: np.ndarray) -> dict:
        """Flat initial values (W, K) in the kernel's layout {state: (k, W, ...)}."""
        out, lo = {}, 0
        for s, shape in self.entries.items():
            size = math.prod(shape)
            out[s] = np.moveaxis(X0[:, lo:lo + size].reshape((len(X0),) + shape), 0, 1)
            lo += size
        return out

    def user_initial(self, X0: np.ndarray) -> dict:
        """Per-sequence initial values of the first windows, in ``initial``'s layout: (B, ...)
        for a state read one step back, (k, B, ...) otherwise."""
        first = self.initial(X0[self.windows.first])
        return {s: a[0] if self.entries[s][0] == 1 else a for s, a in first.items()}

    def start_from(self, measured: dict) -> None:
        """Start the learned initial states of states an input measures directly ({state: input})
        from its values just before each window: multiple shooting begins near the data. The
        first windows keep ``initial`` when it was given."""
        lo = 0
        rows = self.free & (~self.windows.first | ~self.given)
        for s, shape in self.entries.items():
            size = math.prod(shape)
            y = measured.get(s)
            if y in self.data.arrays and shape[1:] == self.data.arrays[y].shape[2:]:
                k = shape[0]
                back = np.maximum(self.windows.start[None, :] - k + np.arange(k)[:, None], 0)   # (k, W)
                vals = self.data.arrays[y][back, self.windows.seq[None, :]]                     # (k, W, ...)
                self.X0[rows, lo:lo + size] = np.moveaxis(vals, 1, 0).reshape(len(self.windows), size)[rows]
            lo += size

    # ------------------------------------------------------------ the flat vector
    def pack(self, params: dict | None = None, X0: np.ndarray | None = None, enc: dict | None = None) -> np.ndarray:
        params = self.start if params is None else params
        X0 = self.X0 if X0 is None else X0
        enc = self.enc_start if enc is None else enc
        parts = [np.ravel(params[p]) for p in self.shapes] + [X0[self.free].ravel()]
        parts += [np.ravel(enc[n]) for n in self.enc_shapes]
        return np.concatenate([np.asarray(p, np.float64) for p in parts])

    def unpack(self, x: np.ndarray) -> tuple[dict, np.ndarray, dict]:
        """The parameters, every window's initial values (W, K) and the encoder's parameters."""
        params, lo = {}, 0
        for p, shape in self.shapes.items():
            size = math.prod(shape)
            params[p] = x[lo:lo + size].reshape(shape) if shape else float(x[lo])
            lo += size
        X0 = self.known.copy()
        nfree = int(self.free.sum()) * self.K
        if nfree:
            X0[self.free] = x[lo:lo + nfree].reshape(-1, self.K)
        lo += nfree
        enc = {}
        for n, shape in self.enc_shapes.items():
            enc[n] = x[lo:lo + math.prod(shape)].reshape(shape)
            lo += math.prod(shape)
        if self.encoder:
            X0 = self.encoder(enc, self.z)
        return params, X0, enc

    def initial_columns(self, x: np.ndarray) -> np.ndarray:
        """d X0 / d x: (W, K, n), the windows' initial values' derivatives w.r.t. the unknowns."""
        W, K = len(self.windows), self.K
        out = np.zeros((W, K, self.n))
        lo = self.P
        free = np.flatnonzero(self.free)
        for i, w in enumerate(free):
            out[w, :, lo + i * K: lo + (i + 1) * K] = np.eye(K)
        lo += len(free) * K
        if self.encoder:
            _, _, enc = self.unpack(x)
            for n, d in self.encoder.jacobian(enc, self.z).items():
                size = math.prod(self.enc_shapes[n])
                out[:, :, lo:lo + size] = d.reshape(W, K, size)
                lo += size
        return out

    def labels(self) -> list[str]:
        """A name for every entry of the flat vector."""
        out = []
        for p, shape in self.shapes.items():
            out += [p] if not shape else [f"{p}[{','.join(map(str, i))}]" for i in np.ndindex(shape)]
        state_labels = [f"{s}" + (f"[{','.join(map(str, i))}]" if shape[1:] or shape[0] > 1 else "")
                        for s, shape in self.entries.items() for i in np.ndindex(shape)]
        for w in np.flatnonzero(self.free):
            seq, start = self.windows.seq[w], self.windows.start[w]
            out += [f"{lab}(0) seq {seq}" + (f" step {start}" if start else "") for lab in state_labels]
        for n, shape in self.enc_shapes.items():
            out += [f"encoder.{n}[{','.join(map(str, i))}]" for i in np.ndindex(shape)]
        return out

    def bounds(self, bounds: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """{parameter: (low, high)} as arrays over the flat vector (initial states unbounded)."""
        lb, ub = np.full(self.n, -np.inf), np.full(self.n, np.inf)
        lo = 0
        for p, shape in self.shapes.items():
            size = math.prod(shape)
            if bounds and p in bounds:
                pair = bounds[p]
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise GraphcompError(f"bounds[{p!r}] must be a pair (low, high), got {pair!r}; "
                                         "use None for no bound")
                low = -np.inf if pair[0] is None else pair[0]
                high = np.inf if pair[1] is None else pair[1]
                lb[lo:lo + size] = np.broadcast_to(np.asarray(low, float), shape).ravel()
                ub[lo:lo + size] = np.broadcast_to(np.asarray(high, float), shape).ravel()
                if np.any(lb[lo:lo + size] >= ub[lo:lo + size]):
                    raise GraphcompError(f"bounds[{p!r}] = {pair!r}: the lower bound must be below the upper one")
            lo += size
        unknown = [p for p in (bounds or {}) if p not in self.shapes]
        if unknown:
            raise GraphcompError(f"bounds names unknown parameters {unknown}; the model's are {list(self.shapes)}")
        return lb, ub

    # ------------------------------------------------------------ continuity
    def ends(self, states: dict, X0: np.ndarray) -> np.ndarray:
        """Each window's last values of its states, (W, K), from ``forward``'s states (Tw, W, ...)."""
        return last_values(self.entries, self.windows.length, states, self.initial(X0))

    def gaps(self, ends: np.ndarray, X0: np.ndarray) -> np.ndarray:
        """x0 of each following window minus the last values of the window before: (pairs, K)."""
        return X0[self.windows.following[self.pairs]] - ends[self.pairs]


def last_values(entries: dict, lengths: np.ndarray, states: dict, initial: dict) -> np.ndarray:
    """The last k values of each state of ``entries`` {state: (k, *shape)} in each of B runs of
    ``lengths`` steps, flat (B, K): from ``forward``'s states (T, B, ...) and, for a run
    shorter than k, its ``initial`` values (k, B, ...)."""
    B = len(lengths)
    out, cols = [], np.arange(B)
    for s, shape in entries.items():
        k = shape[0]
        run = np.concatenate([initial[s], states[s]])                   # (k + T, B, ...)
        rows = lengths[None, :] + np.arange(k)[:, None]
        out.append(np.moveaxis(run[rows, cols[None, :]], 1, 0).reshape(B, -1))
    return np.concatenate(out, axis=1) if out else np.zeros((B, 0))
