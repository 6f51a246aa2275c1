"""Yearly sunspot numbers (statsmodels' copy of the series, 1700-2008): a NARX network and an
Elman network, each declared as equations and fitted by ``gc.least_squares`` on the years up
to 1968, against statsmodels' ARIMA(9, 0, 0) on the same years. On the last 40 years we
report the one-step-ahead RMSE (each year predicted from the measured years before it) and
the free-run RMSE (all 40 years forecast from 1968 on, each forecast fed back), for the
networks over 5 random initialisations (mean ± standard deviation). Writes a PNG figure.

Run: python examples/sunspots.py [--short] [--figure sunspots.png]"""
import argparse
import time
import warnings

import numpy as np

import graphcomp as gc

t = gc.t
LAGS, TEST = 9, 40


def narx(H: int) -> gc.Recurrence:
    """yhat(t) = V tanh(Σ_k w_k y(t-k) + b) + c: a one-hidden-layer net of the last LAGS years."""
    y, yhat = gc.signal("y", 1), gc.signal("yhat", 1)
    hidden = sum((gc.param(f"w{k}", H) * y(t - k) for k in range(1, LAGS + 1)), gc.param("b", H))
    return gc.Recurrence({}, outputs={"yhat": gc.param("V", 1, H) * gc.tanh(hidden) + gc.param("c", 1)},
                         loss=gc.mse(yhat(t), y(t)))


def elman(H: int) -> gc.Recurrence:
    """h(t) = tanh(W h(t-1) + U y(t-1) + b), yhat(t) = V h(t) + c: the state summarises the past."""
    y, yhat, h = gc.signal("y", 1), gc.signal("yhat", 1), gc.signal("h", H)
    W, U, b = gc.param("W", H, H), gc.param("U", H, 1), gc.param("b", H)
    return gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + U * y(t - 1) + b)},
                         outputs={"yhat": gc.param("V", 1, H) * h(t) + gc.param("c", 1)}, loss=gc.mse(yhat(t), y(t)))


def arima(train: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' ARIMA(9, 0, 0) fitted on ``train``: one-step and free-run predictions of the test years."""
    from statsmodels.tsa.arima.model import ARIMA
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ARIMA(train, order=(LAGS, 0, 0)).fit()
        one = fit.apply(full).predict(start=len(train), end=len(full) - 1)
    return np.asarray(one), np.asarray(fit.forecast(TEST))


def network(model, kernel, seed: int, train: np.ndarray, full: np.ndarray, evaluations: int):
    """Fit from the seed's initialisation; one-step and free-run predictions of the test years."""
    params = model.init_params(seed=seed)
    fit = gc.least_squares(kernel, params, {"y": train[:, None, None]}, max_nfev=evaluations)
    one = kernel.forward(fit.params, {"y": full[:, None, None]})["yhat"][len(train):, 0, 0]
    free = gc.simulate(kernel, fit.params, [{"y": full[:, None]}], feed={"y": "yhat"}, warmup=len(train))
    return fit, one, free[0]["yhat"][len(train):, 0]


def main(short: bool = False, figure: str = "sunspots.png") -> dict:
    import statsmodels.api as sm
    data = sm.datasets.sunspots.load_pandas().data
    years, spots = data["YEAR"].to_numpy(int), data["SUNACTIVITY"].to_numpy(float)
    n = len(spots) - TEST
    mean, std = spots[:n].mean(), spots[:n].std()
    scaled = (spots - mean) / std
    # small networks and a capped number of Levenberg-Marquardt evaluations: with 269 years to
    # fit, larger ones (or fits run to convergence) overfit and forecast worse
    seeds, evaluations, sizes = (range(2), 30, {"NARX": 2, "Elman": 3}) if short else (range(5), 100, {"NARX": 2, "Elman": 3})
    print(f"sunspots {years[0]}-{years[-1]}: fit on {years[0]}-{years[n - 1]}, test on the last {TEST} years")
    rmse = lambda a, b: float(gc.metrics.rmse(a, b))
    truth = spots[n:]
    one, free = arima(spots[:n], spots)
    results = {"ARIMA(9,0,0)": {"one-step": [rmse(truth, one)], "free-run": [rmse(truth, free)]}}
    curves = {"ARIMA(9,0,0)": free}
    for name, build in (("NARX", narx), ("Elman", elman)):
        model = build(sizes[name])
        kernel = gc.compile(model)
        start = time.perf_counter()
        results[name] = {"one-step": [], "free-run": []}
        for seed in seeds:
            fit, one, free = network(model, kernel, seed, scaled[:n], scaled, evaluations)
            results[name]["one-step"].append(rmse(truth, one * std + mean))
            results[name]["free-run"].append(rmse(truth, free * std + mean))
            if seed == 0:
                curves[f"{name} (seed 0)"] = free * std + mean
        print(f"{name}: {len(model.params)} parameter arrays, {fit.report.x.size} numbers, {len(seeds)} fits in "
              f"{time.perf_counter() - start:.1f} s")
    print(f"\nRMSE on {years[n]}-{years[-1]} (sunspot number; networks: mean ± sd over {len(seeds)} seeds)")
    print(f"{'model':>14} {'one-step':>14} {'free-run':>14}")
    for name, r in results.items():
        cells = [f"{np.mean(v):6.1f} ± {np.std(v):4.1f}" if len(v) > 1 else f"{v[0]:6.1f}       " for v in r.values()]
        print(f"{name:>14} {cells[0]:>14} {cells[1]:>14}")
    ax = gc.plot_forecast(truth, curves, time=years[n:], title="sunspots: free-run forecasts of the last 40 years",
                          ylabel="sunspot number")
    ax.figure.tight_layout()
    ax.figure.savefig(figure, dpi=110)
    print(f"figure: {figure}")
    return {name: {k: float(np.mean(v)) for k, v in r.items()} for name, r in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    parser.add_argument("--figure", default="sunspots.png", help="where to write the PNG figure")
    args = parser.parse_args()
    main(args.short, args.figure)
