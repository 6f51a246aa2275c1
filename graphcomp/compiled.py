"""The Numba backend: generated source, written to a cache folder and imported, so that Numba
caches the compiled kernels on disk and a second process reuses them."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numba
import numpy as np

from .check import Batch
from .codegen import KernelSource, Unsupported
from .runtime import runtime_name, runtime_source
from .reference import timelines
from .step import Step


def cache_dir() -> Path:
    """Where generated modules and Numba's compiled code live: one folder per Numba version."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "graphcomp" / f"numba-{numba.__version__}"


def load(text: str, name: str | None = None):
    """Import generated source as a module from the cache folder (written once, atomically).
    Its name is ``name``, or one derived from a hash of the text."""
    name = name or f"graphcomp_kernels_{hashlib.sha256(text.encode()).hexdigest()[:20]}"
    if name in sys.modules:
        return sys.modules[name]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class NumbaBackend:
    """Runs the generated kernels; returns IR-layout results like the NumPy backends."""

    def __init__(self, step: Step, dtype: str = "float64"):
        self.step, self.dtype = step, np.dtype(dtype)
        self.kernels = KernelSource(step, self.dtype.name)
        load(runtime_source(self.dtype.name), runtime_name(self.dtype.name))
        self.module = load(self.kernels.text)
        self._work: dict = {}      # function -> workspace kept between calls
        self._buffers: dict = {}   # function -> timelines kept between calls
        self._compile()

    @property
    def source(self) -> str:
        return self.kernels.text

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

    def _call(self, function: str, args: list):
        try:
            return getattr(self.module, function)(*args)
        except numba.core.errors.NumbaError as e:
            raise Unsupported(f"Numba could not compile the generated {function}: {str(e).splitlines()[0]}") from e

    def _arguments(self, function: str, batch: Batch) -> tuple[list, dict, dict]:
        """The kernel's arguments: sizes, lengths, the workspace, each signal's timeline as
        (rows, n), then the parameters. ``loss_and_grad`` reuses its buffers between calls."""
        reuse = self._buffers.setdefault(function, {}) if function == "loss_and_grad" else None
        ext, pre = timelines(self.step, batch, flat=True, dtype=self.dtype, reuse=reuse)
        args = [batch.T, batch.B, np.ascontiguousarray(batch.lengths, dtype=np.int32)]   # int32: 8 lanes beside float32
        if self.kernels.work[function]:
            need = getattr(self.module, f"work_size_{function}")(batch.T, batch.B)
            work = self._work.get(function)
            if work is None or work.size < need:
                work = self._work[function] = np.empty(max(need, 1), self.dtype)
            args.append(work)
        for name in self.kernels.args[function]:
            a = ext.get(name)
            if a is None:   # forward() without the loss's targets: never read
                a = np.zeros((batch.T, batch.B) + self.step.signals[name].array_shape, self.dtype)
            args.append(np.ascontiguousarray(a.reshape((-1,) + a.shape[2:]), dtype=self.dtype))
            ext[name] = args[-1]
        for p, shape in self.kernels.params.items():
            value = np.asarray(batch.params[p], dtype=self.dtype)
            args.append(self.dtype.type(value) if shape == () else
                        np.ascontiguousarray(value.reshape(shape[:1] if shape[1:] == (1,) else shape)))
        return args, ext, pre

    def forward(self, batch: Batch) -> tuple[dict, dict]:
        args, ext, pre = self._arguments("forward", batch)
        outs = self._call("forward", args)
        T, B = batch.T, batch.B
        states = {}
        for s in self.step.states:
            a = ext[s].reshape((-1, B) + self.step.signals[s].shape)
            states[s] = a[pre[s]:pre[s] + T]
        outputs = {}
        for (o, node), value in zip(self.step.outputs.items(), outs):
            value = value.reshape((T, B) + node.shape)
            outputs[o] = np.where(batch.valid.reshape(batch.valid.shape + (1,) * (value.ndim - 2)), value, 0)
        return states, outputs

    def loss_and_grad(self, batch: Batch, seeds: dict | None = None) -> tuple:
        """The loss and gradients; with ``seeds`` (state -> (K, B, ...) cotangents of each
        sequence's last K values, IR layout) also the initial values' cotangents (states)."""
        args, _, _ = self._arguments("loss_and_grad", batch)
        if seeds is None:
            loss, *grads = self._call("loss_and_grad", args)
            return float(loss), dict(zip(self.kernels.params, grads))
        for s in self.kernels.seeded:
            info = self.step.signals[s]
            given = seeds.get(s)
            shape = (max(info.history, 1) * batch.B,) + info.array_shape
            args.append(np.zeros(shape, self.dtype) if given is None else
                        np.ascontiguousarray(np.reshape(given, shape), dtype=self.dtype))
        loss, *rest = self._call("loss_and_grad_seeded", args)
        grads, cots = rest[:len(self.kernels.params)], dict(zip(self.kernels.seeded, rest[len(self.kernels.params):]))
        initial = {}
        for s, cot in cots.items():
            info, ring, B = self.step.signals[s], self.kernels.rings.get(s), batch.B
            rows = [((tau - 1) % ring if ring else tau - 1 + info.history) * B for tau in range(1 - info.history, 1)]
            if rows:
                initial[s] = np.stack([cot[r:r + B] for r in rows]).reshape((len(rows), B) + info.shape)
        return float(loss), dict(zip(self.kernels.params, grads)), initial
