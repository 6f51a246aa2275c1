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


# ---------------------------------------------------------------- grids

def pos(attrs):
    x, y = re.search(r'pos="([-\d.]+),([-\d.]+)!"', attrs).groups()
    return float(x), float(y)


def marks(g):
    """A delay square's mark, spaces included: "i−1, j−1"."""
    return {n: re.search(r'label=("[^"]*"|\S+)', a).group(1).strip('"') for n, a in nodes(g).items() if "shape=square" in a}


def label(attrs):
    m = re.search(r"label=<(.*?)> ", attrs + " ")
    return m.group(1) if m else ""


def test_a_grid_circuit_marks_each_delay_with_its_axis():
    g = gc.models.mdrnn(1, 2, 2, directions=2).draw("circuit")
    ns, es = nodes(g), edges(g)
    assert sorted(marks(g).values()) == ["i+1", "i−1", "j+1", "j−1"]
    for sq, mark in marks(g).items():
        state, weight = ("h_tl", "Wi_tl" if "i" in mark else "Wj_tl") if "−" in mark else \
            ("h_br", "Wi_br" if "i" in mark else "Wj_br")
        through = [e for e in es if sq in e[:2]]
        assert {n for e in through for n in e[:2]} == {f"v_{state}", sq}     # the state reads itself
        assert [label(a) for *_, a in through if label(a)] == [gc.views.draw._html(weight)]
        assert ("fillcolor=black" in ns[sq]) == ("−" in mark)                # reads ahead: red, dashed
        assert all(("dashed" in a) == ("+" in mark) for *_, a in through)
    same = {(a, b) for a, b, _ in es if not a.startswith("delay") and not b.startswith("delay")}
    assert same == {("v_x", "v_h_tl"), ("v_x", "v_h_br"), ("v_h_tl", "v_o"), ("v_h_br", "v_o"),
                    ("v_o", "v_L"), ("v_L", "v_y")}                  # the target above: laid out reversed


def test_a_diagonal_read_is_one_square_naming_both_axes():
    i, j = gc.models.GRID
    s, x = gc.signal("s"), gc.signal("x")
    m = gc.Recurrence({s(i, j): gc.param("a") * s(i - 1, j - 1) + s(i, j - 2) * x(i, j)})
    assert sorted(marks(m.draw("circuit")).values()) == ["i−1, j−1", "j−2"]


def test_a_grid_unfolds_as_a_grid_of_cells():
    g = gc.models.mdrnn(1, 2, 2).draw("unfolded", steps=(3, 2))
    ns, es = nodes(g), edges(g)
    assert g.engine == "neato" and all("!" in a for a in ns.values() if "pos=" in a)   # every node pinned
    cells = [(a, b) for a in (1, 2, 3) for b in (1, 2)]
    for var in "hxoyL":
        assert {n for n in ns if re.fullmatch(rf"n_{var}_[1-9]_[1-9]", n)} == {f"n_{var}_{a}_{b}" for a, b in cells}
    assert label(ns["n_h_2_1"]) == "<i>h</i><sup>(2,1)</sup>"
    boundary = {n for n in ns if "dashed" in ns[n]}                          # reads outside: row 0, column 0
    assert boundary == {f"n_h_0_{b}" for b in (1, 2)} | {f"n_h_{a}_0" for a in (1, 2, 3)}
    h = {c: pos(ns[f"n_h_{c[0]}_{c[1]}"]) for c in cells}
    assert all(h[a, 1][0] < h[a, 2][0] and h[a, 1][1] == h[a, 2][1] for a in (1, 2, 3))   # columns left to right
    assert all(h[1, b][1] > h[2, b][1] > h[3, b][1] and h[1, b][0] == h[3, b][0] for b in (1, 2))   # rows down
    x, o = pos(ns["n_x_2_2"]), pos(ns["n_o_2_2"])
    assert x[0] < h[2, 2][0] and x[1] < h[2, 2][1] < o[1] and o[0] > h[2, 2][0]   # input beside, readout above
    recurrent = {(a, b): label(attrs) for a, b, attrs in es if a.startswith("n_h_") and b.startswith("n_h_")}
    assert recurrent == {**{(f"n_h_{a - 1}_{b}", f"n_h_{a}_{b}"): "<i>Wi</i>" for a, b in cells},
                         **{(f"n_h_{a}_{b - 1}", f"n_h_{a}_{b}"): "<i>Wj</i>" for a, b in cells}}


def test_sweeps_from_other_corners_read_from_the_far_side():
    g = gc.models.mdrnn(1, 2, 2, directions=4).draw("unfolded", steps=(2, 2))
    ns, es = nodes(g), edges(g)
    boundary = {n for n in ns if "dashed" in ns[n]}
    assert {"n_h_br_3_1", "n_h_br_1_3", "n_h_tr_1_3", "n_h_bl_3_2", "n_h_tl_0_2"} <= boundary
    assert not any(n.startswith(("n_h_br_0", "n_h_tl_3")) for n in ns)
    ahead = [(a, b, attrs) for a, b, attrs in es if a.startswith("n_h_br") and b.startswith("n_h_br")]
    assert len(ahead) == 8 and all("dashed" in attrs and "#c0392b" in attrs for *_, attrs in ahead)


def test_a_grid_gradient_overlays_the_backward_flow():
    model = gc.models.mdrnn(1, 2, 2)
    forward = edges(model.draw("unfolded", steps=(2, 2)))
    g = model.draw("gradient", steps=(2, 2))
    red = [e for e in edges(g) if e not in forward]
    assert len(edges(g)) == len(forward) + len(red)
    # per cell back to h from o and from L to o; from h to each neighbour's h inside the grid
    assert len(red) == 2 * 4 + 4 and all("#c0392b" in a and "dashed" in a for *_, a in red)
    assert not any(re.match(r"n_[xy]_", b) or re.match(r"n_h_(0|\d_0)", b) for _, b, _ in red)


def test_grid_draw_errors():
    m = gc.models.mdrnn(1, 2, 2)
    with pytest.raises(gc.GraphcompError, match=r"a grid over \(i, j\) is drawn over a tuple of 2 positive extents, "
                                                r"like steps=\(3, 3\); got 4"):
        m.draw("unfolded", steps=4)
    with pytest.raises(gc.GraphcompError, match=r"steps=\(7, 2\): a grid is drawn whole, at most max_columns=6 cells"):
        m.draw("gradient", steps=(7, 2))
    i, j, k = sp.symbols("i j k", integer=True)
    h = gc.signal("h", 2)
    volume = gc.Recurrence({h(i, j, k): gc.tanh(gc.param("W", 2, 2) * h(i - 1, j, k) + h(i, j, k - 1))})
    assert sorted(marks(volume.draw("circuit")).values()) == ["i−1", "k−1"]
    with pytest.raises(gc.GraphcompError, match=r"draw\('unfolded'\) lays out grids of two axes; this model's are "
                                                r"\(i, j, k\): inspect model.unfold\(extents\) instead"):
        volume.draw("unfolded", steps=(2, 2, 2))


@pytest.mark.parametrize("kind", ["circuit", "unfolded", "step", "gradient"])
def test_a_grid_renders_with_graphviz(kind):
    svg = gc.models.mdlstm(1, 2, 2, directions=2).draw(kind, steps=(2, 3)).pipe(format="svg").decode()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    if kind in ("unfolded", "gradient"):
        assert "<title>n_c_tl_2_3</title>" in svg and "<title>n_h_br_3_3</title>" in svg   # a cell, a boundary
