"""Arithmetic expression trees evaluated by a Tree-LSTM: random expressions over the digits
0-9 with +, − and × (generated with a seed), each a binary tree whose leaves are digits and
whose inner nodes are operators. A binary (N-ary, K = 2) Tree-LSTM, gc.models.tree_lstm,
reads one token per node and predicts every node's value modulo 10 (the loss at every node,
so that each subtree teaches the one above it). Trained on trees of depth up to 3, tested on
held-out trees of depth up to 3 and on deeper ones, depth 4, never seen in training.

Against it, an LSTM (gc.models.lstm) of as many parameters reads the same expressions as flat
token sequences, in postfix order (each operator after its operands, the tree's node order),
and predicts the root's value at the last token, where its loss is taken; same trees, seeds,
optimiser, epochs and minibatches. Roots right, held out:

    full run                                   depth <= 3   depth <= 4
    binary Tree-LSTM, H = 64 (45194 params)      86.2%        70.0%     (nodes: 97.9%, 95.7%)
    LSTM on postfix tokens, H = 98 (44894)       37.2%        35.4%
    untrained Tree-LSTM                          14.2%

The LSTM fits its training expressions (loss per sequence 1.85 -> 0.02) but few held-out ones
(its loss is at the last token only, the Tree-LSTM's at every node).
(seed 0, 2 cores: about 65 s and 10 s of training, 30 epochs of 4000 trees; --short trains
smaller networks on fewer trees for fewer epochs, in seconds: roots about 45% and 40%).

Run: python examples/arithmetic_trees.py [--short]"""
import argparse
import time

import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t
TOKENS = [str(d) for d in range(10)] + ["+", "-", "*"]
APPLY = {"+": lambda a, b: (a + b) % 10, "-": lambda a, b: (a - b) % 10, "*": lambda a, b: (a * b) % 10}


def expression(depth: int, rng) -> list:
    """A random expression of at most ``depth`` operator levels, its nodes in post-order (every
    child before its parent, the root last): (token, left, right, value), children numbered from 1."""
    nodes = []

    def grow(level: int) -> int:
        if level == 0 or rng.random() < 0.25:
            digit = int(rng.integers(10))
            nodes.append((str(digit), 0, 0, digit))
        else:
            left, right = grow(level - 1), grow(level - 1)
            op = TOKENS[10 + int(rng.integers(3))]
            nodes.append((op, left, right, APPLY[op](nodes[left - 1][3], nodes[right - 1][3])))
        return len(nodes)
    grow(depth)
    return nodes


def tree(nodes: list) -> dict:
    """One tree as the trainer takes it: tokens one-hot x (n, 13), values one-hot y (n, 10), children (n, 2)."""
    return {"x": np.eye(len(TOKENS))[[TOKENS.index(tok) for tok, *_ in nodes]],
            "y": np.eye(10)[[value for *_, value in nodes]],
            "children": np.array([[left, right] for _, left, right, _ in nodes], np.int64)}


def postfix(example: dict) -> dict:
    """The same expression as a flat token sequence for an LSTM: its nodes' order is postfix
    (each operator after its two operands), so x is the tree's; the root's value one-hot y and
    m = 1 at the last token only, where the loss is taken."""
    last = np.arange(len(example["x"])) == len(example["x"]) - 1
    return {"x": example["x"], "y": example["y"] * last[:, None], "m": last * 1.0}


def at_the_last_token(net: gc.Recurrence) -> gc.Recurrence:
    """A library network (built with loss=None) with its cross-entropy taken where m(t) = 1."""
    eqs, n = net.equations(), len(net.states)
    m, o, y = sp.Function("m"), gc.signal("o", 10), gc.signal("y", 10)
    return gc.Recurrence({e.lhs: e.rhs for e in eqs[:n]}, outputs={"o": eqs[n].rhs},
                         loss=m(t) * gc.cross_entropy(o(t), y(t)))


def fit(kernel, params: dict, data: list, epochs: int) -> tuple:
    """The same budget for both networks: Adam on a cosine schedule, minibatches of 32."""
    updates = epochs * -(-len(data) // 32)
    trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(2e-2, updates)), clip_norm=5.0, progress=False)
    start = time.perf_counter()
    history = trainer.fit(params, data, epochs=epochs, batch_size=32)
    return trainer.params, history, time.perf_counter() - start


def accuracy(kernel, params, trees: list) -> tuple[float, float]:
    """The fractions of nodes and of roots whose value modulo 10 is predicted right."""
    data = gc.trees(trees)
    out = kernel.forward(params, {"x": data.arrays["x"]}, data.lengths, children=data.children)["o"]
    right = out.argmax(-1) == data.arrays["y"].argmax(-1)
    valid = np.arange(1, len(out) + 1)[:, None] <= data.lengths[None, :]
    roots = right[data.lengths - 1, np.arange(len(trees))]
    return float(right[valid].mean()), float(roots.mean())


def sequence_accuracy(kernel, params, trees: list) -> float:
    """The fraction of roots whose value the LSTM predicts right at the last token."""
    data = gc.trees(trees)
    out = kernel.forward(params, {"x": data.arrays["x"]}, data.lengths)["o"]
    roots = np.arange(len(trees))
    last = data.lengths - 1
    return float(np.mean(out[last, roots].argmax(-1) == data.arrays["y"][last, roots].argmax(-1)))


def size(params: dict) -> int:
    """The number of parameters."""
    return sum(p.size for p in params.values())


def main(short: bool = False) -> dict:
    H, H_lstm, epochs, count = (24, 36, 8, 800) if short else (64, 98, 30, 4000)   # H_lstm: as many parameters
    rng = np.random.default_rng(0)
    train, test = ([tree(expression(3, rng)) for _ in range(n)] for n in (count, 500))
    deeper = [tree(expression(4, rng)) for _ in range(500)]
    print(f"{len(train)} training trees of depth <= 3 ({np.mean([len(e['x']) for e in train]):.1f} nodes on "
          f"average), {len(test)} held out, {len(deeper)} of depth <= 4")
    model = gc.models.tree_lstm(len(TOKENS), H, 10, kind="nary", K=2, loss="cross_entropy")
    start = time.perf_counter()
    kernel = gc.compile(model)
    compiled = time.perf_counter() - start
    params = model.init_params(seed=0)
    before = accuracy(kernel, params, test)
    params, history, seconds = fit(kernel, params, train, epochs)
    nodes, roots = accuracy(kernel, params, test)
    deep_nodes, deep_roots = accuracy(kernel, params, deeper)
    print(f"binary Tree-LSTM, H = {H} ({size(params)} parameters): loss per tree {history.loss[0]:.2f} -> "
          f"{history.loss[-1]:.2f} over {epochs} epochs (trained in {seconds:.1f} s, compiled in {compiled:.1f} s)")

    net = gc.models.lstm(len(TOKENS), H_lstm, 10, loss=None)
    sequential = gc.compile(at_the_last_token(net))
    lstm_params, lstm_history, lstm_seconds = fit(sequential, net.init_params(seed=0), [postfix(e) for e in train],
                                                  epochs)
    lstm_roots, lstm_deep_roots = (sequence_accuracy(sequential, lstm_params, data) for data in (test, deeper))
    print(f"LSTM on the postfix tokens, H = {H_lstm} ({size(lstm_params)} parameters): loss per sequence "
          f"{lstm_history.loss[0]:.2f} -> {lstm_history.loss[-1]:.2f} (trained in {lstm_seconds:.1f} s)")

    print(f"held out, roots right      depth <= 3   depth <= 4   (nodes right: {100 * nodes:.1f}%, "
          f"{100 * deep_nodes:.1f}%; untrained: roots {100 * before[1]:.1f}%)")
    print(f"  binary Tree-LSTM         {100 * roots:9.1f}%  {100 * deep_roots:10.1f}%")
    print(f"  LSTM, postfix tokens     {100 * lstm_roots:9.1f}%  {100 * lstm_deep_roots:10.1f}%")
    return {"loss": history.loss, "nodes": nodes, "roots": roots, "untrained_roots": before[1],
            "deep_nodes": deep_nodes, "deep_roots": deep_roots, "seconds": seconds, "lstm_loss": lstm_history.loss,
            "lstm_roots": lstm_roots, "lstm_deep_roots": lstm_deep_roots, "lstm_seconds": lstm_seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    main(parser.parse_args().short)
