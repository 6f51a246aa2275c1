"""Reverse-mode differentiation, twice: the adjoint of one step derived once as IR (the body
of the backward loop), and backpropagation over the unfolded DAG (the oracle)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import networkx as nx
import numpy as np

from . import core as ir
from .core import Node
from ..lang.step import Step

LOSS = ("loss",)   # the loss's key among an Adjoint's consumers (no state name can equal it)


def grad_var(state: str, shape: tuple) -> Node:
    """The cotangent seed ∇s(t) of a state: the gradient of the total loss w.r.t. s(t)."""
    return ir.var(("grad", state), shape)


@dataclass(frozen=True)
class Adjoint:
    """The adjoint step. For each consumer (a state's update, or the loss ``LOSS``) it gives
    the cotangent sent to every state read ``(name, offset)`` and to every parameter, as IR in
    the step's reads (the tape) and the consumer's seed ``grad_var`` (1 for the loss)."""

    reads: dict    # consumer -> {(state, offset): Node}
    params: dict   # consumer -> {param: Node}


def adjoint(step: Step, loss_seed: Node | None = None, wrt: frozenset | None = None) -> Adjoint:
    """Derive the adjoint step once, by reverse mode over the step's IR. The loss's seed is 1
    unless ``loss_seed`` is given (a per-example weight, for kernels that fold masks in).
    ``wrt``: the nodes to differentiate with respect to instead of the parameters (say, a
    stack of weights a kernel computes once); ``params`` is then keyed by node."""
    tape = {node: ir.read(s, step.here, node.shape) for s, node in step.updates.items()
            if node.args}  # a state that is a bare leaf (s(t) = x(t)) needs no tape
    reads, params = {}, {}
    consumers = {s: (node, grad_var(s, node.shape)) for s, node in step.updates.items()}
    if step.loss is not None:
        consumers[LOSS] = (step.loss, ir.const(1) if loss_seed is None else loss_seed)
    for who, (root, seed) in consumers.items():
        ct = ir.vjp({root: seed}, stop=wrt or ())
        r = {n.attr: g for n, g in ct.items() if n.op == "read" and n.attr[0] in step.updates}
        if wrt is None:
            p = {n.attr: g for n, g in ct.items() if n.op == "param"}
        else:
            p = {n: g for n, g in ct.items() if n in wrt}
        # read the values a state's update computed from the tape instead of recomputing them
        keys = list(r) + list(p)
        exprs = ir.substitute([*r.values(), *p.values()], tape)
        reads[who] = dict(zip(keys[:len(r)], exprs[:len(r)]))
        params[who] = dict(zip(keys[len(r):], exprs[len(r):]))
    return Adjoint(reads, params)


# ---------------------------------------------------------------- the unfolded DAG

@functools.lru_cache(maxsize=None)
def _vjp_rule(node: Node):
    """The op's VJP applied to placeholders: (arg placeholders, g placeholder, cotangents)."""
    args = tuple(ir.var(("arg", i), a.shape, a.batched) for i, a in enumerate(node.args))
    g = ir.var("g", node.shape)
    copy = ir.Node(node.op, args, node.attr, node.shape, node.batched)
    return args, g, ir.OPS[node.op].vjp(copy, g)


def backprop(graph: nx.DiGraph, values: dict, seeds: dict) -> dict:
    """Reverse mode over the unfolded DAG: the cotangent of every node, given the cotangents
    ``seeds`` of some nodes (the per-step losses). Cotangents are batched: (B, *shape)."""
    ct = dict(seeds)
    for nid in reversed(list(nx.topological_sort(graph))):
        g = ct.get(nid)
        attrs = graph.nodes[nid]
        if g is None or "args" not in attrs:
            continue
        if attrs["kind"] != "op":            # a state, output or loss node passes its cotangent on
            (src,) = attrs["args"]
            ct[src] = g if src not in ct else ct[src] + g
            continue
        placeholders, gvar, rules = _vjp_rule(attrs["ir"])
        env = {p: values[a] for p, a in zip(placeholders, attrs["args"])}
        env[gvar] = g
        for a, rule in zip(attrs["args"], rules):
            if rule is None:
                continue
            val = ir.evaluate([rule], env.__getitem__)[rule]
            val = np.broadcast_to(val, g.shape[:1] + rule.shape) if not rule.batched else val
            ct[a] = val if a not in ct else ct[a] + val
    return ct
