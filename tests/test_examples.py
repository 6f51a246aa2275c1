"""Each example in examples/ runs in its short mode and shows what it claims."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str) -> dict:
    """Import examples/<name>.py by its path and run its main(short=True)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(short=True)


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


def test_digits_2d_learns_the_digits():
    result = run("digits_2d")
    assert result["logistic"] > 0.95                  # the baseline on the same split
    assert result["accuracy"] > 0.8                   # short mode (10 classes); the full run beats the baseline
    assert result["loss"][-1] < 0.5 * result["loss"][0]
