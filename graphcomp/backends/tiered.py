"""Results before compilation finishes: the Numba kernels compile in a background thread
while calls run on the NumPy reference backend, as long as that is quick; then every call
runs compiled. ``gc.compile(model, wait=False)`` builds one; ``Kernel.wait()`` blocks until
the compiled kernels are ready.

The two backends agree to rounding (the tests hold them to 1e-10), not to the last bit: a
run that must be reproducible bit for bit waits for the compiled kernels (the default)."""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np

from ..check import Batch

SLOW = 0.5   # seconds a reference call may take while the kernels compile; beyond, wait for them
PER_NODE = 4e-6   # seconds per IR node a reference step takes (NumPy's per-call overhead)
PER_WEIGHT = 1e-8   # seconds per parameter entry and example a reference step takes (it keeps
                    # each example's parameter gradients: the LSTM of 64 units, B=32, 8.6 ns)


class Tiered:
    """A Numba back end compiling in a background thread, with the reference backend in front."""

    name = "numba"

    def __init__(self, compiled, reference):
        self.compiled, self.reference = compiled, reference
        self.capabilities = compiled.capabilities
        self.dtype = compiled.dtype
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._nodes, self._weights = _nodes(reference.step), _weights(reference.step)
        self._rate: float | None = None   # seconds per step and example, from the last reference call
        threading.Thread(target=self._warm, name="graphcomp compile", daemon=True).start()

    def _warm(self) -> None:
        try:
            self.compiled.warm()
        except Exception as e:   # the reference backend goes on serving; the next call says why
            self.error = e
        finally:
            self.ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compiled kernels are ready (True), or ``timeout`` seconds pass."""
        done = self.ready.wait(timeout)
        if done and self.error is not None:
            error, self.error = self.error, None
            warnings.warn(f"graphcomp: the Numba kernels could not be compiled ({error}); "
                          "this kernel runs on the NumPy reference backend", stacklevel=3)
        return done

    def _cost(self, batch: Batch) -> float:
        """Seconds a reference call of this batch would take: measured on the last one, else
        estimated from the step's nodes and parameters."""
        if self._rate is not None:
            return self._rate * _rows(batch)
        return _rows(batch) * self._weights * PER_WEIGHT + int(np.prod(batch.T)) * self._nodes * PER_NODE

    def _pick(self, batch: Batch):
        """The compiled kernels once ready; before, the reference backend for a quick call."""
        if self.ready.is_set() or self._cost(batch) >= SLOW:
            self.wait()
            if self.compiled.warmed:
                return self.compiled
        return self.reference

    def _run(self, batch: Batch, call):
        impl = self._pick(batch)
        start = time.perf_counter()
        result = call(impl)
        if impl is self.reference:
            self._rate = (time.perf_counter() - start) / _rows(batch)
        return result

    def forward(self, batch: Batch):
        return self._run(batch, lambda impl: impl.forward(batch))

    def loss_and_grad(self, batch: Batch, seeds: dict | None = None):
        return self._run(batch, lambda impl: impl.loss_and_grad(batch) if seeds is None else
                         impl.loss_and_grad(batch, seeds))

    def __getattr__(self, name):   # source, kernel, workspace, release: the compiled back end's
        self.wait()
        return getattr(self.compiled, name)


def _nodes(step) -> int:
    """IR nodes the reference backend evaluates per step, forward and backward (a cost proxy)."""
    from .. import ir
    from ..ir.autodiff import adjoint
    adj = adjoint(step)
    backward = [n for who in adj.reads for n in (*adj.reads[who].values(), *adj.params[who].values())]
    return len(ir.toposort(step.roots())) + len(ir.toposort(backward))


def _weights(step) -> int:
    """Parameter entries: the reference backend keeps each example's gradient of every one."""
    return sum(int(np.prod(shape)) for shape in step.params.values())


def _rows(batch: Batch) -> int:
    """Steps times examples: what a reference call's time grows with."""
    return int(np.prod(batch.T)) * batch.B
