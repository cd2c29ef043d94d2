"""OpenClaw 2026.9.x reader: per-agent SQLite transcripts, session facts, cron jobs, legacy files.

Layout (checked against the host's dist, ``openclaw-agent-board-schema-*.mjs``
``OPENCLAW_AGENT_SCHEMA_SQL`` and ``openclaw-state-db-read-connection-*.mjs``
``OPENCLAW_STATE_SCHEMA_SQL``, openclaw 2026.9.6):

* ``<root>/agents/<id>/agent/openclaw-agent.sqlite``:
  ``transcript_events(session_id, seq, event_json, created_at, event_zstd,
  event_utf8_bytes, navigation_json)``: an event of 1 KiB or more may be stored
  as one zstd frame in ``event_zstd`` with ``event_json`` NULL;
  ``session_windows`` (one row per transcript generation: ``session_key``,
  ``reason`` incl. ``compaction``/``rewind``, ``previous_session_id``, times,
  ``status``, ``model``); ``session_nodes`` (``created_via``, the real cron
  signal, ``project_id``); ``heartbeat_outcomes``;
  ``session_transcript_cold_archives`` (whole transcripts moved out of
  ``transcript_events`` into a zstd JSONL, in the db or under
  ``agents/<id>/sessions/cold/``); ``session_transcript_archives`` (deleted or
  reset transcripts kept in the db); ``transcript_rewrite_watermarks``.
* ``<root>/state/openclaw.sqlite``: ``cron_jobs(job_id, name, enabled, agent_id,
  payload_kind, job_json, …)``; ``job_json`` holds the job definition (``payload``,
  ``schedule``), read for the commands an enabled job runs.
* ``<root>/agents/<id>/sessions/``: legacy ``<sid>.jsonl`` and the archives the
  host still counts, ``<sid>.jsonl.deleted.<stamp>`` / ``.reset.<stamp>``
  (optionally ``.zst``), plus import leftovers ``<sid>.jsonl.migrated[.N]``.

A session id found in SQLite wins over any file; among files of one session
id the one with the most events is kept (the others are copies).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import orjson

from token_optimizer.audit import zstd
from token_optimizer.audit.cache import AuditCache
from token_optimizer.audit.model import CronCommand, RunType, SessionRow
from token_optimizer.audit.money import Pricer, finish_session
from token_optimizer.audit.sqlite_ro import connect_ro, store_stamp, table_columns

if TYPE_CHECKING:
    from token_optimizer.audit.accumulate import SessionAcc

log = logging.getLogger("token_optimizer")

T = TypeVar("T")

Progress = Callable[[int, int, str], None]

AGENT_DB = Path("agent") / "openclaw-agent.sqlite"
STATE_DB = Path("state") / "openclaw.sqlite"
BATCH_ROWS = 5000
FULL_SCAN_MIN_SESSIONS = 200
"""Above this many sessions to (re)read, one rowid-ordered pass beats per-session queries."""

_ARCHIVE_RE = re.compile(
    r"^(?P<sid>.+?)\.jsonl(?:\.(?:deleted|reset)\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d{3})?Z"
    r"(?:\.[0-9a-f]{32})?|\.migrated(?:\.\d+)?)?(?P<zst>\.zst)?$")


def default_root() -> Path:
    env = os.environ.get("OPENCLAW_STATE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".openclaw"


def agent_dbs(root: Path) -> list[tuple[str, Path]]:
    """(agent id, db path) of every agent store under ``root``."""
    out: list[tuple[str, Path]] = []
    try:
        entries = sorted(os.scandir(root / "agents"), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        if e.is_dir():
            p = Path(e.path) / AGENT_DB
            if p.is_file():
                out.append((e.name, p))
    return out


def transcript_sid(name: str) -> str | None:
    """The session id of a usage-counted transcript file name, ``None`` for any other file."""
    if ".jsonl" not in name or name.endswith((".trajectory.jsonl", ".tmp")) \
            or ".checkpoint." in name:
        return None
    m = _ARCHIVE_RE.match(name)
    return m.group("sid") if m else None


def transcript_dirs(root: Path) -> list[tuple[str, str]]:
    """(agent id, ``sessions`` dir) of every agent, sorted by agent id."""
    try:
        agents = sorted(os.scandir(os.path.join(root, "agents")), key=lambda e: e.name)
    except OSError:
        return []
    return [(a.name, os.path.join(a.path, "sessions")) for a in agents if a.is_dir()]


class TranscriptFile(NamedTuple):
    agent: str
    sid: str
    name: str
    path: str
    size: int
    mtime_ns: int


def list_transcripts(agent: str, sessions_dir: str,
                     known: dict[str, str] | None = None,
                     listed: list[Any] | None = None) -> list[TranscriptFile]:
    """Every usage-counted transcript in one ``sessions`` dir with its size and mtime,
    sorted by name (one ``scandir`` and one ``stat`` per file; nothing is opened).
    ``known`` maps names already recognised to their session ids; ``listed`` is this
    dir's flat (name, size, mtime_ns) listing when the caller already took it."""
    out: list[TranscriptFile] = []
    known = known or {}
    if listed is not None:
        for i in range(0, len(listed), 3):
            name = listed[i]
            sid = known.get(name) or transcript_sid(name)
            if sid is not None:
                out.append(TranscriptFile(agent, sid, name, os.path.join(sessions_dir, name),
                                          listed[i + 1], listed[i + 2]))
        return out
    try:
        entries = sorted(os.scandir(sessions_dir), key=lambda e: e.name)
    except OSError:
        return out
    for f in entries:
        name = f.name
        sid = known.get(name) or transcript_sid(name)
        if sid is None:
            continue
        try:
            if not f.is_file():
                continue
            st = f.stat()
        except OSError:
            continue
        out.append(TranscriptFile(agent, sid, name, f.path, st.st_size, st.st_mtime_ns))
    return out


def transcript_files(root: Path) -> list[tuple[str, str, Path]]:
    """(agent id, session id, path) of every usage-counted transcript file."""
    out: list[tuple[str, str, Path]] = []
    for agent, d in transcript_dirs(root):
        try:
            files = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for f in files:
            sid = transcript_sid(f.name)
            if sid is not None and f.is_file():
                out.append((agent, sid, Path(f.path)))
    return out


# ---------------------------------------------------------------- decoding


def decode_event(event_json: str | bytes | None, event_zstd: bytes | None) -> Any:
    """The event object of one ``transcript_events`` row (``None`` when it does not decode)."""
    try:
        if event_json is not None:
            return orjson.loads(event_json)
        if event_zstd is not None:
            return orjson.loads(zstd.decompress(bytes(event_zstd)))
    except zstd.ZstdUnavailable:
        raise
    except Exception:  # bad JSON or a corrupt zstd frame: skip the row
        return None
    return None


def iter_jsonl(data: bytes) -> Iterator[Any]:
    for line in data.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


# ---------------------------------------------------------------- facts


@dataclass
class Facts:
    """What the store says about sessions apart from their events."""

    windows: dict[str, list[Any]] = field(default_factory=dict)
    """session_id → [session_key, created_at, started_at, ended_at, status, model, channel, reason]."""
    nodes: dict[str, list[Any]] = field(default_factory=dict)
    """session_key → [created_via, project_id, label]."""
    compacted_into: dict[str, int] = field(default_factory=dict)
    rewound_into: dict[str, int] = field(default_factory=dict)
    heartbeat_keys: dict[str, int] = field(default_factory=dict)
    generations: dict[str, str] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        return {"w": self.windows, "n": self.nodes, "c": self.compacted_into,
                "r": self.rewound_into, "h": self.heartbeat_keys, "g": self.generations}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> Facts:
        return cls(st.get("w", {}), st.get("n", {}), st.get("c", {}), st.get("r", {}),
                   st.get("h", {}), st.get("g", {}))


def _read_facts(con: sqlite3.Connection) -> Facts:
    f = Facts()
    wcols = table_columns(con, "session_windows")
    if {"session_id", "session_key"} <= wcols:
        want = ["session_id", "session_key", "created_at", "started_at", "ended_at", "status",
                "model", "channel", "reason", "previous_session_id"]
        sel = ", ".join(c if c in wcols else "NULL" for c in want)
        for r in con.execute(f"SELECT {sel} FROM session_windows"):
            f.windows[str(r[0])] = list(r[1:9])
            prev, reason = r[9], r[8]
            if prev and reason == "compaction":
                f.compacted_into[prev] = f.compacted_into.get(prev, 0) + 1
            elif prev and reason == "rewind":
                f.rewound_into[prev] = f.rewound_into.get(prev, 0) + 1
    ncols = table_columns(con, "session_nodes")
    if "session_key" in ncols:
        want = ["session_key", "created_via", "project_id", "label"]
        sel = ", ".join(c if c in ncols else "NULL" for c in want)
        for r in con.execute(f"SELECT {sel} FROM session_nodes"):
            f.nodes[str(r[0])] = list(r[1:])
    hcols = table_columns(con, "heartbeat_outcomes")
    if "run_session_key" in hcols:
        for r in con.execute("SELECT run_session_key, count(*) FROM heartbeat_outcomes GROUP BY 1"):
            f.heartbeat_keys[str(r[0])] = int(r[1])
    if "generation" in table_columns(con, "transcript_rewrite_watermarks"):
        for r in con.execute("SELECT session_id, generation FROM transcript_rewrite_watermarks"):
            f.generations[str(r[0])] = str(r[1])
    return f


def _read_state_db(root: Path | None, read: Callable[[sqlite3.Connection], T], empty: T) -> T:
    """``read`` on a read-only connection to ``<root>/state/openclaw.sqlite``; ``empty``
    when it is missing or unreadable (one debug line)."""
    if root is None:
        return empty
    p = root / STATE_DB
    if not p.is_file():
        return empty
    try:
        con = connect_ro(p)
    except sqlite3.Error as exc:
        log.debug("cron_jobs unreadable in %s: %s", p, exc)
        return empty
    try:
        return read(con)
    except sqlite3.Error as exc:
        log.debug("cron_jobs unreadable in %s: %s", p, exc)
        return empty
    finally:
        con.close()


def read_cron_jobs(root: Path) -> dict[str, str]:
    """job_id → job name from ``state/openclaw.sqlite`` (empty when absent)."""
    def read(con: sqlite3.Connection) -> dict[str, str]:
        if "job_id" not in table_columns(con, "cron_jobs"):
            return {}
        return {str(r[0]): str(r[1]) for r in con.execute("SELECT job_id, name FROM cron_jobs")}

    return _read_state_db(root, read, {})


def _str_list(v: Any) -> list[str] | None:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        return None
    return v


def _job_commands(job_id: str, name: str, agent: str, job: dict[str, Any]) -> list[CronCommand]:
    """The commands and working directories of one job (its ``job_json``).

    OpenClaw 2026.9.6 (``CronPayload``/``CronJobSchema`` in its ``dist`` typings) runs
    processes from three places: a ``command`` payload (``argv``: string list, the CLI's
    ``--command`` stores ``["sh", "-lc", <shell>]``; ``cwd``), an ``on-exit`` schedule
    (``command``: shell string; ``cwd``) and a ``stream`` schedule (``command``: argv;
    ``cwd``). Other payloads hold prompts (``agentTurn.message``, ``systemEvent.text``) or
    inline script source (``script.script``, ``trigger.script``), never a path to check.
    """
    out: list[CronCommand] = []

    def add(where: str, key: str, argv: list[str] | None, cwd: Any) -> None:
        if not argv:
            return
        out.append(CronCommand(job_id, name, agent, f"{where}.{key}", " ".join(argv), tuple(argv)))
        if isinstance(cwd, str) and cwd:
            out.append(CronCommand(job_id, name, agent, f"{where}.cwd", cwd, (cwd,), is_dir=True))

    payload = job.get("payload")
    if isinstance(payload, dict) and payload.get("kind") == "command":
        add("payload", "argv", _str_list(payload.get("argv")), payload.get("cwd"))
    sched = job.get("schedule")
    if isinstance(sched, dict):
        kind = sched.get("kind")
        cmd = sched.get("command")
        if kind == "on-exit" and isinstance(cmd, str) and cmd.strip():
            add("schedule", "command", [cmd], sched.get("cwd"))
        elif kind == "stream":
            add("schedule", "command", _str_list(cmd), sched.get("cwd"))
    return out


def read_cron_commands(root: Path | None) -> list[CronCommand]:
    """Commands of the *enabled* cron jobs in ``state/openclaw.sqlite`` (read-only).

    Empty when the store, the table or its columns are missing; an unreadable store
    gives one debug line, a job whose ``job_json`` is not an object is skipped.
    """
    def read(con: sqlite3.Connection) -> list[CronCommand]:
        cols = table_columns(con, "cron_jobs")
        if not {"job_id", "name", "enabled", "job_json"} <= cols:
            return []
        agent = "agent_id" if "agent_id" in cols else "NULL"
        order = " ORDER BY sort_order, job_id" if "sort_order" in cols else " ORDER BY job_id"
        out: list[CronCommand] = []
        for job_id, name, agent_id, raw in con.execute(
                f"SELECT job_id, name, {agent}, job_json FROM cron_jobs WHERE enabled = 1{order}"):
            try:
                job = orjson.loads(raw) if isinstance(raw, (str, bytes)) else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(job, dict):
                out.extend(_job_commands(str(job_id), str(name), str(agent_id or ""), job))
        return out

    return _read_state_db(root, read, [])


# ---------------------------------------------------------------- one agent store


class AgentStoreReader:
    """Incremental reader of one ``openclaw-agent.sqlite``."""

    def __init__(self, agent: str, path: Path, cache: AuditCache, pricer: Pricer,
                 progress: Progress | None = None) -> None:
        self.agent = agent
        self.path = path
        self.cache = cache
        self.pricer = pricer
        self.progress = progress
        self.key = f"openclaw:db:{path}"
        self.events_read = 0
        self.sessions: dict[str, SessionAcc] = {}
        self.facts = Facts()
        self.archives: dict[str, Any] = {}
        """archive key → [session_id, acc state] for cold and db archives."""

    def read(self) -> None:
        stamp = store_stamp(self.path)
        fp = self.pricer.fingerprint()
        cached = self.cache.get(self.key)
        if not isinstance(cached, dict) or cached.get("pricing") != fp:
            cached = None  # the states hold priced calls: other prices, read again
        if cached and stamp is not None and cached.get("stamp") == list(stamp):
            self._load(cached)
            return
        if cached:
            self._load(cached)
        try:
            con = connect_ro(self.path)
        except sqlite3.Error as exc:
            log.warning("cannot open %s read-only: %s", self.path, exc)
            return
        try:
            self.facts = _read_facts(con)
            self._read_events(con, cached.get("facts", {}).get("g", {}) if cached else {})
            self._read_archives(con)
        except sqlite3.Error as exc:
            log.warning("reading %s failed: %s", self.path, exc)
        finally:
            con.close()
        self.cache.put(self.key, {
            "stamp": list(stamp) if stamp else None,
            "pricing": fp,
            "facts": self.facts.to_state(),
            "sessions": {sid: a.to_state() for sid, a in self.sessions.items()},
            "archives": self.archives,
        })

    def _load(self, cached: dict[str, Any]) -> None:
        from token_optimizer.audit.accumulate import SessionAcc  # (not needed by a warm scan)

        self.facts = Facts.from_state(cached.get("facts", {}))
        self.sessions = {sid: SessionAcc.from_state(st)
                         for sid, st in cached.get("sessions", {}).items()}
        self.archives = dict(cached.get("archives", {}))

    def _read_events(self, con: sqlite3.Connection, old_generations: dict[str, str]) -> None:
        from token_optimizer.audit.accumulate import SessionAcc  # (not needed by a warm scan)

        if "session_id" not in table_columns(con, "transcript_events"):
            self.sessions = {}
            return
        heads = {str(r[0]): (int(r[1]), int(r[2])) for r in con.execute(
            "SELECT session_id, max(seq), count(*) FROM transcript_events GROUP BY session_id")}
        keep: dict[str, SessionAcc] = {}
        todo: dict[str, int] = {}  # session → read rows with seq above this
        for sid, (max_seq, count) in heads.items():
            acc = self.sessions.get(sid)
            same_gen = self.facts.generations.get(sid) == old_generations.get(sid)
            if acc is not None and same_gen and acc.last_seq == max_seq and acc.count == count:
                keep[sid] = acc
            elif acc is not None and same_gen and max_seq > acc.last_seq and count > acc.count:
                keep[sid] = acc
                todo[sid] = acc.last_seq
            else:
                keep[sid] = SessionAcc()
                todo[sid] = -(2**62)
        self.sessions = keep
        if not todo:
            return
        expected = {sid: heads[sid][1] for sid in todo}
        total = sum(heads[sid][1] - keep[sid].count for sid in todo)
        if len(todo) >= FULL_SCAN_MIN_SESSIONS:
            workers = _event_workers(total)
            if workers > 1:
                try:
                    self._full_pass_pooled(todo, total, workers)
                except Exception as exc:  # no fork, a dead worker: read in-process
                    log.debug("event pool unavailable (%s); reading in-process", exc)
                    self._full_pass(con, todo, total)
            else:
                self._full_pass(con, todo, total)
        else:
            done = 0
            for sid, after in todo.items():
                done += self._session_pass(con, sid, after)
                if self.progress:
                    self.progress(done, total, f"{self.agent}: events")
        # a session whose rows do not add up was rewritten under us: read it again whole
        for sid, want in expected.items():
            if self.sessions[sid].count != want:
                self.sessions[sid] = SessionAcc()
                self._session_pass(con, sid, -(2**62))

    def _apply(self, acc: SessionAcc, seq: int, ej: Any, ez: Any, created: Any) -> None:
        ev = decode_event(ej, ez)
        acc.feed(ev, self.pricer, float(created) if isinstance(created, (int, float)) else None)
        if not isinstance(ev, dict):
            acc.count += 1  # undecodable rows still count towards the watermark
        if seq > acc.last_seq:
            acc.last_seq = seq
        self.events_read += 1

    def _full_pass(self, con: sqlite3.Connection, todo: dict[str, int], total: int) -> None:
        last_rowid = -1
        done = 0
        sessions = self.sessions
        apply = self._apply
        while True:
            rows = con.execute(
                "SELECT rowid, session_id, seq, event_json, event_zstd, created_at "
                "FROM transcript_events WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last_rowid, BATCH_ROWS)).fetchall()
            if not rows:
                break
            for _rowid, sid, seq, ej, ez, created in rows:
                after = todo.get(sid)
                if after is not None and seq > after:
                    apply(sessions[sid], seq, ej, ez, created)
            last_rowid = rows[-1][0]
            done += len(rows)
            if self.progress:
                self.progress(min(done, total), total, f"{self.agent}: events")

    def _full_pass_pooled(self, todo: dict[str, int], total: int, workers: int) -> None:
        """:meth:`_full_pass` split by session over forked workers: each reads every row
        on its own read-only connection but decodes only its own sessions' events, so a
        session's figures are built whole, in ``seq`` order, by one process, exactly as
        in-process. The parent takes the finished states back; nothing is merged."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from token_optimizer.audit.accumulate import SessionAcc

        global _pool_reader
        parts: list[dict[str, int]] = [{} for _ in range(workers)]
        for i, (sid, after) in enumerate(todo.items()):
            parts[i % workers][sid] = after
        _pool_reader = self  # inherited by the forked workers
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
                done = 0
                for states, n in ex.map(_events_part, parts):
                    for sid, st in states.items():
                        self.sessions[sid] = SessionAcc.from_state(st)
                    self.events_read += n
                    done += n
                    if self.progress:
                        self.progress(min(done, total), total, f"{self.agent}: events")
        finally:
            _pool_reader = None

    def _session_pass(self, con: sqlite3.Connection, sid: str, after: int) -> int:
        acc = self.sessions[sid]
        n = 0
        cur = con.execute("SELECT seq, event_json, event_zstd, created_at FROM transcript_events "
                          "WHERE session_id = ? AND seq > ? ORDER BY seq", (sid, after))
        while True:
            rows = cur.fetchmany(BATCH_ROWS)
            if not rows:
                break
            for seq, ej, ez, created in rows:
                self._apply(acc, seq, ej, ez, created)
            n += len(rows)
        return n

    def _read_archives(self, con: sqlite3.Connection) -> None:
        from token_optimizer.audit.accumulate import SessionAcc  # (not needed by a warm scan)

        found: dict[str, Any] = {}
        ccols = table_columns(con, "session_transcript_cold_archives")
        if {"session_id", "archive_sha256", "storage"} <= ccols:
            for sid, sha, storage, name in con.execute(
                    "SELECT session_id, archive_sha256, storage, archive_name "
                    "FROM session_transcript_cold_archives").fetchall():
                key = f"cold:{sha}"
                if key in self.archives:
                    found[key] = self.archives[key]
                    continue
                data = self._cold_bytes(con, sid, storage, name)
                if data is None:
                    continue
                acc = SessionAcc()
                for rec in iter_jsonl(data):
                    if isinstance(rec, dict) and rec.get("kind") == "event":
                        row = rec.get("row") or {}
                        self._apply(acc, int(row.get("seq") or 0), row.get("event_json"), None,
                                    row.get("created_at"))
                found[key] = [str(sid), acc.to_state(), "cold"]
        acols = table_columns(con, "session_transcript_archives")
        if {"session_id", "archive_blob", "encoding"} <= acols:
            for sid, gen, name in con.execute(
                    "SELECT session_id, generation, archive_name FROM session_transcript_archives"
            ).fetchall():
                key = f"dbarchive:{name}"
                if key in self.archives:
                    found[key] = self.archives[key]
                    continue
                r = con.execute("SELECT encoding, archive_blob FROM session_transcript_archives "
                                "WHERE session_id = ? AND generation = ?", (sid, gen)).fetchone()
                if r is None:
                    continue
                try:
                    data = zstd.decompress(bytes(r[1])) if r[0] == "zstd" else bytes(r[1])
                except Exception as exc:  # corrupt frame or no zstd
                    log.debug("archive %s unreadable: %s", name, exc)
                    continue
                acc = SessionAcc()
                for ev in iter_jsonl(data):
                    acc.feed(ev, self.pricer)
                found[key] = [str(sid), acc.to_state(), "archive"]
        self.archives = found

    def _cold_bytes(self, con: sqlite3.Connection, sid: str, storage: str, name: str) -> bytes | None:
        try:
            if storage == "sqlite":
                r = con.execute("SELECT archive_blob FROM session_transcript_cold_archives "
                                "WHERE session_id = ?", (sid,)).fetchone()
                blob = bytes(r[0]) if r and r[0] is not None else None
            else:
                blob = (self.path.parent.parent / "sessions" / "cold" / name).read_bytes()
            return zstd.decompress(blob) if blob is not None else None
        except Exception as exc:  # missing file, corrupt frame, no zstd
            log.debug("cold archive %s unreadable: %s", name, exc)
            return None


POOL_MIN_EVENTS = 200_000
"""A cold read of at least this many transcript events runs on a process pool."""

_pool_reader: AgentStoreReader | None = None


def _events_part(todo: dict[str, int]) -> tuple[dict[str, Any], int]:
    """In a forked worker: one share of a full pass; the finished states and rows read."""
    reader = _pool_reader
    assert reader is not None
    con = connect_ro(reader.path)
    try:
        reader.progress = None
        before = reader.events_read
        reader._full_pass(con, todo, 0)
        return ({sid: reader.sessions[sid].to_state() for sid in todo},
                reader.events_read - before)
    finally:
        con.close()


def _event_workers(n_events: int) -> int:
    """Processes for a full pass over ``n_events`` new events (1: in-process)."""
    return _pool_workers(n_events >= POOL_MIN_EVENTS)


# ---------------------------------------------------------------- legacy files

FILES_FORMAT = 1
POOL_MIN_FILES = 48
"""A cold read of at least this many files (and bytes) runs on a process pool."""
POOL_MIN_BYTES = 8 << 20
POOL_BATCH_BYTES = 2 << 20


def read_transcript(path: str, pricer: Pricer) -> SessionAcc | None:
    """One JSONL transcript (plain or ``.zst``), read line by line (``None`` when unreadable)."""
    from token_optimizer.audit.accumulate import SessionAcc

    acc = SessionAcc()
    feed = acc.feed
    loads = orjson.loads
    try:
        if path.endswith(".zst"):
            with open(path, "rb") as fh:
                data = zstd.decompress(fh.read())
            for rec in iter_jsonl(data):
                feed(rec, pricer)
            return acc
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    rec = loads(line)
                except orjson.JSONDecodeError:
                    # blank, torn or bad; or padded with whitespace JSON does not allow
                    stripped = line.strip()
                    if not stripped or len(stripped) == len(line.rstrip(b"\r\n")):
                        continue
                    try:
                        rec = loads(stripped)
                    except orjson.JSONDecodeError:
                        continue
                feed(rec, pricer)
    except Exception as exc:  # unreadable, corrupt frame, no zstd
        log.debug("transcript %s unreadable: %s", path, exc)
        return None
    return acc


ROW_JSON_OPTS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def row_fragment(row_json: dict[str, Any]) -> bytes:
    """One row as an element of the indented ``scan --json`` array (``ROW_JSON_OPTS``,
    one level deep): joined with ``b",\\n  "`` inside ``b"[\\n  " … b"\\n]"`` they are
    byte for byte ``orjson.dumps(rows, option=ROW_JSON_OPTS)``."""
    return orjson.dumps(row_json, option=ROW_JSON_OPTS).replace(b"\n", b"\n  ")


FileRecord = list[Any]
"""``[sid, size, mtime_ns, events, messages, started_ms, ended_ms, fragment]`` where the
fragment is :func:`row_fragment` of the file's row (``b""`` with no messages). In the
cache the fragment is replaced by its (offset, length) in the dir's fragment blob."""


def file_record(f: TranscriptFile, pricer: Pricer) -> FileRecord | None:
    """What the cache keeps of one transcript file (``None`` when unreadable: not cached)."""
    acc = read_transcript(f.path, pricer)
    if acc is None:
        return None
    n = acc.user + acc.assistant
    if n == 0:
        return [f.sid, f.size, f.mtime_ns, acc.count, 0, None, None, b""]
    row = build_row(f.sid, f.agent, acc, f.path, pricer)
    return [f.sid, f.size, f.mtime_ns, acc.count, n, row.started_ms, row.ended_ms,
            row_fragment(row.to_json())]


_pool_pricer: Pricer | None = None


def _pool_batch(batch: list[TranscriptFile]) -> list[FileRecord | None]:
    assert _pool_pricer is not None
    return [file_record(f, _pool_pricer) for f in batch]


def _workers(n_files: int, n_bytes: int) -> int:
    return _pool_workers(n_files >= POOL_MIN_FILES and n_bytes >= POOL_MIN_BYTES)


def _pool_workers(large: bool) -> int:
    """Forked workers for a cold read (1: in-process): ``TOKEN_OPTIMIZER_AUDIT_WORKERS``
    when set, else the cores (up to 8) for a ``large`` read on Linux in a process with
    no other thread."""
    from token_optimizer import settings

    chosen = settings.env_value(settings.AUDIT_WORKERS)  # a bad value warns once
    if isinstance(chosen, int):
        return chosen
    if not large or not sys.platform.startswith("linux"):
        return 1  # fork is the cheap start; elsewhere a pool costs more than it saves here
    import threading

    if threading.active_count() > 1:
        return 1  # never fork a threaded process (a lock held elsewhere stays held)
    return max(1, min(os.cpu_count() or 1, 8))


def read_files(todo: list[TranscriptFile], pricer: Pricer,
               progress: Progress | None = None) -> list[FileRecord | None]:
    """Records of ``todo`` in order; many files are parsed on a pool of forked workers."""
    total = len(todo)
    workers = _workers(total, sum(f.size for f in todo))
    if workers > 1:
        try:
            return _read_pooled(todo, pricer, workers, progress)
        except Exception as exc:  # no fork, no /dev/shm, a dead worker: read in-process
            log.debug("transcript pool unavailable (%s); reading in-process", exc)
    out: list[FileRecord | None] = []
    for i, f in enumerate(todo):
        out.append(file_record(f, pricer))
        if progress and (i % 64 == 63 or i + 1 == total):
            progress(i + 1, total, "transcript files")
    return out


def _read_pooled(todo: list[TranscriptFile], pricer: Pricer, workers: int,
                 progress: Progress | None) -> list[FileRecord | None]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _pool_pricer
    batches: list[list[TranscriptFile]] = [[]]
    size = 0
    for f in todo:  # contiguous batches of about POOL_BATCH_BYTES keep the order
        if batches[-1] and size + f.size > POOL_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(f)
        size += f.size
    _pool_pricer = pricer  # inherited by the forked workers
    out: list[FileRecord | None] = []
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
            for recs in ex.map(_pool_batch, batches):
                out.extend(recs)
                if progress:
                    progress(len(out), len(todo), "transcript files")
    finally:
        _pool_pricer = None
    return out


FileRow = tuple[float | None, float | None, bytes]
"""(started_ms, ended_ms, :func:`row_fragment` of the row)."""


@dataclass
class FileRows:
    """The legacy transcript files' sessions, as cached row fragments by session id."""

    rows: dict[str, FileRow]
    duplicates: int
    files_read: int


def scan_transcript_files(root: Path, cache: AuditCache, pricer: Pricer, skip: set[str], *,
                          agents: set[str] | None = None,
                          progress: Progress | None = None,
                          listings: dict[str, list[Any]] | None = None) -> FileRows:
    """Every legacy transcript file's session not in ``skip`` (the SQLite sessions).

    Two cache entries per ``sessions`` dir: an index mapping each file name to its
    (size, mtime_ns) and figures, and one blob of the finished rows' JSON fragments.
    A warm scan is a ``stat`` per file and two reads; a changed file is re-read alone.
    Among files of one session id the one with the most events wins (the others are
    copies and count as duplicates).
    """
    fp = pricer.fingerprint()
    listed: list[tuple[int, TranscriptFile]] = []
    dirs: list[tuple[str, dict[str, FileRecord], bytes, dict[str, FileRecord], bool]] = []
    duplicates = 0
    todo: list[tuple[int, TranscriptFile]] = []
    for agent, d in transcript_dirs(root):
        if agents and agent not in agents:
            continue
        key = f"openclaw:files:{d}"
        cached = cache.get(key)
        old: dict[str, FileRecord] = {}
        blob = b""
        if isinstance(cached, dict) and cached.get("v") == FILES_FORMAT \
                and cached.get("pricing") == fp:
            old = cached.get("files") or {}
            blob = cache.get_bytes(key + "#rows") or b""
        files = list_transcripts(agent, d, {n: r[0] for n, r in old.items()},
                                 (listings or {}).get(d))
        if not files and not old:
            continue
        new: dict[str, FileRecord] = {}
        i = len(dirs)
        changed = len(files) != len(old)
        for f in files:
            rec = old.get(f.name)
            if f.sid in skip:
                duplicates += 1
                if rec is not None:  # keep it: still there, just shadowed
                    new[f.name] = rec
                continue
            listed.append((i, f))
            if rec is not None and rec[1] == f.size and rec[2] == f.mtime_ns \
                    and rec[7] + rec[8] <= len(blob):
                new[f.name] = rec
            else:
                todo.append((i, f))
                changed = True
        dirs.append((key, old, blob, new, changed))
    if todo:
        recs = read_files([f for _, f in todo], pricer, progress)
        for (i, f), rec in zip(todo, recs, strict=True):
            if rec is not None:
                dirs[i][3][f.name] = rec
    frags: list[dict[str, bytes]] = []
    for key, old, blob, new, changed in dirs:
        fr = {name: (blob[r[7]:r[7] + r[8]] if len(r) == 9 else r[7]) for name, r in new.items()}
        frags.append(fr)
        if changed or set(new) != set(old):
            index: dict[str, list[Any]] = {}
            parts: list[bytes] = []
            off = 0
            for name, r in new.items():
                b = fr[name]
                index[name] = [*r[:7], off, len(b)]
                parts.append(b)
                off += len(b)
            cache.put(key, {"v": FILES_FORMAT, "pricing": fp, "files": index})
            cache.put_bytes(key + "#rows", b"".join(parts))
    best: dict[str, tuple[int, FileRow]] = {}
    counted: dict[str, int] = {}
    for i, f in listed:
        rec = dirs[i][3].get(f.name)
        if rec is None or not rec[4]:
            continue  # unreadable, or no messages
        counted[f.sid] = counted.get(f.sid, 0) + 1
        cur = best.get(f.sid)
        if cur is None or rec[3] > cur[0]:
            best[f.sid] = (rec[3], (rec[5], rec[6], frags[i][f.name]))
    duplicates += sum(n - 1 for n in counted.values())
    return FileRows({sid: fr for sid, (_, fr) in best.items()}, duplicates, len(todo))


# ---------------------------------------------------------------- rows


def _run_type(key: str | None, node: list[Any] | None, heartbeat: bool) -> tuple[RunType, str | None]:
    job: str | None = None
    if key:
        parts = key.split(":")
        if len(parts) >= 4 and parts[0] == "agent" and parts[2] == "cron":
            job = parts[3]
    if node and node[0] == "cron":
        return "cron", job
    if job is not None:
        return "cron", job
    if heartbeat:
        return "heartbeat", None
    return "manual", None


def build_row(sid: str, agent: str, acc: SessionAcc, source: str, pricer: Pricer,
              facts: Facts | None = None, cron_jobs: dict[str, str] | None = None) -> SessionRow:
    f = facts or Facts()
    w = f.windows.get(sid)
    key = str(w[0]) if w and w[0] else None
    node = f.nodes.get(key) if key else None
    started = acc.first_ms
    ended = acc.last_ms
    if w:
        started = started if started is not None else (w[2] or w[1])
        ended = ended if ended is not None else (w[3] or started)
    run_type, job = _run_type(key, node, bool(key and key in f.heartbeat_keys))
    row = SessionRow(
        host="openclaw", session_id=sid, agent=agent,
        project=str(node[1]) if node and node[1] else agent,
        started_ms=float(started) if started is not None else None,
        ended_ms=float(ended) if ended is not None else None,
        source=source, session_key=key,
        run_type=run_type,
        cron_job=(cron_jobs or {}).get(job, job) if job else None,
        message_count=acc.user + acc.assistant,
        user_messages=acc.user, assistant_messages=acc.assistant,
        api_calls=sum(int(m[0]) for m in acc.models.values()),
        tool_calls=acc.tool_calls, tool_errors=acc.tool_errors,
        tools=sorted(acc.tools), stop_reasons=dict(acc.stop), error_turns=acc.error_turns,
        compactions=acc.compactions + f.compacted_into.get(sid, 0),
        rewinds=f.rewound_into.get(sid, 0),
        status=str(w[4]) if w and w[4] else None,
        platform=str(w[6]) if w and w[6] else None,
        topic=acc.topic,
        heartbeat_outcomes=f.heartbeat_keys.get(key, 0) if key else 0,
    )
    finish_session(row, acc.splits(pricer))
    if row.model == "unknown" and w and w[5]:
        row.model = str(w[5])
    return row


@dataclass
class OpenClawScan:
    rows: list[SessionRow]
    events_read: int
    duplicates: int
    file_rows: dict[str, FileRow] = field(default_factory=dict)
    """Legacy transcript files' sessions as cached row fragments (see :func:`scan_transcript_files`)."""


def scan_openclaw(root: Path, cache: AuditCache, pricer: Pricer, *,
                  agents: set[str] | None = None, progress: Progress | None = None,
                  listings: dict[str, list[Any]] | None = None) -> OpenClawScan:
    """Every OpenClaw session under ``root``, one row each, de-duplicated by session id
    (``listings``: the ``sessions`` dirs' listings already taken, by dir)."""
    from token_optimizer.audit.accumulate import SessionAcc

    rows: dict[str, SessionRow] = {}
    events = 0
    cron_jobs = read_cron_jobs(root)
    archive_candidates: dict[str, list[tuple[int, str, str, SessionAcc]]] = {}
    for agent, db in agent_dbs(root):
        if agents and agent not in agents:
            continue
        r = AgentStoreReader(agent, db, cache, pricer, progress)
        r.read()
        events += r.events_read
        for sid, acc in r.sessions.items():
            rows[sid] = build_row(sid, agent, acc, f"{db}#transcript_events", pricer, r.facts,
                                  cron_jobs)
        for key, (sid, st, kind) in r.archives.items():
            acc = SessionAcc.from_state(st)
            archive_candidates.setdefault(sid, []).append(
                (acc.count, agent, f"{db}#{kind}:{key.split(':', 1)[1]}", acc))
        facts_by_agent = r.facts
        for sid, cands in archive_candidates.items():
            if sid in rows:
                continue
            _, ag, src, acc = max(cands, key=lambda c: c[0])
            rows[sid] = build_row(sid, ag, acc, src, pricer, facts_by_agent, cron_jobs)
        archive_candidates.clear()
    fr = scan_transcript_files(root, cache, pricer, set(rows), agents=agents, progress=progress,
                               listings=listings)
    return OpenClawScan(list(rows.values()), events, fr.duplicates, fr.rows)
