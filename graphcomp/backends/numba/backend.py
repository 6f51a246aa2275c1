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

from ... import ir
from ...check import Batch
from ...layout import interior, lengths32, step_rows, timelines, tree_levels, tree_timelines
from ...plan.kernels import Plans
from ...plan.nodes import Kernel as Plan
from ...plan.region import Unsupported
from ...lang.step import Step
from .cache import load
from .emit import HEAD, Driver, loops_module, work_size
from .runtime import header, runtime_name, runtime_source


def _lead(batch: Batch) -> tuple:
    """The leading axes of a batch's arrays: (T,), or over a grid its extents."""
    return batch.T if isinstance(batch.T, tuple) else (batch.T,)


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

    def __init__(self, step: Step, dtype: str = "float64", warm: bool = True):
        self.step, self.dtype = step, np.dtype(dtype)
        self.warmed = False
        self.plans = Plans(step)
        self._plans = {"forward": self.plans.forward()}
        if step.loss is not None:
            self._plans["loss_and_grad"] = self.plans.loss_and_grad()
        self._compiled: dict = {}
        self._lock = threading.Lock()
        self._mine = _PerThread()
        if warm:
            self.warm()

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
        load(runtime_source(dtype), runtime_name(dtype))
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
        names = self._plans
        first = "loss_and_grad" if "loss_and_grad" in names else "forward"
        plan = self.kernel(first).plan
        signals = {s: dict(before=plan.buffer(f"{s}_").before, rows=plan.buffer(f"{s}_").rows,
                           width=plan.buffer(f"{s}_").width) for s in plan.signals}
        params = {p: ir.user_shape(shape) for p, shape in self.step.params.items()}
        call = self.kernel(first).driver_source.split(f"def {first}(", 1)[1].split(")", 1)[0]
        usage = (f"\n\nEntry points: {', '.join(names)}. For example\n\n"
                 f"    work = np.empty(work_size_{first}(T, B))\n"
                 f"    {'loss, grads' if first == 'loss_and_grad' else 'outputs'} = {first}({call})\n\n"
                 "with each signal's timeline laid out as SIGNALS says (rows of B, `before` steps of margin\n"
                 "first, zeros there unless initial values), the parameters in PARAMS's order and shapes;\n"
                 "loss_and_grad returns the loss and {parameter name: gradient}.")
        head = HEAD.format(what="the kernels of one recurrence", dtype=dtype).replace('."""', usage + '"""', 1)
        parts = [head, f"SIGNALS = {signals!r}\nPARAMS = {params!r}\n", header(dtype, standalone=True)]
        for name in self._plans:
            plan = self.kernel(name).plan
            loops, args, sizes = loops_module(plan, dtype, "")
            parts.append(loops[loops.index("@njit"):])
            parts.append(Driver(plan, args, sizes, self.step.params).source(plan.name, work=True))
            parts.append(work_size(plan))
        return "\n\n".join(parts)

    def warm(self) -> None:
        """Compile (or load from the disk cache) the kernel a user needs first, on a one-step
        batch: ``loss_and_grad``, or ``forward`` for a model without a loss. The other one
        compiles at its first call. A problem shows here, never as a Numba error later."""
        B, grid = 1, self.step.grid
        T = (1,) * len(self.step.axes) if grid else 1
        lead = T if grid else (T,)
        params = {p: np.zeros(shape, self.dtype) for p, shape in self.step.params.items()}
        inputs = {n: np.zeros(lead + (B,) + i.shape, self.dtype) for n, i in self.step.signals.items() if i.role == "input"}
        initial = {} if grid else {n: np.zeros((i.history, B) + i.shape, self.dtype)
                                   for n, i in self.step.signals.items() if i.history}
        lengths = np.ones((B, len(T)) if grid else B, np.int64)
        children = np.zeros((1, B, self.step.children), np.int64) if self.step.tree else None
        if self.step.tree:
            initial = {}
        batch = Batch(T, B, params, inputs, lengths, initial, self.dtype, children)
        if self.step.loss is not None:
            self.loss_and_grad(batch)
        else:
            self.forward(batch)
        self.warmed = True

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
        if self.step.tree:
            nodes, trees, levels, child = tree_levels(batch.children, batch.lengths)
            ext, pre = tree_timelines(self.step, batch, nodes, trees, dtype=self.dtype), (nodes, trees)
            T, topology = len(nodes), [levels, child]
        else:
            reuse = self._mine.timelines.setdefault(name, {}) if name != "forward" else None
            ext, pre = timelines(self.step, batch, flat=True, dtype=self.dtype, reuse=reuse)
            T, topology = batch.T, []
        need = max(k.work_size(T, batch.B), 1)
        work = self._mine.work.get(name)
        if work is None or work.size < need:
            work = self._mine.work[name] = np.full(need, np.nan, self.dtype) if self.poison else np.empty(need, self.dtype)
        args = [T, batch.B, lengths32(batch.lengths), work, *topology]
        for s in k.plan.signals:
            a = ext.get(s)
            shape = self.step.signals[s].array_shape
            if a is None:   # forward() without the loss's targets: never read
                a = np.zeros(((T + batch.B,) if self.step.tree else _lead(batch) + (batch.B,)) + shape, self.dtype)
            args.append(np.ascontiguousarray(a.reshape((-1,) + shape), dtype=self.dtype))
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
        B, lead = batch.B, _lead(batch)
        if self.step.tree:   # back from the kernels' order to node-major (N, B, ...)
            nodes, trees = pre
            def back(a, shape):
                out = np.zeros((batch.T, B) + shape, self.dtype)
                out[nodes, trees] = a[:len(nodes)].reshape((len(nodes),) + shape)
                return out
            return ({s: back(ext[s], self.step.signals[s].shape) for s in self.step.states},
                    {o: back(outs[o], node.shape) for o, node in self.step.outputs.items()})
        states = {}
        for s in self.step.states:
            margins = self.step.signals[s].margins
            padded = tuple(n + b + a for n, (b, a) in zip(lead, margins)) if self.step.grid else (-1,)
            states[s] = interior(ext[s].reshape(padded + (B,) + self.step.signals[s].shape), pre[s], batch.T)
        outputs = {}
        for o, node in self.step.outputs.items():
            value = outs[o].reshape(lead + (B,) + node.shape)
            valid = batch.valid
            outputs[o] = np.where(valid.reshape(valid.shape + (1,) * (value.ndim - valid.ndim)), value, 0)
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
        loss, grads, *cots = self._call(k, args)   # no seeded state: no cotangents come back
        cots = cots[0] if cots else {}
        initial = {}
        for s, cot in cots.items():
            info, ring, B = self.step.signals[s], self.plans.rings.get(s), batch.B
            rows = [step_rows(tau, info.history, ring, B) for tau in range(1 - info.history, 1)]
            if rows:
                initial[s] = np.stack([cot[r:r + B] for r in rows]).reshape((len(rows), B) + info.shape)
        return loss, grads, initial

