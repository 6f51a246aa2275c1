"""Unfolding: the step applied ``steps`` times, as an ordinary networkx DAG.

Node ids are tuples ``(kind, name, time)`` for variables and ``("op", k, time)`` for the k-th
op of the step at that time. Every node has the attributes ``kind`` (``param``, ``input``,
``state``, ``op``, ``output``, ``loss``), ``name`` and ``time`` (None for parameters, which
appear once and feed every step). Computed nodes list their arguments, in order, in ``args``;
op nodes carry their IR node in ``ir``. Values read before the first step (or, for a state
that runs backwards, after the last) come from nodes marked ``initial=True``.
"""
from __future__ import annotations

from typing import Callable

import networkx as nx
import numpy as np

from .. import ir
from ..errors import GraphcompError, is_count
from ..lang.step import LOSS_NAME, Step
from ..layout import cells


def unfold(step: Step, steps, children=None) -> nx.DiGraph:
    """The DAG of ``steps`` applications of the step; it grows linearly with ``steps``. Over a
    grid, ``steps`` is the extent of each axis and a node's ``time`` is its point (i, j, ...).
    Over a tree, ``children`` (N, K) gives each node's children (0 for none) and ``steps`` its
    node count; a missing child is an ``initial`` node whose time is ("none", v, k)."""
    if step.tree:
        if children is None or np.ndim(children) != 2:
            raise GraphcompError("a tree model unfolds over one tree: pass children, an int array (N, K) with "
                                 "children[v-1, k] the k-th child of node v (0 for none)")
        kids = np.asarray(children)
        points, inside = range(1, steps + 1), lambda p: isinstance(p, int) and 1 <= p <= steps

        def shifted(p, off):
            if isinstance(off, tuple):
                c = int(kids[p - 1, off[1]]) if off[1] < kids.shape[1] else 0
                return c if c else ("none", p, off[1])
            return p + off
    elif step.grid:
        if not (isinstance(steps, tuple) and len(steps) == len(step.axes) and all(map(is_count, steps))):
            raise GraphcompError(f"a grid over ({', '.join(map(str, step.axes))}) unfolds over a tuple of "
                                 f"{len(step.axes)} positive extents, like ({', '.join(['3'] * len(step.axes))}); got {steps!r}")
        points = list(cells(steps, (1,) * len(steps)))
        inside = lambda p: all(1 <= k <= n for k, n in zip(p, steps))
        shifted = lambda p, off: tuple(k + o for k, o in zip(p, off))
    elif not is_count(steps):
        raise GraphcompError(f"steps must be a positive integer, got {steps!r}")
    else:
        points, inside, shifted = range(1, steps + 1), lambda p: 1 <= p <= steps, lambda p, off: p + off
    roots = step.roots()
    order = ir.toposort(roots)
    index = {node: k for k, node in enumerate(order)}
    g = nx.DiGraph()
    for name, shape in step.params.items():
        g.add_node(("param", name, None), kind="param", name=name, time=None, shape=shape)

    def signal(name: str, time: int):
        info = step.signals[name]
        nid = (info.role, name, time)
        if nid not in g:
            g.add_node(nid, kind=info.role, name=name, time=time, shape=info.shape,
                       initial=not inside(time))
        return nid

    def computed(kind: str, name: str, time: int, root) -> None:
        nid = (kind, name, time)
        g.add_node(nid, kind=kind, name=name, time=time, shape=root.shape, args=[ids[root]])
        g.add_edge(ids[root], nid)

    for time in points:
        ids = {}
        for node in order:
            if node.op == "read":
                ids[node] = signal(node.attr[0], shifted(time, node.attr[1]))
            elif node.op == "param":
                ids[node] = ("param", node.attr, None)
            else:
                nid = ids[node] = ("op", index[node], time)
                args = [ids[a] for a in node.args]
                g.add_node(nid, kind="op", name=ir.OPS[node.op].label(node), time=time, shape=node.shape,
                           ir=node, args=args)
                g.add_edges_from((a, nid) for a in args)
        for s, root in step.updates.items():
            signal(s, time)
            g.nodes[("state", s, time)].update(args=[ids[root]], initial=False)
            g.add_edge(ids[root], ("state", s, time))
        for o, root in step.outputs.items():
            computed("output", o, time, root)
        if step.loss is not None:
            computed("loss", LOSS_NAME, time, step.loss)
    return g


def evaluate(graph: nx.DiGraph, leaf: Callable[[tuple, dict], np.ndarray]) -> dict:
    """The value of every node, in topological order; ``leaf(id, attrs)`` supplies parameters,
    inputs and initial values."""
    values = {}
    for nid in nx.topological_sort(graph):
        attrs = graph.nodes[nid]
        if attrs["kind"] == "op":
            node = attrs["ir"]
            values[nid] = ir.OPS[node.op].evaluate(node, [values[a] for a in attrs["args"]])
        elif "args" in attrs:
            values[nid] = values[attrs["args"][0]]
        else:
            values[nid] = leaf(nid, attrs)
    return values
