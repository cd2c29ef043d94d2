"""What the two SQLite stores under the state root share (the session and checkpoint indexes)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path


def ro_uri(path: str | os.PathLike[str]) -> str:
    """A ``file:`` URI opening ``path`` read-only (the path percent-encoded, so ``?``/``#``/``%``
    in a directory name cannot change what is opened)."""
    return "file:" + urllib.parse.quote(str(Path(path).absolute()), safe="/:") + "?mode=ro"


def encodable(*values: str | None) -> bool:
    """Whether every non-``None`` value is valid UTF-8 text (SQLite cannot bind surrogate
    escapes, which undecodable file names and bad host ids carry)."""
    for v in values:
        if v is not None:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def is_busy(err: BaseException) -> bool:
    """Another process holds the database: retry later rather than rebuild it."""
    msg = str(err).lower()
    return isinstance(err, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


@contextlib.contextmanager
def _undone_on_error(conn: sqlite3.Connection, begin: str, end: str,
                     undo: tuple[str, ...]) -> Iterator[sqlite3.Connection]:
    conn.execute(begin)
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            for stmt in undo:
                conn.execute(stmt)
        raise
    conn.execute(end)


def immediate_tx(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    """One write transaction taken up front (``BEGIN IMMEDIATE``), so two processes
    never both read and then fail to upgrade; rolled back on any error."""
    return _undone_on_error(conn, "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",))


def savepoint(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    """A part of the open transaction that an error undoes alone (the rest goes on)."""
    return _undone_on_error(conn, "SAVEPOINT part", "RELEASE part",
                            ("ROLLBACK TO part", "RELEASE part"))


def _create_whole(target: str, schema: str) -> None:
    """Create the database beside ``target`` (owner-only, WAL, schema) and link it into place
    only if no other process did first: a second process never opens a half-created file,
    which SQLite would report as locked or malformed (and the caller would move aside)."""
    tmp = os.path.join(os.path.dirname(target) or ".",
                       f".{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema)
        finally:
            conn.close()  # the last connection: the WAL is checkpointed into the file
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)
    except OSError:
        pass  # the caller's own open reports what is wrong
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def open_wal(target: str, schema: str, *, timeout_s: float) -> sqlite3.Connection:
    """A connection to one of our databases: owner-only file, WAL, ``synchronous=NORMAL``
    (a killed process loses nothing; a power cut may lose the last moments), autocommit,
    the schema applied. ``:memory:`` works the same without the file steps."""
    if target != ":memory:" and not os.path.lexists(target):
        _create_whole(target, schema)
    conn = sqlite3.connect(target, timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        if target != ":memory:":
            with contextlib.suppress(OSError):
                os.chmod(target, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn
