"""Arithmetic expression trees evaluated by a Tree-LSTM: random expressions over the digits
0-9 with +, − and × (generated with a seed), each a binary tree whose leaves are digits and
whose inner nodes are operators. A binary (N-ary, K = 2) Tree-LSTM, gc.models.tree_lstm,
reads one token per node and predicts every node's value modulo 10 (the loss at every node,
so that each subtree teaches the one above it). Trained on trees of depth up to 3, tested on
held-out trees of depth up to 3 and on deeper ones, depth 4, never seen in training.

    full run (H = 64, 30 epochs, 4000 trees): held out at depth <= 3, nodes 97.9%, roots 86.2%;
    depth <= 4, nodes 95.7%, roots 70.0% (untrained: roots 14%)

(seed 0, 2 cores: about 50 s of training; --short trains a smaller network on fewer trees for
fewer epochs, in seconds: nodes about 80%, roots about 45%).

Run: python examples/arithmetic_trees.py [--short]"""
import argparse
import time

import numpy as np

import graphcomp as gc

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


def accuracy(kernel, params, trees: list) -> tuple[float, float]:
    """The fractions of nodes and of roots whose value modulo 10 is predicted right."""
    data = gc.trees(trees)
    out = kernel.forward(params, {"x": data.arrays["x"]}, data.lengths, children=data.children)["o"]
    right = out.argmax(-1) == data.arrays["y"].argmax(-1)
    valid = np.arange(1, len(out) + 1)[:, None] <= data.lengths[None, :]
    roots = right[data.lengths - 1, np.arange(len(trees))]
    return float(right[valid].mean()), float(roots.mean())


def main(short: bool = False) -> dict:
    H, epochs, count = (24, 8, 800) if short else (64, 30, 4000)
    rng = np.random.default_rng(0)
    train, test = ([tree(expression(3, rng)) for _ in range(n)] for n in (count, 500))
    deeper = [tree(expression(4, rng)) for _ in range(500)]
    print(f"{len(train)} training trees of depth <= 3 ({np.mean([len(t['x']) for t in train]):.1f} nodes on "
          f"average), {len(test)} held out, {len(deeper)} of depth <= 4")
    model = gc.models.tree_lstm(len(TOKENS), H, 10, kind="nary", K=2, loss="cross_entropy")
    start = time.perf_counter()
    kernel = gc.compile(model)
    compiled = time.perf_counter() - start
    params = model.init_params(seed=0)
    before = accuracy(kernel, params, test)
    updates = epochs * -(-len(train) // 32)
    trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(2e-2, updates)), clip_norm=5.0, progress=False)
    start = time.perf_counter()
    history = trainer.fit(params, train, epochs=epochs, batch_size=32)
    seconds = time.perf_counter() - start
    nodes, roots = accuracy(kernel, trainer.params, test)
    deep_nodes, deep_roots = accuracy(kernel, trainer.params, deeper)
    print(f"binary Tree-LSTM, H = {H}: loss per tree {history.loss[0]:.2f} -> {history.loss[-1]:.2f} over {epochs} "
          f"epochs (trained in {seconds:.1f} s, compiled in {compiled:.1f} s)")
    print(f"held out, depth <= 3: nodes {100 * nodes:.1f}%, roots {100 * roots:.1f}% (untrained: roots "
          f"{100 * before[1]:.1f}%); depth <= 4: nodes {100 * deep_nodes:.1f}%, roots {100 * deep_roots:.1f}%")
    return {"loss": history.loss, "nodes": nodes, "roots": roots, "untrained_roots": before[1],
            "deep_nodes": deep_nodes, "deep_roots": deep_roots, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    main(parser.parse_args().short)
