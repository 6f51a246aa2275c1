"""The disk cache of compiled kernels. Generated modules are written to one folder and
imported from there, so that Numba caches their machine code beside them (``__pycache__``).
Every file Numba writes there carries a checksum: a file that is cut short, overwritten or
changed (a full disk, a killed process, a bad copy) is moved to ``damaged/`` and its code
compiled again, with one warning, instead of failing in every later process or running
wrong machine code. Where no folder can be used, modules are imported from a temporary
folder and compiled in memory (warned once).

``GRAPHCOMP_CACHE_DIR`` chooses the folder (default ``$XDG_CACHE_HOME/graphcomp``, else
``~/.cache/graphcomp``); ``GRAPHCOMP_CACHE=0`` turns the disk cache off. ``graphcomp cache
info`` and ``graphcomp cache clear`` show and empty it."""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numba
from numba.core.caching import FunctionCache, IndexDataCacheFile, NullCache
from numba.core.dispatcher import Dispatcher

from ...errors import GraphcompError

FORMAT = 2                                   # the layout of the files; a new one gets a new folder
MAGIC = f"graphcomp cache {FORMAT}\n".encode()
HEAD = len(MAGIC) + 32                       # MAGIC, then the SHA-256 of the payload
OFF = ("0", "off", "false", "no")

_lock = threading.Lock()
_usable: dict = {}                           # folder -> None, or why it cannot be used
_warned: set = set()
_scratch: list = []                          # the temporary folder of in-memory modules


# ---------------------------------------------------------------- where

def root() -> Path:
    """The folder graphcomp keeps its caches in: ``GRAPHCOMP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/graphcomp``, else ``~/.cache/graphcomp``."""
    given = os.environ.get("GRAPHCOMP_CACHE_DIR")
    if given:
        return Path(given).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "graphcomp"


def cache_dir() -> Path:
    """The folder of this Numba version's compiled code (machine code is only valid for it)."""
    return root() / f"numba-{numba.__version__}-v{FORMAT}"


def enabled() -> bool:
    """Whether compiled code is cached on disk (``GRAPHCOMP_CACHE=0`` turns it off)."""
    return os.environ.get("GRAPHCOMP_CACHE", "1").strip().lower() not in OFF


def folder() -> Path | None:
    """The cache folder to write to, or None to compile in memory: caching is off, or no
    folder can be used (then a warning, once per folder, says why and what to do)."""
    if not enabled():
        return None
    try:
        where = cache_dir()
    except RuntimeError as e:   # no home folder to find ~/.cache in
        where, why = Path("~/.cache/graphcomp"), str(e)
    else:
        if where not in _usable:
            _usable[where] = _unusable(where)
        why = _usable[where]
    if why is None:
        return where
    _warn_once(("folder", where), f"graphcomp: cannot use the cache folder {where} ({why}), so kernels are "
               "compiled in memory and every new process compiles them again. Set GRAPHCOMP_CACHE_DIR to a "
               "writable folder, or GRAPHCOMP_CACHE=0 to turn the disk cache off.")
    return None


def _unusable(where: Path) -> str | None:
    """Why ``where`` (and its ``__pycache__``, where Numba writes) cannot be written, or None."""
    try:
        for d in (where, where / "__pycache__"):
            d.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        return _reason(e)
    return None


def _reason(e: OSError) -> str:
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)


def scratch() -> Path:
    """A temporary folder for the modules of in-memory compiles, removed at exit."""
    if not _scratch:
        try:
            _scratch.append(Path(tempfile.mkdtemp(prefix="graphcomp-")))
        except OSError as e:
            raise GraphcompError(f"graphcomp found no folder to write its generated code to ({_reason(e)}): set "
                                 "GRAPHCOMP_CACHE_DIR or TMPDIR to a writable folder") from None
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


# ---------------------------------------------------------------- loading a module

def load(text: str, name: str | None = None):
    """Import generated source as a module: from the cache folder (written once, atomically;
    a file there that differs from ``text`` is set aside and rewritten), or, without a usable
    folder, from a temporary one with Numba's caching off. Its name is ``name``, or one
    derived from a hash of the text; it is imported by that name, never through sys.path."""
    name = name or f"graphcomp_loops_{hashlib.sha256(text.encode()).hexdigest()[:20]}"
    with _lock:
        if name in sys.modules:
            return sys.modules[name]
        where = folder()
        path = _write(where, name, text) if where is not None else None
        cached = path is not None
        if path is None:
            path = scratch() / f"{name}.py"
            path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        # compiled from the text itself: no .pyc is written or read, so none can be damaged
        exec(compile(text, str(path), "exec"), module.__dict__)
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and value.py_func.__module__ == name:
                value._cache = _Cache(value.py_func) if cached else NullCache()
        sys.modules[name] = module
        return module


def _write(where: Path, name: str, text: str) -> Path | None:
    """``where/name.py`` holding ``text``; None (warned once) if it cannot be written."""
    path, data = where / f"{name}.py", text.encode()
    try:
        if path.read_bytes() == data:
            return path
        _damaged(path, "its text is not the generated source")
    except FileNotFoundError:
        pass
    except OSError as e:
        _damaged(path, f"it cannot be read: {_reason(e)}")
    tmp = where / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        where.mkdir(parents=True, exist_ok=True)   # again: `graphcomp cache clear` may have run meanwhile
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _warn_once(("write", where), f"graphcomp: cannot write to the cache folder {where} ({_reason(e)}); "
                   "compiling in memory. Free some space, or set GRAPHCOMP_CACHE_DIR to another folder.")
        return None
    return path


def _damaged(path: Path, why: str) -> None:
    """Move a damaged file of the cache into its ``damaged`` folder (out of the way, kept for
    a look), and warn once per process."""
    path = Path(path)
    base = path.parent.parent if path.parent.name == "__pycache__" else path.parent
    aside = base / "damaged"
    try:
        aside.mkdir(exist_ok=True)
        os.replace(path, aside / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{path.name}")
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
    _warn_once(("damaged", base), f"graphcomp: the disk cache at {base} held a damaged file, {path.name} ({why}); "
               f"it was moved to {aside} and its code is compiled again. `graphcomp cache clear` empties the cache.")


# ---------------------------------------------------------------- Numba's files, checksummed

class _File(IndexDataCacheFile):
    """Numba's index and data files, each written as MAGIC, the SHA-256 of Numba's bytes, the
    bytes. One that is missing reads as a cache miss; one that fails its checksum or does not
    unpickle is set aside and reads as a miss, so that the code is compiled and saved again."""

    def _read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            _damaged(path, f"it cannot be read: {_reason(e)}")
            return None
        if data[:len(MAGIC)] != MAGIC or hashlib.sha256(data[HEAD:]).digest() != data[len(MAGIC):HEAD]:
            _damaged(path, "it is empty" if not data else f"cut short or changed: {len(data)} bytes that do not "
                     "match their checksum")
            return None
        return data[HEAD:]

    def _load_index(self):
        payload = self._read(self._index_path)
        if payload is None:
            return {}
        try:
            stream = io.BytesIO(payload)
            if pickle.load(stream) != self._version:
                return {}
            stamp, overloads = pickle.loads(stream.read())
        except Exception as e:   # checksummed yet unreadable: written by something else
            _damaged(self._index_path, f"it does not unpickle: {type(e).__name__}")
            return {}
        return overloads if stamp == self._source_stamp else {}

    def _load_data(self, name):
        path = self._data_path(name)
        payload = self._read(path)
        if payload is None:
            return None
        try:
            return pickle.loads(payload)
        except Exception as e:
            _damaged(path, f"it does not unpickle: {type(e).__name__}")
            return None

    @contextlib.contextmanager
    def _open_for_write(self, filepath):
        buffer = io.BytesIO()
        yield buffer
        payload = buffer.getvalue()
        with super()._open_for_write(filepath) as f:   # a temporary file, then a rename
            f.write(MAGIC + hashlib.sha256(payload).digest() + payload)


class _Cache(FunctionCache):
    """Numba's cache of one function over checksummed files. Code that cannot be loaded from
    it is compiled instead; code that cannot be saved (a full disk) runs uncached."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file.__class__ = _File

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as e:   # e.g. machine code Numba cannot rebuild
            _damaged(self._cache_file._index_path, f"Numba could not load it: {type(e).__name__}: {e}")
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except OSError as e:
            where = Path(self._cache_path).parent
            _warn_once(("write", where), f"graphcomp: cannot write compiled code to the cache folder {where} "
                       f"({_reason(e)}); it runs, but the next process compiles it again. Free some space, "
                       "or set GRAPHCOMP_CACHE_DIR to another folder.")


# ---------------------------------------------------------------- graphcomp cache info | clear

def _folders() -> list:
    """Every Numba version's folder in the cache root (only these are graphcomp's to remove)."""
    base = root()
    return sorted(p for p in base.glob("numba-*") if p.is_dir()) if base.is_dir() else []


def info() -> dict:
    """Where the cache is and what it holds: per Numba version's folder, its entries
    (generated modules), files and bytes, and the damaged files set aside."""
    out = {"root": str(root()), "enabled": enabled(), "current": str(cache_dir()), "folders": []}
    for d in _folders():
        files = [f for f in d.rglob("*") if f.is_file()]
        out["folders"].append({"path": str(d), "entries": len(list(d.glob("graphcomp_*.py"))), "files": len(files),
                               "bytes": sum(f.stat().st_size for f in files),
                               "damaged": len(list((d / "damaged").glob("*")))})
    return out


def clear() -> tuple[int, int]:
    """Remove every Numba version's folder from the cache root; returns the files and bytes
    removed. Other files in the root (a folder the user chose) are left alone."""
    files = size = 0
    for d in _folders():
        for f in d.rglob("*"):
            if f.is_file():
                files, size = files + 1, size + f.stat().st_size
        shutil.rmtree(d)
    _usable.clear()
    return files, size
