"""Diagrams of tree models, asserted on their DOT source: the circuit's reads at a child (a
diamond marked with the slot), one tree unfolded as a tree (a box per node, reads at a child
from the child's box to its parent's), the gradient's backward flow, and the errors."""
import re

import numpy as np
import pytest

import graphcomp as gc

C = np.array([[0, 0], [0, 0], [1, 2], [0, 0], [3, 4]])   # root 5: children 3 and 4; node 3: leaves 1 and 2


def edges(source: str) -> set:
    """The (tail, head) pairs of a DOT source's edges, as drawn (arrow direction)."""
    found = set()
    for a, b, attrs in re.findall(r"^\s*(\w+) -> (\w+)(?: \[(.*)\])?$", source, re.M):
        found.add((b, a) if "dir=back" in attrs else (a, b))
    return found


def test_circuit_marks_each_read_at_a_child_with_its_slot():
    source = gc.models.tree_rnn(2, 3, 1).draw("circuit").source
    diamonds = dict(re.findall(r"(child_\d+) \[label=(\d) [^\]]*shape=diamond", source))
    assert sorted(diamonds.values()) == ["0", "1"]
    drawn = edges(source)
    for node, slot in diamonds.items():   # h -> diamond k -> h, carrying Wk
        assert ("v_h", node) in drawn and (node, "v_h") in drawn
        assert re.search(rf"{node} -> v_h \[label=<<i>W{slot}</i>>", source)
    assert ("v_x", "v_h") in drawn and "diamond k: read at the node's k-th child" in source


def test_the_child_sum_mask_is_not_drawn():
    model = gc.models.tree_lstm(2, 3, 1, K=3)
    circuit, unfolded = model.draw("circuit").source, model.draw("unfolded").source
    assert "has_child" not in circuit and "has_child" not in unfolded
    assert len(re.findall(r"shape=diamond", circuit)) == 3 * 3   # c -> c, h -> c, h -> h, per slot


def test_unfolded_draws_one_tree_root_at_the_top():
    source = gc.models.tree_rnn(2, 3, 1).draw("unfolded", children=C).source
    assert [int(v) for v in re.findall(r"subgraph cluster_(\d+)", source)] == [1, 2, 3, 4, 5]
    assert 'label="node 5"' in source and "a tree of 5 nodes, root 5 at the top" in source
    drawn = edges(source)
    children = {(f"n_h_{c}", f"n_h_{v}") for v in range(1, 6) for c in C[v - 1] if c}
    assert {e for e in drawn if e[0].startswith("n_h") and e[1].startswith("n_h")} == children
    assert re.search(r'n_h_3 -> n_h_5 \[label=<<i>W0</i>> color="#1f7a6d"', source)
    assert re.search(r'n_h_4 -> n_h_5 \[label=<<i>W1</i>> color="#1f7a6d"', source)
    assert all((f"n_x_{v}", f"n_h_{v}") in drawn and (f"n_h_{v}", f"n_o_{v}") in drawn for v in range(1, 6))
    assert not any("none" in a or "none" in b for a, b in drawn)   # missing children are not drawn


def test_gradient_overlays_the_backward_flow_and_the_default_tree():
    model = gc.models.tree_rnn(2, 3, 1, K=3)
    source = model.draw("gradient").source   # default: a root with a child in every slot
    assert "a tree of 4 nodes" in source
    back = re.findall(r"n_h_4 -> n_h_(\d) \[arrowsize=0.6 color=\"#c0392b\" constraint=false style=dashed", source)
    assert sorted(back) == ["1", "2", "3"]
    assert "child 0" in model.draw("step").source


@pytest.mark.parametrize("call, message", [
    (lambda: gc.models.tree_rnn(2, 3, 1).draw("unfolded", steps=3), r"a tree model is drawn over one tree, not over "
                                                                     r"steps: pass children=C"),
    (lambda: gc.models.tree_rnn(2, 3, 1).draw("unfolded", children=C[::-1]), r"node 1 of tree 0 has child 3 in slot 0: "
                                                                             r"a child is numbered below its parent"),
    (lambda: gc.models.tree_rnn(2, 3, 1).draw("unfolded", children=C[None]), r"children has shape \(1, 5, 2\) of int64; "
                                                                             r"draw one tree as an int array \(N, K\)"),
    (lambda: gc.models.elman(2, 3, 1).draw("unfolded", children=C), r"children= draws a tree model over one tree, but "
                                                                    r"this model reads no child"),
])
def test_errors(call, message):
    with pytest.raises(gc.GraphcompError, match=message):
        call()
