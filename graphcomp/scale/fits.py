"""Many fits at once: ``gc.scale.fits(client, jobs)`` runs a list of ``Train`` and
``LeastSquares`` jobs (seeds, hyperparameters, folds, models, random restarts) as Dask tasks on
data scattered to the workers once, and returns their ``Results`` in the order given."""
from __future__ import annotations

import abc
import copy
import inspect
import math
import numbers
import uuid
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GraphcompError, NotFinite
from ..fit import Fit, least_squares
from ..train.optim import Optimizer
from ..train.trainer import History, Trainer, examples
from .cluster import Kernels, Model, distributed, prepare

if TYPE_CHECKING:
    from distributed import Client

RESUBMIT = 3   # a fit whose data the cluster lost (every worker holding it died) is sent again this often


@dataclass
class Result:
    """One fit: its parameters (after divergence, the last finite ones, as ``trainer.params``
    holds them), a ``Train`` job's ``history`` (the epochs it completed), a ``LeastSquares``
    job's ``fit`` report, the mean validation loss per sequence of ``params`` (None without
    validation data, inf if it diverged), why it diverged ("" if it did not) and the worker
    it ran on."""
    name: str
    params: dict
    history: History | None = None
    fit: Fit | None = None
    val_loss: float | None = None
    diverged: str = ""
    worker: str = ""


class Results(list):
    """The ``Result`` of every job, in the order of the jobs."""

    def best(self) -> Result:
        """The fit with the lowest validation loss (diverged fits are passed over)."""
        if any(r.val_loss is None for r in self):
            raise GraphcompError("best() picks by the validation loss, but some fits had no validation data: pass "
                                 "validation=... to gc.scale.fits (or to each job)")
        finite = [r for r in self if not r.diverged and math.isfinite(r.val_loss)]
        if not finite:
            raise GraphcompError(f"all {len(self)} fits diverged (the first: {self[0].diverged}); start closer, lower "
                                 "the learning rate or set clip_norm")
        return min(finite, key=lambda r: r.val_loss)


class Job(abc.ABC):
    """One fit of many: a model (a ``gc.Recurrence`` or a kernel), its starting parameters, its
    own ``data`` and ``validation`` (None: the ones given to ``fits``) and a ``name`` that
    errors and results use (by default its options, e.g. "seed=3, Adam lr=0.01")."""

    def __init__(self, model, params: dict, data, validation, name: str | None, dtype: str, described: dict):
        self.model = Model.of(model, dtype)
        self.params, self.data, self.validation = params, data, validation
        self.name = _describe(described) if name is None else str(name)

    def task(self) -> "Job":
        """The job as it is sent to a worker: without its data (scattered separately)."""
        job = copy.copy(self)
        job.data = job.validation = None
        return job

    @abc.abstractmethod
    def run(self, kernel, data, validation) -> Result:
        """The fit on a worker: each kind of job (Train, LeastSquares) says how it runs."""


class Train(Job):
    """A fit by ``gc.Trainer(model, optimizer, **trainer_options).fit(params, data,
    validation=..., **fit_options)``: ``options`` are the keywords of either (``epochs``,
    ``batch_size``, ``seed``, ``patience``, ``clip_norm``, ``train``, ``dtype``, ...), each sent to
    the one that takes it. It runs without a progress bar of its own (``fits`` shows one)."""

    def __init__(self, model, params: dict, optimizer: Optimizer | None = None, *, data=None, validation=None,
                 name: str | None = None, **options):
        trainer_keys = _keywords(Trainer.__init__, {"model", "optimizer", "progress", "client", "average_every"})
        fit_keys = _keywords(Trainer.fit, {"params", "data", "validation", "lengths", "batch_first"})
        unknown = sorted(set(options) - trainer_keys - fit_keys)
        if unknown:
            trainer_words = ", ".join(sorted(trainer_keys))
            raise GraphcompError(f"a Train job takes the keywords of gc.Trainer ({trainer_words}) and "
                                 f"of its fit ({', '.join(sorted(fit_keys))}), not {', '.join(unknown)} (data layout: "
                                 "pass lengths= and batch_first= to gc.scale.fits)")
        self.optimizer = optimizer
        self.trainer_options = {k: v for k, v in options.items() if k in trainer_keys}
        self.fit_options = {k: v for k, v in options.items() if k in fit_keys}
        rate = None if optimizer is None else f"{type(optimizer).__name__} lr={optimizer.rate(0):.3g}"
        super().__init__(model, params, data, validation, name, options.get("dtype", "float64"),
                         {**options, "": rate})

    def run(self, kernel, data, validation) -> Result:
        seen = History()
        user = self.trainer_options.get("callback")

        def keep(epoch: int, history: History) -> bool:   # the History so far, kept should the fit diverge
            nonlocal seen
            seen = history
            return bool(user(epoch, history)) if user is not None else False

        options = {k: v for k, v in self.trainer_options.items() if k != "dtype"}
        trainer = Trainer(kernel, self.optimizer, progress=False, **{**options, "callback": keep})
        try:
            history = trainer.fit(self.params, data, validation=validation, **self.fit_options)
        except NotFinite as e:
            return Result(self.name, trainer.params or _copy(self.params), seen, val_loss=math.inf, diverged=str(e))
        return _validated(Result(self.name, trainer.params, history), kernel, validation)


class LeastSquares(Job):
    """A fit by ``gc.least_squares(kernel, params, data, **options)`` (``residuals``,
    ``learn_initial``, ``shooting``, ``bounds``, ``method``, scipy's options, ...): one random
    restart of a system identification, say. Its validation loss is the model's loss on the
    validation data, from zero initial states."""

    def __init__(self, model, params: dict, *, data=None, validation=None, name: str | None = None, **options):
        self.options = options
        start = {p: v for p, v in params.items() if np.size(v) == 1}
        super().__init__(model, params, data, validation, name, "float64",
                         {"": "start " + ", ".join(f"{p}={float(np.ravel(v)[0]):.4g}" for p, v in start.items())})

    def run(self, kernel, data, validation) -> Result:
        if validation is not None and kernel.program.loss is None:
            raise GraphcompError("the validation loss is the model's loss: declare loss=... in gc.Recurrence")
        try:
            fit = least_squares(kernel, self.params, data, **self.options)
        except NotFinite as e:
            return Result(self.name, _copy(self.params), val_loss=math.inf, diverged=str(e))
        return _validated(Result(self.name, fit.params, fit=fit), kernel, validation)


def _validated(result: Result, kernel, validation) -> Result:
    """The result with its validation loss; parameters whose validation loss overflows diverged."""
    if validation is not None:
        try:
            result.val_loss = float(Trainer(kernel, progress=False).evaluate(validation, result.params))
        except NotFinite as e:
            result.val_loss = math.inf
            result.diverged = f"the validation loss of the fitted parameters is not finite: {e}"
    return result


def fits(client: "Client | None", jobs: list, data=None, validation=None, *, lengths=None, batch_first: bool = False,
         progress: bool = True) -> Results:
    """Run ``jobs`` (``Train`` and ``LeastSquares``) as Dask tasks on ``client``'s cluster and
    return their ``Results`` in the order given; ``results.best()`` is the one of lowest
    validation loss. ``data`` and ``validation`` (as ``Trainer.fit`` takes them; ``lengths``
    and ``batch_first`` apply to them) serve every job that has none of its own. Each distinct
    data set is scattered to every worker once; a worker builds each model's kernel once.

    A fit that diverges comes back as such (``result.diverged``) and the others carry on; one
    that raises is a GraphcompError naming the fit, and the fits still running are cancelled.
    A worker that dies costs time: its fits run again elsewhere, with the same results.
    ``client=None`` runs the jobs one after the other in this process."""
    jobs = list(jobs)
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise GraphcompError(f"jobs[{i}] is a {type(job).__name__}: give gc.scale.Train(...) or "
                                 "gc.scale.LeastSquares(...) jobs")
    sets: dict = {}   # (id(data as given), axes) -> Sequences or Grids: each data set converted (and later sent) once
    plan = []
    for i, job in enumerate(jobs):
        train = data if job.data is None else job.data
        if train is None:
            raise GraphcompError(f"{_label(i, job)} has no data: pass data=... to gc.scale.fits or to the job")
        val = validation if job.validation is None else job.validation
        keys = [None if given is None else (id(given), job.model.step.axes) for given in (train, val)]
        for given, key in zip((train, val), keys):
            if key is not None and key not in sets:
                sets[key] = examples(job.model.step, given, lengths if given is data else None, batch_first)
        plan.append(tuple(keys))
    bar = _bar(len(jobs), progress)
    try:
        if client is None:
            kernels = Kernels()
            results = Results()
            for i, (job, (d, v)) in enumerate(zip(jobs, plan)):
                try:
                    results.append(job.run(kernels.get(job.model), sets[d], sets.get(v)))
                except Exception as e:
                    raise _failed(i, job, e) from e
                _advance(bar, results)
            return results
        return _on_cluster(client, jobs, plan, sets, bar)
    finally:
        if bar is not None:
            bar.close()


def _on_cluster(client, jobs: list, plan: list, sets: dict, bar) -> Results:
    dd = distributed()
    from . import worker
    prepare(client)
    keys = list(sets)
    scattered = dict(zip(keys, client.scatter([sets[k] for k in keys], broadcast=True, hash=False))) if keys else {}
    tag = uuid.uuid4().hex[:8]

    def submit(i: int):
        d, v = plan[i]
        return client.submit(worker.fit, jobs[i].task(), scattered[d], None if v is None else scattered[v],
                             key=f"graphcomp-fit-{i}-{tag}-{uuid.uuid4().hex[:6]}")

    index = {}
    for i in range(len(jobs)):
        index[submit(i)] = i
    results, done, sent = [None] * len(jobs), Results(), [1] * len(jobs)
    pending = dd.as_completed(list(index))
    try:
        for future in pending:
            i = index.pop(future)
            if future.status == "finished":
                results[i] = future.result()
                done.append(results[i])
                _advance(bar, done)
                continue
            error = future.exception() if future.status == "error" else CancelledError()
            if isinstance(error, CancelledError) and sent[i] < RESUBMIT:   # its data was lost: send it again
                for k, f in scattered.items():
                    if f.status != "finished":
                        scattered[k] = client.scatter(sets[k], broadcast=True, hash=False)
                sent[i] += 1
                retry = submit(i)
                index[retry] = i
                pending.add(retry)
                continue
            raise _failed(i, jobs[i], error) from error
    finally:
        if index:
            client.cancel(list(index))
    return Results(results)


def _failed(i: int, job: Job, error: BaseException) -> GraphcompError:
    return GraphcompError(f"{_label(i, job)} failed: {type(error).__name__}: {error}")


def _label(i: int, job: Job) -> str:
    return f"fit {i}" + (f" ({job.name})" if job.name else "")


def _describe(options: dict) -> str:
    """A job's options that are plain values, as "seed=3, epochs=20"; the "" key is text as is."""
    plain = lambda v: isinstance(v, (numbers.Number, str, bool)) or (isinstance(v, tuple) and all(map(plain, v)))
    parts = [v if k == "" else f"{k}={v!r}" for k, v in options.items() if v is not None and plain(v)]
    return ", ".join(p for p in parts if p)


def _keywords(function, skip: set) -> set:
    return {n for n, p in inspect.signature(function).parameters.items()
            if p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD} - skip - {"self"}


def _copy(params: dict) -> dict:
    return {p: np.array(v, np.float64) for p, v in params.items()}


def _advance(bar, done: list) -> None:
    if bar is None:
        return
    bar.update(1)
    losses = [r.val_loss for r in done if r.val_loss is not None and not r.diverged]
    bar.set_postfix(best=f"{min(losses):.4g}" if losses else "-", diverged=sum(bool(r.diverged) for r in done))


def _bar(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="fit", dynamic_ncols=True, leave=True)
