"""Each example in examples/ runs in its short mode and shows what it claims."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, **options) -> dict:
    """Import examples/<name>.py by its path and run its main(short=True, **options)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(short=True, **options)


def test_system_id_recovers_the_rates():
    result = run("system_id")
    for p, true in result["true"].items():
        assert result["fitted"][p] == pytest.approx(true, rel=0.05), p
    assert result["loss"][-1] < 0.01 * result["loss"][0]


def test_forecast_beats_the_naive_forecasts():
    errors = run("forecast")["rmse"]
    network = errors.pop("network")
    assert network < 0.25   # the noise alone is 0.1
    assert all(network < 0.5 * e for e in errors.values()), errors


def test_char_lm_learns_and_samples():
    result = run("char_lm")
    train, val, V = result["train_perplexity"], result["val_perplexity"], result["vocabulary"]
    assert len(train) == len(val) == 2 and np.all(np.isfinite(val))
    assert train[-1] < train[0] and val[-1] < V / 4
    assert result["sample"].startswith("def ") and len(result["sample"]) == 4 + 60


def test_adding_lstm_beats_elman():
    result = run("adding")
    assert result["lstm"]["mse"] < 0.05 < 1 / 6
    assert result["lstm"]["mse"] < 0.5 * result["elman"]["mse"]
    assert result["lstm"]["accuracy"] > result["elman"]["accuracy"]


def test_sunspots_networks_against_arima(tmp_path):
    figure = tmp_path / "sunspots.png"
    rmse = run("sunspots", figure=str(figure))
    assert set(rmse) == {"ARIMA(9,0,0)", "NARX", "Elman"}
    assert rmse["ARIMA(9,0,0)"]["one-step"] == pytest.approx(17.3, abs=0.1)   # statsmodels' own fit
    for name, r in rmse.items():
        assert 10 < r["one-step"] < 25 and r["one-step"] < r["free-run"] < 60, (name, r)
    assert rmse["NARX"]["one-step"] < 1.1 * rmse["ARIMA(9,0,0)"]["one-step"]
    assert figure.stat().st_size > 10_000


def test_state_space_recovers_parameters_and_impulse_responses(tmp_path):
    figure = tmp_path / "state_space.png"
    results = run("state_space", figure=str(figure))
    for name, r in results.items():
        for p, true in r["truth"].items():
            assert abs(r["params"][p] - true) < 3 * r["stderr"][p], (name, p)
        for s, x0 in r["x0"].items():
            assert np.abs(r["initial"][s] - x0).max() < 0.1, (name, s)
        assert r["impulse_error"]["learned"] < min(0.05, 0.2 * r["impulse_error"]["zero"]), name
    assert results["linear"]["impulse_error"]["learned"] < 0.01
    assert figure.stat().st_size > 10_000


def test_restarts_on_a_local_cluster_find_the_true_frequency():
    result = run("restarts", workers=2)
    fitted, losses = result["fitted"], result["val_loss"]
    assert len(fitted) == 16 and result["best"] == fitted[int(np.argmin(losses))]
    assert result["best"]["omega"] == pytest.approx(2.0, rel=1e-3)
    assert result["best"]["gain"] == pytest.approx(1.5, rel=0.01)
    stuck = [f for f in fitted if abs(f["omega"] - 2.0) > 0.1]   # one guess alone rarely finds it
    assert len(stuck) >= 8 and min(losses) < 0.01 * np.median(losses)


def test_digits_2d_learns_the_digits():
    result = run("digits_2d")
    assert result["logistic"] > 0.95                  # the baseline on the same split
    assert result["accuracy"] > 0.8                   # short mode (10 classes); the full run beats the baseline
    assert result["loss"][-1] < 0.5 * result["loss"][0]


def test_arithmetic_trees_learns_to_evaluate_expressions():
    result = run("arithmetic_trees")
    assert result["loss"][-1] < 0.3 * result["loss"][0]
    assert result["nodes"] > 0.7 and result["roots"] > 3 * result["untrained_roots"]
    assert result["deep_nodes"] > 0.6                 # deeper trees than any seen in training
    assert result["lstm_roots"] > 3 * result["untrained_roots"]   # the LSTM on the same expressions as tokens
