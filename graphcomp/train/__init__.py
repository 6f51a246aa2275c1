"""Training: the ``Trainer`` (minibatches of sequences, clipping, truncated BPTT, early
stopping, checkpoints), the optimizers and their compiled update rules (``optim``), and a
training epoch compiled in one function (``epoch``)."""
from .trainer import History, Trainer  # noqa: F401
