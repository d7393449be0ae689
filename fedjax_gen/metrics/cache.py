"""Scoring's on-disk cache: one flat file per entry, named by a hash of its content.

  cache_dir() -> Path                         $FEDJAX_GEN_CACHE, else ~/.cache/fedjax_gen
  fingerprint(*arrays, extra=...) -> str      sha256 of the arrays' shapes, dtypes and bytes, and repr(extra)
  entry(kind, key, suffix) -> Path            cache_dir()/<kind>-<key><suffix>
  read(path, decode) -> value | None          None when absent; a warning and None when unreadable
  write(path, data: bytes)                    atomic (a temporary file renamed into place)

Entries are keyed by what they were computed from (the real split's images and labels, the
recipe, the code's format version), never by a dataset's name or path: a file regenerated at
the same path gets a new entry, and `npz:/some/path` is no folder. Two runs that compute the
same entry at once each write a complete temporary file and rename it; the last rename wins
and both files hold the same value (the computation is deterministic), so a reader sees one
whole file or none.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import warnings

import numpy as np


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("FEDJAX_GEN_CACHE", "~/.cache/fedjax_gen")).expanduser()


def fingerprint(*arrays, extra=()) -> str:
    h = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(memoryview(arr).cast("B"))
    h.update(repr(extra).encode())
    return h.hexdigest()[:32]


def entry(kind: str, key: str, suffix: str, directory=None) -> pathlib.Path:
    return pathlib.Path(directory or cache_dir()) / f"{kind}-{key}{suffix}"


def read(path: pathlib.Path, decode):
    """decode(bytes) for an existing entry; None if absent, or (with a warning) unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode(data)
    except Exception as e:  # corrupt / truncated / stale: the caller recomputes and rewrites
        warnings.warn(f"ignoring unreadable cache entry {path}: {e!r}; recomputing")
        return None


def write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
