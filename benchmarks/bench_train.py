"""One training epoch, graphcomp against PyTorch: the same model (gc.models.elman / lstm against
nn.RNN / nn.LSTM + nn.Linear), data, minibatches (graphcomp's shuffled order, replayed) and Adam,
every minibatch a forward, a backward and an update. graphcomp's trainer runs in both modes: its
Python loop over minibatches (compiled=False) and the compiled epoch (compiled=True). Each case
first checks that one epoch from the same weights ends at the same parameters in all three,
then times an epoch of each interleaved (benchmarks/bench.py's method), and kernel.loss_and_grad
alone over the same minibatches: what the Python loop spends beyond that is its own work.

    python benchmarks/bench_train.py              # every size, Elman and LSTM, float64 and float32
    python benchmarks/bench_train.py --quick      # tiny and small, float64, 3 rounds
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_train.py --threads 1   # a loaded machine

On a loaded machine two threads per side spin against the load (an epoch 10-40 times slower,
at random): give PyTorch one intra-op thread (``--threads``) and graphcomp's BLAS one too
(OpenBLAS reads ``OPENBLAS_NUM_THREADS`` when it loads, before this script could set it).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import graphcomp as gc
from graphcomp.train.trainer import _minibatches, sequences
from bench import interleaved_ms

SIZES = {  # H, T, B, minibatches per epoch; the input and output have H/2 components
    "tiny": (8, 20, 16, 64),
    "small": (32, 50, 32, 32),
    "medium": (128, 100, 32, 16),
}
LR, SEED = 1e-3, 0


def make_data(size, variable, dtype):
    """Inputs and targets (T, N, H/2) for N = B · minibatches sequences; with ``variable``,
    lengths uniform in T/4..T (the padding is zeros), else all T."""
    H, T, B, n = SIZES[size]
    rng = np.random.default_rng(1)
    X = rng.normal(size=(T, B * n, H // 2)).astype(dtype)
    Y = np.sin(np.cumsum(X, 0) / 4).astype(dtype)   # a target that depends on the past
    lengths = rng.integers(T // 4, T + 1, B * n) if variable else np.full(B * n, T)
    pad = np.arange(T)[:, None] >= lengths
    X[pad], Y[pad] = 0, 0
    return X, Y, lengths


def torch_rows(kind, params) -> dict:
    """graphcomp's weights as nn.RNN / nn.LSTM stacks them: the gates' rows in the order
    i, f, g, o; one bias (b = bias_ih + bias_hh, so bias_hh stays zero and is not trained)."""
    gates = "ifgo" if kind == "lstm" else [""]
    stack = lambda name: np.concatenate([params[f"{name}_{g}" if g else name] for g in gates])
    return {"weight_ih_l0": stack("U"), "weight_hh_l0": stack("W"), "bias_ih_l0": stack("b"),
            "weight": params["V"], "bias": params["b_V"]}


class TorchTrainer:
    """nn.RNN / nn.LSTM and an nn.Linear readout from graphcomp's weights, torch.optim.Adam,
    and an epoch over given minibatches with graphcomp's loss: Σ over valid steps, mean over
    the minibatch, of the mean squared error over the components."""

    def __init__(self, kind, params, X, Y, lengths, variable):
        self.variable = variable
        self.X, self.Y, self.lengths = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(lengths)
        dtype = self.X.dtype
        H, D = params["V"].shape[1], X.shape[2]
        self.rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.RNN)(D, H).to(dtype)
        self.readout = torch.nn.Linear(H, params["V"].shape[0]).to(dtype)
        self.rnn.bias_hh_l0.requires_grad_(False)
        with torch.no_grad():
            self.rnn.bias_hh_l0.zero_()
            for name, value in torch_rows(kind, params).items():
                module = self.readout if name in ("weight", "bias") else self.rnn
                getattr(module, name).copy_(torch.from_numpy(value))
        trained = [p for p in [*self.rnn.parameters(), *self.readout.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.Adam(trained, lr=LR)

    def epoch(self, batches) -> None:
        pack = torch.nn.utils.rnn.pack_padded_sequence
        for index in batches:
            lengths = self.lengths[index]
            T = int(lengths.max())
            x, y = self.X[:T, index], self.Y[:T, index]
            if self.variable:
                x, y = pack(x, lengths, enforce_sorted=False), pack(y, lengths, enforce_sorted=False).data
                out = self.rnn(x)[0].data
            else:
                out = self.rnn(x)[0]
            loss = ((self.readout(out) - y) ** 2).mean(-1).sum() / len(index)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def params(self) -> dict:
        """The weights by their PyTorch names (the readout's ``weight`` and ``bias``)."""
        named = [*self.rnn.named_parameters(), *self.readout.named_parameters()]
        return {name: p.detach().numpy() for name, p in named}


def run_case(kind, size, variable, dtype, rounds):
    """One row of the table: the check, then the interleaved timings in ms per epoch."""
    H, T, B, n = SIZES[size]
    model = (gc.models.lstm if kind == "lstm" else gc.models.elman)(H // 2, H, H // 2)
    kernel = gc.compile(model, dtype=np.dtype(dtype).name)
    X, Y, lengths = make_data(size, variable, dtype)
    params = model.init_params(seed=0)
    batches = _minibatches(lengths, B, np.random.default_rng(SEED))   # the order fit(seed=SEED) takes
    theirs = TorchTrainer(kind, params, X, Y, lengths, variable)
    theirs.epoch(batches)
    tp = theirs.params()

    # each mode of the trainer: one epoch from the same weights ends where PyTorch's did
    epochs, diff, first_fit = {}, 0.0, 0.0
    for mode, compiled in (("python loop", False), ("compiled epoch", True)):
        trainer = gc.Trainer(kernel, gc.optim.Adam(LR), progress=False, compiled=compiled)
        fit = epochs[mode] = lambda trainer=trainer: trainer.fit(params, {"x": X, "y": Y}, epochs=1, batch_size=B,
                                                                 lengths=lengths, seed=SEED)
        start = time.perf_counter()
        fit()
        first_fit = time.perf_counter() - start   # the compiled epoch's: compiled, or loaded from the cache
        ours = torch_rows(kind, trainer.params)
        diff = max(diff, *(float(np.abs(v - tp[k]).max() / np.abs(tp[k]).max()) for k, v in ours.items()))
    assert diff < (1e-8 if dtype == np.float64 else 1e-3), f"{kind} {size}: parameters differ by {diff:.1e}"

    data = sequences({"x": X, "y": Y}, lengths)
    minibatches = [data.batch(index) for index in batches]
    alone = lambda: [kernel.loss_and_grad(params, inputs, lengths=lens) for inputs, lens in minibatches]
    times = interleaved_ms({**epochs, "torch": lambda: theirs.epoch(batches), "loss_and_grad": alone}, rounds)
    label = f"{'LSTM' if kind == 'lstm' else 'Elman'} {size} (H={H}, T={T}, B={B}, {n} batches)"
    return {"case": label + (", lengths T/4..T" if variable else ""), "dtype": np.dtype(dtype).name,
            "diff": diff, "batches": n, "first fit": first_fit, **times}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--dtypes", nargs="*", default=["float64", "float32"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny and small, float64, 3 rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch's intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; Adam lr={LR}; D = O = H/2\n")
    if args.quick:
        args.sizes, args.dtypes, args.rounds = ["tiny", "small"], ["float64"], 3
    print("| case | dtype | torch ms | graphcomp, python loop ms | ratio | graphcomp, compiled epoch ms | ratio "
          "| compiled epoch vs python loop | loss_and_grad alone ms | python loop's own µs per batch "
          "| compiled epoch's first fit s "
          "| params differ by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for dtype in args.dtypes:
        cases = [(kind, size, False) for size in args.sizes for kind in ("elman", "lstm")]
        cases += [(kind, "small", True) for kind in ("elman", "lstm") if "small" in args.sizes]
        for kind, size, variable in cases:
            r = run_case(kind, size, variable, np.dtype(dtype).type, args.rounds)
            loop, compiled = r["python loop"], r["compiled epoch"]
            own = 1e3 * (loop - r["loss_and_grad"]) / r["batches"]
            print(f"| {r['case']} | {r['dtype']} | {r['torch']:.1f} | {loop:.1f} | **{r['torch'] / loop:.2f}×** | "
                  f"{compiled:.1f} | **{r['torch'] / compiled:.2f}×** | **{loop / compiled:.2f}×** | "
                  f"{r['loss_and_grad']:.1f} | {own:.0f} | "
                  f"{r['first fit']:.1f} | {r['diff']:.0e} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
