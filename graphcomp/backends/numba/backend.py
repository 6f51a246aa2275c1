"""The Numba back end: each kernel's plan rendered as source (``emit``), its loops written to
the cache folder and imported so that Numba caches their machine code on disk, its driver
run as plain Python. Kernels are safe to share between threads: every call takes its
workspace and timelines from the calling thread's own, and the loops release the GIL."""
from __future__ import annotations

import hashlib
import linecache
import threading
from dataclasses import dataclass

import numba
import numpy as np

from ...check import Batch
from ...layout import lengths32, step_rows, timelines
from ...plan.kernels import Plans
from ...plan.nodes import Kernel as Plan
from ...plan.region import Unsupported
from ...lang.step import Step
from .cache import load
from .emit import HEAD, Driver, loops_module, work_size
from .runtime import header, runtime_name, runtime_source


def run_source(text: str, name: str, namespace: dict) -> dict:
    """Execute generated plain Python (a driver) in ``namespace``; tracebacks show its lines."""
    filename = f"<graphcomp {name} {hashlib.sha256(text.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    exec(compile(text, filename, "exec"), namespace)
    return namespace


@dataclass
class Compiled:
    """One kernel: its plan, the loops' and the driver's source, and the driver to call."""

    plan: Plan
    loops: str              # the loops' module source
    module: str             # and its name
    args: list              # the loops' arguments
    sizes: list             # the sizes they take in ``n``, in order
    driver_source: str
    driver: object
    work_size: object


class _PerThread(threading.local):
    def __init__(self):
        self.work: dict = {}       # kernel -> workspace
        self.timelines: dict = {}  # kernel -> timelines kept between calls


class NumbaBackend:
    """Runs the generated kernels; returns IR-layout results like the NumPy backends."""

    name = "numba"
    capabilities = frozenset({"seeds", "source", "epoch", "stream"})
    poison = False   # tests: fill new workspaces with NaN, so that a read before a write shows

    def __init__(self, step: Step, dtype: str = "float64"):
        self.step, self.dtype = step, np.dtype(dtype)
        self.plans = Plans(step)
        self._plans = {"forward": self.plans.forward()}
        if step.loss is not None:
            self._plans["loss_and_grad"] = self.plans.loss_and_grad()
        self._compiled: dict = {}
        self._lock = threading.Lock()
        self._mine = _PerThread()
        load(runtime_source(self.dtype.name), runtime_name(self.dtype.name))
        self._compile()

    # -------------------------------------------------------- building
    def kernel(self, name: str) -> Compiled:
        """The kernel ``name`` ("forward", "loss_and_grad", "loss_and_grad_seeded"), built
        at its first use."""
        found = self._compiled.get(name)
        if found is not None:
            return found
        with self._lock:
            if name not in self._compiled:
                plan = self._plans.get(name) or self.plans.loss_and_grad(seeded=True)
                self._compiled[name] = self._build(plan)
            return self._compiled[name]

    def _build(self, plan: Plan) -> Compiled:
        dtype = self.dtype.name
        loops, args, sizes = loops_module(plan, dtype, header(dtype))
        module = load(loops)
        driver = Driver(plan, args, sizes, self.step.params).source(plan.name, work=True)
        text = HEAD.format(what=f"the driver of {plan.name}", dtype=dtype) + \
            f"from {module.__name__} import {plan.name}_loops\n\n\n" + driver + "\n\n" + work_size(plan)
        namespace = run_source(text, plan.name, {})
        return Compiled(plan, loops, module.__name__, args, sizes, text, namespace[plan.name],
                        namespace[f"work_size_{plan.name}"])

    def driver_source(self, name: str, flavor: str = "python") -> str:
        """Kernel ``name``'s driver function alone (``flavor="numba"``: for a compiled epoch)."""
        k = self.kernel(name)
        return Driver(k.plan, k.args, k.sizes, self.step.params).source(name, work=True, flavor=flavor)

    @property
    def source(self) -> str:
        """The generated source of the kernels built so far: loops, then drivers."""
        kernels = [self.kernel(n) for n in self._plans]
        return "\n\n".join([k.loops for k in kernels] + [k.driver_source for k in kernels])

    def standalone(self) -> str:
        """One module with the runtime, the loops and the drivers: needs only NumPy and Numba."""
        dtype = self.dtype.name
        parts = [HEAD.format(what="the kernels of one recurrence", dtype=dtype), header(dtype, standalone=True)]
        for name in self._plans:
            plan = self.kernel(name).plan
            loops, args, sizes = loops_module(plan, dtype, "")
            parts.append(loops[loops.index("@njit"):])
            parts.append(Driver(plan, args, sizes, self.step.params).source(plan.name, work=True))
            parts.append(work_size(plan))
        return "\n\n".join(parts)

    def _compile(self) -> None:
        """Compile (or load from the disk cache) the kernel a user needs first, on a one-step
        batch: ``loss_and_grad``, or ``forward`` for a model without a loss. The other one
        compiles at its first call. A problem shows here, never as a Numba error later."""
        B = 1
        params = {p: np.zeros(shape, self.dtype) for p, shape in self.step.params.items()}
        inputs = {n: np.zeros((1, B) + i.shape, self.dtype) for n, i in self.step.signals.items() if i.role == "input"}
        initial = {n: np.zeros((i.history, B) + i.shape, self.dtype) for n, i in self.step.signals.items() if i.history}
        batch = Batch(1, B, params, inputs, np.ones(B, np.int64), initial, self.dtype)
        if self.step.loss is not None:
            self.loss_and_grad(batch)
        else:
            self.forward(batch)

    # -------------------------------------------------------- calling
    def release(self) -> None:
        """Drop the calling thread's workspaces and kept timelines (the next call allocates)."""
        self._mine.work.clear()
        self._mine.timelines.clear()

    def workspace(self, name: str, T: int, B: int) -> int:
        """Elements of the workspace one call of kernel ``name`` takes for T steps of B rows."""
        return self.kernel(name).work_size(T, B)

    def _arguments(self, name: str, batch: Batch) -> tuple[Compiled, list, dict, dict]:
        """The driver's arguments: sizes, lengths, the calling thread's workspace, each
        signal's timeline as (rows, n), then the parameters (IR shapes)."""
        k = self.kernel(name)
        reuse = self._mine.timelines.setdefault(name, {}) if name != "forward" else None
        ext, pre = timelines(self.step, batch, flat=True, dtype=self.dtype, reuse=reuse)
        need = max(k.work_size(batch.T, batch.B), 1)
        work = self._mine.work.get(name)
        if work is None or work.size < need:
            work = self._mine.work[name] = np.full(need, np.nan, self.dtype) if self.poison else np.empty(need, self.dtype)
        args = [batch.T, batch.B, lengths32(batch.lengths), work]
        for s in k.plan.signals:
            a = ext.get(s)
            if a is None:   # forward() without the loss's targets: never read
                a = np.zeros((batch.T, batch.B) + self.step.signals[s].array_shape, self.dtype)
            args.append(np.ascontiguousarray(a.reshape((-1,) + a.shape[2:]), dtype=self.dtype))
            ext[s] = args[-1]
        args += [np.asarray(batch.params[p], self.dtype) for p in self.step.params]
        return k, args, ext, pre

    def _call(self, k: Compiled, args: list):
        try:
            return k.driver(*args)
        except numba.core.errors.NumbaError as e:
            raise Unsupported(f"Numba could not compile the generated {k.plan.name}: {str(e).splitlines()[0]}") from e

    def forward(self, batch: Batch) -> tuple[dict, dict]:
        k, args, ext, pre = self._arguments("forward", batch)
        outs = self._call(k, args)
        T, B = batch.T, batch.B
        states = {}
        for s in self.step.states:
            a = ext[s].reshape((-1, B) + self.step.signals[s].shape)
            states[s] = a[pre[s]:pre[s] + T]
        outputs = {}
        for o, node in self.step.outputs.items():
            value = outs[o].reshape((T, B) + node.shape)
            outputs[o] = np.where(batch.valid.reshape(batch.valid.shape + (1,) * (value.ndim - 2)), value, 0)
        return states, outputs

    def loss_and_grad(self, batch: Batch, seeds: dict | None = None) -> tuple:
        """The loss and gradients; with ``seeds`` (state -> (K, B, ...) cotangents of each
        sequence's last K values, IR layout) also the initial values' cotangents (states)."""
        if seeds is None:
            k, args, _, _ = self._arguments("loss_and_grad", batch)
            return self._call(k, args)
        k, args, _, _ = self._arguments("loss_and_grad_seeded", batch)
        for s in k.plan.seeds:
            info, given = self.step.signals[s], seeds.get(s)
            shape = (max(info.history, 1) * batch.B,) + info.array_shape
            args.append(np.zeros(shape, self.dtype) if given is None else
                        np.ascontiguousarray(np.reshape(given, shape), dtype=self.dtype))
        loss, grads, cots = self._call(k, args)
        initial = {}
        for s, cot in cots.items():
            info, ring, B = self.step.signals[s], self.plans.rings.get(s), batch.B
            rows = [step_rows(tau, info.history, ring, B) for tau in range(1 - info.history, 1)]
            if rows:
                initial[s] = np.stack([cot[r:r + B] for r in rows]).reshape((len(rows), B) + info.shape)
        return loss, grads, initial

