"""Forecasting a noisy sum of sines with an Elman network: train it to predict the next value
on windows of the series, then forecast free-running beyond the training data with
``gc.generate`` (each forecast value is fed back as the next input; the result is aligned on
the steps it forecasts), and compare the forecast error with two naive forecasts: the last
value, and the value one period earlier.

Run: python examples/forecast.py [--short]"""
import argparse
import time

import numpy as np

import graphcomp as gc

PERIODS, AMPLITUDES = (25.0, 9.3), (1.0, 0.5)


def series(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The clean sum of sines over n steps and the series measured with Gaussian noise."""
    i = np.arange(n)
    clean = sum(a * np.sin(2 * np.pi * i / p + k) for k, (p, a) in enumerate(zip(PERIODS, AMPLITUDES)))
    return clean, clean + noise * rng.normal(size=n)


def windows(values: np.ndarray, T: int, stride: int) -> dict:
    """Next-step prediction on windows of T steps: x(t) is the series, y(t) its next value."""
    starts = np.arange(0, len(values) - T - 1, stride)
    idx = starts[None, :] + np.arange(T)[:, None]          # (T, N)
    return {"x": values[idx][..., None], "y": values[idx + 1][..., None]}


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main(short: bool = False) -> dict:
    n_train, H, epochs = (1000, 16, 15) if short else (4000, 32, 40)
    noise, prompt_len, horizon, origins = 0.1, 100, 50, 20
    rng = np.random.default_rng(0)
    clean, seen = series(n_train + origins * horizon + horizon, noise, rng)
    model = gc.models.elman(1, H, 1)
    data = windows(seen[:n_train], T=50, stride=5)
    print(f"series: sines of periods {PERIODS} + noise σ = {noise}; Elman network, hidden size {H}; "
          f"{data['x'].shape[1]} training windows of 50 steps from the first {n_train} values")
    start = time.perf_counter()
    steps = epochs * -(-data["x"].shape[1] // 32)
    trainer = gc.Trainer(model, gc.optim.Adam(gc.optim.cosine(1e-2, steps, 1e-4)), clip_norm=1.0, progress=False)
    history = trainer.fit(model.init_params(seed=0), data, epochs=epochs, batch_size=32, seed=0)
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.1f} s; "
          f"one-step MSE {history.loss[0] / 50:.4f} -> {history.loss[-1] / 50:.4f}")

    # forecast from several origins past the training data, each warmed by the values before it
    at = n_train + horizon * np.arange(origins)                            # (B,) forecast origins
    prompt = seen[at[None, :] - prompt_len + np.arange(prompt_len)[:, None]]   # (P, B)
    truth = seen[at[None, :] + np.arange(horizon)[:, None]]                # (horizon, B)
    # o(t) reads x(t), so it forecasts x(t+1): generate feeds x(t) := o(t-1) and returns both
    # aligned on the step they forecast: out["o"][i] (= out["x"][i]) is the forecast of step P+i+1
    out = gc.generate(trainer.kernel, trainer.params, horizon, feed={"x": "o"}, prompt={"x": prompt[..., None]})
    forecast = out["o"][..., 0]
    last = np.broadcast_to(seen[at - 1], truth.shape)
    season = round(PERIODS[0])
    seasonal = seen[at[None, :] - season + np.arange(horizon)[:, None] % season]
    errors = {"network": rmse(forecast, truth), "last value": rmse(last, truth),
              f"seasonal naive ({season} steps)": rmse(seasonal, truth)}
    print(f"\nforecast RMSE over {horizon} steps ahead from {origins} origins past the training data "
          f"(noise floor {noise}):")
    for name, e in errors.items():
        print(f"  {name:>26}: {e:.3f}")
    print(f"  {'network, vs the clean sines':>26}: "
          f"{rmse(forecast, clean[at[None, :] + np.arange(horizon)[:, None]]):.3f}")
    for h in (1, 10, 25, 50):
        print(f"  horizon {h:>2}: network {rmse(forecast[h - 1], truth[h - 1]):.3f}")
    return {"rmse": errors, "loss": history.loss}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    main(parser.parse_args().short)
