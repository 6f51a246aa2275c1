"""The disk cache survives faults: a damaged file (cut short, emptied, random bytes, a changed
byte, a folder in its place) is set aside with one warning and its code compiled again; an
unusable cache folder means compiling in memory, warned once; two processes filling one empty
cache at once both succeed; ``graphcomp cache info|clear`` show and empty it. Real files, real
Numba, real processes."""
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import graphcomp as gc
from graphcomp.backends.numba import cache
from graphcomp.cli import main

ROOT = Path(__file__).resolve().parent.parent
TEXT = textwrap.dedent('''
    from numba import njit


    @njit(cache=True)
    def f(x):
        return x * 3.25 + 1.0
''')
NAME = "graphcomp_test_cache_module"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch, tmp_path):
    """Each test has its own cache folder, and sees the warnings a new process would."""
    monkeypatch.setenv("GRAPHCOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GRAPHCOMP_CACHE", raising=False)
    cache._warned.clear()
    yield
    sys.modules.pop(NAME, None)


def imported():
    """The test module imported anew, as a new process imports it: its function compiled or
    loaded from the disk cache at the first call."""
    sys.modules.pop(NAME, None)
    module = cache.load(TEXT, NAME)
    assert module.f(2.0) == 7.5
    return module


def hits(module) -> int:
    return sum(module.f.stats.cache_hits.values())


def cut(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def noise(path):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def folder(path):
    path.unlink()
    path.mkdir()


DAMAGE = {   # Numba's index (.nbi) and machine code (.nbc) in __pycache__, the module beside it
    "nbc cut short": ("__pycache__/*.nbc", cut), "nbi cut short": ("__pycache__/*.nbi", cut),
    "nbi empty": ("__pycache__/*.nbi", lambda p: p.write_bytes(b"")), "nbc random bytes": ("__pycache__/*.nbc", noise),
    "nbc one byte changed": ("__pycache__/*.nbc", flip), "nbi one byte changed": ("__pycache__/*.nbi", flip),
    "nbi a folder": ("__pycache__/*.nbi", folder), "module cut short": ("*.py", cut), "module random bytes": ("*.py", noise),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_file_is_set_aside_and_its_code_compiled_again(kind):
    first = imported()
    assert hits(first) == 0
    where = cache.cache_dir()
    assert Path(first.__file__).parent == where
    pattern, damage = DAMAGE[kind]
    victims = list(where.glob(pattern))
    assert len(victims) == 1
    damage(victims[0])
    with pytest.warns(UserWarning) as caught:
        imported()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"the disk cache at {where} held a damaged file, {victims[0].name}" in message
    assert f"moved to {where / 'damaged'}" in message and "graphcomp cache clear" in message
    assert [p.name.endswith(victims[0].name) for p in (where / "damaged").iterdir()] == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # repaired: no warning, and the machine code comes from disk
        assert hits(imported()) == 1


def test_machine_code_numba_cannot_rebuild_is_compiled_again():
    """A data file whose checksum holds but whose content Numba cannot rebuild (written by
    something else): its index is set aside, and the code compiled and saved anew."""
    import hashlib
    import pickle
    imported()
    data = next((cache.cache_dir() / "__pycache__").glob("*.nbc"))
    payload = pickle.dumps(("not", "machine code"))
    data.write_bytes(cache.MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.warns(UserWarning, match=r"held a damaged file, .*\.nbi \(Numba could not load it: ") as caught:
        imported()
    assert len(caught) == 1
    assert hits(imported()) == 1


def test_many_damaged_files_warn_once_per_process():
    imported()
    for path in (cache.cache_dir() / "__pycache__").iterdir():
        cut(path)
    (cache.cache_dir() / f"{NAME}.py").write_bytes(b"\x00")
    with pytest.warns(UserWarning, match="held a damaged file") as caught:
        imported()
    assert len(caught) == 1
    aside = sorted(p.suffix for p in (cache.cache_dir() / "damaged").iterdir())
    assert aside == [".nbi", ".py"]   # the damaged index named no machine code: the new one overwrites it
    assert hits(imported()) == 1


@pytest.mark.parametrize("setting", ["a file", "under a read-only folder", "off"])
def test_without_a_usable_folder_code_is_compiled_in_memory(setting, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    place = {"a file": tmp_path / "file", "under a read-only folder": Path("/sys/graphcomp-test")}.get(setting)
    if place is None:
        monkeypatch.setenv("GRAPHCOMP_CACHE", "0")
    else:
        monkeypatch.setenv("GRAPHCOMP_CACHE_DIR", str(place))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = imported(), imported()
    assert hits(first) == hits(second) == 0   # compiled each time, never from disk
    assert Path(first.__file__).parent == cache.scratch()
    if place is None:
        assert caught == []   # turned off on purpose: nothing to say
    else:
        assert len(caught) == 1
        why = ["Not a directory"] if setting == "a file" else ["Operation not permitted", "Permission denied",
                                                                 "Read-only file system"]
        start = f"graphcomp: cannot use the cache folder {cache.cache_dir()} ("
        assert any(str(caught[0].message).startswith(start + w) for w in why), caught[0].message
        assert "compiled in memory" in str(caught[0].message) and "GRAPHCOMP_CACHE_DIR" in str(caught[0].message)


def test_an_unusable_home_folder_compiles_a_model_in_memory(tmp_path, monkeypatch):
    """The reported case: XDG_CACHE_HOME not a folder, then a home folder that cannot be written."""
    monkeypatch.delenv("GRAPHCOMP_CACHE_DIR")
    (tmp_path / "file").write_text("")
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a = sp.Symbol("a")
    data = {"x": np.ones((4, 2)), "y": np.zeros((4, 2))}
    for env, scale in (({"XDG_CACHE_HOME": str(tmp_path / "file")}, 0.375), ({"HOME": "/sys"}, 0.625)):
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        model = gc.Recurrence({s(t): a * s(t - 1) + scale * x(t)}, loss=(s(t) - y(t)) ** 2)   # not yet compiled
        with pytest.warns(UserWarning, match="cannot use the cache folder .* compiled in memory"):
            kernel = gc.compile(model)
        expected = gc.compile(model, backend="reference").loss_and_grad({"a": 0.5}, data)
        loss, grads = kernel.loss_and_grad({"a": 0.5}, data)
        assert loss == pytest.approx(expected[0], rel=1e-12) and grads["a"] == pytest.approx(expected[1]["a"], rel=1e-12)


t = gc.t
SCRIPT = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import numpy as np, sympy as sp, graphcomp as gc
    t = gc.t
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, c = sp.symbols("a c")
    model = gc.Recurrence({s(t): a * s(t - 1) + c * sp.tanh(x(t) + 0.0625)}, loss=(s(t) - y(t)) ** 2)
    go = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print("ready", flush=True)
    while go is not None and not go.exists():
        time.sleep(0.002)
    kernel = gc.compile(model)
    loss, grads = kernel.loss_and_grad({"a": 0.5, "c": 2.0}, {"x": np.linspace(-1, 1, 12).reshape(6, 2),
                                                               "y": np.ones((6, 2))})
    loops = sys.modules[kernel.impl.kernel("loss_and_grad").module].loss_and_grad_loops
    print(repr(float(loss)), repr(float(grads["a"])), repr(float(grads["c"])), sum(loops.stats.cache_hits.values()))
''')


def run(where, *args, wait=True):
    env = dict(os.environ, GRAPHCOMP_CACHE_DIR=str(where), PYTHONPATH=str(ROOT))
    env.pop("GRAPHCOMP_CACHE", None)
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return process
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    values = out.split()[1:]
    return values[:3], int(values[3]), err


def test_two_processes_fill_one_empty_cache_at_the_same_moment(tmp_path):
    where, go = tmp_path / "shared", tmp_path / "go"
    both = [run(where, go, wait=False) for _ in range(2)]
    assert [p.stdout.readline() for p in both] == ["ready\n"] * 2   # both imported graphcomp: start them
    go.touch()
    results = []
    for p in both:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "Warning" not in err, err
        results.append(out.split())
    assert results[0][:3] == results[1][:3] and results[0][3] == results[1][3] == "0"
    values, loaded, err = run(where)   # a third process finds the two's cache whole
    assert values == results[0][:3] and loaded >= 1 and err == ""


def test_a_new_process_rebuilds_a_cache_cut_short(tmp_path):
    """The reported case: every file of a model's cache cut short, as a full disk leaves them."""
    where = tmp_path / "cut"
    values, _, _ = run(where)
    files = [p for p in where.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for p in files:
        cut(p)
    again, loaded, err = run(where)
    assert again == values and loaded == 0
    assert err.count("UserWarning") == 1
    assert f"the disk cache at {where / cache.cache_dir().name} held a damaged file" in err
    assert run(where)[1:] == (1, "")   # repaired: loaded from disk, silently


def test_cache_info_and_clear(tmp_path, capsys):
    imported()
    where = cache.cache_dir()
    mine = tmp_path / "cache" / "notes.txt"   # a file of the user's in the folder they chose
    mine.write_text("keep me")
    stale = tmp_path / "cache" / "numba-0.1.0-v2"
    stale.mkdir()
    (stale / "graphcomp_loops_old.py").write_text("x = 1\n")
    size = sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"graphcomp cache: {tmp_path / 'cache'}" in out
    assert f"{where.name}: 1 entry, 3 files, {size} bytes, in use" in out
    assert "numba-0.1.0-v2: 1 entry, 1 file, 6 bytes" in out
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out == f"graphcomp: removed 4 files ({size + 6} bytes) from {tmp_path / 'cache'}\n"
    assert not where.exists() and not stale.exists() and mine.read_text() == "keep me"
    assert main(["cache", "info"]) == 0
    assert "empty" in capsys.readouterr().out
    assert hits(imported()) == 0   # the next use fills it again


def test_cache_info_on_the_command_line_says_when_caching_is_off(tmp_path):
    env = dict(os.environ, GRAPHCOMP_CACHE_DIR=str(tmp_path), GRAPHCOMP_CACHE="0", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "graphcomp", "cache", "info"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [f"graphcomp cache: {tmp_path}",
                                         "  off: GRAPHCOMP_CACHE=0 (kernels are compiled in memory)"]
