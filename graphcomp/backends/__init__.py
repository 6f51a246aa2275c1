"""The back ends: each runs a step's kernels on validated batches and says what it can do.

A back end has a ``name``, ``capabilities`` (a set of: "seeds": final cotangents and initial
values' gradients; "delayed_input_cotangents": gradients w.r.t. delayed inputs' initial
values; "source": generated source; "epoch": a compiled training epoch; "stream": one step at
a time), and ``forward(batch) -> (states, outputs)`` and ``loss_and_grad(batch, seeds=None)
-> (loss, grads[, initial])`` in IR layout. Adding one is a class and an entry here."""
from __future__ import annotations


def registry() -> dict:
    """Back end name -> class (the Numba one is imported only when asked for)."""
    from .reference import LoopBackend, UnfoldedBackend

    def numba(step, dtype, warm=True):
        from .numba.backend import NumbaBackend
        return NumbaBackend(step, dtype, warm)
    return {"numba": numba, "reference": LoopBackend, "unfolded": UnfoldedBackend}


NAMES = ("numba", "reference", "unfolded")
