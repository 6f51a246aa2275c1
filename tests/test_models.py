"""The model library: PyTorch parity of elman/lstm/gru (two layers, bidirectional, packed
sequences), finite-difference gradients of every model, Numba against the reference backend,
initialisation, names, errors, and a model that trains."""
import numpy as np
import pytest

import graphcomp as gc

models = gc.models
T, B, D, H, O = 7, 4, 3, 5, 2
LENGTHS = np.array([7, 3, 5, 1])
VALID = np.arange(T)[:, None] < LENGTHS[None, :]


# ---------------------------------------------------------------- PyTorch parity

# PyTorch stacks the gates in the rows of weight_ih_l{k} / weight_hh_l{k} in this order
GATES = {"elman": [""], "lstm": ["i", "f", "g", "o"], "gru": ["r", "z", "n"]}
TORCH = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}


def weight_map(kind: str, layers: int, bidirectional: bool) -> list:
    """(our name, [torch parameters whose rows add up to it], rows) for every weight and bias.
    Ours: W multiplies h(t-1) (weight_hh), U the layer's input (weight_ih). The two PyTorch
    biases add (b = b_ih + b_hh), except GRU's n gate: b_n = b_in and b_hn = b_hn."""
    out = []
    for layer in range(layers):
        for reverse in (False, True) if bidirectional else (False,):
            ours = (str(layer + 1) if layers > 1 else "") + ("_bw" if reverse else "")
            theirs = f"_l{layer}" + ("_reverse" if reverse else "")
            for k, g in enumerate(GATES[kind]):
                rows, gate = slice(k * H, (k + 1) * H), f"_{g}" if g else ""
                out.append((f"W{gate}{ours}", [f"weight_hh{theirs}"], rows))
                out.append((f"U{gate}{ours}", [f"weight_ih{theirs}"], rows))
                if kind == "gru" and g == "n":
                    out.append((f"b_n{ours}", [f"bias_ih{theirs}"], rows))
                    out.append((f"b_hn{ours}", [f"bias_hh{theirs}"], rows))
                else:
                    out.append((f"b{gate}{ours}", [f"bias_ih{theirs}", f"bias_hh{theirs}"], rows))
    return out


TORCH_CASES = [(kind, layers, bi) for kind in ("elman", "lstm", "gru") for layers, bi in ((2, False), (2, True))]


@pytest.fixture(scope="module", params=TORCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}layers-{'bi' if c[2] else 'uni'}")
def torch_case(request):
    pytest.importorskip("torch")
    kind, layers, bi = request.param
    model = getattr(models, kind)(D, H, O, layers=layers, bidirectional=bi)
    return kind, layers, bi, model, gc.compile(model)


def test_equals_torch(torch_case):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    kind, layers, bi, model, kernel = torch_case
    torch.manual_seed(0)
    net = getattr(nn, TORCH[kind])(D, H, num_layers=layers, bidirectional=bi).double()
    top = H * (2 if bi else 1)
    readout = nn.Linear(top, O).double()
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(T, B, D)), rng.normal(size=(T, B, O))
    X[:, 3][1:] = np.nan                       # padding is never read

    tp = dict(net.named_parameters())
    mapping = weight_map(kind, layers, bi)
    params = {ours: sum(tp[n][rows] for n in names).detach().numpy().copy() for ours, names, rows in mapping}
    params.update(V=readout.weight.detach().numpy().copy(), b_V=readout.bias.detach().numpy().copy())
    assert set(params) == set(model.params)
    assert {n for _, names, _ in mapping for n in names} == set(tp)       # every torch weight mapped

    packed = nn.utils.rnn.pack_padded_sequence(torch.from_numpy(np.nan_to_num(X)), torch.from_numpy(LENGTHS),
                                               enforce_sorted=False)
    out, final = net(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    pred = readout(out)
    mask = torch.from_numpy(VALID).double()
    loss = (((pred - torch.from_numpy(Y)) ** 2).mean(-1) * mask).sum() / B
    loss.backward()

    fwd = kernel.forward(params, {"x": X}, LENGTHS)
    assert np.allclose(fwd["o"][VALID], pred.detach().numpy()[VALID], rtol=1e-10, atol=1e-12)
    last = f"h{layers}" if layers > 1 else "h"
    tops = np.concatenate([fwd[last]] + ([fwd[last + "_bw"]] if bi else []), axis=-1)
    assert np.allclose(tops[VALID], out.detach().numpy()[VALID], rtol=1e-10, atol=1e-12)
    # final states: PyTorch's (layers * directions, B, H), layer by layer, forward then backward;
    # ours: a forward state held past its end (row T), a backward state's last value at t = 1
    finals = final if kind == "lstm" else (final,)
    for state, torch_final in zip(("h", "c"), finals):
        k = 0
        for layer in range(layers):
            name = state + (str(layer + 1) if layers > 1 else "")
            for ours in [fwd[name][-1]] + ([fwd[name + "_bw"][0]] if bi else []):
                assert np.allclose(ours, torch_final.detach().numpy()[k], rtol=1e-10, atol=1e-12), (name, k)
                k += 1

    value, grads = kernel.loss_and_grad(params, {"x": X, "y": Y}, LENGTHS)
    assert value == pytest.approx(loss.item(), rel=1e-10)
    for ours, names, rows in mapping:
        for n in names:   # a summed bias has the gradient of each of its parts
            assert np.allclose(grads[ours], tp[n].grad.numpy()[rows], rtol=1e-8, atol=1e-12), (ours, n)
    assert np.allclose(grads["V"], readout.weight.grad.numpy(), rtol=1e-8, atol=1e-12)
    assert np.allclose(grads["b_V"], readout.bias.grad.numpy(), rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- gradients and backends

def small_case(model, seed, Ts=5, Bs=2, Ds=2, Os=2, onehot=False):
    """Initialised parameters with every vector perturbed (biases, peepholes, leaky rates)."""
    rng = np.random.default_rng(seed)
    params = models.init(model, seed)
    for p, v in params.items():
        if v.ndim == 1:
            params[p] = v + rng.uniform(-0.3, 0.3, v.shape)
    y = np.eye(Os)[rng.integers(0, Os, (Ts, Bs))] if onehot else rng.normal(size=(Ts, Bs, Os))
    return params, {"x": rng.normal(size=(Ts, Bs, Ds)), "y": y}, np.array([Ts, Ts - 2])


FD_MODELS = {
    "elman_sigmoid_xent": lambda: models.elman(2, 3, 2, activation="sigmoid", loss="cross_entropy"),
    "elman_relu": lambda: models.elman(2, 3, 2, activation="relu"),
    "jordan": lambda: models.jordan(2, 3, 2),
    "lstm_peephole": lambda: models.lstm(2, 3, 2, peephole=True),
    "lstm_bi": lambda: models.lstm(2, 2, 2, bidirectional=True),
    "gru_pytorch_2layers_bi": lambda: models.gru(2, 2, 2, layers=2, bidirectional=True),
    "gru_original": lambda: models.gru(2, 3, 2, variant="original"),
    "leaky_fixed": lambda: models.leaky(2, 3, 2, alpha=0.3),
    "leaky_learned_2layers": lambda: models.leaky(2, 3, 2, alpha="learned", layers=2),
}


@pytest.mark.parametrize("name", FD_MODELS)
def test_gradient_equals_finite_differences(name):
    model = FD_MODELS[name]()
    params, inputs, lengths = small_case(model, 3, onehot="xent" in name)
    k = gc.compile(model, backend="reference")
    _, grads = k.loss_and_grad(params, inputs, lengths)
    eps = 1e-6
    for p, value in params.items():
        fd = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[i] += eps
            minus[i] -= eps
            fd[i] = (k.loss_and_grad({**params, p: plus}, inputs, lengths)[0]
                     - k.loss_and_grad({**params, p: minus}, inputs, lengths)[0]) / (2 * eps)
        assert np.allclose(grads[p], fd, rtol=1e-6, atol=1e-8), p
        assert np.any(grads[p] != 0), p       # every parameter reaches the loss


NUMBA_MODELS = ["jordan", "gru_original", "leaky_fixed", "leaky_learned_2layers"]


@pytest.fixture(scope="module")
def numba_kernels():
    return {n: (FD_MODELS[n](), gc.compile(FD_MODELS[n]())) for n in NUMBA_MODELS}


@pytest.mark.parametrize("name", NUMBA_MODELS)
def test_numba_equals_reference(name, numba_kernels):
    model, kernel = numba_kernels[name]
    params, inputs, lengths = small_case(model, 4, Ts=9)
    ref = gc.compile(model, backend="reference")
    a, b = kernel.forward(params, inputs, lengths), ref.forward(params, inputs, lengths)
    assert set(a) == set(b) == set(model.states) | set(model.outputs)
    for n in a:
        assert np.allclose(a[n], b[n], rtol=1e-10, atol=1e-12), n
    (la, ga), (lb, gb) = kernel.loss_and_grad(params, inputs, lengths), ref.loss_and_grad(params, inputs, lengths)
    assert la == pytest.approx(lb, rel=1e-10)
    for p in params:
        assert np.allclose(ga[p], gb[p], rtol=1e-9, atol=1e-12), p


def test_jordan_feeds_the_output_back(numba_kernels):
    model, kernel = numba_kernels["jordan"]
    params, inputs, lengths = small_case(model, 5)
    out = kernel.forward(params, inputs)
    x, P = inputs["x"], params
    o = np.zeros((2, 2))
    for i in range(5):     # by hand: h = tanh(W o(t-1) + U x + b), o = V h + b_V
        h = np.tanh(o @ P["W"].T + x[i] @ P["U"].T + P["b"])
        o = h @ P["V"].T + P["b_V"]
        assert np.allclose(out["h"][i], h, rtol=1e-12) and np.allclose(out["o"][i], o, rtol=1e-12)


def test_leaky_moves_a_fraction_alpha(numba_kernels):
    model, kernel = numba_kernels["leaky_fixed"]
    params, inputs, _ = small_case(model, 6)
    h = kernel.forward(params, inputs)["h"]
    x, P = inputs["x"], params
    target = np.tanh(h[:-1] @ P["W"].T + x[1:] @ P["U"].T + P["b"])
    assert np.allclose(h[1:], 0.7 * h[:-1] + 0.3 * target, rtol=1e-12)


def test_a_small_model_trains(numba_kernels):
    """Plain gradient descent on y(t) = (x(t) + x(t-1)) / 2: the loss falls at every step."""
    model, kernel = numba_kernels["leaky_learned_2layers"]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 8, 2))
    y = (x + np.concatenate([np.zeros((1, 8, 2)), x[:-1]])) / 2
    params = models.init(model, seed=0)
    losses = []
    for _ in range(40):
        loss, grads = kernel.loss_and_grad(params, {"x": x, "y": y})
        losses.append(float(loss))
        params = {p: v - 0.01 * grads[p] for p, v in params.items()}
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.6 * losses[0]
    assert not np.allclose(params["alpha1"], 0.5)        # the leak rates learn too


# ---------------------------------------------------------------- names and structure

def test_names_one_layer():
    assert models.elman(3, 4, 2).params == ["U", "W", "b", "V", "b_V"]
    assert models.elman(3, 4, 2).inputs == ["x", "y"] and models.elman(3, 4, 2).outputs == ["o"]
    assert set(models.lstm(3, 4, 2).params) == {f"{w}_{g}" for w in "WUb" for g in "ifgo"} | {"V", "b_V"}
    assert models.lstm(3, 4, 2).states == ["c", "h"]
    peep = set(models.lstm(3, 4, 2, peephole=True).params) - set(models.lstm(3, 4, 2).params)
    assert peep == {"p_i", "p_f", "p_o"}
    gru = {f"{w}_{g}" for w in "WUb" for g in "rzn"} | {"V", "b_V"}
    assert set(models.gru(3, 4, 2).params) == gru | {"b_hn"}
    assert set(models.gru(3, 4, 2, variant="original").params) == gru
    assert set(models.leaky(3, 4, 2, alpha="learned").params) == {"W", "U", "b", "alpha", "V", "b_V"}
    assert set(models.leaky(3, 4, 2).params) == {"W", "U", "b", "V", "b_V"}
    j = models.jordan(3, 4, 2)
    assert j.states == ["h", "o"] and j.outputs == [] and j.step.params["W"] == (4, 2)


def test_names_layers_and_directions():
    m = models.lstm(3, 4, 2, layers=2, bidirectional=True)
    assert m.states == ["c1", "h1", "c1_bw", "h1_bw", "c2", "h2", "c2_bw", "h2_bw"]
    assert [(s.direction, s.states) for s in m.step.sweeps] == [
        (1, ("c1", "h1")), (-1, ("c1_bw", "h1_bw")), (1, ("c2", "h2")), (-1, ("c2_bw", "h2_bw"))]
    shapes = m.step.params
    assert shapes["U_f1"] == (4, 3) and shapes["U_f2_bw"] == (4, 8) and shapes["W_o2"] == (4, 4)
    assert shapes["V"] == (2, 8)
    assert len(m.params) == 2 * 2 * 12 + 2


def test_prefix_names_and_no_loss():
    m = models.gru(3, 4, 2, prefix="enc_", x="u", o="z", loss=None)
    assert m.states == ["enc_h"] and m.inputs == ["u"] and m.outputs == ["z"]
    assert all(p.startswith("enc_") for p in m.params)
    assert m.step.loss is None
    with pytest.raises(gc.GraphcompError, match="no loss"):
        gc.compile(m, backend="reference").loss_and_grad(models.init(m), {"u": np.zeros((2, 1, 3))})


def test_numpy_sizes():
    m = models.gru(np.int64(3), np.int32(4), np.int64(2), layers=2)
    assert m.step.params["U_r1"] == (4, 3) and m.step.params["V"] == (2, 4)


def test_equations_read_as_written():
    eqs = [str(e) for e in models.leaky(2, 3, 1, alpha=0.25).equations()]
    assert eqs[0] == "Eq(h(t), 0.25*Lambda(_z, tanh(_z)).(U*x(t) + W*h(t - 1) + b) + 0.75*h(t - 1))"
    assert eqs[1] == "Eq(o(t), V*h(t) + b_V)" and eqs[2] == "Eq(L(t), mse(o(t), y(t)))"


# ---------------------------------------------------------------- initialisation

def test_init_shapes_and_rules():
    m = models.lstm(3, 4, 2, layers=2, bidirectional=True)
    p = models.init(m, seed=0)
    plain = gc.Recurrence.init_params(m)             # the shapes every kernel takes
    assert {n: v.shape for n, v in p.items()} == {n: np.shape(v) for n, v in plain.items()}
    for n, v in p.items():
        if n.startswith("W_"):
            assert np.allclose(v @ v.T, np.eye(4), atol=1e-12), n            # orthogonal
        elif n.startswith("U_") or n == "V":
            fan_in, fan_out = v.shape[1], v.shape[0]
            assert np.abs(v).max() <= np.sqrt(6 / (fan_in + fan_out)) and v.std() > 0, n   # Glorot
        elif n.startswith("b_f"):
            assert np.all(v == 1.0), n                                         # forget bias 1
        else:
            assert np.all(v == 0.0), n
    assert np.all(models.init(m, 0, forget_bias=2.0)["b_f1_bw"] == 2.0)
    assert np.all(models.init(models.leaky(3, 4, 2, alpha="learned"))["alpha"] == 0.5)
    W = models.init(models.jordan(3, 5, 2))["W"]                              # 5 x 2: orthonormal columns
    assert np.allclose(W.T @ W, np.eye(2), atol=1e-12)


def test_init_is_seeded():
    m = models.gru(3, 4, 2)
    a, b, c = models.init(m, seed=1), models.init(m, seed=1), models.init(m, seed=2)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.allclose(a["W_r"], c["W_r"]) and not np.allclose(a["U_n"], c["U_n"])
    assert all(np.array_equal(a[n], v) for n, v in m.init_params(seed=1).items())   # the model's own init


def test_init_refuses_a_plain_recurrence():
    h, x = gc.signal("h", 2), gc.signal("x", 1)
    plain = gc.Recurrence({h(gc.t): gc.tanh(gc.param("W", 2, 2) * h(gc.t - 1) + gc.param("U", 2, 1) * x(gc.t))})
    with pytest.raises(gc.GraphcompError, match=r"for your own gc.Recurrence use model.init_params\(seed\)"):
        models.init(plain)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("make, message", [
    (lambda: models.elman(3, 4, 2, layers=0), r"elman: layers=0 must be an integer >= 1"),
    (lambda: models.lstm(3, 4, 2, layers=1.5), r"lstm: layers=1.5 must be an integer >= 1"),
    (lambda: models.gru(3, 4, 2, variant="cho"), r"gru: unknown variant 'cho'; choose one of 'pytorch', 'original'"),
    (lambda: models.elman(3, 4, 2, activation="softplus"), r"unknown activation 'softplus'; choose one of 'tanh'"),
    (lambda: models.jordan(3, 4, 2, activation="gelu"), r"jordan: unknown activation 'gelu'"),
    (lambda: models.elman(3, 4, 2, activation=["tanh"]), r"unknown activation \['tanh'\]"),
    (lambda: models.lstm(3, 4, 2, loss="mae"), r"lstm: unknown loss 'mae'; choose one of 'mse', 'cross_entropy', None"),
    (lambda: models.leaky(3, 4, 2, alpha=1.5), r"leaky: alpha=1.5 must be a number in \(0, 1\] or 'learned'"),
    (lambda: models.leaky(3, 4, 2, alpha="fixed"), r"alpha='fixed' must be a number"),
    (lambda: models.lstm(0, 4, 2), r"lstm: D=0 must be a positive integer \(the input size\)"),
    (lambda: models.gru(3, 4.0, 2), r"gru: H=4.0 must be a positive integer \(the hidden size\)"),
    (lambda: models.jordan(3, 4, -1), r"jordan: O=-1 must be a positive integer \(the output size\)"),
    (lambda: models.elman(3, 4, 2, bidirectional="yes"), r"bidirectional='yes' must be True or False"),
    (lambda: models.lstm(3, 4, 2, peephole=1), r"peephole=1 must be True or False"),
    (lambda: models.elman(3, 4, 2, prefix="1st"), r"prefix='1st' must be a string that starts a Python identifier"),
    (lambda: models.elman(3, 4, 2, o="y"), r"the input, output and target names \('x', 'y', 'y'\) must differ"),
])
def test_bad_arguments(make, message):
    with pytest.raises(gc.GraphcompError, match=message):
        make()
