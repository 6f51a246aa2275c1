"""The step IR and what transforms it: frozen, hash-consed nodes with each op's rules in one
class, and the interpreters over them (``core``); the elementwise functions known by name
and their printers (``functions``); reverse mode, once per step and over the unfolded DAG
(``autodiff``); IR-to-IR passes (``passes``). ``graphcomp.ir`` itself is ``core``."""
from .core import (LEAVES, OPS, Node, Op, Shape, X, add, broadcast, concat, const, count, derivative,  # noqa: F401
                   elementwise_sympy, emap, evaluate, jvp, logsumexp, matmul, mul, numpy_function, param,
                   pretty, read, rewrite, substitute, take, to_sympy, total, toposort, transpose, typecheck,
                   user_shape, var, vjp, zeros)
