"""The Trainer's epochs when initial states are learned (``Trainer.fit(learn_initial=True,
shooting=k, encoder=m)``): minibatches of windows, each update moving the parameters, the
windows' initial states (or the encoder's parameters) and, under shooting, pulling each
window's initial state and the end of the window before it together."""
from __future__ import annotations

import time

import numpy as np

from ..errors import Diverged, GraphcompError, NotFinite, is_count
from ..train.optim import clip
from ..train.trainer import History, _bar, _minibatches, sequences
from .jacobian import objective
from .problem import Problem
from .residuals import measured_by_loss

INITIAL = "initial states"   # the optimizer's key for the windows' initial values
ENCODER = "encoder.{}"


def fit_windows(trainer, params: dict | None, data, epochs: int, batch_size: int, *, lengths, validation,
                patience, seed: int, batch_first: bool, learn_initial: bool, shooting, continuity, encoder,
                initial) -> History:
    """``Trainer.fit`` with learned initial states (see ``Trainer.fit``)."""
    if trainer.tbptt is not None:
        raise GraphcompError("tbptt and learned initial states both cut time: use shooting=k (windows with "
                             "their own initial states) without tbptt")
    if not is_count(batch_size):
        raise GraphcompError(f"batch_size must be a positive integer, got {batch_size!r}")
    if patience is not None and validation is None:
        raise GraphcompError("patience stops on the validation loss: pass validation=... too")
    if params is None:
        if trainer._params is None:
            raise GraphcompError("no parameters to continue from: pass params, or load a checkpoint first")
        params = trainer._params
    problem = Problem(trainer.kernel, params, sequences(data, lengths, batch_first), learn_initial=learn_initial,
                      shooting=shooting, encoder=encoder, initial=initial, continuity=continuity,
                      exact_allowed=False)
    problem.start_from(measured_by_loss(trainer.kernel.program))
    trainer._params = {p: np.array(v, np.float64) for p, v in problem.start.items()}
    values = {p: trainer._params[p] for p in trainer.train}
    values[INITIAL] = np.ascontiguousarray(problem.X0)
    enc = {n: np.array(v, np.float64) for n, v in problem.enc_start.items()}
    values.update({ENCODER.format(n): v for n, v in enc.items()})
    state = trainer.optimizer.init(values)
    trainer.steps = 0
    val = None if validation is None else Problem(trainer.kernel, params, sequences(validation, batch_first=batch_first),
                                                    encoder=problem.encoder, continuity=0.0, exact_allowed=False)
    W, N = len(problem.windows), len(problem.data)
    history, best = History(), (np.inf, None, 0)
    rng = np.random.default_rng(seed)
    bar = _bar(epochs * -(-W // batch_size), trainer.progress)
    try:
        for epoch in range(epochs):
            start, total = time.perf_counter(), 0.0
            weight = float(continuity(epoch)) if callable(continuity) else float(continuity)
            for index in _minibatches(problem.windows.length, batch_size, rng):
                X0 = problem.encoder(enc, problem.z) if problem.encoder else values[INITIAL]
                try:
                    f, g, gX0 = objective(problem, trainer._params, X0, np.sort(index), weight, len(index) * N / W)
                except NotFinite as e:
                    raise Diverged(f"training diverged in epoch {epoch + 1} after {trainer.steps} updates: {e}; "
                                   "lower the learning rate or set clip_norm") from None
                grads = {p: np.array(g[p], np.float64) for p in trainer.train}
                if problem.encoder:
                    for n, d in problem.encoder.jacobian(enc, problem.z).items():
                        grads[ENCODER.format(n)] = np.einsum("wk,wk...->...", gX0, d)
                else:
                    grads[INITIAL] = gX0 * problem.free[:, None]
                clip(grads, trainer.clip_norm, trainer.clip_value)
                trainer.optimizer.update(values, grads, state, trainer.steps)
                trainer.steps += 1
                total += f * len(index) / W
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{f:.4g}", refresh=False)
            history.loss.append(total)
            history.lr.append(trainer.optimizer.rate(max(trainer.steps - 1, 0)))
            history.seconds.append(time.perf_counter() - start)
            if val is not None:
                history.val_loss.append(_validation(val, trainer._params, enc))
                if history.val_loss[-1] < best[0]:
                    best = (history.val_loss[-1], _copy(trainer._params, values, enc), epoch)
                elif patience is not None and epoch - best[2] >= patience:
                    _restore(trainer._params, values, enc, best[1])
                    history.stopped = (f"validation loss did not improve for {patience} epochs; "
                                       f"kept the parameters of epoch {best[2] + 1}")
                    break
            if trainer.callback is not None and trainer.callback(epoch, history):
                history.stopped = f"the callback stopped training after epoch {epoch + 1}"
                break
    finally:
        if bar is not None:
            bar.close()
    X0 = problem.encoder(enc, problem.z) if problem.encoder else values[INITIAL]
    trainer.initial = problem.user_initial(X0)
    trainer.window_initial = problem.initial(X0) if W > N else None
    trainer.encoder = enc or None
    trainer.state = {p: state[p] for p in trainer.train}   # the parameters' slots, as Trainer.save keeps them
    return history


def _validation(val: Problem, params: dict, enc: dict) -> float:
    """The mean loss per validation sequence, each run from zero initial states (or the encoder's)."""
    X0 = val.encoder(enc, val.z) if val.encoder else val.X0
    return objective(val, params, X0, np.arange(len(val.windows)), 0.0, len(val.data))[0]


def _copy(params: dict, values: dict, enc: dict) -> tuple:
    return ({p: v.copy() for p, v in params.items()}, values[INITIAL].copy(), {n: v.copy() for n, v in enc.items()})


def _restore(params: dict, values: dict, enc: dict, saved: tuple) -> None:
    """Write ``saved`` back into the arrays the optimizer updates in place."""
    for p, v in saved[0].items():
        params[p][...] = v
    values[INITIAL][...] = saved[1]
    for n, v in saved[2].items():
        enc[n][...] = v
