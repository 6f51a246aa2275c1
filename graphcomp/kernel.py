"""``gc.compile``: a model's kernel set. The kernel checks every call's arrays, runs a backend
and hands results back in the user's NumPy shapes and the kernel's dtype."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from .check import Batch, prepare
from .errors import GraphcompError
from .reference import BACKENDS
from .step import Step

DTYPES = ("float64", "float32")


class Kernel:
    """Compiled ``forward`` and ``loss_and_grad`` for one model (see ``gc.compile``)."""

    def __init__(self, step: Step, backend: str, dtype: str, impl):
        self.step, self.backend, self.dtype, self._impl = step, backend, np.dtype(dtype), impl
        self._needed: dict = {}   # with_loss -> the inputs a call must give

    @property
    def source(self) -> str:
        """The generated source of the compiled kernels (the Numba backend only)."""
        if not hasattr(self._impl, "source"):
            raise GraphcompError(f"the {self.backend!r} backend generates no source; use gc.compile(model, backend='numba')")
        return self._impl.source

    def __repr__(self) -> str:
        return f"<graphcomp kernel: backend={self.backend!r}, dtype={self.dtype.name}>"

    def _prepare(self, params, inputs, lengths, initial, steps, with_loss) -> Batch:
        # the NumPy backends compute in float64 and round results to the kernel's dtype
        dtype = getattr(self._impl, "dtype", np.float64)
        if with_loss not in self._needed:
            self._needed[with_loss] = self.step.inputs_needed(with_loss)
        return prepare(self.step, params, inputs, lengths, initial, with_loss=with_loss, steps=steps,
                       dtype=dtype, needed=self._needed[with_loss])

    def forward(self, params: dict, inputs: dict | None = None, lengths=None, initial: dict | None = None,
                *, steps: int | None = None) -> dict:
        """Outputs and states, each ``(T, B, ...)`` under its name. Past a sequence's length a
        forward state keeps its last value and an output is zero."""
        batch = self._prepare(params, inputs, lengths, initial, steps, with_loss=False)
        with np.errstate(all="ignore"), _compile_errors():   # overflow is reported below, in the user's names
            states, outputs = self._impl.forward(batch)
        _check_finite(self.step, batch, states)
        result = {}
        for s, a in states.items():
            info = self.step.signals[s]
            if info.direction > 0:   # a forward state stops changing past its sequence's end
                last = a[batch.lengths - 1, np.arange(batch.B)]
                a = np.where(_expand(batch.valid, a), a, last[None])
            result[s] = self._out(a, (batch.T, batch.B) + info.array_shape)
        for o, a in outputs.items():
            shape = self.step.outputs[o].shape
            result[o] = self._out(a, (batch.T, batch.B) + (shape[:1] if shape[1:] == (1,) else shape))
        return result

    def loss_and_grad(self, params: dict, inputs: dict | None = None, lengths=None,
                      initial: dict | None = None, *, steps: int | None = None) -> tuple[float, dict]:
        """The loss L = (1/B) Σ_b Σ_{t ≤ len_b} L_b(t) and its gradient w.r.t. every parameter,
        keyed and shaped like ``params``."""
        if self.step.loss is None:
            raise GraphcompError("the model has no loss: pass loss=... to gc.Recurrence")
        batch = self._prepare(params, inputs, lengths, initial, steps, with_loss=True)
        with np.errstate(all="ignore"), _compile_errors():
            loss, grads = self._impl.loss_and_grad(batch)
        bad = [p for p, g in grads.items() if not np.all(np.isfinite(g))]
        if not np.isfinite(loss) or bad:
            with np.errstate(all="ignore"):
                states, _ = self._impl.forward(batch)
            _check_finite(self.step, batch, states)
            what = f"the gradient of {bad[0]!r}" if bad else "the loss"
            raise GraphcompError(f"{what} is not finite ({loss if not bad else 'inf/nan'}) although every "
                                 "state is: the loss or its derivative overflows (e.g. log of 0); check targets and parameters")
        out = {}
        for p, g in grads.items():
            given = np.shape(params[p])
            out[p] = self._out(g, given) if given else self.dtype.type(g)
        return self.dtype.type(loss), out

    def _out(self, a: np.ndarray, shape: tuple) -> np.ndarray:
        return np.ascontiguousarray(np.reshape(a, shape), dtype=self.dtype)


@contextlib.contextmanager
def _compile_errors():
    """A kernel compiled at its first call that Numba cannot compile: a GraphcompError."""
    from .codegen import Unsupported
    try:
        yield
    except Unsupported as e:
        raise GraphcompError(f"the Numba backend cannot compile this model yet ({e}); "
                             "use gc.compile(model, backend='reference')") from None


def _expand(valid: np.ndarray, like: np.ndarray) -> np.ndarray:
    return valid.reshape(valid.shape + (1,) * (like.ndim - 2))


def _check_finite(step: Step, batch: Batch, states: dict) -> None:
    """A state that overflows is an error that names it, the step and the sequence."""
    for s, a in states.items():
        bad = ~np.isfinite(a) & _expand(batch.valid, a)
        if bad.any():
            t, b = (int(i) for i in np.argwhere(bad)[0][:2])
            raise GraphcompError(f"state {s!r} became {a[t, b].flat[0] if a[t, b].size else a[t, b]} at "
                                 f"t={t + 1} in sequence {b}: the recurrence diverges for these parameters "
                                 "and inputs (try smaller weights or shorter sequences)")


def compile(model, backend: str | None = None, dtype: str = "float64") -> Kernel:
    """Compile a ``Recurrence`` into a kernel set with ``forward`` and ``loss_and_grad``.

    ``backend``: ``"numba"`` (generated loops compiled with Numba), ``"reference"`` (NumPy
    time loops running the derived adjoint step) or ``"unfolded"`` (reverse mode over the
    unfolded DAG: slow, the oracle); ``None`` picks Numba, or the reference backend for a
    model the code generator does not handle. ``dtype``: ``"float64"`` or ``"float32"``."""
    step = getattr(model, "step", model)
    if not isinstance(step, Step):
        raise GraphcompError(f"gc.compile needs a gc.Recurrence, got {type(model).__name__}")
    if backend is not None and backend not in (*BACKENDS, "numba"):
        raise GraphcompError(f"unknown backend {backend!r}; choose one of {sorted([*BACKENDS, 'numba'])}")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise GraphcompError(f"dtype {dtype!r} is not supported; use 'float64' or 'float32'")
    if backend in (None, "numba"):
        from .codegen import Unsupported
        from .compiled import NumbaBackend
        try:
            return Kernel(step, "numba", name, NumbaBackend(step, name))
        except Unsupported as e:
            if backend == "numba":
                raise GraphcompError(f"the Numba backend cannot compile this model yet ({e}); "
                                     "use backend='reference'") from None
            warnings.warn(f"graphcomp: running this model on the NumPy reference backend: {e}", stacklevel=2)
            backend = "reference"
    return Kernel(step, backend, name, BACKENDS[backend](step))


def export(model, path, dtype: str = "float64") -> Path:
    """Write the model's generated kernels to ``path`` as a standalone module that needs only
    numpy and numba. Its functions take the arrays in the layout ``Kernel.source`` shows."""
    from .codegen import KernelSource, Unsupported
    step = getattr(model, "step", model)
    if not isinstance(step, Step):
        raise GraphcompError(f"gc.export needs a gc.Recurrence, got {type(model).__name__}")
    try:
        text = KernelSource(step, np.dtype(dtype).name).standalone
    except Unsupported as e:
        raise GraphcompError(f"the Numba backend cannot compile this model yet ({e})") from None
    path = Path(path)
    path.write_text(text)
    return path
