"""What runs on a Dask worker: the plugin that holds the worker's kernels, and the tasks (one
fit of many; one shard's part of a minibatch's loss and gradient; one shard's round of local
SGD). Arrays that arrive in a task may be read-only views of the message: the tasks copy what
they change."""
from __future__ import annotations

import numpy as np
from distributed import WorkerPlugin, get_worker

from ..train.optim import Optimizer, clip
from .cluster import PLUGIN, Kernels, Model


class KernelCache(WorkerPlugin):
    """Each worker's kernels (``Kernels``), built on the worker from the models its tasks bring."""

    def setup(self, worker) -> None:
        self.kernels = Kernels()


def kernels() -> Kernels:
    """This worker's cache (a worker the plugin has not reached yet builds its kernels afresh)."""
    plugin = get_worker().plugins.get(PLUGIN)
    return plugin.kernels if plugin is not None else Kernels()


def fit(job, data, validation):
    """One job of ``gc.scale.fits``: its ``Result``, with the worker it ran on."""
    result = job.run(kernels().get(job.model), data, validation)
    result.worker = get_worker().address
    return result


def shard_loss_and_grad(model: Model, shard, params: dict, positions: np.ndarray) -> tuple[float, dict]:
    """The summed loss and gradient of the shard's sequences ``positions`` (one worker's part
    of a minibatch): the kernel's mean times their number, in float64."""
    inputs, lengths = shard.batch(positions)
    loss, grads = kernels().get(model).loss_and_grad(params, inputs, lengths=lengths)
    n = len(positions)
    return float(loss) * n, {p: np.asarray(g, np.float64) * n for p, g in grads.items()}


def local_round(model: Model, shard, params: dict, state: dict, optimizer: Optimizer, train: list,
                clip_norm, clip_value, parts: list, step: int) -> tuple[dict, dict, list]:
    """Local SGD on one shard: an update on each of ``parts`` (its positions in the round's
    minibatches; an empty part is no update), the j-th counted as update ``step + j``. Returns
    the trained parameters, the optimizer's state and each part's summed loss."""
    kernel = kernels().get(model)
    params = {p: np.array(v, np.float64) for p, v in params.items()}
    state = {p: {s: np.array(a, np.float64) for s, a in slots.items()} for p, slots in state.items()}
    losses = [0.0] * len(parts)
    for j, positions in enumerate(parts):
        if not len(positions):
            continue
        inputs, lengths = shard.batch(positions)
        loss, grads = kernel.loss_and_grad(params, inputs, lengths=lengths)
        grads = {p: np.array(grads[p], np.float64) for p in train}
        clip(grads, clip_norm, clip_value)
        optimizer.update(params, grads, state, step + j)
        losses[j] = float(loss) * len(positions)
    return {p: params[p] for p in train}, state, losses
