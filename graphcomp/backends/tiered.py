"""Results before compilation finishes: the Numba kernels compile in a background thread
while calls run on the NumPy reference backend, as long as that is quick; then every call
runs compiled. ``gc.compile(model, wait=False)`` builds one; ``Kernel.wait()`` blocks until
the compiled kernels are ready.

The two backends agree to rounding (the tests hold them to 1e-10), not to the last bit: a
run that must be reproducible bit for bit waits for the compiled kernels (the default)."""
from __future__ import annotations

import threading
import warnings

from ..check import Batch

SLOW = 0.5   # seconds a reference call may take while the kernels compile; beyond, wait for them
PER_NODE = 4e-6   # seconds per IR node a reference step takes (NumPy's per-call overhead)


class Tiered:
    """A Numba back end compiling in a background thread, with the reference backend in front."""

    name = "numba"

    def __init__(self, compiled, reference):
        self.compiled, self.reference = compiled, reference
        self.capabilities = compiled.capabilities
        self.dtype = compiled.dtype
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._nodes = _nodes(reference.step)
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

    def _pick(self, batch: Batch):
        """The compiled kernels once ready; before, the reference backend for a quick call."""
        quick = batch.T * self._nodes * PER_NODE < SLOW
        if self.ready.is_set() or not quick:
            self.wait()
            if self.compiled.warmed:
                return self.compiled
        return self.reference

    def forward(self, batch: Batch):
        return self._pick(batch).forward(batch)

    def loss_and_grad(self, batch: Batch, seeds: dict | None = None):
        impl = self._pick(batch)
        return impl.loss_and_grad(batch) if seeds is None else impl.loss_and_grad(batch, seeds)

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
