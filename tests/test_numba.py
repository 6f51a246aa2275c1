"""The Numba back end equals the reference backend and finite differences on the catalogue, in
float64 and float32; its plans show the hoisting, fusion, tapes and rings; one compiled
function serves every size; a kernel shared by threads gives the serial results; compiled
kernels are cached on disk, exported standalone, and run one step at a time."""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import numba
import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp.backends.numba.backend import load
from graphcomp.backends.numba.runtime import runtime_name, runtime_source
from graphcomp.backends.tiered import SLOW, Tiered, _nodes as tiered_nodes, _weights as tiered_weights
from graphcomp.plan.nodes import Components, Let, Load, Outer, Product, Rows, Steps, check, pretty, walk

from catalogue import CATALOGUE, delays, elman, finite_difference, linear_scalar, lstm, nonlinear_map

t = gc.t


@pytest.fixture(scope="module", params=CATALOGUE, ids=lambda f: f.__name__)
def compiled(request):
    """Each catalogue model, compiled; its workspaces start as NaN, so that a buffer read
    before the kernel writes it cannot go unnoticed."""
    case = request.param()
    k = gc.compile(case.model, backend="numba")
    k.impl.poison = True
    k.impl.release()
    return case, k, gc.compile(case.model, backend="reference")


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b).max(initial=0) / max(1.0, np.abs(b).max(initial=0))


def args_of(case):
    return case.params, case.inputs, case.lengths, case.initial


def test_default_backend_is_numba(compiled):
    case, _, _ = compiled
    assert gc.compile(case.model).backend == "numba"


def test_equals_the_reference_backend(compiled):
    case, k, ref = compiled
    l1, g1 = k.loss_and_grad(*args_of(case))
    l2, g2 = ref.loss_and_grad(*args_of(case))
    assert rel(l1, l2) < 1e-10
    for p in case.params:
        assert np.shape(g1[p]) == np.shape(case.params[p])
        assert rel(g1[p], g2[p]) < 1e-10, p
    f1, f2 = k.forward(*args_of(case)), ref.forward(*args_of(case))
    assert set(f1) == set(f2)
    for n in f1:
        assert f1[n].shape == f2[n].shape and rel(f1[n], f2[n]) < 1e-10, n


def test_equals_finite_differences(compiled):
    case, k, _ = compiled
    _, grads = k.loss_and_grad(*args_of(case))
    fd = finite_difference(k, case)
    for p in case.params:
        assert rel(grads[p], fd[p]) < 1e-6, p


def test_float32_within_1e4_of_float64(compiled):
    case, k64, _ = compiled
    k32 = gc.compile(case.model, dtype="float32")
    l32, g32 = k32.loss_and_grad(*args_of(case))
    l64, g64 = k64.loss_and_grad(*args_of(case))
    assert isinstance(l32, np.float32)
    assert rel(l32, l64) < 1e-4
    for p in case.params:
        assert np.asarray(g32[p]).dtype == np.float32
        assert rel(g32[p], g64[p]) < 1e-4, p
    out = k32.forward(*args_of(case))
    assert all(a.dtype == np.float32 for a in out.values())


def test_one_compiled_signature_serves_every_length_and_batch():
    case = elman()
    k = gc.compile(case.model)
    rng = np.random.default_rng(1)
    for T, B in ((1, 1), (7, 3), (40, 5)):
        data = {"x": rng.normal(size=(T, B, 3)), "y": rng.normal(size=(T, B, 2))}
        k.loss_and_grad(case.params, data, lengths=np.full(B, T, np.int16))
        k.forward(case.params, data)
    for name in ("forward", "loss_and_grad"):
        loops = getattr(sys.modules[k.impl.kernel(name).module], f"{name}_loops")
        assert len(loops.signatures) == 1


def test_stream_equals_forward_step_by_step():
    for case in (delays(), lstm()):
        k = gc.compile(case.model)
        full = k.forward(*args_of(case))
        T = next(iter(case.inputs.values())).shape[0]
        state = {n: np.reshape(v, (case.model.step.signals[n].history, -1) + case.model.step.signals[n].array_shape)
                 for n, v in case.initial.items()}
        stream = k.stream(case.params, state)
        needed = case.model.step.inputs_needed(False)
        valid = np.arange(1, T + 1)[:, None] <= case.lengths[None, :]
        for t in range(T):
            out = stream.step({n: a[t] for n, a in case.inputs.items() if n in needed})
            for n, a in out.items():   # the whole-sequence run stops each sequence at its length
                v = valid[t].reshape((-1,) + (1,) * (a.ndim - 1))
                assert np.allclose(np.where(v, a, 0), np.where(v, full[n][t], 0), rtol=1e-12, atol=1e-12), (case.name, n, t)
        assert set(stream.state) == {n for n, i in case.model.step.signals.items() if i.history}


def test_step_refuses_what_needs_the_future():
    from catalogue import bidirectional
    k = gc.compile(bidirectional().model)
    with pytest.raises(gc.GraphcompError, match=r"state 'g' reads its own future \(g\(t\+1\)\)"):
        k.step(bidirectional().params, None, {"x": np.zeros((2, 2))})
    x = gc.signal("x", 2)
    h = gc.signal("h", 2)
    ahead = gc.Recurrence({h(gc.t): gc.tanh(h(gc.t - 1) + x(gc.t + 1))})
    with pytest.raises(gc.GraphcompError, match=r"input 'x' is read at x\(t\+1\)"):
        gc.compile(ahead).step({}, None, {"x": np.zeros((1, 2))})


# ---------------------------------------------------------------- what the plans say

def plan(model, name="loss_and_grad"):
    return gc.compile(model).impl.kernel(name).plan


def steps_of(kernel_plan) -> list:
    """The loops over steps of a kernel plan, in order."""
    return [s for s in kernel_plan.body if isinstance(s, Steps)]


def products(stmts) -> list:
    return [s for s in walk(stmts) if isinstance(s, Product)]


def reads(stmts) -> set:
    """The buffers a list of statements loads from."""
    return {a.place.buffer for s in walk(stmts) if getattr(s, "expr", None) is not None
            for a in s.expr.args if isinstance(a, Load)}


def test_input_projections_leave_the_time_loops():
    for name in ("forward", "loss_and_grad"):
        p = plan(elman().model, name)
        loops = steps_of(p)
        assert loops and not any({"x_", "y_"} & (reads(s.body) | {q.src.buffer for q in products(s.body)})
                                 for s in loops)
        first = p.body[0]
        assert isinstance(first, Product) and first.src.buffer == "x_" and first.span == "all"   # U x, all rows
        assert [q.src.buffer for q in products(loops[0].body)] == ["h_"]                          # only W h(t-1)
    outer = [s for s in plan(elman().model).body if isinstance(s, Outer)]
    assert len(outer) == 3 and len({s.grad for s in outer}) == 3   # Σ δ hᵀ for W, U and V: one product each


def test_lstm_gates_fuse_into_one_product_each_way():
    p = plan(lstm().model)
    forward, backward = steps_of(p)
    assert len(products(forward.body)) == 1       # [W_i; W_g; W_f; W_o] h(t-1)
    assert len(products(backward.body)) == 1      # [W_i; W_g; W_f; W_o]ᵀ [δ_i; δ_g; δ_f; δ_o]
    rows = next(s for s in forward.body if isinstance(s, Rows))
    loops = [s for s in rows.body if isinstance(s, Components)]
    assert rows.guard == "branch" and len(loops) == 1                     # one fused elementwise loop
    functions = [type(f).__name__ for s in loops[0].body if isinstance(s, Let)
                 for f in sp.preorder_traversal(s.expr.expr) if isinstance(f, sp.Function)]
    assert sorted(functions) == ["sigmoid", "sigmoid", "sigmoid", "tanh", "tanh"]
    assert all(s.expr.vector for s in loops[0].body if isinstance(s, Let))   # branch-free versions
    outer = [s for s in p.body if isinstance(s, Outer) and s.b.buffer == "h_" and s.b.shift == -1]
    assert len(outer) == 1                        # the four W gradients: one product
    stacked = [node for node, _ in p.values.values() if node.op == "concat"]
    assert any([a.attr for a in n.args] == ["Wi", "Wf", "Wg", "Wo"] or len(n.args) == 4 for n in stacked)


def test_an_elementwise_loss_runs_inside_the_backward_loop_with_a_ring():
    p = plan(nonlinear_map().model)
    assert not any(isinstance(s, Rows) and s.span == "all" for s in p.body)   # no pass over all rows for the loss
    assert p.buffer("ds_").rows == ("ring", 2)       # ∇s(t) and ∇s(t-1): a ring of two steps
    forward, backward = steps_of(p)

    def tanhs(stmts):
        return sum(isinstance(f, sp.tanh) for s in walk(stmts) if isinstance(s, Let)
                   for f in sp.preorder_traversal(s.expr.expr))
    assert tanhs(forward.body) == 1 and tanhs(backward.body) == 0   # tanh(s(t-1)) is taped, not recomputed


def test_cheap_values_are_recomputed_not_taped():
    assert not any(b.role == "tape" for b in plan(linear_scalar().model).buffers)
    assert any(b.role == "tape" for b in plan(nonlinear_map().model).buffers)


def test_the_plan_prints_and_its_check_catches_what_no_back_end_could_run():
    p = plan(elman().model)
    text = pretty(p)
    assert text.splitlines()[0].startswith("kernel loss_and_grad(h, x, y;") and "steps backward" in text
    assert "rows block guard=branch  # h(t)" in text and "# ∇h(t - 1) +=" in text   # each nest says what it stores
    check(p)
    rows = next(s for s in steps_of(p)[0].body if isinstance(s, Rows))
    broken = replace(p, body=(rows,))          # a block of rows outside a loop over steps
    with pytest.raises(gc.GraphcompError, match="outside a loop over steps"):
        check(broken)
    with pytest.raises(gc.GraphcompError, match="no buffer 'h_'"):
        check(replace(p, buffers=tuple(b for b in p.buffers if b.name != "h_")))


def test_the_runtime_compiles_once_per_array_type_not_per_constant_offset():
    """An offset written as a bare 0 would make Numba compile each runtime function again for
    the literal 0 (0.4-1 s each, with an empty cache)."""
    calls = re.findall(r"\b(_mm|_mtm)\((.*)\)", gc.compile(elman().model).source)
    assert len(calls) == 11   # forward's 3, loss_and_grad's 8
    for fn, args in calls:
        assert not any(re.fullmatch(r"-?\d+", a.strip()) for a in args.split(",")), (fn, args)


def test_a_model_with_no_state_compiles():
    """A NARX or time-delay model: delayed inputs only, a loss and no output (was an IndexError)."""
    y, u = sp.Function("y"), sp.Function("u")
    a, b, c = sp.symbols("a b c")
    narx = gc.Recurrence({}, outputs={"yhat": a * y(t - 1) + b * y(t - 2) + c * u(t - 1)},
                         loss=(gc.signal("yhat")(t) - y(t)) ** 2)
    rng = np.random.default_rng(0)
    data = {"y": rng.normal(size=(9, 3)), "u": rng.normal(size=(9, 3))}
    params = {"a": 0.5, "b": -0.2, "c": 0.3}
    k, ref = gc.compile(narx), gc.compile(narx, backend="reference")
    assert k.backend == "numba"
    (l1, g1), (l2, g2) = k.loss_and_grad(params, data, lengths=[9, 4, 6]), ref.loss_and_grad(params, data, lengths=[9, 4, 6])
    assert rel(l1, l2) < 1e-12 and all(rel(g1[p], g2[p]) < 1e-12 for p in params)
    loss_only = gc.Recurrence({}, loss=(a * y(t - 1) - y(t)) ** 2)
    ys = {"y": data["y"]}
    assert rel(gc.compile(loss_only).loss_and_grad({"a": 0.5}, ys)[0],
               gc.compile(loss_only, backend="reference").loss_and_grad({"a": 0.5}, ys)[0]) < 1e-12


# ---------------------------------------------------------------- compiled code


def test_one_compiled_function_serves_every_hidden_size():
    """Sizes are read at run time: another hidden size is the same source, the same module
    and the same compiled signature."""
    small, other = gc.compile(gc.models.elman(3, 8, 2)), gc.compile(gc.models.elman(5, 13, 4))
    for name in ("forward", "loss_and_grad"):
        a, b = small.impl.kernel(name), other.impl.kernel(name)
        assert a.loops == b.loops and a.module == b.module and a.sizes != b.sizes
    rng = np.random.default_rng(0)
    for model, k in ((gc.models.elman(3, 8, 2), small), (gc.models.elman(5, 13, 4), other)):
        params = model.init_params(seed=1)
        data = {"x": rng.normal(size=(6, 2, k.program.signals["x"].array_shape[0])),
                "y": rng.normal(size=(6, 2, k.program.signals["y"].array_shape[0]))}
        ref = gc.compile(model, backend="reference")
        assert rel(k.loss_and_grad(params, data)[0], ref.loss_and_grad(params, data)[0]) < 1e-12
    loops = getattr(sys.modules[small.impl.kernel("loss_and_grad").module], "loss_and_grad_loops")
    assert len(loops.signatures) == 1


def test_eight_threads_sharing_a_kernel_get_the_serial_results():
    case = lstm()
    k = gc.compile(case.model)
    rng = np.random.default_rng(3)
    jobs = []
    for j in range(8):
        T, B = 5 + j, 1 + j % 4
        jobs.append(({n: rng.normal(size=(T, B) + a.shape[2:]) for n, a in case.inputs.items()},
                     rng.integers(1, T + 1, B)))
    serial = [k.loss_and_grad(case.params, x, lengths) for x, lengths in jobs]
    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            threads = list(pool.map(lambda job: k.loss_and_grad(case.params, *job), jobs * 4))
        for (l1, g1), (l2, g2) in zip(threads, serial * 4):
            assert l1 == l2 and all(np.array_equal(g1[p], g2[p]) for p in g2)


def test_repeated_calls_agree_to_the_last_bit(compiled):
    case, k, _ = compiled
    first = k.loss_and_grad(*args_of(case))
    second = k.loss_and_grad(*args_of(case))
    assert first[0] == second[0] and all(np.array_equal(first[1][p], second[1][p]) for p in case.params)
    # each call's gradients are its own arrays, shaped like the parameters: writing into them
    # changes neither another call's nor the kernel's next answer
    for p, g in first[1].items():
        assert np.shape(g) == np.shape(case.params[p]) and not np.shares_memory(g, second[1][p])
        if np.ndim(g):
            g[...] = np.nan
    third = k.loss_and_grad(*args_of(case))
    assert all(np.array_equal(second[1][p], third[1][p]) for p in case.params)


def test_the_generated_source_of_a_small_model_is_the_golden_file():
    """One model's generated loops and driver, held as a file a reviewer can read
    (regenerate it with ``python tests/test_numba.py`` after a deliberate change)."""
    assert golden_source() == GOLDEN.read_text()


def golden_source() -> str:
    return gc.compile(elman().model).source


GOLDEN = __import__("pathlib").Path(__file__).parent / "golden" / "elman.py.txt"


def test_unsupported_models_fall_back_with_a_warning():
    M = gc.signal("M", 2, 2)
    model = gc.Recurrence({M(gc.t): gc.tanh(M(gc.t - 1))})
    with pytest.raises(gc.GraphcompError, match="the Numba backend cannot compile this model yet"):
        gc.compile(model, backend="numba")
    with pytest.warns(UserWarning, match="NumPy reference backend"):
        k = gc.compile(model)
    assert k.backend == "reference"


def test_a_numba_failure_at_a_later_call_is_a_graphcomp_error(monkeypatch):
    case = elman()
    k = gc.compile(case.model)

    def broken(*args):
        raise numba.core.errors.TypingError("a typing error")
    monkeypatch.setattr(k.impl.kernel("forward"), "driver", broken)
    with pytest.raises(gc.GraphcompError, match="cannot compile this model yet.*typing error.*backend='reference'"):
        k.forward(*args_of(case))


def test_source_and_a_standalone_export(tmp_path):
    case = elman()
    k = gc.compile(case.model)
    assert k.source.startswith('"""Generated by graphcomp')
    path = gc.export(case.model, tmp_path / "kernels.py")
    text = path.read_text()
    assert "graphcomp" not in text.split('"""', 2)[2] and "from numba import njit" in text and "def _tanh(" in text
    spec = importlib.util.spec_from_file_location("exported_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    T, B = case.inputs["x"].shape[:2]
    h = np.zeros(((T + 1) * B, 4))
    h[:B] = case.initial["h"]
    lengths = np.asarray(case.lengths, np.int32)
    x, y = (np.where((np.arange(1, T + 1)[:, None] <= lengths)[..., None], case.inputs[n], 0).reshape(T * B, -1)
            for n in ("x", "y"))
    params = case.params   # in their NumPy shapes, in the model's order
    work = np.empty(module.work_size_loss_and_grad(T, B))
    loss, grads = module.loss_and_grad(T, B, lengths, work, h, x, y, *params.values())
    expected, g = k.loss_and_grad(*args_of(case))
    assert rel(loss, expected) < 1e-12
    assert set(grads) == set(g) and all(rel(grads[n], g[n]) < 1e-12 for n in g)
    with pytest.raises(gc.GraphcompError, match="generates no source"):
        gc.compile(case.model, backend="reference").source


def test_a_second_process_loads_the_compiled_kernels_from_disk(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import graphcomp as gc
        from catalogue import elman
        k = gc.compile(elman().model)
        loops = sys.modules[k.impl.kernel("loss_and_grad").module].loss_and_grad_loops
        print(len(loops.stats.cache_hits), sum(loops.stats.cache_hits.values()))
    """ % str(__import__("pathlib").Path(__file__).parent))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split()[1] == "0"          # compiled
    assert int(second.stdout.split()[1]) >= 1      # loaded from the cache
    assert list(tmp_path.glob("graphcomp/numba-*/graphcomp_loops_*.py"))


# ---------------------------------------------------------------- the fast elementwise functions

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_functions_are_within_a_few_ulp(dtype):
    rt = load(runtime_source(dtype), runtime_name(dtype))
    rng = np.random.default_rng(0)
    lim = 700.0 if dtype == "float64" else 85.0
    x = np.concatenate([rng.normal(0, 3, 4000), np.linspace(-2, 2, 801), np.linspace(-lim, lim, 801),
                        [0.0, 0.625, -0.625, 1.25, -1.25, 1e-30, -1e-30]]).astype(dtype)
    ulp = {"_tanh": 6, "_sigmoid": 6, "_exp": 2, "_vtanh": 6, "_vsigmoid": 6}
    sigmoid = (lambda v: 1 / (1 + np.exp(-v)))
    for name, ref in (("_tanh", np.tanh), ("_sigmoid", sigmoid), ("_exp", np.exp), ("_vtanh", np.tanh),
                      ("_vsigmoid", sigmoid)):
        f = getattr(rt, name)
        got = np.array([f(v) for v in x], dtype=dtype)
        with np.errstate(all="ignore"):
            want = ref(x.astype(np.float64)).astype(dtype)
        ok = np.isfinite(want) & (np.abs(want) > np.finfo(dtype).tiny)
        assert np.all(np.abs(got - want)[ok] <= ulp[name] * np.spacing(np.abs(want[ok]))), name
    assert np.isinf(rt._exp(np.dtype(dtype).type(2 * lim))) and rt._exp(np.dtype(dtype).type(-2 * lim)) == 0
    assert rt._tanh(np.dtype(dtype).type(50)) == 1 and rt._sigmoid(np.dtype(dtype).type(-2 * lim)) == 0





def test_wait_false_answers_on_the_reference_backend_until_the_kernels_are_compiled():
    case = delays()
    k = gc.compile(case.model, wait=False)
    ref = gc.compile(case.model, backend="reference")
    early = k.loss_and_grad(*args_of(case))           # the reference backend or, if ready, compiled
    assert k.impl._rate is not None or k.ready         # a reference call is timed, to judge the next
    assert k.wait(timeout=120) and k.ready and k.impl.compiled.warmed
    late = k.loss_and_grad(*args_of(case))
    expected = ref.loss_and_grad(*args_of(case))
    for got in (early, late):
        assert rel(got[0], expected[0]) < 1e-12 and all(rel(got[1][p], expected[1][p]) < 1e-12 for p in case.params)
    assert k.source == gc.compile(case.model).source
    assert gc.compile(case.model).ready and gc.compile(case.model).wait()



def test_wait_false_waits_for_the_kernels_when_the_reference_backend_would_be_slow():
    """The reference keeps each example's parameter gradients: for an LSTM of 64 units, 32
    sequences of 100 steps it takes about 0.7 s a call (3 s beside the compile), longer than
    waiting; the estimate counts that, and a measured call replaces the estimate."""
    step = gc.models.lstm(32, 64, 32).step
    big, small = SimpleNamespace(T=100, B=32), SimpleNamespace(T=20, B=4)
    tiered = SimpleNamespace(_rate=None, _nodes=tiered_nodes(step), _weights=tiered_weights(step))
    assert Tiered._cost(tiered, big) >= SLOW > Tiered._cost(tiered, small)
    tiered._rate = 1e-3                                # measured: 1 ms per step and sequence
    assert Tiered._cost(tiered, small) == pytest.approx(0.08)


def test_products_hoisted_between_sweeps():
    """A second layer's input product runs over all rows between the layers' loops; a product
    one sweep computes in its loop and a later one hoists is not read early (found by the
    property test: s2 hoists the stack [p0; p1; p10] s0(t-2) that s0 itself needs in its loop)."""
    p = plan(gc.models.elman(3, 4, 2, layers=2, bidirectional=True))
    loops = [k for k, s in enumerate(p.body) if isinstance(s, Steps)]
    third = loops[2]                                   # layer 2's first loop, after both of layer 1's
    assert isinstance(p.body[third - 1], Product) and p.body[third - 1].span == "all"
    s, x = gc.signal("s", 2), gc.signal("x", 2)
    u = gc.signal("u", 2)
    A, C, U = gc.param("A", 2, 2), gc.param("C", 2, 2), gc.param("U", 2, 2)
    model = gc.Recurrence({s(t): A * s(t - 2) + U * x(t), u(t): gc.tanh(C * s(t - 2) + A * u(t + 1))},
                          loss=gc.mse(s(t), x(t)) + gc.mse(u(t), x(t)))
    rng = np.random.default_rng(0)
    params = {"A": rng.normal(size=(2, 2)) * .5, "C": rng.normal(size=(2, 2)) * .5, "U": rng.normal(size=(2, 2))}
    data, initial = {"x": rng.normal(size=(5, 2, 2))}, {"s": rng.normal(size=(2, 2, 2))}
    got = gc.compile(model).loss_and_grad(params, data, [5, 3], initial)
    want = gc.compile(model, backend="reference").loss_and_grad(params, data, [5, 3], initial)
    assert rel(got[0], want[0]) < 1e-12 and all(rel(got[1][n], want[1][n]) < 1e-12 for n in params)


if __name__ == "__main__":   # regenerate the golden file
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(golden_source())
