"""The tree networks of the model library (tree_rnn, the child-sum and N-ary Tree-LSTMs) on a
minibatch of different trees, held against PyTorch recursing node by node with autograd
written from Tai et al.'s equations, with the loss at every node or at the root; names,
initialisation and errors."""
import numpy as np
import pytest

import graphcomp as gc

models = gc.models
D, H, O = 2, 3, 2
CASES = {   # compiled with Numba: one of each network
    "tree_rnn": dict(make=lambda: models.tree_rnn(D, H, O, K=3), K=3, at="node", loss="mse"),
    "childsum": dict(make=lambda: models.tree_lstm(D, H, O, K=3, at="root", loss="cross_entropy"), K=3,
                     at="root", loss="cross_entropy"),
    "nary": dict(make=lambda: models.tree_lstm(D, H, O, kind="nary"), K=2, at="node", loss="mse"),
}


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b).max(initial=0) / max(1.0, np.abs(b).max(initial=0))


def random_tree(n: int, K: int, rng) -> np.ndarray:
    """A random tree of n nodes, at most K children each, children numbered below parents
    and placed in random slots (gaps included): its children (n, K)."""
    C = np.zeros((n, K), np.int64)
    for v in range(n - 1, 0, -1):   # node v's parent: a later node with a free slot
        parent = rng.choice([u for u in range(v + 1, n + 1) if (C[u - 1] == 0).any()])
        C[parent - 1, rng.choice(np.flatnonzero(C[parent - 1] == 0))] = v
    return C


def forest(K: int, sizes=(7, 5, 1, 4), seed=0):
    """Trees of ``sizes`` nodes padded node-major: children (N, B, K), lengths, x, one-hot y
    and the root mask."""
    rng = np.random.default_rng(seed)
    N, B = max(sizes), len(sizes)
    C = np.zeros((N, B, K), np.int64)
    for b, n in enumerate(sizes):
        C[:n, b] = random_tree(n, K, rng)
    lengths = np.array(sizes)
    root = (np.arange(1, N + 1)[:, None] == lengths[None, :]).astype(float)
    data = {"x": rng.normal(size=(N, B, D)), "y": np.eye(O)[rng.integers(0, O, (N, B))], "root": root}
    return C, lengths, data


def random_params(model, seed=0):
    """Parameters away from their initialisation (biases nonzero too)."""
    rng = np.random.default_rng(seed)
    return {p: rng.normal(0, 0.5, np.shape(v)) for p, v in model.init_params(seed).items()}


def torch_loss(network, K, at, loss, params, data, C, lengths, act="tanh"):
    """The loss by recursion over each tree, node by node, from Tai et al.'s equations, with autograd."""
    torch = pytest.importorskip("torch")
    P = {p: torch.tensor(np.asarray(v, float), requires_grad=True) for p, v in params.items()}
    X, Y = torch.tensor(data["x"]), torch.tensor(data["y"])
    sig, tanh, zero = torch.sigmoid, torch.tanh, torch.zeros(H, dtype=torch.float64)

    def node(x, hk, ck, present):
        if network == "tree_rnn":
            return getattr(torch, act)(P["U"] @ x + P["b"] + sum(P[f"W{k}"] @ hk[k] for k in range(K))), zero
        if network == "childsum":
            s = sum((hk[k] for k in present), zero)
            g = {q: P[f"W_{q}"] @ s + P[f"U_{q}"] @ x + P[f"b_{q}"] for q in "iou"}
            kept = sum((sig(P["W_f"] @ hk[k] + P["U_f"] @ x + P["b_f"]) * ck[k] for k in present), zero)
        else:
            def gate(q, letter):
                return P[f"U_{letter}"] @ x + P[f"b_{letter}"] + sum(P[f"W{l}_{q}"] @ hk[l] for l in range(K))
            g = {q: gate(q, q) for q in "iou"}
            kept = sum(sig(gate(f"f{k}", "f")) * ck[k] for k in range(K))
        c = sig(g["i"]) * tanh(g["u"]) + kept
        return sig(g["o"]) * tanh(c), c

    total = 0
    for b, n in enumerate(lengths):
        hs, cs = {0: zero}, {0: zero}
        for v in range(1, n + 1):
            kids = [int(k) for k in C[v - 1, b]]
            hs[v], cs[v] = node(X[v - 1, b], [hs[k] for k in kids], [cs[k] for k in kids],
                                [k for k, kid in enumerate(kids) if kid])
            if at == "root" and v < n:
                continue
            o = P["V"] @ hs[v] + P["b_V"]
            total = total + (((o - Y[v - 1, b]) ** 2).mean() if loss == "mse"
                             else -(Y[v - 1, b] * torch.log_softmax(o, 0)).sum())
    result = total / len(lengths)
    result.backward()
    return float(result.detach()), {p: v.grad.numpy() for p, v in P.items()}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    spec = CASES[request.param]
    model = spec["make"]()
    return request.param, spec, model, gc.compile(model)


def test_equals_pytorch_recursing_node_by_node(case):
    network, spec, model, kernel = case
    C, lengths, data = forest(spec["K"])
    params = random_params(model)
    inputs = {n: data[n] for n in model.inputs}
    loss, grads = kernel.loss_and_grad(params, inputs, lengths, children=C)
    expected, expected_grads = torch_loss(network, spec["K"], spec["at"], spec["loss"], params, data, C, lengths)
    assert rel(loss, expected) < 1e-10
    assert set(grads) == set(expected_grads) == set(model.params)
    for p in params:
        assert grads[p].shape == np.shape(params[p]) and rel(grads[p], expected_grads[p]) < 1e-8, p


def test_forward_shapes_and_nodes_past_each_tree(case):
    network, spec, model, kernel = case
    C, lengths, data = forest(spec["K"])
    out = kernel.forward(random_params(model), {"x": data["x"]}, lengths, children=C)   # no target, no root mask
    assert set(out) == set(model.states) | {"o"} and out["o"].shape == (7, 4, O)
    assert all(out[s].shape == (7, 4, H) for s in model.states)
    assert np.all(out["o"][1:, 2] == 0) and np.all(out["h"][4:, 3] == 0) and np.abs(out["h"][:4, 3]).min() > 0


@pytest.mark.parametrize("network, make, K, at, loss", [
    ("tree_rnn", lambda: models.tree_rnn(D, H, O, activation="relu", at="root", loss="cross_entropy"), 2, "root",
     "cross_entropy"),
    ("nary", lambda: models.tree_lstm(D, H, O, kind="nary", K=3, at="root"), 3, "root", "mse"),
    ("childsum", lambda: models.tree_lstm(D, H, O, K=2, loss="cross_entropy"), 2, "node", "cross_entropy"),
])
def test_variants_equal_pytorch_on_the_reference_backend(network, make, K, at, loss):
    model = make()
    C, lengths, data = forest(K, sizes=(6, 3, 1), seed=K)
    params = random_params(model, seed=1)
    inputs = {n: data[n] for n in model.inputs}
    got, grads = gc.compile(model, backend="reference").loss_and_grad(params, inputs, lengths, children=C)
    act = "relu" if network == "tree_rnn" else "tanh"
    expected, expected_grads = torch_loss(network, K, at, loss, params, data, C, lengths, act)
    assert rel(got, expected) < 1e-10 and all(rel(grads[p], expected_grads[p]) < 1e-8 for p in params)


def test_gradient_equals_finite_differences(case):
    network, spec, model, kernel = case
    C, lengths, data = forest(spec["K"], seed=3)
    params = random_params(model, seed=2)
    inputs = {n: data[n] for n in model.inputs}
    _, grads = kernel.loss_and_grad(params, inputs, lengths, children=C)
    rng, eps = np.random.default_rng(4), 1e-6
    direction = {p: rng.normal(size=np.shape(v)) for p, v in params.items()}

    def loss_at(s):
        moved = {p: v + s * direction[p] for p, v in params.items()}
        return kernel.loss_and_grad(moved, inputs, lengths, children=C)[0]
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(grads[p] * direction[p])) for p in params)
    assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(analytic))


def test_names_equations_and_init():
    assert models.tree_rnn(D, H, O, K=3).params == ["U", "W0", "W1", "W2", "b", "V", "b_V"]
    child_sum = models.tree_lstm(D, H, O, prefix="enc_", x="tok", o="logits", y="label", at="root", root="top")
    assert child_sum.states == ["enc_c", "enc_h"] and set(child_sum.inputs) == {"tok", "label", "top"}
    assert {p for p in child_sum.params if p.startswith("enc_W")} == {"enc_W_i", "enc_W_o", "enc_W_u", "enc_W_f"}
    nary = models.tree_lstm(D, H, O, kind="nary", K=2)
    assert {"W0_f0", "W1_f0", "W0_f1", "W1_f1", "U_f", "b_f"} <= set(nary.params)   # forget gates share U_f, b_f
    assert "U_f0" not in nary.params and nary.step.children == 2
    assert str(models.tree_rnn(D, H, O).equations()[0]) == \
        "h(t) = tanh(U*x(t) + W0*h(child0) + W1*h(child1) + b)"
    p = models.init(models.tree_lstm(D, 4, O, kind="nary"), seed=0)
    for n, v in p.items():
        if n.startswith("W"):
            assert np.allclose(v @ v.T, np.eye(4), atol=1e-12), n            # orthogonal per child slot
        elif n == "b_f":
            assert np.all(v == 1.0)                                          # the forget bias
        elif n.startswith("b"):
            assert np.all(v == 0.0), n


@pytest.mark.parametrize("make, message", [
    (lambda: models.tree_rnn(D, H, O, K=0), r"tree_rnn: K=0 must be a positive integer \(the most children"),
    (lambda: models.tree_lstm(D, H, O, kind="binary"), r"tree_lstm: unknown kind 'binary'"),
    (lambda: models.tree_lstm(D, H, O, at="leaves"), r"tree_lstm: unknown at 'leaves'"),
    (lambda: models.tree_rnn(D, H, O, at="root", loss=None), r"tree_rnn: at='root' says where the loss is taken, "
                                                              r"but loss=None has none"),
    (lambda: models.tree_rnn(D, H, O, at="root", root="x"), r"tree_rnn: the input, output and target names"),
])
def test_bad_arguments(make, message):
    with pytest.raises(gc.GraphcompError, match=message):
        make()
