"""Data-parallel training for ``gc.Trainer(model, optimizer, ..., client=client)``.

The data is cut into shards, one per worker thread, each sent once per fit to one worker.
Every minibatch the trainer draws (the same order as in one process) is split by shard; each
worker returns its sequences' summed loss and gradient, and the trainer combines them and
takes its usual update: the same updates as one process, to rounding (only the order of the
sums differs). With ``average_every=k`` (local SGD) each worker instead trains its own copy
for k updates on its part of k minibatches, and the trainer averages the copies (and the
optimizer's state), weighted by the sequences each saw: one exchange per k updates.

A worker that dies takes its shards with it: they are sent again from the trainer's copy and
the update is recomputed, to the same result."""
from __future__ import annotations

from concurrent.futures import CancelledError
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GraphcompError, NotFinite, is_count
from .cluster import Model, distributed, prepare

if TYPE_CHECKING:
    from distributed import Client

    from ..train.grids import Grids
    from ..train.trainer import Sequences

RETRIES = 5   # an update whose data the cluster lost is recomputed this often before giving up


class DataParallel:
    """A trainer's minibatches on a Dask cluster (see the module's docstring)."""

    def __init__(self, client: "Client | None", trainer, every: int | None):
        if client is None:
            raise GraphcompError("average_every=k averages the parameters of the workers' copies: pass client=... too")
        if every is not None and not is_count(every):
            raise GraphcompError(f"average_every must be a positive number of updates, got {every!r}")
        if trainer.kernel.program.tree:
            raise GraphcompError("client= splits minibatches of sequences or images across the workers; a tree model "
                                 "trains in one process (make the Trainer without client=), or run many tree fits "
                                 "at once with gc.scale.fits")
        if trainer.tbptt is not None:
            raise GraphcompError("tbptt carries each minibatch's state between its updates in one process: make the "
                                 "Trainer without client= (or without tbptt)")
        if trainer.compiled is True:
            raise GraphcompError("compiled=True runs whole epochs in one process; with client= every minibatch is "
                                 "split across the workers: leave compiled at its default")
        prepare(client)
        self.client, self.every = client, every
        self.spec = Model.of(trainer.kernel)
        self.model = client.scatter(self.spec, broadcast=True, hash=False)   # on every worker, sent once
        self.data: "Sequences | Grids | None" = None
        self.bounds = np.zeros(1, np.int64)   # shard w holds the sequences bounds[w]:bounds[w + 1]
        self.shards: list = []                # their futures

    def place(self, data: "Sequences | Grids") -> None:
        """Cut ``data`` into a shard per worker thread and send each to its worker."""
        slots = [a for a, n in sorted(self.client.nthreads().items()) for _ in range(n)]
        if not slots:
            raise GraphcompError("the cluster has no workers: start some, or wait with client.wait_for_workers(n)")
        W = min(len(slots), len(data))
        self.data, self.bounds = data, np.linspace(0, len(data), W + 1).round().astype(np.int64)
        self.shards = [self._send(w, slots[w]) for w in range(W)]

    def _send(self, w: int, worker: str | None = None):
        index = np.arange(self.bounds[w], self.bounds[w + 1])
        shard = type(self.data)(self.data.batch(index)[0], self.data.lengths[index])   # Sequences or Grids
        return self.client.scatter(shard, workers=None if worker is None else [worker], hash=False)

    def _parts(self, index: np.ndarray) -> list:
        """The minibatch ``index`` by shard: [(shard, positions in it)], shards in order."""
        owner = np.searchsorted(self.bounds, index, side="right") - 1
        return [(w, index[owner == w] - self.bounds[w]) for w in np.unique(owner)]

    def _gather(self, submit, parts: list) -> list:
        """``submit(shard, part)`` for every part, their results in order. Data a dead worker
        took with it is sent again and the tasks rerun."""
        dd = distributed()
        for _ in range(RETRIES):
            futures = [submit(w, part) for w, part in parts]
            try:
                return self.client.gather(futures)
            except CancelledError:
                if self.model.status != "finished":
                    self.model = self.client.scatter(self.spec, broadcast=True, hash=False)
                self.shards = [f if f.status == "finished" else self._send(w) for w, f in enumerate(self.shards)]
            except dd.KilledWorker as e:
                raise GraphcompError(f"the workers computing a minibatch kept dying ({e}); check their memory limit "
                                     "and logs") from None
        raise GraphcompError(f"the cluster lost the workers holding the data {RETRIES} times in one update; check "
                             "that its workers stay up")

    def loss_and_grad(self, params: dict, index: np.ndarray) -> tuple[float, dict]:
        """The minibatch ``index``'s mean loss and gradient, summed from the workers' parts."""
        from .worker import shard_loss_and_grad
        parts = self._gather(lambda w, pos: self.client.submit(shard_loss_and_grad, self.model, self.shards[w], params,
                                                               pos, pure=False), self._parts(index))
        B = len(index)
        return sum(loss for loss, _ in parts) / B, {p: sum(g[p] for _, g in parts) / B for p in parts[0][1]}

    def local_round(self, trainer, batches: list, epoch: int) -> list:
        """A round of local SGD on the minibatches ``batches``: each worker updates its copy on
        its parts of them, then the copies are averaged into ``trainer``'s parameters and
        optimizer state. Returns each minibatch's mean loss per example."""
        from .worker import local_round
        parts: dict = {}   # shard -> its positions in each minibatch of the round (empty: none there)
        for j, index in enumerate(batches):
            for w, pos in self._parts(index):
                parts.setdefault(w, [np.zeros(0, np.int64)] * len(batches))[j] = pos
        state = {p: trainer.state[p] for p in trainer.train}
        if trainer.steps:   # what a divergence goes back to (none before the first update, as in one process)
            trainer._good = (trainer._params, state, trainer.steps)   # replaced below, not changed in place
        try:
            out = self._gather(lambda w, mine: self.client.submit(
                local_round, self.model, self.shards[w], trainer._params, state, trainer.optimizer, trainer.train,
                trainer.clip_norm, trainer.clip_value, mine, trainer.steps, pure=False), list(parts.items()))
        except NotFinite as e:
            trainer._diverged(epoch, str(e))
        seen = np.array([[len(pos) for pos in mine] for mine in parts.values()], np.float64)   # (shards, minibatches)
        weights = seen.sum(1) / seen.sum()
        average = lambda values: np.array(sum(w * v for w, v in zip(weights, values)), np.float64)
        trainer._params = {**trainer._params, **{p: average(o[0][p] for o in out) for p in trainer.train}}
        trainer.state = {p: {s: average(o[1][p][s] for o in out) for s in state[p]} for p in trainer.train}
        trainer.steps += len(batches)
        return list(np.sum([o[2] for o in out], axis=0) / seen.sum(0))
