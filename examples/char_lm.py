"""A character-level language model trained on text every machine has: the Python standard
library's own source. An LSTM reads one character per step (one-hot) and predicts the next
(cross-entropy on its logits). It reports the perplexity per epoch on the training text and
on held-out text (a uniform guess over the characters scores the vocabulary's size), then
writes a sample with ``gc.generate``: from a prompt, each character drawn from the softmax
of the logits at a temperature is fed back as the next input.

Run: python examples/char_lm.py [--short]"""
import argparse
import importlib
import inspect
import time
from pathlib import Path

import numpy as np

import graphcomp as gc

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))   # printable ASCII; anything else reads as "?"
INDEX = {ch: i for i, ch in enumerate(VOCAB)}
MODULES = ("argparse", "textwrap", "string", "shlex", "fnmatch", "glob", "heapq", "bisect",
           "functools", "random", "calendar", "pprint", "difflib", "inspect", "tempfile", "csv")


def corpus(chars: int) -> str:
    """The first ``chars`` characters of a few standard-library modules' source files."""
    text = ""
    for name in MODULES:
        text += Path(inspect.getsourcefile(importlib.import_module(name))).read_text(encoding="utf-8")
        if len(text) >= chars:
            break
    return text[:chars].replace("\t", "    ")


def encode(text: str) -> np.ndarray:
    return np.array([INDEX.get(ch, INDEX["?"]) for ch in text])


def onehot(tokens: np.ndarray) -> np.ndarray:
    """One-hot rows as uint8 (the kernel converts each minibatch): 8 times less memory."""
    return np.eye(len(VOCAB), dtype=np.uint8)[tokens]


def windows(tokens: np.ndarray, T: int) -> dict:
    """Consecutive windows of T characters: x(t) a character, y(t) the one after it."""
    n = (len(tokens) - 1) // T
    idx = np.arange(n * T).reshape(n, T).T                # (T, n)
    return {"x": onehot(tokens[idx]), "y": onehot(tokens[idx + 1])}


def main(short: bool = False, temperature: float = 0.7) -> dict:
    chars, H, T, epochs = (40_000, 48, 32, 2) if short else (440_000, 128, 64, 5)
    tokens = encode(corpus(chars))
    split = int(0.9 * len(tokens))
    train, val = windows(tokens[:split], T), windows(tokens[split:], T)
    V = len(VOCAB)
    print(f"{len(tokens):,} characters of standard-library source ({', '.join(MODULES[:4])}, ...); "
          f"{train['x'].shape[1]} training and {val['x'].shape[1]} validation windows of {T}")
    print(f"LSTM, hidden size {H}, vocabulary {V} (uniform guess: perplexity {V})")
    model = gc.models.lstm(V, H, V, loss="cross_entropy")

    def report(epoch, history):
        print(f"  epoch {epoch + 1}: perplexity train {np.exp(history.loss[-1] / T):6.2f}, "
              f"validation {np.exp(history.val_loss[-1] / T):6.2f} ({history.seconds[-1]:.1f} s)")

    updates = epochs * -(-train["x"].shape[1] // 32)
    trainer = gc.Trainer(model, gc.optim.Adam(gc.optim.cosine(5e-3, updates, 5e-4)), clip_norm=5.0,
                         dtype="float32", progress=False, callback=report)
    start = time.perf_counter()
    history = trainer.fit(model.init_params(seed=0), train, epochs=epochs, batch_size=32, validation=val, seed=0)
    seconds = time.perf_counter() - start

    prompt = "def "
    out = gc.generate(trainer.kernel, trainer.params, 300 if not short else 60, feed={"x": "o"},
                      prompt={"x": onehot(encode(prompt))[:, None]}, sample="sample",
                      temperature=temperature, seed=1)
    sample = prompt + "".join(VOCAB[i] for i in out["x"][:, 0].argmax(-1))
    print(f"trained in {seconds:.0f} s; a sample at temperature {temperature}:\n")
    print(sample)
    return {"train_perplexity": [float(np.exp(l / T)) for l in history.loss],
            "val_perplexity": [float(np.exp(l / T)) for l in history.val_loss], "vocabulary": V,
            "sample": sample, "seconds": seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a small, fast run")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    args = parser.parse_args()
    main(args.short, args.temperature)
