"""The exception types graphcomp raises on purpose, and the check of a count argument."""

import numbers


class GraphcompError(ValueError):
    """Something about a model or its arrays is wrong; the message names the user's symbols
    and says what to do instead."""


class NotFinite(GraphcompError):
    """A state, the loss or a gradient overflowed to inf or NaN for the given parameters and
    inputs (a trainer reads it as divergence)."""


def is_count(value) -> bool:
    """A positive integer (not a bool): a size, a number of steps, layers or sequences."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
