"""Scaling out on Dask (``dask.distributed``): many fits at once, and data-parallel training.

It owns: importing Dask on demand (``cluster``: a clear error if it is missing), a local
cluster whose worker processes import this graphcomp (``local``), the check that every worker
runs the same graphcomp, a model as it travels (its step IR; each worker rebuilds the kernel
once and Numba loads the compiled code from its disk cache, never pickled machine code), each
worker's cache of kernels (``worker``), a list of fits run as Dask tasks on data scattered once
(``fits``: ``Train`` and ``LeastSquares`` jobs, their ``Results``), and the Trainer's
data-parallel minibatches and local SGD (``parallel``, used by ``gc.Trainer(..., client=)``).
Nothing here imports Dask until it is used."""
from .cluster import local
from .fits import LeastSquares, Result, Results, Train, fits

__all__ = ["local", "fits", "Train", "LeastSquares", "Result", "Results"]
