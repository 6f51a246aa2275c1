"""The Numba backend equals the reference backend and finite differences on the catalogue, in
float64 and float32; its source shows the hoisting, fusion and ring buffers; compiled kernels
are cached on disk, exported standalone, and run one step at a time."""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import graphcomp as gc
from graphcomp.codegen import KernelSource
from graphcomp.runtime import runtime_name, runtime_source
from graphcomp.compiled import load

from catalogue import CATALOGUE, delays, elman, finite_difference, linear_scalar, lstm, nonlinear_map


@pytest.fixture(scope="module", params=CATALOGUE, ids=lambda f: f.__name__)
def compiled(request):
    case = request.param()
    return case, gc.compile(case.model, backend="numba"), gc.compile(case.model, backend="reference")


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


def test_repeated_calls_reuse_the_workspace_and_agree(compiled):
    case, k, _ = compiled
    first = k.loss_and_grad(*args_of(case))
    work = dict(k._impl._work)
    second = k.loss_and_grad(*args_of(case))
    assert all(work[f] is k._impl._work[f] for f in work)
    assert first[0] == second[0] and all(np.array_equal(first[1][p], second[1][p]) for p in case.params)


def test_one_compiled_signature_serves_every_length_and_batch():
    case = elman()
    k = gc.compile(case.model)
    rng = np.random.default_rng(1)
    for T, B in ((1, 1), (7, 3), (40, 5)):
        data = {"x": rng.normal(size=(T, B, 3)), "y": rng.normal(size=(T, B, 2))}
        k.loss_and_grad(case.params, data, lengths=np.full(B, T, np.int16))
        k.forward(case.params, data)
    module = k._impl.module
    assert len(module._loss_and_grad.signatures) == 1 and len(module._forward.signatures) == 1


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


# ---------------------------------------------------------------- the generated source

def loops_of(source: str, function: str) -> str:
    """The compiled loops function of a kernel."""
    start = source.index(f"def _{function}(")
    return source[start:source.index("\n\n\n", start)]


def time_loops(text: str) -> list:
    """The bodies of the loops over time (``for t in ...``) in a compiled loops function."""
    bodies, current, indent = [], None, None
    for line in text.splitlines():
        depth = len(line) - len(line.lstrip())
        if line.strip().startswith("for t in range"):
            indent, current = depth, []
            bodies.append(current)
        elif current is not None and depth > indent:
            current.append(line.strip())
        elif line.strip():
            current = None
    return bodies


def test_input_projections_leave_the_time_loops():
    source = gc.compile(elman().model).source
    for function in ("forward", "loss_and_grad"):
        text = loops_of(source, function)
        loops = time_loops(text)
        assert loops and not any("ext_x" in line or "ext_y" in line for body in loops for line in body)
        assert re.search(r"_mm\(ext_x\[:R\], c\d+, v\d+\[:R\]\)", text[:text.index("for t in")])   # U x, all rows
        assert sum("_mm(" in line for line in loops[0]) == 1                                        # only W h(t-1)
    driver = source[source.index("def loss_and_grad("):]
    assert sum("_mtm(" in line for line in driver.splitlines()) == 3    # Σ δ hᵀ for W, U and V: one product each


def test_lstm_gates_fuse_into_one_product_each_way():
    source = gc.compile(lstm().model).source
    forward, backward = time_loops(loops_of(source, "loss_and_grad"))
    assert sum("_mm(" in line for line in forward) == 1       # [W_i; W_g; W_f; W_o] h(t-1)
    assert sum("_mm(" in line for line in backward) == 1      # [W_i; W_g; W_f; W_o]ᵀ [δ_i; δ_g; δ_f; δ_o]
    body = forward[forward.index("if ok:"):forward.index("else:")]            # rows within their sequence
    assert sum(line.startswith("for i in range") for line in body) == 1       # one fused elementwise loop
    assert sum(line.count("_vsigmoid(") + line.count("_vtanh(") for line in body) == 5   # σ σ σ tanh tanh
    driver = source[source.index("def loss_and_grad("):]
    assert len(re.findall(r"_mtm\(f\d+\[:R\], ext_h\[:R\]", driver)) == 1   # the four W gradients: one product
    assert "np.concatenate((p_Wi, p_Wg, p_Wf, p_Wo,))" in driver


def test_an_elementwise_loss_runs_inside_the_backward_loop_with_a_ring():
    source = gc.compile(nonlinear_map().model).source
    text = loops_of(source, "loss_and_grad")
    assert "for tt in range(T)" not in text              # no pass over all rows for the loss
    assert "cot_s = np.zeros(2 * B, dtype)" in source    # ∇s(t) and ∇s(t-1): a ring of two steps
    assert any("_tanh(" in line for line in time_loops(text)[0])
    assert not any("_tanh(" in line for line in time_loops(text)[1])   # tanh(s(t-1)) is taped, not recomputed


def test_cheap_values_are_recomputed_not_taped():
    assert "tape" not in gc.compile(linear_scalar().model).source
    assert "tape" in gc.compile(nonlinear_map().model).source


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
    monkeypatch.setattr(k._impl.module, "forward", broken)
    with pytest.raises(gc.GraphcompError, match="cannot compile this model yet.*typing error.*backend='reference'"):
        k.forward(*args_of(case))


def test_source_and_a_standalone_export(tmp_path):
    case = elman()
    k = gc.compile(case.model)
    assert k.source.startswith('"""Generated by graphcomp')
    path = gc.export(case.model, tmp_path / "kernels.py")
    text = path.read_text()
    assert "graphcomp" not in text.split('"""', 2)[2] and "from numba import njit" in text
    assert "def _tanh(" in text and text == KernelSource(case.model.step, "float64").standalone
    spec = importlib.util.spec_from_file_location("exported_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    T, B = case.inputs["x"].shape[:2]
    ext_h = np.zeros(((T + 1) * B, 4))
    ext_h[:B] = case.initial["h"]
    lengths = np.asarray(case.lengths, np.int32)
    x, y = (np.where((np.arange(1, T + 1)[:, None] <= lengths)[..., None], case.inputs[n], 0).reshape(T * B, -1)
            for n in ("x", "y"))
    p = case.params
    work = np.empty(module.work_size_loss_and_grad(T, B))
    loss, *grads = module.loss_and_grad(T, B, lengths, work, ext_h, x, y, **{f"p_{n}": v for n, v in p.items()})
    expected, g = k.loss_and_grad(*args_of(case))
    assert rel(loss, expected) < 1e-12
    assert all(rel(got, g[n]) < 1e-12 for got, n in zip(grads, case.model.step.params))
    with pytest.raises(gc.GraphcompError, match="generates no source"):
        gc.compile(case.model, backend="reference").source


def test_a_second_process_loads_the_compiled_kernels_from_disk(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import graphcomp as gc
        from catalogue import elman
        k = gc.compile(elman().model)
        loops = k._impl.module._loss_and_grad
        print(len(loops.stats.cache_hits), sum(loops.stats.cache_hits.values()))
    """ % str(__import__("pathlib").Path(__file__).parent))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split()[1] == "0"          # compiled
    assert int(second.stdout.split()[1]) >= 1      # loaded from the cache
    assert list(tmp_path.glob("graphcomp/numba-*/graphcomp_kernels_*.py"))


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
