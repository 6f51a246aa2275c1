"""The model library: PyTorch parity of elman/lstm/gru (two layers, bidirectional, packed
sequences), finite-difference gradients of every model, Numba against the reference backend,
initialisation, names, errors, and every architecture training on a small problem: the
encoder–decoder learns to reverse sequences, the echo-state network trains its readout only."""
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
    "jordan_teacher_forcing": lambda: models.jordan(2, 3, 2, teacher_forcing=True),
    "esn_dense": lambda: models.esn(2, 3, 2, density=1.0, leak=0.4),
}


@pytest.mark.parametrize("name", FD_MODELS)
def test_gradient_equals_finite_differences(name):
    model = FD_MODELS[name]()
    assert_finite_differences(model, *small_case(model, 3, onehot="xent" in name))


def assert_finite_differences(model, params, inputs, lengths, eps=1e-6):
    """The reference backend's gradient of every entry against central differences, and every
    parameter reaching the loss."""
    k = gc.compile(model, backend="reference")
    _, grads = k.loss_and_grad(params, inputs, lengths)
    for p, value in params.items():
        fd = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[i] += eps
            minus[i] -= eps
            fd[i] = (k.loss_and_grad({**params, p: plus}, inputs, lengths)[0]
                     - k.loss_and_grad({**params, p: minus}, inputs, lengths)[0]) / (2 * eps)
        assert np.allclose(grads[p], fd, rtol=1e-6, atol=1e-8), p
        assert np.any(grads[p] != 0), p


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
    for _ in range(60):
        loss, grads = kernel.loss_and_grad(params, {"x": x, "y": y})
        losses.append(float(loss))
        params = {p: v - 0.01 * grads[p] for p, v in params.items()}
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.6 * losses[0]
    assert not np.allclose(params["alpha_logit1"], 0.0)        # the leak rates learn too


def test_learned_leak_stays_in_0_1(numba_kernels):
    """α = σ(alpha_logit): however far the logit goes, a unit moves a fraction in (0, 1)."""
    model, kernel = numba_kernels["leaky_learned_2layers"]
    params, inputs, _ = small_case(model, 8)
    params["alpha_logit1"] = np.array([-3.0, 0.0, 40.0])
    h = kernel.forward(params, inputs)["h1"]
    P, x = params, inputs["x"]
    target = np.tanh(h[:-1] @ P["W1"].T + x[1:] @ P["U1"].T + P["b1"])
    alpha = 1 / (1 + np.exp(-params["alpha_logit1"]))
    assert np.allclose(h[1:], h[:-1] + alpha * (target - h[:-1]), rtol=1e-12)
    assert np.allclose(h[1:, :, 2], target[:, :, 2], rtol=1e-12)        # α -> 1: the unit jumps to its target


SMALL_TASK_MODELS = {"elman": lambda: models.elman(2, 4, 2), "lstm": lambda: models.lstm(2, 4, 2),
                     "gru_original": lambda: models.gru(2, 4, 2, variant="original")}


@pytest.mark.parametrize("name", SMALL_TASK_MODELS)
def test_each_network_trains(name):
    """Adam on y(t) = (x(t) + x(t-1)) / 2 (the reference backend: no compile for a tiny task)."""
    model = SMALL_TASK_MODELS[name]()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16, 2))
    y = (x + np.concatenate([np.zeros((1, 16, 2)), x[:-1]])) / 2
    trainer = gc.Trainer(gc.compile(model, backend="reference"), gc.optim.Adam(0.05), progress=False)
    history = trainer.fit(model.init_params(0), {"x": x, "y": y}, epochs=30, batch_size=16)
    assert history.loss[-1] < 0.3 * history.loss[0]


# ---------------------------------------------------------------- Jordan's teacher forcing

def jordan_series(rng, n=32, steps=20):
    """y(t) = 0.6 y(t-1) + 0.5 tanh(x(t)): the target depends on the previous target."""
    x, y = rng.normal(size=(steps, n, 2)), np.zeros((steps, n, 2))
    for i in range(steps):
        y[i] = 0.6 * y[i - 1] * (i > 0) + 0.5 * np.tanh(x[i])
    return x, y


def test_jordan_teacher_forcing_reads_the_previous_target(numba_kernels):
    free, kernel = numba_kernels["jordan"]
    forced = models.jordan(2, 3, 2, teacher_forcing=True)
    assert forced.states == ["h"] and forced.outputs == ["o"] and forced.params == free.params
    assert str(forced.equations()[0]) == "h(t) = tanh(U*x(t) + W*y(t - 1) + b)"
    params, inputs, lengths = small_case(free, 9)
    out = kernel.forward(params, inputs, lengths)
    # fed its own outputs as targets, the teacher-forced network computes the free-running one
    again = gc.compile(forced, backend="reference").forward(params, {"x": inputs["x"], "y": out["o"]}, lengths)
    valid = np.arange(5)[:, None] < lengths       # past its end a free-running state holds, an output is zero
    assert np.allclose(again["o"][valid], out["o"][valid], rtol=1e-12)
    assert np.allclose(again["h"][valid], out["h"][valid], rtol=1e-12)


def test_jordan_trained_with_teacher_forcing_runs_free(numba_kernels):
    free, kernel = numba_kernels["jordan"]
    forced = models.jordan(2, 3, 2, teacher_forcing=True)
    x, y = jordan_series(np.random.default_rng(0))
    start = forced.init_params(0)
    trainer = gc.Trainer(gc.compile(forced, backend="reference"), gc.optim.Adam(0.05), progress=False)
    history = trainer.fit(start, {"x": x, "y": y}, epochs=40, batch_size=32)
    assert history.loss[-1] < 0.05 * history.loss[0]
    before, after = (kernel.loss_and_grad(p, {"x": x, "y": y})[0] for p in (start, trainer.params))
    assert after < 0.05 * before       # the free-running network, fed its own outputs, follows the series


# ---------------------------------------------------------------- encoder–decoder

VOCAB = 5


def reversal(rng, n):
    """n random one-hot token sequences of 2 to 4 tokens, and each one reversed."""
    sources = [np.eye(VOCAB)[rng.integers(0, VOCAB, rng.integers(2, 5))] for _ in range(n)]
    return sources, [s[::-1] for s in sources]


@pytest.fixture(scope="module")
def reverser():
    """A GRU encoder–decoder trained (Adam) to reverse short sequences of tokens."""
    model = models.seq2seq(VOCAB, 24, VOCAB, cell="gru")
    kernel = gc.compile(model)
    inputs, lengths = model.pack(*reversal(np.random.default_rng(0), 800))
    trainer = gc.Trainer(kernel, gc.optim.Adam(0.02), progress=False)
    history = trainer.fit(model.init_params(0), inputs, epochs=12, batch_size=32, lengths=lengths, seed=0)
    return model, kernel, trainer.params, history


def test_seq2seq_learns_to_reverse(reverser):
    model, kernel, params, history = reverser
    assert history.loss[-1] < 0.05 * history.loss[0]
    sources, targets = reversal(np.random.default_rng(1), 50)      # unseen pairs
    made = model.decode(kernel, params, sources, 4)
    assert made.shape == (4, 50, VOCAB) and np.all(made.sum(-1) == 1)      # one-hot tokens
    right = [np.array_equal(made[:len(g), b], g) for b, g in enumerate(targets)]
    assert np.mean(right) >= 0.9


def test_seq2seq_pack():
    model = models.seq2seq(2, 3, 4, cell="elman")
    sources = [np.ones((3, 2)), 2 * np.ones((1, 2))]
    targets = [np.eye(4)[[1, 2]], np.eye(4)[[3, 0, 0]]]
    inputs, lengths = model.pack(sources, targets)
    assert lengths.tolist() == [5, 4]
    assert inputs["src"].T.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert np.all(inputs["x"][:3, 0] == 1) and np.all(inputs["x"][3:, 0] == 0) and np.all(inputs["x"][1:, 1] == 0)
    assert np.array_equal(inputs["y"][3:, 0], targets[0]) and np.all(inputs["y"][:3, 0] == 0)
    assert np.array_equal(inputs["y"][1:4, 1], targets[1]) and np.all(inputs["y"][4:, 1] == 0)
    with pytest.raises(gc.GraphcompError, match=r"seq2seq.pack: target 1 has shape \(2, 3\); each target must be "
                                                r"\(steps, 4\)"):
        model.pack(sources, [targets[0], np.zeros((2, 3))])
    with pytest.raises(gc.GraphcompError, match=r"as many targets as sources .* got 2 sources and 1 targets"):
        model.pack(sources, targets[:1])
    with pytest.raises(gc.GraphcompError, match=r"source 0 has shape \(0, 2\)"):
        model.pack([np.zeros((0, 2))], targets[:1])


def seq2seq_case(model, seed):
    """Perturbed parameters and two pairs of unequal source and target lengths."""
    rng = np.random.default_rng(seed)
    params = {p: v + rng.uniform(-0.3, 0.3, np.shape(v)) for p, v in models.init(model, seed).items()}
    sources = [rng.normal(size=(3, model.D)), rng.normal(size=(1, model.D))]
    targets = [rng.normal(size=(2, model.O)), rng.normal(size=(4, model.O))]
    return params, *model.pack(sources, targets)


SEQ2SEQ_FD = {"elman_2layers_mse": lambda: models.seq2seq(2, 3, 2, cell="elman", layers=2, loss="mse"),
              "lstm_xent": lambda: models.seq2seq(2, 2, 3, cell="lstm")}


@pytest.mark.parametrize("name", SEQ2SEQ_FD)
def test_seq2seq_gradient_equals_finite_differences(name):
    model = SEQ2SEQ_FD[name]()
    assert_finite_differences(model, *seq2seq_case(model, 2))     # encoder and decoder weights both reach the loss


def test_seq2seq_numba_equals_reference(reverser):
    model, kernel, _, _ = reverser
    params, inputs, lengths = seq2seq_case(model, 3)
    ref = gc.compile(model, backend="reference")
    a, b = kernel.forward(params, inputs, lengths), ref.forward(params, inputs, lengths)
    assert all(np.allclose(a[n], b[n], rtol=1e-10, atol=1e-12) for n in ("h", "o"))
    (la, ga), (lb, gb) = kernel.loss_and_grad(params, inputs, lengths), ref.loss_and_grad(params, inputs, lengths)
    assert la == pytest.approx(lb, rel=1e-10)
    assert all(np.allclose(ga[p], gb[p], rtol=1e-9, atol=1e-12) for p in params)


def test_seq2seq_is_an_encoder_then_a_decoder():
    """Held against two plain GRUs: the encoder over the source, then the decoder, started
    from the encoder's final state, over the previous targets (zeros first)."""
    model = models.seq2seq(2, 3, 4, cell="gru", loss="mse")
    params, inputs, lengths = seq2seq_case(model, 4)
    out = gc.compile(model, backend="reference").forward(params, inputs, lengths)
    plain = gc.compile(models.gru(2, 3, 4, loss=None), backend="reference")
    plain_dec = gc.compile(models.gru(4, 3, 4, loss=None), backend="reference")
    side = lambda s: {p[len(s):]: v for p, v in params.items() if p.startswith(s)} | {
        "V": params["V"], "b_V": params["b_V"]}
    for b, (S, L) in enumerate(zip([3, 1], lengths)):
        enc = plain.forward(side("enc_"), {"x": inputs["x"][:S, b:b + 1]})
        prev = inputs["y"][S - 1:L - 1, b:b + 1]                 # y(t-1): zero at the first target step
        dec = plain_dec.forward(side("dec_"), {"x": prev}, initial={"h": enc["h"][-1]})
        assert np.allclose(out["h"][:S, b], enc["h"][:, 0], rtol=1e-12)
        assert np.allclose(out["h"][S:L, b], dec["h"][:, 0], rtol=1e-12)
        assert np.allclose(out["o"][S:L, b], dec["o"][:, 0], rtol=1e-12)


def test_seq2seq_names():
    m = models.seq2seq(3, 4, 2, cell="lstm", layers=2, prefix="t_")
    assert m.states == ["t_c1", "t_h1", "t_c2", "t_h2"] and set(m.inputs) == {"x", "y", "src"}
    assert m.step.params["t_enc_U_f1"] == (4, 3) and m.step.params["t_dec_U_f1"] == (4, 2)
    assert m.step.params["t_enc_U_f2"] == m.step.params["t_dec_U_f2"] == (4, 4)
    assert m.rules["t_enc_b_f2"] == "forget" and m.trainable == m.params
    assert str(m.equations()[-1]) == "L(t) = (1 - src(t))*cross_entropy(o(t), y(t))"


# ---------------------------------------------------------------- echo-state network

@pytest.mark.parametrize("radius, density, H", [(0.5, 0.05, 60), (0.95, 0.3, 20), (1.3, 1.0, 8)])
def test_esn_reservoir_has_the_spectral_radius(radius, density, H):
    model = models.esn(2, H, 1, spectral_radius=radius, density=density, input_scaling=0.3)
    p = model.init_params(seed=5)
    assert np.abs(np.linalg.eigvals(p["W"])).max() == pytest.approx(radius, rel=1e-12)
    assert np.mean(p["W"] != 0) == pytest.approx(density, abs=0.1)
    assert np.abs(p["U"]).max() <= 0.3 and np.abs(p["b"]).max() <= 0.3 and p["U"].std() > 0
    assert all(np.array_equal(p[n], model.init_params(seed=5)[n]) for n in p)      # seeded
    assert model.trainable == ["V", "b_V"]


def test_esn_equations():
    m = models.esn(1, 5, 1, leak=0.25)
    assert str(m.equations()[0]) == "h(t) = 0.25*tanh(U*x(t) + W*h(t - 1) + b) + 0.75*h(t - 1)"
    assert str(models.esn(1, 5, 1).equations()[0]) == "h(t) = tanh(U*x(t) + W*h(t - 1) + b)"


def test_esn_trains_only_its_readout():
    """One-step prediction of a sum of two sines; the reservoir stays as drawn."""
    model = models.esn(1, 40, 1, spectral_radius=0.9, density=0.2, leak=0.5)
    steps = np.arange(121)[:, None, None]
    s = np.sin(0.3 * steps) + 0.1 * np.cos(0.71 * steps) * np.arange(1, 5)[None, :, None]
    start = model.init_params(0)
    trainer = gc.Trainer(model, gc.optim.Adam(0.05), train=model.trainable, progress=False)
    history = trainer.fit(start, {"x": s[:-1], "y": s[1:]}, epochs=80, batch_size=4)
    assert history.loss[-1] < 0.05 * history.loss[0]
    assert history.loss[-1] / 120 < 0.03                  # mean squared error per step
    assert all(np.array_equal(trainer.params[n], start[n]) for n in ("W", "U", "b"))
    assert not np.allclose(trainer.params["V"], start["V"])



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
    assert set(models.leaky(3, 4, 2, alpha="learned").params) == {"W", "U", "b", "alpha_logit", "V", "b_V"}
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
    assert eqs[0] == "h(t) = 0.25*tanh(U*x(t) + W*h(t - 1) + b) + 0.75*h(t - 1)"
    assert eqs[1] == "o(t) = V*h(t) + b_V" and eqs[2] == "L(t) = mse(o(t), y(t))"


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
    assert np.all(models.init(models.leaky(3, 4, 2, alpha="learned"))["alpha_logit"] == 0.0)   # α = 0.5
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
    (lambda: models.jordan(3, 4, 2, layers=2), r"jordan: the recurrence runs through the output o\(t-1\), so the "
                                               r"network has one hidden layer and runs forward only; for layers"),
    (lambda: models.jordan(3, 4, 2, bidirectional=True), r"jordan: .* use elman, lstm or gru"),
    (lambda: models.jordan(3, 4, 2, teacher_forcing=None), r"teacher_forcing=None must be True or False"),
    (lambda: models.esn(1, 10, 1, spectral_radius=0), r"esn: spectral_radius=0 must be a positive number"),
    (lambda: models.esn(1, 10, 1, density=1.5), r"esn: density=1.5 must be a number in \(0, 1\]"),
    (lambda: models.esn(1, 10, 1, leak=0), r"esn: leak=0 must be a number in \(0, 1\]"),
    (lambda: models.esn(1, 10, 1, input_scaling="big"), r"esn: input_scaling='big' must be a positive number"),
    (lambda: models.esn(1, 2, 1, density=0.01).init_params(), r"esn: this random reservoir \(2 units, density=0.01\) "
                                                              r"has no nonzero eigenvalue.*raise density"),
    (lambda: models.seq2seq(3, 4, 2, cell="rnn"), r"seq2seq: unknown cell 'rnn'; choose one of 'elman', 'lstm', 'gru'"),
    (lambda: models.seq2seq(3, 4, 2, layers=0), r"seq2seq: layers=0 must be an integer >= 1"),
    (lambda: models.seq2seq(3, 4, 2, src="x"), r"the input, output and target names \('x', 'o', 'y', 'x'\) must differ"),
    (lambda: models.seq2seq(3, 4, 2).decode(None, {}, [], 0), r"seq2seq.decode: steps=0 must be a positive number"),
])
def test_bad_arguments(make, message):
    with pytest.raises(gc.GraphcompError, match=message):
        make()


def test_init_takes_an_input_of_size_one():
    """A (H, 1) input weight is a matrix for Glorot's fans, given as (H,) like every column."""
    params = gc.models.init(gc.models.elman(1, 8, 1), seed=0)
    assert params["U"].shape == (8,) and np.all(np.abs(params["U"]) <= np.sqrt(6.0 / 9))
    assert params["V"].shape == (1, 8)
