"""``gc.compile``: a model's kernel set. The kernel checks every call's arrays, runs a backend
and hands results back in the user's NumPy shapes and the kernel's dtype."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from . import ir
from .grad import methods
from .check import Batch, batch_major, prepare, seeds as check_seeds, sums_finite, time_major
from .errors import GraphcompError, NotFinite
from .backends import NAMES, registry
from .lang.step import Step
from .plan.region import Unsupported

DTYPES = ("float64", "float32")


class Kernel:
    """Compiled ``forward`` and ``loss_and_grad`` for one model (see ``gc.compile``)."""

    def __init__(self, step: Step, backend: str, dtype: str, impl):
        self.program, self.backend, self.dtype, self.impl = step, backend, np.dtype(dtype), impl
        self._needed: dict = {}   # with_loss -> the inputs a call must give
        self._flops: tuple | None = None   # methods.step_flops, counted at the first cost estimate

    @property
    def source(self) -> str:
        """The generated source of the compiled kernels (the Numba backend only)."""
        if "source" not in self.impl.capabilities:
            raise GraphcompError(f"the {self.backend!r} backend generates no source; use gc.compile(model, backend='numba')")
        return self.impl.source

    @property
    def ready(self) -> bool:
        """Are the compiled kernels ready? (Only ``gc.compile(..., wait=False)`` can say no.)"""
        ready = getattr(self.impl, "ready", None)
        return ready is None or ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compiled kernels are ready (``gc.compile(..., wait=False)``), or
        ``timeout`` seconds pass; returns whether they are."""
        return self.impl.wait(timeout) if hasattr(self.impl, "ready") else True

    def derived(self, step: Step) -> "Kernel":
        """A kernel of another step (say, a tangent step) on this kernel's back end and dtype."""
        return compile(step, backend=None if self.backend == "numba" else self.backend, dtype=self.dtype.name)

    def __repr__(self) -> str:
        return f"<graphcomp kernel: backend={self.backend!r}, dtype={self.dtype.name}>"

    def prepare(self, params, inputs, lengths=None, initial=None, steps=None, *, with_loss: bool,
                children=None) -> Batch:
        """Check one call's arrays and convert them to the back end's layout (a ``Batch``).
        The NumPy backends compute in float64 and round results to the kernel's dtype."""
        dtype = getattr(self.impl, "dtype", np.float64)
        if with_loss not in self._needed:
            self._needed[with_loss] = self.program.inputs_needed(with_loss)
        return prepare(self.program, params, inputs, lengths, initial, with_loss=with_loss, steps=steps,
                       dtype=dtype, needed=self._needed[with_loss], children=children)

    def forward(self, params: dict, inputs: dict | None = None, lengths=None, initial: dict | None = None,
                *, steps: int | None = None, batch_first: bool = False, children=None) -> dict:
        """Outputs and states, each ``(T, B, ...)`` under its name. Past a sequence's length a
        forward state keeps its last value and an output is zero. ``batch_first=True``: the
        inputs and results are batch-major ``(B, T, ...)`` (``initial`` keeps its layout)."""
        inputs = time_major(self.program, inputs, batch_first)
        batch = self.prepare(params, inputs, lengths, initial, steps, with_loss=False, children=children)
        with np.errstate(all="ignore"), _compile_errors():   # overflow is reported below, in the user's names
            states, outputs = self.impl.forward(batch)
        _check_finite(self.program, batch, states)
        result, lead = {}, (batch.T if self.program.grid else (batch.T,)) + (batch.B,)
        ragged = not (self.program.grid or self.program.tree) and batch.lengths.min() < batch.T
        for s, a in states.items():
            info = self.program.signals[s]
            if self.program.grid or self.program.tree:   # outside an example's extent (its tree): zero
                a = np.where(_expand(batch.valid, a), a, 0)
            elif info.direction > 0 and ragged:   # a forward state stops changing past its sequence's end
                last = a[batch.lengths - 1, np.arange(batch.B)]
                a = np.where(_expand(batch.valid, a), a, last[None])
            result[s] = self._out(a, lead + info.array_shape)
        for o, a in outputs.items():
            shape = self.program.outputs[o].shape
            result[o] = self._out(a, lead + ir.user_shape(shape))
        return batch_major(result) if batch_first else result

    def step(self, params: dict, state: dict | None = None, inputs: dict | None = None) -> tuple[dict, dict]:
        """One step of the recurrence, for online use. ``state`` holds, for every signal the
        step reads k steps back, its last k values ``(k, B, ...)``, oldest first (None: zeros);
        ``inputs`` the inputs at this step, ``(B, ...)`` each. Returns the outputs and states at
        this step, ``(B, ...)`` each, and the state to pass to the next step (time recurrences)."""
        if self.program.grid or self.program.tree:
            raise GraphcompError(f"step() advances a recurrence over time, but this model runs over a "
                                 f"{'grid' if self.program.grid else 'tree'}; call forward on whole inputs")
        for name, info in self.program.signals.items():
            if info.role == "state" and info.direction < 0:
                raise GraphcompError(f"state {name!r} reads its own future ({name}(t+{max(info.offsets)})), so it "
                                     "cannot run one step at a time; call forward on the whole sequence")
            if info.role == "input" and max(info.offsets, default=0) > 0:
                raise GraphcompError(f"input {name!r} is read at {name}(t+{max(info.offsets)}), a value a step "
                                     "cannot have yet; call forward on the whole sequence")
        inputs = {} if inputs is None else inputs
        if not isinstance(inputs, dict):
            raise GraphcompError(f"inputs must be a dict name -> array (B, ...), got {type(inputs).__name__}")
        now = {n: np.asarray(a)[None] for n, a in inputs.items()}   # a sequence of one step
        result = {n: a[0] for n, a in self.forward(params, now, initial=state, steps=1).items()}
        B = next(iter(result.values())).shape[0] if result else None
        new = {}
        for name, info in self.program.signals.items():
            k = info.history
            if not k:
                continue
            value = result.get(name) if info.role == "state" else now[name][0]
            value = np.asarray(value, dtype=self.dtype).reshape((B or len(value),) + info.array_shape)
            old = None if state is None else state.get(name)
            old = np.zeros((k,) + value.shape, self.dtype) if old is None else \
                np.asarray(old, dtype=self.dtype).reshape((k,) + value.shape)
            new[name] = np.concatenate([old[1:], value[None]])
        return result, new

    def stream(self, params: dict, state: dict | None = None) -> "Stream":
        """The recurrence run one step at a time, carrying its state: ``s = k.stream(params)``,
        then ``s.step({"x": x_t})`` returns the outputs and states at each new step."""
        return Stream(self, params, state)

    def loss_and_grad(self, params: dict, inputs: dict | None = None, lengths=None,
                      initial: dict | None = None, *, steps: int | None = None, method: str = "bptt",
                      final_cotangents: dict | None = None, with_initial: bool = False, batch_first: bool = False,
                      children=None, **options) -> tuple:
        """The loss L = (1/B) Σ_b Σ_{t ≤ len_b} L_b(t) and its gradient w.r.t. every parameter,
        keyed and shaped like ``params``.

        ``method``: "bptt" (the tape of all T steps), "checkpoint" (``every=k`` steps, default
        ≈ sqrt(T), or the longest that fits ``memory=bytes``), "tbptt" (``k1=``, ``k2=``: the
        truncated gradient), "rtrl" (forward sensitivities), "auto" (the fewest flops within
        ``memory=bytes``). ``final_cotangents`` {state: (k, B, ...)} seeds each sequence's last k
        values: the gradient of L + Σ <seed, s(end)>. ``with_initial``: also return the
        cotangents of ``initial``'s values, keyed and shaped like ``initial``: (loss, grads, initial_grads).
        ``batch_first=True``: the inputs are batch-major ``(B, T, ...)``."""
        inputs = time_major(self.program, inputs, batch_first)
        if self.program.loss is None:
            raise GraphcompError("the model has no loss: pass loss=... to gc.Recurrence")
        methods.check_options(self.program, method, options)
        if method == "rtrl":
            if final_cotangents is not None or with_initial:
                raise GraphcompError("method='rtrl' gives the gradient of the loss w.r.t. the parameters only; "
                                     "for final_cotangents or with_initial use 'bptt' or 'checkpoint'")
            from .grad.rtrl import loss_and_grad as rtrl
            return rtrl(self, params, inputs, lengths, initial)
        batch = self.prepare(params, inputs, lengths, initial, steps, with_loss=True, children=children)
        seeds = None
        if final_cotangents is not None or with_initial:
            backward = [s for s in self.program.states if self.program.signals[s].direction < 0]
            if with_initial and backward:
                raise GraphcompError(f"with_initial gives the cotangents of forward states' initial values, but state "
                                     f"{backward[0]!r} runs backwards in time; call without with_initial")
            seeds = check_seeds(self.program, final_cotangents or {}, batch.B, batch.dtype)
        with np.errstate(all="ignore"), _compile_errors():
            loss, grads, init = methods.run(self, batch, method, seeds, options)
            finite = sums_finite([loss, *grads.values()])
        bad = [] if finite else [p for p, g in grads.items() if not np.all(np.isfinite(g))]
        if not np.isfinite(loss) or bad:
            with np.errstate(all="ignore"):
                states, _ = self.impl.forward(batch)
            _check_finite(self.program, batch, states)
            what = f"the gradient of {bad[0]!r}" if bad else "the loss"
            raise NotFinite(f"{what} is not finite ({loss if not bad else 'inf/nan'}) although every "
                                 "state is: the loss or its derivative overflows (e.g. log of 0); check targets and parameters")
        out = {}
        for p, g in grads.items():
            given = np.shape(params[p])
            if not given:
                out[p] = self.dtype.type(g)
            elif type(g) is np.ndarray and g.shape == given and g.dtype == self.dtype and g.flags.c_contiguous:
                out[p] = g   # the back end's own new array, already in the caller's layout
            else:
                out[p] = self._out(g, given)
        if not with_initial:
            return self.dtype.type(loss), out
        return self.dtype.type(loss), out, self._initial_out(init, batch)

    def _initial_out(self, init: dict, batch: Batch) -> dict:
        """Initial values' cotangents in the layout ``initial`` takes: (B, ...) for one value."""
        out = {}
        for s, a in init.items():
            info = self.program.signals[s]
            shape = ((batch.B,) if info.history == 1 else (info.history, batch.B)) + info.array_shape
            out[s] = self._out(a, shape)
        return out

    def cost(self, method: str, T: int, B: int, **options) -> dict:
        """Estimated flops and peak bytes of one ``loss_and_grad`` of T steps and B sequences by
        ``method`` (options as in ``loss_and_grad``); "auto" reports the method it picks."""
        return methods.cost(self, method, T, B, **options)

    def _out(self, a: np.ndarray, shape: tuple) -> np.ndarray:
        return np.ascontiguousarray(np.reshape(a, shape), dtype=self.dtype)


class Stream:
    """A kernel run one step at a time (``Kernel.stream``): ``step(inputs)`` advances it."""

    def __init__(self, kernel: Kernel, params: dict, state: dict | None = None):
        self.kernel, self.params, self.state = kernel, params, state

    def step(self, inputs: dict | None = None) -> dict:
        """The outputs and states at the next step, ``(B, ...)`` each."""
        result, self.state = self.kernel.step(self.params, self.state, inputs)
        return result

    def reset(self, state: dict | None = None) -> None:
        """Start again from ``state`` (None: zeros)."""
        self.state = state


class _compile_errors:
    """A kernel compiled at its first call that Numba cannot compile: a GraphcompError. (A
    class, not a generator: it wraps every call, and costs a tenth as much.)"""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if isinstance(error, Unsupported):
            raise GraphcompError(f"the Numba backend cannot compile this model yet ({error}); "
                                 "use gc.compile(model, backend='reference')") from None
        return False


def _expand(valid: np.ndarray, like: np.ndarray) -> np.ndarray:
    return valid.reshape(valid.shape + (1,) * (like.ndim - valid.ndim))


def _check_finite(step: Step, batch: Batch, states: dict) -> None:
    """A state that overflows is an error that names it, the step and the sequence. One sum
    decides when every value is finite; only otherwise are the states searched (inside each
    sequence: past its end a value is never read)."""
    if sums_finite(states.values()):
        return
    for s, a in states.items():
        bad = ~np.isfinite(a) & _expand(batch.valid, a)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0][:batch.valid.ndim])
            value = a[where].flat[0] if a[where].size else a[where]
            at = ", ".join(f"{x}={k + 1}" for x, k in zip(step.axes, where[:-1]))
            raise NotFinite(f"state {s!r} became {value} at {at} in sequence {where[-1]}: the recurrence "
                            "diverges for these parameters and inputs (try smaller weights or shorter sequences)")


def compile(model, backend: str | None = None, dtype: str = "float64", wait: bool = True) -> Kernel:
    """Compile a ``Recurrence`` into a kernel set with ``forward`` and ``loss_and_grad``.

    ``backend``: ``"numba"`` (generated loops compiled with Numba), ``"reference"`` (NumPy
    time loops running the derived adjoint step) or ``"unfolded"`` (reverse mode over the
    unfolded DAG: slow, the oracle); ``None`` picks Numba, or the reference backend for a
    model the code generator does not handle. ``dtype``: ``"float64"`` or ``"float32"``.
    ``wait=False`` returns at once: Numba compiles in the background while calls that are
    quick on the NumPy reference backend run there (equal to rounding, not to the last bit);
    ``kernel.wait()`` blocks until the compiled kernels are ready."""
    step = getattr(model, "step", model)
    if not isinstance(step, Step):
        raise GraphcompError(f"gc.compile needs a gc.Recurrence, got {type(model).__name__}")
    if backend is not None and backend not in NAMES:
        raise GraphcompError(f"unknown backend {backend!r}; choose one of {sorted(NAMES)}")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise GraphcompError(f"dtype {dtype!r} is not supported; use 'float64' or 'float32'")
    backends = registry()
    if backend in (None, "numba"):
        from .plan.region import Unsupported
        try:
            if not wait:
                from .backends.tiered import Tiered
                return Kernel(step, "numba", name, Tiered(backends["numba"](step, name, warm=False),
                                                          backends["reference"](step, name)))
            return Kernel(step, "numba", name, backends["numba"](step, name))
        except Unsupported as e:
            if backend == "numba":
                raise GraphcompError(f"the Numba backend cannot compile this model yet ({e}); "
                                     "use backend='reference'") from None
            warnings.warn(f"graphcomp: running this model on the NumPy reference backend: {e}", stacklevel=2)
            backend = "reference"
    return Kernel(step, backend, name, backends[backend](step, name))


def export(model, path, dtype: str = "float64") -> Path:
    """Write the model's generated kernels to ``path`` as a standalone module that needs only
    numpy and numba. Its functions take the arrays in the layout ``Kernel.source`` shows."""
    from .backends.numba.backend import NumbaBackend
    from .plan.region import Unsupported
    step = getattr(model, "step", model)
    if not isinstance(step, Step):
        raise GraphcompError(f"gc.export needs a gc.Recurrence, got {type(model).__name__}")
    try:
        text = NumbaBackend(step, np.dtype(dtype).name).standalone()
    except Unsupported as e:
        raise GraphcompError(f"the Numba backend cannot compile this model yet ({e})") from None
    path = Path(path)
    path.write_text(text)
    return path
