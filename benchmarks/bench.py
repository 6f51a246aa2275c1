"""Loss + gradient per training step: graphcomp's Numba kernels side by side with the peers in
one process (a hand-written NumPy BPTT, PyTorch's fused nn.RNN/nn.LSTM and an eager step loop
with autograd, JAX's jit(value_and_grad) over lax.scan where installed), and with the
hand-written expert Numba kernels of expert.py, after checking that they agree. Medians of
repeated runs; ratios to the fastest peer, and graphcomp's time over the expert's.

    python benchmarks/bench.py                      # every size, float64 and float32
    python benchmarks/bench.py --sizes tiny small --dtypes float64 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import sympy as sp

import graphcomp as gc
import expert

t = gc.t
SIZES = {  # B, T, D, H, O
    "tiny": (1, 1000, 4, 16, 4),
    "small": (32, 100, 32, 64, 32),
    "medium": (64, 100, 128, 256, 128),
    "large": (64, 50, 512, 1024, 512),
}


def interleaved_ms(fns: dict, rounds: int, budget: float = 20.0) -> dict:
    """Median milliseconds per call of each function, in rounds: each round gives every
    function an idle gap (for the previous peer's BLAS and OpenMP threads to stop spinning on
    the 2 cores) and then a burst of calls (at least 3, at least 50 ms), whose median is that
    round's time. The result is the median over rounds, so the machine's drift over a run
    affects every peer alike. A function slower than ``budget`` seconds in all runs fewer
    rounds."""
    per_round: dict = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    for name, fn in fns.items():   # warm up
        fn()
    for r in range(rounds):
        for name, fn in fns.items():
            if r > 0 and spent[name] > budget:
                continue
            time.sleep(0.3)
            calls, start = [], time.perf_counter()
            while len(calls) < 3 or time.perf_counter() - start < 0.05:
                t0 = time.perf_counter()
                fn()
                calls.append(time.perf_counter() - t0)
                if calls[-1] > 1.0:   # a slow peer: one call is a burst
                    break
            spent[name] += time.perf_counter() - start
            per_round[name].append(float(np.median(calls)))
    return {name: 1e3 * float(np.median(t)) for name, t in per_round.items()}


# ---------------------------------------------------------------- models

def elman_model(D, H, O):
    h, x, y = gc.signal("h", H), gc.signal("x", D), gc.signal("y", O)
    W, U, V = gc.param("W", H, H), gc.param("U", H, D), gc.param("V", O, H)
    b, d = gc.param("b", H), gc.param("d", O)
    return gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + U * x(t) + b)}, outputs={"o": V * h(t) + d},
                         loss=gc.mse(gc.signal("o", O)(t), y(t)))


def lstm_model(D, H, O):
    h, c, x, y = gc.signal("h", H), gc.signal("c", H), gc.signal("x", D), gc.signal("y", O)
    pre = {g: gc.param(f"W_{g}", H, H) * h(t - 1) + gc.param(f"U_{g}", H, D) * x(t) + gc.param(f"b_{g}", H)
           for g in "ifgo"}
    i, f, g, o = gc.sigmoid(pre["i"]), gc.sigmoid(pre["f"]), gc.tanh(pre["g"]), gc.sigmoid(pre["o"])
    V, d = gc.param("V", O, H), gc.param("d", O)
    return gc.Recurrence({c(t): gc.hadamard(f, c(t - 1)) + gc.hadamard(i, g), h(t): gc.hadamard(o, gc.tanh(c(t)))},
                         outputs={"z": V * h(t) + d}, loss=gc.mse(gc.signal("z", O)(t), y(t)))


def scalar_model():
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    return gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)


def params_for(model, rng, dtype):
    out = {}
    for name, shape in model.step.params.items():
        shape = shape[:1] if shape[1:] == (1,) else shape
        out[name] = (rng.uniform(-0.5, 0.5) if not shape else
                     rng.normal(0, 1 / np.sqrt(shape[-1]), shape)).astype(dtype) if shape else \
            float(rng.uniform(0.2, 0.5))
    return out


# ---------------------------------------------------------------- peers

def numpy_elman(P, X, Y):
    """Hand-written BPTT for the Elman network (NumPy, batched, time-major)."""
    T, B, _ = X.shape
    H, O = P["W"].shape[0], P["V"].shape[0]
    hs = np.zeros((T + 1, B, H), X.dtype)
    xu = (X.reshape(T * B, -1) @ P["U"].T).reshape(T, B, H) + P["b"]
    for k in range(T):
        hs[k + 1] = np.tanh(hs[k] @ P["W"].T + xu[k])
    out = hs[1:].reshape(T * B, H) @ P["V"].T + P["d"]
    err = out - Y.reshape(T * B, O)
    loss = (err ** 2).mean(1).sum() / B
    dout = 2 * err / (O * B)
    g = {"V": dout.T @ hs[1:].reshape(T * B, H), "d": dout.sum(0)}
    dh_out = (dout @ P["V"]).reshape(T, B, H)
    deltas = np.empty((T, B, H), X.dtype)
    carry = np.zeros((B, H), X.dtype)
    for k in range(T - 1, -1, -1):
        d = (dh_out[k] + carry) * (1 - hs[k + 1] ** 2)
        deltas[k] = d
        carry = d @ P["W"]
    D2 = deltas.reshape(T * B, H)
    g.update(W=D2.T @ hs[:-1].reshape(T * B, H), U=D2.T @ X.reshape(T * B, -1), b=D2.sum(0))
    return loss, g


def numpy_scalar(P, X, Y):
    T, B = X.shape
    a, b, c = P["a"], P["b"], P["c"]
    s = np.zeros((T + 1, B))
    for k in range(T):
        s[k + 1] = a * s[k] + b * np.tanh(s[k]) + c * X[k]
    r = s[1:] - Y
    loss = (r ** 2).sum() / B
    ga = gb = gc_ = 0.0
    carry = np.zeros(B)
    for k in range(T - 1, -1, -1):
        d = 2 * r[k] / B + carry
        ga += d @ s[k]
        gb += d @ np.tanh(s[k])
        gc_ += d @ X[k]
        carry = d * (a + b * (1 - np.tanh(s[k]) ** 2))
    return loss, {"a": ga, "b": gb, "c": gc_}


def torch_peers(kind, P, X, Y, dtype):
    import torch
    torch.set_num_threads(2)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    T, B, D = X.shape
    H = P["W" if kind == "elman" else "W_i"].shape[0]
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    V = torch.tensor(P["V"], requires_grad=True)
    c = torch.tensor(P["d"], requires_grad=True)
    if kind == "elman":
        mod = torch.nn.RNN(D, H, nonlinearity="tanh").to(tdt)
        with torch.no_grad():
            mod.weight_ih_l0.copy_(torch.from_numpy(P["U"]))
            mod.weight_hh_l0.copy_(torch.from_numpy(P["W"]))
            mod.bias_ih_l0.copy_(torch.from_numpy(P["b"]))
            mod.bias_hh_l0.zero_()
    else:
        mod = torch.nn.LSTM(D, H).to(tdt)
        with torch.no_grad():
            mod.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([P[f"U_{g}"] for g in "ifgo"])))
            mod.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([P[f"W_{g}"] for g in "ifgo"])))
            mod.bias_ih_l0.copy_(torch.from_numpy(np.concatenate([P[f"b_{g}"] for g in "ifgo"])))
            mod.bias_hh_l0.zero_()
    params = list(mod.parameters()) + [V, c]

    def fused():
        for p in params:
            p.grad = None
        out, _ = mod(x)
        loss = ((out @ V.T + c - y) ** 2).mean(-1).sum() / B
        loss.backward()
        return loss

    Wih, Whh = mod.weight_ih_l0, mod.weight_hh_l0
    bias = mod.bias_ih_l0 + 0

    def eager():
        for p in params:
            p.grad = None
        h = torch.zeros(B, H, dtype=tdt)
        cell = torch.zeros(B, H, dtype=tdt)
        loss = 0
        for xt, yt in zip(x.unbind(0), y.unbind(0)):
            if kind == "elman":
                h = torch.tanh(xt @ Wih.T + h @ Whh.T + mod.bias_ih_l0)
            else:
                gates = xt @ Wih.T + h @ Whh.T + mod.bias_ih_l0
                i, f, g, o = gates.chunk(4, 1)
                cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(cell)
            loss = loss + ((h @ V.T + c - yt) ** 2).mean(-1).sum() / B
        loss.backward()
        return loss

    return {"torch fused": fused, "torch eager loop": eager}, lambda: float(fused().detach())


def jax_peer(kind, P, X, Y, dtype):
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    B = X.shape[1]

    def loss_fn(p, X, Y):
        if kind == "elman":
            def step(h, xt):
                h = jnp.tanh(p["W"] @ h.T + (xt @ p["U"].T + p["b"]).T).T
                return h, h
            h0 = jnp.zeros((B, p["W"].shape[0]), X.dtype)
        elif kind == "lstm":
            def step(carry, xt):
                h, c = carry
                gate = {g: h @ p[f"W_{g}"].T + xt @ p[f"U_{g}"].T + p[f"b_{g}"] for g in "ifgo"}
                c = jax.nn.sigmoid(gate["f"]) * c + jax.nn.sigmoid(gate["i"]) * jnp.tanh(gate["g"])
                h = jax.nn.sigmoid(gate["o"]) * jnp.tanh(c)
                return (h, c), h
            H = p["W_i"].shape[0]
            h0 = (jnp.zeros((B, H), X.dtype), jnp.zeros((B, H), X.dtype))
        else:
            def step(s, xt):
                s = p["a"] * s + p["b"] * jnp.tanh(s) + p["c"] * xt
                return s, s
            h0 = jnp.zeros(B, X.dtype)
            _, ss = jax.lax.scan(step, h0, X)
            return jnp.sum((ss - Y) ** 2) / B
        _, hs = jax.lax.scan(step, h0, X)
        out = hs @ p["V"].T + p["d"]
        return jnp.sum(jnp.mean((out - Y) ** 2, -1)) / B

    fn = jax.jit(jax.value_and_grad(loss_fn))
    jp = {k: jnp.asarray(v) for k, v in P.items()}
    jX, jY = jnp.asarray(X), jnp.asarray(Y)

    def run():
        value, grads = fn(jp, jX, jY)
        jax.block_until_ready(grads)
        return value

    return run


# ---------------------------------------------------------------- one size

def matmul_peak(dtype) -> float:
    """GFLOP/s of a large matrix product (NumPy's BLAS), the fastest of 15 calls in 3 rounds
    with idle gaps: a peak is what the machine can do, so its best case, not its median."""
    a = np.random.default_rng(0).normal(size=(1024, 1024)).astype(dtype)
    a @ a   # warm up
    best = float("inf")
    for _ in range(3):
        time.sleep(0.3)
        for _ in range(5):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    return 2 * 1024 ** 3 / best / 1e9


def flops(kind, B, T, D, H, O) -> float:
    gates = 4 if kind == "lstm" else 1
    per_row = gates * (H * H + H * D) + O * H
    return 6.0 * T * B * per_row    # forward 2, backward 4 per multiply-add


def run_size(kind, size, dtype, repeat, peak):
    rng = np.random.default_rng(0)
    if kind == "scalar":
        B, T = size
        model = scalar_model()
        X, Y = rng.normal(size=(T, B)).astype(dtype), rng.normal(size=(T, B)).astype(dtype)
        P = {"a": 0.5, "b": 0.3, "c": 0.2}
        label = f"scalar map B={B} T={T}"
    else:
        B, T, D, H, O = SIZES[size]
        model = elman_model(D, H, O) if kind == "elman" else lstm_model(D, H, O)
        X, Y = rng.normal(size=(T, B, D)).astype(dtype), rng.normal(size=(T, B, O)).astype(dtype)
        P = params_for(model, rng, dtype)
        label = f"{kind} {size} (B={B}, T={T}, D={D}, H={H}, O={O})"
    start = time.perf_counter()
    k = gc.compile(model, dtype=np.dtype(dtype).name)
    compile_s = time.perf_counter() - start
    data = {"x": X, "y": Y}
    ours = lambda: k.loss_and_grad(P, data)
    loss, _ = ours()
    peers = {}
    if kind == "scalar":
        peers["numpy hand BPTT"] = lambda: numpy_scalar(P, X.astype(np.float64), Y.astype(np.float64))
        assert np.isclose(numpy_scalar(P, X, Y)[0], loss, rtol=1e-3 if dtype == np.float32 else 1e-9)
    else:
        if kind == "elman":
            peers["numpy hand BPTT"] = lambda: numpy_elman(P, X, Y)
            assert np.isclose(numpy_elman(P, X, Y)[0], loss, rtol=1e-3 if dtype == np.float32 else 1e-9)
        try:
            fns, check = torch_peers(kind, P, X, Y, dtype)
            assert np.isclose(check(), loss, rtol=1e-3 if dtype == np.float32 else 1e-9), "torch disagrees"
            peers.update(fns)
            if T * B > 20000 or size in ("medium", "large"):
                peers.pop("torch eager loop")   # minutes per call at these sizes
        except ImportError:
            pass
    hand = expert.peer(kind, P, X, Y)
    hand_loss, hand_grads = hand()
    _, grads = ours()
    tol = 1e-3 if dtype == np.float32 else 1e-9
    assert np.isclose(hand_loss, loss, rtol=tol), "the expert kernel disagrees"
    for name, g in grads.items():
        assert np.allclose(hand_grads[name], g, rtol=tol, atol=tol * np.max(np.abs(g))), f"expert's {name}"
    j = jax_peer(kind, P, X, Y, dtype)
    if j is not None:
        assert np.isclose(float(j()), loss, rtol=1e-3 if dtype == np.float32 else 1e-9), "jax disagrees"
        peers["jax jit(scan)"] = j
    times = interleaved_ms({"graphcomp": ours, "expert": hand, **peers}, repeat)
    ms_ours, ms_expert = times.pop("graphcomp"), times.pop("expert")
    fastest = min(times, key=times.get) if times else None
    row = {"case": label, "dtype": np.dtype(dtype).name, "graphcomp ms": ms_ours, "compile s": compile_s,
           "peers": times, "fastest": fastest, "expert ms": ms_expert,
           "ratio": (times[fastest] / ms_ours) if fastest else float("nan")}
    if kind != "scalar":
        row["peak"] = flops(kind, *SIZES[size]) / (ms_ours * 1e-3) / 1e9 / peak
    return row


def compile_times() -> dict:
    """gc.compile of the small LSTM in fresh processes: with an empty cache (the runtime's
    fast functions compile too, once per machine), for a model not seen before (runtime
    cached), and for a model compiled before (loaded from the cache); and, of that, what
    Numba's own start-up costs (the first compile of any function in a process)."""
    import tempfile
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from bench import lstm_model
        import graphcomp as gc
        from numba import njit
        H = int(sys.argv[1])
        start = time.perf_counter()
        if sys.argv[2] == "warm":
            njit(lambda x: x + 1)(1.0)
        warm = time.perf_counter()
        gc.compile(lstm_model(32, H, 32))
        print(warm - start, time.perf_counter() - warm)
    """)

    def run(cache, H, warm="cold"):
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        out = subprocess.run([sys.executable, "-c", code, str(H), warm], env=env, capture_output=True, text=True, check=True)
        return [float(v) for v in out.stdout.split()]
    with tempfile.TemporaryDirectory() as cache:
        empty = run(cache, 64)[1]
        new_size = run(cache, 48)[1]   # the same model at another size: the loops are reused
        cached = run(cache, 64)[1]
        numba_start, cached_warm = run(cache, 64, "warm")
    return {"empty cache": empty, "new hidden size": new_size, "cached": cached, "cached, Numba started": cached_warm,
            "Numba start-up": numba_start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", default=["tiny", "small", "medium", "large", "scalar"])
    parser.add_argument("--dtypes", nargs="*", default=["float64", "float32"])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    peaks = {dtype: matmul_peak(np.dtype(dtype)) for dtype in args.dtypes}
    print("matmul peak (NumPy BLAS, 1024²): " + ", ".join(f"{d} {p:.1f} GFLOP/s" for d, p in peaks.items()))
    times = compile_times()
    print("gc.compile of the LSTM (small), fresh processes: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    print()
    print("| case | dtype | graphcomp ms | fastest peer | peer ms | ratio (peer / graphcomp) | expert ms | "
          "graphcomp / expert | of matmul peak | other peers ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        dt = np.float64 if dtype == "float64" else np.float32
        jobs = []
        for size in args.sizes:
            if size == "scalar":
                jobs += [("scalar", (1, 100_000)), ("scalar", (256, 100_000))]
            else:
                jobs += [("elman", size)] + ([("lstm", size)] if size != "large" else [])
        for kind, size in jobs:
            r = run_size(kind, size, dt, args.repeat, peaks[dtype])
            others = ", ".join(f"{n} {v:.2f}" for n, v in r["peers"].items() if n != r["fastest"])
            fastest = r["fastest"] or "-"
            peer_ms = f"{r['peers'][r['fastest']]:.2f}" if r["fastest"] else "-"
            frac = f"{100 * r['peak']:.0f}%" if "peak" in r else "-"
            print(f"| {r['case']} | {r['dtype']} | {r['graphcomp ms']:.2f} | {fastest} | {peer_ms} | "
                  f"{r['ratio']:.2f}x | {r['expert ms']:.2f} | {r['graphcomp ms'] / r['expert ms']:.2f}x | {frac} | "
                  f"{others} |", flush=True)


if __name__ == "__main__":
    main()
