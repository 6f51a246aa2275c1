"""Training a grid model: minibatches of images of similar size from padded index-major arrays
or a list of images, each update the mean of per-image gradients, validation, evaluation, and
what a grid cannot do (truncated BPTT, the compiled epoch) refused or skipped in the user's terms."""
import numpy as np
import pytest

import graphcomp as gc
from graphcomp.train import trainer as trainer_module
from graphcomp.train.grids import grids

D, H, O = 2, 3, 2
SIZES = [(5, 4), (2, 4), (4, 1), (3, 3), (5, 4), (1, 2)]
N = len(SIZES)


@pytest.fixture(scope="module")
def kernel():
    return gc.compile(gc.models.mdrnn(D, H, O))


@pytest.fixture(scope="module")
def images():
    """Each image a dict of (I_n, J_n, ...) arrays, and the same images padded (5, 4, N, ...)."""
    rng = np.random.default_rng(0)
    listed = [{"x": rng.normal(size=(a, b, D)), "y": rng.normal(size=(a, b, O))} for a, b in SIZES]
    padded = {k: np.zeros((5, 4, N, n)) for k, n in (("x", D), ("y", O))}
    for e, ((a, b), image) in enumerate(zip(SIZES, listed)):
        for k in padded:
            padded[k][:a, :b, e] = image[k]
    lengths = (np.array([a for a, _ in SIZES]), np.array([b for _, b in SIZES]))
    return listed, padded, lengths


def params_of(kernel):
    return gc.models.init(gc.models.mdrnn(D, H, O), seed=1)


def test_one_minibatch_update_is_the_mean_of_per_image_gradients(kernel, images):
    listed, padded, lengths = images
    params = params_of(kernel)
    trainer = gc.Trainer(kernel, gc.optim.SGD(0.1), progress=False)
    history = trainer.fit(params, padded, epochs=1, batch_size=N, lengths=lengths)
    each = [kernel.loss_and_grad(params, {k: a[:, :, None] for k, a in image.items()}) for image in listed]
    mean = {p: np.mean([g[p] for _, g in each], axis=0) for p in params}
    assert trainer.steps == 1
    assert all(np.allclose(trainer.params[p], params[p] - 0.1 * mean[p], rtol=0, atol=1e-12) for p in params)
    assert history.loss[0] == pytest.approx(np.mean([loss for loss, _ in each]), rel=1e-12)


def test_padded_arrays_and_a_list_of_images_train_alike(kernel, images):
    listed, padded, lengths = images
    runs = []
    for data, lens in ((padded, lengths), (listed, None)):
        trainer = gc.Trainer(kernel, gc.optim.Adam(1e-2), progress=False)
        history = trainer.fit(params_of(kernel), data, epochs=3, batch_size=2, lengths=lens, validation=listed)
        runs.append((trainer.params, history))
    (p1, h1), (p2, h2) = runs
    assert all(np.array_equal(p1[p], p2[p]) for p in p1) and h1.loss == h2.loss
    assert len(h1.val_loss) == 3 and h1.val_loss[-1] < h1.val_loss[0]
    evaluated = gc.Trainer(kernel, progress=False).evaluate(padded, p1, lengths=lengths)
    assert evaluated == pytest.approx(h1.val_loss[-1], rel=1e-12)
    assert evaluated == pytest.approx(float(kernel.loss_and_grad(p1, padded, lengths)[0]), rel=1e-12)


def test_minibatches_hold_images_of_similar_size(images):
    rng = np.random.default_rng(0)
    sizes = [(a, b) for a, b in [(8, 8), (2, 3), (8, 7), (2, 2)] for _ in range(8)]
    data = grids([{"x": np.zeros((a, b, D))} for a, b in rng.permutation(sizes)], None, gc.models.GRID)
    batches = trainer_module._minibatches(data.key, 8, np.random.default_rng(1))
    assert sorted(len(b) for b in batches) == [8] * 4
    assert all(len({tuple(data.lengths[e]) for e in b}) == 1 for b in batches)   # one size per batch here
    inputs, lengths = data.batch(batches[0])
    a, b = data.lengths[batches[0][0]]
    assert inputs["x"].shape == (a, b, 8, D) and [list(n) for n in lengths] == [[a] * 8, [b] * 8]


def test_the_compiled_epoch_falls_back_to_python_for_a_grid(kernel, images, monkeypatch):
    listed, padded, lengths = images
    monkeypatch.setattr(trainer_module, "COMPILED_EPOCH_UPDATES", 1)
    trainer = gc.Trainer(kernel, gc.optim.SGD(0.1), progress=False)     # compiled="auto"
    trainer.fit(params_of(kernel), listed, epochs=2, batch_size=3)
    assert trainer._epoch is None and trainer.steps == 4


@pytest.mark.parametrize("call, message", [
    (lambda k, d: gc.Trainer(k, tbptt=4), r"tbptt cuts sequences into windows of steps; a grid model trains on "
                                          r"whole images: drop tbptt"),
    (lambda k, d: gc.Trainer(k, compiled=True), r"compiled=True cannot be: the compiled epoch runs sequences, "
                                                r"not grids; use compiled='auto' or False"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), d[1], batch_first=True),
     r"batch_first is for sequences; grid data is index-major \(I, J, N, \.\.\.\): drop batch_first"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), d[1], lengths=d[2][0]),
     r"lengths over a grid is a tuple of 2 arrays \(6,\), each example's extent along \(i, j\)"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), d[1], lengths=(d[2][0], d[2][1] + 1)),
     r"lengths\[1\] \(the extents along j\) must be 6 integers in 1..4, one per example"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), {"x": d[1]["x"], "y": d[1]["y"][:4]}),
     r"grid arrays must share their first 3 axes, index-major \(I, J, N\)"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), [{"x": np.zeros((3, 2, D)), "y": np.zeros((3, 3, O))}]),
     r"example 0: its arrays' extents \{'x': \(3, 2\), 'y': \(3, 3\)\} differ or are empty"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), d[0], lengths=d[2]),
     r"lengths are taken from a list of examples; pass lengths only with padded arrays"),
    (lambda k, d: gc.Trainer(k, progress=False).fit(params_of(k), d[0][:1] + [{"x": np.zeros((2, 2, D))}]),
     r"example 1 has arrays \['x'\], example 0 has \['x', 'y'\]"),
])
def test_what_a_grid_cannot_do_says_what_to_do(kernel, images, call, message):
    with pytest.raises(gc.GraphcompError, match=message):
        call(kernel, images)
