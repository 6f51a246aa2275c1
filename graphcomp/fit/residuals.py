"""What a least-squares fit minimises: the residuals r(t) of a model whose per-step loss is a
sum of squares, L(t) = Σ_k ‖r_k(t)‖², read off the loss's IR (``(pred - y)**2``, ``gc.mse``,
positive constant weights, sums of those), or named outputs given as residuals. Anything
else is refused: a fit that squared something else would be silently wrong."""
from __future__ import annotations

import sympy as sp

from .. import ir
from ..errors import GraphcompError
from ..ir import X, Node
from ..lang.step import SignalInfo, Step

WEIGHT = "fit__w{}"   # reverse mode: the seed of residual k, an input of the residual step
OUTPUT = "fit__r{}"   # residual k, an output of the residual step

def _not_squares(why: str) -> GraphcompError:
    return GraphcompError("gc.least_squares needs a loss that is a sum of squared residuals, such as (pred - y)**2, "
                          f"gc.mse(pred, y), or c*(...)**2 + ... with positive constants c; {why}. Write the loss "
                          "in that form, name outputs that are the residuals (residuals=['e'] for "
                          "outputs={'e': pred - y}), or fit any loss with gc.minimize")


def residuals(step: Step, names: list | None = None) -> list[Node]:
    """The residual nodes of ``step``: ``names`` of outputs, or (None) recognised in the loss."""
    if names is not None:
        unknown = [n for n in names if n not in step.outputs]
        if unknown or not names:
            raise GraphcompError(f"residuals names outputs of the model, got {names!r}; its outputs are "
                                 f"{list(step.outputs)}")
        return [step.outputs[n] for n in names]
    if step.loss is None:
        raise GraphcompError("the model has no loss: pass loss=(pred - y)**2 to gc.Recurrence, or name the "
                             "outputs that are the residuals (residuals=['e'])")
    found = _sum_of_squares(step.loss)
    if found is None:
        raise _not_squares("this model's loss is not of that form")
    if not any(r.batched for r in found):
        raise _not_squares("its squared terms read no signal")
    return found


def _constants(node: Node) -> sp.Expr:
    """A map's expression with its constant and count arguments written in."""
    values = {X(i): a.attr for i, a in enumerate(node.args) if a.op in ("const", "count") and not a.shape}
    return node.attr.xreplace(values)


def _terms(node: Node, elementwise: bool) -> list | None:
    """Residuals R with node = Σ_{r ∈ R} r ⊙ r (``elementwise``, r shaped like node), or, for
    a scalar node, node = Σ_{r ∈ R} Σ_entries r²; None if the node is not of that form."""
    if node.op == "total" and not elementwise:
        return _terms(node.args[0], elementwise=True)
    if node.op != "map":
        return None
    out = []
    for term in sp.Add.make_args(_constants(node)):
        weight, rest = term.as_coeff_Mul()
        if not (weight.is_number and weight > 0):
            return None
        root = sp.sqrt(weight)
        if isinstance(rest, sp.Pow) and rest.exp == 2:
            shape = node.shape if elementwise else None
            base = ir.emap(root * rest.base, node.args, shape)
            if not elementwise and base.shape != ():
                return None
            out.append(base)
        elif rest in [X(i) for i in range(len(node.args))]:
            arg = node.args[int(rest.name[1:])]
            if elementwise and arg.shape != node.shape:
                return None
            inner = _terms(arg, elementwise)
            if inner is None:
                return None
            out += [r if weight == 1 else ir.emap(root * X(0), [r]) for r in inner]
        else:
            return None
    return out


def _sum_of_squares(loss: Node) -> list | None:
    return _terms(loss, elementwise=False)


def size(node: Node) -> int:
    """Entries of one residual per step and sequence."""
    return max(1, node.shape[0] * node.shape[1]) if node.shape else 1


def residual_step(step: Step, nodes: tuple) -> Step:
    """The model with its residuals as outputs ``fit__r{k}`` and the loss Σ_k Σ w_k ⊙ r_k,
    w_k an input ``fit__w{k}``: its gradient with w one-hot is one row of the Jacobian."""
    outputs, loss, signals = {}, None, dict(step.signals)
    for k, r in enumerate(nodes):
        outputs[OUTPUT.format(k)] = r
        w = ir.read(WEIGHT.format(k), 0, r.shape)
        signals[WEIGHT.format(k)] = SignalInfo(WEIGHT.format(k), "input", r.shape, (0,))
        term = ir.emap(X(0) * X(1), [w, r]) if not r.shape else ir.total(ir.emap(X(0) * X(1), [w, r]))
        loss = term if loss is None else ir.add(loss, term)
    clash = [n for n in (*outputs, *signals) if n in step.outputs]
    if clash:
        raise GraphcompError(f"the names {clash} are used by gc.least_squares; rename these outputs")
    return Step(signals, dict(step.params), dict(step.updates), outputs, loss, step.sweeps)


def measured(step: Step, nodes) -> dict:
    """States a scalar residual compares directly with an input, {state: input}: r = c (s(t) -
    y(t)) means y measures s, so y's values start the initial states multiple shooting learns."""
    out = {}
    for r in nodes:
        if r.shape:
            continue
        leaf = lambda n: sp.Symbol(f"{n.attr[0]}@{n.attr[1]}") if n.op == "read" else sp.Symbol(f"?{id(n)}")
        expr = sp.expand(ir.to_sympy([r], leaf)[0])
        reads = sorted(expr.free_symbols, key=str)
        if len(reads) != 2 or not all(str(v).endswith("@0") for v in reads):
            continue
        (u, v), names = reads, [str(v)[:-2] for v in reads]
        cu, cv = sp.diff(expr, u), sp.diff(expr, v)
        if not (cu.is_number and cv.is_number and cu != 0 and sp.simplify(cu + cv) == 0 and
                sp.simplify(expr - cu * u - cv * v) == 0):
            continue
        roles = [step.signals[n].role if n in step.signals else None for n in names]
        if roles == ["state", "input"]:
            out[names[0]] = names[1]
        elif roles == ["input", "state"]:
            out[names[1]] = names[0]
    return out


def measured_by_loss(step: Step) -> dict:
    """``measured`` for the squared residuals of the loss, if it is a sum of squares ({} if not)."""
    found = _sum_of_squares(step.loss) if step.loss is not None else None
    return measured(step, found or [])
