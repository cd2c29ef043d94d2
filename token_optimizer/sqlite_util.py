"""What the two SQLite stores under the state root share (the session and checkpoint indexes)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


def is_busy(err: BaseException) -> bool:
    """Another process holds the database: retry later rather than rebuild it."""
    msg = str(err).lower()
    return isinstance(err, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


@contextlib.contextmanager
def immediate_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction taken up front (``BEGIN IMMEDIATE``), so two processes
    never both read and then fail to upgrade; rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
