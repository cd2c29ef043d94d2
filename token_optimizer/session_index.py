"""Session index: stable session key -> current session id, bounded on disk by age.

The index lives in ``<root>/session-index.json`` (:attr:`StatePaths.session_index`).
It is a *routing* index: one entry per chat lane (session key) holding the id
of the conversation currently routed there plus ``created_at``, ``updated_at``
(last real activity), ``suspended`` and the platform / agent when known.

Rules this module keeps (spec: session-bounds.md §3-§5):

* **Self-documenting file.** The JSON object starts with a ``_README`` string.
  Readers skip every ``_``-prefixed key; a non-object value is skipped with a
  warning so one bad entry never aborts a load.
* **Safe writes.** Whole-file atomic replace (temp file, fsync, rename) with
  mode 0600; a symlink at the index path is refused for reads and writes.
  One re-entrant lock guards all state.
* **Coalesced writes.** A touch on a known entry only updates memory (O(1));
  the file is rewritten at most once per ``flush_interval_s`` (default 30 s),
  plus at session end (:meth:`end_session` / :meth:`flush`), after a prune
  that removed something and at shutdown (:meth:`close`). A crash may lose
  up to one flush interval of ``updated_at`` precision, but never an entry.
* **Journal for urgent changes.** A *new* entry, an id rotation, a change of
  ``suspended`` (or of the platform / agent) must survive a crash, but must
  not cost an O(n) rewrite. Each one appends one compact JSON line with the
  entry's full new state to ``<root>/session-index.journal.jsonl`` (0600,
  ``O_NOFOLLOW``, fsynced; the directory is fsynced when the file is created),
  which is O(1) in the index size. A full write (the periodic flush, session end,
  prune, shutdown, or the journal outgrowing the index) writes the index
  atomically first and only then removes the journal; a crash between the
  two replays lines the index already holds, which is idempotent (a replayed
  line never moves ``updated_at`` back for the same session id, and a prune
  first appends a ``del`` line for every removed key the journal mentions,
  so a pruned key is never resurrected). Loading replays the journal over
  the index, later lines winning; a torn or invalid line is skipped with a
  warning, ``_``-prefixed keys are ignored and a symlinked journal is refused.
  If the journal cannot be appended to, the whole index is written instead
  (the pre-journal behaviour), and if that fails too the change is retried
  on the next message.
* **Lazy creation.** A session seen only through a handshake, a
  ``session_start``, a probe or a heartbeat (:meth:`note_session`, or
  :meth:`touch` with ``real_message=False``) is held in a bounded in-memory
  map and never written. Its entry appears on its first real user message.
  A failed write is logged as a warning and retried on the next message.
* **TTL pruning.** :meth:`prune_old_entries` drops entries idle longer than
  ``max_age_days`` (by ``updated_at``), keeping suspended entries, entries
  with a pending restore and entries whose session has active background
  work. Both callbacks take the **session key**; a callback that raises keeps
  the entry (fail closed). Removing an entry also removes that session's
  per-session files under the state root (checkpoints, read cache, decisions
  log, hint sidecar). :meth:`maybe_prune` gates it to once an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from token_optimizer.bounded import BoundedMap
from token_optimizer.fsutil import (
    FILE_MODE,
    O_NOFOLLOW,
    StatePaths,
    UnsafePathError,
    atomic_write,
    ensure_dir,
    fsync_dir,
    read_text_no_follow,
    remove_tree_safely,
    resolve_paths,
    safe_dir,
    sanitize_checkpoint_id,
    sanitize_removing,
)
from token_optimizer.jsutil import iso_from_ms, parse_iso_ms

log = logging.getLogger("token_optimizer")

README_KEY = "_README"
README_TEXT = (
    "token-optimizer session routing index. Each key is a stable session key (one chat lane); "
    "its value holds the id of the session currently routed there, created_at, updated_at "
    "(last real user message), suspended, and the platform/agent. This is NOT the list of all "
    "sessions: lanes that never received a real message are never written here, and entries "
    "idle longer than session_store_max_age_days (default 90, 0 disables) are pruned together "
    "with their per-session token-optimizer state (checkpoints/, read-cache/). Full conversation "
    "history stays with the host: OpenClaw keeps transcripts in "
    "~/.openclaw/agents/<agent>/sessions/<session-id>.jsonl, Hermes keeps them in "
    "$HERMES_HOME/state.db. Keys starting with '_' are ignored by readers. Lanes created or "
    "changed since this file was last written (at most ~30 s while the gateway runs) are "
    "recorded in session-index.journal.jsonl next to it, which readers replay over this file. "
    "Inspect with 'token-optimizer sessions'; prune with 'token-optimizer prune'."
)

PRUNE_INTERVAL_S = 3600.0
""":meth:`SessionIndex.maybe_prune` prunes at most once per this many seconds."""

JOURNAL_NAME = "session-index.journal.jsonl"
"""Append-only journal of urgent changes, next to the index file."""

JOURNAL_COMPACT_BYTES = 4 << 20
"""A journal larger than this (and than the index itself) triggers a full write."""

_MAX_JOURNAL_WARNINGS = 10

_KNOWN_FIELDS = frozenset(
    {"session_key", "session_id", "created_at", "updated_at", "suspended", "platform", "agent"}
)

KeyCallback = Callable[[str], bool]


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
    the entries touched between two flushes share a handful of seconds)."""
    ms = math.floor(seconds * 1000.0)
    sec, milli = divmod(ms, 1000)
    return f"{_iso_second(sec)}.{milli:03d}Z"


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _ck_name(session_id: str) -> str:
    """:func:`sanitize_checkpoint_id` with a fast path for ids that are already safe."""
    return session_id if _SAFE_NAME.fullmatch(session_id) else sanitize_checkpoint_id(session_id)


def _rc_name(session_id: str) -> str:
    """:func:`sanitize_removing` (empty -> ``unknown``) with the same fast path."""
    if _SAFE_NAME.fullmatch(session_id):
        return session_id
    return sanitize_removing(session_id, "unknown")


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

    def changed(self) -> None:
        self._json = None

    def to_json(self, key: str) -> dict[str, Any]:
        """The on-disk object (cached until the entry changes)."""
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


def _names_in(directory: Path) -> set[str]:
    try:
        with os.scandir(directory) as it:
            return {e.name for e in it}
    except OSError:
        return set()


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
    """The journal's bytes; ``None`` when absent. Refuses (raises) symlinks and non-regular files.

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


def _append_durable(path: Path, data: bytes) -> bool:
    """Append ``data`` to ``path`` and fsync it; return ``True`` when the file was empty or new.

    Refuses a symlink at the final component (``O_NOFOLLOW``) and anything
    but a regular file; creates the file with mode 0600. If the file does not
    end with a newline (a torn line left by a crash), a newline is written
    first so the new line stays readable. The caller fsyncs the directory
    when this returns ``True``, so a newly created journal survives a crash.
    """
    fd = os.open(
        path,
        os.O_RDWR | os.O_CREAT | os.O_APPEND | O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC,
        FILE_MODE,
    )
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"not a regular file: {path}")
        if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return st.st_size == 0


class SessionIndex:
    """Routing index with coalesced writes, lazy creation and TTL pruning.

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
        flush_interval_s: float = 30.0,
        pending_restore: KeyCallback | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.path = paths.session_index
        self.journal_path = self.path.with_name(JOURNAL_NAME)
        self.active_work = active_work
        self.pending_restore = pending_restore
        self.flush_interval_s = float(flush_interval_s)
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        # Sessions seen without a real message: transient, bounded, never serialised.
        self._pending: BoundedMap[str, _Entry] = BoundedMap("session_index.pending")
        self._dirty = False  # changes (updated_at touches included) not yet in the index file
        # Keys with an urgent change (new entry, rotation, suspension, platform/agent)
        # not yet durable in the journal or the index; insertion-ordered set.
        self._unjournaled: dict[str, None] = {}
        self._journaled: set[str] = set()  # keys with a line in the journal on disk
        self._journal_exists = False  # we created / found a regular journal file
        self._journal_bytes = 0
        self._journal_warned = False
        self._index_bytes = 0  # size of the index file last read or written
        self._write_ok = True  # the last full-write attempt succeeded
        self._last_flush = clock()
        self._last_prune: float | None = None
        self._corrupt_file = False  # the file on disk could not be parsed; back it up once
        self._cleanups = 0  # per-session file removals in progress (outside the lock)
        self._revived: list[str] = []  # ids (re)introduced while a removal is in progress
        self.flush_count = 0
        """Number of successful index writes (for tests and the benchmark)."""
        self.journal_count = 0
        """Number of successful journal appends (for tests and the benchmark)."""
        self._load()

    # ------------------------------------------------------------ load / save

    def _load(self) -> None:
        self._load_index()
        self._load_journal()

    def _load_index(self) -> None:
        try:
            text = read_text_no_follow(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("[token-optimizer] session index %s not read: %s", self.path, e)
            return
        self._index_bytes = len(text)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            log.warning(
                "[token-optimizer] session index %s is not valid JSON (%s); it will be kept as %s.corrupt",
                self.path,
                e,
                self.path.name,
            )
            self._corrupt_file = True
            return
        if not isinstance(data, dict):
            log.warning(
                "[token-optimizer] session index %s is not a JSON object; it will be kept as %s.corrupt",
                self.path,
                self.path.name,
            )
            self._corrupt_file = True
            return
        now = self._clock()
        repaired = False
        for key, value in data.items():
            if key.startswith("_"):
                continue
            parsed, fixed = _parse_entry(key, value, now, "session index")
            if parsed is not None:
                self._entries[key] = parsed
                repaired |= fixed
        if repaired:
            self._dirty = True

    def _load_journal(self) -> None:
        """Replay the journal over the loaded index (later lines win). Writes nothing."""
        try:
            data = _read_journal(self.journal_path)
        except UnsafePathError as e:
            log.warning(
                "[token-optimizer] session index journal refused (%s); it is ignored and never "
                "written through",
                e,
            )
            return
        except OSError as e:
            log.warning(
                "[token-optimizer] session index journal %s not read: %s", self.journal_path, e
            )
            return
        if data is None:
            return
        self._journal_exists = True
        self._journal_bytes = len(data)
        if not data:
            return
        # Whatever it holds, the next full write absorbs it and removes the file.
        self._dirty = True
        now = self._clock()
        lines = data.split(b"\n")
        bad = 0
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            why = self._replay_line(raw, now)
            if why is None:
                continue
            bad += 1
            if bad <= _MAX_JOURNAL_WARNINGS:
                torn = lineno == len(lines)  # no newline after it: a write cut short
                log.warning(
                    "[token-optimizer] session index journal %s: skipping %sline %d (%s)",
                    self.journal_path.name,
                    "torn last " if torn else "",
                    lineno,
                    why,
                )
        if bad > _MAX_JOURNAL_WARNINGS:
            log.warning(
                "[token-optimizer] session index journal %s: %d unreadable lines skipped in all",
                self.journal_path.name,
                bad,
            )

    def _replay_line(self, raw: bytes, now: float) -> str | None:
        """Apply one journal line; return why it was skipped, or ``None`` when applied."""
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
            self._entries.pop(key, None)
            self._journaled.add(key)
            return None
        if op != "put":
            return f"unknown op {op!r}"
        e, _ = _parse_entry(key, rec.get("entry"), now, "session index journal")
        if e is None:
            return "unusable entry"
        cur = self._entries.get(key)
        if cur is not None and cur.session_id == e.session_id and cur.updated_s > e.updated_s:
            # A line the index already absorbed (crash between the index write and
            # the journal removal): never move last activity back.
            e.updated_s = cur.updated_s
            e.updated_iso = cur.updated_iso
        self._entries[key] = e
        self._journaled.add(key)
        return None

    def _serialise(self) -> bytes:
        doc: dict[str, Any] = {README_KEY: README_TEXT}
        for key, e in self._entries.items():
            doc[key] = e.to_json(key)
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    def _write_locked(self) -> None:
        """Serialise and atomically replace the file, then drop the journal (caller holds the lock).

        Raises when the index write fails (the journal is then kept).
        """
        ensure_dir(self.path.parent, base=self.path.parent)
        data = self._serialise()
        if self._corrupt_file:
            backup = self.path.with_name(self.path.name + ".corrupt")
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISREG(st.st_mode) and not os.path.lexists(backup):
                    os.replace(self.path, backup)
            self._corrupt_file = False
        atomic_write(self.path, data)  # fsynced file and directory: durable before the journal goes
        self._dirty = False
        self._unjournaled.clear()
        self._index_bytes = len(data)
        self.flush_count += 1
        self._reset_journal_locked()

    def _reset_journal_locked(self) -> None:
        """Remove the journal after a durable index write (its lines are all in the index).

        A crash before the removal reaches the disk only replays absorbed lines.
        A symlink or other non-regular file at the path is left alone.
        """
        if not self._journal_exists:
            return
        p = self.journal_path
        try:
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            # Kept: replaying it is idempotent, and _journaled still guards prunes.
            log.warning("[token-optimizer] session index journal %s not removed: %s", p, e)
            return
        self._journal_exists = False
        self._journal_bytes = 0
        self._journaled.clear()

    def _journal_locked(self) -> bool:
        """Append one line per key in ``_unjournaled`` (its full state, or ``del``) and fsync.

        O(number of keys), independent of the index size. Returns ``False``
        (warned once per index, debug afterwards) when the append failed.
        """
        keys = list(self._unjournaled)
        parts: list[bytes] = []
        for k in keys:
            e = self._entries.get(k)
            rec: dict[str, Any] = (
                {"op": "del", "key": k}
                if e is None
                else {"op": "put", "key": k, "entry": e.to_json(k)}
            )
            parts.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        data = b"".join(parts)
        try:
            if not self._journal_exists:
                ensure_dir(self.path.parent, base=self.path.parent)
            if _append_durable(self.journal_path, data):
                fsync_dir(self.journal_path.parent)
        except Exception as e:
            level = logging.DEBUG if self._journal_warned else logging.WARNING
            self._journal_warned = True
            log.log(
                level,
                "[token-optimizer] session index journal append failed (%s); writing the whole "
                "index instead",
                e,
            )
            return False
        self._journal_exists = True
        self._journal_bytes += len(data)
        self._journaled.update(keys)
        self._unjournaled.clear()
        self.journal_count += 1
        return True

    def _try_write_locked(self, now: float, why: str) -> bool:
        try:
            self._write_locked()
        except Exception as e:
            log.warning("[token-optimizer] session index write (%s) failed, will retry: %s", why, e)
            # Coalesced touches wait a full interval before the next attempt;
            # urgent changes the journal could not take retry on the next message.
            self._last_flush = now
            self._write_ok = False
            return False
        self._last_flush = now
        self._write_ok = True
        return True

    def _maybe_flush_locked(self, now: float) -> None:
        if not (self._dirty or self._unjournaled):
            return
        due = now - self._last_flush >= self.flush_interval_s or now < self._last_flush
        if due and self._try_write_locked(now, "periodic"):
            return
        if self._unjournaled and not self._journal_locked():
            if not due:  # a failed periodic write was just attempted otherwise
                self._try_write_locked(now, "new entry")
            return
        if self._write_ok and self._journal_bytes >= max(JOURNAL_COMPACT_BYTES, self._index_bytes):
            self._try_write_locked(now, "journal compaction")

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
        host's agent / profile id; besides being listed by ``token-optimizer
        sessions`` it names the read-cache files (``<agent>-<session id>.json``)
        removed with the entry when it is pruned.

        Cost: refreshing a known entry is O(1) in memory; a new entry, a
        rotation or a platform/agent change appends one fsynced journal line
        (O(1) in the index size); the whole index is rewritten at most once
        per ``flush_interval_s``.
        """
        if not isinstance(session_key, str) or not session_key or session_key.startswith("_"):
            log.debug("[token-optimizer] session index: ignoring session key %r", session_key)
            return None
        if not isinstance(session_id, str) or not session_id:
            log.debug(
                "[token-optimizer] session index: ignoring session id %r for %r",
                session_id,
                session_key,
            )
            return None
        platform = platform if isinstance(platform, str) and platform else None
        agent = agent if isinstance(agent, str) and agent else None
        try:
            with self._lock:
                return self._touch_locked(session_key, session_id, platform, agent, real_message)
        except Exception as e:  # never raise into a host
            log.warning("[token-optimizer] session index touch failed: %s", e)
            return None

    def _touch_locked(
        self, key: str, sid: str, platform: str | None, agent: str | None, real: bool
    ) -> str | None:
        now = self._clock()
        entry = self._entries.get(key)
        pending = self._pending.get(key)
        current = (
            pending.session_id if pending is not None else (entry.session_id if entry else None)
        )
        previous = current if current is not None and current != sid else None

        if not real:
            if entry is not None and entry.session_id == sid:
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

        if pending is not None:
            self._pending.pop(key)
            if pending.session_id != sid:
                pending = None
        if entry is None:
            entry = _Entry(
                sid,
                pending.created_at if pending is not None else _iso(now),
                now,
                suspended=pending.suspended if pending is not None else False,
                platform=platform or (pending.platform if pending is not None else None),
                agent=agent or (pending.agent if pending is not None else None),
            )
            self._entries[key] = entry
            self._note_id_locked(sid)
            self._unjournaled[key] = None
        elif entry.session_id != sid:
            # A new conversation under the same lane: it starts unsuspended
            # unless the suspension was set while it was still transient.
            entry.session_id = sid
            entry.created_at = pending.created_at if pending is not None else _iso(now)
            entry.suspended = pending.suspended if pending is not None else False
            entry.updated_s = now
            entry.updated_iso = None
            if platform is not None:
                entry.platform = platform
            if agent is not None:
                entry.agent = agent
            entry.changed()
            self._note_id_locked(sid)
            self._unjournaled[key] = None
        else:
            entry.updated_s = now
            entry.updated_iso = None
            # Labels are journaled too (rare), so a journal line always holds the
            # entry's latest state but for updated_at: replaying it is idempotent.
            if platform is not None and platform != entry.platform:
                entry.platform = platform
                self._unjournaled[key] = None
            if agent is not None and agent != entry.agent:
                entry.agent = agent
                self._unjournaled[key] = None
            entry.changed()
        self._dirty = True
        self._maybe_flush_locked(now)
        return previous

    def _note_id_locked(self, session_id: str) -> None:
        if self._cleanups:
            self._revived.append(session_id)

    def set_suspended(self, session_key: str, suspended: bool) -> None:
        """Mark an entry suspended (never pruned) or resumed. Journaled at once when it changes."""
        try:
            with self._lock:
                flag = bool(suspended)
                entry = self._entries.get(session_key)
                pending = self._pending.get(session_key)
                if pending is not None:
                    pending.suspended = flag
                if entry is None or (
                    pending is not None and pending.session_id != entry.session_id
                ):
                    if pending is None:
                        log.debug(
                            "[token-optimizer] session index: set_suspended on unknown key %r",
                            session_key,
                        )
                    return
                if entry.suspended != flag:
                    entry.suspended = flag
                    entry.changed()
                    self._dirty = True
                    self._unjournaled[session_key] = None
                    self._maybe_flush_locked(self._clock())
        except Exception as e:
            log.warning("[token-optimizer] session index set_suspended failed: %s", e)

    def end_session(self, session_key: str | None = None) -> None:
        """Session end: drop the key's transient mark and flush pending changes."""
        with self._lock:
            if session_key is not None:
                self._pending.pop(session_key)
            self.flush()

    # ------------------------------------------------------------ queries

    def get(self, session_key: str) -> dict[str, Any] | None:
        """The entry for ``session_key`` (with ``persisted`` = whether it is on the index), or ``None``."""
        with self._lock:
            pending = self._pending.get(session_key)
            if pending is not None:
                return pending.public(session_key, persisted=False)
            entry = self._entries.get(session_key)
            return entry.public(session_key, persisted=True) if entry is not None else None

    def entries(self) -> dict[str, dict[str, Any]]:
        """A copy of every persisted entry (as written to disk), in index order."""
        with self._lock:
            return {k: dict(e.to_json(k)) for k, e in self._entries.items()}

    def is_persisted(self, session_key: str) -> bool:
        with self._lock:
            return session_key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def pending_count(self) -> int:
        """Sessions held only as transient (never written) marks: handshakes, probes, resets."""
        return len(self._pending)

    # ------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Write the index now (and drop the journal) if anything changed since the last write.

        Never raises. If the write fails, urgent changes not yet journaled are
        journaled, so they survive (as the journal's earlier lines do).
        """
        with self._lock:
            if not (self._dirty or self._unjournaled):
                return
            if not self._try_write_locked(self._clock(), "flush") and self._unjournaled:
                self._journal_locked()

    def tick(self) -> None:
        """Write coalesced changes if the flush interval has passed (call from any hook)."""
        with self._lock:
            self._maybe_flush_locked(self._clock())

    def close(self) -> None:
        """Shutdown: flush pending changes."""
        self.flush()

    # ------------------------------------------------------------ pruning

    @staticmethod
    def _guarded(cb: KeyCallback | None, key: str, what: str) -> bool:
        """True when ``cb(key)`` says the entry must be kept; a raising callback keeps it."""
        if cb is None:
            return False
        try:
            return bool(cb(key))
        except Exception as e:
            log.debug(
                "[token-optimizer] session index: %s callback raised for %r (kept): %s",
                what,
                key,
                e,
            )
            return True

    def _candidates_locked(self, max_age_days: float, now: float) -> list[str]:
        cutoff = now - max_age_days * 86400.0
        out: list[str] = []
        for key, e in list(self._entries.items()):
            try:
                if e.suspended or e.updated_s >= cutoff:
                    continue
                if self._guarded(self.pending_restore, key, "pending_restore"):
                    continue
                if self._guarded(self.active_work, key, "active_work"):
                    continue
                out.append(key)
            except Exception as ex:
                log.debug("[token-optimizer] session index: prune check failed for %r: %s", key, ex)
        return out

    @staticmethod
    def _days(max_age_days: object) -> float:
        if isinstance(max_age_days, bool) or not isinstance(max_age_days, (int, float)):
            log.debug(
                "[token-optimizer] session index: bad max_age_days %r; pruning skipped",
                max_age_days,
            )
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
            return self._candidates_locked(days, self._clock() if now is None else now)

    def prune_old_entries(self, max_age_days: int, now: float | None = None) -> int:
        """Remove entries idle longer than ``max_age_days``; return how many.

        ``max_age_days <= 0`` disables pruning. Suspended entries, entries
        with a pending restore and entries with active background work are
        kept. The file is rewritten only when something was removed, and each
        removed session's per-session state under the root is deleted.
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
            for key in self._candidates_locked(days, t):
                try:
                    removed.append((key, self._entries.pop(key)))
                except Exception as ex:
                    log.debug("[token-optimizer] session index: prune of %r failed: %s", key, ex)
            if not removed:
                return []
            # A key the journal still mentions gets a "del" line first, so a crash
            # between the index write and the journal removal cannot resurrect it.
            for key, _ in removed:
                if key in self._journaled:
                    self._unjournaled[key] = None
            if self._unjournaled:
                self._journal_locked()  # on failure the index write below still follows
            self._dirty = True
            self._try_write_locked(self._clock(), "prune")
            live_ids = [e.session_id for e in self._entries.values()]
            live_ids += [e.session_id for _, e in self._pending.items()]
            self._cleanups += 1
        # File removal runs outside the lock so messages are not held up by
        # disk work; ids that come back meanwhile are reported via _revived.
        try:
            self._remove_session_state(removed, live_ids)
        except Exception as ex:
            log.debug("[token-optimizer] session index: per-session cleanup failed: %s", ex)
        finally:
            with self._lock:
                self._cleanups -= 1
                if not self._cleanups:
                    self._revived.clear()
        log.info(
            "[token-optimizer] session index: pruned %d entries idle > %g days", len(removed), days
        )
        return [k for k, _ in removed]

    def maybe_prune(self, max_age_days: int, now: float | None = None) -> int | None:
        """Hourly gate for :meth:`prune_old_entries`, piggy-backed on hook calls.

        The first call after start prunes; later calls prune only when an hour
        has passed since the last prune (a clock that went backwards counts as
        due). Returns the count removed, or ``None`` when gated. Every call
        also writes coalesced changes if the flush interval has passed.
        """
        try:
            with self._lock:
                t = self._clock() if now is None else now
                last = self._last_prune
                due = last is None or t - last >= PRUNE_INTERVAL_S or t < last
                if due:
                    self._last_prune = t
                else:
                    self._maybe_flush_locked(self._clock())
                    return None
            n = self.prune_old_entries(max_age_days, now=t)
            self.tick()
            return n
        except Exception as e:
            log.warning("[token-optimizer] session index maybe_prune failed: %s", e)
            return None

    # ------------------------------------------------------------ per-session files

    def _remove_session_state(
        self, removed: list[tuple[str, _Entry]], live_ids: Iterable[str]
    ) -> None:
        """Delete checkpoints, read-cache, decisions and hint files of removed sessions.

        Safety: each parent directory must pass :func:`safe_dir` (a real
        directory inside the root). Checkpoint directories go through
        :func:`remove_tree_safely`. Single files are handled relative to an
        ``O_NOFOLLOW`` descriptor of their verified parent: a one-component
        name is ``lstat``-ed (must be a regular file) and unlinked, so no
        symlink is ever followed and nothing outside the parent is reachable
        (the same guarantee as :func:`safe_file`, without two ``realpath``
        walks per file). A name still owned by a live session (two ids can
        sanitise to the same name) is left alone.
        """
        root = self.paths.root
        if not safe_dir(root, root.parent):
            return
        ck_root = self.paths.checkpoints
        ck_names = _names_in(ck_root) if safe_dir(ck_root, root) else set()
        rc_root = self.paths.read_cache
        rc_ok = safe_dir(rc_root, root)
        rc_names = _names_in(rc_root) if rc_ok else set()
        dec_root = self.paths.decisions
        dec_names = _names_in(dec_root) if rc_ok and safe_dir(dec_root, rc_root) else set()
        if not (ck_names or rc_names or dec_names):
            return

        # Read-cache ids that own at least one file: "<agent>-<id>.json" can only
        # belong to an id equal to a dash-separated suffix of the stem.
        rc_ids: set[str] = set()
        for name in rc_names:
            if name.endswith(".json"):
                stem = name[:-5]
                i = stem.find("-")
                while i >= 0:
                    rc_ids.add(stem[i + 1 :])
                    i = stem.find("-", i + 1)
        dec_ids = {n[:-6] for n in dec_names if n.endswith(".jsonl")}

        # Pass 1 (names only, no syscalls): which removed sessions own something?
        hits: list[tuple[str, str, list[str], list[str]]] = []  # ck, rc, rc files, dec files
        for key, e in removed:
            try:
                sid = e.session_id
                ck = _ck_name(sid)
                if ck not in ck_names or ck == "invalid-session":
                    ck = ""
                rc = _rc_name(sid)
                rc_files: list[str] = []
                dec_files: list[str] = []
                if rc != "unknown" and rc in rc_ids:
                    agents = {
                        _agent_name(a) for a in (e.agent, e.platform, _agent_from_key(key)) if a
                    }
                    agents.add("default")
                    agents.add("hint-serves")
                    rc_files = [f"{a}-{rc}.json" for a in agents if f"{a}-{rc}.json" in rc_names]
                if rc != "unknown" and rc in dec_ids:
                    dec_files.append(f"{rc}.jsonl")
                if ck or rc_files or dec_files:
                    hits.append((ck, rc, rc_files, dec_files))
            except Exception as ex:
                log.debug("[token-optimizer] session index: cleanup of %r failed: %s", key, ex)
        if not hits:
            return

        # Pass 2: never touch a name still owned by a live session (including
        # ids that came back while this removal runs).
        live_ck = {_ck_name(s) for s in live_ids}
        live_rc = {_rc_name(s) for s in live_ids}
        seen_revived = 0
        with (
            _DirFd(rc_root if rc_names else None) as rc_fd,
            _DirFd(dec_root if dec_names else None) as dec_fd,
        ):
            for ck, rc, rc_files, dec_files in hits:
                try:
                    with self._lock:
                        fresh = self._revived[seen_revived:]
                    if fresh:
                        seen_revived += len(fresh)
                        live_ck.update(_ck_name(s) for s in fresh)
                        live_rc.update(_rc_name(s) for s in fresh)
                    if ck and ck not in live_ck:
                        try:
                            remove_tree_safely(ck_root / ck, ck_root)
                        except UnsafePathError as ex:
                            log.debug("[token-optimizer] session index: kept %s: %s", ck, ex)
                    if rc in live_rc:
                        continue
                    for fd, names in ((rc_fd, rc_files), (dec_fd, dec_files)):
                        for name in names:
                            _unlink_regular(fd, name)
                except Exception as ex:
                    log.debug("[token-optimizer] session index: cleanup of %s failed: %s", rc, ex)


class _DirFd:
    """``O_DIRECTORY | O_NOFOLLOW`` descriptor of a verified directory (``None`` when unavailable)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> int | None:
        if self.path is not None and os.open in os.supports_dir_fd:
            flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
            try:
                self.fd = os.open(self.path, flags)
            except OSError as e:
                log.debug("[token-optimizer] session index: cannot open %s: %s", self.path, e)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _unlink_regular(dir_fd: int | None, name: str) -> None:
    """Unlink ``name`` inside ``dir_fd`` if it is a regular file (never a symlink or directory)."""
    if dir_fd is None or not name or "/" in name or name in (".", ".."):
        return
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


@functools.lru_cache(maxsize=256)
def _agent_name(agent: str) -> str:
    return sanitize_removing(agent, "default")


# ---------------------------------------------------------------- operator CLI


def _session_disk_bytes(paths: StatePaths, key: str, entry: dict[str, Any]) -> int:
    """Bytes of per-session state under the root (no symlink is followed)."""
    sid = str(entry.get("session_id", ""))
    total = 0
    ck = paths.checkpoints / _ck_name(sid)
    if safe_dir(ck, paths.root):
        for dirpath, _dirs, files in os.walk(ck, followlinks=False):
            for f in files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, f))
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
    rc = _rc_name(sid)
    names = {
        f"{_agent_name(a)}-{rc}.json"
        for a in (entry.get("agent"), entry.get("platform"), _agent_from_key(key), "default")
        if isinstance(a, str) and a
    }
    candidates = [paths.read_cache / n for n in names]
    candidates += [paths.read_cache / f"hint-serves-{rc}.json", paths.decisions / f"{rc}.jsonl"]
    for p in candidates:
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _fmt_age(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _print_json(obj: Any) -> None:
    print(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode("utf-8"))


def _cmd_sessions(args: argparse.Namespace) -> int:
    paths = resolve_paths(getattr(args, "home", None))
    idx = SessionIndex(paths)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for key, e in idx.entries().items():
        updated = _parse_ts(e.get("updated_at"))
        rows.append(
            {
                "session_key": key,
                "session_id": e.get("session_id"),
                "created_at": e.get("created_at"),
                "updated_at": e.get("updated_at"),
                "age_seconds": round(now - updated, 3) if math.isfinite(updated) else None,
                "suspended": bool(e.get("suspended")),
                "platform": e.get("platform"),
                "agent": e.get("agent"),
                "size_bytes": _session_disk_bytes(paths, key, e),
            }
        )
    rows.sort(key=lambda r: (r["age_seconds"] is None, r["age_seconds"] or 0.0))
    if args.json:
        _print_json({"index": str(idx.path), "count": len(rows), "sessions": rows})
        return 0
    if not rows:
        print(f"No sessions in the index ({idx.path}).")
        return 0
    headers = ("SESSION KEY", "SESSION ID", "AGE", "SUSPENDED", "SIZE")
    table = [
        (
            str(r["session_key"]),
            str(r["session_id"]),
            _fmt_age(r["age_seconds"] if r["age_seconds"] is not None else math.nan),
            "yes" if r["suspended"] else "no",
            _fmt_size(int(r["size_bytes"])),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())
    print(f"{len(rows)} session(s) in {idx.path}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from token_optimizer.config import Config, coerce_max_age_days

    paths = resolve_paths(getattr(args, "home", None))
    if args.max_age_days is None:
        days = Config.from_env().session_store_max_age_days
    else:
        days = coerce_max_age_days(args.max_age_days, source="--max-age-days")
    idx = SessionIndex(paths)
    total = len(idx)
    keys = idx.prune_candidates(days) if args.dry_run else idx.prune_keys(days)
    count = len(keys)
    result = {
        "index": str(idx.path),
        "max_age_days": days,
        "dry_run": bool(args.dry_run),
        "disabled": days <= 0,
        "removed": count,
        "keys": keys,
        "remaining": total - (0 if args.dry_run else count),
    }
    if args.json:
        _print_json(result)
        return 0
    if days <= 0:
        print("Pruning is disabled (max age 0 days); nothing removed.")
        return 0
    verb = "Would prune" if args.dry_run else "Pruned"
    print(
        f"{verb} {count} of {total} session index entr{'y' if total == 1 else 'ies'} idle more than {days} days."
    )
    for k in keys:
        print(f"  {k}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``sessions`` and ``prune`` to the ``token-optimizer`` command line."""
    p = subparsers.add_parser(
        "sessions",
        help="list the session routing index (key, id, age, suspended, size on disk)",
        description="List the session routing index: one line per session key with its current "
        "session id, time since last activity, suspension flag and per-session state size.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_sessions)

    q = subparsers.add_parser(
        "prune",
        help="remove session index entries idle longer than the max age, with their per-session state",
        description="Remove session index entries whose last activity is older than the max age "
        "(suspended entries are kept), together with their checkpoints and read-cache files. "
        "Best run while the gateway is stopped: a running gateway prunes hourly by itself.",
    )
    q.add_argument(
        "--max-age-days",
        type=int,
        default=None,
        metavar="N",
        help="age limit in days (default: $TOKEN_OPTIMIZER_SESSION_STORE_MAX_AGE_DAYS or 90; 0 disables)",
    )
    q.add_argument(
        "--dry-run", action="store_true", help="show what would be removed; change nothing"
    )
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_cmd_prune)
