"""The command line: ``graphcomp draw FILE.py:NAME --kind circuit -o out.svg`` draws a model;
``graphcomp cache info`` and ``graphcomp cache clear`` show and empty the disk cache."""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import graphviz

from .views.draw import KINDS
from .errors import GraphcompError
from .lang.recurrence import Recurrence

FORMATS = ("svg", "png", "pdf", "dot")
EXAMPLE = "examples/system_id.py:lotka_volterra"   # a function returning a model, run from the repository


def load(target: str) -> Recurrence:
    """The ``Recurrence`` called NAME in FILE.py (or returned by a function NAME())."""
    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise GraphcompError(f"{target!r}: give the model as FILE.py:NAME, e.g. {EXAMPLE}")
    file = Path(path)
    if not file.is_file():
        raise GraphcompError(f"no such file: {path}")
    try:
        namespace = runpy.run_path(str(file), run_name="__graphcomp_draw__")
    except GraphcompError:
        raise
    except Exception as e:
        raise GraphcompError(f"running {path} failed: {type(e).__name__}: {e}") from None
    if name not in namespace:
        found = sorted(k for k, v in namespace.items() if isinstance(v, Recurrence) or
                       (callable(v) and getattr(v, "__module__", None) == "__graphcomp_draw__"))
        raise GraphcompError(f"{path} defines no {name!r}; it defines: {', '.join(found) or 'no models'}")
    obj = namespace[name]
    if callable(obj) and not isinstance(obj, Recurrence):
        try:
            obj = obj()
        except TypeError as e:
            raise GraphcompError(f"{name}() in {path} must be callable with no arguments: {e}") from None
    if not isinstance(obj, Recurrence):
        raise GraphcompError(f"{name} in {path} is a {type(obj).__name__}, not a gc.Recurrence "
                             "(or a function returning one)")
    return obj


def draw(args) -> int:
    model = load(args.model)
    out = Path(args.output)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise GraphcompError(f"cannot tell the format from {out.name!r}: end the file name in "
                             + ", ".join("." + f for f in FORMATS))
    graph = model.draw(args.kind, steps=args.steps, max_columns=args.max_columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        out.write_text(graph.source)
        return 0
    try:
        out.write_bytes(graph.pipe(format=fmt))
    except graphviz.ExecutableNotFound:
        dot = out.with_suffix(".dot")
        dot.write_text(graph.source)
        print(f"graphcomp: graphviz's `dot` program was not found, so {out} was not rendered.\n"
              f"The diagram's source is in {dot}. Install graphviz (Debian/Ubuntu: apt-get install "
              f"graphviz; macOS: brew install graphviz; conda: conda install graphviz), then run\n"
              f"  dot -T{fmt} {dot} -o {out}", file=sys.stderr)
        return 1
    return 0


def _count(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def _bytes(n: int) -> str:
    return f"{n} bytes" + (f" ({n / 2 ** 20:.1f} MB)" if n >= 2 ** 20 else "")


def cache(args) -> int:
    """``info``: where the disk cache is, and per Numba version its entries, files and bytes;
    ``clear``: remove them."""
    from .backends.numba import cache as disk
    if args.action == "clear":
        try:
            files, size = disk.clear()
        except OSError as e:
            raise GraphcompError(f"could not clear the cache at {disk.root()}: {e}") from None
        print(f"graphcomp: removed {_count(files, 'file')} ({_bytes(size)}) from {disk.root()}")
        return 0
    found = disk.info()
    print(f"graphcomp cache: {found['root']}")
    if not found["enabled"]:
        print("  off: GRAPHCOMP_CACHE=0 (kernels are compiled in memory)")
    for f in found["folders"]:
        mine = ", in use" if f["path"] == found["current"] else ""
        print(f"  {Path(f['path']).name}: {_count(f['entries'], 'entry', 'entries')}, {_count(f['files'], 'file')}, "
              f"{_bytes(f['bytes'])}{mine}")
        if f["damaged"]:
            print(f"    {_count(f['damaged'], 'damaged file')} set aside in {Path(f['path']) / 'damaged'}")
    if not found["folders"]:
        print("  empty")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphcomp", description="graphcomp: a compiler for recurrences")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draw", help="draw a model's diagram to a file",
                       description="Draw the diagram of a gc.Recurrence defined in a Python file.")
    d.add_argument("model", metavar="FILE.py:NAME", help="a Recurrence (or a function returning one) in a file")
    d.add_argument("--kind", choices=KINDS, default="circuit", help="which diagram (default: circuit)")
    d.add_argument("--steps", type=int, default=None, help="steps to unfold (unfolded, gradient; default 3)")
    d.add_argument("--max-columns", type=int, default=6, help="steps drawn before the middle ones are elided")
    d.add_argument("-o", "--output", required=True, help="output file: .svg, .png, .pdf or .dot")
    c = sub.add_parser("cache", help="show or empty the disk cache of compiled kernels",
                       description="The disk cache of compiled kernels: GRAPHCOMP_CACHE_DIR moves it, "
                                   "GRAPHCOMP_CACHE=0 turns it off.")
    c.add_argument("action", choices=("info", "clear"), help="info: where it is and what it holds; clear: empty it")
    args = parser.parse_args(argv)
    try:
        return draw(args) if args.command == "draw" else cache(args)
    except GraphcompError as e:
        print(f"graphcomp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
