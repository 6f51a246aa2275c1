"""Recurrences over trees: a binary Tree-RNN and the N-ary and child-sum Tree-LSTMs (Tai et
al., 2015) on a minibatch of different trees, held against PyTorch recursing node by node
with autograd, the reference and unfolded backends and finite differences; every tree error
in the user's terms."""
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc

t = gc.t
H, D, O, K = 3, 2, 2, 3
h, c, x, y = gc.signal("h", H), gc.signal("c", H), gc.signal("x", D), gc.signal("y", O)


def p(name, rows, cols=None):
    return gc.param(name, rows, cols)


def tree_rnn():
    left, right = gc.child(0), gc.child(1)
    return gc.Recurrence({h(t): gc.tanh(p("Wl", H, H) * h(left) + p("Wr", H, H) * h(right) + p("U", H, D) * x(t)
                                        + p("b", H))}, loss=gc.mse(p("V", O, H) * h(t), y(t)))


def nary_lstm():
    """Binary Tree-LSTM: a forget gate per child, each seeing both children."""
    kids = (gc.child(0), gc.child(1))
    pre = {g: p(f"W{g}", H, D) * x(t) + p(f"b{g}", H) + sum((p(f"U{g}{k}", H, H) * h(kid) for k, kid in enumerate(kids)),
                                                             sp.ZeroMatrix(H, 1)) for g in "iou"}
    forget = sum((gc.hadamard(gc.sigmoid(p("Wf", H, D) * x(t) + p("bf", H)
                                         + sum((p(f"Uf{k}{m}", H, H) * h(other) for m, other in enumerate(kids)),
                                               sp.ZeroMatrix(H, 1))), c(kid)) for k, kid in enumerate(kids)),
                 sp.ZeroMatrix(H, 1))
    cell = gc.hadamard(gc.sigmoid(pre["i"]), gc.tanh(pre["u"])) + forget
    return gc.Recurrence({c(t): cell, h(t): gc.hadamard(gc.sigmoid(pre["o"]), gc.tanh(c(t)))},
                         loss=gc.mse(p("V", O, H) * h(t), y(t)))


def childsum_lstm():
    """Child-sum Tree-LSTM: any number of children (up to K), a forget gate per child."""
    hs = gc.over_children(lambda k: h(k), most=K)
    pre = {g: p(f"W{g}", H, D) * x(t) + p(f"U{g}", H, H) * hs + p(f"b{g}", H) for g in "iou"}
    forget = gc.over_children(lambda k: gc.hadamard(gc.sigmoid(p("Wf", H, D) * x(t) + p("Uf", H, H) * h(k) + p("bf", H)),
                                                    c(k)), most=K)
    cell = gc.hadamard(gc.sigmoid(pre["i"]), gc.tanh(pre["u"])) + forget
    return gc.Recurrence({c(t): cell, h(t): gc.hadamard(gc.sigmoid(pre["o"]), gc.tanh(c(t)))},
                         loss=gc.mse(p("V", O, H) * h(t), y(t)))


MODELS = {"tree_rnn": tree_rnn, "nary_lstm": nary_lstm, "childsum_lstm": childsum_lstm}


def forest(slots):
    """Three trees of 7, 4 and 1 nodes; children numbered below parents, some slots empty."""
    N, B = 7, 3
    C = np.zeros((N, B, slots), np.int64)
    C[2, 0, :2] = [1, 2]
    C[4, 0, :2] = [3, 4]
    C[6, 0, :2] = [5, 6]
    C[3, 1, :2] = [2, 3] if slots == 2 else [2, 0]
    C[2, 1, :1] = [1]
    if slots > 2:
        C[3, 1, :3] = [1, 2, 3]
        C[2, 1] = 0
    return C, np.array([7, 4, 1])


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model = MODELS[request.param]()
    rng = np.random.default_rng(0)
    params = {n: rng.normal(0, 0.5, s[:1] if s[1:] == (1,) else s) for n, s in model.step.params.items()}
    C, lengths = forest(model.step.children)
    inputs = {"x": rng.normal(size=(7, 3, D)), "y": rng.normal(size=(7, 3, O))}
    return request.param, model, params, inputs, C, lengths, gc.compile(model)


def torch_loss(name, params, inputs, C, lengths):
    """The loss by recursion, node by node, as the reference Tree-LSTM code does, with autograd."""
    torch = pytest.importorskip("torch")
    P = {n: torch.tensor(np.asarray(v, float), requires_grad=True) for n, v in params.items()}
    X, Y = (torch.tensor(inputs[n]) for n in ("x", "y"))
    zero = torch.zeros(H, dtype=torch.float64)
    total = 0

    def node(b, v):   # (h, c) of node v of tree b
        kids = [int(k) for k in C[v - 1, b]]
        got = [node(b, k) if k else (zero, zero) for k in kids]
        hk, ck = [g[0] for g in got], [g[1] for g in got]
        xv = X[v - 1, b]
        if name == "tree_rnn":
            return torch.tanh(P["Wl"] @ hk[0] + P["Wr"] @ hk[1] + P["U"] @ xv + P["b"]), zero
        sig = torch.sigmoid
        if name == "nary_lstm":
            gate = {g: P[f"W{g}"] @ xv + P[f"b{g}"] + sum(P[f"U{g}{k}"] @ hk[k] for k in range(2)) for g in "iou"}
            f = [sig(P["Wf"] @ xv + P["bf"] + sum(P[f"Uf{k}{m}"] @ hk[m] for m in range(2))) for k in range(2)]
            cell = sig(gate["i"]) * torch.tanh(gate["u"]) + sum(f[k] * ck[k] for k in range(2))
        else:
            present = [k for k, kid in enumerate(kids) if kid]
            hs = sum((hk[k] for k in present), zero)
            gate = {g: P[f"W{g}"] @ xv + P[f"U{g}"] @ hs + P[f"b{g}"] for g in "iou"}
            cell = sig(gate["i"]) * torch.tanh(gate["u"]) + sum(
                (sig(P["Wf"] @ xv + P["Uf"] @ hk[k] + P["bf"]) * ck[k] for k in present), zero)
        return sig(gate["o"]) * torch.tanh(cell), cell

    for b in range(len(lengths)):
        for v in range(1, lengths[b] + 1):   # every node's loss (recomputing its subtree)
            total = total + ((P["V"] @ node(b, v)[0] - Y[v - 1, b]) ** 2).mean()
    loss = total / len(lengths)
    loss.backward()
    return float(loss.detach()), {n: v.grad.numpy() for n, v in P.items()}


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b).max(initial=0) / max(1.0, np.abs(b).max(initial=0))


def test_equals_pytorch_recursing_node_by_node(case):
    name, model, params, inputs, C, lengths, k = case
    loss, grads = k.loss_and_grad(params, inputs, lengths, children=C)
    expected, expected_grads = torch_loss(name, params, inputs, C, lengths)
    assert rel(loss, expected) < 1e-10
    for n in params:
        assert grads[n].shape == np.shape(params[n]) and rel(grads[n], expected_grads[n]) < 1e-8, n


def test_the_three_backends_and_finite_differences_agree(case):
    name, model, params, inputs, C, lengths, k = case
    ref, dag = gc.compile(model, backend="reference"), gc.compile(model, backend="unfolded")
    (l1, g1), (l2, g2), (l3, g3) = (kern.loss_and_grad(params, inputs, lengths, children=C) for kern in (k, ref, dag))
    assert rel(l1, l2) < 1e-12 and rel(l2, l3) < 1e-12
    assert all(rel(g1[n], g2[n]) < 1e-10 and rel(g2[n], g3[n]) < 1e-10 for n in params)
    f1, f2 = k.forward(params, inputs, lengths, children=C), dag.forward(params, inputs, lengths, children=C)
    assert all(f1[s].shape == (7, 3, H) and rel(f1[s], f2[s]) < 1e-12 for s in model.states)
    assert np.all(f1["h"][lengths[2]:, 2] == 0)          # the nodes past a tree's last: zero
    rng = np.random.default_rng(2)
    v = {n: rng.normal(size=np.shape(params[n])) for n in params}
    eps = 1e-6
    plus = {n: params[n] + eps * v[n] for n in params}
    minus = {n: params[n] - eps * v[n] for n in params}
    fd = (ref.loss_and_grad(plus, inputs, lengths, children=C)[0]
          - ref.loss_and_grad(minus, inputs, lengths, children=C)[0]) / (2 * eps)
    exact = sum(float(np.sum(g1[n] * v[n])) for n in params)
    assert abs(fd - exact) <= 1e-7 * max(1.0, abs(exact))


def test_float32_and_initial_values_for_missing_children(case):
    name, model, params, inputs, C, lengths, k = case
    l64, g64 = k.loss_and_grad(params, inputs, lengths, children=C)
    l32, g32 = gc.compile(model, dtype="float32").loss_and_grad(params, inputs, lengths, children=C)
    assert l32.dtype == np.float32 and rel(l32, l64) < 1e-4 and all(rel(g32[n], g64[n]) < 1e-4 for n in params)
    initial = {s: np.random.default_rng(5).normal(size=(3, H)) for s in model.states}
    dag = gc.compile(model, backend="unfolded")
    (l1, g1), (l2, g2) = (kern.loss_and_grad(params, inputs, lengths, initial, children=C) for kern in (k, dag))
    assert rel(l1, l2) < 1e-12 and all(rel(g1[n], g2[n]) < 1e-10 for n in params)
    # a fixed slot reads initial where it has no child; a sum over children has no term for it
    assert abs(l1 - l64) > 1e-3 if name != "childsum_lstm" else l1 == pytest.approx(l64, rel=1e-14)


def test_one_tree_unfolded_is_the_tree():
    model = tree_rnn()
    C, _ = forest(2)
    g = model.unfold(7, children=C[:, 0])
    h7 = ("state", "h", 7)
    feeding = {u for u in g.predecessors(next(g.predecessors(h7))) if g.nodes[u]["kind"] == "op"}
    assert g.nodes[h7]["time"] == 7 and not g.nodes[h7]["initial"]
    assert ("state", "h", ("none", 1, 0)) in g and g.nodes[("state", "h", ("none", 1, 0))]["initial"]
    reached = {a for a in __import__("networkx").ancestors(g, h7) if g.nodes[a]["kind"] == "state"}
    assert {a[2] for a in reached if isinstance(a[2], int)} == {1, 2, 3, 4, 5, 6} and feeding
    both = model.unfold(children=C, lengths=[7, 4, 1])                        # a minibatch: time (b, v)
    assert both.nodes[("state", "h", (1, 4))]["time"] == (1, 4) and ("state", "h", (2, 2)) not in both
    assert __import__("networkx").is_directed_acyclic_graph(both)
    assert all(a in both for n, d in both.nodes(data=True) for a in d.get("args", []))


def test_tree_errors_in_the_users_terms():
    model = tree_rnn()
    k = gc.compile(model, backend="reference")
    rng = np.random.default_rng(1)
    params = {n: rng.normal(0, 0.5, s[:1] if s[1:] == (1,) else s) for n, s in model.step.params.items()}
    C, lengths = forest(2)
    X = {"x": rng.normal(size=(7, 3, D))}
    with pytest.raises(gc.GraphcompError, match=r"the model is a tree recurrence \(it reads gc.child\(k\)\): pass "
                                                r"children=C, an int array \(N, B, 2\)"):
        k.forward(params, X, lengths)
    bad = C.copy()
    bad[2, 0, 0] = 3
    with pytest.raises(gc.GraphcompError, match=r"node 3 of tree 0 has child 3 in slot 0: a child is numbered below its parent"):
        k.forward(params, X, lengths, children=bad)
    bad = C.copy()
    bad[4, 0] = [3, 2]
    with pytest.raises(gc.GraphcompError, match=r"node 2 of tree 0 is the child of two nodes"):
        k.forward(params, X, lengths, children=bad)
    bad = C.copy()
    bad[0, 2, 0] = 0
    bad[3, 1] = [2, 5]
    with pytest.raises(gc.GraphcompError, match=r"node 4 of tree 1 has child 5 in slot 1: a child is numbered below"):
        k.forward(params, X, lengths, children=bad)
    with pytest.raises(gc.GraphcompError, match=r"children gives nodes a child in slot 2 or beyond, but the model reads only 2"):
        k.forward(params, X, lengths, children=np.concatenate([C, C[:, :, :1]], axis=2))
    elman = gc.models.elman(D, H, O)
    with pytest.raises(gc.GraphcompError, match=r"children= is given but the model reads no child"):
        gc.compile(elman, backend="reference").forward(elman.init_params(), X, children=C)


def test_time_only_features_refuse_trees_and_grids():
    model = tree_rnn()
    k = gc.compile(model, backend="reference")
    params = {n: np.zeros(s[:1] if s[1:] == (1,) else s) for n, s in model.step.params.items()}
    C, lengths = forest(2)
    data = {"x": np.zeros((7, 3, D)), "y": np.zeros((7, 3, O))}
    for method, message in (("checkpoint", "method='checkpoint' cuts time into segments, but this model runs over a tree"),
                            ("rtrl", "method='rtrl' carries sensitivities forward in time, but this model runs over a tree")):
        with pytest.raises(gc.GraphcompError, match=message):
            k.loss_and_grad(params, data, lengths, children=C, method=method)
    with pytest.raises(gc.GraphcompError, match=r"step\(\) advances a recurrence over time, but this model runs over a tree"):
        k.step(params, None, {"x": np.zeros((3, D))})
