"""The incremental audit cache: ``<state root>/audit-cache.sqlite``.

One row per host store, holding its change stamp and everything needed to
continue reading it (per-session accumulator states and watermarks); and, per
legacy ``sessions`` dir, an index of its transcript files (name → size,
mtime_ns, figures) plus one raw blob of their finished JSON rows
(:meth:`AuditCache.put_bytes`). A second scan reads only what is new.

The cache is ours, not the host's: it is an ordinary SQLite file written in
one short transaction per scan. It is disposable: a missing, corrupt or
old-format cache only costs a cold scan.

Like the checkpoint index, it refuses to follow a symlink: when the state
root is a symlink (or not a directory), or the database or one of its
sidecars (``-wal``, ``-shm``, ``-journal``) is not a regular file, no cache
is used (one warning per process) and the scan runs cold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import orjson

from token_optimizer.fsutil import open_checked_dir

log = logging.getLogger("token_optimizer")

CACHE_FILE = "audit-cache.sqlite"
FORMAT = 1
_SIDECARS = ("", "-wal", "-shm", "-journal")

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(what: str, msg: str, *args: object) -> None:
    """``msg`` at warning level the first time ``what`` happens in this process, then debug."""
    with _warned_lock:
        first = what not in _warned
        _warned.add(what)
    log.log(logging.WARNING if first else logging.DEBUG, msg, *args)


def _usable(path: Path) -> bool:
    """The cache's directory is a real directory (created 0700 if missing, never through
    a symlink) and the database and its sidecars, where present, are regular files."""
    try:
        with open_checked_dir(path.parent, path.parent, create=True):
            pass
    except OSError as exc:
        _warn_once("dir", "[token-optimizer] audit cache not used (%s): %s", path.parent, exc)
        return False
    for suffix in _SIDECARS:
        p = path.with_name(path.name + suffix)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.debug("audit cache unavailable (%s): %s", p, exc)
            return False
        if not stat.S_ISREG(st.st_mode):
            _warn_once("file", "[token-optimizer] audit cache %s is not a regular file; not used", p)
            return False
    return True


BLOB_CHUNK = 1 << 20
"""Raw values larger than this are written in pieces of this size (SQLite's incremental
blob I/O), so a large one is not copied whole into a bound parameter first."""


class _Raw:
    __slots__ = ("raw",)

    def __init__(self, raw: bytes | bytearray) -> None:
        self.raw = raw


class AuditCache:
    """Key → JSON-able value, loaded lazily, written back with :meth:`flush`."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._con: sqlite3.Connection | None = None
        self._dirty: dict[str, Any] = {}
        self._deleted: set[str] = set()
        self._seen: set[str] = set()
        if self.path is not None:
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        if not _usable(self.path):
            self._con = None
            return
        try:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=5)
            con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            con.execute("CREATE TABLE IF NOT EXISTS sources (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            row = con.execute("SELECT v FROM meta WHERE k='format'").fetchone()
            if row is None or row[0] != str(FORMAT):
                con.execute("DELETE FROM sources")
                con.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (str(FORMAT),))
            self._con = con
        except (OSError, sqlite3.Error) as exc:
            log.debug("audit cache unavailable (%s): %s", self.path, exc)
            self._con = None

    @property
    def available(self) -> bool:
        """Whether there is a database behind this cache (else it only holds this run's puts)."""
        return self._con is not None

    def get(self, key: str) -> Any:
        self._seen.add(key)
        if key in self._deleted:
            return None
        if key in self._dirty:
            v = self._dirty[key]
            return None if isinstance(v, _Raw) else v
        if self._con is None:
            return None
        try:
            row = self._con.execute("SELECT value FROM sources WHERE key=?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        try:
            return orjson.loads(row[0])
        except orjson.JSONDecodeError:
            return None

    def put(self, key: str, value: Any) -> None:
        self._seen.add(key)
        self._deleted.discard(key)
        self._dirty[key] = value

    def delete(self, key: str) -> None:
        """Drop ``key`` (on :meth:`flush`)."""
        self._dirty.pop(key, None)
        self._deleted.add(key)

    def get_bytes(self, key: str) -> bytes | None:
        """A value stored with :meth:`put_bytes`, as it was given."""
        self._seen.add(key)
        if key in self._deleted:
            return None
        if key in self._dirty:
            v = self._dirty[key]
            return bytes(v.raw) if isinstance(v, _Raw) else None
        if self._con is None:
            return None
        try:
            row = self._con.execute("SELECT value FROM sources WHERE key=?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return bytes(row[0]) if row is not None and isinstance(row[0], bytes) else None

    def put_bytes(self, key: str, value: bytes | bytearray) -> None:
        """Keep ``value`` as it is (no JSON): for blobs read back whole, like cached output."""
        self._seen.add(key)
        self._deleted.discard(key)
        self._dirty[key] = _Raw(value)

    def keys(self) -> list[str]:
        if self._con is None:
            return list(self._dirty)
        try:
            return [str(r[0]) for r in self._con.execute("SELECT key FROM sources")]
        except sqlite3.Error:
            return list(self._dirty)

    def flush(self, *, prune_prefix: str | None = None) -> None:
        """Write changed entries; with ``prune_prefix``, drop unseen keys under it (vanished files)."""
        if self._con is None:
            self._dirty.clear()
            self._deleted.clear()
            return
        try:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                for k in self._deleted:
                    self._con.execute("DELETE FROM sources WHERE key=?", (k,))
                for k, v in self._dirty.items():
                    if isinstance(v, _Raw) and len(v.raw) > BLOB_CHUNK:
                        self._write_large(k, v.raw)
                        continue
                    self._con.execute("INSERT OR REPLACE INTO sources VALUES (?, ?)",
                                      (k, v.raw if isinstance(v, _Raw) else orjson.dumps(v)))
                if prune_prefix is not None:
                    for k in self.keys():
                        if k.startswith(prune_prefix) and k not in self._seen:
                            self._con.execute("DELETE FROM sources WHERE key=?", (k,))
                self._con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.debug("audit cache write failed: %s", exc)
        except TypeError as exc:  # orjson: a value that is not JSON-able (a bug upstream)
            _warn_once("encode", "[token-optimizer] audit cache not written: %s", exc)
        finally:
            self._dirty.clear()
            self._deleted.clear()

    def _write_large(self, key: str, raw: bytes | bytearray) -> None:
        assert self._con is not None
        self._con.execute("INSERT OR REPLACE INTO sources VALUES (?, zeroblob(?))", (key, len(raw)))
        row = self._con.execute("SELECT rowid FROM sources WHERE key=?", (key,)).fetchone()
        view = memoryview(raw)
        with self._con.blobopen("sources", "value", row[0]) as blob:
            for i in range(0, len(raw), BLOB_CHUNK):
                blob.write(view[i:i + BLOB_CHUNK])

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
