"""The checkpoint file: an ``.npz`` archive (a JSON ``meta`` and named float64 arrays) whose
zip comment is the SHA-256 of every byte before it. Written to a temporary file, flushed and
synced to disk, renamed over the old one and the folder synced, so that a crash or a power cut
leaves the old checkpoint or the new one, whole. Read back, every way a file can be wrong
(missing, empty, cut short, random bytes, a changed byte, not a checkpoint, a newer format)
is a GraphcompError that says which; the trainer then checks what it holds against its model."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import GraphcompError

VERSION = 2          # 1: no checksum and no fit progress (graphcomp before it had these)
KIND = "graphcomp checkpoint"
DIGEST = 64          # hex characters of the SHA-256 in the zip comment
END = b"PK\x05\x06"  # the zip archive's last record: 22 bytes, then the comment


def write(path, meta: dict, arrays: dict) -> Path:
    """Write ``meta`` (JSON) and ``arrays`` to ``path`` atomically and durably."""
    path = Path(path)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps({"kind": KIND, "version": VERSION, **meta})), **arrays)
    data = bytearray(buffer.getvalue())
    assert data[-22:-18] == END and data[-2:] == b"\0\0", "np.savez wrote an archive with a comment"
    data[-2:] = DIGEST.to_bytes(2, "little")   # the comment's length, then the comment: the digest
    data += hashlib.sha256(data).hexdigest().encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise GraphcompError(f"could not write the checkpoint {path} ({e.strerror or e}): check that its folder "
                             "exists and can be written and that the disk has room; the previous checkpoint, if "
                             "any, is unchanged") from None
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make the rename durable: sync the folder's entry list (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # Windows cannot open a folder; its renames are durable without it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path) -> tuple[dict, dict]:
    """The ``meta`` and arrays of a checkpoint, after checking that the file is whole."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GraphcompError(f"there is no checkpoint at {path}") from None
    except IsADirectoryError:
        raise GraphcompError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as e:
        raise GraphcompError(f"the checkpoint {path} cannot be read: {e.strerror or e}") from None
    _check_whole(path, data)
    try:
        with np.load(io.BytesIO(data)) as f:
            meta = json.loads(str(f["meta"])) if "meta" in f.files else None
            arrays = {k: f[k] for k in f.files if k != "meta"}
    except Exception as e:   # checksummed yet unreadable: not written by Trainer.save
        raise GraphcompError(f"{path} is not a graphcomp checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise GraphcompError(f"{path} is not a graphcomp checkpoint: it has no graphcomp 'meta' field")
    version = meta.get("version")
    if not isinstance(version, int):
        raise GraphcompError(f"{path} lacks its format version: it was not written whole by Trainer.save")
    if version > VERSION:
        raise GraphcompError(f"{path} was written by a newer graphcomp (checkpoint format {version}; this one reads "
                             f"format {VERSION}): upgrade graphcomp to load it")
    return meta, arrays


def _check_whole(path: Path, data: bytes) -> None:
    """The file ends with the digest of everything before it, or a GraphcompError says how it
    is wrong: empty, not an archive, cut short, without a checksum, or changed."""
    if not data:
        raise GraphcompError(f"{path} is empty (0 bytes): it holds no checkpoint; use another one or start over")
    ending = data[-DIGEST - 22:-DIGEST]
    if ending[:4] == END and ending[-2:] == DIGEST.to_bytes(2, "little"):
        if hashlib.sha256(data[:-DIGEST]).hexdigest().encode() != data[-DIGEST:]:
            raise GraphcompError(f"{path} is damaged: its contents do not match the checksum saved with them (a "
                                 "byte changed on disk or in a copy); use another checkpoint or start over")
        return
    if not data.startswith(b"PK\x03\x04"):
        raise GraphcompError(f"{path} is not a graphcomp checkpoint: it is not an .npz archive")
    if data[-22:-18] == END and data[-2:] == b"\0\0":
        raise GraphcompError(f"{path} has no checksum: it is an .npz archive, but not a checkpoint written by "
                             f"Trainer.save of this graphcomp (format {VERSION})")
    raise GraphcompError(f"{path} is cut short or damaged: its {len(data)} bytes do not end with the checksum "
                         "Trainer.save writes last (a copy or a write was interrupted); use another checkpoint "
                         "or start over")
