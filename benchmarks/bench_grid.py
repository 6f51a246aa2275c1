"""Loss + gradient of 2-D recurrences over images: gc.models.mdrnn (tanh) and gc.models.mdlstm
(one forget gate per axis), one sweep from the top-left corner, a squared-error readout at
every cell, beside PyTorch (a double loop over the cells with autograd, the input projection
hoisted, 2 threads) and JAX (jit(value_and_grad) of a scan over rows of a scan over columns,
x64), with the same weights, after checking that all three agree. float64; medians of
interleaved rounds (bench.interleaved_ms); ratios to the faster peer. A peer whose first call
takes more than SLOW seconds (PyTorch's double loop on the largest images) is timed by that
one call instead, marked * in the table.

    python benchmarks/bench_grid.py                          # every size, both models
    python benchmarks/bench_grid.py --sizes small --models mdrnn --repeat 3
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_grid.py --peers jax   # graphcomp on one BLAS thread
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import interleaved_ms  # noqa: E402

import graphcomp as gc  # noqa: E402

SIZES = {  # B, I, J, D, H
    "small": (16, 8, 8, 1, 16),
    "medium": (32, 28, 28, 1, 32),
    "large": (8, 64, 64, 3, 32),
}
O = 10
SLOW = 60.0   # seconds: a peer this slow is timed by its first call alone
GATES = ("i", "fi", "fj", "g", "o")


def problem(kind: str, size: str, seed: int = 0):
    B, I, J, D, H = SIZES[size]
    model = getattr(gc.models, kind)(D, H, O)
    # forget bias 0: two forget gates near 1 would let the cell grow with the paths to a point
    params = gc.models.init(model, seed=seed, forget_bias=0.0)
    rng = np.random.default_rng(seed + 1)
    X, Y = rng.normal(size=(I, J, B, D)), rng.normal(size=(I, J, B, O))
    return model, params, X, Y


# ---------------------------------------------------------------- peers

def torch_peer(kind: str, P: dict, X: np.ndarray, Y: np.ndarray):
    """A Python double loop over the cells, each a batched step, with autograd."""
    import torch
    torch.set_num_threads(2)
    I, J, B, D = X.shape
    p = {n: torch.tensor(v, requires_grad=True) for n, v in P.items()}
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    gates = ("",) if kind == "mdrnn" else GATES

    def run():
        for v in p.values():
            v.grad = None
        names = [f"_{g}" if g else "" for g in gates]
        U = torch.cat([p[f"U{n}"].reshape(-1, D) for n in names])         # all gates' input weights
        Wi, Wj = (torch.cat([p[f"{w}{n}"] for n in names]) for w in ("Wi", "Wj"))
        b = torch.cat([p[f"b{n}"] for n in names])
        xu = (x.reshape(-1, D) @ U.T + b).reshape(I, J, B, -1)         # hoisted over every cell
        H = p["Wi" + names[0]].shape[0]
        zero = torch.zeros(B, H, dtype=torch.float64)
        h = [[None] * J for _ in range(I)]
        c = [[None] * J for _ in range(I)]
        for i in range(I):
            for j in range(J):
                hu, hl = (h[i - 1][j] if i else zero), (h[i][j - 1] if j else zero)
                pre = xu[i, j] + hu @ Wi.T + hl @ Wj.T
                if kind == "mdrnn":
                    h[i][j] = torch.tanh(pre)
                    continue
                gi, fi, fj, g, o = pre.split(H, dim=1)
                cu, cl = (c[i - 1][j] if i else zero), (c[i][j - 1] if j else zero)
                c[i][j] = torch.sigmoid(fi) * cu + torch.sigmoid(fj) * cl + torch.sigmoid(gi) * torch.tanh(g)
                h[i][j] = torch.sigmoid(o) * torch.tanh(c[i][j])
        hs = torch.stack([torch.stack(row) for row in h])                 # (I, J, B, H)
        out = hs @ p["V"].T + p["b_V"]
        loss = ((out - y) ** 2).mean(-1).sum() / B
        loss.backward()
        return float(loss.detach()), {n: v.grad.numpy() for n, v in p.items()}
    return run


def jax_peer(kind: str, P: dict, X: np.ndarray, Y: np.ndarray):
    """jit(value_and_grad) of a lax.scan over rows whose step is a lax.scan over columns."""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    I, J, B, D = X.shape
    gates = ("",) if kind == "mdrnn" else GATES
    names = [f"_{g}" if g else "" for g in gates]
    H = P["Wi" + names[0]].shape[0]

    def loss_fn(p, X, Y):
        U = jnp.concatenate([p[f"U{n}"].reshape(H, -1) for n in names])
        Wi, Wj = (jnp.concatenate([p[f"{w}{n}"] for n in names]) for w in ("Wi", "Wj"))
        b = jnp.concatenate([p[f"b{n}"] for n in names])
        xu = X @ U.T + b                                                 # (I, J, B, gates * H)

        def row(above, xrow):   # above: the previous row's (h, c), each (J, B, H)
            def cell(left, inputs):
                (hu, cu), xc = inputs
                hl, cl = left
                pre = xc + hu @ Wi.T + hl @ Wj.T
                if kind == "mdrnn":
                    h = jnp.tanh(pre)
                    return (h, cl), (h, cu)
                gi, fi, fj, g, o = jnp.split(pre, 5, axis=1)
                c = jax.nn.sigmoid(fi) * cu + jax.nn.sigmoid(fj) * cl + jax.nn.sigmoid(gi) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), (h, c)
            zero = jnp.zeros((B, H))
            _, new = jax.lax.scan(cell, (zero, zero), (above, xrow))
            return new, new[0]
        zeros = jnp.zeros((J, B, H))
        _, hs = jax.lax.scan(row, (zeros, zeros), xu)                   # (I, J, B, H)
        out = hs @ p["V"].T + p["b_V"]
        return ((out - Y) ** 2).mean(-1).sum() / B

    fn = jax.jit(jax.value_and_grad(loss_fn))
    p = {n: jnp.asarray(v) for n, v in P.items()}
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)

    def run():
        loss, grads = fn(p, Xj, Yj)
        jax.block_until_ready(grads)
        return float(loss), {n: np.asarray(g) for n, g in grads.items()}
    return run


# ---------------------------------------------------------------- one size

def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def run_size(kind: str, size: str, repeat: int, peers: list) -> tuple[dict, set]:
    model, params, X, Y = problem(kind, size)
    kernel = gc.compile(model)
    ours = lambda: kernel.loss_and_grad(params, {"x": X, "y": Y})
    loss, grads = ours()
    fns, once = {"graphcomp": ours}, {}
    makers = {"pytorch": torch_peer, "jax": jax_peer}
    for name in peers:
        start = time.perf_counter()
        fn = makers[name](kind, params, X, Y)
        their_loss, their_grads = fn()   # (jax: the jit compile)
        first = time.perf_counter() - start
        worst = max(rel(grads[p], their_grads[p].reshape(np.shape(grads[p]))) for p in params)
        assert rel(loss, their_loss) < 1e-10 and worst < 1e-8, f"{name} disagrees: {loss} vs {their_loss}, {worst}"
        print(f"  {kind} {size}: {name} agrees (loss {their_loss:.6g}, gradients to {worst:.1e}; "
              f"first call {first:.1f} s)", flush=True)
        if first > SLOW:
            once[name] = 1e3 * first
        else:
            fns[name] = fn
    ms = interleaved_ms(fns, repeat, budget=30.0)
    return {**ms, **once}, set(once)


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--models", nargs="*", default=["mdrnn", "mdlstm"])
    parser.add_argument("--peers", nargs="*", default=["pytorch", "jax"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for kind in args.models:
        for size in args.sizes:
            ms, once = run_size(kind, size, args.repeat, args.peers)
            fastest = min(v for n, v in ms.items() if n != "graphcomp") if len(ms) > 1 else float("nan")
            rows.append((kind, size, ms, once, fastest / ms["graphcomp"]))
            print(f"  {kind} {size}: " + ", ".join(f"{n} {v:.2f} ms" for n, v in ms.items()), flush=True)
    print("\n| model | (B, I, J, D, H) | graphcomp ms | " + " | ".join(f"{p} ms" for p in args.peers)
          + " | faster peer / graphcomp |")
    print("|---|---|---:|" + "---:|" * len(args.peers) + "---:|")
    for kind, size, ms, once, ratio in rows:
        print(f"| {kind} | {SIZES[size]} | {_ms(ms['graphcomp'])} | "
              + " | ".join(_ms(ms[p]) + ("*" if p in once else "") for p in args.peers) + f" | {ratio:.2f}x |")
    print("\n* one call (its first): slower than SLOW seconds" if any(r[3] for r in rows) else "")


if __name__ == "__main__":
    main()
