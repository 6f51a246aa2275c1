"""The grid networks of the model library (mdrnn, mdlstm, gru2d): four directions on images of
different sizes held against a PyTorch double loop with autograd written from their
equations, one and two directions against the unfolded DAG, names, initialisation, the
GRU's bound, and errors."""
import numpy as np
import pytest

import graphcomp as gc

models = gc.models
I, J, B, D, H, O = 5, 4, 3, 2, 3, 2
HEIGHTS, WIDTHS = np.array([5, 2, 4]), np.array([4, 4, 1])
CORNERS = {"tl": (-1, -1), "tr": (-1, 1), "bl": (1, -1), "br": (1, 1)}
KINDS = ("mdrnn", "mdlstm", "gru2d")


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b).max(initial=0) / max(1.0, np.abs(b).max(initial=0))


def data(seed=1):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(I, J, B, D)), "y": rng.normal(size=(I, J, B, O))}


def random_params(model, seed=0):
    """Parameters away from their initialisation (biases and forget biases nonzero too)."""
    rng = np.random.default_rng(seed)
    return {p: rng.normal(0, 0.5, np.shape(v)) for p, v in model.init_params(seed).items()}


@pytest.fixture(scope="module", params=KINDS)
def four(request):
    model = getattr(models, request.param)(D, H, O, directions=4)
    return request.param, model, gc.compile(model)


# ---------------------------------------------------------------- PyTorch, from the equations

def torch_step(kind, P, s, x, up, side):
    """One point of one direction (parameter names ending in ``s``): the new (h,) or (c, h)
    from the input and the neighbours' states along i (``up``) and j (``side``)."""
    import torch
    sig, tanh = torch.sigmoid, torch.tanh

    def pre(q):
        q = f"_{q}" if q else ""
        return P[f"Wi{q}{s}"] @ up[-1] + P[f"Wj{q}{s}"] @ side[-1] + P[f"U{q}{s}"] @ x + P[f"b{q}{s}"]
    if kind == "mdrnn":
        return (tanh(pre("")),)
    if kind == "mdlstm":
        c = sig(pre("fi")) * up[0] + sig(pre("fj")) * side[0] + sig(pre("i")) * tanh(pre("g"))
        return c, sig(pre("o")) * tanh(c)
    r, z, m = sig(pre("r")), sig(pre("z")), sig(pre("m"))
    n = tanh(P[f"U_n{s}"] @ x + P[f"b_n{s}"] + r * (P[f"Wi_n{s}"] @ up[0] + P[f"Wj_n{s}"] @ side[0] + P[f"b_hn{s}"]))
    mixed = side[0] + m * (up[0] - side[0])
    return (n + z * (mixed - n),)


def torch_loss(kind, params, inputs, corners):
    """The loss by a Python double loop over each image's own extent, each direction swept
    from its corner, with autograd."""
    torch = pytest.importorskip("torch")
    P = {p: torch.tensor(np.asarray(v, float), requires_grad=True) for p, v in params.items()}
    X, Y = (torch.tensor(inputs[n]) for n in ("x", "y"))
    zero = (torch.zeros(H, dtype=torch.float64),) * (2 if kind == "mdlstm" else 1)
    total = 0
    for b in range(B):
        hb, wb = int(HEIGHTS[b]), int(WIDTHS[b])
        tops = {}
        for corner in corners:
            (di, dj), s = CORNERS[corner], f"_{corner}" if len(corners) > 1 else ""
            grid = {}
            for a in (range(hb) if di < 0 else range(hb - 1, -1, -1)):
                for c in (range(wb) if dj < 0 else range(wb - 1, -1, -1)):
                    grid[a, c] = torch_step(kind, P, s, X[a, c, b], grid.get((a + di, c), zero),
                                            grid.get((a, c + dj), zero))
            tops[corner] = grid
        for a in range(hb):
            for c in range(wb):
                pred = P["V"] @ torch.cat([tops[k][a, c][-1] for k in corners]) + P["b_V"]
                total = total + ((pred - Y[a, c, b]) ** 2).mean()
    loss = total / B
    loss.backward()
    return float(loss.detach()), {p: v.grad.numpy() for p, v in P.items()}


def test_four_directions_equal_a_pytorch_double_loop_on_images_of_different_sizes(four):
    kind, model, kernel = four
    params, inputs = random_params(model), data()
    loss, grads = kernel.loss_and_grad(params, inputs, lengths=(HEIGHTS, WIDTHS))
    expected, expected_grads = torch_loss(kind, params, inputs, ("tl", "tr", "bl", "br"))
    assert rel(loss, expected) < 1e-10
    assert set(grads) == set(expected_grads)
    for p in params:
        assert grads[p].shape == np.shape(params[p]) and rel(grads[p], expected_grads[p]) < 1e-8, p


def test_four_directions_forward_is_the_reference_backends(four):
    kind, model, kernel = four
    params, inputs = random_params(model), {"x": data()["x"]}
    out = kernel.forward(params, inputs, lengths=(HEIGHTS, WIDTHS))
    ref = gc.compile(model, backend="reference").forward(params, inputs, lengths=(HEIGHTS, WIDTHS))
    assert set(out) == set(model.states) | {"o"} and out["o"].shape == (I, J, B, O)
    assert all(out[s].shape == (I, J, B, H) and rel(out[s], ref[s]) < 1e-12 for s in model.states)
    assert np.all(out["o"][HEIGHTS[1]:, :, 1] == 0) and np.all(out["h_tl"][:, WIDTHS[2]:, 2] == 0)   # outside


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("directions", [1, 2])
def test_one_and_two_directions_equal_pytorch_and_the_unfolded_dag(kind, directions):
    model = getattr(models, kind)(D, H, O, directions=directions)
    params, inputs = random_params(model, seed=3), data(seed=4)
    lengths = (HEIGHTS, WIDTHS)
    loss, grads = gc.compile(model, backend="reference").loss_and_grad(params, inputs, lengths)
    corners = ("tl",) if directions == 1 else ("tl", "br")
    expected, expected_grads = torch_loss(kind, params, inputs, corners)
    assert rel(loss, expected) < 1e-10 and all(rel(grads[p], expected_grads[p]) < 1e-8 for p in params)
    small = {"x": inputs["x"][:3, :2], "y": inputs["y"][:3, :2]}   # the DAG is slow: a 3 x 2 grid
    short = (np.minimum(HEIGHTS, 3), np.minimum(WIDTHS, 2))
    (l1, g1), (l2, g2) = (gc.compile(model, backend=b).loss_and_grad(params, small, short)
                          for b in ("reference", "unfolded"))
    assert rel(l1, l2) < 1e-12 and all(rel(g1[p], g2[p]) < 1e-10 for p in params)


# ---------------------------------------------------------------- what the library builds

def test_names_and_directions():
    assert models.mdrnn(D, H, O).states == ["h"]
    assert models.mdrnn(D, H, O, directions=2).states == ["h_tl", "h_br"]
    assert models.mdlstm(D, H, O, directions=4).states == ["c_tl", "h_tl", "c_tr", "h_tr", "c_bl", "h_bl", "c_br", "h_br"]
    assert sorted(models.mdrnn(D, H, O).params) == ["U", "V", "Wi", "Wj", "b", "b_V"]
    lstm = models.mdlstm(D, H, O)
    gates = {p.split("_", 1)[1] for p in lstm.params if p.startswith("Wi_")}
    assert gates == {"i", "fi", "fj", "g", "o"}                           # one forget gate per axis
    gru = models.gru2d(D, H, O, directions=2, prefix="enc_", x="img", o="logits", y="label")
    assert gru.states == ["enc_h_tl", "enc_h_br"] and set(gru.inputs) == {"img", "label"}
    assert "enc_b_hn_br" in gru.params and gru.step.params["enc_V"] == (O, 2 * H)   # the readout reads both
    assert models.mdrnn(D, H, O, loss=None).step.loss is None
    eqs = [str(e) for e in models.mdrnn(D, H, O, directions=2).equations()]
    assert eqs[0] == "h_tl(i, j) = tanh(U_tl*x(i, j) + Wi_tl*h_tl(i - 1, j) + Wj_tl*h_tl(i, j - 1) + b_tl)"
    assert "h_br(i + 1, j)" in eqs[1] and "h_br(i, j + 1)" in eqs[1]
    assert eqs[2] == "o(i, j) = V*[h_tl(i, j); h_br(i, j)] + b_V"
    sweeps = {s: models.mdrnn(D, H, O, directions=4).step.signals[s].direction for s in ("h_tl", "h_tr", "h_bl", "h_br")}
    assert sweeps == {"h_tl": (1, 1), "h_tr": (1, -1), "h_bl": (-1, 1), "h_br": (-1, -1)}


def test_init_rules():
    p = models.init(models.mdlstm(D, 4, O, directions=2), seed=0)
    for n, v in p.items():
        if n.startswith(("Wi_", "Wj_")):
            assert np.allclose(v @ v.T, np.eye(4), atol=1e-12), n            # orthogonal, each axis
        elif n.startswith("U_") or n == "V":
            assert np.abs(v).max() <= np.sqrt(6 / sum(v.shape)) and v.std() > 0, n   # Glorot
        elif n.startswith(("b_fi", "b_fj")):
            assert np.all(v == 1.0), n                                         # forget bias, both axes
        else:
            assert np.all(v == 0.0), n
    assert np.all(models.init(models.mdlstm(D, 4, O), forget_bias=0.0)["b_fj"] == 0.0)
    gru = models.init(models.gru2d(D, 4, O), seed=1)
    assert np.all(gru["b_hn"] == 0) and np.allclose(gru["Wj_m"] @ gru["Wj_m"].T, np.eye(4), atol=1e-12)


def test_gru2d_stays_between_the_candidate_and_its_neighbours():
    model = models.gru2d(D, H, O, loss=None)
    params = {p: 5 * v for p, v in random_params(model).items()}              # large weights
    x = 10 * np.random.default_rng(0).normal(size=(20, 20, 2, D))
    h = gc.compile(model, backend="reference").forward(params, {"x": x})["h"]
    assert np.abs(h).max() <= 1 + 1e-15 and np.abs(h).max() > 0.9   # (1 to rounding, once saturated)


@pytest.mark.parametrize("make, message", [
    (lambda: models.mdrnn(D, H, O, directions=3), r"mdrnn: directions=3 must be 1 \(a sweep from the top-left "
                                                  r"corner\), 2 \(also from the bottom-right\) or 4"),
    (lambda: models.mdlstm(D, H, O, directions=True), r"mdlstm: directions=True must be 1"),
    (lambda: models.gru2d(D, 0, O), r"gru2d: H=0 must be a positive integer \(the hidden size\)"),
    (lambda: models.mdrnn(D, H, O, activation="gelu"), r"mdrnn: unknown activation 'gelu'"),
    (lambda: models.mdlstm(D, H, O, loss="mae"), r"mdlstm: unknown loss 'mae'"),
    (lambda: models.gru2d(D, H, O, x="y"), r"gru2d: the input, output and target names \('y', 'o', 'y'\) must differ"),
])
def test_bad_arguments(make, message):
    with pytest.raises(gc.GraphcompError, match=message):
        make()
