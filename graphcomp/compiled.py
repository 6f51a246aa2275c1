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
from .reference import timelines
from .step import Step


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "graphcomp" / f"numba-{numba.__version__}"


def load(text: str):
    """Import generated source as a module from the cache folder (written once, atomically)."""
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gc_{key}.py"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    name = f"graphcomp_kernels_{key}"
    if name in sys.modules:
        return sys.modules[name]
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
        self.module = load(self.kernels.text)
        self._compile()

    def _compile(self) -> None:
        """Compile (or load from the disk cache) both kernels now, on a one-step batch, so that
        a problem shows at gc.compile and never as a Numba error in a later call."""
        B = 1
        params = {p: np.zeros(shape, self.dtype) for p, shape in self.step.params.items()}
        inputs = {n: np.zeros((1, B) + i.shape, self.dtype) for n, i in self.step.signals.items() if i.role == "input"}
        initial = {n: np.zeros((i.history, B) + i.shape, self.dtype) for n, i in self.step.signals.items() if i.history}
        batch = Batch(1, B, params, inputs, np.ones(B, np.int64), initial, self.dtype)
        try:
            self.forward(batch)
            if self.step.loss is not None:
                self.loss_and_grad(batch)
        except numba.core.errors.NumbaError as e:
            raise Unsupported(f"Numba could not compile the generated kernels: {str(e).splitlines()[0]}") from e

    @property
    def source(self) -> str:
        return self.kernels.text

    def _arrays(self, batch: Batch, with_grad: bool):
        ext, pre = timelines(self.step, batch, flat=True, dtype=self.dtype)
        for name, info in self.step.signals.items():
            if name not in ext:   # forward() without the loss's targets: never read
                ext[name] = np.zeros((1, batch.B) + info.array_shape, self.dtype)
        args = [batch.T, batch.B, batch.lengths.astype(np.int64)]
        if with_grad:
            w = (batch.valid / batch.B).astype(self.dtype).reshape(-1)
            args.append(w)
        args += [ext[n] for n in self.kernels.signals]
        cot = {}
        if with_grad:
            cot = {s: np.zeros_like(ext[s]) for s in self.step.states}
            args += [cot[s] for s in self.step.states]
        for p in self.kernels.params:
            value = batch.params[p].astype(self.dtype)
            shape = self.step.params[p]
            args.append(value.reshape(shape[:1]) if shape[1:] == (1,) else
                        (float(value) if shape == () else np.ascontiguousarray(value)))
        return args, ext, pre

    def forward(self, batch: Batch) -> tuple[dict, dict]:
        args, ext, pre = self._arrays(batch, with_grad=False)
        outs = self.module.forward(*args)
        states = {s: ext[s][pre[s]:pre[s] + batch.T] for s in self.step.states}
        outputs = {}
        for (o, node), value in zip(self.step.outputs.items(), outs):
            value = value.reshape((batch.T, batch.B) + value.shape[1:])
            outputs[o] = np.where(batch.valid.reshape(batch.valid.shape + (1,) * (value.ndim - 2)), value, 0)
        return states, outputs

    def loss_and_grad(self, batch: Batch) -> tuple[float, dict]:
        args, _, _ = self._arrays(batch, with_grad=True)
        loss, *grads = self.module.loss_and_grad(*args)
        return float(loss), dict(zip(self.kernels.params, grads))
