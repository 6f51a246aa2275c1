"""A short tour of graphcomp: declare a recurrence, look at its equations, its derived BPTT
equations, its unfolded graph and its diagrams, then fit its parameters to measured series
with the trainer (Adam over minibatches of series of unequal lengths, on the compiled
kernel's loss and gradient)."""
import time
from pathlib import Path

import graphviz
import numpy as np
import sympy as sp

import graphcomp as gc

t = gc.t


def section(title):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


section("1. Declare: a damped nonlinear map driven by an input")
s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
a, b, c = sp.symbols("a b c")
model = gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)},
                      loss=(s(t) - y(t)) ** 2)
print("states:", model.states, " inputs:", model.inputs, " params:", model.params)
for eq in model.equations():
    print("  ", sp.pretty(eq, use_unicode=True))

section("2. The backward (BPTT) recurrence graphcomp derived")
for eq in model.gradient_equations():
    print("  ", eq)

section("3. Unfolded over 4 steps: an ordinary DAG, parameters shared")
g = model.unfold(4)
kinds = {}
for _, data in g.nodes(data=True):
    kinds[data["kind"]] = kinds.get(data["kind"], 0) + 1
print(f"  {g.number_of_nodes()} nodes, {g.number_of_edges()} edges, by kind: {kinds}")
print("  parameter a feeds:", sorted({g.nodes[v]['time'] for v in g.successors(('param', 'a', None))}))

section("4. Diagrams: the circuit and the unfolded graph (graphviz)")
out = Path("out")
out.mkdir(exist_ok=True)
for kind in ("circuit", "unfolded", "gradient"):
    graph = model.draw(kind, steps=4)
    try:
        path = graph.render(out / f"scalar_map_{kind}", format="svg", cleanup=True)
        print(f"  wrote {path}")
    except graphviz.ExecutableNotFound:
        print(f"  graphviz's dot is missing: install graphviz to render {kind}; its DOT source:")
        print("   ", graph.source.splitlines()[0], "...")

section("5. Data: 16 noisy series of different lengths from known parameters")
rng = np.random.default_rng(0)
true = {"a": 0.6, "b": 0.5, "c": 0.8}
T, B = 200, 16
lengths = rng.integers(100, T + 1, size=B)
X = rng.normal(size=(T, B))
kernel = gc.compile(model)
clean = kernel.forward(true, {"x": X}, lengths)["s"]
Y = clean + 0.05 * rng.normal(size=clean.shape)

section("6. Fit with the trainer: Adam, minibatches of 4 series, a progress bar")
trainer = gc.Trainer(kernel, gc.optim.Adam(gc.optim.cosine(0.05, 400, 0.005)), clip_norm=10.0)
start = time.perf_counter()
history = trainer.fit({"a": 0.0, "b": 0.0, "c": 0.1}, {"x": X, "y": Y}, epochs=100, batch_size=4,
                      lengths=lengths, seed=0)
params = {p: float(v) for p, v in trainer.params.items()}
for epoch in (1, 10, 50, 100):
    print(f"  epoch {epoch:3d}: mean loss per series {history.loss[epoch - 1]:10.5f}")
print(f"  {time.perf_counter() - start:.1f} s with the {kernel.backend!r} backend, {trainer.steps} updates")
print("  parameter   true   fitted")
for p in params:
    print(f"  {p:9s} {true[p]:6.3f} {params[p]:8.3f}")

section("7. The gradient, checked three ways")
oracle = gc.compile(model, backend="unfolded")
short = {"x": X[:12, :3], "y": Y[:12, :3]}
l1, g1 = kernel.loss_and_grad(params, short)
l2, g2 = oracle.loss_and_grad(params, short)
eps = 1e-6
for p in params:
    plus, minus = dict(params, **{p: params[p] + eps}), dict(params, **{p: params[p] - eps})
    fd = (kernel.loss_and_grad(plus, short)[0] - kernel.loss_and_grad(minus, short)[0]) / (2 * eps)
    print(f"  d loss/d {p}: adjoint loop {g1[p]: .10f}   unfolded DAG {g2[p]: .10f}   finite diff {fd: .10f}")
