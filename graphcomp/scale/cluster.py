"""The cluster side of scaling out: Dask imported on demand, a local cluster whose workers
import this graphcomp, the check that every worker runs the same graphcomp, a model as it
travels (its step IR, never compiled code) and a worker's cache of the kernels built from it."""
from __future__ import annotations

import hashlib
import os
import pickle
import platform
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GraphcompError
from ..kernel import Kernel, compile
from ..lang.step import Step

if TYPE_CHECKING:
    from distributed import Client

PLUGIN = "graphcomp-kernels"   # the worker plugin holding each worker's kernels
KEEP = 16                      # kernels a worker keeps (each holds its workspace), the most recently used
PACKAGE = Path(__file__).resolve().parent.parent   # this graphcomp's package directory


def distributed():
    """``dask.distributed``, or a GraphcompError that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise GraphcompError("scaling out runs on Dask, which is not installed: pip install 'graphcomp[dask]' "
                             "(or pip install 'dask[distributed]')") from None
    return distributed


def local(n_workers: int | None = None, threads_per_worker: int = 1, **options) -> "Client":
    """A ``dask.distributed.Client`` of a new local cluster: ``n_workers`` worker processes
    (default one per core) of ``threads_per_worker`` threads, on the loopback interface, no
    dashboard unless ``dashboard_address=`` is given; other keywords go to ``LocalCluster``.
    Its workers are spawned with this process's ``sys.path``, so they import this graphcomp
    (a source checkout too). Closing the client closes the cluster:
    ``with gc.scale.local() as client: ...``."""
    dd = distributed()
    options = {"processes": True, "host": "127.0.0.1", "dashboard_address": None, **options}
    return dd.Client(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=threads_per_worker, **options)


def fingerprint() -> str:
    """A hash of this graphcomp's source: two processes with equal fingerprints run the same code."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def versions() -> dict:
    """What a kernel's results depend on besides graphcomp: Python's, NumPy's and Numba's versions."""
    import numba
    import numpy
    return {"Python": platform.python_version(), "NumPy": numpy.__version__, "Numba": numba.__version__}


def worker_info(dask_worker=None) -> tuple:
    """Run on each worker by ``prepare``: the versions it runs, its graphcomp's fingerprint and
    place, and whether it has the kernel cache."""
    return versions(), fingerprint(), str(PACKAGE), dask_worker is not None and PLUGIN in dask_worker.plugins


def prepare(client: "Client") -> None:
    """Check that ``client``'s cluster has workers that all run this graphcomp (and the same
    Python, NumPy and Numba), and give each of them a kernel cache (once per cluster:
    registering it again would empty the caches)."""
    distributed()
    if not hasattr(client, "scatter") or not hasattr(client, "run"):
        raise GraphcompError(f"client must be a dask.distributed.Client, got {type(client).__name__}: "
                             "gc.scale.local() starts one on this machine, Client('tcp://host:8786') connects")
    try:
        info = client.run(worker_info)
    except Exception as e:   # a worker without this graphcomp.scale cannot even unpickle the check
        raise GraphcompError(f"the workers cannot run graphcomp's check ({type(e).__name__}: {e}): install the "
                             f"same graphcomp on them as this process's ({PACKAGE})") from None
    if not info:
        raise GraphcompError("the cluster has no workers: start some, or wait for them with client.wait_for_workers(n)")
    mine = versions()
    for address, (theirs, _, _, _) in sorted(info.items()):
        for name, version in theirs.items():
            if version != mine[name]:
                raise GraphcompError(f"worker {address} runs {name} {version}, this process {name} {mine[name]}: "
                                     f"install the same {name} on every worker (kernels compiled by another "
                                     "version could give other results)")
    ours = fingerprint()
    for address, (_, theirs, where, _) in sorted(info.items()):
        if theirs != ours:
            raise GraphcompError(f"worker {address} runs another graphcomp ({where}) than this process ({PACKAGE}): "
                                 "install the same graphcomp on every worker (a source checkout: start the workers "
                                 "with its directory on their PYTHONPATH)")
    if not all(has for *_, has in info.values()):
        from .worker import KernelCache
        client.register_plugin(KernelCache(), name=PLUGIN)


@dataclass(frozen=True)
class Model:
    """A model as it travels to the workers: its step IR, back end and dtype. A worker builds
    the kernel from them (Numba loads the compiled code from its disk cache); ``key`` (a hash
    of the pickled step) names it in the worker's cache."""
    step: Step
    backend: str | None
    dtype: str
    key: str

    @classmethod
    def of(cls, model, dtype: str = "float64") -> "Model":
        """A kernel travels with its back end and dtype; a model (``gc.Recurrence``) is compiled
        on the worker as ``gc.compile(model, dtype=dtype)`` would."""
        if isinstance(model, Kernel):
            step, backend, dtype = model.program, model.backend, model.dtype.name
        else:
            step, backend = getattr(model, "step", model), None
            if not isinstance(step, Step):
                raise GraphcompError(f"a fit needs a gc.Recurrence or a compiled kernel, got {type(model).__name__}")
        return cls(step, backend, dtype, hashlib.sha256(pickle.dumps((step, backend, dtype))).hexdigest())

    def compile(self) -> Kernel:
        return compile(self.step, backend=self.backend, dtype=self.dtype)


class Kernels:
    """A process's kernels by model key, built once each, the ``KEEP`` most recently used kept.
    ``built`` counts the builds of each key (a worker compiles a model once)."""

    def __init__(self, keep: int = KEEP):
        self.keep, self.built = keep, {}
        self._kernels: OrderedDict = OrderedDict()
        self._lock = threading.Lock()   # a worker's threads share it; a model is built by one of them

    def get(self, model: Model) -> Kernel:
        with self._lock:
            kernel = self._kernels.get(model.key)
            if kernel is None:
                kernel = self._kernels[model.key] = model.compile()
                self.built[model.key] = self.built.get(model.key, 0) + 1
                while len(self._kernels) > self.keep:
                    self._kernels.popitem(last=False)
            self._kernels.move_to_end(model.key)
            return kernel
