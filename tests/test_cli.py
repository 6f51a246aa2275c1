"""graphcomp draw FILE.py:NAME --kind ... -o OUT."""
import os
import subprocess
import sys
import textwrap

import pytest

from graphcomp.cli import main

MODEL = textwrap.dedent('''
    import sympy as sp, graphcomp as gc
    t = gc.t
    s, x = sp.Function("s"), sp.Function("x")
    a, b = sp.symbols("a b")
    model = gc.Recurrence({s(t): a*s(t-1) + b*x(t)})
    def make():
        return model
    number = 3
''')


@pytest.fixture
def file(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(MODEL)
    return f


@pytest.mark.parametrize("name", ["model", "make"])
def test_draws_a_model_or_a_function_returning_one(file, tmp_path, name):
    out = tmp_path / "c.svg"
    assert main(["draw", f"{file}:{name}", "-o", str(out)]) == 0
    assert "</svg>" in out.read_text()


def test_kinds_steps_and_formats(file, tmp_path):
    for kind, ext in (("unfolded", "png"), ("gradient", "pdf"), ("step", "dot")):
        out = tmp_path / f"d.{ext}"
        assert main(["draw", f"{file}:model", "--kind", kind, "--steps", "9", "-o", str(out)]) == 0
        assert out.stat().st_size > 100
    assert "digraph" in (tmp_path / "d.dot").read_text()


@pytest.mark.parametrize("target, message", [
    ("{file}:nope", "defines no 'nope'; it defines: make, model"),
    ("{file}:number", "number in .* is a int, not a gc.Recurrence"),
    ("{dir}/missing.py:model", "no such file"),
    ("{file}", "give the model as FILE.py:NAME"),
])
def test_errors(file, tmp_path, capsys, target, message):
    import re
    code = main(["draw", target.format(file=file, dir=tmp_path), "-o", str(tmp_path / "x.svg")])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_unknown_format(file, tmp_path, capsys):
    assert main(["draw", f"{file}:model", "-o", str(tmp_path / "x.jpeg")]) == 2
    assert "end the file name in .svg, .png, .pdf, .dot" in capsys.readouterr().err


def test_missing_dot_writes_the_source(file, tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))   # no dot on this PATH
    out = tmp_path / "c.svg"
    r = subprocess.run([sys.executable, "-m", "graphcomp", "draw", f"{file}:model", "-o", str(out)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "`dot` program was not found" in r.stderr and "apt-get install graphviz" in r.stderr
    assert not out.exists() and "digraph" in (tmp_path / "c.dot").read_text()


def test_the_suggested_example_exists_and_draws(tmp_path, capsys, monkeypatch):
    import re
    from pathlib import Path
    assert main(["draw", "model.py", "-o", str(tmp_path / "x.svg")]) == 2
    suggested = re.search(r"e\.g\. (\S+)$", capsys.readouterr().err.strip()).group(1)
    assert suggested == "examples/system_id.py:lotka_volterra"
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)   # the path is the repository's
    out = tmp_path / "lv.svg"
    assert main(["draw", suggested, "-o", str(out)]) == 0
    assert "</svg>" in out.read_text()
