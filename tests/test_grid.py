"""Recurrences over grids: a 2-D RNN swept from one corner and a four-direction one (as in
MD-RNNs), on images of different sizes, held against a PyTorch double loop with autograd, the
reference and unfolded backends and finite differences; 3 axes; sizes read at run time; and
every grid error in the user's terms."""
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc

i, j, k = sp.symbols("i j k", integer=True)
H, D, O = 3, 2, 2
I, J, B = 5, 4, 3
HEIGHTS, WIDTHS = np.array([5, 2, 4]), np.array([4, 4, 1])


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b).max(initial=0) / max(1.0, np.abs(b).max(initial=0))


def one_sweep():
    h, x, y = gc.signal("h", H), gc.signal("x", D), gc.signal("y", O)
    W, R, U, b, V = gc.param("W", H, H), gc.param("R", H, H), gc.param("U", H, D), gc.param("b", H), gc.param("V", O, H)
    return gc.Recurrence({h(i, j): gc.tanh(W * h(i - 1, j) + R * h(i, j - 1) + U * x(i, j) + b)},
                         loss=gc.mse(V * h(i, j), y(i, j)))


CORNERS = {"a": (-1, -1), "b": (-1, 1), "c": (1, -1), "d": (1, 1)}   # each state's offsets along (i, j)


def four_directions():
    x, y = gc.signal("x", D), gc.signal("y", O)
    updates, tops = {}, []
    for name, (di, dj) in CORNERS.items():
        h = gc.signal(name, H)
        W, R, U = (gc.param(f"{p}_{name}", H, n) for p, n in (("W", H), ("R", H), ("U", D)))
        updates[h(i, j)] = gc.tanh(W * h(i + di, j) + R * h(i, j + dj) + U * x(i, j) + gc.param(f"b_{name}", H))
        tops.append(h(i, j))
    V = gc.param("V", O, 4 * H)
    return gc.Recurrence(updates, loss=gc.mse(V * gc.concat(*tops) + gc.param("e", O), y(i, j)))


def params_of(model, seed=0, scale=0.6):
    rng = np.random.default_rng(seed)
    return {p: rng.normal(0, scale / np.sqrt(s[-1] if len(s) > 1 else 1), s[:1] if s[1:] == (1,) else s)
            for p, s in model.step.params.items()}


def data(seed=1):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(I, J, B, D)), "y": rng.normal(size=(I, J, B, O))}


@pytest.fixture(scope="module", params=["one_sweep", "four_directions"])
def case(request):
    model = {"one_sweep": one_sweep, "four_directions": four_directions}[request.param]()
    return request.param, model, params_of(model), data(), gc.compile(model)


def torch_loss(name, params, inputs):
    """The loss by a Python double loop over each image's own extent, with autograd."""
    torch = pytest.importorskip("torch")
    P = {p: torch.tensor(np.asarray(v, float), requires_grad=True) for p, v in params.items()}
    X, Y = (torch.tensor(inputs[n]) for n in ("x", "y"))
    total = 0
    for b in range(B):
        hb, wb = int(HEIGHTS[b]), int(WIDTHS[b])
        sweeps = {"h": (-1, -1)} if name == "one_sweep" else CORNERS
        states = {}
        for s, (di, dj) in sweeps.items():
            grid = {}
            rows = range(hb) if di < 0 else range(hb - 1, -1, -1)
            cols = range(wb) if dj < 0 else range(wb - 1, -1, -1)
            suffix = "" if name == "one_sweep" else f"_{s}"
            for a in rows:
                for c in cols:
                    up = grid.get((a + di, c), torch.zeros(H, dtype=torch.float64))
                    side = grid.get((a, c + dj), torch.zeros(H, dtype=torch.float64))
                    grid[(a, c)] = torch.tanh(P["W" + suffix] @ up + P["R" + suffix] @ side
                                              + P["U" + suffix] @ X[a, c, b] + P["b" + suffix])
            states[s] = grid
        for a in range(hb):
            for c in range(wb):
                if name == "one_sweep":
                    pred = P["V"] @ states["h"][(a, c)]
                else:
                    pred = P["V"] @ torch.cat([states[s][(a, c)] for s in CORNERS]) + P["e"]
                total = total + ((pred - Y[a, c, b]) ** 2).mean()
    loss = total / B
    loss.backward()
    return float(loss.detach()), {p: v.grad.numpy() for p, v in P.items()}


def test_equals_a_pytorch_double_loop_on_images_of_different_sizes(case):
    name, model, params, inputs, k = case
    loss, grads = k.loss_and_grad(params, inputs, lengths=(HEIGHTS, WIDTHS))
    expected, expected_grads = torch_loss(name, params, inputs)
    assert rel(loss, expected) < 1e-10
    for p in params:
        assert grads[p].shape == np.shape(params[p]) and rel(grads[p], expected_grads[p]) < 1e-8, p


def test_the_three_backends_and_finite_differences_agree(case):
    name, model, params, inputs, k = case
    lengths = (HEIGHTS, WIDTHS)
    ref, dag = gc.compile(model, backend="reference"), gc.compile(model, backend="unfolded")
    (l1, g1), (l2, g2), (l3, g3) = (kern.loss_and_grad(params, inputs, lengths) for kern in (k, ref, dag))
    assert rel(l1, l2) < 1e-12 and rel(l2, l3) < 1e-12
    assert all(rel(g1[p], g2[p]) < 1e-10 and rel(g2[p], g3[p]) < 1e-10 for p in params)
    f1, f2 = k.forward(params, inputs, lengths), ref.forward(params, inputs, lengths)
    assert set(f1) == set(model.states) and all(f1[s].shape == (I, J, B, H) for s in f1)
    assert all(rel(f1[s], f2[s]) < 1e-12 for s in f1)
    outside = ~gc.compile(model, backend="reference").prepare(params, inputs, lengths, with_loss=False).valid
    assert all(np.all(f1[s][outside] == 0) for s in f1)        # points outside an image: zero
    rng = np.random.default_rng(2)
    v = {p: rng.normal(size=np.shape(params[p])) for p in params}
    eps = 1e-6
    plus = {p: params[p] + eps * v[p] for p in params}
    minus = {p: params[p] - eps * v[p] for p in params}
    fd = (ref.loss_and_grad(plus, inputs, lengths)[0] - ref.loss_and_grad(minus, inputs, lengths)[0]) / (2 * eps)
    exact = sum(float(np.sum(g1[p] * v[p])) for p in params)
    assert abs(fd - exact) <= 1e-7 * max(1.0, abs(exact))


def test_float32_and_another_size_share_the_compiled_loops():
    model = one_sweep()
    params = params_of(model)
    k64, k32 = gc.compile(model), gc.compile(model, dtype="float32")
    inputs = data()
    l64, g64 = k64.loss_and_grad(params, inputs, (HEIGHTS, WIDTHS))
    l32, g32 = k32.loss_and_grad(params, inputs, (HEIGHTS, WIDTHS))
    assert l32.dtype == np.float32 and rel(l32, l64) < 1e-4 and all(rel(g32[p], g64[p]) < 1e-4 for p in params)
    other = gc.Recurrence({gc.signal("h", 7)(i, j): gc.tanh(gc.param("W", 7, 7) * gc.signal("h", 7)(i - 1, j)
                                                           + gc.param("R", 7, 7) * gc.signal("h", 7)(i, j - 1)
                                                           + gc.param("U", 7, 5) * gc.signal("x", 5)(i, j)
                                                           + gc.param("b", 7))},
                          loss=gc.mse(gc.param("V", 5, 7) * gc.signal("h", 7)(i, j), gc.signal("y", 5)(i, j)))
    # the same structure (here D = O, as in the first): the same compiled module
    assert gc.compile(other).impl.kernel("loss_and_grad").module == k64.impl.kernel("loss_and_grad").module


def test_three_axes():
    h, x = gc.signal("h", 2), gc.signal("x", 1)
    model = gc.Recurrence({h(i, j, k): gc.tanh(gc.param("A", 2, 2) * h(i - 1, j, k) + gc.param("C", 2, 2) * h(i, j, k - 1)
                                               + gc.param("U", 2, 1) * x(i, j, k))},
                          loss=gc.mse(h(i, j, k), gc.signal("y", 2)(i, j, k)))
    rng = np.random.default_rng(3)
    params = params_of(model)
    inputs = {"x": rng.normal(size=(3, 2, 4, 2, 1)), "y": rng.normal(size=(3, 2, 4, 2, 2))}
    lengths = (np.array([3, 2]), np.array([2, 2]), np.array([4, 1]))
    (l1, g1), (l2, g2) = (gc.compile(model, backend=b).loss_and_grad(params, inputs, lengths) for b in ("numba", "unfolded"))
    assert rel(l1, l2) < 1e-12 and all(rel(g1[p], g2[p]) < 1e-10 for p in params)


def test_initial_is_what_a_read_outside_the_image_sees(case):
    name, model, params, inputs, k = case
    rng = np.random.default_rng(4)
    initial = {s: rng.normal(size=(B, H)) for s in model.states}
    lengths = (HEIGHTS, WIDTHS)
    ref = gc.compile(model, backend="unfolded")
    (l1, g1), (l2, g2) = k.loss_and_grad(params, inputs, lengths, initial), ref.loss_and_grad(params, inputs, lengths, initial)
    assert rel(l1, l2) < 1e-12 and all(rel(g1[p], g2[p]) < 1e-10 for p in params)
    assert abs(l1 - k.loss_and_grad(params, inputs, lengths)[0]) > 1e-3


def test_the_unfolded_grid():
    model = one_sweep()
    g = model.unfold((2, 3))
    states = {d["time"] for n, d in g.nodes(data=True) if d["kind"] == "state" and not d["initial"]}
    assert states == {(a, c) for a in (1, 2) for c in (1, 2, 3)}
    assert g.has_edge(("state", "h", (1, 2)), next(n for n in g.successors(("state", "h", (1, 2)))))
    with pytest.raises(gc.GraphcompError, match=r"a grid over \(i, j\) unfolds over a tuple of 2 positive extents"):
        model.unfold(3)


def test_grid_errors_in_the_users_terms():
    grid, k = one_sweep(), gc.compile(one_sweep(), backend="reference")
    params = params_of(grid)
    inputs = data()
    with pytest.raises(gc.GraphcompError, match=r"input 'x' has shape \(5, 3, 2\); the model is a grid over \(i, j\): "
                                                r"expected index-major \(I, J, B, 2\)"):
        k.forward(params, {"x": inputs["x"][:, 0]})
    with pytest.raises(gc.GraphcompError, match=r"lengths\[1\]\[2\] = 6: example 2's extent along j is outside 1..4"):
        k.forward(params, {"x": inputs["x"]}, lengths=(HEIGHTS, np.array([4, 4, 6])))
    with pytest.raises(gc.GraphcompError, match=r"lengths over a grid is a tuple of 2 arrays \(B,\)"):
        k.forward(params, {"x": inputs["x"]}, lengths=HEIGHTS)
    with pytest.raises(gc.GraphcompError, match=r"initial value of 'h' has shape \(1, 3, 3\); over a grid it is the "
                                                r"value every read outside an example's extent sees: \(3, 3\)"):
        k.forward(params, {"x": inputs["x"]}, initial={"h": np.zeros((1, B, H))})
    elman = gc.models.elman(D, H, O)
    with pytest.raises(gc.GraphcompError, match=r"input 'x' has shape \(5, 4, 3, 2\); expected time-major \(T, B, 2\)"):
        gc.compile(elman, backend="reference").forward(elman.init_params(), {"x": inputs["x"]})
