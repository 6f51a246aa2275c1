"""Diagrams as a textbook draws them, with graphviz: the circuit (one node per variable, a
black square on every delayed edge), the unfolded graph (one column per time step; over a
grid, the cells laid out as the grid), the computational graph of one step, and the unfolded
graph with the backward flow overlaid."""
from __future__ import annotations

from dataclasses import dataclass

import graphviz
import sympy as sp

from .. import ir
from ..errors import GraphcompError, is_count
from ..lang.step import LOSS_NAME, Step
from ..layout import cells

FONT = "Helvetica"
MATH = "Times-Italic"
KINDS = ("circuit", "unfolded", "step", "gradient")
STYLE = {
    "input": dict(shape="circle", style="filled", fillcolor="#e8eef7", color="#4a6a9a"),
    "state": dict(shape="circle", style="filled", fillcolor="#fdf1d8", color="#a5791b", penwidth="1.4"),
    "output": dict(shape="circle", style="filled", fillcolor="#e6f2e6", color="#3f7f3f"),
    "loss": dict(shape="circle", style="filled", fillcolor="#f7e1e1", color="#a33a3a"),
    "initial": dict(shape="circle", style="filled,dashed", fillcolor="#f4f4f4", color="#888888"),
}
BACKWARD = "#c0392b"   # the colour of the adjoint flow and of anti-causal edges


@dataclass(frozen=True)
class Edge:
    """In the circuit: ``dst`` reads ``src`` at ``t + offset`` (over a grid, at the point moved
    by ``offset``, a tuple), through parameters ``params``."""

    src: str
    dst: str
    offset: int | tuple
    params: tuple


def circuit_edges(step: Step) -> list[Edge]:
    """Every read between variables, with the parameters that multiply it on its way."""
    consumers = [(s, n, {}) for s, n in step.updates.items()]
    consumers += [(o, n, {}) for o, n in step.outputs.items()]
    if step.loss is not None:
        consumers.append((LOSS_NAME, step.loss, {n: o for o, n in step.outputs.items()}))
    edges = []
    for dst, root, stops in consumers:
        reach, carried = {}, {}
        for node in ir.toposort([root], stop=stops):
            if node in stops:
                reach[node] = {(stops[node], step.here)}
            elif node.op == "read":
                reach[node] = {node.attr}
            else:
                reach[node] = set().union(*(reach.get(a, set()) for a in node.args))
            multiplies = node.op == "matmul" or (node.op == "map" and isinstance(node.attr, sp.Mul))
            if multiplies and node not in stops:
                for a in node.args:
                    if a.op == "param":
                        for key in reach[node]:
                            carried.setdefault(key, []).append(a.attr)
        for key in sorted(reach.get(root, set()), key=lambda k: (k[1] != step.here, k)):
            params = tuple(dict.fromkeys(carried.get(key, [])))
            edges.append(Edge(key[0], dst, key[1], params))
    return edges


# ---------------------------------------------------------------- labels

def _html(name: str) -> str:
    """A name in italics, what follows its first underscore as a subscript: W_f -> W<sub>f</sub>."""
    name = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    base, _, sub = name.partition("_")
    return f"<i>{base}</i>" + (f"<sub>{sub}</sub>" if sub else "")


def _math(name: str, time: str | None = None) -> str:
    """An HTML label as a textbook writes a variable: h<sup>(t)</sup>."""
    return f"<{_html(name)}" + (f"<sup>({time})</sup>" if time is not None else "") + ">"


def _ahead(offset) -> bool:
    """A read ahead of the current step (along some axis, over a grid): drawn red."""
    return any(k > 0 for k in offset) if isinstance(offset, tuple) else offset > 0


def _delay_label(step: Step, offset) -> str:
    """A delay square's mark: k for t-k, +k for t+k; over a grid the moved axes, i−1, j+1."""
    if not isinstance(offset, tuple):
        return f"+{offset}" if offset > 0 else f"{-offset}"
    return ", ".join(f"{a}{'+' if k > 0 else '−'}{abs(k)}" for a, k in zip(step.axes, offset) if k)


def _point(point) -> str:
    """A time or grid point as a superscript: 3, or 1,2."""
    return ",".join(map(str, point)) if isinstance(point, tuple) else str(point)


def _params_label(params: tuple) -> str:
    return "<" + ", ".join(_html(p) for p in params) + ">" if params else ""


def _kind(step: Step, name: str) -> str:
    if name == LOSS_NAME and name not in step.signals:
        return "loss"
    if name in step.outputs:
        return "output"
    return step.signals[name].role


def _digraph(name: str, rankdir: str = "BT") -> graphviz.Digraph:
    g = graphviz.Digraph(name)
    g.attr(rankdir=rankdir, fontname=FONT, nodesep="0.45", ranksep="0.55", newrank="true")
    g.attr("node", fontname=MATH, fontsize="14", width="0.55", height="0.55", fixedsize="false")
    g.attr("edge", fontname=MATH, fontsize="12", arrowsize="0.7", color="#333333")
    return g


def _layers(step: Step, edges: list[Edge]) -> dict:
    """Vertical level of each variable: inputs at the bottom, each variable above those it
    reads at the same step, states that run backwards a row above the forward ones at their
    level, and targets read only by the loss above the loss."""
    names = list(step.signals) + list(step.outputs) + ([LOSS_NAME] if step.loss is not None else [])
    below = [(e.src, e.dst) for e in edges if e.offset == step.here]
    level = {n: 0 if _kind(step, n) == "input" else 1 for n in names}
    for _ in range(2):
        for _ in names:
            for src, dst in below:
                level[dst] = max(level[dst], level[src] + 1)
        if step.grid:   # every sweep direction is drawn alike
            break
        ahead = [n for n in names if n in step.signals and step.signals[n].role == "state"
                 and step.signals[n].direction > 0]
        below += [(f, b) for b in names if b in step.signals and step.signals[b].direction < 0
                  and step.signals[b].role == "state" for f in ahead if level[f] == level[b]]
    top = level.get(LOSS_NAME)
    for n in names:
        if _kind(step, n) == "input" and top is not None and {e.dst for e in edges if e.src == n} == {LOSS_NAME}:
            level[n] = top + 1
    return level


def _stack_rows(g: graphviz.Digraph, rows: list) -> None:
    """Invisible edges that put each row (a level) strictly above the one before."""
    for lower, upper in zip(rows, rows[1:]):
        g.edge(lower[0], upper[0], style="invis")


def _edge(g: graphviz.Digraph, src: str, dst: str, upward: bool, **attrs) -> None:
    """An edge drawn from ``src`` to ``dst``; laid out the other way round (arrow reversed)
    when it points down or back in time, so that ranks and time order stay clean."""
    if upward:
        g.edge(src, dst, **attrs)
    else:
        g.edge(dst, src, dir="back", **attrs)


# ---------------------------------------------------------------- circuit

def circuit(step: Step) -> graphviz.Digraph:
    edges = circuit_edges(step)
    level = _layers(step, edges)
    g = _digraph("circuit")
    by_level: dict = {}
    for n, lv in level.items():
        by_level.setdefault(lv, []).append(n)
    for lv, names in sorted(by_level.items()):
        with g.subgraph() as row:
            row.attr(rank="same")
            for n in names:
                row.node(f"v_{n}", _math(n), **STYLE[_kind(step, n)])
    _stack_rows(g, [[f"v_{n}" for n in names] for _, names in sorted(by_level.items())])
    for k, e in enumerate(edges):
        src, dst = f"v_{e.src}", f"v_{e.dst}"
        label = _params_label(e.params)
        up = level[e.dst] >= level[e.src]
        if e.offset == step.here:
            _edge(g, src, dst, up, label=label)
            continue
        future = _ahead(e.offset)
        sq = f"delay_{k}"
        mark = _delay_label(step, e.offset)   # over a grid the axes' names: a square that fits them
        g.node(sq, mark, shape="square", style="filled",
               fillcolor=BACKWARD if future else "black", color=BACKWARD if future else "black",
               fontcolor="white", fontname=FONT, fontsize="9", width="0.22", height="0.22",
               fixedsize="false" if step.grid else "true", margin="0.02")
        style = dict(color=BACKWARD, style="dashed") if future else {}
        _edge(g, src, sq, up, arrowhead="none", **style)
        _edge(g, sq, dst, up, label=label, **style)
    return g


# ---------------------------------------------------------------- unfolded

def columns(steps: int, max_columns: int) -> tuple[list, int | None]:
    """The steps drawn, and the step after which an ellipsis stands for the elided ones."""
    if steps <= max_columns:
        return list(range(1, steps + 1)), None
    head = (max_columns + 1) // 2
    return list(range(1, head + 1)) + list(range(steps - (max_columns - head) + 1, steps + 1)), head


def unfolded(step: Step, steps: int, max_columns: int = 6, backward: bool = False) -> graphviz.Digraph:
    if step.grid:
        return unfolded_grid(step, steps, max_columns, backward)
    if not is_count(steps):
        raise GraphcompError(f"steps must be a positive integer, got {steps!r}")
    if max_columns < 2:
        raise GraphcompError(f"max_columns must be at least 2, got {max_columns!r}")
    edges = circuit_edges(step)
    level = _layers(step, edges)
    shown, gap = columns(steps, max_columns)

    def slot(time):
        """Where a variable at ``time`` is drawn: its own column, the ellipsis, or a boundary."""
        if time < 1 or time > steps:
            return ("initial", time)
        return ("shown", time) if time in shown else ("gap", gap + 0.5)

    nodes, links = {}, {}
    for time in range(1, steps + 1):
        for e in edges:
            src, dst = (e.src, slot(time + e.offset)), (e.dst, slot(time))
            if dst[1][0] == "gap" and src[1][0] != "shown":
                continue
            for name, (what, when) in (src, dst):
                nodes[(name, when)] = what
            links.setdefault(((src[0], src[1][1]), (dst[0], dst[1][1])), e)
    for time in shown:   # variables nobody reads (a last layer without loss) still get a column
        for name in level:
            if _kind(step, name) != "input":
                nodes.setdefault((name, time), "shown")

    def nid(key):
        name, when = key
        return f"n_{name}_{when}".replace("-", "m").replace(".", "_")

    g = _digraph("gradient" if backward else "unfolded")
    notes = [f"{steps} steps: {gap + 1}…{shown[gap] - 1} elided"] if gap is not None else []
    if backward:
        notes.append("red dashed: the backward (adjoint) flow of the gradient")
    if notes:
        g.attr(label="; ".join(notes), labelloc="b", fontname=FONT, fontsize="11")
    rows: dict = {}
    for key, what in nodes.items():
        rows.setdefault(level[key[0]], []).append(key)
    for lv, keys in sorted(rows.items()):
        with g.subgraph() as row:
            row.attr(rank="same")
            for key in keys:
                name, when = key
                if nodes[key] == "gap":
                    row.node(nid(key), "⋯", shape="plaintext", fontname=FONT, fontsize="20")
                else:
                    style = STYLE["initial"] if nodes[key] == "initial" else STYLE[_kind(step, name)]
                    row.node(nid(key), _math(name, str(when)), **style)
        by_var: dict = {}
        for key in keys:
            by_var.setdefault(key[0], []).append(key)
        for var_keys in by_var.values():    # keep each row in time order, left to right
            ordered = sorted(var_keys, key=lambda k: k[1])
            for a, b in zip(ordered, ordered[1:]):
                if (a, b) not in links and (b, a) not in links:   # a real edge already orders them
                    g.edge(nid(a), nid(b), style="invis", weight="4")
    _stack_rows(g, [[nid(k) for k in keys] for _, keys in sorted(rows.items())])
    for (src, dst), e in links.items():
        style = dict(color=BACKWARD, style="dashed") if e.offset > 0 else {}
        lo, ld = level[src[0]], level[dst[0]]
        up = ld > lo or (ld == lo and dst[1] >= src[1])
        _edge(g, nid(src), nid(dst), up, label=_params_label(e.params), **style)
        if backward and nodes[src] != "initial" and _kind(step, src[0]) != "input":
            # the adjoint flows back along every edge out of a computed variable
            _edge(g, nid(dst), nid(src), not up, color=BACKWARD, style="dashed", constraint="false",
                  arrowsize="0.6")
    return g


# ---------------------------------------------------------------- unfolded over a grid

CELL = 0.9   # inches between the slots of a cell


def _slots(step: Step, level: dict) -> dict:
    """Where each variable sits in its cell, in slots (column right, row down): the states on
    a diagonal, so that the rows and columns of edges between neighbouring cells pass no
    other node; inputs below-left of them, outputs, the loss and its targets above-right."""
    states = sorted((n for n in level if _kind(step, n) == "state"), key=lambda n: (level[n], list(level).index(n)))
    first = min((level[n] for n in states), default=1)
    slots = {n: (k, k) for k, n in enumerate(states)}
    below = [n for n in level if n not in slots and level[n] < first]
    above = sorted((n for n in level if n not in slots and level[n] >= first), key=level.get)
    slots.update({n: (-1, len(states) + k) for k, n in enumerate(below)})
    slots.update({n: (len(states) + k, -1 - k) for k, n in enumerate(above)})
    return slots


def unfolded_grid(step: Step, steps, max_columns: int = 6, backward: bool = False) -> graphviz.Digraph:
    """The grid unfolded over ``steps`` = (I, J) cells, each cell where the grid has it (row i
    down, column j right), a node per variable per cell, an edge per read between neighbours;
    points outside the grid that are read (its initial values) dashed around it."""
    axes = ", ".join(map(str, step.axes))
    if len(step.axes) != 2:
        raise GraphcompError(f"draw('unfolded') lays out grids of two axes; this model's are ({axes}): "
                             "inspect model.unfold(extents) instead")
    if not (isinstance(steps, tuple) and len(steps) == 2 and all(map(is_count, steps))):
        raise GraphcompError(f"a grid over ({axes}) is drawn over a tuple of 2 positive extents, like steps=(3, 3); "
                             f"got {steps!r}")
    if max(steps) > max_columns:
        raise GraphcompError(f"steps={steps}: a grid is drawn whole, at most max_columns={max_columns} cells along "
                             "each axis; draw a smaller grid or raise max_columns")
    edges = circuit_edges(step)
    level = _layers(step, edges)
    slots = _slots(step, level)
    inside = lambda p: all(1 <= k <= n for k, n in zip(p, steps))
    nodes, links = {}, {}
    for point in cells(steps, (1, 1)):
        for e in edges:
            src, dst = (e.src, tuple(k + o for k, o in zip(point, e.offset))), (e.dst, point)
            nodes[dst] = "shown"
            nodes.setdefault(src, "shown" if inside(src[1]) else "initial")
            links.setdefault((src, dst), e)
        for name in level:   # variables nobody reads still get their node
            if _kind(step, name) != "input":
                nodes.setdefault((name, point), "shown")
    columns = max(c for c, _ in slots.values()) + 3   # a cell's width in slots, a gap included
    rows = max(r for _, r in slots.values()) - min(r for _, r in slots.values()) + 2

    def nid(key):
        name, (a, b) = key
        return f"n_{name}_{a}_{b}".replace("-", "m")

    g = graphviz.Digraph("gradient" if backward else "unfolded", engine="neato")
    g.attr(fontname=FONT, splines="false", overlap="true", outputorder="edgesfirst")   # straight edges, nodes pinned
    g.attr("node", fontname=MATH, fontsize="14", width="0.55", height="0.55", fixedsize="false")
    g.attr("edge", fontname=MATH, fontsize="12", arrowsize="0.7", color="#333333")
    note = f"{steps[0]} x {steps[1]} cells: row {step.axes[0]} down, column {step.axes[1]} right"
    if backward:
        note += "; red dashed: the backward (adjoint) flow of the gradient"
    g.attr(label=note, labelloc="b", fontsize="11")
    for key, what in nodes.items():
        name, (a, b) = key
        col, row = slots[name]
        x, y = (b * columns + col) * CELL, -(a * rows + row) * CELL
        style = STYLE["initial"] if what == "initial" else STYLE[_kind(step, name)]
        g.node(nid(key), _math(name, _point(key[1])), pos=f"{x:g},{y:g}!", **style)
    for (src, dst), e in links.items():
        style = dict(color=BACKWARD, style="dashed") if _ahead(e.offset) else {}
        g.edge(nid(src), nid(dst), label=_params_label(e.params), **style)
        if backward and nodes[src] != "initial" and _kind(step, src[0]) != "input":
            g.edge(nid(dst), nid(src), color=BACKWARD, style="dashed", arrowsize="0.6")
    return g


# ---------------------------------------------------------------- one step

def step_graph(step: Step) -> graphviz.Digraph:
    """The computational graph of one step: the IR's ops as nodes, from reads to results."""
    roots = {f"{s}": n for s, n in step.updates.items()}
    roots.update(step.outputs)
    if step.loss is not None:
        roots[LOSS_NAME] = step.loss
    g = _digraph("step")
    ids = {}
    for k, node in enumerate(ir.toposort(roots.values())):
        ids[node] = f"op{k}"
        if node.op == "read" and node.attr[1] == 0 and node.attr[0] in step.updates:
            ids[node] = f"root_{node.attr[0]}"   # h(t) read at the same step: the state's node
        elif node.op == "read":
            name, off = node.attr
            time = _when(step, off)
            kind = step.signals[name].role if name in step.signals else "state"
            g.node(ids[node], _math(name, time), **STYLE[kind])
        elif node.op == "param":
            g.node(ids[node], _math(node.attr), shape="box", style="rounded,filled", fillcolor="#eeeeee",
                   color="#777777", height="0.35")
        elif node.op == "const":
            g.node(ids[node], str(node.attr), shape="plaintext", fontname=FONT)
        else:
            g.node(ids[node], _op_label(node), shape="ellipse", fontname=FONT, fontsize="12",
                   height="0.35", width="0.35", style="filled", fillcolor="white")
            for a in node.args:
                g.edge(ids[a], ids[node])
    for name, node in roots.items():
        kind = "loss" if name == LOSS_NAME and name not in step.signals else _kind(step, name)
        g.node(f"root_{name}", _math(name, _when(step, step.here)), **STYLE[kind])
        g.edge(ids[node], f"root_{name}")
    return g


def _when(step: Step, offset) -> str:
    """A read's time as written: t, t-1; over a grid i-1, j."""
    if step.grid:
        return ", ".join(f"{a}{k:+d}" if k else str(a) for a, k in zip(step.axes, offset))
    return "t" if offset == 0 else f"t{offset:+d}"


def _op_label(node: ir.Node) -> str:
    label = ir.OPS[node.op].label(node)
    return {"@": "matmul", "sigmoid": "σ", "ᵀ": "transpose", "Σ": "sum"}.get(label, label)


def draw(step: Step, kind: str = "circuit", steps: int | None = None, max_columns: int = 6) -> graphviz.Digraph:
    """Dispatch on ``kind``; see ``Recurrence.draw``."""
    if kind not in KINDS:
        raise GraphcompError(f"unknown diagram kind {kind!r}; choose one of {list(KINDS)}")
    if kind == "circuit":
        return circuit(step)
    if kind == "step":
        return step_graph(step)
    if steps is None:
        steps = (3,) * len(step.axes) if step.grid else 3
    return unfolded(step, steps, max_columns, backward=kind == "gradient")
