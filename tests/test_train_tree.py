"""Training a tree model: minibatches of trees of similar size from a list of trees or padded
node-major arrays, each update the mean of per-tree gradients, the loss going down, and what a
tree cannot do (truncated BPTT, the compiled epoch, batch_first) refused in the user's terms."""
import numpy as np
import pytest

import graphcomp as gc
from graphcomp.train import trainer as trainer_module
from graphcomp.train.trees import trees

D, H, O, K = 2, 4, 1, 2
SIZES = [5, 3, 1, 7, 3, 6]


def random_children(n: int, rng) -> np.ndarray:
    """A random tree of n nodes, at most K children each, children numbered below their parents."""
    C = np.zeros((n, K), np.int64)
    for v in range(n - 1, 0, -1):
        parent = rng.choice([u for u in range(v + 1, n + 1) if (C[u - 1] == 0).any()])
        C[parent - 1, np.flatnonzero(C[parent - 1] == 0)[0]] = v
    return C


@pytest.fixture(scope="module")
def kernel():
    return gc.compile(gc.models.tree_rnn(D, H, O))


@pytest.fixture(scope="module")
def forest():
    """Each tree a dict of (n, ...) arrays and its children; the same trees padded (7, 6, ...).
    The target: the sum of the inputs' first component over a node's subtree."""
    rng = np.random.default_rng(0)
    listed = []
    for n in SIZES:
        C, x = random_children(n, rng), rng.normal(size=(n, D))
        total = np.zeros(n)
        for v in range(1, n + 1):
            total[v - 1] = x[v - 1, 0] + sum(total[c - 1] for c in C[v - 1] if c)
        listed.append({"x": x, "y": np.tanh(total)[:, None], "children": C})
    N, B = max(SIZES), len(SIZES)
    padded = {"x": np.zeros((N, B, D)), "y": np.zeros((N, B, O)), "children": np.zeros((N, B, K), np.int64)}
    for b, tree in enumerate(listed):
        for name in padded:
            padded[name][:SIZES[b], b] = tree[name]
    return listed, padded, np.array(SIZES)


def params_of():
    return gc.models.init(gc.models.tree_rnn(D, H, O), seed=1)


def test_updates_are_an_explicit_loop_over_loss_and_grad(kernel, forest):
    listed, padded, lengths = forest
    params = params_of()
    trainer = gc.Trainer(kernel, gc.optim.SGD(0.1), progress=False)
    history = trainer.fit(params, listed, epochs=3, batch_size=len(SIZES))   # one minibatch: every tree
    inputs, C = {n: padded[n] for n in ("x", "y")}, padded["children"]
    expected, losses = {p: np.array(v) for p, v in params.items()}, []
    for _ in range(3):
        loss, grads = kernel.loss_and_grad(expected, inputs, lengths, children=C)
        losses.append(loss)
        expected = {p: expected[p] - 0.1 * grads[p] for p in expected}
    assert trainer.steps == 3 and history.loss == pytest.approx(losses, rel=1e-12)
    assert all(np.allclose(trainer.params[p], expected[p], rtol=0, atol=1e-12) for p in params)
    each = [kernel.loss_and_grad(params, {n: t[n][:, None] for n in ("x", "y")}, children=t["children"][:, None])[0]
            for t in listed]
    assert losses[0] == pytest.approx(np.mean(each), rel=1e-12)   # the mean loss per tree


def test_padded_arrays_and_a_list_of_trees_train_alike_and_the_loss_goes_down(kernel, forest):
    listed, padded, lengths = forest
    runs = []
    for data, lens in ((padded, lengths), (listed, None)):
        trainer = gc.Trainer(kernel, gc.optim.Adam(3e-2), progress=False)
        history = trainer.fit(params_of(), data, epochs=30, batch_size=2, lengths=lens, validation=listed)
        runs.append((trainer.params, history))
    (p1, h1), (p2, h2) = runs
    assert all(np.array_equal(p1[p], p2[p]) for p in p1) and h1.loss == h2.loss
    assert h1.loss[-1] < 0.5 * h1.loss[0] and h1.val_loss[-1] < 0.5 * h1.val_loss[0]
    evaluated = gc.Trainer(kernel, progress=False).evaluate(padded, p1, lengths=lengths)
    assert evaluated == pytest.approx(h1.val_loss[-1], rel=1e-12)


def test_minibatches_hold_trees_of_similar_size(forest):
    rng = np.random.default_rng(0)
    sizes = rng.permutation([2, 9, 5] * 8)
    data = trees([{"x": np.zeros((n, D)), "children": random_children(n, rng)} for n in sizes])
    batches = trainer_module._minibatches(data.key, 8, np.random.default_rng(1))
    assert sorted(len(b) for b in batches) == [8] * 3
    assert all(len(set(data.lengths[b])) == 1 for b in batches)   # one size per batch here
    inputs, (lengths, children) = data.batch(batches[0])
    n = data.lengths[batches[0][0]]
    assert inputs["x"].shape == (n, 8, D) and children.shape == (n, 8, K) and list(lengths) == [n] * 8


@pytest.mark.parametrize("call, message", [
    (lambda k, d: gc.Trainer(k, tbptt=4), r"tbptt cuts time into segments, but this model runs over a tree; "
                                          r"train it without tbptt"),
    (lambda k, d: gc.Trainer(k, compiled=True), r"compiled=True cannot be: the compiled epoch runs sequences, "
                                                r"not grids or trees; use compiled='auto' or False"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), d[1], batch_first=True),
     r"batch_first is for sequences; tree data is node-major \(N, B, \.\.\.\): drop batch_first"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), d[0], learn_initial=True),
     r"learn_initial, shooting and encoder are for sequences"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), {"x": d[1]["x"], "y": d[1]["y"]}),
     r"tree data holds each node's children under 'children'"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), d[1], lengths=d[2] + 1),
     r"lengths must be \(6,\) node counts in 1..7, one per tree"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), d[0][:3] + [{**d[0][3], "children": d[0][3]["children"][::-1]}]),
     r"node 1 of tree 3 has child \d in slot 0: a child is numbered below its parent"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), [{**d[0][0], "x": d[0][0]["x"][:2]}]),
     r"tree 0: 'x' has 2 nodes, its children 5; give every array one row per node"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(), [{"x": d[0][0]["x"]}]),
     r"a list of trees must hold dicts \{name: array \(n, \.\.\.\), 'children': \(n, K\)\}"),
])
def test_what_a_tree_cannot_do_says_what_to_do(kernel, forest, call, message):
    with pytest.raises(gc.GraphcompError, match=message):
        call(kernel, forest)
