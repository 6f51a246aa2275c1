"""Training loops around a compiled kernel: minibatches of variable-length sequences,
an optimizer, clipping, truncated BPTT, early stopping, progress and checkpoints."""
from __future__ import annotations

import hashlib
import json
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from . import checkpoint
from .epoch import Epoch
from .grids import Grids, grids
from .trees import Trees, trees
from ..errors import Diverged, GraphcompError, NotFinite, is_count
from ..kernel import Kernel, compile
from ..grad.methods import check_cuttable
from ..check import sums_finite, warn_if_batch_major
from .optim import Adam, Optimizer, clip

if TYPE_CHECKING:
    from distributed import Client

COMPILED_EPOCH_UPDATES = 3000   # compiled="auto": from this many updates in one fit, compile the epoch


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

    @property
    def key(self) -> np.ndarray:
        """The order that puts sequences of similar length together."""
        return self.lengths

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


def examples(step, data, lengths=None, batch_first: bool = False) -> Sequences | Grids | Trees:
    """Training data for the model ``step`` in the forms ``Trainer.fit`` takes: sequences,
    images over a grid model's axes, or trees."""
    if not (step.grid or step.tree):
        return sequences(data, lengths, batch_first)
    if batch_first:
        layout = f"({', '.join(str(a).upper() for a in step.axes)}, N, ...)" if step.grid else "(N, B, ...)"
        raise GraphcompError(f"batch_first is for sequences; {'grid' if step.grid else 'tree'} data is "
                             f"{'index' if step.grid else 'node'}-major {layout}: drop batch_first")
    return grids(data, lengths, step.axes) if step.grid else trees(data, lengths)


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
    found = _HASHES.get(kernel)
    if found is None:
        step = kernel.program
        text = step.pretty() + repr(sorted(step.params.items()))
        found = _HASHES[kernel] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return found


_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # kernel -> model_hash, computed once


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
            if step.grid:
                raise GraphcompError("tbptt cuts sequences into windows of steps; a grid model trains on whole "
                                     "images: drop tbptt")
            check_cuttable(step, "tbptt", "train it without tbptt")
        if compiled not in (True, False, "auto"):
            raise GraphcompError(f"compiled must be True, False or 'auto', got {compiled!r}")
        if compiled is True and (tbptt is not None or self.kernel.backend != "numba" or step.grid or step.tree):
            why = "tbptt runs in Python" if tbptt is not None else \
                "the compiled epoch runs sequences, not grids or trees" if step.grid or step.tree else \
                f"the {self.kernel.backend!r} backend has none"
            raise GraphcompError(f"compiled=True cannot be: {why}; use compiled='auto' or False")
        self.tbptt, self.progress, self.callback, self.compiled = tbptt, progress, callback, compiled
        self._epoch: Epoch | None = None
        self._params: dict | None = None   # float64 master copies, updated in place
        self.state: dict | None = None   # the optimizer's slots
        self.steps = 0                   # updates so far
        self.initial: dict | None = None         # learned initial states (fit(learn_initial=..., shooting=...))
        self.window_initial: dict | None = None  # under shooting, every window's
        self.encoder: dict | None = None         # the encoder's parameters (fit(encoder=...))
        self._good: tuple | None = None  # (params, state, steps) before the last update: kept on divergence
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
            initial: dict | None = None, checkpoint=None, every: int | None = None,
            resume: bool = False) -> History:
        """Train for ``epochs`` passes over ``data`` in shuffled minibatches of ``batch_size``
        sequences of similar length. ``params=None`` continues from the trainer's parameters
        and optimizer state (after ``fit`` or ``load``). ``validation`` (data in the same forms)
        is evaluated after each epoch; with ``patience`` training stops when it has not
        improved for that many epochs and the best parameters are kept. ``batch_first=True``:
        padded arrays (of ``data`` and ``validation``) are ``(N, T, ...)``. The trained
        parameters are in ``trainer.params``. A grid model trains on images: a dict of padded
        index-major arrays ``(I, J, N, ...)`` with ``lengths=(heights, widths)``, or a list of
        examples, each a dict of arrays ``(I_n, J_n, ...)``; minibatches hold images of similar
        size, and the loss is the mean per image. A tree model trains on trees: a list of trees,
        each a dict of node-major arrays ``(n, ...)`` and its ``"children"`` ``(n, K)``, or a
        dict of padded arrays ``(N, B, ...)`` and ``"children"`` ``(N, B, K)`` with ``lengths``
        (node counts); minibatches hold trees of similar size, and the loss is the mean per tree.

        Initial states (see ``gc.least_squares``): ``learn_initial=True`` learns each sequence's
        (``initial`` the starting guess); ``shooting=k`` trains on windows of k steps, each with
        its own learned initial state, adding ``continuity`` (a weight, or a function epoch ->
        weight) times ‖gap‖² between a window's initial state and the end of the one before;
        ``encoder=m`` estimates them from the m steps before each window. They come back in
        ``trainer.initial``, ``trainer.window_initial`` and ``trainer.encoder``; these epochs run
        in Python, and validation sequences start from zero states (or the encoder's).
        ``checkpoint=path`` saves the fit there every ``every`` updates (None: after every
        epoch; under tbptt, at the end of the minibatch the update falls in) and at its end.
        ``resume=True`` continues the fit saved there, if there is one, else starts it: a fit
        killed at any moment and resumed ends with the same parameters, to the last bit, as
        one never interrupted (same arguments, same seed)."""
        if learn_initial or shooting is not None or encoder is not None:
            if self._cluster is not None:
                raise GraphcompError("learned initial states train in one process: make the Trainer without client=")
            if self.kernel.program.grid or self.kernel.program.tree:
                raise GraphcompError("learn_initial, shooting and encoder are for sequences; a grid or tree model's "
                                     "reads outside an image or tree see zeros or initial={state: (B, n)}: drop them")
            if checkpoint is not None:
                raise GraphcompError("checkpoints cover fits of the parameters alone; with learn_initial, shooting or "
                                     "encoder, save the trainer after fit instead")
            from ..fit.train import fit_windows
            return fit_windows(self, params, data, epochs, batch_size, lengths=lengths, validation=validation,
                               patience=patience, seed=seed, batch_first=batch_first, learn_initial=learn_initial,
                               shooting=shooting, continuity=continuity, encoder=encoder, initial=initial)
        if checkpoint is None and (every is not None or resume):
            raise GraphcompError("every and resume are about checkpoints: pass checkpoint='run.npz' too")
        if every is not None and not is_count(every):
            raise GraphcompError(f"every must be a positive number of updates, got {every!r}")
        if checkpoint is not None and not Path(checkpoint).parent.is_dir():
            raise GraphcompError(f"checkpoint={str(checkpoint)!r}: there is no folder {Path(checkpoint).parent} to "
                                 "write it in; create it first")
        saved = self._saved_fit(checkpoint) if resume else None
        if params is None and self._params is None and saved is None:
            raise GraphcompError("no parameters to continue from: pass params, or load a checkpoint first")
        start = None if params is None else self._start(params)
        data = self._data(data, lengths, batch_first)
        if self._cluster is not None:   # the workers' shards of the data, sent once per fit
            self._cluster.place(data)
        val = None if validation is None else self._data(validation, None, batch_first)
        if patience is not None and val is None:
            raise GraphcompError("patience stops on the validation loss: pass validation=... too")
        if not is_count(batch_size):
            raise GraphcompError(f"batch_size must be a positive integer, got {batch_size!r}")
        plan = None if checkpoint is None else self._plan(start, data, val, batch_size, seed, patience)
        run = _Run(History(), np.random.default_rng(seed))
        if saved is not None:
            run = self._resume(checkpoint, saved, plan, run.rng)
        elif start is not None:
            self._params, self.state, self.steps, self._good = start, None, 0, None
        if self.state is None:
            self.state = self.optimizer.init({p: self._params[p] for p in self.train})
        history, rng = run.history, run.rng
        batches_per_epoch = -(-len(data) // batch_size)
        runner = self._compiled_epoch(epochs * batches_per_epoch)
        arrays = None if runner is None else runner.data(self._params, data)
        bar = _bar(epochs * batches_per_epoch, self.progress)
        if bar is not None:
            bar.update(min(run.epoch, epochs) * batches_per_epoch + run.batch)
        try:
            for epoch in range(run.epoch, 0 if history.stopped else epochs):
                clock = time.perf_counter()
                if epoch != run.epoch or run.begin is None:   # else resumed within it
                    run.start(epoch, rng)
                batches = _minibatches(data.key, batch_size, rng)
                self._run_epoch(epoch, batches, data, run, runner, arrays, (checkpoint, every, plan), bar)
                history.loss.append(run.total / len(data))
                history.lr.append(self.optimizer.rate(max(self.steps - 1, 0)))
                history.seconds.append(time.perf_counter() - clock)
                if val is not None:
                    history.val_loss.append(self._validate(val, epoch, run))
                    if bar is not None:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{history.loss[-1]:.4g}",
                                        val=f"{history.val_loss[-1]:.4g}")
                    if history.val_loss[-1] < run.best_loss:
                        run.best_loss, run.best, run.best_epoch = history.val_loss[-1], _copy(self._params), epoch
                    elif patience is not None and epoch - run.best_epoch >= patience:
                        self._params = run.best
                        history.stopped = (f"validation loss did not improve for {patience} epochs; "
                                           f"kept the parameters of epoch {run.best_epoch + 1}")
                if not history.stopped and self.callback is not None and self.callback(epoch, history):
                    history.stopped = f"the callback stopped training after epoch {epoch + 1}"
                if history.stopped:
                    break
                if checkpoint is not None and every is None and epoch + 1 < epochs:
                    run.start(epoch + 1, rng)
                    self._save(checkpoint, run, plan)
        finally:
            if bar is not None:
                bar.close()
        if checkpoint is not None:
            run.start(len(history.loss), rng)
            self._save(checkpoint, run, plan)
        return history

    def _run_epoch(self, epoch: int, batches: list, data: "Sequences | Grids | Trees", run: "_Run", runner, arrays, keep: tuple,
                   bar) -> None:
        """Train on the epoch's minibatches from ``run.batch`` on, adding to ``run``'s totals;
        ``keep = (checkpoint, every, plan)`` saves the fit every ``every`` updates. The compiled
        epoch runs up to the next checkpoint; a minibatch it cannot finish runs in Python, which
        reports the failure in its terms."""
        path, every, plan = keep
        saved = self.steps
        while run.batch < len(batches):
            todo, losses, ran = batches[run.batch:], [], 0
            if runner is not None:
                todo = todo[:every - self.steps % every] if every else todo
                losses, ran, good = runner.run(self._params, self.state, arrays, data.lengths, todo, self.steps,
                                               self.clip_norm, self.clip_value)
                self.steps, self._good = self.steps + ran, good or self._good
            if not ran and self._cluster is not None and self._cluster.every:   # local SGD: a round on the workers
                todo = todo[:self._cluster.every]
                losses, ran = self._cluster.local_round(self, todo, epoch), len(todo)
            elif not ran and self._cluster is not None:   # the minibatch's data is on the workers
                losses, ran = [self._update({}, data.lengths[todo[0]], epoch, todo[0])], 1
            elif not ran:
                losses, ran = [self._update(*data.batch(todo[0]), epoch)], 1
            for loss, index in zip(losses, todo[:ran]):
                run.total, run.seen = run.total + loss * len(index), run.seen + len(index)
            run.batch += ran
            if bar is not None:   # the epoch's mean loss per sequence so far
                bar.update(ran)
                bar.set_postfix(epoch=epoch + 1, loss=f"{run.total / run.seen:.4g}", refresh=False)
            if every and self.steps // every > saved // every:
                self._save(path, run, plan)
                saved = self.steps

    def _start(self, params: dict) -> dict:
        """The parameters a fit starts from, as float64 copies, every one of the model's named."""
        names = list(self.kernel.program.params)
        if not isinstance(params, Mapping):
            raise GraphcompError(f"params must be a dict name -> array, got {type(params).__name__}")
        missing, unknown = [p for p in names if p not in params], [p for p in params if p not in names]
        if missing or unknown:
            raise GraphcompError(f"params must hold the model's parameters {names}: "
                                 + (f"missing {missing}" if missing else f"unknown {unknown}"))
        try:
            return {p: np.array(v, np.float64) for p, v in params.items()}
        except (TypeError, ValueError) as e:
            raise GraphcompError(f"params must hold real numbers or arrays of them: {e}") from None

    def _plan(self, start, data: Sequences, val, batch_size: int, seed: int, patience) -> dict:
        """What makes a fit the fit it is: resumed with other data, settings or starting
        parameters it would be another one (the number of epochs may grow)."""
        return {"start": None if start is None else _digest(start), "data": _digest(_arrays(data), data.lengths),
                "validation": None if val is None else _digest(_arrays(val), val.lengths), "batch_size": batch_size,
                "seed": seed, "patience": patience, "train": self.train, "clip_norm": self.clip_norm,
                "clip_value": self.clip_value, "tbptt": None if self.tbptt is None else list(self.tbptt)}

    def _validate(self, val: Sequences, epoch: int, run) -> float:
        try:
            return self.evaluate(val)
        except NotFinite as e:
            kept = "after that epoch"
            if run.best is not None:
                self._params, kept = run.best, f"of epoch {run.best_epoch + 1}, the best on the validation data"
            raise Diverged(f"training diverged in epoch {epoch + 1} on the validation data: {e}. trainer.params "
                           f"holds the parameters {kept}; lower the learning rate or set clip_norm") from None

    def _compiled_epoch(self, updates: int):
        """The compiled epoch, if this fit uses one (built once per trainer)."""
        step = self.kernel.program
        use = self.compiled is True or (self.compiled == "auto" and self.tbptt is None and not (step.grid or step.tree)
                                        and self._cluster is None and self.kernel.backend == "numba"
                                        and updates >= COMPILED_EPOCH_UPDATES)
        if use and (self._epoch is None or self._epoch.train != self.train):
            self._epoch = Epoch(self.kernel, self.optimizer, self.train)
        return self._epoch if use else None

    def evaluate(self, data, params: dict | None = None, batch_size: int = 256, *, lengths=None,
                 batch_first: bool = False) -> float:
        """The mean loss per sequence (or image) over ``data`` (in the forms ``fit`` takes)."""
        data, params = self._data(data, lengths, batch_first), self._params if params is None else params
        total = 0.0
        for index in np.array_split(np.argsort(data.key), -(-len(data) // batch_size)):
            inputs, lengths = data.batch(index)
            loss, _ = self.kernel.loss_and_grad(params, inputs, **_shape(self.kernel.program, lengths))
            total += float(loss) * len(index)
        return total / len(data)

    def _data(self, data, lengths, batch_first: bool) -> Sequences | Grids | Trees:
        return examples(self.kernel.program, data, lengths, batch_first)

    def _update(self, inputs: dict, lengths, epoch: int, index: np.ndarray | None = None) -> float:
        """One minibatch (the examples ``index``): loss and gradient (by windows under tbptt),
        clipping, an update per gradient. Returns the minibatch's mean loss per sequence."""
        if self.kernel.program.grid or self.kernel.program.tree:   # whole images or trees: one update
            loss, grads = self._loss_and_grad(inputs, lengths, None, epoch, index)
            self._update_params({p: np.array(grads[p], np.float64) for p in self.train}, epoch)
            return loss
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
            nxt = max(min(hi + k1, T) - k2, 0)   # where the next window starts
            if hi < T and nxt > start:   # its state, under the parameters this window ran with
                head = {n: a[:nxt - start] for n, a in window.items()}
                try:
                    state = self._carry(head, np.minimum(steps, nxt - start), initial, state, live, B)
                except NotFinite as e:
                    self._diverged(epoch, str(e))
                start = nxt
            self._update_params(grads, epoch)
        return loss

    def _update_params(self, grads: dict, epoch: int) -> None:
        """Clip a gradient (float64 arrays, changed in place) and update the parameters with it,
        keeping what the update changes (``_good``) and checking what it made."""
        norm = clip(grads, self.clip_norm, self.clip_value)
        if self.clip_norm is not None and not np.isfinite(norm):
            self._diverged(epoch, "the gradient's norm overflows (its entries are too large to square); "
                           "scale the loss or the data down, or set clip_value")
        self._good = ({p: v.copy() if p in grads else v for p, v in self._params.items()},
                      _copy_state(self.state), self.steps)   # what the update changes, copied
        self.optimizer.update(self._params, grads, self.state, self.steps)
        bad = _not_finite({p: self._params[p] for p in grads}, self.state)
        if bad:
            self._diverged(epoch, f"the next update made {bad} although its loss and gradient were finite")
        self.steps += 1

    def _loss_and_grad(self, inputs, lengths, initial, epoch, index=None):
        try:
            if self._cluster is not None:   # the workers' parts of the minibatch, combined
                loss, grads = self._cluster.loss_and_grad(self._params, index)
            else:
                loss, grads = self.kernel.loss_and_grad(self._params, inputs, initial=initial,
                                                        **_shape(self.kernel.program, lengths))
        except NotFinite as e:
            self._diverged(epoch, str(e))
        return float(loss), grads

    def _diverged(self, epoch: int, why: str):
        """Stop training: back to the last parameters whose loss was finite, with the optimizer
        state and step count of their time (the parameters the fit started from: unchanged)."""
        if self._good is None:
            raise NotFinite(why)
        steps = self.steps
        params, state, self.steps = self._good
        self._params, self.state = _copy(params), _copy_state(state)
        raise Diverged.during(epoch, steps, why)

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
        to one ``.npz`` file, with a checksum, atomically and durably: a crash or a power cut
        leaves the previous file or the new one, whole."""
        if self._params is None:
            raise GraphcompError("nothing to save yet: fit the model first")
        return self._save(path)

    def _save(self, path, run: "_Run | None" = None, plan: dict | None = None) -> Path:
        """The checkpoint; with a fit under way (``run``, ``plan``) all it needs to resume it."""
        meta = {"model": model_hash(self.kernel), "optimizer": self.optimizer.config(), "steps": self.steps,
                "train": self.train, "good_steps": None if self._good is None else self._good[2], "fit": None}
        arrays = _flat("", self._params, self.state)
        if self._good is not None:
            arrays.update(_flat("good/", *self._good[:2]))
        if run is not None:
            meta["fit"] = {"plan": plan, "epoch": run.epoch, "batch": run.batch, "begin": run.begin,
                           "total": run.total, "seen": run.seen, "history": asdict(run.history),
                           "best_loss": run.best_loss, "best_epoch": run.best_epoch}
            arrays.update({f"best/{p}": v for p, v in (run.best or {}).items()})
        return checkpoint.write(path, meta, arrays)

    def load(self, path) -> dict:
        """Read a checkpoint written by ``save`` (or by ``fit(..., checkpoint=path)``) for this
        model and optimizer; ``fit(None, ...)`` then continues from it. Returns the parameters.
        A file that is damaged, cut short, of another model or optimizer, or of a newer
        graphcomp is refused with a GraphcompError that says which."""
        self._apply(*self._read(path))
        return self.params

    def _read(self, path) -> tuple[dict, dict]:
        """A checkpoint's meta and arrays, checked against this trainer's model and optimizer."""
        meta, arrays = checkpoint.read(path)
        params = self.kernel.program.params
        lacking = [k for k in ("model", "optimizer", "steps", "train", "good_steps", "fit") if k not in meta]
        if lacking:
            raise GraphcompError(f"{path} lacks {', '.join(map(repr, lacking))}: it was not written whole by "
                                 "Trainer.save; use another checkpoint or start over")
        if meta["model"] != model_hash(self.kernel):
            raise GraphcompError(f"{path} was saved from a different model (hash {meta['model']}, this model's is "
                                 f"{model_hash(self.kernel)}): load it into the model it was trained with")
        steps, train, optimizer = meta["steps"], meta["train"], meta["optimizer"]
        if not (type(steps) is int and steps >= 0 and isinstance(train, list) and set(train) <= set(params)
                and isinstance(optimizer, dict)):
            raise GraphcompError(f"{path} holds steps={steps!r}, train={train!r} and optimizer={optimizer!r}, "
                                 "which Trainer.save never writes: use another checkpoint or start over")
        if optimizer.get("name") != type(self.optimizer).__name__:
            raise GraphcompError(f"{path} holds the state of {optimizer.get('name')}, this trainer uses "
                                 f"{type(self.optimizer).__name__}: use the same optimizer to continue")
        lacking = [f"param/{p}" for p in params if f"param/{p}" not in arrays]
        lacking += [f"slot/{p}/{s}" for p in train for s in self.optimizer.slots if f"slot/{p}/{s}" not in arrays]
        if lacking:
            raise GraphcompError(f"{path} lacks {', '.join(map(repr, lacking))}: it was not written whole by "
                                 "Trainer.save; use another checkpoint or start over")
        for name, a in arrays.items():
            p = _param_of(name)
            if p not in params or a.dtype != np.float64 or a.size != int(np.prod(params[p])):
                raise GraphcompError(f"{path} holds {name!r} as {a.dtype} of shape {a.shape}, which is no "
                                     f"parameter of this model or not its shape: use another checkpoint")
            if not np.isfinite(a).all():
                raise GraphcompError(f"{path} holds a value that is not finite in {name!r}: use another checkpoint")
        return meta, arrays

    def _apply(self, meta: dict, arrays: dict) -> None:
        """Take a checked checkpoint's parameters, optimizer state, step count and the state
        before the last update."""
        def part(prefix):
            params = {k[len(prefix) + 6:]: np.array(v) for k, v in arrays.items() if k.startswith(prefix + "param/")}
            state = {}
            for k, v in arrays.items():
                if k.startswith(prefix + "slot/"):
                    _, p, slot = k[len(prefix):].split("/")
                    state.setdefault(p, {})[slot] = np.array(v)
            return params, state
        self._params, self.state = part("")
        self.train, self.steps = list(meta["train"]), meta["steps"]
        self.state = {p: self.state.get(p, {}) for p in self.train}
        good = part("good/")
        self._good = None if meta["good_steps"] is None or not good[0] else (*good, meta["good_steps"])

    def _saved_fit(self, path):
        """The checked checkpoint of the fit saved at ``path``, or None if there is no file."""
        if not Path(path).exists():
            return None
        meta, arrays = self._read(path)
        if meta["fit"] is None:
            raise GraphcompError(f"{path} holds parameters but no fit to resume (it was written by trainer.save): "
                                 "load it with trainer.load(path) and continue with fit(None, ...), or pass "
                                 "resume=False to start a new fit there")
        return meta, arrays

    def _resume(self, path, saved: tuple, plan: dict, rng) -> "_Run":
        """Take the fit saved at ``path``, checked to be this one: parameters, optimizer state,
        steps, the random generator, the history and the early-stopping state."""
        meta, arrays = saved
        fit = meta["fit"]
        lacking = [k for k in ("plan", "epoch", "batch", "begin", "total", "seen", "history", "best_loss",
                               "best_epoch") if k not in fit]
        if lacking:
            raise GraphcompError(f"{path} lacks {', '.join(map(repr, lacking))} of its fit: it was not written whole "
                                 "by Trainer.fit; use another checkpoint or pass resume=False to start over")
        now = json.loads(json.dumps(plan))
        for key, value in now.items():
            if fit["plan"].get(key) != value and not (key == "start" and value is None):
                what = {"start": "other starting parameters", "data": "other data",
                        "validation": "other validation data"}.get(key, f"{key}={fit['plan'].get(key)!r}, this one "
                                                                         f"{key}={value!r}")
                raise GraphcompError(f"{path} holds another fit ({what}): resume it with the arguments it was "
                                     "started with, or pass resume=False to start a new fit there")
        try:
            rng.bit_generator.state = fit["begin"]
            history = History(**fit["history"])
        except (TypeError, ValueError, KeyError) as e:
            raise GraphcompError(f"{path} holds a fit that cannot be resumed ({e}): use another checkpoint or "
                                 "pass resume=False to start over") from None
        self._apply(meta, arrays)
        best = {k[5:]: np.array(v) for k, v in arrays.items() if k.startswith("best/")} or None
        return _Run(history, rng, fit["epoch"], fit["batch"], fit["begin"], fit["total"], fit["seen"],
                    fit["best_loss"], fit["best_epoch"], best)


@dataclass
class _Run:
    """A fit under way: besides the parameters and the optimizer's state, what a checkpoint
    holds to resume it exactly."""
    history: History
    rng: np.random.Generator
    epoch: int = 0                  # the epoch under way
    batch: int = 0                  # its minibatches done
    begin: dict | None = None       # the generator's state when it began (it draws the minibatches' order)
    total: float = 0.0              # its loss so far, summed per sequence
    seen: int = 0                   # and the sequences it covers
    best_loss: float = np.inf       # early stopping: the best validation loss, its epoch and parameters
    best_epoch: int = -1
    best: dict | None = None

    def start(self, epoch: int, rng) -> None:
        """At the start of ``epoch``: the generator's state, nothing done yet."""
        self.epoch, self.begin, self.batch, self.total, self.seen = epoch, rng.bit_generator.state, 0, 0.0, 0


def _flat(prefix: str, params: dict, state: dict | None) -> dict:
    """Parameters and optimizer slots as a checkpoint's named arrays."""
    out = {f"{prefix}param/{p}": np.asarray(v, np.float64) for p, v in params.items()}
    out.update({f"{prefix}slot/{p}/{s}": a for p, slots in (state or {}).items() for s, a in slots.items()})
    return out


def _param_of(name: str) -> str:
    """The parameter a checkpoint's array belongs to: param/W, slot/W/m, good/param/W, best/W."""
    parts = name.split("/")
    parts = parts[1:] if parts[0] == "good" else parts
    return parts[1] if len(parts) > 1 else ""


def _digest(arrays: dict, lengths=None) -> str:
    """A hash of named arrays (and lengths): their names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(a.data if a.dtype != object else repr(a).encode())
    if lengths is not None:
        h.update(np.ascontiguousarray(lengths, np.int64).data)
    return h.hexdigest()[:32]


def _minibatches(lengths: np.ndarray, batch_size: int, rng) -> list:
    """Shuffled minibatches of sequences of similar length (of images of similar size, by the
    data's ``key``): shuffle, sort windows of 8 minibatches by length, cut them, and shuffle
    the minibatches' order."""
    order = rng.permutation(len(lengths))
    window = 8 * batch_size
    batches = []
    for w in range(0, len(order), window):
        part = order[w:w + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _arrays(data) -> dict:
    """A data set's arrays; a tree data set's children among them."""
    return {**data.arrays, "children": data.children} if isinstance(data, Trees) else data.arrays


def _shape(step, lengths) -> dict:
    """A minibatch's ``lengths`` as the kernel takes them; a tree minibatch's are (lengths, children)."""
    return dict(zip(("lengths", "children"), lengths)) if step.tree else {"lengths": lengths}


def _copy(params: dict) -> dict:
    return {p: np.array(v) for p, v in params.items()}


def _copy_state(state: dict) -> dict:
    return {p: _copy(slots) for p, slots in state.items()}


def _not_finite(params: dict, state: dict) -> str:
    """The first parameter or optimizer slot holding inf or NaN, in words ("" if none); they
    are searched only when their sum is not finite."""
    if sums_finite([*params.values(), *(a for slots in state.values() for a in slots.values())]):
        return ""
    for p, v in params.items():
        if not np.isfinite(v).all():
            return f"parameter {p!r} {v[~np.isfinite(v)].flat[0]}"
    for p, slots in state.items():
        for s, v in slots.items():
            if not np.isfinite(v).all():
                return f"the optimizer's {s!r} of parameter {p!r} {v[~np.isfinite(v)].flat[0]}"
    return ""


def _bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="batch", dynamic_ncols=True, leave=True)
