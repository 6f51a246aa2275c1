"""The diagrams' DOT structure: variables, delay squares, columns, elision, the backward
overlay, the ops of one step; and that graphviz renders them."""
import re

import pytest
import sympy as sp

import graphcomp as gc
from graphcomp import ir
from graphcomp.views.draw import circuit_edges

from catalogue import bidirectional, delays, elman, lstm

t = gc.t


def nodes(g):
    """name -> attribute text of every node statement."""
    out = {}
    for line in g.source.splitlines():
        m = re.match(r"\s*(\w+) \[(.*)\]$", line)
        if m and "->" not in line and m.group(1) not in ("graph", "node", "edge"):
            out[m.group(1)] = m.group(2)
    return out


def edges(g, visible=True):
    out = []
    for line in g.source.splitlines():
        m = re.match(r"\s*(\w+) -> (\w+)(?: \[(.*)\])?$", line)
        if m and (not visible or "invis" not in (m.group(3) or "")):
            out.append((m.group(1), m.group(2), m.group(3) or ""))
    return out


def squares(g):
    return {n: re.search(r"label=\"?([^\s\"]+)", a).group(1) for n, a in nodes(g).items() if "shape=square" in a}


def test_circuit_of_an_elman_network():
    g = elman().model.draw("circuit")
    variables = {n for n in nodes(g) if n.startswith("v_")}
    assert variables == {"v_h", "v_x", "v_o", "v_y", "v_L"}
    assert list(squares(g).values()) == ["1"]                 # one delayed edge, delay 1
    (sq,) = squares(g)
    assert "fillcolor=black" in nodes(g)[sq]
    real = edges(g)
    assert len(real) == 6                                     # x-U->h, h->■, ■-W->h, h-V->o, o->L, y->L
    labels = {re.search(r"label=<(.*?)> ", a + " ").group(1) for _, _, a in real if "label=<" in a}
    assert labels == {"<i>U</i>", "<i>W</i>", "<i>V</i>"}
    into_square = [e for e in real if sq in e[:2]]
    assert {e[0] for e in into_square} | {e[1] for e in into_square} == {"v_h", sq}


def test_every_delayed_edge_has_a_square_marked_with_its_delay():
    case = delays()
    g = case.model.draw("circuit")
    delayed = [e for e in circuit_edges(case.model.step) if e.offset]
    assert sorted(squares(g).values()) == sorted(str(-e.offset) for e in delayed) == ["1", "2", "2", "3"]


def test_anti_causal_edges_are_distinct():
    g = bidirectional().model.draw("circuit")
    marks = squares(g)
    assert sorted(marks.values()) == ["+1", "1"]
    (future,) = [n for n, label in marks.items() if label == "+1"]
    assert "fillcolor=black" not in nodes(g)[future]
    dashed = [e for e in edges(g) if future in e[:2]]
    assert len(dashed) == 2 and all("dashed" in a for _, _, a in dashed)


def test_unfolded_has_one_column_per_step_and_initial_values():
    g = elman().model.draw("unfolded", steps=4)
    ns = nodes(g)
    for var in "hxoyL":
        assert {n for n in ns if re.fullmatch(rf"n_{var}_[1-9]\d*", n)} == {f"n_{var}_{k}" for k in range(1, 5)}
    assert "n_h_0" in ns and "dashed" in ns["n_h_0"]          # h(0), an initial value, on the left
    recurrent = [e for e in edges(g) if re.fullmatch(r"n_h_\d", e[0]) and re.fullmatch(r"n_h_\d", e[1])]
    assert sorted((a, b) for a, b, _ in recurrent) == [(f"n_h_{k}", f"n_h_{k + 1}") for k in range(4)]
    assert all("<i>W</i>" in a for _, _, a in recurrent)       # the same parameter at every step


def test_long_unfoldings_are_elided():
    g = elman().model.draw("unfolded", steps=10, max_columns=6)
    ns = nodes(g)
    shown = sorted(int(n.split("_")[2]) for n in ns if re.fullmatch(r"n_h_\d+", n))
    assert shown == [0, 1, 2, 3, 8, 9, 10]
    assert "n_h_3_5" in ns and "⋯" in ns["n_h_3_5"]
    assert "4…7 elided" in g.source
    assert ("n_h_3", "n_h_3_5") in {e[:2] for e in edges(g)}
    assert ("n_h_3_5", "n_h_8") in {e[:2] for e in edges(g)}
    assert "elided" not in elman().model.draw("unfolded", steps=6).source


def test_backward_state_unfolds_from_the_right():
    g = bidirectional().model.draw("unfolded", steps=3)
    ns = nodes(g)
    assert "n_g_4" in ns and "n_f_0" in ns and "n_g_0" not in ns
    back = [e for e in edges(g) if e[:2] in {("n_g_1", "n_g_2"), ("n_g_2", "n_g_3")}]
    assert len(back) == 2 and all("dir=back" in a and "dashed" in a for _, _, a in back)


def test_gradient_overlays_the_backward_flow():
    case = elman()
    fwd = edges(case.model.draw("unfolded", steps=3))
    g = case.model.draw("gradient", steps=3)
    red = [e for e in edges(g) if "#c0392b" in e[2] and "constraint=false" in e[2]]
    assert len(edges(g)) == len(fwd) + len(red)
    # the adjoint reaches states and outputs, never the data
    assert not any(re.match(r"n_[xy]_", a) or re.match(r"n_[xy]_", b) for a, b, _ in red)
    assert len(red) == 3 * 3 - 1   # per step h(t-1)->h(t), h->o, o->L; none into h(0)


def test_step_graph_has_one_node_per_op():
    case = lstm()
    step = case.model.step
    g = case.model.draw("step")
    roots = [*step.updates.values(), *step.outputs.values(), step.loss]
    ir_nodes = [n for n in ir.toposort(roots) if not (n.op == "read" and n.attr[1] == 0 and n.attr[0] in step.updates)]
    ns = nodes(g)
    assert len([n for n in ns if n.startswith("op")]) == len(ir_nodes)
    assert {n for n in ns if n.startswith("root_")} == {"root_c", "root_h", "root_z", "root_L"}
    assert any(e[0] == "root_c" for e in edges(g))   # h(t) reads c(t): the state's own node


def test_draw_errors():
    m = elman().model
    with pytest.raises(gc.GraphcompError, match="unknown diagram kind 'circuits'"):
        m.draw("circuits")
    with pytest.raises(gc.GraphcompError, match="steps must be a positive integer, got 0"):
        m.draw("unfolded", steps=0)


@pytest.mark.parametrize("kind", ["circuit", "unfolded", "step", "gradient"])
def test_renders_with_graphviz(kind, tmp_path):
    g = lstm().model.draw(kind, steps=8)
    svg = g.pipe(format="svg").decode()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    path = g.render(tmp_path / kind, format="png", cleanup=True)
    assert (tmp_path / f"{kind}.png").stat().st_size > 1000
