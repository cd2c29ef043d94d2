"""A SQLite index of every session's ``manifest.jsonl``, kept up to date incrementally.

Continuity needs, on a session's first user turn, the newest checkpoints of
every other session (analysis.md §6.4). Scanning ``checkpoints/*/manifest.jsonl``
makes that turn O(sessions on disk). This index makes it O(1) in the number of
sessions: one ``stat`` of the checkpoint root and one indexed query.

The checkpoint files and manifests stay exactly as they are (the TypeScript
plugin reads and writes them too); the index is a *cache* of them and can always
be rebuilt from the disk:

* ``<root>/checkpoint-index.sqlite3`` (WAL, ``synchronous=NORMAL``), shared by
  every process on the state root. Table ``dirs`` holds, per session
  directory, the manifest's ``(size, mtime_ns, inode)`` and the byte offset up
  to which its complete lines were read; ``checkpoints`` holds one row per
  valid manifest line (keyed by directory and byte offset, so a row read by two
  processes is stored once).
* **Our writes.** :meth:`note_capture` reads the new tail of one manifest right
  after the store appended to it (from the stored offset, not the whole file).
* **Other writers** (another process, the TypeScript plugin): a new session
  directory changes the root's mtime, which is checked on every query (one
  ``stat``); then the root is listed and unknown directories are read. On a large
  root (more than ``SMALL_ROOT`` directories) that listing runs at most every
  ``RECONCILE_INTERVAL_S``. Appends to known directories are found by a
  background sweep (a daemon thread, never on a query's path): a query starts a
  pass when the last one ended at least ``SWEEP_INTERVAL_S`` ago (longer on a
  very large root, so a pass takes at most about ``1 / SWEEP_REST_FACTOR`` of a
  core), and the pass re-``lstat``s every known manifest, ``SWEEP_BATCH`` at a
  time, holding the index lock only to read a batch and to re-read a changed
  manifest. :meth:`CheckpointIndex.wait_for_sweep` waits for a pass in progress;
  :meth:`CheckpointIndex.sweep` runs one in the caller's thread.
* **Validation.** A manifest row is indexed only if its ``file`` is a regular,
  non-symlink file inside its (real, non-symlink) session directory; the stored
  path is its realpath. At query time every returned path is ``lstat``-ed again,
  so a deleted or swapped checkpoint is skipped exactly as a fresh scan would
  skip it.
* **Bounded.** Rows older than ``max(look-back, 7 days)`` are deleted (at most
  once per ``PRUNE_INTERVAL_S``); directories that disappear (the 7-day cleanup)
  lose their rows on the next sweep or listing.
* **Corruption.** Any ``sqlite3.DatabaseError`` other than a busy lock makes the
  index move the file aside, log one warning, and rebuild from the disk. If the
  file cannot be used at all (e.g. a symlink is planted at its path) a private
  in-memory index is used instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

from token_optimizer.fsutil import (
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    StatePaths,
    is_within,
    real_dir,
)
from token_optimizer.jsutil import loads, parse_iso_ms
from token_optimizer.sqlite_util import encodable, immediate_tx, is_busy, open_wal

log = logging.getLogger("token_optimizer")

DB_NAME = "checkpoint-index.sqlite3"
SCHEMA_VERSION = "1"
SMALL_ROOT = 2000
"""Up to this many session directories, a changed root is listed on every query."""
RECONCILE_INTERVAL_S = 5.0
"""On a larger root, a changed root is listed at most this often."""
SWEEP_INTERVAL_S = 5.0
"""A background pass over the known manifests starts at most this often (appends by
other writers are seen within about this long plus the pass itself)."""
SWEEP_REST_FACTOR = 20.0
"""After a pass, the next waits at least this many times the pass's working time."""
SWEEP_BATCH = 256
"""Known manifests re-``lstat``-ed per step of a pass (the lock is not held meanwhile)."""
SWEEP_INGEST_BATCH = 16
"""Changed manifests re-read per transaction (bounds how long a query may wait)."""
SWEEP_PAUSE_S = 0.005
"""Rest between two steps of a background pass (hooks get the interpreter)."""
SWEEP_START_DELAY_S = 0.01
"""A pass begins this long after the query that started it (that hook finishes first)."""
PRUNE_INTERVAL_S = 3600.0
PRUNE_BATCH = 1000
"""Old rows checked per prune (their file gone: deleted)."""
CLEANUP_DAYS = 7
DAY_MS = 86_400_000
ROOT_STABLE_NS = 50_000_000
"""A root mtime this much older than the clock is trusted (coarse file-system clocks)."""

Row = tuple[str, str, str, float]
"""``(realpath, session directory name, trigger, createdAt ms)``."""
Listed = tuple[str, str, str, float, tuple[int, int, int] | None]
"""A :data:`Row` plus the file's ``(size, mtime_ns, inode)`` at query time (``None`` from
an unverified query)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs(
    name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, off INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints(
    dir TEXT NOT NULL, off INTEGER NOT NULL, path TEXT NOT NULL, trigger TEXT NOT NULL,
    created_ms REAL NOT NULL, PRIMARY KEY(dir, off)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS checkpoints_newest ON checkpoints(created_ms DESC, dir, off);
"""


def parse_manifest_line(line: str, session_dir: Path, real_session_dir: Path | None = None) -> Row | None:
    """One manifest line -> an index row, or ``None`` (bad JSON, missing keys, unsafe file).

    ``real_session_dir`` is ``session_dir``'s real path when the caller already has it.
    """
    try:
        row = loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    file_, trigger, created = row.get("file"), row.get("trigger"), row.get("createdAt")
    if not (isinstance(file_, str) and file_ and isinstance(trigger, str) and trigger and created):
        return None
    ts = parse_iso_ms(created)
    if math.isnan(ts):
        return None
    target = Path(file_)
    # The file may not exist yet: the store appends the manifest row (its commit
    # point) before renaming the checkpoint into place, and another process may
    # read the row in between. Its place is checked now, its existence at query time.
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    real = os.path.realpath(target)
    try:
        base = real_session_dir or Path(os.path.realpath(session_dir))
        if not is_within(base, Path(real)):
            return None
    except OSError:
        return None
    return real, session_dir.name, trigger, ts


def _read_from(path: Path, offset: int) -> bytes:
    """Bytes of a regular file from ``offset`` (refuses symlinks, FIFOs and the like)."""
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        chunks: list[bytes] = []
        pos = offset
        while chunk := os.pread(fd, 1 << 20, pos):
            chunks.append(chunk)
            pos += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class CheckpointIndex:
    """Process-shared, self-healing index of checkpoint manifests (see the module docstring)."""

    def __init__(self, paths: StatePaths, *, busy_timeout_s: float = 5.0) -> None:
        self.paths = paths
        self.busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._db_root: Path | None = None
        self._root_seen: tuple[int, int] | None = None  # (mtime_ns, ino) of the last listing
        self._last_listing = -math.inf
        self._last_prune = -math.inf
        self._prune_after = -math.inf
        self._dir_count = 0
        self._sweeper: threading.Thread | None = None
        self._sweep_stop = threading.Event()
        self._next_sweep = -math.inf  # monotonic time the next background pass may start
        self._warned = False
        self.rebuilds = 0
        """Times the index was rebuilt from the disk after an error (for tests)."""
        self.listings = 0
        """Times the checkpoint root was listed (for tests and the benchmark)."""
        self.sweeps = 0
        """Completed passes over the known manifests (for tests)."""

    # ------------------------------------------------------------ connection

    @property
    def db_path(self) -> Path:
        return self.paths.root / DB_NAME

    def _usable_db_file(self, root: Path) -> bool:
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = root / (DB_NAME + suffix)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode):
                self._warn_once(f"checkpoint index {p} is not a regular file; using memory only")
                return False
        return True

    def _warn_once(self, msg: str) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "[token-optimizer] %s", msg)

    def _open(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        state_root = real_dir(self.paths.root)
        target = ":memory:"
        if state_root is not None and self._usable_db_file(state_root):
            target = str(state_root / DB_NAME)
        try:
            conn = self._connect(target)
        except sqlite3.DatabaseError as err:
            if target == ":memory:":
                raise
            self._discard_file(state_root, err)
            try:
                conn = self._connect(target)
            except sqlite3.DatabaseError:
                conn = self._connect(":memory:")
        self._conn = conn
        self._db_root = state_root
        self._root_seen = None
        return conn

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = open_wal(target, _SCHEMA, timeout_s=self.busy_timeout_s)
        try:
            got = conn.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if got is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)", (SCHEMA_VERSION,))
            elif got[0] != SCHEMA_VERSION:
                conn.executescript("DELETE FROM checkpoints; DELETE FROM dirs;")
                conn.execute("UPDATE meta SET v=? WHERE k='schema'", (SCHEMA_VERSION,))
        except BaseException:
            conn.close()
            raise
        return conn

    def _discard_file(self, state_root: Path | None, err: BaseException) -> None:
        if state_root is None:
            return
        self._warn_once(
            f"checkpoint index {state_root / DB_NAME} is unreadable ({err}); rebuilding it "
            "from the checkpoint manifests"
        )
        self.rebuilds += 1
        for suffix in ("-wal", "-shm", "-journal", ""):
            p = state_root / (DB_NAME + suffix)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(p).st_mode):
                    os.unlink(p)

    def _reset(self, err: BaseException) -> None:
        """Drop a broken connection and its file; the next use rebuilds from the disk."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        root = self._db_root
        if root is not None:
            self._discard_file(root, err)
        self._root_seen = None

    def close(self) -> None:
        """Stop a background pass (it ends between two steps) and close the connection.
        A later call opens it again."""
        with self._lock:
            worker = self._sweeper
            self._sweep_stop.set()
        if worker is not None and worker is not threading.current_thread():
            worker.join(10.0)
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ ingest

    def _ingest_dir(self, conn: sqlite3.Connection, root: Path, name: str) -> None:
        """Bring one session directory's rows up to date (caller holds the transaction)."""
        session_dir = root / name
        try:
            if not stat.S_ISDIR(os.lstat(session_dir).st_mode):
                raise FileNotFoundError(name)
            mst = os.lstat(session_dir / "manifest.jsonl")
            if not stat.S_ISREG(mst.st_mode):
                raise FileNotFoundError(name)
        except OSError:
            # Not (or no longer) a session directory with a manifest: no rows. It stays
            # known while it exists, so the sweep notices a manifest appearing later.
            conn.execute("DELETE FROM checkpoints WHERE dir=?", (name,))
            if os.path.lexists(session_dir):
                conn.execute("INSERT OR REPLACE INTO dirs VALUES(?, -1, 0, 0, 0)", (name,))
            else:
                conn.execute("DELETE FROM dirs WHERE name=?", (name,))
            return
        key = (mst.st_size, mst.st_mtime_ns, mst.st_ino)
        known = conn.execute(
            "SELECT size, mtime_ns, ino, off FROM dirs WHERE name=?", (name,)
        ).fetchone()
        if known is not None and tuple(known[:3]) == key:
            return
        start = 0
        if known is not None and known[2] == mst.st_ino and 0 <= known[3] <= mst.st_size:
            start = int(known[3])  # an append: read only the new tail
        try:
            data = _read_from(session_dir / "manifest.jsonl", start)
        except OSError:
            return
        conn.execute("DELETE FROM checkpoints WHERE dir=? AND off>=?", (name, start))
        rows: list[tuple[str, int, str, str, float]] = []
        real_session = Path(os.path.realpath(session_dir))  # the same for every line
        pos = 0
        end = len(data)
        while pos < end:
            nl = data.find(b"\n", pos)
            stop = end if nl < 0 else nl
            line = data[pos:stop]
            if line:
                got = parse_manifest_line(line.decode("utf-8", errors="replace"), session_dir,
                                          real_session)
                if got is not None:
                    rows.append((name, start + pos, got[0], got[2], got[3]))
            if nl < 0:
                break
            pos = nl + 1
        last_nl = data.rfind(b"\n")
        # An unterminated last line is indexed but re-read next time (it may grow or glue).
        new_off = start + last_nl + 1 if last_nl >= 0 else start
        conn.executemany("INSERT OR REPLACE INTO checkpoints VALUES(?,?,?,?,?)", rows)
        if key[0] != new_off:
            key = (-1, key[1], key[2])  # partial line: never treat this state as fully read
        conn.execute(
            "INSERT OR REPLACE INTO dirs VALUES(?,?,?,?,?)", (name, key[0], key[1], key[2], new_off)
        )

    def _listing(self, conn: sqlite3.Connection, root: Path, names: list[str]) -> None:
        known = {r[0] for r in conn.execute("SELECT name FROM dirs")}
        current = set(names)
        with immediate_tx(conn):
            for name in sorted(current - known):
                self._ingest_dir(conn, root, name)
            for name in known - current:
                conn.execute("DELETE FROM checkpoints WHERE dir=?", (name,))
                conn.execute("DELETE FROM dirs WHERE name=?", (name,))
        self._dir_count = len(current)
        self.listings += 1

    def _catch_up(self, conn: sqlite3.Connection, root: Path) -> None:
        try:
            rst = os.stat(root)
        except OSError:
            return
        seen = (rst.st_mtime_ns, rst.st_ino)
        clock = time.monotonic()
        if seen != self._root_seen and (
            self._dir_count <= SMALL_ROOT or clock - self._last_listing >= RECONCILE_INTERVAL_S
        ):
            stable = time.time_ns() - rst.st_mtime_ns > ROOT_STABLE_NS
            try:
                names = [n for n in os.listdir(root) if encodable(n)]  # undecodable names are never ours
            except OSError:
                return
            self._listing(conn, root, names)
            self._last_listing = clock
            # A root changed within the file-system clock's resolution may change again
            # without a new mtime: list it again next time.
            self._root_seen = seen if stable else None

    # ------------------------------------------------------------ background sweep

    def _maybe_start_sweep(self) -> None:
        """Start a background pass when one is due (caller holds the lock). Never raises."""
        if time.monotonic() < self._next_sweep:
            return
        worker = self._sweeper
        if worker is not None and worker.is_alive():
            return
        self._next_sweep = math.inf  # until this pass ends
        stop = threading.Event()  # one per pass: close() ends this one only
        try:
            worker = threading.Thread(target=self._sweep_worker, args=(stop,),
                                      name="token-optimizer-index-sweep", daemon=True)
            worker.start()
        except Exception as err:  # e.g. no more threads: try again later
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            log.debug("[token-optimizer] checkpoint index sweep not started: %s", err)
            return
        self._sweeper, self._sweep_stop = worker, stop

    def _sweep_worker(self, stop: threading.Event) -> None:
        busy = 0.0
        try:
            if not stop.wait(SWEEP_START_DELAY_S):
                busy = self._sweep_pass(stop, SWEEP_PAUSE_S)
        except Exception as err:
            log.debug("[token-optimizer] checkpoint index sweep failed: %s", err)
        finally:
            with self._lock:
                self._next_sweep = time.monotonic() + max(SWEEP_INTERVAL_S,
                                                          busy * SWEEP_REST_FACTOR)

    def _sweep_pass(self, stop: threading.Event, pause_s: float) -> float:
        """Re-check every known manifest once and re-read those that changed (appends by
        other writers, or an index write of ours that failed). Returns the working time
        in seconds.

        The lock is held to read one batch of directory rows and to re-read changed
        manifests (at most ``SWEEP_INGEST_BATCH`` per transaction), never while a batch
        is ``lstat``-ed, so a query waits at most about one such step. A busy index ends
        the pass early (the next one starts over); a broken one is reset, as a query
        would reset it, and the error is raised.
        """
        after = ""
        busy = 0.0
        while True:
            if stop.is_set():
                return busy
            t0 = time.perf_counter()
            with self._lock:
                root = real_dir(self.paths.checkpoints)
                if root is None:
                    return busy
                try:
                    batch = self._open().execute(
                        "SELECT name, size, mtime_ns, ino FROM dirs WHERE name>? ORDER BY name"
                        " LIMIT ?", (after, SWEEP_BATCH)).fetchall()
                except sqlite3.Error as err:
                    self._sweep_failed(err)
                    return busy
            base = str(root)
            stale: list[str] = []
            for name, size, mtime_ns, ino in batch:
                try:
                    mst = os.lstat(os.path.join(base, name, "manifest.jsonl"))
                    key = (mst.st_size, mst.st_mtime_ns, mst.st_ino)
                except OSError:
                    key = (-1, 0, 0)
                if key != (size, mtime_ns, ino):
                    stale.append(name)
            for i in range(0, len(stale), SWEEP_INGEST_BATCH):
                with self._lock:
                    try:
                        conn = self._open()
                        with immediate_tx(conn):
                            for name in stale[i:i + SWEEP_INGEST_BATCH]:
                                self._ingest_dir(conn, root, name)
                    except sqlite3.Error as err:
                        self._sweep_failed(err)
                        return busy
            busy += time.perf_counter() - t0
            if len(batch) < SWEEP_BATCH:
                self.sweeps += 1
                return busy
            after = batch[-1][0]
            if pause_s > 0 and stop.wait(pause_s):
                return busy

    def _sweep_failed(self, err: sqlite3.Error) -> None:
        """A sweep step's database error (caller holds the lock): busy is left for the
        next pass; anything else resets the index and is raised."""
        if is_busy(err):
            log.debug("[token-optimizer] checkpoint index busy during sweep: %s", err)
            return
        self._reset(err)
        raise err

    def sweep(self) -> None:
        """One full pass over the known manifests in the calling thread, without rests
        (tests and tools; hooks leave it to the background). Never raises."""
        with contextlib.suppress(Exception):
            self._sweep_pass(threading.Event(), 0.0)

    def wait_for_sweep(self, timeout: float = 10.0) -> bool:
        """Wait for a background pass in progress. True when none runs."""
        worker = self._sweeper
        if worker is None or worker is threading.current_thread():
            return True
        worker.join(timeout)
        return not worker.is_alive()

    def _prune(self, conn: sqlite3.Connection, look_back_days: float, now: float) -> None:
        """Drop rows past the look-back (and the 7-day cleanup) whose checkpoint file is gone.

        A row whose file still exists is kept: a longer look-back may ask for it. Rows
        of directories that disappear go with the listing and the sweep.
        """
        clock = time.monotonic()
        if clock - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune = clock
        days = CLEANUP_DAYS if math.isnan(look_back_days) else max(look_back_days, CLEANUP_DAYS)
        old = conn.execute(
            "SELECT dir, off, path, created_ms FROM checkpoints WHERE created_ms < ? AND created_ms > ?"
            " ORDER BY created_ms LIMIT ?",
            (now - days * DAY_MS, self._prune_after, PRUNE_BATCH),
        ).fetchall()
        self._prune_after = -math.inf if len(old) < PRUNE_BATCH else float(old[-1][3])
        gone = [(d, o) for d, o, path, _ in old if not os.path.lexists(path)]
        if gone:
            with immediate_tx(conn):
                conn.executemany("DELETE FROM checkpoints WHERE dir=? AND off=?", gone)

    # ------------------------------------------------------------ public API

    def note_capture(self, session_dir_name: str) -> None:
        """Our store just appended to ``<root>/<session_dir_name>/manifest.jsonl``. Never raises."""
        with self._lock:
            root = real_dir(self.paths.checkpoints)
            if root is None:
                return
            try:
                conn = self._open()
                with immediate_tx(conn):
                    self._ingest_dir(conn, root, session_dir_name)
            except sqlite3.Error as err:
                if not is_busy(err):
                    self._reset(err)
                log.debug("[token-optimizer] checkpoint index update failed: %s", err)
            except Exception as err:
                log.debug("[token-optimizer] checkpoint index update failed: %s", err)

    def newest(
        self, look_back_days: float, now: float, limit: int | None = None, *,
        verify: bool = True,
    ) -> list[Listed]:
        """Valid checkpoints newer than the look-back, newest first (ties: directory, line order).

        ``look_back_days`` NaN disables the age filter. Never raises; an unusable
        index is rebuilt once, and ``[]`` is returned only when the root is absent
        or refused (a symlink). ``verify=False`` skips the ``lstat`` of each row's file:
        the rows are the index's as they are (a file deleted or swapped since it was
        indexed is still listed, with no stat key), for a caller that checks what it
        uses itself.
        """
        with self._lock:
            root = real_dir(self.paths.checkpoints)
            if root is None:
                return []
            for attempt in (1, 2):
                try:
                    conn = self._open()
                    try:
                        self._catch_up(conn, root)
                        self._prune(conn, look_back_days, now)
                    except sqlite3.Error as err:
                        if not is_busy(err):
                            raise
                        log.debug("[token-optimizer] checkpoint index busy: %s", err)
                    found = self._query(conn, root, look_back_days, now, limit, verify)
                    self._maybe_start_sweep()
                    return found
                except sqlite3.Error as err:
                    if attempt == 2 or is_busy(err):
                        log.debug("[token-optimizer] checkpoint index query failed: %s", err)
                        return []
                    self._reset(err)
                except Exception as err:
                    log.debug("[token-optimizer] checkpoint index query failed: %s", err)
                    return []
            return []  # pragma: no cover - the loop always returns

    def _query(
        self, conn: sqlite3.Connection, root: Path, look_back_days: float, now: float,
        limit: int | None, verify: bool = True,
    ) -> list[Listed]:
        sql = "SELECT path, dir, trigger, created_ms FROM checkpoints"
        args: tuple[float, ...] = ()
        if not math.isnan(look_back_days):
            sql += " WHERE created_ms >= ?"
            args = (now - look_back_days * DAY_MS,)
        sql += " ORDER BY created_ms DESC, dir, off"
        out: list[Listed] = []
        want = -1 if limit is None else max(limit, 1)
        if not verify:
            if limit is not None:
                sql += f" LIMIT {want:d}"
            return [(path, name, trigger, float(created), None)
                    for path, name, trigger, created in conn.execute(sql, args)]
        lstat, is_reg = os.lstat, stat.S_ISREG  # the loop runs up to `limit` times per turn
        for path, name, trigger, created in conn.execute(sql, args):
            try:
                st = lstat(path)
            except OSError:
                continue
            if is_reg(st.st_mode):
                out.append((path, name, trigger, float(created),
                            (st.st_size, st.st_mtime_ns, st.st_ino)))
                if len(out) == want:
                    break
        return out
