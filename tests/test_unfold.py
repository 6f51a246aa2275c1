"""The unfolded DAG: its nodes, their attributes, parameter sharing and initial values."""
import networkx as nx
import pytest
import sympy as sp

import graphcomp as gc

from catalogue import bidirectional, delays, elman, lstm

t = gc.t
s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
a, b, c = sp.symbols("a b c")
KINDS = {"param", "input", "state", "op", "output", "loss"}


@pytest.fixture(scope="module")
def scalar():
    return gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)


def test_node_counts_by_hand(scalar):
    # one step: ops a*s, tanh(s), b*tanh, c*x, the sum; loss ops -y, s - y, (.)²  -> 8 ops
    for steps in (1, 4, 10):
        g = scalar.unfold(steps)
        kinds = {}
        for _, d in g.nodes(data=True):
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        assert kinds == {"param": 3, "op": 8 * steps, "state": steps + 1, "input": 2 * steps, "loss": steps}
        assert g.number_of_nodes() == 3 + 12 * steps + 1


def test_attributes_and_acyclic(scalar):
    g = scalar.unfold(5)
    assert nx.is_directed_acyclic_graph(g)
    for nid, d in g.nodes(data=True):
        assert d["kind"] in KINDS and "name" in d and "time" in d
        assert (d["time"] is None) == (d["kind"] == "param")
        if d["kind"] == "op":
            assert list(g.predecessors(nid)) and set(d["args"]) == set(g.predecessors(nid))
    state = g.nodes[("state", "s", 3)]
    assert state["name"] == "s" and state["time"] == 3 and not state["initial"]
    (src,) = state["args"]
    assert g.nodes[src]["kind"] == "op" and g.nodes[src]["name"] == "+"


def test_parameters_are_shared_by_every_step(scalar):
    g = scalar.unfold(6)
    for p in "abc":
        nid = ("param", p, None)
        assert sum(1 for _, d in g.nodes(data=True) if d["name"] == p and d["kind"] == "param") == 1
        assert sorted({g.nodes[n]["time"] for n in g.successors(nid)}) == [1, 2, 3, 4, 5, 6]


def test_op_arguments_are_in_order():
    g = elman().model.unfold(2)
    matmuls = [d for _, d in g.nodes(data=True) if d["kind"] == "op" and d["ir"].op == "matmul" and d["time"] == 2]
    firsts = sorted(d["args"][0][1] for d in matmuls)
    assert firsts == ["U", "V", "W"]   # the weight is the first argument of each product
    w = next(d for d in matmuls if d["args"][0] == ("param", "W", None))
    assert w["args"][1] == ("state", "h", 1)


def test_initial_value_nodes():
    g = delays().model.unfold(4)
    initial = sorted((d["name"], d["time"]) for _, d in g.nodes(data=True) if d.get("initial"))
    # s read at t-1, t-3 (and t-2 by the loss), x at t-2: values before step 1
    assert initial == [("s", -2), ("s", -1), ("s", 0), ("x", -1), ("x", 0)]
    assert all(g.nodes[("state", "s", k)]["kind"] == "state" for k in (-2, -1, 0))


def test_a_backward_state_reads_past_the_last_step():
    g = bidirectional().model.unfold(3)
    initial = sorted((d["name"], d["time"]) for _, d in g.nodes(data=True) if d.get("initial"))
    assert initial == [("f", 0), ("g", 4)]
    path = nx.has_path(g, ("state", "g", 3), ("state", "g", 1))
    assert path and not nx.has_path(g, ("state", "g", 1), ("state", "g", 3))


def test_same_step_reads_link_states_within_a_step():
    g = lstm().model.unfold(2)
    assert nx.has_path(g, ("state", "c", 2), ("state", "h", 2))
    assert not nx.has_path(g, ("state", "h", 2), ("state", "c", 2))


def test_steps_must_be_positive(scalar):
    with pytest.raises(gc.GraphcompError, match="steps must be a positive integer, got 0"):
        scalar.unfold(0)
