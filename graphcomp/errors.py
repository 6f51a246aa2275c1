"""The one exception type graphcomp raises on purpose."""


class GraphcompError(ValueError):
    """Something about a model or its arrays is wrong; the message names the user's symbols
    and says what to do instead."""


class NotFinite(GraphcompError):
    """A state, the loss or a gradient overflowed to inf or NaN for the given parameters and
    inputs (a trainer reads it as divergence)."""
