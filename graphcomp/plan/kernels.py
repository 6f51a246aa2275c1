"""The plans of a step's kernels: ``forward`` and, with a loss, ``loss_and_grad`` (and its
seeded form, which also takes the cotangents of each sequence's last values and gives those of
the initial ones).

Products that read no state (``U x(t)``) are hoisted out of the loops over steps into one
product over every step's rows; so are outputs and a loss that need products. The forward
loops keep on a tape what the backward loops read and cannot recompute cheaply. After the
backward loops, each weight matrix's gradient is one ``Δᵀ H`` product; every other boundary
value's cotangent is summed over rows as it is computed, and the driver sends the sums back
to the parameters. ``docs/architecture.md`` explains the choices."""
from __future__ import annotations

import sympy as sp

from .. import ir
from ..ir.autodiff import LOSS, adjoint, grad_var
from ..ir import X, Node
from ..ir.passes import fuse_products, fused_step
from ..lang.step import Step
from .nodes import Kernel, Outer, Place, Seed, Steps, Weight, check, Clear
from .region import Builder, Region, Sink, Unsupported, kind, length, resolve, width

LOSS_SEED = ir.var(("grad", LOSS), ())   # the loss's weight per row: 1/B while the sequence lasts


def _behind(offset, direction) -> bool:
    """Is a read at ``offset`` of a step already processed by a backward loop sweeping against
    ``direction`` (or at the same step)? Over a grid, on every axis; a tree's child, never."""
    if isinstance(offset, tuple) and offset[:1] == ("child",):
        return False
    if isinstance(offset, tuple):
        return all(o * d <= 0 for o, d in zip(offset, direction))
    return offset * direction <= 0


def _costly(expr: sp.Expr) -> bool:
    """Does an elementwise expression apply a function (tanh, exp, ...) or a fractional power?"""
    return any(isinstance(e, sp.Function) or (isinstance(e, sp.Pow) and not e.exp.is_Integer)
               for e in sp.preorder_traversal(expr))


def boundary(step: Step) -> list:
    """The unbatched values that batched code reads and that depend on a parameter. The
    gradient of each is summed over the rows, then sent back to the parameters once."""
    out = []
    for n in ir.toposort(step.roots()):
        for a in n.args if n.batched else ():
            if not a.batched and a not in out and any(m.op == "param" for m in ir.toposort([a])):
                out.append(a)
    return out


def _outer_terms(node: Node) -> list:
    """A weight matrix's cotangent per example as Σ coef · a bᵀ over batched vectors a, b."""
    if node.op == "matmul" and all(x.batched for x in node.args) \
            and node.args[0].shape[1] == 1 and node.args[1].shape[0] == 1:
        return [(1.0, resolve(node.args[0]), resolve(node.args[1]))]
    if node.op == "transpose":
        return [(c, b, a) for c, a, b in _outer_terms(node.args[0])]
    if node.op == "map":
        out = []
        for term in sp.Add.make_args(sp.expand(node.attr)):
            coef, rest = term.as_coeff_Mul()
            if not (rest.is_Symbol and rest.name.startswith("x")):
                break
            out += [(float(coef) * c, a, b) for c, a, b in _outer_terms(node.args[int(rest.name[1:])])]
        else:
            return out
    raise Unsupported(f"the gradient of a weight matrix of the form {node!r}")


class Gradients:
    """Sums each boundary value's cotangent over all rows as regions compute it: scalars and
    vectors in accumulators, weight matrices as Σ a bᵀ products after the last loop (their
    factors kept over all rows)."""

    def __init__(self, build: Builder, boundary_: list):
        self.b, self.boundary = build, boundary_
        self.acc: dict = {}
        self.outer: dict = {}

    def _accumulator(self, q: Node) -> Place:
        if q not in self.acc:
            rows = ("block", 1) if q.shape == () else ("fixed", 1)
            self.acc[q] = Place(self.b.buffer("acc", rows, length(q.shape), zero=True))
        return self.acc[q]

    def sinks(self, contributions: dict, region: Region) -> list:
        """Sinks that add a region's contributions (boundary node -> cotangent IR)."""
        out, kept = [], {}
        for q, node in contributions.items():
            if q.shape == () or 1 in q.shape:
                out.append(Sink(node, self._accumulator(q), "+=", "zero"))
                continue
            for coef, a, b in _outer_terms(node):
                places = []
                for f in (a, b):
                    # a cotangent's timeline holds what later steps sent past a sequence's end:
                    # a factor is copied into a buffer, zero there, unless it already is one
                    place = kept.get(f) or (None if f.op == "var" else region.available(f))
                    if not (isinstance(place, Place) and self.b.over_steps(place)
                            and place.col == 0 and self.b.width(place) == length(f.shape)):
                        place = kept[f] = Place(self.b.buffer("factor", self.b.everywhere(), length(f.shape)))
                        out.append(Sink(f, place, "=", "zero"))
                    places.append(place)
                self.outer.setdefault(q, []).append((coef, *places))
        return out

    def finish(self) -> tuple[list, dict]:
        """The weight matrices' products, and where each boundary value's sum ends up."""
        stmts, sums = [], {}
        for q, terms in self.outer.items():
            grad = sums[q] = self.b.buffer("grad", ("fixed", q.shape[0]), q.shape[1])
            for k, (coef, a, b) in enumerate(terms):
                stmts.append(Outer(grad, a, b, coef, add=k > 0))
        for q, place in self.acc.items():
            sums[q] = place.buffer
        return stmts, sums


class Plans:
    """The kernel plans of one step; ``forward``, ``loss_and_grad`` and ``seeded`` build them."""

    def __init__(self, step: Step):
        self.user_step = step
        for info in step.signals.values():
            if info.shape:
                length(info.shape)   # raises for a matrix-valued signal
        self.step = fused_step(step)
        self.margins = {n: i.margins for n, i in step.signals.items()}
        self.boundary = boundary(self.step)
        self.adjoint = adjoint(self.step, loss_seed=LOSS_SEED, wrt=frozenset(self.boundary))
        self.fuse_loss = self._loss_fusable()
        self.rings = self._rings()

    # -------------------------------------------------------- signals
    def timeline(self, b: Builder, name: str, offset: int, role: str = "signal") -> Place:
        """Signal ``name`` read at t + offset: its timeline (or cotangent timeline, or ring)."""
        shape = self.step.signals[name].shape
        w = None if shape == () else length(shape)
        margins = self.margins[name]
        before = tuple(m[0] for m in margins) if self.step.grid else 0 if self.step.tree else margins[0]
        if role == "cot" and name in self.rings:
            return Place(b.buffer("cot", ("ring", self.rings[name]), w, zero=True, name=f"d{name}_"), offset)
        if role == "cot":
            return Place(b.buffer("cot", b.everywhere(margins), w, before=before, zero=True, name=f"d{name}_"), offset)
        return Place(b.buffer("signal", b.everywhere(margins), w, before=before, name=f"{name}_"), offset)

    def leaf(self, b: Builder, known: dict):
        def find(n: Node):
            if n in known:
                return known[n]
            if n.op == "read":
                return self.timeline(b, *n.attr)
            if n.op == "var" and n.attr[0] == "cot":
                return self.timeline(b, n.attr[1], 0, "cot")
            return None
        return find

    def _loss_fusable(self) -> bool:
        """Can the first backward loop compute the loss and its cotangents step by step? Yes if
        they need no product with a weight matrix (those run best over all rows at once) and
        send nothing to a step of that loop's states that it has already processed."""
        step, adj = self.step, self.adjoint
        if step.loss is None or not step.sweeps:
            return False
        graph = ir.toposort([step.loss, *adj.reads[LOSS].values(), *adj.params[LOSS].values()])
        if any(n.batched and n.op == "matmul" and kind(n) == "product" for n in graph):
            return False
        last = step.sweeps[-1]
        return all(_behind(off, last.direction) for (s, off) in adj.reads[LOSS] if s in last.states)

    def _rings(self) -> dict:
        """States whose cotangents only their own backward loop sends: a ring of K steps' rows
        (K = the largest delay + 1) instead of a timeline over all steps (not over a grid)."""
        adj, step = self.adjoint, self.step
        if step.grid or step.tree:
            return {}
        writers: dict = {s: set() for s in step.states}
        window: dict = {s: 1 for s in step.states}
        for k, sweep in enumerate(step.sweeps):
            consumers = list(sweep.states) + ([LOSS] if self.fuse_loss and k == len(step.sweeps) - 1 else [])
            for who in consumers:
                for (s, off) in adj.reads[who]:
                    writers[s].add(k)
                    window[s] = max(window[s], abs(off) + 1)
        if step.loss is not None and not self.fuse_loss:
            for (s, off) in adj.reads[LOSS]:
                writers[s].add("loss")
        return {s: window[s] for k, sweep in enumerate(step.sweeps) for s in sweep.states if writers[s] <= {k}}

    def _depends_on_state(self):
        """node -> the states it reads (a frozenset; empty: it can run before every loop)."""
        memo: dict = {}

        def dep(n: Node) -> frozenset:
            for m in ir.toposort([n], stop=memo):
                if m not in memo:
                    own = {m.attr[0]} if m.op == "read" and m.attr[0] in self.step.updates else set()
                    memo[m] = frozenset(own.union(*(memo[a] for a in m.args)))
            return memo[n]
        return dep

    def _sweeps(self) -> list:
        """Per sweep: every node under its updates mapped to its form in the forward loop, where
        a state read at the same step is the node computing it."""
        out = []
        for sweep in self.step.sweeps:
            mapping: dict = {}
            for s in sweep.states:
                node = self.step.updates[s]
                mapping.update(ir.rewrite([node], mapping))
                mapping[ir.read(s, self.step.here, node.shape)] = mapping[node]
            out.append(mapping)
        return out

    def _backward_sweeps(self, b: Builder) -> list:
        """Per sweep, in backward order: the cotangent sinks of its adjoint step and its
        boundary contributions. A state's seed ∇s(t) is written out as what was sent to s(t)
        before plus what the states of the sweep that read s(t) (and a fused loss) send now,
        so that one loop computes all of them."""
        adj, out = self.adjoint, []
        for k, sweep in enumerate(reversed(self.step.sweeps)):
            seeds, sends, grads = {}, {}, {}
            consumers = [LOSS] if self.fuse_loss and k == 0 else []
            consumers += list(reversed(sweep.states))
            for who in consumers:
                if who != LOSS:
                    shape = self.step.updates[who].shape
                    here = (who, self.step.here)
                    same = [ir.substitute([adj.reads[o][here]], seeds)[0] for o in [LOSS, *sweep.states]
                            if (o == LOSS and LOSS in consumers or o != LOSS and grad_var(o, self.step.updates[o].shape) in seeds)
                            and here in adj.reads[o]]
                    seeds[grad_var(who, shape)] = ir.add(ir.var(("cot", who), shape), *same)
                for (name, off), node in adj.reads[who].items():
                    if not (off == self.step.here and name in sweep.states):
                        sends.setdefault((name, off), []).append(ir.substitute([node], seeds)[0])
                for q, node in adj.params[who].items():
                    grads.setdefault(q, []).append(ir.substitute([node], seeds)[0])
            sent = {key: ir.add(*nodes) for key, nodes in sends.items()}
            grads = {q: ir.add(*nodes) for q, nodes in grads.items()}
            # products of one cotangent with several weights (δ Wᵀ to h(i-1, j) and δ Rᵀ to
            # h(i, j-1); a second layer's δ to its own past and to the layer below): one product
            fused = fuse_products([*sent.values(), *grads.values()])
            sinks = [Sink(fused[node], self.timeline(b, name, off, "cot"), "+=", "zero")
                     for (name, off), node in sent.items()]
            out.append((sweep, sinks, {q: fused[node] for q, node in grads.items()}))
        return out

    def _tapes(self, b: Builder, roots: list, sweeps: list, known: dict, dep) -> dict:
        """Forward values the backward loops read that depend on a state: kept by the forward
        loop (a tape over all rows), unless cheap arithmetic on the timelines gives them again
        (reading a tape costs less than a tanh, more than a multiplication)."""
        computed = set().union(*(m.keys() for m in sweeps)) if sweeps else set()
        find = self.leaf(b, known)
        free: dict = {}

        def recomputable(n: Node) -> bool:
            for m in ir.toposort([n], stop=free):
                if m not in free:
                    free[m] = (not m.batched or m.op == "read") or (
                        m.op in ("map", "broadcast", "take", "concat", "transpose", "total")
                        and not (m.op == "map" and _costly(m.attr)) and all(free[a] for a in m.args))
            return free[n]
        backward: dict = {}
        for n in ir.toposort(roots):
            backward[n] = n.op == "var" or any(backward[a] for a in n.args)

        def kept(n: Node) -> bool:
            return n.batched and not backward.get(n, True) and dep(n) and not recomputable(n)
        tapes: dict = {}
        for n in ir.toposort(roots, stop=lambda n: not n.batched or find(n) is not None or kept(n)):
            if not kept(n) or find(n) is not None:
                continue
            n = resolve(n)
            while n.op == "take":
                n = resolve(n.args[0])
            if n in computed and n not in tapes:
                tapes[n] = Place(b.buffer("tape", b.everywhere(), width(n)))
        return tapes

    # -------------------------------------------------------- loops
    def _hoist(self, b: Builder, sweeps: list, dep) -> tuple[list, dict]:
        """Per sweep, the products it needs that read no state of its own or of a later sweep
        (``U x(t)``, a second layer's ``U₂ h₁(t)``): over every step's rows before its loop, in
        one product each. Returns the statements before each sweep, what each sweep may read
        (a product hoisted for a later sweep is not there yet in an earlier one), and where every
        hoisted product lives."""
        known, before, seen, done = {}, [], [], frozenset()
        for sweep, mapping in zip(self.step.sweeps, sweeps):
            products = [n for n in dict.fromkeys(mapping.values())
                        if n.batched and n.op == "matmul" and kind(n) == "product" and n not in known and dep(n) <= done]
            region = Region(b, self.leaf(b, known), "all")
            before.append(region.run([Sink(n, None) for n in products]) if products else [])
            known.update(region.homes)
            seen.append(dict(known))
            done |= frozenset(sweep.states)
        return before, seen, known

    def _steps(self, b: Builder, direction: int, sinks: list, known: dict, note: str,
               gradients: Gradients | None = None, contributions: dict | None = None,
               rings: list = (), seeded: list = ()) -> Steps:
        """One loop over steps running a region per step; ``rings``: ring rows to clear after;
        ``seeded``: states whose cotangents first take the seeds of a sequence's last steps."""
        body = [Seed(self.timeline(b, s, 0, "cot"), self._seed(b, s), self._seed_k(s)) for s in seeded]
        region = Region(b, self.leaf(b, known), "block")
        if gradients is not None:
            sinks = sinks + gradients.sinks(contributions, region)
        body += region.run(sinks)
        body += [Clear(place) for place in rings]   # this step's ring rows are free for step t - K
        return Steps(direction, tuple(body), note)

    @staticmethod
    def _nonempty(loops: list) -> list:
        """Loops over steps with nothing left inside (all hoisted) are dropped."""
        return [s for s in loops if not isinstance(s, Steps) or s.body]

    def _seed_k(self, s: str) -> int:
        return max(self.user_step.signals[s].history, 1)

    def _seed(self, b: Builder, s: str) -> str:
        w = b.buffers[f"d{s}_"].width
        return b.buffer("seed", ("blocks", self._seed_k(s)), w, name=f"seed_{s}")

    def _forward_loops(self, b: Builder, sweeps: list, seen: list, tapes: dict, before: list) -> list:
        out = []
        for sweep, mapping, hoisted, known in zip(self.step.sweeps, sweeps, before, seen):
            out += hoisted
            # past its end: zero, or its boundary values; over a grid, what outside points hold
            guard = "keep" if self.step.grid or self.step.tree or sweep.direction < 0 else "zero"
            sinks = [Sink(mapping[self.step.updates[s]], self.timeline(b, s, 0), "=", guard) for s in sweep.states]
            sinks += [Sink(mapping[n], place, "=", "zero") for n, place in tapes.items() if n in mapping]
            out.append(self._steps(b, sweep.direction, sinks, known, ", ".join(f"{s}(t)" for s in sweep.states)))
        return out

    def _finish(self, b: Builder, name: str, signals: list, body: list, **results) -> Kernel:
        k = Kernel(name, tuple(signals), dict(b.values), tuple(b.buffers.values()), tuple(body),
                   axes=len(self.step.axes), tree=self.step.children, **results)
        check(k)
        return k

    def forward(self) -> Kernel:
        step, b = self.step, Builder(len(self.step.axes), self.step.tree)
        sweeps, dep = self._sweeps(), self._depends_on_state()
        reads = set(step.updates) | {n.attr[0] for n in ir.toposort(step.roots(with_loss=False)) if n.op == "read"}
        signals = [n for n in step.signals if n in reads]
        for n in signals:
            self.timeline(b, n, 0)
        before, seen, known = self._hoist(b, sweeps, dep)
        body = self._nonempty(self._forward_loops(b, sweeps, seen, {}, before))
        outs, sinks = {}, []
        for o, node in step.outputs.items():
            outs[o] = b.buffer("out", b.everywhere(), None if node.shape == () else length(node.shape), name=f"out_{o}")
            sinks.append(Sink(node, Place(outs[o])))
        if sinks:
            body += Region(b, self.leaf(b, known), "all").run(sinks)
        return self._finish(b, "forward", signals, body, outputs=outs)

    def loss_and_grad(self, seeded: bool = False) -> Kernel:
        step, adj, b = self.step, self.adjoint, Builder(len(self.step.axes), self.step.tree)
        sweeps, dep = self._sweeps(), self._depends_on_state()
        signals = list(step.signals)
        for n in signals:
            self.timeline(b, n, 0)
        for s in step.states:
            self.timeline(b, s, 0, "cot")
        before, seen, known = self._hoist(b, sweeps, dep)
        backward = self._backward_sweeps(b)
        loss = Place(b.buffer("acc", ("block", 1), None, zero=True, name="loss_"))
        loss_sink = Sink(ir.emap(X(0) * X(1), [LOSS_SEED, step.loss]), loss, "+=", "zero")
        roots = [s.node for _, sinks, _ in backward for s in sinks] + \
                [n for _, _, grads in backward for n in grads.values()] + ([loss_sink.node] if self.fuse_loss else [])
        tapes = self._tapes(b, roots, sweeps, known, dep)
        body = self._nonempty(self._forward_loops(b, sweeps, seen, tapes, before))
        known.update(tapes)
        gradients = Gradients(b, self.boundary)
        weight = {**known, LOSS_SEED: Weight()}
        if not self.fuse_loss:   # the loss and the cotangents it sends, over every step's rows
            sinks = [loss_sink] + [Sink(node, self.timeline(b, name, off, "cot"), "+=", "zero")
                                   for (name, off), node in adj.reads[LOSS].items()]
            region = Region(b, self.leaf(b, weight), "all")
            body += region.run(sinks + gradients.sinks(adj.params[LOSS], region))
        seeds = {}
        for k, (sweep, sinks, contributions) in enumerate(backward):   # the adjoint step, backwards in time
            sinks = sinks + ([loss_sink] if self.fuse_loss and k == 0 else [])
            rings = [self.timeline(b, s, 0, "cot") for s in sweep.states if s in self.rings]
            mine = [s for s in sweep.states if sweep.direction > 0] if seeded and not (step.grid or step.tree) else []
            back = tuple(-d for d in sweep.direction) if step.grid else -sweep.direction
            body.append(self._steps(b, back, sinks, weight, ", ".join(f"∇{s}(t)" for s in sweep.states),
                                    gradients, contributions, rings, mine))
            seeds.update({s: (f"seed_{s}", f"d{s}_", self._seed_k(s)) for s in mine})
        outer, sums = gradients.finish()
        body += outer
        return self._finish(b, "loss_and_grad_seeded" if seeded else "loss_and_grad", signals, body,
                            loss="loss_", sums=sums, seeds=seeds)

