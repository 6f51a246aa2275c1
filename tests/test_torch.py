"""The classic cells written in the DSL equal PyTorch's nn.RNN and nn.LSTM (float64, packed
sequences of unequal lengths): outputs, final states, loss and every parameter's gradient."""
import numpy as np
import pytest

import graphcomp as gc

from catalogue import lstm_model

torch = pytest.importorskip("torch")
nn = torch.nn
t = gc.t
T, B, D, H, O = 7, 4, 3, 5, 2
LENGTHS = np.array([7, 3, 5, 1])


def packed_run(module, x):
    packed = nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(LENGTHS),
                                               enforce_sorted=False)
    out, final = module(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    return out, final


def torch_loss(hidden, V, c, y):
    """(1/B) Σ_b Σ_{t ≤ len_b} mean((V h + c - y)²), as graphcomp defines the loss."""
    pred = hidden @ V.T + c
    mask = torch.from_numpy(np.arange(T)[:, None] < LENGTHS[None, :]).double()
    return (((pred - y) ** 2).mean(-1) * mask).sum() / B


def same_hidden_states(kernel, params, X, out, hn):
    """graphcomp's h on the valid steps equals PyTorch's packed output; its held final h, h_n."""
    fwd = kernel.forward(params, {"x": X}, LENGTHS)
    valid = np.arange(T)[:, None] < LENGTHS[None, :]
    assert np.allclose(fwd["h"][valid], out.detach().numpy()[valid], rtol=1e-10, atol=1e-12)
    assert np.allclose(fwd["h"][-1], hn.detach().numpy()[0], rtol=1e-10)
    return fwd


def readout_case(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(T, B, D)), rng.normal(size=(T, B, O))
    V, c = rng.normal(size=(O, H)) / np.sqrt(H), rng.normal(size=O)
    return rng, x, y, V, c


def test_elman_equals_torch_rnn():
    h, x, y, o = gc.signal("h", H), gc.signal("x", D), gc.signal("y", O), gc.signal("o", O)
    W_ih, W_hh, V = gc.param("W_ih", H, D), gc.param("W_hh", H, H), gc.param("V", O, H)
    b_ih, b_hh, c = gc.param("b_ih", H), gc.param("b_hh", H), gc.param("c", O)
    model = gc.Recurrence({h(t): gc.tanh(W_ih * x(t) + b_ih + W_hh * h(t - 1) + b_hh)},
                          outputs={"o": V * h(t) + c}, loss=gc.mse(o(t), y(t)))
    rng, X, Y, Vn, cn = readout_case(0)
    rnn = nn.RNN(D, H, nonlinearity="tanh").double()
    # the weight mapping: PyTorch's names and layouts are ours one to one
    params = {"W_ih": rnn.weight_ih_l0, "W_hh": rnn.weight_hh_l0, "b_ih": rnn.bias_ih_l0, "b_hh": rnn.bias_hh_l0}
    ours = {n: p.detach().numpy().copy() for n, p in params.items()}
    ours.update(V=Vn, c=cn)
    Vt, ct = torch.tensor(Vn, requires_grad=True), torch.tensor(cn, requires_grad=True)
    out, hn = packed_run(rnn, X)
    loss = torch_loss(out, Vt, ct, torch.from_numpy(Y))
    loss.backward()

    k = gc.compile(model)
    fwd = same_hidden_states(k, ours, X, out, hn)   # held final state = h_n
    value, grads = k.loss_and_grad(ours, {"x": X, "y": Y}, LENGTHS)
    assert value == pytest.approx(loss.item(), rel=1e-10)
    for n, p in params.items():
        assert np.allclose(grads[n], p.grad.numpy(), rtol=1e-8, atol=1e-12), n
    assert np.allclose(grads["V"], Vt.grad.numpy(), rtol=1e-8)
    assert np.allclose(grads["c"], ct.grad.numpy(), rtol=1e-8)


def test_lstm_equals_torch_lstm():
    model = lstm_model(D, H, O)
    # swap the cross-entropy readout of the catalogue model for the mse used here
    h, c, y, z = gc.signal("h", H), gc.signal("c", H), gc.signal("y", O), gc.signal("z", O)
    V, cb = gc.param("V", O, H), gc.param("cb", O)
    updates = {eq.lhs: eq.rhs for eq in model.equations()[:2]}
    model = gc.Recurrence(updates, outputs={"z": V * h(t) + cb}, loss=gc.mse(z(t), y(t)))
    rng, X, Y, Vn, cn = readout_case(1)
    lstm = nn.LSTM(D, H).double()
    with torch.no_grad():
        lstm.bias_ih_l0.copy_(torch.from_numpy(rng.normal(size=4 * H)))
    # PyTorch stacks the gates (i, f, g, o) in rows of weight_ih/weight_hh; its two biases add
    Wih, Whh = lstm.weight_ih_l0.detach().numpy(), lstm.weight_hh_l0.detach().numpy()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    ours = {"V": Vn, "cb": cn}
    for k_, g in enumerate("ifgo"):
        rows = slice(k_ * H, (k_ + 1) * H)
        ours[f"U{g}"], ours[f"W{g}"], ours[f"b{g}"] = Wih[rows].copy(), Whh[rows].copy(), bias[rows].copy()
    Vt, ct = torch.tensor(Vn, requires_grad=True), torch.tensor(cn, requires_grad=True)
    out, (hn, cn_) = packed_run(lstm, X)
    loss = torch_loss(out, Vt, ct, torch.from_numpy(Y))
    loss.backward()

    k = gc.compile(model)
    fwd = same_hidden_states(k, ours, X, out, hn)
    assert np.allclose(fwd["c"][-1], cn_.detach().numpy()[0], rtol=1e-10)
    value, grads = k.loss_and_grad(ours, {"x": X, "y": Y}, LENGTHS)
    assert value == pytest.approx(loss.item(), rel=1e-10)
    for k_, g in enumerate("ifgo"):
        rows = slice(k_ * H, (k_ + 1) * H)
        assert np.allclose(grads[f"U{g}"], lstm.weight_ih_l0.grad.numpy()[rows], rtol=1e-8, atol=1e-12)
        assert np.allclose(grads[f"W{g}"], lstm.weight_hh_l0.grad.numpy()[rows], rtol=1e-8, atol=1e-12)
        assert np.allclose(grads[f"b{g}"], lstm.bias_ih_l0.grad.numpy()[rows], rtol=1e-8, atol=1e-12)
    assert np.allclose(grads["V"], Vt.grad.numpy(), rtol=1e-8)
