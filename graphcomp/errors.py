"""The one exception type graphcomp raises on purpose."""


class GraphcompError(ValueError):
    """Something about a model or its arrays is wrong; the message names the user's symbols
    and says what to do instead."""
