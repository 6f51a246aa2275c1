"""Figures of forecasts with matplotlib, an optional dependency imported only when a figure
is drawn (``pip install graphcomp[fit]``)."""
from __future__ import annotations

import numpy as np

from ..errors import GraphcompError


def pyplot():
    """``matplotlib.pyplot``, or a GraphcompError that says how to install it."""
    try:
        import matplotlib.pyplot as plt   # without a display, matplotlib draws with Agg
    except ImportError:
        raise GraphcompError("drawing figures needs matplotlib: pip install matplotlib "
                             "(or pip install -e '.[fit]')") from None
    return plt


def plot_forecast(measured, predicted: dict, *, time=None, split=None, ax=None, title: str | None = None,
                  ylabel: str | None = None, label: str = "measured"):
    """The measured series (T,) against each prediction {label: (T,)} (NaN rows are not
    drawn), over ``time`` (T,) (None: steps 1..T), with a dashed line at ``split`` (the start
    of a held-out part, say); ``label`` names the measured series. Returns the matplotlib axes."""
    plt = pyplot()
    y = np.asarray(measured, float)
    if y.ndim != 1:
        raise GraphcompError(f"plot_forecast draws one output: measured has shape {y.shape}; pass y[:, i]")
    x = np.arange(1, len(y) + 1) if time is None else np.asarray(time)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(x, y, color="black", lw=1.2, label=label)
    for label, p in predicted.items():
        p = np.asarray(p, float)
        if p.shape != y.shape:
            raise GraphcompError(f"prediction {label!r} has shape {p.shape}, the measurements {y.shape}")
        ax.plot(x, p, lw=1.0, label=label)
    if split is not None:
        ax.axvline(split, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("step" if time is None else "time")
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax
