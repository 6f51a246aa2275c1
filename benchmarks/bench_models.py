"""The model library against PyTorch's fused modules: stacked (2 layers) and bidirectional
LSTMs and a stacked GRU from gc.models beside torch.nn.LSTM/GRU (CPU, 2 threads by default) with the same
weights, after checking that the losses agree. Forward alone and loss + gradient (forward and
backward), float64 and float32; medians of interleaved rounds (bench.interleaved_ms).

    python benchmarks/bench_models.py                  # H = 32 and 128, both dtypes
    python benchmarks/bench_models.py --hidden 32 --dtypes float64 --repeat 3
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

T, B, D, O = 100, 32, 32, 8
CASES = {  # name: (gc.models function, torch module, layers, bidirectional)
    "lstm 2 layers": ("lstm", "LSTM", 2, False),
    "lstm bidirectional": ("lstm", "LSTM", 1, True),
    "gru 2 layers": ("gru", "GRU", 2, False),
}
GATES = {"lstm": "ifgo", "gru": "rzn"}


def ours_from_torch(kind: str, net, readout, layers: int) -> dict:
    """Our parameters from PyTorch's: gate g's rows of weight_ih/weight_hh are U_g/W_g; the two
    biases add, except the GRU's n gate (b_n = bias_ih, b_hn = bias_hh)."""
    H = net.hidden_size
    out = {"V": readout.weight, "b_V": readout.bias}
    for name, w in net.named_parameters():
        what, layer = name.split("_l")
        suffix = (str(int(layer[0]) + 1) if layers > 1 else "") + ("_bw" if "reverse" in layer else "")
        for k, g in enumerate(GATES[kind]):
            rows = w[k * H:(k + 1) * H]
            if what.startswith("weight"):
                out[f"{'U' if what == 'weight_ih' else 'W'}_{g}{suffix}"] = rows
            elif kind == "gru" and g == "n":
                out[f"b_{'n' if what == 'bias_ih' else 'hn'}{suffix}"] = rows
            else:
                out[f"b_{g}{suffix}"] = out.get(f"b_{g}{suffix}", 0) + rows
    return {n: v.detach().numpy().copy() for n, v in out.items()}


def run_case(case: str, H: int, dtype: str, repeat: int, threads: int) -> list:
    import torch
    torch.set_num_threads(threads)
    kind, module, layers, bi = CASES[case]
    tdt = getattr(torch, dtype)
    torch.manual_seed(0)
    net = getattr(torch.nn, module)(D, H, num_layers=layers, bidirectional=bi).to(tdt)
    readout = torch.nn.Linear(H * (2 if bi else 1), O).to(tdt)
    model = getattr(gc.models, kind)(D, H, O, layers=layers, bidirectional=bi)
    start = time.perf_counter()
    k = gc.compile(model, dtype=dtype)
    compile_s = time.perf_counter() - start
    P = ours_from_torch(kind, net, readout, layers)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(T, B, D)).astype(dtype), rng.normal(size=(T, B, O)).astype(dtype)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    weights = list(net.parameters()) + list(readout.parameters())

    def torch_grad():
        for w in weights:
            w.grad = None
        loss = ((readout(net(x)[0]) - y) ** 2).mean(-1).sum() / B
        loss.backward()
        return loss

    def torch_forward():
        with torch.no_grad():
            return readout(net(x)[0])

    loss, _ = k.loss_and_grad(P, {"x": X, "y": Y})
    rtol = 1e-9 if dtype == "float64" else 1e-3
    assert np.isclose(float(torch_grad().detach()), loss, rtol=rtol), "torch and graphcomp disagree"
    assert np.allclose(torch_forward().numpy(), k.forward(P, {"x": X})["o"], rtol=rtol, atol=rtol)
    rows = []
    for mode, ours, theirs in (("forward", lambda: k.forward(P, {"x": X}), torch_forward),
                               ("loss + grad", lambda: k.loss_and_grad(P, {"x": X, "y": Y}), torch_grad)):
        ms = interleaved_ms({"graphcomp": ours, "torch": theirs}, repeat)
        rows.append((case, H, dtype, mode, ms["graphcomp"], ms["torch"], compile_s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", nargs="*", type=int, default=[32, 128])
    parser.add_argument("--dtypes", nargs="*", default=["float64", "float32"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch's intra-op threads")
    args = parser.parse_args()
    print(f"T={T}, B={B}, D={D}, O={O}; torch {__import__('torch').__version__}, {args.threads} threads\n")
    print("| model | H | dtype | pass | graphcomp ms | torch fused ms | ratio (torch / graphcomp) | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for H in args.hidden:
            for case in CASES:
                for name, h, dt, mode, ours, theirs, compile_s in run_case(case, H, dtype, args.repeat, args.threads):
                    print(f"| {name} | {h} | {dt} | {mode} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}x | "
                          f"{compile_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
