"""Fitting models to measured sequences: gc.least_squares recovers the parameters of a known
nonlinear recurrence within its standard errors, which match the spread over noise draws;
its Jacobian (forward and reverse mode) equals finite differences; learned initial states
recover known ones; multiple shooting with exact continuity equals single shooting on an
easy problem and converges on a chaotic one where single shooting does not; gc.minimize and
the Trainer learn initial states too; the residuals are recognised in the loss or refused;
standard errors and information criteria equal statsmodels' on a linear regression; metrics
and figures."""
import re
import sys
import warnings

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp.fit.jacobian import Residuals
from graphcomp.fit.problem import Problem
from graphcomp.fit.residuals import measured, residuals

t = gc.t
s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
a, b, c = sp.symbols("a b c")
QUADRATIC = gc.Recurrence({s(t): a * s(t - 1) + b * s(t - 1) ** 2 + c * x(t)}, loss=(s(t) - y(t)) ** 2)
EASY = {"a": 0.6, "b": -0.4, "c": 0.5}          # a stable map driven by x in [0, 1]
CHAOTIC = {"a": 3.8, "b": -3.8, "c": 0.02}      # the logistic map 3.8 s (1 - s), nudged by x
GUESS = {"a": 0.3, "b": 0.0, "c": 0.2}


@pytest.fixture(scope="module")
def kernel():
    return gc.compile(QUADRATIC)


@pytest.fixture(scope="module")
def reference():
    return gc.compile(QUADRATIC, backend="reference")


def simulate(kernel, truth, T, B, noise, seed, s0=None):
    """Measurements y = s + noise of the map driven by x ~ U(0, 1), from s(0) = s0 (zeros)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(T, B))
    init = None if s0 is None else {"s": s0}
    S = kernel.forward(truth, {"x": X, "y": X}, initial=init)["s"]
    return {"x": X, "y": S + noise * rng.normal(size=S.shape)}


def flat(d):
    return np.array([float(d[p]) for p in ("a", "b", "c")])


# ---------------------------------------------------------------- the Jacobian

@pytest.mark.parametrize("options", [{}, {"learn_initial": True}, {"learn_initial": True, "shooting": 7},
                                     {"shooting": 7, "continuity": 2.0}, {"encoder": 2}],
                         ids=["params", "initial", "shooting-exact", "shooting-weight", "encoder"])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_jacobian_equals_finite_differences(reference, options, mode):
    data = simulate(reference, EASY, 20, 2, 0.05, seed=1, s0=np.array([0.3, -0.2]))
    problem = Problem(reference, GUESS, data, **options)
    res = Residuals(problem, mode=mode)
    res.weight = 3.0
    z = problem.pack() + 0.05 * np.random.default_rng(2).normal(size=problem.n)
    J = res.jac(z)
    h = 1e-6
    fd = np.stack([(res(z + h * e) - res(z - h * e)) / (2 * h) for e in np.eye(problem.n)], axis=1)
    assert J.shape == (res.n_data + res.n_gaps, problem.n)
    assert res.mode == mode
    assert np.abs(J - fd).max() < 1e-7 * np.abs(fd).max()


def test_sequences_of_different_lengths(reference):
    data = simulate(reference, EASY, 30, 2, 0.05, seed=4, s0=np.array([0.3, -0.2]))
    sequences = [{n: a[:30, 0] for n, a in data.items()}, {n: a[:17, 1] for n, a in data.items()}]
    problem = Problem(reference, GUESS, sequences, learn_initial=True, shooting=8)
    assert list(problem.windows.length) == [8, 8, 8, 6, 8, 8, 1]
    for mode in ("forward", "reverse"):
        res = Residuals(problem, mode=mode)
        z = problem.pack()
        fd = np.stack([(res(z + 1e-6 * e) - res(z - 1e-6 * e)) / 2e-6 for e in np.eye(problem.n)], axis=1)
        assert res.n_data == 47 and np.abs(res.jac(z) - fd).max() < 1e-7 * np.abs(fd).max()
    fit = gc.least_squares(reference, GUESS, sequences, learn_initial=True)
    assert fit.n_obs == 47 and fit.initial["s"].shape == (2,)


def test_forward_and_reverse_modes_agree_on_the_compiled_kernel(kernel):
    data = simulate(kernel, EASY, 15, 2, 0.05, seed=3, s0=np.array([0.3, 0.7]))
    problem = Problem(kernel, GUESS, data, learn_initial=True, shooting=5)
    z = problem.pack()
    forward, reverse = Residuals(problem, mode="forward"), Residuals(problem, mode="reverse")
    assert np.allclose(forward(z), reverse(z), rtol=0, atol=1e-12)
    assert np.allclose(forward.jac(z), reverse.jac(z), rtol=1e-10, atol=1e-12)


def test_auto_mode_is_reverse_when_unknowns_outnumber_residuals(reference):
    data = simulate(reference, EASY, 2, 1, 0.05, seed=1)   # 2 residuals, 3 parameters
    assert Residuals(Problem(reference, GUESS, data)).mode == "reverse"
    assert Residuals(Problem(reference, GUESS, simulate(reference, EASY, 9, 1, 0.05, seed=1))).mode == "forward"


# ---------------------------------------------------------------- standard errors

def test_recovers_every_parameter_within_three_standard_errors_and_they_match_the_spread(kernel):
    near = {"a": 0.5, "b": -0.3, "c": 0.4}   # output-error fits have local minima: start near, as one would
    fits = [gc.least_squares(kernel, near, simulate(kernel, EASY, 200, 1, 0.05, seed)) for seed in range(30)]
    estimates = np.array([flat(f.params) for f in fits])
    errors = np.array([flat(f.stderr) for f in fits])
    truth = flat(EASY)
    assert np.all(np.abs(estimates[0] - truth) < 3 * errors[0])
    assert (np.abs(estimates - truth) > 3 * errors).sum() <= 2          # of 90, ~0.3 expected
    ratio = estimates.std(axis=0, ddof=1) / errors.mean(axis=0)
    assert np.all((1 / 1.5 < ratio) & (ratio < 1.5)), ratio
    f = fits[0]
    assert f.n_obs == 200 and f.n_unknowns == 3 and f.jacobian == "forward"
    assert f.cov.shape == (3, 3) and np.allclose(np.sqrt(np.diag(f.cov)), errors[0])
    assert f.sigma2 == pytest.approx(f.rss / 197) and np.sqrt(f.sigma2) == pytest.approx(0.05, rel=0.15)
    assert f.report.success and f.names == ["a", "b", "c"]


def test_summary_is_a_table_of_estimates_errors_z_and_intervals(kernel):
    f = gc.least_squares(kernel, GUESS, simulate(kernel, EASY, 200, 1, 0.05, seed=0))
    text = f.summary()
    assert re.search(r"estimate\s+std err\s+z\s+P>\|z\|\s+\[0\.025\s+0\.975\]", text)
    row = next(line for line in text.splitlines() if line.startswith("a "))
    est, se, z, p, lo, hi = (float(v) for v in row.split()[1:])
    assert est == pytest.approx(f.params["a"], rel=1e-4) and se == pytest.approx(f.stderr["a"], rel=1e-3)
    assert z == pytest.approx(est / se, rel=1e-3) and p == 0.0
    assert lo == pytest.approx(est - 1.96 * se, rel=1e-3) and hi == pytest.approx(est + 1.96 * se, rel=1e-3)
    assert f"AIC = {f.aic:.6g}" in text and "200 residuals, 3 unknowns" in text


def test_errors_and_criteria_equal_statsmodels_ols():
    """A regression written as a stateless model: the same estimates, standard errors, AIC, BIC."""
    import statsmodels.api as sm
    u, v, z = sp.Function("u"), sp.Function("v"), sp.Function("z")
    p, q = sp.symbols("p q")
    k = gc.compile(gc.Recurrence({}, outputs={"zhat": p * u(t) + q * v(t)}, loss=(sp.Function("zhat")(t) - z(t)) ** 2),
                   backend="reference")
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(50, 1)), rng.normal(size=(50, 1))
    Z = 1.5 * U - 0.5 * V + 0.3 * rng.normal(size=(50, 1))
    f = gc.least_squares(k, {"p": 0.0, "q": 0.0}, {"u": U, "v": V, "z": Z})
    ols = sm.OLS(Z[:, 0], np.column_stack([U[:, 0], V[:, 0]])).fit()
    assert np.allclose([f.params["p"], f.params["q"]], ols.params, rtol=1e-8)
    assert np.allclose([f.stderr["p"], f.stderr["q"]], ols.bse, rtol=1e-6)
    assert f.aic == pytest.approx(ols.aic, rel=1e-8) and f.bic == pytest.approx(ols.bic, rel=1e-8)
    assert f.llf == pytest.approx(ols.llf, rel=1e-8)


# ---------------------------------------------------------------- initial states and shooting

S0 = np.array([-0.2, 0.1, 0.3, -0.4])   # left of the map's fold at 0.75, where s0 is identifiable


def test_learned_initial_states_recover_known_ones(kernel):
    data = simulate(kernel, EASY, 40, 4, 0.02, seed=5, s0=S0)
    f = gc.least_squares(kernel, GUESS, data, learn_initial=True)
    assert f.initial["s"].shape == (4,) and f.initial_stderr["s"].shape == (4,)
    assert np.all(np.abs(f.initial["s"] - S0) < 3 * f.initial_stderr["s"])
    assert np.all(np.abs(flat(f.params) - flat(EASY)) < 3 * flat(f.stderr))
    assert f.n_unknowns == 3 + 4 and f.labels[3:] == [f"s(0) seq {i}" for i in range(4)]
    fixed = gc.least_squares(kernel, GUESS, data)                # from zeros: the first steps misfit
    assert fixed.rss > 2 * f.rss
    m = gc.minimize(kernel, GUESS, data, learn_initial=True)
    assert np.allclose(m.initial["s"], f.initial["s"], atol=1e-4)
    assert np.allclose(flat(m.params), flat(f.params), atol=1e-4)
    assert m.loss == pytest.approx(f.rss / 4, rel=1e-6) and m.report.success


def test_the_trainer_learns_initial_states(kernel):
    data = simulate(kernel, EASY, 40, 4, 0.02, seed=5, s0=S0)
    trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(0.05, 2000, 1e-4)), progress=False)
    history = trainer.fit(GUESS, data, epochs=2000, batch_size=4, learn_initial=True)
    best = gc.least_squares(kernel, GUESS, data, learn_initial=True)
    assert trainer.initial["s"].shape == (4,) and len(history.loss) == 2000
    assert np.abs(trainer.initial["s"] - best.initial["s"]).max() < 1e-5
    assert np.abs(flat(trainer.params) - flat(best.params)).max() < 1e-5
    assert np.all(np.abs(trainer.initial["s"] - S0) < 3 * best.initial_stderr["s"])
    assert history.loss[-1] == pytest.approx(best.rss / 4, rel=1e-6)


def test_exact_shooting_gives_the_single_shooting_fit_on_an_easy_problem(kernel):
    data = simulate(kernel, EASY, 120, 2, 0.05, seed=7, s0=np.array([0.2, -0.3]))
    single = gc.least_squares(kernel, GUESS, data, learn_initial=True)
    shots = gc.least_squares(kernel, GUESS, data, learn_initial=True, shooting=10)
    assert shots.max_gap < 1e-5
    assert np.allclose(flat(shots.params), flat(single.params), rtol=0, atol=1e-3 * flat(single.stderr).min())
    assert np.allclose(flat(shots.stderr), flat(single.stderr), rtol=1e-3)
    assert np.allclose(shots.initial["s"], single.initial["s"], atol=1e-5)
    assert shots.window_initial["s"].shape == (1, 24)                 # 12 windows per sequence
    assert shots.n_unknowns == single.n_unknowns and shots.rss == pytest.approx(single.rss, rel=1e-6)


def test_shooting_converges_on_a_chaotic_series_where_single_shooting_does_not(kernel):
    data = simulate(kernel, CHAOTIC, 60, 1, 0.01, seed=1, s0=np.array([0.3]))
    start = {"a": 3.5, "b": -3.5, "c": 0.0}
    guess = {"s": np.array([0.5])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = gc.least_squares(kernel, start, data, learn_initial=True, initial=guess, max_nfev=200)
    shots = gc.least_squares(kernel, start, data, learn_initial=True, initial=guess, shooting=5)
    noise = 60 * 0.01 ** 2
    assert single.rss > 100 * noise and abs(single.params["a"] - 3.8) > 0.2
    assert shots.rss < 1.5 * noise and shots.max_gap < 1e-5
    assert np.all(np.abs(flat(shots.params) - flat(CHAOTIC)) < 3 * flat(shots.stderr))
    assert abs(shots.initial["s"][0] - 0.3) < 0.01


def test_the_trainer_and_minimize_shoot_with_a_continuity_weight(kernel):
    data = simulate(kernel, EASY, 60, 2, 0.02, seed=8, s0=np.array([0.2, -0.3]))
    weighted = gc.least_squares(kernel, GUESS, data, learn_initial=True, shooting=15, continuity=10.0)
    trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(0.05, 2000, 1e-4)), progress=False)
    history = trainer.fit(GUESS, data, epochs=2000, batch_size=8, learn_initial=True, shooting=15,
                          continuity=lambda epoch: 10.0, validation=data)   # the same sum of squares, / 2
    assert trainer.window_initial["s"].shape == (1, 8)
    assert np.abs(flat(trainer.params) - flat(weighted.params)).max() < 1e-4
    assert np.abs(trainer.window_initial["s"] - weighted.window_initial["s"]).max() < 1e-4
    assert history.loss[-1] == pytest.approx((weighted.report.cost * 2) / 2, rel=1e-5)
    assert len(history.val_loss) == 2000 and history.val_loss[-1] < history.val_loss[0]
    assert weighted.max_gap > 1e-4   # a finite weight leaves gaps
    m = gc.minimize(kernel, GUESS, data, learn_initial=True, shooting=15)   # exact continuity
    f = gc.least_squares(kernel, GUESS, data, learn_initial=True)
    assert m.max_gap < 1e-5 and np.allclose(flat(m.params), flat(f.params), atol=1e-4)
    assert m.loss == pytest.approx(f.rss / 2, rel=1e-6)


def test_an_encoder_estimates_the_initial_states(kernel):
    data = simulate(kernel, EASY, 80, 3, 0.02, seed=9, s0=np.array([0.2, -0.3, 0.5]))
    f = gc.least_squares(kernel, GUESS, data, encoder=gc.Encoder(2), shooting=13, continuity=0.0)
    assert set(f.encoder) == {"E", "e"} and f.encoder["E"].shape == (1, 4)   # y and x at 2 steps
    assert f.n_obs == 3 * 78                                              # the first 2 steps feed it
    assert np.all(np.abs(flat(f.params) - flat(EASY)) < 3 * flat(f.stderr))
    assert f.initial["s"].shape == (3,) and f.window_initial["s"].shape == (1, 18)
    truth = kernel.forward(EASY, {"x": data["x"], "y": data["y"]}, initial={"s": np.array([0.2, -0.3, 0.5])})["s"]
    assert np.abs(f.initial["s"] - truth[1]).max() < 0.05                # the state after the 2 steps read


def test_the_trainer_trains_an_encoder(kernel):
    data = simulate(kernel, EASY, 80, 3, 0.02, seed=9, s0=np.array([0.2, -0.3, 0.5]))
    best = gc.least_squares(kernel, GUESS, data, encoder=2, shooting=13, continuity=0.0)
    trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(0.05, 3000, 1e-4)), progress=False)
    history = trainer.fit(GUESS, data, epochs=3000, batch_size=18, encoder=2, shooting=13, continuity=0.0)
    assert set(trainer.encoder) == {"E", "e"} and trainer.window_initial["s"].shape == (1, 18)
    assert np.abs(flat(trainer.params) - flat(best.params)).max() < 2e-3   # the encoder is ill-conditioned:
    assert best.rss / 3 <= history.loss[-1] < 1.02 * best.rss / 3         # Adam comes near, LM gets there
    assert set(trainer.state) == {"a", "b", "c"}


def test_bounds_pass_through(kernel):
    data = simulate(kernel, EASY, 200, 1, 0.05, seed=0)
    f = gc.least_squares(kernel, GUESS, data, bounds={"a": (None, 0.5)})
    assert f.params["a"] == pytest.approx(0.5, abs=1e-6)
    assert f.report.active_mask[0] == 1


# ---------------------------------------------------------------- residuals and errors

h, target = gc.signal("h", 3), gc.signal("target", 3)
W = gc.param("W", 3, 3)


@pytest.mark.parametrize("loss, count, measures", [
    ((s(t) - y(t)) ** 2, 1, {"s": "y"}), (2 * (y(t) - s(t)) ** 2 + (s(t) - a * x(t)) ** 2 / 4, 2, {"s": "y"}),
    (gc.mse(h(t), target(t)), 1, {}), (gc.mse(h(t), target(t)) + 3 * (s(t) - y(t)) ** 2, 2, {"s": "y"})])
def test_residuals_are_recognised_in_sums_of_squares(loss, count, measures):
    step = gc.Recurrence({s(t): a * s(t - 1) + x(t), h(t): gc.tanh(W * h(t - 1))}, loss=loss).step
    assert len(residuals(step)) == count
    assert measured(step, residuals(step)) == measures


def test_mse_residuals_reproduce_the_loss(reference):
    k = gc.compile(gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + gc.signal("u", 3)(t))}, loss=gc.mse(h(t), target(t))),
                   backend="reference")
    rng = np.random.default_rng(0)
    data = {"u": rng.normal(size=(6, 2, 3)), "target": rng.normal(size=(6, 2, 3))}
    params = {"W": 0.3 * rng.normal(size=(3, 3))}
    problem = Problem(k, params, data)
    r = Residuals(problem)(problem.pack())
    assert r.shape == (2 * 6 * 3,)
    assert (r @ r) / 2 == pytest.approx(float(k.loss_and_grad(params, data)[0]), rel=1e-12)


@pytest.mark.parametrize("loss, why", [
    (sp.Abs(s(t) - y(t)), "sum of squared residuals"), ((s(t) - y(t)) ** 4, "sum of squared residuals"),
    ((s(t) - y(t)) ** 2 - (s(t) - x(t)) ** 2, "positive constants"), (a * (s(t) - y(t)) ** 2, "gc.minimize"),
    (gc.cross_entropy(h(t), target(t)), "residuals=")])
def test_other_losses_are_refused(loss, why):
    k = gc.compile(gc.Recurrence({s(t): a * s(t - 1) + x(t), h(t): gc.tanh(W * h(t - 1))}, loss=loss), backend="reference")
    arrays = {"x": np.ones((3, 1)), "y": np.ones((3, 1)), "target": np.ones((3, 1, 3))}
    with pytest.raises(gc.GraphcompError, match=re.escape(why)) as error:
        gc.least_squares(k, {"a": 0.5, "W": np.eye(3)}, {n: arrays[n] for n in k.program.inputs})
    assert "gc.least_squares needs a loss that is a sum of squared residuals" in str(error.value)


def test_named_outputs_as_residuals(reference):
    k = gc.compile(gc.Recurrence({s(t): a * s(t - 1) + b * s(t - 1) ** 2 + c * x(t)}, outputs={"e": s(t) - y(t)}),
                   backend="reference")
    data = simulate(reference, EASY, 100, 1, 0.05, seed=0)
    f = gc.least_squares(k, GUESS, data, residuals=["e"])
    g = gc.least_squares(reference, GUESS, data)
    assert np.allclose(flat(f.params), flat(g.params), atol=1e-8)
    with pytest.raises(gc.GraphcompError, match=r"residuals names outputs of the model, got \['f'\]; its outputs are \['e'\]"):
        gc.least_squares(k, GUESS, data, residuals=["f"])


def test_bad_calls_are_errors(reference):
    data = simulate(reference, EASY, 10, 1, 0.05, seed=0)
    cases = [
        (dict(method="lm", bounds={"a": (0, 1)}), "method='lm' (MINPACK) takes no bounds"),
        (dict(bounds={"z": (0, 1)}), "bounds names unknown parameters ['z']"),
        (dict(bounds={"a": (1, 0)}), "the lower bound must be below the upper one"),
        (dict(bounds={"a": (0.4, 1)}), "the starting value of a is outside its bounds"),
        (dict(learn_initial=True, encoder=2), "choose one"),
        (dict(shooting=0), "shooting must be a number of steps per window"),
        (dict(continuity=-1), "continuity must be 'exact' or a weight >= 0"),
        (dict(jacobian="sideways"), "jacobian must be one of"),
        (dict(encoder=20), "sequence 0 has 10 steps, but the encoder reads the first 20"),
    ]
    for options, message in cases:
        with pytest.raises(gc.GraphcompError, match=re.escape(message)):
            gc.least_squares(reference, GUESS, data, **options)
    with pytest.raises(gc.GraphcompError, match=re.escape("params must hold the model's parameters ['a', 'b', 'c']")):
        gc.least_squares(reference, {"a": 1.0}, data)
    with pytest.raises(gc.GraphcompError, match="pass gc.compile\\(model\\)"):
        gc.least_squares(QUADRATIC, GUESS, data)
    with pytest.raises(gc.GraphcompError, match=re.escape("continuity='exact' needs a fitter that converges")):
        gc.Trainer(reference, progress=False).fit(GUESS, data, shooting=5, continuity="exact")
    stateless = gc.compile(gc.Recurrence({}, outputs={"o": a * x(t)}, loss=(sp.Function("o")(t) - y(t)) ** 2),
                           backend="reference")
    with pytest.raises(gc.GraphcompError, match="no state read at a delay, so it has no initial state to learn"):
        gc.least_squares(stateless, {"a": 1.0}, data, learn_initial=True)
    with pytest.raises(gc.GraphcompError, match="diverges or the residuals are not finite at the starting parameters"):
        gc.least_squares(reference, {"a": 3.0, "b": 3.0, "c": 3.0}, simulate(reference, EASY, 200, 1, 0.05, seed=0))


# ---------------------------------------------------------------- metrics and figures

def test_metrics_per_output():
    y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0], [np.nan, 1.0]])
    p = np.array([[1.5, 0.0], [2.0, 1.0], [2.5, 5.0], [9.0, 9.0]])
    kept = y[:3]
    rmse = np.sqrt(np.mean((kept - p[:3]) ** 2, axis=0))
    assert np.allclose(gc.metrics.rmse(y, p), rmse)
    assert np.allclose(gc.metrics.nrmse(y, p), rmse / kept.std(axis=0))
    fit = 100 * (1 - np.linalg.norm(kept - p[:3], axis=0) / np.linalg.norm(kept - kept.mean(axis=0), axis=0))
    assert np.allclose(gc.metrics.fit_percent(y, p), fit)
    assert gc.metrics.fit_percent(np.arange(5.0), np.arange(5.0)) == 100.0
    pooled = gc.metrics.rmse([np.zeros(2), np.ones(2)], [np.ones(2), np.ones(2)])
    assert pooled == pytest.approx(np.sqrt(0.5))
    with pytest.raises(gc.GraphcompError, match="measured .2,. and predicted .3,. differ"):
        gc.metrics.rmse(np.zeros(2), np.zeros(3))
    with pytest.raises(gc.GraphcompError, match="constant"):
        gc.metrics.nrmse(np.ones(3), np.zeros(3))


def test_history_and_forecast_plots(tmp_path, monkeypatch):
    history = gc.History(loss=[4.0, 2.0, 1.0], val_loss=[5.0, 3.0, 2.5])
    ax = history.plot()
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[4.0, 2.0, 1.0], [5.0, 3.0, 2.5]]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
    ax = gc.plot_forecast(np.arange(5.0), {"model": np.arange(5.0) + 1}, split=3, title="t")
    assert len(ax.get_lines()) == 3 and ax.get_title() == "t"
    ax.figure.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(gc.GraphcompError, match=re.escape("drawing figures needs matplotlib: pip install matplotlib")):
        history.plot()


def test_the_system_identification_page_runs(tmp_path, monkeypatch, capsys):
    """Every python block of docs/system_identification.md, in order, and what it says it prints."""
    from pathlib import Path
    page = Path(__file__).resolve().parent.parent / "docs" / "system_identification.md"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_test__"}
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
        exec(compile(block, f"system_identification.md block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "600 residuals, 6 unknowns" in out
    assert namespace["shots"].params["a"] == pytest.approx(3.7977, abs=1e-3)
    assert gc.metrics.nrmse(namespace["measured"], namespace["simulated"]) == pytest.approx(0.304, abs=1e-3)
