"""Read-only, WAL-safe access to a host's SQLite store, and a cheap change stamp.

* Opened through a ``file:…?mode=ro`` URI: never ``immutable=1``, which skips the
  WAL and so misses everything a live host has not checkpointed yet (the
  reference's Hermes reader has that defect).
* Autocommit (``isolation_level=None``) and short statements: a reader in WAL
  mode never blocks the host's writers, and not holding one long transaction
  lets the host checkpoint while a long scan runs.
* ``PRAGMA query_only`` as a second guard against an accidental write.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from token_optimizer.sqlite_util import ro_uri

Stamp = tuple[int, ...]


def connect_ro(path: str | os.PathLike[str], *, busy_timeout_ms: int = 2000) -> sqlite3.Connection:
    """A read-only connection to ``path`` (raises ``sqlite3.Error`` when it cannot be opened)."""
    con = sqlite3.connect(ro_uri(path), uri=True, isolation_level=None, check_same_thread=False,
                          timeout=busy_timeout_ms / 1000)
    try:
        con.execute("PRAGMA query_only = 1")
        con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except sqlite3.Error:
        con.close()
        raise
    return con


def table_columns(con: sqlite3.Connection, table: str) -> set[str]:
    """Column names of ``table`` (empty when it does not exist)."""
    try:
        rows = con.execute(f'PRAGMA table_info("{table}")').fetchall()
    except sqlite3.Error:
        return set()
    return {str(r[1]) for r in rows}


def store_stamp(path: str | os.PathLike[str], *, inode: bool = False) -> Stamp | None:
    """(size, mtime_ns) of the db file and of its ``-wal``: unchanged means nothing new.

    Any commit changes the WAL (or, after a checkpoint, the db file), so equal
    stamps let a warm re-scan skip opening the store at all. ``inode`` adds the db
    file's inode (a store replaced by another file of the same size and mtime).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        wst = os.stat(os.fspath(path) + "-wal")
        # an empty WAL (e.g. just created by a reader) holds nothing: same as none
        wal = (wst.st_size, wst.st_mtime_ns) if wst.st_size > 0 else (0, 0)
    except OSError:
        wal = (0, 0)
    if inode:
        return (st.st_size, st.st_mtime_ns, wal[0], wal[1], st.st_ino)
    return (st.st_size, st.st_mtime_ns, wal[0], wal[1])


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a db plus its ``-wal`` and ``-shm`` (0 when missing)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(os.fspath(path) + suffix).st_size
    return total
