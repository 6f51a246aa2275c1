"""Property test of the call-time checks: a call with one thing wrong or unusual (a name, a
container, a shape, a dtype, a layout, a NaN or infinity, the lengths, an initial value)
either answers exactly as the clean call does, when the value converts exactly, or raises a
GraphcompError that names what is wrong: never another exception, never another answer.
Kernels are compiled once per module (reference and Numba backends) and reused."""
from __future__ import annotations

import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import graphcomp as gc

from catalogue import delays, elman

t = gc.t


def exact(a):
    """Values on a grid of 1/8 in [-4, 4]: exact in every float dtype down to float16."""
    return np.clip(np.round(np.asarray(a, np.float64) * 8) / 8, -4, 4)


@dataclass
class Model:
    name: str
    kernel: object
    params: dict
    inputs: dict
    lengths: np.ndarray
    initial: dict

    @property
    def step(self):
        return self.kernel.program


def column(backend):
    """A scalar input into a vector state through a weight of one column, read out by v.T h."""
    H = 3
    h, u = gc.signal("h", H), sp.Function("u")
    m = gc.Recurrence({h(t): gc.tanh(gc.param("W", H, H) * h(t - 1) + gc.param("U", H, 1) * u(t) + gc.param("b", H))},
                      loss=gc.mse(gc.param("v", H).T * h(t), gc.signal("y", 1)(t)))
    rng = np.random.default_rng(5)
    return Model("column", gc.compile(m, backend=backend), {p: exact(v) for p, v in m.init_params(seed=3).items()},
                 {"u": exact(rng.normal(size=(6, 2))), "y": exact(rng.normal(size=(6, 2, 1)))}, np.array([6, 4]), {})


@pytest.fixture(scope="module")
def models():
    out = [column("reference")]
    for make in (elman, delays):
        case = make()
        for backend in ("reference", "numba"):
            out.append(Model(f"{case.name}/{backend}", gc.compile(case.model, backend=backend),
                             {p: exact(v) for p, v in case.params.items()},
                             {n: exact(v) for n, v in case.inputs.items()}, case.lengths,
                             {n: exact(v) for n, v in case.initial.items()}))
    for m in out:   # compile each kernel now, not inside an example
        m.kernel.forward(m.params, m.inputs, m.lengths, m.initial)
        m.kernel.loss_and_grad(m.params, m.inputs, m.lengths, m.initial)
    return out


@dataclass
class Call:
    params: object
    inputs: object
    lengths: object
    initial: object


def clean(m: Model) -> Call:
    return Call(dict(m.params), dict(m.inputs), m.lengths.copy(), dict(m.initial))


def outcome(m: Model, method: str, call: Call):
    """("ok", the results as flat arrays) or ("error", the message). Any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # e.g. "looks transposed": advice, not the subject here
            result = getattr(m.kernel, method)(call.params, call.inputs, call.lengths, call.initial)
    except gc.GraphcompError as e:
        return "error", str(e)
    if method == "forward":
        return "ok", {n: np.ravel(v) for n, v in result.items()}
    loss, grads = result
    for p, g in grads.items():   # grads keyed and shaped like params
        assert np.shape(g) == np.shape(call.params[p]), p
    return "ok", {"loss": np.ravel(loss), **{p: np.ravel(g) for p, g in grads.items()}}


def same(got, want) -> bool:
    return got[0] == want[0] and (got[1] == want[1] if got[0] == "error" else
                                  got[1].keys() == want[1].keys() and
                                  all(np.array_equal(got[1][k], want[1][k]) for k in got[1]))


# ---------------------------------------------------------------- what a mutation expects
# ("same", call): the answer of that call (the clean values in float64, C order);
# ("error", words): a GraphcompError whose message holds every word;
# ("either", words, call): one or the other (a value that converts exactly but may be refused).

NAMES = st.one_of(st.text(max_size=4), st.integers(-3, 3), st.sampled_from(["W ", "w", "x_", "h", "o", "s", "y"]))


def targets(m: Model, call: Call) -> list:
    return [("param", p) for p in call.params] + [("input", n) for n in call.inputs] + \
        [("initial", n) for n in call.initial]


def where(call: Call, kind: str) -> dict:
    return {"param": call.params, "input": call.inputs, "initial": call.initial}[kind]


def words(kind: str, name) -> list:
    return [{"param": "parameter", "input": "input", "initial": "initial value of"}[kind] + f" {name!r}"]


def setting(call: Call, kind: str, name, value) -> Call:
    new = replace(call, params=dict(call.params), inputs=dict(call.inputs), initial=dict(call.initial))
    where(new, kind)[name] = value
    return new


def m_names(draw, m, call, method):
    needed = m.step.inputs_needed(method == "loss_and_grad")
    what = draw(st.sampled_from(["unknown parameter", "missing parameter", "unknown input", "missing input",
                                 "unknown initial"]))
    if what == "unknown parameter":
        name = draw(NAMES.filter(lambda n: n not in m.params))
        return setting(call, "param", name, 1.0), ("error", [f"unknown parameter {name!r}"])
    if what == "missing parameter":
        p = draw(st.sampled_from(sorted(m.params)))
        call.params.pop(p)
        return call, ("error", ["missing parameter", repr(p)])
    if what == "unknown input":
        name = draw(NAMES.filter(lambda n: n not in m.step.inputs))
        return setting(call, "input", name, np.zeros(3)), ("error", [repr(name)])
    if what == "missing input":
        n = draw(st.sampled_from(sorted(call.inputs)))
        call.inputs.pop(n)
        return call, ("error", ["missing input", repr(n)]) if n in needed else ("same", clean(m))
    readable = [n for n, i in m.step.signals.items() if i.history]
    name = draw(NAMES.filter(lambda n: n not in readable))
    return setting(call, "initial", name, np.zeros(2)), ("error", [repr(name)])


def m_containers(draw, m, call, method):
    kind = draw(st.sampled_from(["params", "inputs", "initial"]))
    given = getattr(call, kind)
    other = draw(st.sampled_from(["items", "values", "text", "number", "array", "tuple", "proxy", "ordered"]))
    if other in ("proxy", "ordered"):   # other mappings: taken as dicts
        mapping = types.MappingProxyType(given) if other == "proxy" else OrderedDict(reversed(list(given.items())))
        return replace(call, **{kind: mapping}), ("same", clean(m))
    bad = {"items": list(given.items()), "values": list(given.values()), "text": "abc", "number": 3,
           "array": np.zeros(3), "tuple": (1, 2)}[other]
    label = {"params": "parameters", "inputs": "inputs", "initial": "initial"}[kind]
    return replace(call, **{kind: bad}), ("error", [f"{label} must be a dict"])


def accepted(m: Model, kind: str, name, shape: tuple) -> bool:
    """The documented second forms: a weight of one column as (n, 1), an initial value read
    at delay 1 as (1, B, ...)."""
    if kind == "param":
        return name in m.step.weights and shape == m.step.params[name]
    return kind == "initial" and m.step.signals[name].history == 1 and shape[:1] == (1,) and \
        shape[1:] == np.shape(m.initial[name])


def m_shapes(draw, m, call, method):
    kind, name = draw(st.sampled_from(targets(m, call)))
    a = np.asarray(where(call, kind)[name])
    op = draw(st.sampled_from(["grow", "shrink", "add axis", "drop axis"]))
    axes = list(range(a.ndim))
    if kind == "input" and len(call.inputs) == 1:
        axes = axes[2:]   # a different T or B on the only input is another valid call
    if op in ("grow", "shrink") and axes:
        axis = draw(st.sampled_from(axes))
        if op == "shrink" and a.shape[axis] > 1:
            new = np.take(a, range(a.shape[axis] - 1), axis)
        else:
            new = np.concatenate([a, np.take(a, [0], axis)], axis)
        if kind == "input" and axis < 2:   # the lengths no longer match, or another input does not
            return setting(call, kind, name, new), ("error", [repr(name)] if len(call.inputs) > 1 else ["lengths"])
        return setting(call, kind, name, new), ("error", words(kind, name))
    if op == "drop axis" and a.ndim:
        new = np.take(a, 0, draw(st.sampled_from(range(a.ndim))))
    else:
        new = np.expand_dims(a, draw(st.integers(0, a.ndim)))
    changed = setting(call, kind, name, new)
    if accepted(m, kind, name, new.shape):
        return changed, ("same", changed)
    return changed, ("error", words(kind, name) + ["shape"])


def m_dtypes(draw, m, call, method):
    kind, name = draw(st.sampled_from(targets(m, call)))
    a = np.asarray(where(call, kind)[name])
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    to = draw(st.sampled_from(["int", "uint8", "bool", "float32", "float16", "complex", "complex zero", "object",
                               "text", "list", "ragged", "None"]))
    note(f"as {to}")
    if to in ("int", "uint8", "bool"):
        new = {"int": rng.integers(-3, 4, a.shape), "uint8": rng.integers(0, 4, a.shape).astype(np.uint8),
               "bool": rng.integers(0, 2, a.shape).astype(bool)}[to]
        return setting(call, kind, name, new), ("same", setting(call, kind, name, new.astype(np.float64)))
    if to in ("float32", "float16", "list"):
        return setting(call, kind, name, a.tolist() if to == "list" else a.astype(to)), ("same", call)
    if to == "complex":
        return setting(call, kind, name, a + 1j), ("error", words(kind, name) + ["complex"])
    if to in ("complex zero", "object"):
        new = a.astype(complex) if to == "complex zero" else a.astype(object)
        return setting(call, kind, name, new), ("either", words(kind, name), call)
    bad = {"text": a.astype(str), "ragged": [[1.0, 2.0], [3.0]], "None": None}[to]
    return setting(call, kind, name, bad), ("error", words(kind, name))


def m_layouts(draw, m, call, method):
    kind, name = draw(st.sampled_from(targets(m, call)))
    a = np.asarray(where(call, kind)[name])
    how = draw(st.sampled_from(["fortran", "strided", "reversed", "read-only", "broadcast", "scalar"]))
    note(f"as {how}")
    if how == "scalar" or not a.ndim:   # a scalar as a Python float, a NumPy scalar or int
        if a.ndim:
            return setting(call, kind, name, a.astype(np.float32)), ("same", call)
        new = draw(st.sampled_from([float(a), np.float32(a), np.array(a), np.float64(a)]))
        return setting(call, kind, name, new), ("same", call)
    axis = draw(st.sampled_from(range(a.ndim)))
    if how == "fortran":
        new = np.asfortranarray(a)
    elif how == "strided":
        new = np.repeat(a, 2, axis)[(slice(None),) * axis + (slice(None, None, 2),)]   # every other row
    elif how == "reversed":
        new = np.flip(np.flip(a, axis).copy(), axis)
    elif how == "read-only":
        new = a.copy()
        new.flags.writeable = False
    else:   # every row the first one, as a view with a zero stride
        new = np.broadcast_to(np.take(a, [0], axis), a.shape)
        return setting(call, kind, name, new), ("same", setting(call, kind, name, np.array(new)))
    assert np.array_equal(new, a)
    return setting(call, kind, name, new), ("same", call)


def m_nonfinite(draw, m, call, method):
    kind, name = draw(st.sampled_from(targets(m, call)))
    a = np.array(where(call, kind)[name], np.float64)
    value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    index = tuple(draw(st.integers(0, n - 1)) for n in a.shape)
    a[index] = value
    changed = setting(call, kind, name, a)
    if kind == "input" and index[0] >= call.lengths[index[1]]:
        return changed, ("same", call)   # past the sequence's end: padding, never read
    return changed, ("error", words(kind, name) + [f"contains {value} at index {index}"])


def m_lengths(draw, m, call, method):
    lengths, T, B = call.lengths, next(iter(call.inputs.values())).shape[0], len(call.lengths)
    b = draw(st.integers(0, B - 1))
    how = draw(st.sampled_from(["floats", "list", "uint8", "int8", "fraction", "negative", "zero", "too long",
                                "count", "nan", "inf", "2-D", "bool", "text", "huge", "object"]))
    note(f"lengths {how}")
    if how in ("floats", "list", "uint8", "int8"):
        new = lengths.tolist() if how == "list" else lengths.astype({"floats": float}.get(how, how))
        return replace(call, lengths=new), ("same", call)
    if how in ("bool", "object"):
        new = np.ones(B, bool) if how == "bool" else lengths.astype(object)
        return replace(call, lengths=new), ("either", ["lengths"], replace(call, lengths=np.asarray(new, np.int64)))
    new = lengths.astype(float if how in ("fraction", "nan", "inf") else np.int64)
    if how == "count":
        new = np.append(new, 1) if draw(st.booleans()) or B == 1 else new[1:]
        return replace(call, lengths=new), ("error", [f"lengths has shape ({len(new)},); expected ({B},)"])
    if how in ("2-D", "text", "huge"):
        new = {"2-D": new[:, None], "text": new.astype(str), "huge": np.full(B, 2 ** 63, np.uint64)}[how]
        return replace(call, lengths=new), ("error", ["lengths"])
    new[b] = {"fraction": new[b] - 0.5, "negative": -draw(st.integers(1, 10 ** 12)), "zero": 0,
              "too long": T + draw(st.integers(1, 10 ** 12)), "nan": np.nan, "inf": draw(st.sampled_from([1, -1])) * np.inf}[how]
    if how in ("fraction", "nan"):
        return replace(call, lengths=new), ("error", ["lengths must be integers"])
    return replace(call, lengths=new), ("error", [f"lengths[{b}] = {new[b]} is outside 1..{T}"])


FAMILIES = {"names": m_names, "containers": m_containers, "shapes": m_shapes, "dtypes": m_dtypes,
            "layouts": m_layouts, "non-finite values": m_nonfinite, "lengths": m_lengths}


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_call_with_one_thing_wrong_is_refused_in_its_terms_or_answered_as_the_clean_one(models, family, data):
    m = data.draw(st.sampled_from(models), label="model")
    method = data.draw(st.sampled_from(["forward", "loss_and_grad"]), label="method")
    call, expect = FAMILIES[family](data.draw, m, clean(m), method)
    got = outcome(m, method, call)
    note(f"{m.name}.{method}: {got[0]} {got[1] if got[0] == 'error' else ''}")
    if expect[0] == "error" or (expect[0] == "either" and got[0] == "error"):
        assert got[0] == "error", f"answered where an error naming {expect[1]} was due"
        missing = [w for w in expect[1] if w not in got[1]]
        assert not missing, f"the message does not name {missing}: {got[1]}"
    else:
        want = outcome(m, method, expect[-1])
        assert want[0] == "ok"
        assert same(got, want), "another answer than the clean call's"
