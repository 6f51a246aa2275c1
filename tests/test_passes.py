"""Passes the code generator runs: horizontal fusion of products that share a vector."""
import numpy as np

from graphcomp import ir
from graphcomp.ir.autodiff import adjoint
from graphcomp.ir.passes import fused_step

from catalogue import CATALOGUE, elman, lstm


def products(roots) -> list:
    return [n for n in ir.toposort(roots) if n.op == "matmul" and n.batched]


def test_the_lstm_gate_products_share_one_product_per_vector():
    step = lstm().model.step
    before = products(step.updates.values())
    fused = fused_step(step)
    after = products(fused.updates.values())
    assert len(before) == 8 and len(after) == 2          # W_k h(t-1) and U_k x(t), four gates each
    for p in after:
        weights, vector = p.args
        assert weights.op == "concat" and [a.attr for a in weights.args] in (["Wi", "Wg", "Wf", "Wo"], ["Ui", "Ug", "Uf", "Uo"])
        assert p.shape == (12, 1)


def test_the_fused_adjoint_sends_one_stacked_cotangent_back():
    step = fused_step(lstm().model.step)
    adj = adjoint(step)
    back = ir.add(adj.reads["c"][("h", -1)], adj.reads["h"][("h", -1)])
    assert back.op == "matmul" and back.args[1].op == "concat"   # [W_i; ...]ᵀ [δ_i; δ_g; δ_f; δ_o]
    assert sum(1 for n in products([back]) if n.args[0].op == "transpose") == 1   # no other backward product


def test_fusion_changes_no_value():
    rng = np.random.default_rng(0)
    for make in CATALOGUE:
        case = make()
        step = case.model.step
        fused = fused_step(step)
        values = {}

        def leaf(node):
            if node not in values:
                shape = node.shape if not node.batched else (2,) + node.shape
                values[node] = rng.normal(size=shape)
            return values[node]
        roots = list(step.updates.values()) + list(step.outputs.values())
        new = list(fused.updates.values()) + list(fused.outputs.values())
        a = ir.evaluate(roots, leaf)
        b = ir.evaluate(new, leaf)
        for r, n in zip(roots, new):
            assert np.allclose(np.broadcast_to(a[r], np.shape(b[n])), b[n]), case.name


def test_a_single_product_is_left_alone():
    step = elman().model.step
    assert products(fused_step(step).updates.values()) == products(step.updates.values())
