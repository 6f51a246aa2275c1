"""The exception types graphcomp raises on purpose, and the check of a count argument."""

import numbers


class GraphcompError(ValueError):
    """Something about a model or its arrays is wrong; the message names the user's symbols
    and says what to do instead."""


class NotFinite(GraphcompError):
    """A state, the loss or a gradient overflowed to inf or NaN for the given parameters and
    inputs (a trainer reads it as divergence)."""


class Diverged(NotFinite):
    """A fit diverged: after some updates its parameters made a state, the loss or a gradient
    overflow (``gc.scale.fits`` reports such a fit and carries on with the others)."""

    @classmethod
    def during(cls, epoch: int, steps: int, cause: Exception | str) -> "Diverged":
        """The trainer's report: where it diverged, why, and what to do."""
        return cls(f"training diverged in epoch {epoch + 1} after {steps} updates: {cause}. trainer.params holds "
                   "the last parameters whose loss was finite; lower the learning rate or set clip_norm")


def is_count(value) -> bool:
    """A positive integer (not a bool): a size, a number of steps, layers or sequences."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
