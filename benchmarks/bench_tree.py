"""One training step (loss + gradient) of a binary Tree-LSTM on minibatches of 25 trees of
20-60 nodes: graphcomp beside PyTorch written as the reference Tree-LSTM code is (a
recursion, node by node) and PyTorch batched by level by hand (DGL's method), same weights,
values checked first. Medians of interleaved rounds (``bench.interleaved_ms``).

    python benchmarks/bench_tree.py
    python benchmarks/bench_tree.py --hidden 64 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import interleaved_ms  # noqa: E402

import graphcomp as gc  # noqa: E402

t = gc.t


def tree_lstm(D: int, H: int, O: int) -> gc.Recurrence:
    """The binary (N-ary, N = 2) Tree-LSTM of Tai et al. (2015): a forget gate per child, every
    gate seeing both children; a readout and a squared error at every node."""
    h, c, x, y = gc.signal("h", H), gc.signal("c", H), gc.signal("x", D), gc.signal("y", O)
    kids = (gc.child(0), gc.child(1))

    def gate(g, extra=""):
        return (gc.param(f"W{g}{extra}", H, D) * x(t) + gc.param(f"b{g}{extra}", H)
                + gc.param(f"U{g}{extra}0", H, H) * h(kids[0]) + gc.param(f"U{g}{extra}1", H, H) * h(kids[1]))
    i, o, u = gc.sigmoid(gate("i")), gc.sigmoid(gate("o")), gc.tanh(gate("u"))
    f = [gc.sigmoid(gate("f", str(k))) for k in range(2)]
    cell = gc.hadamard(i, u) + gc.hadamard(f[0], c(kids[0])) + gc.hadamard(f[1], c(kids[1]))
    return gc.Recurrence({c(t): cell, h(t): gc.hadamard(o, gc.tanh(c(t)))},
                         loss=gc.mse(gc.param("V", O, H) * h(t), y(t)))


def random_trees(B: int, lo: int, hi: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """B random full binary trees of lo..hi nodes (odd counts), numbered children first."""
    sizes = [int(rng.integers(lo // 2, hi // 2)) * 2 + 1 for _ in range(B)]
    N = max(sizes)
    C = np.zeros((N, B, 2), np.int64)
    for b, n in enumerate(sizes):
        nodes = list(range(1, (n + 1) // 2 + 1))   # the leaves
        nxt = len(nodes) + 1
        while len(nodes) > 1:                        # join two random roots under a new node
            a, z = sorted(rng.choice(len(nodes), 2, replace=False))
            left, right = nodes[a], nodes[z]
            C[nxt - 1, b] = [left, right]
            nodes = [v for k, v in enumerate(nodes) if k not in (a, z)] + [nxt]
            nxt += 1
    return C, np.array(sizes)


def torch_recursive(P: dict, X, Y, C, lengths, H: int):
    """The reference implementation's way: one tree at a time, one node at a time."""
    import torch
    params = {n: torch.tensor(v, requires_grad=True) for n, v in P.items()}
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    zero = torch.zeros(H, dtype=Xt.dtype)

    def run():
        total = 0
        for b in range(len(lengths)):
            hs, cs = {}, {}
            for v in range(1, int(lengths[b]) + 1):
                kids = [int(k) for k in C[v - 1, b]]
                hk = [hs[k] if k else zero for k in kids]
                ck = [cs[k] if k else zero for k in kids]
                xv = Xt[v - 1, b]

                def gate(g, extra=""):
                    return (params[f"W{g}{extra}"] @ xv + params[f"b{g}{extra}"]
                            + params[f"U{g}{extra}0"] @ hk[0] + params[f"U{g}{extra}1"] @ hk[1])
                i, o, u = torch.sigmoid(gate("i")), torch.sigmoid(gate("o")), torch.tanh(gate("u"))
                cell = i * u + torch.sigmoid(gate("f", "0")) * ck[0] + torch.sigmoid(gate("f", "1")) * ck[1]
                cs[v], hs[v] = cell, o * torch.tanh(cell)
                total = total + ((params["V"] @ hs[v] - Yt[v - 1, b]) ** 2).mean()
        loss = total / len(lengths)
        for p in params.values():
            p.grad = None
        loss.backward()
        return float(loss.detach())
    return run


def torch_levels(P: dict, X, Y, C, lengths, H: int):
    """DGL's method by hand: every node of one height, across the minibatch, in one product."""
    import torch
    from graphcomp.layout import tree_levels
    nodes, trees, levels, child = tree_levels(C, lengths)
    params = {n: torch.tensor(v, requires_grad=True) for n, v in P.items()}
    R, B = len(nodes), len(lengths)
    Xl = torch.from_numpy(np.ascontiguousarray(X[nodes, trees]))
    Yl = torch.from_numpy(np.ascontiguousarray(Y[nodes, trees]))
    index = torch.from_numpy(child)                       # (2, R): rows of the children, R + b when none

    def run():
        h_all = torch.zeros(R + B, H, dtype=Xl.dtype)     # every node's state, level by level
        c_all = torch.zeros(R + B, H, dtype=Xl.dtype)
        outs = []
        for lv in range(len(levels) - 1):
            lo, hi = int(levels[lv]), int(levels[lv + 1])
            hk = [h_all[index[k, lo:hi]] for k in range(2)]
            ck = [c_all[index[k, lo:hi]] for k in range(2)]
            xv = Xl[lo:hi]

            def gate(g, extra=""):
                return (xv @ params[f"W{g}{extra}"].T + params[f"b{g}{extra}"]
                        + hk[0] @ params[f"U{g}{extra}0"].T + hk[1] @ params[f"U{g}{extra}1"].T)
            i, o, u = torch.sigmoid(gate("i")), torch.sigmoid(gate("o")), torch.tanh(gate("u"))
            cell = i * u + torch.sigmoid(gate("f", "0")) * ck[0] + torch.sigmoid(gate("f", "1")) * ck[1]
            hidden = o * torch.tanh(cell)
            h_all = torch.cat([h_all[:lo], hidden, h_all[hi:]])
            c_all = torch.cat([c_all[:lo], cell, c_all[hi:]])
            outs.append(hidden)
        top = torch.cat(outs)
        loss = ((top @ params["V"].T - Yl) ** 2).mean(1).sum() / B
        for p in params.values():
            p.grad = None
        loss.backward()
        return float(loss.detach())
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", nargs="*", type=int, default=[64, 150])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(2)
        have_torch = True
    except ImportError:
        have_torch = False
    D, O, B = 32, 8, 25
    print("| H | graphcomp ms | torch level-batched ms | ratio | torch recursive ms | ratio |")
    print("|---|---|---|---|---|---|")
    for H in args.hidden:
        model = tree_lstm(D, H, O)
        rng = np.random.default_rng(0)
        C, lengths = random_trees(B, 20, 60, rng)
        N = len(C)
        X, Y = rng.normal(size=(N, B, D)), rng.normal(size=(N, B, O))
        P = {n: rng.normal(0, 1 / np.sqrt(s[-1] if len(s) > 1 and s[1] > 1 else 1), s[:1] if s[1:] == (1,) else s)
             for n, s in model.step.params.items()}
        k = gc.compile(model)
        data = {"x": X, "y": Y}
        ours = lambda: k.loss_and_grad(P, data, lengths, children=C)
        loss = float(ours()[0])
        fns = {"graphcomp": ours}
        if have_torch:
            rec, lev = torch_recursive(P, X, Y, C, lengths, H), torch_levels(P, X, Y, C, lengths, H)
            assert np.isclose(rec(), loss, rtol=1e-9) and np.isclose(lev(), loss, rtol=1e-9), "torch disagrees"
            fns.update({"levels": lev, "recursive": rec})
        ms = interleaved_ms(fns, args.rounds)
        g = ms["graphcomp"]
        row = f"| {H} | {g:.2f} |"
        if have_torch:
            row += f" {ms['levels']:.2f} | {ms['levels'] / g:.1f}x | {ms['recursive']:.1f} | {ms['recursive'] / g:.1f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
