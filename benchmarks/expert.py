"""Hand-written expert kernels, the bar graphcomp's generated code is held to (bench.py): the
Elman network, the LSTM and the scalar map, loss and gradient by BPTT, each one fused Numba
function. What an expert does by hand: the input and output products of all steps as one
matrix product each (BLAS), the recurrent product by loops when it is small and by BLAS when
it pays (peer() times both and keeps the faster), branch-free tanh and sigmoid, no allocation inside the loop over steps, the weight
gradients as one product over all steps after the backward sweep."""
from __future__ import annotations

import time

import numpy as np
from numba import njit

@njit(cache=True, inline="always")
def _tanh(x):
    return 1.0 - 2.0 / (np.exp(2.0 * x) + 1.0)


@njit(cache=True, inline="always")
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@njit(cache=True)
def _rec(hprev, WT, out, blas):
    """out += hprev @ W.T (B, H) for the recurrent product, by loops or by BLAS."""
    if blas:
        out += hprev @ WT
        return
    B, H = hprev.shape
    N = WT.shape[1]
    for b in range(B):
        for j in range(H):
            v = hprev[b, j]
            for i in range(N):
                out[b, i] += v * WT[j, i]


@njit(cache=True)
def elman(W, U, V, bias, d, X, Y, blas):
    """Loss (mean over outputs, sum over steps and rows, / B) and gradients (W, U, V, b, d)."""
    T, B, D = X.shape
    H, O = W.shape[0], V.shape[0]
    WT, W_ = np.ascontiguousarray(W.T), np.ascontiguousarray(W)
    X2 = X.reshape(T * B, D)
    hs = np.zeros((T + 1, B, H), X.dtype)
    pre = (X2 @ U.T).reshape(T, B, H)
    for t in range(T):
        acc = pre[t]
        acc += bias
        _rec(hs[t], WT, acc, blas)
        for b in range(B):
            for i in range(H):
                hs[t + 1, b, i] = _tanh(acc[b, i])
    H2 = hs[1:].reshape(T * B, H)
    loss, dout = _readout(H2, V, d, Y.reshape(T * B, O), B)
    dh = (dout @ V).reshape(T, B, H)
    carry = np.zeros((B, H), X.dtype)
    for t in range(T - 1, -1, -1):
        acc = dh[t]
        acc += carry
        for b in range(B):
            for i in range(H):
                h = hs[t + 1, b, i]
                acc[b, i] *= 1.0 - h * h
        carry[:] = 0.0
        _rec(acc, W_, carry, blas)
    D2 = dh.reshape(T * B, H)
    gW = D2.T @ hs[:-1].reshape(T * B, H)
    gU = D2.T @ X2
    gV = dout.T @ H2
    return loss / (O * B), gW, gU, gV, _colsum(D2), _colsum(dout)


@njit(cache=True)
def _readout(H2, V, d, Y2, B):
    """The squared error of the readout V h + d over every row (summed, mean over outputs,
    not yet / B) and its cotangent."""
    err = H2 @ V.T + d - Y2
    O = V.shape[0]
    loss = 0.0
    for r in range(err.shape[0]):
        for o in range(O):
            loss += err[r, o] * err[r, o]
    err *= 2.0 / (O * B)   # in place: the cotangent keeps the arrays' dtype
    return loss, err


@njit(cache=True)
def _colsum(a):
    out = np.zeros(a.shape[1], a.dtype)
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[c] += a[r, c]
    return out


@njit(cache=True)
def lstm(W4, U4, b4, V, d, X, Y, blas):
    """The LSTM (gates stacked i, f, g, o): loss and gradients of W4, U4, b4, V, d."""
    T, B, D = X.shape
    H, O = W4.shape[1], V.shape[0]
    WT, W_ = np.ascontiguousarray(W4.T), np.ascontiguousarray(W4)
    X2 = X.reshape(T * B, D)
    gates = (X2 @ U4.T).reshape(T, B, 4 * H)
    hs = np.zeros((T + 1, B, H), X.dtype)
    cs = np.zeros((T + 1, B, H), X.dtype)
    tc = np.zeros((T, B, H), X.dtype)
    for t in range(T):
        acc = gates[t]
        acc += b4
        _rec(hs[t], WT, acc, blas)
        for b in range(B):
            for k in range(H):
                i, f = _sigmoid(acc[b, k]), _sigmoid(acc[b, H + k])
                g, o = _tanh(acc[b, 2 * H + k]), _sigmoid(acc[b, 3 * H + k])
                acc[b, k], acc[b, H + k], acc[b, 2 * H + k], acc[b, 3 * H + k] = i, f, g, o
                c = f * cs[t, b, k] + i * g
                cs[t + 1, b, k] = c
                tc[t, b, k] = _tanh(c)
                hs[t + 1, b, k] = o * tc[t, b, k]
    H2 = hs[1:].reshape(T * B, H)
    loss, dout = _readout(H2, V, d, Y.reshape(T * B, O), B)
    dh_out = (dout @ V).reshape(T, B, H)
    dh = np.zeros((B, H), X.dtype)
    dc = np.zeros((B, H), X.dtype)
    for t in range(T - 1, -1, -1):
        gt = gates[t]   # overwritten by the pre-activation cotangents
        for b in range(B):
            for k in range(H):
                i, f, g, o = gt[b, k], gt[b, H + k], gt[b, 2 * H + k], gt[b, 3 * H + k]
                e = dh[b, k] + dh_out[t, b, k]
                th = tc[t, b, k]
                c = dc[b, k] + e * o * (1.0 - th * th)
                gt[b, k] = c * g * i * (1.0 - i)
                gt[b, H + k] = c * cs[t, b, k] * f * (1.0 - f)
                gt[b, 2 * H + k] = c * i * (1.0 - g * g)
                gt[b, 3 * H + k] = e * th * o * (1.0 - o)
                dc[b, k] = c * f
        dh[:] = 0.0
        _rec(gt, W_, dh, blas)
    G2 = gates.reshape(T * B, 4 * H)
    gW = G2.T @ hs[:-1].reshape(T * B, H)
    gU = G2.T @ X2
    gV = dout.T @ H2
    return loss / (O * B), gW, gU, _colsum(G2), gV, _colsum(dout)


@njit(cache=True)
def scalar(a, b, c, X, Y):
    """The scalar map s(t) = a s(t-1) + b tanh(s(t-1)) + c x(t), loss Σ (s - y)² / B. The
    sums run per row (vectorizable over rows) and are added up once at the end."""
    T, B = X.shape
    s = np.zeros((T + 1, B), X.dtype)
    ts = np.zeros((T, B), X.dtype)
    acc = np.zeros((4, B), X.dtype)   # loss, and the gradients of a, b, c, per row
    for t in range(T):
        for r in range(B):
            th = _tanh(s[t, r])
            ts[t, r] = th
            v = a * s[t, r] + b * th + c * X[t, r]
            s[t + 1, r] = v
            e = v - Y[t, r]
            acc[0, r] += e * e
    carry = np.zeros(B, X.dtype)
    for t in range(T - 1, -1, -1):
        for r in range(B):
            dv = 2.0 * (s[t + 1, r] - Y[t, r]) / B + carry[r]
            th = ts[t, r]
            acc[1, r] += dv * s[t, r]
            acc[2, r] += dv * th
            acc[3, r] += dv * X[t, r]
            carry[r] = dv * (a + b * (1.0 - th * th))
    return acc[0].sum() / B, acc[1].sum(), acc[2].sum(), acc[3].sum()


def peer(kind: str, P: dict, X: np.ndarray, Y: np.ndarray):
    """The expert kernel as a bench peer: a function returning (loss, {name: gradient})."""
    dt = X.dtype.type
    if kind == "scalar":
        a, b, c = (dt(P[n]) for n in "abc")

        def run():
            loss, ga, gb, gc = scalar(a, b, c, X, Y)
            return loss, {"a": ga, "b": gb, "c": gc}
        return run
    if kind == "elman":
        def run(blas):
            loss, *g = elman(P["W"], P["U"], P["V"], P["b"], P["d"], X, Y, blas)
            return loss, dict(zip(["W", "U", "V", "b", "d"], g))
        return _faster(run)
    W4 = np.concatenate([P[f"W_{g}"] for g in "ifgo"])
    U4 = np.concatenate([P[f"U_{g}"] for g in "ifgo"])
    b4 = np.concatenate([P[f"b_{g}"] for g in "ifgo"])
    H = W4.shape[1]

    def run(blas):
        loss, gW, gU, gb, gV, gd = lstm(W4, U4, b4, P["V"], P["d"], X, Y, blas)
        out = {"V": gV, "d": gd}
        for n, g in enumerate("ifgo"):
            rows = slice(n * H, (n + 1) * H)
            out.update({f"W_{g}": gW[rows], f"U_{g}": gU[rows], f"b_{g}": gb[rows]})
        return loss, out
    return _faster(run)


def _faster(run):
    """run(blas) with the recurrent product done the faster way on this machine and size."""
    best = {}
    for blas in (False, True):
        run(blas)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run(blas)
            times.append(time.perf_counter() - start)
        best[blas] = min(times)
    blas = min(best, key=best.get)
    return lambda: run(blas)
