"""The documentation runs: every python block of the README and of docs/guide.md, in order,
and every example script."""
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def blocks(path: Path) -> list:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/guide.md"])
def test_code_blocks_run(doc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)      # files a block writes land in a scratch folder
    code = blocks(ROOT / doc)
    assert code, f"{doc} has no python blocks"
    namespace = {"__name__": "__doc_test__"}
    for i, block in enumerate(code):
        exec(compile(block, f"{doc} block {i + 1}", "exec"), namespace)
    assert capsys.readouterr().out   # the blocks show their results


def test_readme_quick_start_prints_what_it_says():
    code = blocks(ROOT / "README.md")[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "['s'] ['x', 'y'] ['a', 'b', 'c']"
    assert "∇s(t + 3)" in out


@pytest.mark.parametrize("script, expect", [
    ("examples/tour.py", ["fitted", "unfolded DAG"]),
])
def test_examples_run(script, expect, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / script)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    for text in expect:
        assert text in r.stdout
