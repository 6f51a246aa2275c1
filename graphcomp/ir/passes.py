"""IR-to-IR passes the code generator runs on a step before deriving its adjoint.

``fuse_products`` is horizontal fusion: products of several weight matrices with the same
vector (an LSTM's ``W_i h(t-1)``, ``W_f h(t-1)``, ...) become one product with the stacked
weights, sliced afterwards. Derived after it, the adjoint sends one stacked cotangent back
through one product too (``ir.add`` adds slices' cotangents block by block), and the stacked
weights' gradient is one outer product."""
from __future__ import annotations

import dataclasses

from . import core as ir
from .core import Node
from ..lang.step import Step


def _weight_product(node: Node) -> bool:
    """``W v``: an unbatched matrix times a batched column vector."""
    if node.op != "matmul":
        return False
    w, v = node.args
    return not w.batched and v.batched and v.shape[1] == 1


def fuse_products(roots: list) -> dict:
    """For every vector multiplied by two or more weight matrices: one product with the
    matrices stacked. Returns the mapping of every node under ``roots`` to its fused form."""
    groups: dict = {}
    for node in ir.toposort(roots):
        if _weight_product(node):
            groups.setdefault(node.args[1], []).append(node)
    mapping = {}
    for v, products in groups.items():
        if len(products) < 2:
            continue
        stacked = ir.matmul(ir.concat(*(p.args[0] for p in products)), v)
        lo = 0
        for p in products:
            mapping[p] = ir.take(stacked, lo, lo + p.shape[0])
            lo += p.shape[0]
    return ir.rewrite(roots, mapping)


def fused_step(step: Step) -> Step:
    """The step with ``fuse_products`` applied to its updates, outputs and loss together."""
    new = fuse_products(step.roots())
    return dataclasses.replace(
        step, updates={s: new[n] for s, n in step.updates.items()},
        outputs={o: new[n] for o, n in step.outputs.items()},
        loss=None if step.loss is None else new[step.loss])
