"""Session index: stable session key -> current session id, bounded on disk by age.

The index lives in ``<root>/session-index.sqlite3`` (SQLite, WAL mode). It is a
*routing* index: one entry per chat lane (session key) holding the id of the
conversation currently routed there plus ``created_at``, ``updated_at`` (last
real activity), ``suspended`` and the platform / agent when known.

Rules this module keeps (spec: session-bounds.md §3-§5):

* **Self-documenting store.** The database holds a ``_README`` table whose one
  row says what the file is and where the full history lives. Keys starting with
  ``_`` are refused, so nothing reserved ever becomes an entry.
* **Bounded memory.** No entry is held in memory: lookups and updates are
  indexed SQLite statements. Only transient marks (below) live in RAM, in a
  :class:`BoundedMap` (``MAX_TRACKED_SESSIONS``).
* **Several processes.** Every change is one ``BEGIN IMMEDIATE`` transaction,
  so a gateway, ``hermes chat`` and ``token-optimizer prune`` on one state root
  never lose each other's updates, and a prune from the command line sticks.
  A prune re-checks each entry inside its delete (a lane refreshed, rotated or
  suspended meanwhile by another process is kept).
* **Durability.** WAL with ``synchronous=NORMAL``: a committed change survives
  a killed process; a power cut may lose the last moments of changes (the orphan
  sweep below still bounds their files). No ``fsync`` on the message path.
* **Off the hook's path.** A real user message's touch can be handed off
  (:meth:`SessionIndex.touch_later`, what the runtime does): it is written in the
  next quiet moment, at most about a second later, by this instance's writer
  thread (:mod:`token_optimizer.write_behind`), in one transaction with any others
  queued. Every other call of this instance first writes what is queued, so the
  process always reads its own touches; other processes see them once written.
  A ``kill -9`` in that second loses those touches (the session's next message
  writes its entry again; its files are bounded by the orphan sweep meanwhile).
* **Safe file.** The database (and its ``-wal``/``-shm``) must be regular files;
  a symlink planted there is refused and the index is kept in memory for the
  process (one warning). A corrupt database is kept as ``.corrupt`` and a new
  one started (one warning). A key, id or label that is not valid Unicode (a
  lone surrogate) is refused for that call only; it never poisons the others.
* **Lazy creation.** A session seen only through a handshake, a
  ``session_start``, a probe or a heartbeat (:meth:`note_session`, or
  :meth:`touch` with ``real_message=False``) is held in a bounded in-memory map
  and never written. Its entry appears on its first real user message.
  Reads never create the database.
* **TTL pruning.** :meth:`prune_old_entries` drops entries idle longer than
  ``max_age_days`` (by ``updated_at``), keeping suspended entries, entries
  with a pending restore and entries whose session has active background
  work. Both callbacks take the **session key**; a callback that raises keeps
  the entry (fail closed). Removing an entry also removes that session's
  per-session files under the state root (checkpoints, read cache, decisions
  log, hint sidecar). Read-cache, hint and decision files idle as long that
  belong to no entry (sessions that never had a user turn: cron, heartbeats)
  are removed too. :meth:`maybe_prune` gates it to once an hour.
* **Migration.** A ``session-index.json`` (and its journal) from an earlier
  version is imported once, then renamed ``*.imported`` (``*.corrupt`` when it
  could not be parsed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from token_optimizer.bounded import BoundedMap
from token_optimizer.fsutil import (
    O_NOFOLLOW,
    StatePaths,
    UnsafePathError,
    ensure_dir,
    read_text_no_follow,
)
from token_optimizer.jsutil import iso_from_ms, parse_iso_ms
from token_optimizer.sqlite_util import encodable, immediate_tx, is_busy, open_wal, savepoint
from token_optimizer.write_behind import WriteBehind

log = logging.getLogger("token_optimizer")

README_KEY = "_README"
README_TEXT = (
    "token-optimizer session routing index. Each row of 'entries' is one stable session key "
    "(one chat lane): the id of the session currently routed there, created_at, updated_at "
    "(last real user message), suspended, and the platform/agent. This is NOT the list of all "
    "sessions: lanes that never received a real message are never written here, and entries "
    "idle longer than session_store_max_age_days (default 90, 0 disables) are pruned together "
    "with their per-session token-optimizer state (checkpoints/, read-cache/). Full conversation "
    "history stays with the host: OpenClaw (2026.9.6) keeps transcripts in SQLite, "
    "~/.openclaw/agents/<agent>/agent/openclaw-agent.sqlite (older releases: "
    "agents/<agent>/sessions/<session-id>.jsonl), Hermes keeps them in "
    "$HERMES_HOME/state.db. Keys starting with '_' are never entries. "
    "Inspect with 'token-optimizer sessions'; prune with 'token-optimizer prune'."
)

PRUNE_INTERVAL_S = 3600.0
""":meth:`SessionIndex.maybe_prune` prunes at most once per this many seconds."""

DB_NAME = "session-index.sqlite3"
"""The index itself (SQLite, WAL), in the state root."""

JOURNAL_NAME = "session-index.journal.jsonl"
"""The journal of the pre-SQLite JSON index (imported once, then renamed)."""

_MAX_JOURNAL_WARNINGS = 10

_KNOWN_FIELDS = frozenset(
    {"session_key", "session_id", "created_at", "updated_at", "suspended", "platform", "agent"}
)

KeyCallback = Callable[[str], bool]
_T = TypeVar("_T")
_Transient = tuple[set[str], set[str], int]
_Touch = tuple[str, str, "str | None", "str | None", float]
"""A handed-off real-message touch: key, session id, platform, agent, when."""


def _parse_ts(value: object) -> float:
    """ISO string -> epoch seconds; ``nan`` when it cannot be read."""
    if not isinstance(value, str):
        return math.nan
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        ms = parse_iso_ms(value)
        return ms / 1000.0 if math.isfinite(ms) else math.nan
    return dt.timestamp()


@functools.lru_cache(maxsize=4096)
def _iso_second(sec: int) -> str:
    return iso_from_ms(sec * 1000.0)[:-5]  # "YYYY-MM-DDTHH:MM:SS"


def _iso(seconds: float) -> str:
    """``Date.prototype.toISOString`` of epoch seconds (the second's prefix is memoised:
    entries read or written together share a handful of seconds)."""
    ms = math.floor(seconds * 1000.0)
    sec, milli = divmod(ms, 1000)
    return f"{_iso_second(sec)}.{milli:03d}Z"


class SessionFiles(Protocol):
    """What a store keeps on disk for a session, named and removed by the store itself."""

    column: str
    """``ck`` or ``rc``: the index column that holds :meth:`disk_name` per entry."""

    def disk_name(self, session_id: str) -> str: ...
    def session_files(self, session_id: str, agents: Iterable[str]) -> list[str]: ...
    def remove(self, names: Iterable[str]) -> int: ...
    def size(self, names: Iterable[str]) -> int: ...
    def idle_files(self, cutoff: float) -> list[tuple[str, list[str]]]: ...


def default_session_files(paths: StatePaths) -> tuple[SessionFiles, ...]:
    """The checkpoint store's and the read cache's per-session files."""
    from token_optimizer.checkpoints import CheckpointFiles
    from token_optimizer.read_cache import ReadCacheFiles

    return (CheckpointFiles(paths), ReadCacheFiles(paths))


class _Entry:
    """One index entry. Timestamps are epoch seconds; ISO text is cached for saving."""

    __slots__ = (
        "_json",
        "agent",
        "created_at",
        "extra",
        "platform",
        "session_id",
        "suspended",
        "updated_iso",
        "updated_s",
    )

    def __init__(
        self,
        session_id: str,
        created_at: str,
        updated_s: float,
        *,
        updated_iso: str | None = None,
        suspended: bool = False,
        platform: str | None = None,
        agent: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.session_id = session_id
        self.created_at = created_at
        self.updated_s = updated_s
        self.updated_iso = updated_iso
        self.suspended = suspended
        self.platform = platform
        self.agent = agent
        self.extra = extra
        self._json: dict[str, Any] | None = None

    def to_json(self, key: str) -> dict[str, Any]:
        """The on-disk object (cached: an entry is built from one stored row)."""
        j = self._json
        if j is None:
            if self.updated_iso is None:
                self.updated_iso = _iso(self.updated_s)
            j = {
                "session_key": key,
                "session_id": self.session_id,
                "created_at": self.created_at,
                "updated_at": self.updated_iso,
                "suspended": self.suspended,
            }
            if self.platform is not None:
                j["platform"] = self.platform
            if self.agent is not None:
                j["agent"] = self.agent
            if self.extra:
                for k, v in self.extra.items():
                    j.setdefault(k, v)
            self._json = j
        return j

    def public(self, key: str, *, persisted: bool) -> dict[str, Any]:
        d = dict(self.to_json(key))
        d["persisted"] = persisted
        return d


def _agent_from_key(session_key: str) -> str | None:
    """``agent:<id>:...`` keys (OpenClaw, Hermes) name the agent / profile second."""
    parts = session_key.split(":", 2)
    if len(parts) >= 3 and parts[0] == "agent" and parts[1]:
        return parts[1]
    return None


def _parse_entry(key: str, value: object, now: float, where: str) -> tuple[_Entry | None, bool]:
    """One stored entry object -> ``(_Entry, repaired)``; ``(None, False)`` (warned) when unusable."""
    if not isinstance(value, dict):
        log.warning(
            "[token-optimizer] %s: skipping entry %r (not an object: %s)",
            where,
            key,
            type(value).__name__,
        )
        return None, False
    sid = value.get("session_id")
    if not isinstance(sid, str) or not sid:
        log.warning("[token-optimizer] %s: skipping entry %r (no session_id)", where, key)
        return None, False
    repaired = False
    created = value.get("created_at")
    updated_raw = value.get("updated_at")
    updated_s = _parse_ts(updated_raw)
    updated_iso = updated_raw if isinstance(updated_raw, str) else None
    if not math.isfinite(updated_s):
        # Unknown age: fall back to created_at, else count it as seen now
        # (it then ages out normally instead of living forever).
        updated_s = _parse_ts(created)
        if not math.isfinite(updated_s):
            updated_s = now
        updated_iso = None
        repaired = True
        log.warning("[token-optimizer] %s: entry %r has no readable updated_at", where, key)
    if not isinstance(created, str):
        created = updated_iso if updated_iso is not None else _iso(updated_s)
        repaired = True
    platform = value.get("platform")
    agent = value.get("agent")
    extra = {k: v for k, v in value.items() if k not in _KNOWN_FIELDS} or None
    e = _Entry(
        sid,
        created,
        updated_s,
        updated_iso=updated_iso,
        suspended=value.get("suspended") is True,
        platform=platform if isinstance(platform, str) else None,
        agent=agent if isinstance(agent, str) else None,
        extra=extra,
    )
    return e, repaired


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _read_journal(path: Path) -> bytes | None:
    """The legacy journal's bytes; ``None`` when absent. Refuses (raises) symlinks and non-regular files.

    ``O_NONBLOCK`` keeps a FIFO planted at the path from blocking the open.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise UnsafePathError(f"{kind}: {path}")
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"not a regular file: {path}")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _load_legacy_json(path: Path, now: float) -> tuple[dict[str, _Entry], bool]:
    """Entries of a pre-SQLite ``session-index.json``; ``(entries, corrupt)``."""
    out: dict[str, _Entry] = {}
    try:
        text = read_text_no_follow(path)
    except FileNotFoundError:
        return out, False
    except OSError as e:
        log.warning("[token-optimizer] session index %s not read: %s", path, e)
        return out, False
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        log.warning("[token-optimizer] session index %s is not valid JSON (%s); it is kept as "
                    "%s.corrupt", path, e, path.name)
        return out, True
    if not isinstance(data, dict):
        log.warning("[token-optimizer] session index %s is not a JSON object; it is kept as "
                    "%s.corrupt", path, path.name)
        return out, True
    for key, value in data.items():
        if key.startswith("_"):
            continue
        parsed, _ = _parse_entry(key, value, now, "session index")
        if parsed is not None:
            out[key] = parsed
    return out, False


def _replay_legacy_journal(path: Path, entries: dict[str, _Entry], now: float) -> bool:
    """Replay a pre-SQLite journal over ``entries`` (later lines win); ``True`` when one was read."""
    try:
        data = _read_journal(path)
    except UnsafePathError as e:
        log.warning("[token-optimizer] session index journal refused (%s); it is ignored", e)
        return False
    except OSError as e:
        log.warning("[token-optimizer] session index journal %s not read: %s", path, e)
        return False
    if data is None:
        return False
    lines = data.split(b"\n")
    bad = 0
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        why = _replay_line(raw, entries, now)
        if why is None:
            continue
        bad += 1
        if bad <= _MAX_JOURNAL_WARNINGS:
            torn = lineno == len(lines)
            log.warning("[token-optimizer] session index journal %s: skipping %sline %d (%s)",
                        path.name, "torn last " if torn else "", lineno, why)
    if bad > _MAX_JOURNAL_WARNINGS:
        log.warning("[token-optimizer] session index journal %s: %d unreadable lines skipped in all",
                    path.name, bad)
    return True


def _replay_line(raw: bytes, entries: dict[str, _Entry], now: float) -> str | None:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not valid JSON"
    if not isinstance(rec, dict):
        return "not an object"
    key = rec.get("key")
    if not isinstance(key, str) or not key:
        return "no key"
    if key.startswith("_"):
        return f"reserved key {key!r}"
    op = rec.get("op")
    if op == "del":
        entries.pop(key, None)
        return None
    if op != "put":
        return f"unknown op {op!r}"
    e, _ = _parse_entry(key, rec.get("entry"), now, "session index journal")
    if e is None:
        return "unusable entry"
    cur = entries.get(key)
    if cur is not None and cur.session_id == e.session_id and cur.updated_s > e.updated_s:
        e.updated_s = cur.updated_s
        e.updated_iso = cur.updated_iso
    entries[key] = e
    return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS _README(text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS entries(
    key TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT,
    updated_s REAL NOT NULL,
    suspended INTEGER NOT NULL DEFAULT 0,
    platform TEXT,
    agent TEXT,
    extra TEXT,
    ck TEXT NOT NULL,
    rc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_idle ON entries(updated_s) WHERE suspended = 0;
CREATE INDEX IF NOT EXISTS entries_ck ON entries(ck);
CREATE INDEX IF NOT EXISTS entries_rc ON entries(rc);
"""

_COLS = "key, session_id, created_at, updated_at, updated_s, suspended, platform, agent, extra"


def _row_entry(row: tuple[Any, ...]) -> _Entry:
    extra: dict[str, Any] | None = None
    if row[8]:
        with contextlib.suppress(orjson.JSONDecodeError):
            got = orjson.loads(row[8])
            extra = got if isinstance(got, dict) else None
    return _Entry(
        row[1], row[2], float(row[4]), updated_iso=row[3], suspended=bool(row[5]),
        platform=row[6], agent=row[7], extra=extra,
    )



class SessionIndex:
    """Routing index in SQLite (WAL): lazy creation, TTL pruning, safe across processes.

    No entry is held in memory but the transient (not yet persisted) marks, a
    :class:`BoundedMap`. Every change is one SQLite transaction, so another
    process (``token-optimizer prune``, a second gateway-side process) sees it
    at once and no update is lost.

    ``active_work`` and ``pending_restore`` are host callbacks taking the
    **session key**; both are plain attributes and may be (re)assigned after
    construction (the runtime builds the index, the adapter wires the hooks).
    ``clock`` returns wall-clock epoch seconds (tests inject a fake one).
    """

    def __init__(
        self,
        paths: StatePaths,
        *,
        active_work: KeyCallback | None = None,
        pending_restore: KeyCallback | None = None,
        clock: Callable[[], float] = time.time,
        files: Sequence[SessionFiles] | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.paths = paths
        self.busy_timeout_s = float(busy_timeout_s)
        """How long a write waits for another process's transaction (a hook passes a
        short one: it must never stall the host; a failed write is retried later)."""
        self.files: tuple[SessionFiles, ...] = tuple(files) if files is not None else (
            default_session_files(paths))
        """The stores' per-session files (each store names and removes its own)."""
        self.path = paths.root / DB_NAME
        self.legacy_path = paths.session_index
        self.journal_path = self.legacy_path.with_name(JOURNAL_NAME)
        self.active_work = active_work
        self.pending_restore = pending_restore
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        # Sessions seen without a real message: transient, bounded, never serialised.
        self._pending: BoundedMap[str, _Entry] = BoundedMap("session_index.pending")
        self._last_prune: float | None = None
        self._warned: set[str] = set()
        self._cleanups = 0  # per-session file removals in progress (outside the lock)
        self._revived: list[str] = []  # ids (re)introduced while a removal is in progress
        self.write_count = 0
        """Committed write transactions of this instance (for tests and the benchmark)."""
        self.rejected = 0
        """Keys or ids refused because they cannot be stored (e.g. lone surrogates)."""
        self._in_batch = False
        self._writes: WriteBehind[_Touch] = WriteBehind("session-index-writer",
                                                         self._apply_touches, self._lock)
        """Real-message touches handed off by :meth:`touch_later` (applied in order, and
        before any read or write of this instance)."""

    # ------------------------------------------------------------ storage

    def _warn_once(self, what: str, msg: str, *args: object) -> None:
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "[token-optimizer] " + msg, *args)

    def _db(self, create: bool) -> sqlite3.Connection | None:
        """The connection; ``None`` when there is no index yet and ``create`` is false."""
        if self._conn is not None:
            return self._conn
        legacy = os.path.lexists(self.legacy_path) or os.path.lexists(self.journal_path)
        if not create and not legacy and not os.path.lexists(self.path):
            return None
        target = ":memory:"
        try:
            root = ensure_dir(self.paths.root, base=self.paths.root)
            if self._file_ok(root):
                target = str(root / DB_NAME)
        except OSError as e:
            self._warn_once("root", "session index: state root %s unusable (%s); the index is "
                            "kept in memory only", self.paths.root, e)
        try:
            conn = self._connect(target)
        except sqlite3.DatabaseError as e:
            if target == ":memory:" or is_busy(e):
                raise  # another process holds the file: not a reason to set it aside
            self._move_aside(e)
            conn = self._connect(target)
        self._conn = conn
        self._import_legacy(conn)
        return conn

    def _file_ok(self, root: Path) -> bool:
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = root / (DB_NAME + suffix)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                self._warn_once("file", "session index %s is not a regular file (refused); the "
                                "index is kept in memory only", p)
                return False
        return True

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = open_wal(target, _SCHEMA, timeout_s=self.busy_timeout_s)
        try:
            if conn.execute("SELECT count(*) FROM _README").fetchone()[0] == 0:
                conn.execute("INSERT INTO _README VALUES(?)", (README_TEXT,))
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, err: BaseException) -> None:
        """A corrupt database file is kept as ``.corrupt`` (one warning); a new one starts."""
        self._warn_once("corrupt", "session index %s is unreadable (%s); it is kept as %s.corrupt "
                        "and a new index is started", self.path, err, self.path.name)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = self.path.with_name(DB_NAME + suffix)
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(p).st_mode):
                    if suffix:
                        os.unlink(p)
                    else:
                        os.replace(p, p.with_name(p.name + ".corrupt"))

    def _import_legacy(self, conn: sqlite3.Connection) -> None:
        """One-time import of a pre-SQLite ``session-index.json`` and its journal."""
        if not (os.path.lexists(self.legacy_path) or os.path.lexists(self.journal_path)):
            return
        now = self._clock()
        with self._tx(conn):
            if conn.execute("SELECT v FROM meta WHERE k='legacy_imported'").fetchone():
                return
            entries, corrupt = _load_legacy_json(self.legacy_path, now)
            journal = _replay_legacy_journal(self.journal_path, entries, now)
            for key, e in entries.items():
                if encodable(key, e.session_id, e.platform, e.agent):
                    self._insert(conn, key, e)
            conn.execute("INSERT OR REPLACE INTO meta VALUES('legacy_imported', ?)", (_iso(now),))
        for path, ok in ((self.legacy_path, True), (self.journal_path, journal)):
            suffix = ".corrupt" if corrupt and path == self.legacy_path else ".imported"
            with contextlib.suppress(OSError):
                if ok and stat.S_ISREG(os.lstat(path).st_mode):
                    os.replace(path, path.with_name(path.name + suffix))
        if entries:
            log.info("[token-optimizer] session index: imported %d entries from %s into %s",
                     len(entries), self.legacy_path.name, self.path.name)

    def _insert(self, conn: sqlite3.Connection, key: str, e: _Entry) -> None:
        conn.execute(
            "INSERT INTO entries(" + _COLS + ", ck, rc) VALUES(?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET session_id=excluded.session_id, "
            "created_at=excluded.created_at, updated_at=excluded.updated_at, "
            "updated_s=excluded.updated_s, suspended=excluded.suspended, "
            "platform=excluded.platform, agent=excluded.agent, extra=excluded.extra, "
            "ck=excluded.ck, rc=excluded.rc",
            (key, e.session_id, e.created_at, e.updated_iso or _iso(e.updated_s), e.updated_s,
             int(e.suspended), e.platform, e.agent,
             orjson.dumps(e.extra).decode() if e.extra else None,
             *self._names(e.session_id)),
        )

    @contextlib.contextmanager
    def _tx(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        if conn.in_transaction:
            # one item of a batch (:meth:`_apply_touches`): a failure undoes this item only
            with savepoint(conn):
                yield conn
            return
        with immediate_tx(conn):
            yield conn
        self.write_count += 1

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], _T], default: _T,
             *, create: bool) -> _T:
        """Run ``fn`` on the database under the lock; never raises.

        A corrupt file is moved aside once and the call retried on a new index.
        """
        with self._lock:
            self._writes.drain()  # read your own handed-off writes (no-op inside one)
            for attempt in (1, 2):
                try:
                    conn = self._db(create)
                    if conn is None:
                        return default
                    return fn(conn)
                except sqlite3.DatabaseError as e:
                    if self._in_batch:
                        raise  # the batch's own _run rolls it all back and decides
                    if is_busy(e) or attempt == 2:
                        self._warn_once(f"busy:{what}", "session index %s failed: %s", what, e)
                        return default
                    self._move_aside(e)
                except Exception as e:
                    log.warning("[token-optimizer] session index %s failed: %s", what, e)
                    return default
        return default  # pragma: no cover - the loop always returns

    def _row(self, conn: sqlite3.Connection, key: str) -> tuple[Any, ...] | None:
        got: tuple[Any, ...] | None = conn.execute(
            "SELECT " + _COLS + " FROM entries WHERE key=?", (key,)
        ).fetchone()
        return got

    # ------------------------------------------------------------ recording

    def note_session(
        self, session_key: str, session_id: str, *, platform: str | None = None
    ) -> None:
        """Remember a session seen without a real message (handshake, start, probe, heartbeat).

        Nothing is written; the mark is transient and bounded in memory.
        """
        self.touch(session_key, session_id, platform=platform, real_message=False)

    def touch(
        self,
        session_key: str,
        session_id: str,
        *,
        platform: str | None = None,
        real_message: bool = True,
        agent: str | None = None,
    ) -> str | None:
        """Record activity for ``session_key``.

        Returns the previous session id when the id under this key changed
        since the last call (reported once per rotation), else ``None``.
        Only ``real_message=True`` (a real user message) creates or refreshes
        the persisted entry; other calls are transient marks.

        ``platform`` and ``agent`` are optional labels stored on the entry
        (``None`` or empty leaves the stored value unchanged). ``agent`` is the
        host's agent / profile id; it names the read-cache files
        (``<agent>-<session id>.json``) removed with the entry when it is pruned.

        A key, id or label that cannot be stored (a lone surrogate, which an
        in-process host can pass) is refused: the call returns ``None`` and
        every other entry is unaffected. Cost: one small SQLite transaction
        (no ``fsync``: WAL with ``synchronous=NORMAL``), O(log n).
        """
        got = self._checked(session_key, session_id, platform, agent)
        if got is None:
            return None
        try:
            with self._lock:
                self._writes.drain()
                return self._touch_locked(*got, real_message, self._clock())
        except Exception as e:  # never raise into a host
            log.warning("[token-optimizer] session index touch failed: %s", e)
            return None

    def touch_later(
        self, session_key: str, session_id: str, *, platform: str | None = None,
        agent: str | None = None,
    ) -> None:
        """:meth:`touch` for a real user message, written after the hook returns.

        The entry is written on this instance's writer thread in the next quiet
        moment between hooks (at most about a second later), or by the next read
        or write of this instance, whichever comes first; it is stamped with the
        time of this call. The hook itself does no I/O. Refused keys and ids are
        refused here, as :meth:`touch` does.
        """
        got = self._checked(session_key, session_id, platform, agent)
        if got is None:
            return
        try:
            self._writes.submit((*got, self._clock()))
        except Exception as e:  # never raise into a host
            log.warning("[token-optimizer] session index touch failed: %s", e)

    def _checked(
        self, session_key: object, session_id: object, platform: object, agent: object,
    ) -> tuple[str, str, str | None, str | None] | None:
        """The key, id and labels as stored, or ``None`` (logged) when they cannot be."""
        if not isinstance(session_key, str) or not session_key or session_key.startswith("_"):
            log.debug("[token-optimizer] session index: ignoring session key %r", session_key)
            return None
        if not isinstance(session_id, str) or not session_id:
            log.debug("[token-optimizer] session index: ignoring session id %r for %r",
                      session_id, session_key)
            return None
        plat = platform if isinstance(platform, str) and platform else None
        ag = agent if isinstance(agent, str) and agent else None
        if not encodable(session_key, session_id, plat, ag):
            self.rejected += 1
            self._warn_once("encode", "session index: refusing a session key or id that is not "
                            "valid Unicode (%r)", session_key)
            return None
        return session_key, session_id, plat, ag

    def _apply_touches(self, items: list[_Touch]) -> None:
        """The handed-off touches, in order, in one transaction (each item its own savepoint);
        one by one when the batch cannot commit."""
        def each() -> None:
            for key, sid, platform, agent, at in items:
                try:
                    self._touch_locked(key, sid, platform, agent, True, at)
                except sqlite3.DatabaseError as e:
                    if self._in_batch:
                        raise  # the whole batch is retried (or applied one by one)
                    log.warning("[token-optimizer] session index touch failed: %s", e)
                except Exception as e:
                    log.warning("[token-optimizer] session index touch failed: %s", e)

        def batch(conn: sqlite3.Connection) -> bool:
            self._in_batch = True
            try:
                with self._tx(conn):
                    each()
            finally:
                self._in_batch = False
            return True

        if len(items) == 1 or not self._run("touch", batch, False, create=True):
            each()

    def _touch_locked(
        self, key: str, sid: str, platform: str | None, agent: str | None, real: bool,
        now: float,
    ) -> str | None:
        pending = self._pending.get(key)
        if not real:
            row = self._run("lookup", lambda c: self._row(c, key), None, create=False)
            current = pending.session_id if pending is not None else (row[1] if row else None)
            previous = current if current is not None and current != sid else None
            if row is not None and row[1] == sid:
                if pending is not None:
                    self._pending.pop(key)
                return previous
            if pending is None or pending.session_id != sid:
                pending = _Entry(sid, _iso(now), now, platform=platform, agent=agent)
                self._pending.set(key, pending)
                self._note_id_locked(sid)
            else:
                if platform is not None:
                    pending.platform = platform
                if agent is not None:
                    pending.agent = agent
            return previous

        def write(conn: sqlite3.Connection) -> tuple[str | None]:
            with self._tx(conn):
                row = self._row(conn, key)
                current = pending.session_id if pending is not None else (row[1] if row else None)
                previous = current if current is not None and current != sid else None
                seed = pending if pending is not None and pending.session_id == sid else None
                if row is None or row[1] != sid:
                    # A new lane, or a new conversation under it: unsuspended unless the
                    # suspension was set while it was still transient.
                    old = _row_entry(row) if row is not None else None
                    e = _Entry(
                        sid,
                        seed.created_at if seed is not None else _iso(now),
                        now,
                        suspended=seed.suspended if seed is not None else False,
                        platform=platform or (seed.platform if seed else None)
                        or (old.platform if old else None),
                        agent=agent or (seed.agent if seed else None) or (old.agent if old else None),
                        extra=old.extra if old is not None else None,
                    )
                    self._insert(conn, key, e)
                    self._note_id_locked(sid)
                else:
                    conn.execute(
                        "UPDATE entries SET updated_at=?, updated_s=?, platform=coalesce(?, platform),"
                        " agent=coalesce(?, agent) WHERE key=?",
                        (_iso(now), now, platform, agent, key),
                    )
            return (previous,)

        got = self._run("touch", write, None, create=True)
        if got is None:
            return None  # not written: the transient mark stays, retried on the next message
        if pending is not None:
            self._pending.pop(key)
        return got[0]

    def _note_id_locked(self, session_id: str) -> None:
        if self._cleanups:
            self._revived.append(session_id)

    def set_suspended(self, session_key: str, suspended: bool) -> None:
        """Mark an entry suspended (never pruned) or resumed."""
        try:
            with self._lock:
                self._writes.drain()
                flag = bool(suspended)
                pending = self._pending.get(session_key)
                if pending is not None:
                    pending.suspended = flag

                def write(conn: sqlite3.Connection) -> None:
                    with self._tx(conn):
                        row = self._row(conn, session_key)
                        if row is None or (pending is not None and pending.session_id != row[1]):
                            if pending is None:
                                log.debug("[token-optimizer] session index: set_suspended on "
                                          "unknown key %r", session_key)
                            return
                        conn.execute("UPDATE entries SET suspended=? WHERE key=?",
                                     (int(flag), session_key))

                if isinstance(session_key, str) and encodable(session_key):
                    self._run("set_suspended", write, None, create=False)
        except Exception as e:
            log.warning("[token-optimizer] session index set_suspended failed: %s", e)

    def end_session(self, session_key: str | None = None) -> None:
        """Session end: drop the key's transient mark (the entry itself is already on disk)."""
        with self._lock:
            self._writes.drain()
            if session_key is not None:
                self._pending.pop(session_key)
            self.flush()

    # ------------------------------------------------------------ queries

    def get(self, session_key: str) -> dict[str, Any] | None:
        """The entry for ``session_key`` (with ``persisted`` = whether it is on the index), or ``None``."""
        with self._lock:
            self._writes.drain()
            pending = self._pending.get(session_key)
            if pending is not None:
                return pending.public(session_key, persisted=False)
            if not encodable(session_key):
                return None
            row = self._run("get", lambda c: self._row(c, session_key), None, create=False)
            return _row_entry(row).public(session_key, persisted=True) if row else None

    def entries(self) -> dict[str, dict[str, Any]]:
        """A copy of every persisted entry (as stored), in insertion order. O(n): for tools."""
        def read(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            return {
                r[0]: dict(_row_entry(r).to_json(r[0]))
                for r in conn.execute("SELECT " + _COLS + " FROM entries ORDER BY rowid")
            }
        return self._run("entries", read, {}, create=False)

    def most_recent_session_id(self) -> str | None:
        """The session id of the most recently active persisted entry (latest
        ``updated_at``; among equals the one stored last), or ``None``.

        One ``ORDER BY updated_s DESC LIMIT 1`` query: nothing else is loaded.
        """
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT session_id FROM entries WHERE session_id != '' "
                "ORDER BY updated_s DESC, rowid DESC LIMIT 1"
            ).fetchone()
            return str(row[0]) if row and row[0] else None
        return self._run("most recent", read, None, create=False)

    def is_persisted(self, session_key: str) -> bool:
        if not isinstance(session_key, str) or not encodable(session_key):
            return False
        return self._run(
            "lookup",
            lambda c: c.execute("SELECT 1 FROM entries WHERE key=?", (session_key,)).fetchone()
            is not None,
            False,
            create=False,
        )

    def __len__(self) -> int:
        return self._run(
            "count", lambda c: int(c.execute("SELECT count(*) FROM entries").fetchone()[0]), 0,
            create=False,
        )

    def pending_count(self) -> int:
        """Sessions held only as transient (never written) marks: handshakes, probes, resets."""
        self._writes.drain()
        return len(self._pending)

    # ------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Every change is committed when made; this only folds the WAL back (never raises)."""
        def checkpoint(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._run("flush", checkpoint, None, create=False)

    def close(self) -> None:
        """Shutdown: make the handed-off writes, fold the WAL back and close the connection."""
        self._writes.close()
        with self._lock:
            self.flush()
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ pruning

    @staticmethod
    def _guarded(cb: KeyCallback | None, key: str, what: str) -> bool:
        """True when ``cb(key)`` says the entry must be kept; a raising callback keeps it."""
        if cb is None:
            return False
        try:
            return bool(cb(key))
        except Exception as e:
            log.debug("[token-optimizer] session index: %s callback raised for %r (kept): %s",
                      what, key, e)
            return True

    def _candidates_locked(self, max_age_days: float, now: float) -> list[tuple[str, _Entry]]:
        cutoff = now - max_age_days * 86400.0
        rows: list[tuple[Any, ...]] = self._run(
            "prune",
            lambda c: c.execute(
                "SELECT " + _COLS + " FROM entries WHERE suspended=0 AND updated_s < ? "
                "ORDER BY rowid", (cutoff,)
            ).fetchall(),
            [],
            create=False,
        )
        out: list[tuple[str, _Entry]] = []
        for r in rows:
            key = r[0]
            try:
                if self._guarded(self.pending_restore, key, "pending_restore"):
                    continue
                if self._guarded(self.active_work, key, "active_work"):
                    continue
                out.append((key, _row_entry(r)))
            except Exception as ex:
                log.debug("[token-optimizer] session index: prune check failed for %r: %s", key, ex)
        return out

    @staticmethod
    def _days(max_age_days: object) -> float:
        if isinstance(max_age_days, bool) or not isinstance(max_age_days, (int, float)):
            log.debug("[token-optimizer] session index: bad max_age_days %r; pruning skipped",
                      max_age_days)
            return 0.0
        if not math.isfinite(max_age_days):
            return 0.0
        return float(max_age_days)

    def prune_candidates(self, max_age_days: int, now: float | None = None) -> list[str]:
        """Keys :meth:`prune_old_entries` would remove now (dry run; nothing changes)."""
        days = self._days(max_age_days)
        if days <= 0:
            return []
        with self._lock:
            t = self._clock() if now is None else now
            return [k for k, _ in self._candidates_locked(days, t)]

    def prune_old_entries(self, max_age_days: int, now: float | None = None) -> int:
        """Remove entries idle longer than ``max_age_days``; return how many.

        ``max_age_days <= 0`` disables pruning. Suspended entries, entries
        with a pending restore and entries with active background work are
        kept. Each removed session's per-session state under the root is
        deleted, and so are per-session read-cache and decision files idle as
        long that belong to no entry (sessions that never had a user turn).
        """
        return len(self.prune_keys(max_age_days, now))

    def prune_keys(self, max_age_days: int, now: float | None = None) -> list[str]:
        """:meth:`prune_old_entries`, returning the removed keys instead of their count."""
        days = self._days(max_age_days)
        if days <= 0:
            return []
        removed: list[tuple[str, _Entry]] = []
        with self._lock:
            t = self._clock() if now is None else now
            cutoff = t - days * 86400.0
            candidates = self._candidates_locked(days, t)

            def delete(conn: sqlite3.Connection) -> list[tuple[str, _Entry]]:
                gone: list[tuple[str, _Entry]] = []
                with self._tx(conn):
                    for key, e in candidates:
                        # Re-checked in the transaction: another process may have
                        # refreshed, rotated or suspended it since the candidates were read.
                        cur = conn.execute(
                            "DELETE FROM entries WHERE key=? AND session_id=? AND suspended=0 "
                            "AND updated_s < ?", (key, e.session_id, cutoff))
                        if cur.rowcount:
                            gone.append((key, e))
                return gone

            if candidates:
                removed = self._run("prune", delete, [], create=False)
            self._cleanups += 1
        try:
            self._remove_session_state(removed)
            orphans = self._remove_orphans(cutoff)
        except Exception as ex:
            orphans = 0
            log.debug("[token-optimizer] session index: per-session cleanup failed: %s", ex)
        finally:
            with self._lock:
                self._cleanups -= 1
                if not self._cleanups:
                    self._revived.clear()
        if removed:
            log.info("[token-optimizer] session index: pruned %d entries idle > %g days",
                     len(removed), days)
        if orphans:
            log.info("[token-optimizer] session index: removed %d per-session files idle > %g "
                     "days that belong to no session entry", orphans, days)
        return [k for k, _ in removed]

    def maybe_prune(self, max_age_days: int, now: float | None = None) -> int | None:
        """Hourly gate for :meth:`prune_old_entries`, piggy-backed on hook calls.

        The first call after start prunes; later calls prune only when an hour
        has passed since the last prune (a clock that went backwards counts as
        due). Returns the count removed, or ``None`` when gated.
        """
        try:
            with self._lock:
                t = self._clock() if now is None else now
                last = self._last_prune
                due = last is None or t - last >= PRUNE_INTERVAL_S or t < last
                if not due:
                    return None
                self._last_prune = t
            return self.prune_old_entries(max_age_days, now=t)
        except Exception as e:
            log.warning("[token-optimizer] session index maybe_prune failed: %s", e)
            return None

    # ------------------------------------------------------------ per-session files

    def _live(self, column: str, name: str, extra: set[str]) -> bool:
        """Whether a live entry, a transient mark or a revived id owns this file name."""
        if name in extra:
            return True
        got = self._run(
            "lookup",
            lambda c: c.execute(
                f"SELECT 1 FROM entries WHERE {column}=? LIMIT 1", (name,)
            ).fetchone() is not None,
            True,  # unknown: keep the file
            create=False,
        )
        return bool(got)

    def _names(self, session_id: str) -> tuple[str, str]:
        """The ``ck`` and ``rc`` columns: the stores' own names for the session's files."""
        by_col = {f.column: f.disk_name(session_id) for f in self.files}
        return by_col.get("ck", ""), by_col.get("rc", "")

    def _transient_names(self, have: _Transient | None) -> _Transient:
        """File names owned by transient marks and by ids revived during a removal.

        Recomputed only when an id was revived since ``have`` was built.
        """
        with self._lock:
            n = len(self._revived)
            if have is not None and have[2] == n:
                return have
            ids = [e.session_id for _, e in self._pending.items()] + self._revived
        names = [self._names(s) for s in ids]
        return {ck for ck, _ in names}, {rc for _, rc in names}, n

    def _remove_session_state(self, removed: list[tuple[str, _Entry]]) -> None:
        """Have each store delete what it keeps for the removed sessions.

        The stores name their own files (:meth:`SessionFiles.session_files`) and
        remove them without following symlinks; a name still owned by a live
        session (two ids can sanitise to the same name, or the id came back
        meanwhile) is left alone.
        """
        if not removed:
            return
        transient: _Transient | None = None
        for key, e in removed:
            try:
                transient = self._transient_names(transient)
                agents = [a for a in (e.agent, e.platform, _agent_from_key(key)) if a]
                for store in self.files:
                    name = store.disk_name(e.session_id)
                    extra = transient[0] if store.column == "ck" else transient[1]
                    if self._live(store.column, name, extra):
                        continue
                    store.remove(store.session_files(e.session_id, agents))
            except Exception as ex:
                log.debug("[token-optimizer] session index: cleanup of %r failed: %s", key, ex)

    def _remove_orphans(self, cutoff: float) -> int:
        """Per-session files idle since before ``cutoff`` that no entry owns: sessions
        with no user turn (cron, heartbeat) never get an entry, so this is what bounds
        their files. Returns the number removed."""
        removed = 0
        transient: _Transient | None = None
        for store in self.files:
            for rel, owners in store.idle_files(cutoff):
                transient = self._transient_names(transient)
                extra = transient[0] if store.column == "ck" else transient[1]
                if any(self._live(store.column, o, extra) for o in owners):
                    continue
                removed += store.remove([rel])
        return removed
