"""The Numba back end: kernel plans rendered as Python source (``emit``), the loops compiled
by Numba and cached on disk, the fast elementwise functions and products they call
(``runtime``), and the driver around them (``backend``)."""
