"""How well a simulation or prediction matches the measurements, per output, as system
identification papers report it: RMSE, NRMSE (RMSE over the measurements' standard
deviation) and fit % (100 (1 - ‖y - ŷ‖ / ‖y - mean y‖), MATLAB's ``compare``). Each takes
the measured and predicted values as arrays ``(T, ...)`` or lists of them (one per sequence,
pooled); rows where either is NaN (steps ``gc.predict`` has no forecast for) are left out.
Results have the per-step shape: a float for a scalar signal, ``(n,)`` for a vector."""
from __future__ import annotations

import numpy as np

from ..errors import GraphcompError

__all__ = ["rmse", "nrmse", "fit_percent"]


def _rows(measured, predicted) -> tuple[np.ndarray, np.ndarray]:
    """Both as (rows, n) arrays of the rows where both are finite."""
    pairs = list(zip(measured, predicted)) if isinstance(measured, (list, tuple)) else [(measured, predicted)]
    if isinstance(measured, (list, tuple)) != isinstance(predicted, (list, tuple)) or \
            (isinstance(measured, (list, tuple)) and len(measured) != len(predicted)):
        raise GraphcompError("give measured and predicted in the same form: two arrays (T, ...) or two lists "
                             "of them, one per sequence")
    ys, ps = [], []
    for i, (y, p) in enumerate(pairs):
        y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
        if y.shape != p.shape or y.ndim < 1:
            raise GraphcompError(f"sequence {i}: measured {y.shape} and predicted {p.shape} differ; give both "
                                 "as (T, ...) with time along the first axis")
        y, p = y.reshape(len(y), -1), p.reshape(len(p), -1)
        keep = np.isfinite(y).all(1) & np.isfinite(p).all(1)
        ys.append(y[keep]), ps.append(p[keep])
    y, p = np.concatenate(ys), np.concatenate(ps)
    if not len(y):
        raise GraphcompError("no step has both a measurement and a prediction (all NaN)")
    return y, p


def _shaped(values: np.ndarray, like) -> float | np.ndarray:
    first = np.asarray(like[0] if isinstance(like, (list, tuple)) else like)
    return float(values[0]) if first.ndim == 1 else values.reshape(first.shape[1:])


def rmse(measured, predicted):
    """Root mean square error per output."""
    y, p = _rows(measured, predicted)
    return _shaped(np.sqrt(np.mean((y - p) ** 2, axis=0)), measured)


def nrmse(measured, predicted):
    """RMSE divided by the measurements' standard deviation, per output: 0 is perfect, 1 is
    no better than predicting the mean."""
    y, p = _rows(measured, predicted)
    return _shaped(np.sqrt(np.mean((y - p) ** 2, axis=0)) / _spread(y), measured)


def fit_percent(measured, predicted):
    """100 (1 - ‖y - ŷ‖ / ‖y - mean y‖) per output: 100 is perfect, 0 is the mean's fit."""
    y, p = _rows(measured, predicted)
    return _shaped(100 * (1 - np.linalg.norm(y - p, axis=0) / (_spread(y) * np.sqrt(len(y)))), measured)


def _spread(y: np.ndarray) -> np.ndarray:
    s = y.std(axis=0)
    if np.any(s == 0):
        raise GraphcompError("a measured output is constant, so normalised errors are undefined; use gc.metrics.rmse")
    return s
