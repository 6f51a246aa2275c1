"""Training loops around a compiled kernel: minibatches of variable-length sequences,
an optimizer, clipping, truncated BPTT, early stopping, progress and checkpoints."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .epoch import Epoch
from ..errors import Diverged, GraphcompError, NotFinite, is_count
from ..kernel import Kernel, compile
from ..grad.methods import check_cuttable
from ..check import warn_if_batch_major
from .optim import Adam, Optimizer, clip

if TYPE_CHECKING:
    from distributed import Client

COMPILED_EPOCH_UPDATES = 5000   # compiled="auto": from this many updates in one fit, compile the epoch


@dataclass
class History:
    """Per epoch: the mean loss per sequence on the training data (while training) and on
    the validation data, the learning rate at the epoch's end, and seconds taken."""
    loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    stopped: str = ""   # why training stopped before its last epoch, if it did

    def plot(self, ax=None, *, log: bool = True):
        """The training (and validation) loss against the epochs, on a log scale unless
        ``log=False``, drawn with matplotlib on ``ax`` (None: a new figure). Returns the axes."""
        from ..forecast.plot import pyplot
        if ax is None:
            _, ax = pyplot().subplots(figsize=(6, 3.5))
        epochs = np.arange(1, len(self.loss) + 1)
        ax.plot(epochs, self.loss, label="training loss")
        if self.val_loss:
            ax.plot(np.arange(1, len(self.val_loss) + 1), self.val_loss, label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean loss per sequence")
        if log and self.loss and min(self.loss + self.val_loss) > 0:
            ax.set_yscale("log")
        ax.legend()
        return ax


@dataclass
class Sequences:
    """Padded time-major arrays {name: (T, N, ...)} and each sequence's length (N,)."""
    arrays: dict
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index: np.ndarray) -> tuple[dict, np.ndarray]:
        lengths = self.lengths[index]
        T = int(lengths.max())
        return {n: a[:T, index] for n, a in self.arrays.items()}, lengths


def sequences(data, lengths=None, batch_first: bool = False) -> Sequences:
    """Training data as ``Sequences``: a dict of padded arrays ``(T, N, ...)`` (``(N, T, ...)``
    with ``batch_first``; optional ``lengths`` (N,)), or a list of sequences, each a dict of
    arrays ``(T_i, ...)``."""
    if isinstance(data, Sequences):
        return data
    if isinstance(data, dict):
        arrays = {n: np.asarray(a) for n, a in data.items()}
        if not arrays:
            raise GraphcompError("the data holds no arrays: pass {name: array (T, N, ...)}")
        T, N = _time_batch(arrays, batch_first)
        if batch_first:
            arrays = {n: np.swapaxes(a, 0, 1) for n, a in arrays.items()}
        lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
        if lengths.shape != (N,) or lengths.min() < 1 or lengths.max() > T:
            flipped = T != N and lengths.shape == (T,) and not batch_first   # one length per row of the first axis
            hint = "; if the arrays are (N, T, ...), pass batch_first=True" if flipped else ""
            raise GraphcompError(f"lengths must be ({N},) integers in 1..{T} for data of {N} sequences of {T} steps "
                                 f"({'(N, T, ...) with batch_first=True' if batch_first else 'time-major (T, N, ...)'}), "
                                 f"got {lengths!r}{hint}")
        if lengths.min() < T and T == N:
            warn_if_batch_major(arrays, lengths, stacklevel=3)
        return Sequences(arrays, lengths.astype(np.int64))
    if isinstance(data, (list, tuple)):
        if lengths is not None:
            raise GraphcompError("lengths are taken from a list of sequences; pass lengths only with padded arrays")
        if not data or not all(isinstance(s, dict) and s for s in data):
            raise GraphcompError("a list of sequences must hold dicts {name: array (T_i, ...)}, at least one")
        names = set(data[0])
        for i, s in enumerate(data):
            if set(s) != names:
                raise GraphcompError(f"sequence {i} has arrays {sorted(s)}, sequence 0 has {sorted(names)}")
        lens = np.array([len(np.asarray(next(iter(s.values())))) for s in data])
        for i, s in enumerate(data):
            for n, a in s.items():
                if len(np.asarray(a)) != lens[i]:
                    raise GraphcompError(f"sequence {i}: {n!r} has {len(np.asarray(a))} steps, "
                                         f"{next(iter(s))!r} has {lens[i]}; give every array the same length")
        if lens.min() < 1:
            raise GraphcompError(f"sequence {int(np.argmin(lens))} is empty; every sequence needs a step")
        arrays = {}
        for n in names:
            first = np.asarray(data[0][n], np.float64)
            a = np.zeros((lens.max(), len(data)) + first.shape[1:])
            for i, s in enumerate(data):
                a[:lens[i], i] = s[n]
            arrays[n] = a
        return Sequences(arrays, lens)
    raise GraphcompError(f"data must be a dict of padded arrays or a list of sequences, got {type(data).__name__}")


def _time_batch(arrays: dict, batch_first: bool) -> tuple[int, int]:
    shapes = {n: a.shape[:2] for n, a in arrays.items()}
    if any(len(s) < 2 for s in shapes.values()) or len(set(shapes.values())) > 1:
        layout = "(N, T) with batch_first=True" if batch_first else \
            "time-major (T, N); for (N, T, ...) arrays pass batch_first=True"
        raise GraphcompError(f"padded arrays must share their first two axes, {layout}; got {shapes}")
    first, second = next(iter(shapes.values()))
    return (second, first) if batch_first else (first, second)


def model_hash(kernel: Kernel) -> str:
    """A model's identity for checkpoints: a hash of its step IR and parameter shapes."""
    step = kernel.program
    text = step.pretty() + repr(sorted(step.params.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Trainer:
    """Fits a model's parameters to data: ``Trainer(model, optimizer=gc.optim.Adam(1e-2))``,
    then ``trainer.fit(params, data, epochs=10, batch_size=32)``.

    ``clip_norm``/``clip_value`` clip the minibatch gradient (global L2 norm / each value);
    ``train`` names the parameters to train (the others stay fixed); ``tbptt=(k1, k2)`` is
    truncated BPTT: every k1 steps of a minibatch, an update with the gradient of those k1
    steps' losses backpropagated through at most the last k2 steps (k2 ≥ k1), the state
    carried across (``tbptt=k`` means k1 = k2 = k: chunks of k steps); ``progress`` shows a bar with the loss and minibatches
    per second; ``callback(epoch, history)`` runs after each epoch and stops training if it
    returns True. ``compiled=True`` runs each epoch's minibatches in one compiled function
    (no Python work per minibatch: the win for small models, after a compile of a few
    seconds, cached on disk); ``"auto"`` does so when a fit makes at least
    ``COMPILED_EPOCH_UPDATES`` updates; tbptt runs in Python. ``dtype`` compiles a model given
    as equations ("float32" or "float64"); ``trainer.params`` come back in the kernel's dtype.

    ``client`` (a ``dask.distributed.Client``) trains data-parallel on that cluster: the workers
    hold shards of the data and compute their part of every minibatch's loss and gradient, the
    same updates as one process (to rounding); ``average_every=k`` instead trains a copy on
    every worker and averages the parameters every k updates (local SGD). See ``gc.scale``."""

    def __init__(self, model, optimizer: Optimizer | None = None, *, clip_norm: float | None = None,
                 clip_value: float | None = None, train: list | None = None, tbptt: int | tuple | None = None,
                 dtype: str = "float64", progress: bool = True, callback: Callable | None = None,
                 compiled: bool | str = "auto", client: "Client | None" = None, average_every: int | None = None):
        self.kernel = model if isinstance(model, Kernel) else compile(model, dtype=dtype)
        step = self.kernel.program
        if step.loss is None:
            raise GraphcompError("the model has no loss to train: pass loss=... to gc.Recurrence")
        self.optimizer = optimizer or Adam(1e-3)
        for what, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and not v > 0:
                raise GraphcompError(f"{what} must be a positive number, got {v!r}")
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.train = list(step.params) if train is None else list(train)
        unknown = [p for p in self.train if p not in step.params]
        if unknown:
            raise GraphcompError(f"train names unknown parameters {unknown}; the model's are {list(step.params)}")
        if tbptt is not None:
            tbptt = (tbptt, tbptt) if is_count(tbptt) else tbptt
            if not (isinstance(tbptt, tuple) and len(tbptt) == 2 and all(map(is_count, tbptt))):
                raise GraphcompError(f"tbptt must be a positive number of steps k or a pair (k1, k2), got {tbptt!r}")
            if tbptt[1] < tbptt[0]:
                raise GraphcompError(f"tbptt=(k1, k2) backpropagates each update's k1 steps through the last k2, "
                                     f"so k2 must be at least k1; got k1={tbptt[0]}, k2={tbptt[1]}")
            check_cuttable(step, "tbptt", "train it without tbptt")
        if compiled not in (True, False, "auto"):
            raise GraphcompError(f"compiled must be True, False or 'auto', got {compiled!r}")
        if compiled is True and (tbptt is not None or self.kernel.backend != "numba"):
            why = "tbptt runs in Python" if tbptt is not None else f"the {self.kernel.backend!r} backend has none"
            raise GraphcompError(f"compiled=True cannot be: {why}; use compiled='auto' or False")
        self.tbptt, self.progress, self.callback, self.compiled = tbptt, progress, callback, compiled
        self._epoch: Epoch | None = None
        self._params: dict | None = None   # float64 master copies, updated in place
        self.state: dict | None = None   # the optimizer's slots
        self.steps = 0                   # updates so far
        self.initial: dict | None = None         # learned initial states (fit(learn_initial=..., shooting=...))
        self.window_initial: dict | None = None  # under shooting, every window's
        self.encoder: dict | None = None         # the encoder's parameters (fit(encoder=...))
        self._cluster = None   # data-parallel on a Dask cluster (gc.scale.parallel)
        if client is not None or average_every is not None:
            from ..scale.parallel import DataParallel
            self._cluster = DataParallel(client, self, average_every)

    @property
    def params(self) -> dict | None:
        """The trained parameters, in the kernel's dtype. The trainer updates float64 master
        copies (an update too small for float32 still counts); a float32 trainer hands back
        float32 copies of them."""
        if self._params is None or self.kernel.dtype == np.float64:
            return self._params
        return {p: v.astype(self.kernel.dtype) for p, v in self._params.items()}

    # ------------------------------------------------------------ fitting
    def fit(self, params: dict | None, data, epochs: int = 1, batch_size: int = 32, *, lengths=None,
            validation=None, patience: int | None = None, seed: int = 0, batch_first: bool = False,
            learn_initial: bool = False, shooting: int | None = None, continuity=1.0, encoder=None,
            initial: dict | None = None) -> History:
        """Train for ``epochs`` passes over ``data`` in shuffled minibatches of ``batch_size``
        sequences of similar length. ``params=None`` continues from the trainer's parameters
        and optimizer state (after ``fit`` or ``load``). ``validation`` (data in the same forms)
        is evaluated after each epoch; with ``patience`` training stops when it has not
        improved for that many epochs and the best parameters are kept. ``batch_first=True``:
        padded arrays (of ``data`` and ``validation``) are ``(N, T, ...)``. The trained
        parameters are in ``trainer.params``.

        Initial states (see ``gc.least_squares``): ``learn_initial=True`` learns each sequence's
        (``initial`` the starting guess); ``shooting=k`` trains on windows of k steps, each with
        its own learned initial state, adding ``continuity`` (a weight, or a function epoch ->
        weight) times ‖gap‖² between a window's initial state and the end of the one before;
        ``encoder=m`` estimates them from the m steps before each window. They come back in
        ``trainer.initial``, ``trainer.window_initial`` and ``trainer.encoder``; these epochs run
        in Python, and validation sequences start from zero states (or the encoder's)."""
        if learn_initial or shooting is not None or encoder is not None:
            if self._cluster is not None:
                raise GraphcompError("learned initial states train in one process: make the Trainer without client=")
            from ..fit.train import fit_windows
            return fit_windows(self, params, data, epochs, batch_size, lengths=lengths, validation=validation,
                               patience=patience, seed=seed, batch_first=batch_first, learn_initial=learn_initial,
                               shooting=shooting, continuity=continuity, encoder=encoder, initial=initial)
        if params is None:
            if self._params is None:
                raise GraphcompError("no parameters to continue from: pass params, or load a checkpoint first")
        else:
            names = list(self.kernel.program.params)
            missing, unknown = [p for p in names if p not in params], [p for p in params if p not in names]
            if missing or unknown:
                raise GraphcompError(f"params must hold the model's parameters {names}: "
                                     + (f"missing {missing}" if missing else f"unknown {unknown}"))
            self._params = {p: np.array(v, np.float64) for p, v in params.items()}
            self.state, self.steps = None, 0
        if self.state is None:
            self.state = self.optimizer.init({p: self._params[p] for p in self.train})
        data = sequences(data, lengths, batch_first)
        if self._cluster is not None:   # the workers' shards of the data, sent once per fit
            self._cluster.place(data)
        val = None if validation is None else sequences(validation, batch_first=batch_first)
        if patience is not None and val is None:
            raise GraphcompError("patience stops on the validation loss: pass validation=... too")
        if not is_count(batch_size):
            raise GraphcompError(f"batch_size must be a positive integer, got {batch_size!r}")
        history, best = History(), (np.inf, None)
        rng = np.random.default_rng(seed)
        batches_per_epoch = -(-len(data) // batch_size)
        runner = self._compiled_epoch(epochs * batches_per_epoch)
        arrays = None if runner is None else runner.data(self._params, data)
        bar = _bar(epochs * batches_per_epoch, self.progress)
        try:
            for epoch in range(epochs):
                start, total, seen = time.perf_counter(), 0.0, 0
                batches = _minibatches(data.lengths, batch_size, rng)
                if runner is not None:   # all of them in compiled code, but one that fails
                    losses, done, prev = runner.run(self._params, self.state, arrays, data.lengths, batches,
                                                    self.steps, self.clip_norm, self.clip_value)
                    self.steps += done
                    if done:
                        self._last_good = prev
                    total = float(np.dot(losses, [len(b) for b in batches[:done]]))
                    seen = sum(len(b) for b in batches[:done])
                    if bar is not None:
                        bar.update(done)
                    batches = batches[done:]   # the Python loop reports a failure in its terms
                if self._cluster is not None and self._cluster.every:   # local SGD: rounds on the workers
                    total, seen, batches = self._cluster.local_epoch(self, batches, epoch, bar), len(data), []
                for index in batches:
                    batch = data.batch(index) if self._cluster is None else ({}, data.lengths[index])   # on the workers
                    total += self._update(*batch, epoch, index) * len(index)
                    seen += len(index)
                    if bar is not None:   # the epoch's mean loss per sequence so far
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.4g}", refresh=False)
                history.loss.append(total / len(data))
                history.lr.append(self.optimizer.rate(max(self.steps - 1, 0)))
                history.seconds.append(time.perf_counter() - start)
                if val is not None:
                    history.val_loss.append(self.evaluate(val))
                    if bar is not None:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{history.loss[-1]:.4g}",
                                        val=f"{history.val_loss[-1]:.4g}")
                    if history.val_loss[-1] < best[0]:
                        best = (history.val_loss[-1], _copy(self._params), epoch)
                    elif patience is not None and epoch - best[2] >= patience:
                        self._params = best[1]
                        history.stopped = (f"validation loss did not improve for {patience} epochs; "
                                           f"kept the parameters of epoch {best[2] + 1}")
                        break
                if self.callback is not None and self.callback(epoch, history):
                    history.stopped = f"the callback stopped training after epoch {epoch + 1}"
                    break
        finally:
            if bar is not None:
                bar.close()
        return history

    def _compiled_epoch(self, updates: int):
        """The compiled epoch, if this fit uses one (built once per trainer)."""
        use = self.compiled is True or (self.compiled == "auto" and self.tbptt is None and self._cluster is None and
                                        self.kernel.backend == "numba" and updates >= COMPILED_EPOCH_UPDATES)
        if use and (self._epoch is None or self._epoch.train != self.train):
            self._epoch = Epoch(self.kernel, self.optimizer, self.train)
        return self._epoch if use else None

    def evaluate(self, data, params: dict | None = None, batch_size: int = 256, *, lengths=None,
                 batch_first: bool = False) -> float:
        """The mean loss per sequence over ``data`` (in the forms ``fit`` takes)."""
        data, params = sequences(data, lengths, batch_first), self._params if params is None else params
        total = 0.0
        for index in np.array_split(np.argsort(data.lengths), -(-len(data) // batch_size)):
            inputs, lengths = data.batch(index)
            loss, _ = self.kernel.loss_and_grad(params, inputs, lengths=lengths)
            total += float(loss) * len(index)
        return total / len(data)

    def _update(self, inputs: dict, lengths: np.ndarray, epoch: int, index: np.ndarray | None = None) -> float:
        """One minibatch (the sequences ``index``): loss and gradient (by windows under tbptt),
        clipping, an update per gradient. Returns the minibatch's mean loss per sequence."""
        T, B = int(lengths.max()), len(lengths)
        k1, k2 = self.tbptt or (T, T)
        loss, state, start = 0.0, None, 0   # state: every delayed signal's history at step `start`
        for lo in range(0, T, k1):
            hi = min(lo + k1, T)   # this update's losses are those of steps lo..hi-1
            live = np.flatnonzero(lengths > lo)                # sequences with losses in them
            rows = slice(None) if len(live) == B else live     # all of them: views, not copies
            window = {n: a[start:hi][:, rows] for n, a in inputs.items()}
            steps = np.minimum(lengths[live], hi) - start
            initial = None if state is None else {n: a[:, live] for n, a in state.items()}
            part, grads = self._loss_and_grad(window, steps, initial, epoch, index)
            if lo > start:   # the window's first steps only carry the state: take their losses out
                head = {n: a[:lo - start] for n, a in window.items()}
                before, g = self._loss_and_grad(head, np.minimum(steps, lo - start), initial, epoch)
                part -= before
                grads = {p: grads[p] - g[p] for p in self.train}
            share = len(live) / B   # the window's part of the minibatch's mean
            loss += part * share
            grads = {p: np.array(grads[p], np.float64) for p in self.train}   # 0-d arrays stay arrays
            for g in grads.values():
                g *= share
            clip(grads, self.clip_norm, self.clip_value)
            nxt = max(min(hi + k1, T) - k2, 0)   # where the next window starts
            if hi < T and nxt > start:   # its state, under the parameters this window ran with
                head = {n: a[:nxt - start] for n, a in window.items()}
                state = self._carry(head, np.minimum(steps, nxt - start), initial, state, live, B)
                start = nxt
            self._last_good = _copy(self._params)
            self.optimizer.update(self._params, grads, self.state, self.steps)
            self.steps += 1
        return loss

    def _loss_and_grad(self, inputs, lengths, initial, epoch, index=None):
        try:
            if self._cluster is not None:   # the workers' parts of the minibatch, combined
                loss, grads = self._cluster.loss_and_grad(self._params, index)
            else:
                loss, grads = self.kernel.loss_and_grad(self._params, inputs, lengths=lengths, initial=initial)
        except NotFinite as e:
            if self.steps == 0:
                raise
            self._params = self._last_good
            raise Diverged.during(epoch, self.steps, e) from None
        return float(loss), grads

    def _carry(self, chunk, steps, initial, state, live, B) -> dict:
        """The history every delayed signal needs at the next chunk's first step: its last
        values in this chunk (a sequence that ended keeps its final values)."""
        program = self.kernel.program
        out = self.kernel.forward(self._params, chunk, lengths=steps, initial=initial)
        new = {} if state is None else dict(state)
        for name, info in program.signals.items():
            h = info.history
            if not h:
                continue
            values = out[name] if info.role == "state" else chunk[name]
            if name not in new:
                new[name] = np.zeros((h, B) + values.shape[2:])
            past = np.concatenate([new[name][:, live], values])   # (h + k, live, ...)
            ends = h + steps                                      # one past each sequence's last step
            rows = ends[None, :] - h + np.arange(h)[:, None]      # its last h rows
            new[name][:, live] = np.take_along_axis(past, rows.reshape(rows.shape + (1,) * (past.ndim - 2)), 0)
        return new

    # ------------------------------------------------------------ checkpoints
    def save(self, path) -> Path:
        """Write the parameters, the optimizer's state and configuration and the model's hash
        to one ``.npz`` file, atomically (a crash leaves the previous file whole)."""
        if self._params is None:
            raise GraphcompError("nothing to save yet: fit the model first")
        path = Path(path)
        meta = {"model": model_hash(self.kernel), "optimizer": self.optimizer.config(), "steps": self.steps,
                "train": self.train}
        arrays = {f"param/{p}": v for p, v in self._params.items()}
        arrays.update({f"slot/{p}/{s}": a for p, slots in (self.state or {}).items() for s, a in slots.items()})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
        return path

    def load(self, path) -> dict:
        """Read a checkpoint written by ``save`` for this model; ``fit(None, ...)`` then
        continues from it. Returns the parameters."""
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {k: f[k] for k in f.files if k != "meta"}
        except (OSError, KeyError, ValueError) as e:
            raise GraphcompError(f"{path} is not a graphcomp checkpoint ({e})") from None
        if meta["model"] != model_hash(self.kernel):
            raise GraphcompError(f"{path} was saved from a different model (hash {meta['model']}, this model's is "
                                 f"{model_hash(self.kernel)}): load it into the model it was trained with")
        if meta["optimizer"]["name"] != type(self.optimizer).__name__:
            raise GraphcompError(f"{path} holds the state of {meta['optimizer']['name']}, this trainer uses "
                                 f"{type(self.optimizer).__name__}: use the same optimizer to continue")
        self._params = {k.split("/", 1)[1]: np.array(v, np.float64) for k, v in arrays.items() if k.startswith("param/")}
        self.state = {}
        for k, v in arrays.items():
            if k.startswith("slot/"):
                _, p, s = k.split("/")
                self.state.setdefault(p, {})[s] = v
        self.train, self.steps = meta["train"], meta["steps"]
        return self.params


def _minibatches(lengths: np.ndarray, batch_size: int, rng) -> list:
    """Shuffled minibatches of sequences of similar length: shuffle, sort windows of 8
    minibatches by length, cut them, and shuffle the minibatches' order."""
    order = rng.permutation(len(lengths))
    window = 8 * batch_size
    batches = []
    for w in range(0, len(order), window):
        part = order[w:w + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _copy(params: dict) -> dict:
    return {p: np.array(v) for p, v in params.items()}


def _bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="batch", dynamic_ncols=True, leave=True)
