"""Scaling out on a real local Dask cluster (two worker processes on loopback, started once for
the module): many fits equal the serial fits exactly, data-parallel training equals one
process to 1e-12, a fit that raises or diverges is reported as such, and a worker killed in
the middle of a fit costs time, not results."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import numba
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp.scale.cluster import PACKAGE, PLUGIN, Model

t = gc.t
s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
a, b, c = sp.symbols("a b c")
SCALAR = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)
TRUE = {"a": 0.6, "b": 0.5, "c": 0.8}
ELMAN = gc.models.elman(3, 8, 2)


@pytest.fixture(scope="module")
def client():
    with gc.scale.local(2) as client:
        yield client


def series(n, T, seed):
    """n sequences of lengths T/2..T of an Elman-style task: inputs (T_i, 3), targets (T_i, 2)."""
    rng = np.random.default_rng(seed)
    out = []
    for L in rng.integers(T // 2, T + 1, n):
        X = rng.normal(size=(L, 3))
        out.append({"x": X, "y": np.sin(np.cumsum(X, 0)[:, :2] / 3)})
    return out


def measured(n, T, seed, noise=0.05):
    """n noisy sequences of the scalar map at the TRUE parameters."""
    rng, k = np.random.default_rng(seed), gc.compile(SCALAR)
    X = rng.normal(size=(T, n))
    S = k.forward(TRUE, {"x": X})["s"]
    return {"x": X, "y": S + noise * rng.normal(size=S.shape)}


def serial(job, data, validation=None):
    """The job run as a plain Trainer.fit / gc.least_squares in this process."""
    if isinstance(job, gc.scale.LeastSquares):
        return gc.least_squares(gc.compile(SCALAR), job.params, data, **job.options).params, None
    trainer = gc.Trainer(ELMAN, job.optimizer, progress=False, **job.trainer_options)
    history = trainer.fit(job.params, data, validation=validation, **job.fit_options)
    return trainer.params, history


def same(p, q) -> bool:
    return set(p) == set(q) and all(np.array_equal(p[n], q[n]) for n in p)


def relative(p, q) -> float:
    return max(float(np.max(np.abs(p[n] - q[n])) / np.max(np.abs(q[n]))) for n in q)


def graphcomp_file():
    return gc.__file__


def test_workers_import_this_graphcomp(client):
    assert set(client.run(graphcomp_file).values()) == {gc.__file__}
    assert len(client.nthreads()) == 2 and os.getpid() not in client.run(os.getpid).values()


def test_many_fits_equal_serial_fits_in_order(client):
    data, val, fold = series(24, 16, 0), series(6, 16, 1), series(16, 12, 2)
    jobs = [gc.scale.Train(ELMAN, ELMAN.init_params(seed=i), gc.optim.Adam(lr), epochs=3, batch_size=6, seed=i)
            for i, lr in enumerate((1e-2, 3e-2, 1e-2))]
    jobs.append(gc.scale.Train(ELMAN, ELMAN.init_params(seed=7), gc.optim.SGD(0.05, momentum=0.9), data=fold,
                               epochs=2, batch_size=4, clip_norm=1.0, name="the other fold"))
    results = gc.scale.fits(client, jobs, data, validation=val, progress=False)
    assert [r.name for r in results] == ["epochs=3, batch_size=6, seed=0, Adam lr=0.01",
                                         "epochs=3, batch_size=6, seed=1, Adam lr=0.03",
                                         "epochs=3, batch_size=6, seed=2, Adam lr=0.01", "the other fold"]
    for job, result in zip(jobs, results):
        params, history = serial(job, data if job.data is None else job.data, val)
        assert same(result.params, params) and result.history.loss == history.loss
        assert result.history.val_loss == history.val_loss and not result.diverged
        assert result.val_loss == gc.Trainer(ELMAN, progress=False).evaluate(val, params)
    assert results.best() is min(results, key=lambda r: r.val_loss)
    assert {r.worker for r in results} <= set(client.nthreads())
    key = Model.of(ELMAN).key   # each worker built the model's kernel at most once
    assert all(built.get(key, 0) <= 1 for built in client.run(kernels_built).values())
    assert len(cloudpickle.dumps(jobs[0].task())) < 8000 < len(pickle.dumps(data))   # the data does not travel with a task


def kernels_built(dask_worker):
    return dask_worker.plugins[PLUGIN].kernels.built


def test_least_squares_restarts_and_the_serial_path(client):
    data, val = measured(8, 40, 0), measured(4, 40, 1)
    starts = [{"a": 0.1 * i, "b": 0.2, "c": 0.5} for i in range(4)]
    jobs = [gc.scale.LeastSquares(SCALAR, p) for p in starts]
    results = gc.scale.fits(client, jobs, data, validation=val, progress=False)
    here = gc.scale.fits(None, jobs, data, validation=val, progress=False)
    assert [r.name for r in results] == [f"start a={0.1 * i:.4g}, b=0.2, c=0.5" for i in range(4)]
    for job, result, mine in zip(jobs, results, here):
        assert same(result.params, serial(job, data)[0]) and same(result.params, mine.params)
        assert result.fit.rss == mine.fit.rss and result.val_loss == mine.val_loss and result.history is None
    best = results.best().params
    assert all(abs(best[p] - TRUE[p]) < 0.05 for p in TRUE)


def test_a_fit_that_raises_is_named_and_stops_the_rest(client):
    data = series(12, 10, 0)
    bad = dict(ELMAN.init_params(seed=1))
    del bad["W"]
    jobs = [gc.scale.Train(ELMAN, ELMAN.init_params(seed=0), gc.optim.Adam(1e-2), epochs=1, seed=0),
            gc.scale.Train(ELMAN, bad, gc.optim.Adam(1e-2), epochs=1, seed=1)]
    for where in (client, None):
        with pytest.raises(gc.GraphcompError, match=r"^fit 1 \(epochs=1, seed=1, Adam lr=0.01\) failed: GraphcompError: "
                                                    r"params must hold the model's parameters .* missing \['W'\]"):
            gc.scale.fits(where, jobs, data, progress=False)


def test_a_diverged_fit_is_reported_and_the_others_finish(client):
    data, val = measured(16, 30, 0), measured(4, 30, 1)
    start = {"a": 0.1, "b": 0.1, "c": 0.1}
    jobs = [gc.scale.Train(SCALAR, start, gc.optim.SGD(2.0), epochs=3, batch_size=4, name="too fast"),
            gc.scale.Train(SCALAR, start, gc.optim.Adam(0.05), epochs=3, batch_size=4),
            gc.scale.LeastSquares(SCALAR, {"a": 1e200, "b": 0.1, "c": 0.1}, name="far away"),
            gc.scale.LeastSquares(SCALAR, start)]
    results = gc.scale.fits(client, jobs, data, validation=val, progress=False)
    fast, good, far, near = results
    alone = gc.Trainer(SCALAR, gc.optim.SGD(2.0), progress=False)
    with pytest.raises(gc.GraphcompError, match=r"training diverged in epoch 1 after \d+ updates: state 's' became"):
        alone.fit(start, data, epochs=3, batch_size=4)
    assert fast.diverged.startswith("training diverged in epoch 1 after") and fast.val_loss == np.inf
    assert fast.history.loss == [] and all(np.isfinite(v) for v in fast.params.values())
    assert "diverges or the residuals are not finite at the starting parameters" in far.diverged
    assert far.params == {"a": 1e200, "b": 0.1, "c": 0.1} and far.fit is None
    assert not good.diverged and same(good.params, gc.scale.fits(None, [jobs[1]], data, progress=False)[0].params)
    assert not near.diverged and results.best() is min((good, near), key=lambda r: r.val_loss)
    with pytest.raises(gc.GraphcompError, match="all 1 fits diverged"):
        gc.scale.fits(client, jobs[:1], data, validation=val, progress=False).best()
    with pytest.raises(gc.GraphcompError, match="some fits had no validation data"):
        gc.scale.fits(client, jobs[1:2], data, progress=False).best()
    spread = gc.Trainer(SCALAR, gc.optim.SGD(2.0), progress=False, client=client)   # data-parallel: the same report
    with pytest.raises(gc.GraphcompError, match=r"training diverged in epoch 1 after \d+ updates: state 's' became"):
        spread.fit(start, data, epochs=3, batch_size=4)
    assert spread.steps == alone.steps >= 1 and relative(spread.params, alone.params) < 1e-12


def test_jobs_are_checked_in_the_users_terms(client):
    with pytest.raises(gc.GraphcompError, match=r"a Train job takes the keywords .* not epoch"):
        gc.scale.Train(ELMAN, ELMAN.init_params(), epoch=3)
    with pytest.raises(gc.GraphcompError, match=r"jobs\[0\] is a dict: give gc.scale.Train"):
        gc.scale.fits(client, [{"epochs": 3}])
    with pytest.raises(gc.GraphcompError, match=r"fit 0 \(seed=2\) has no data: pass data="):
        gc.scale.fits(client, [gc.scale.Train(ELMAN, ELMAN.init_params(), seed=2)])
    with pytest.raises(gc.GraphcompError, match="a fit needs a gc.Recurrence or a compiled kernel, got str"):
        gc.scale.LeastSquares("s(t) = a s(t-1)", {})


def test_data_parallel_takes_the_single_process_updates(client):
    data, val = series(40, 20, 3), series(6, 20, 4)
    start = ELMAN.init_params(seed=2)
    for optimizer, options in ((gc.optim.Adam(1e-2), {}), (gc.optim.SGD(0.05, momentum=0.9), {"clip_norm": 0.5})):
        one = gc.Trainer(ELMAN, optimizer, progress=False, **options)
        many = gc.Trainer(ELMAN, optimizer, progress=False, client=client, **options)
        h1 = one.fit(start, data, epochs=2, batch_size=8, seed=5, validation=val)
        h2 = many.fit(start, data, epochs=2, batch_size=8, seed=5, validation=val)
        assert relative(many.params, one.params) < 1e-12 and many.steps == one.steps == 10
        assert h2.loss == pytest.approx(h1.loss, rel=1e-12) and h2.val_loss == pytest.approx(h1.val_loss, rel=1e-12)
        assert not same(many.params, start)


def test_local_sgd_averages_the_workers_copies(client):
    data = series(40, 20, 3)
    start = ELMAN.init_params(seed=2)
    sync = gc.Trainer(ELMAN, gc.optim.SGD(0.02), progress=False, client=client)
    every1 = gc.Trainer(ELMAN, gc.optim.SGD(0.02), progress=False, client=client, average_every=1)
    sync.fit(start, data, epochs=2, batch_size=8, seed=5)
    every1.fit(start, data, epochs=2, batch_size=8, seed=5)
    assert relative(every1.params, sync.params) < 1e-12   # plain SGD, one step: the average is the mean gradient's step
    every4 = gc.Trainer(ELMAN, gc.optim.Adam(2e-2), progress=False, client=client, average_every=4)
    history = every4.fit(start, data, epochs=6, batch_size=8, seed=5)
    one = gc.Trainer(ELMAN, gc.optim.Adam(2e-2), progress=False)
    reference = one.fit(start, data, epochs=6, batch_size=8, seed=5)
    assert every4.steps == 30 and set(every4.state["W"]) == {"m", "v"}
    assert history.loss[-1] < 0.7 * history.loss[0]
    assert one.evaluate(data, every4.params) < 1.2 * one.evaluate(data, one.params)
    assert history.loss[0] == pytest.approx(reference.loss[0], rel=0.05)


def test_data_parallel_refuses_what_runs_in_one_process(client, monkeypatch):
    with pytest.raises(gc.GraphcompError, match="tbptt carries each minibatch's state"):
        gc.Trainer(ELMAN, tbptt=5, client=client)
    with pytest.raises(gc.GraphcompError, match="compiled=True runs whole epochs in one process"):
        gc.Trainer(ELMAN, compiled=True, client=client)
    with pytest.raises(gc.GraphcompError, match="average_every=k averages .*: pass client="):
        gc.Trainer(ELMAN, average_every=4)
    with pytest.raises(gc.GraphcompError, match="average_every must be a positive number of updates, got 0"):
        gc.Trainer(ELMAN, client=client, average_every=0)
    with pytest.raises(gc.GraphcompError, match="learned initial states train in one process"):
        gc.Trainer(SCALAR, client=client, progress=False).fit(TRUE, measured(4, 10, 0), learn_initial=True)
    with pytest.raises(gc.GraphcompError, match="client must be a dask.distributed.Client, got str"):
        gc.Trainer(ELMAN, client="tcp://127.0.0.1:8786")
    monkeypatch.setitem(sys.modules, "distributed", None)   # as if Dask were not installed
    for call in (lambda: gc.Trainer(ELMAN, client=client), gc.scale.local):
        with pytest.raises(gc.GraphcompError, match=r"scaling out runs on Dask, which is not installed: "
                                                    r"pip install 'graphcomp\[dask\]'"):
            call()


def stranger(scheduler: str, path) -> subprocess.Popen:
    """A `dask worker` process started apart from this one, importing graphcomp from ``path``."""
    command = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--no-nanny", "--nthreads", "1",
               "--host", "127.0.0.1", "--no-dashboard"]
    return subprocess.Popen(command, cwd=path, env={**os.environ, "PYTHONPATH": str(path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_worker_with_another_graphcomp_or_numba_is_refused(tmp_path):
    from distributed import Client, LocalCluster
    other = tmp_path / "graphcomp"
    shutil.copytree(PACKAGE, other, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "kernel.py", "a") as f:
        f.write("# another version\n")
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        worker = stranger(cluster.scheduler_address, tmp_path)
        try:
            client.wait_for_workers(1, timeout=60)
            assert list(client.run(lambda: __import__("graphcomp").__file__).values()) == [str(other / "__init__.py")]
            another = rf"^worker tcp://127.0.0.1:\d+ runs another graphcomp \({other}\) than this process \({PACKAGE}\): " \
                      "install the same graphcomp on every worker"
            with pytest.raises(gc.GraphcompError, match=another):
                gc.scale.fits(client, [gc.scale.Train(ELMAN, ELMAN.init_params())], series(4, 5, 0))
            with pytest.raises(gc.GraphcompError, match=another):
                gc.Trainer(ELMAN, client=client)
            client.run(lambda: setattr(__import__("numba"), "__version__", "0.1"))
            with pytest.raises(gc.GraphcompError, match=rf"^worker tcp://127.0.0.1:\d+ runs Numba 0.1, this process "
                                                        rf"Numba {numba.__version__}: install the same Numba on every"):
                gc.Trainer(ELMAN, client=client)
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def worker_pids(client) -> dict:
    client.wait_for_workers(2, timeout=120)
    return client.run(os.getpid)


def test_a_worker_killed_in_a_fit_costs_time_not_results(client):
    data = series(64, 200, 5)   # a fit takes about a second
    jobs = [gc.scale.Train(ELMAN, ELMAN.init_params(seed=i), gc.optim.Adam(1e-2), epochs=90, batch_size=8, seed=i)
            for i in range(3)]
    pids, killed = worker_pids(client), []

    def fits_on(worker_keys) -> list:   # the fit tasks among a worker's (not the kernel's or others)
        return [str(k) for k in worker_keys if str(k).startswith("graphcomp-fit-")]

    def kill_one_in_a_fit():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = {w: fits_on(keys) for w, keys in client.processing().items() if w in pids and fits_on(keys)}
            if busy:
                victim, keys = sorted(busy.items())[0]
                time.sleep(0.1)
                if fits_on(client.processing().get(victim, ())) == keys:   # still in the same fit
                    killed.append((victim, int(keys[0].split("-")[2])))
                    os.kill(pids[victim], signal.SIGKILL)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_in_a_fit)
    killer.start()
    results = gc.scale.fits(client, jobs, data, progress=False)
    killer.join()
    assert killed, "no worker was killed during a fit"
    victim, fit = killed[0]
    assert victim not in client.nthreads() and results[fit].worker != victim   # that fit ran again elsewhere
    for job, result in zip(jobs, results):
        assert same(result.params, serial(job, data)[0])


def test_a_worker_killed_in_data_parallel_training_costs_time_not_results(client):
    data = series(64, 20, 6)
    start = ELMAN.init_params(seed=3)
    one = gc.Trainer(ELMAN, gc.optim.Adam(1e-2), progress=False)
    one.fit(start, data, epochs=3, batch_size=8, seed=1)
    pids = worker_pids(client)
    victim = sorted(pids)[0]

    def kill(epoch, history):   # after the first epoch, a worker dies with its shard of the data
        if epoch == 0:
            os.kill(pids[victim], signal.SIGKILL)

    many = gc.Trainer(ELMAN, gc.optim.Adam(1e-2), progress=False, client=client, callback=kill)
    history = many.fit(start, data, epochs=3, batch_size=8, seed=1)
    assert victim not in client.nthreads() and len(history.loss) == 3
    assert relative(many.params, one.params) < 1e-12


def images(n, seed):
    """n images of random sizes up to 5 x 5 for an MD-RNN: inputs (I_n, J_n, 2), targets (I_n, J_n, 2)."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(i, j, 2)), "y": rng.normal(size=(i, j, 2))} for i, j in rng.integers(1, 6, (n, 2))]


def test_a_grid_model_scales_out_like_sequences(client):
    model = gc.models.mdrnn(2, 3, 2)
    data, val, start = images(12, 0), images(4, 1), gc.models.init(model, seed=1)
    one = gc.Trainer(model, gc.optim.Adam(1e-2), progress=False)
    many = gc.Trainer(model, gc.optim.Adam(1e-2), progress=False, client=client)
    h1 = one.fit(start, data, epochs=2, batch_size=4, seed=3, validation=val)
    h2 = many.fit(start, data, epochs=2, batch_size=4, seed=3, validation=val)
    assert relative(many.params, one.params) < 1e-12 and many.steps == one.steps == 6
    assert h2.loss == pytest.approx(h1.loss, rel=1e-12) and h2.val_loss == pytest.approx(h1.val_loss, rel=1e-12)
    job = gc.scale.Train(model, start, gc.optim.Adam(1e-2), epochs=2, batch_size=4, seed=3)
    (result,) = gc.scale.fits(client, [job], data, validation=val, progress=False)
    assert same(result.params, one.params) and result.history.loss == h1.loss


def test_data_parallel_fits_resume_from_their_checkpoints(client, tmp_path):
    data, start = series(24, 12, 7), ELMAN.init_params(seed=4)
    for options in ({}, {"average_every": 2}):
        whole = gc.Trainer(ELMAN, gc.optim.Adam(1e-2), progress=False, client=client, **options)
        whole.fit(start, data, epochs=3, batch_size=6, seed=2)
        path = tmp_path / f"run{len(options)}.npz"
        gc.Trainer(ELMAN, gc.optim.Adam(1e-2), progress=False, client=client, **options).fit(
            start, data, epochs=1, batch_size=6, seed=2, checkpoint=path, every=2)
        resumed = gc.Trainer(ELMAN, gc.optim.Adam(1e-2), progress=False, client=client, **options)
        resumed.fit(start, data, epochs=3, batch_size=6, seed=2, checkpoint=path, resume=True)
        assert resumed.steps == whole.steps == 12 and relative(resumed.params, whole.params) < 1e-12
