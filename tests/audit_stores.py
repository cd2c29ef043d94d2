"""Builders of generated OpenClaw and Hermes stores, with the hosts' own DDL.

The DDL under ``tests/audit_schema/`` is copied verbatim from the installed
hosts (``test_audit_schema.py`` re-checks it when the real-host cache is there).
Python's bundled SQLite may lack ``octet_length`` (used in a CHECK of
``transcript_events``), so writers register it; readers never need it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

try:
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef, unused-ignore]

SCHEMA_DIR = Path(__file__).parent / "audit_schema"
NAV = orjson.dumps({"version": 1, "report": {"kind": "canonical"}, "navigation": {},
                    "reset": {}, "model": {}, "modelBytes": 1,
                    "modelWithoutCheckpointBytes": 1, "withoutCustomDataBytes": 1}).decode()


def _octet_length(v: Any) -> int | None:
    if v is None:
        return None
    return len(v.encode("utf-8")) if isinstance(v, str) else len(bytes(v))


def open_writer(path: Path, schema: str, *, wal: bool = True) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.create_function("octet_length", 1, _octet_length, deterministic=True)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.executescript((SCHEMA_DIR / schema).read_text())
    return con


# ---------------------------------------------------------------- OpenClaw events


def user_event(text: str, ts_ms: int, eid: str = "u") -> dict[str, Any]:
    return {"type": "message", "id": eid, "parentId": None,
            "message": {"role": "user", "content": [{"type": "text", "text": text}],
                        "timestamp": ts_ms}}


def assistant_event(ts_ms: int, *, model: str = "claude-sonnet-4-6", inp: int = 100,
                    out: int = 50, cache_read: int = 0, cache_write: int = 0,
                    cost: float | None = None, stop: str = "stop",
                    tools: tuple[str, ...] = (), text: str = "ok", error: str | None = None,
                    eid: str = "a", provider: str = "anthropic") -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "toolCall", "id": f"c{i}", "name": n, "arguments": {}}
                for i, n in enumerate(tools)]
    usage: dict[str, Any] = {"input": inp, "output": out, "cacheRead": cache_read,
                             "cacheWrite": cache_write,
                             "totalTokens": inp + out + cache_read + cache_write}
    if cost is not None:
        usage["cost"] = {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": cost}
    msg: dict[str, Any] = {"role": "assistant", "content": content, "api": "anthropic-messages",
                           "provider": provider, "model": model, "usage": usage,
                           "stopReason": stop, "timestamp": ts_ms}
    if error:
        msg["errorMessage"] = error
    return {"type": "message", "id": eid, "parentId": None, "message": msg}


def tool_result_event(ts_ms: int, name: str = "exec", *, is_error: bool = False,
                      eid: str = "t") -> dict[str, Any]:
    return {"type": "message", "id": eid, "parentId": None,
            "message": {"role": "toolResult", "toolCallId": "c0", "toolName": name,
                        "isError": is_error, "content": [{"type": "text", "text": "out"}],
                        "timestamp": ts_ms}}


class OpenClawStore:
    """A generated ``~/.openclaw`` with one or more agent databases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cons: dict[str, sqlite3.Connection] = {}
        self._seq: dict[str, int] = {}

    def db_path(self, agent: str) -> Path:
        return self.root / "agents" / agent / "agent" / "openclaw-agent.sqlite"

    def con(self, agent: str = "main") -> sqlite3.Connection:
        c = self._cons.get(agent)
        if c is None:
            c = self._cons[agent] = open_writer(self.db_path(agent), "openclaw_agent.sql")
        return c

    def add_session(self, sid: str, *, agent: str = "main", key: str | None = None,
                    created_via: str | None = "operator", created_ms: int = 1_780_000_000_000,
                    reason: str = "initial", previous: str | None = None,
                    project: str | None = None, status: str | None = "done") -> None:
        key = key or f"agent:{agent}:{sid}"
        c = self.con(agent)
        c.execute("INSERT OR IGNORE INTO session_nodes (session_key, current_session_id, entry_json,"
                  " updated_at, created_via, project_id) VALUES (?, ?, '{}', ?, ?, ?)",
                  (key, sid, created_ms, created_via, project))
        c.execute("INSERT INTO session_windows (session_id, session_key, previous_session_id, reason,"
                  " created_at, updated_at, started_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (sid, key, previous, reason, created_ms, created_ms, created_ms, status))

    def add_events(self, sid: str, events: list[dict[str, Any]], *, agent: str = "main",
                   compress_min: int | None = 1024) -> None:
        """Append events; ones of ``compress_min`` bytes or more are stored zstd-compressed."""
        c = self.con(agent)
        seq = self._seq.get(sid, 0)
        c.execute("BEGIN")
        for ev in events:
            seq += 1
            raw = orjson.dumps(ev)
            created = int(ev.get("message", {}).get("timestamp", 1_780_000_000_000))
            if compress_min is not None and len(raw) >= compress_min:
                c.execute("INSERT INTO transcript_events (session_id, seq, event_json, created_at,"
                          " event_zstd, event_utf8_bytes, navigation_json) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                          (sid, seq, created, zstd.compress(raw, level=1), len(raw), NAV))
            else:
                c.execute("INSERT INTO transcript_events (session_id, seq, event_json, created_at,"
                          " event_utf8_bytes) VALUES (?, ?, ?, ?, ?)",
                          (sid, seq, raw.decode(), created, len(raw)))
        c.execute("COMMIT")
        self._seq[sid] = seq

    def add_heartbeat(self, key: str, run_key: str, *, agent: str = "main") -> None:
        self.con(agent).execute(
            "INSERT INTO heartbeat_outcomes (session_key, run_session_key, outcome, summary,"
            " occurred_at, updated_at) VALUES (?, ?, 'done', 's', 0, 0)", (key, run_key))

    def add_cron_job(self, job_id: str, name: str, agent: str = "main", *,
                     enabled: bool = True, job: dict[str, Any] | None = None) -> None:
        """A ``cron_jobs`` row; ``job`` is the definition stored in ``job_json``.

        Its ``payload.kind`` (default ``agentTurn``) fills ``payload_kind``, as the host does.
        """
        job = job or {}
        payload = job.get("payload")
        kind = payload.get("kind") if isinstance(payload, dict) else None
        c = open_writer(self.root / "state" / "openclaw.sqlite", "openclaw_state.sql")
        c.execute("INSERT INTO cron_jobs (store_key, job_id, name, enabled, agent_id, payload_kind,"
                  " job_json, updated_at) VALUES ('default', ?, ?, ?, ?, ?, ?, 0)",
                  (job_id, name, int(enabled), agent, kind or "agentTurn",
                   orjson.dumps({"id": job_id, "name": name, "enabled": enabled, **job}).decode()
                   if job else "{}"))
        c.close()

    def write_jsonl(self, agent: str, name: str, events: list[dict[str, Any]], *,
                    compress: bool = False) -> Path:
        d = self.root / "agents" / agent / "sessions"
        d.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        p = d / name
        p.write_bytes(zstd.compress(data) if compress else data)
        return p

    def close(self) -> None:
        for c in self._cons.values():
            c.close()
        self._cons.clear()


# ---------------------------------------------------------------- Hermes


class HermesStore:
    """A generated ``$HERMES_HOME`` (``state.db``, optionally per profile)."""

    def __init__(self, home: Path, profile: str | None = None) -> None:
        self.path = home / "state.db" if profile is None else home / "profiles" / profile / "state.db"
        self.con = open_writer(self.path, "hermes_state.sql")

    def add_session(self, sid: str, *, model: str = "anthropic/claude-sonnet-4-6",
                    started: float = 1_780_000_000.0, ended: float | None = 1_780_000_600.0,
                    source: str = "cli", inp: int = 0, out: int = 0, cache_read: int = 0,
                    cache_write: int = 0, actual: float | None = None,
                    estimated: float | None = None, cost_status: str | None = None,
                    cost_source: str | None = None, api_calls: int = 0, streak: int = 0,
                    rewinds: int = 0, tool_calls: int = 0, message_count: int = 0) -> None:
        self.con.execute(
            "INSERT INTO sessions (id, source, model, started_at, ended_at, input_tokens,"
            " output_tokens, cache_read_tokens, cache_write_tokens, actual_cost_usd,"
            " estimated_cost_usd, cost_status, cost_source, api_call_count,"
            " compression_fallback_streak, rewind_count, tool_call_count, message_count)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, source, model, started, ended, inp, out, cache_read, cache_write, actual,
             estimated, cost_status, cost_source, api_calls, streak, rewinds, tool_calls,
             message_count))

    def add_usage(self, sid: str, model: str, *, inp: int = 0, out: int = 0, cache_read: int = 0,
                  cache_write: int = 0, calls: int = 1, actual: float = 0.0,
                  estimated: float = 0.0, cost_status: str | None = None,
                  cost_source: str | None = None, task: str = "") -> None:
        self.con.execute(
            "INSERT INTO session_model_usage (session_id, model, task, api_call_count, input_tokens,"
            " output_tokens, cache_read_tokens, cache_write_tokens, estimated_cost_usd,"
            " actual_cost_usd, cost_status, cost_source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, model, task, calls, inp, out, cache_read, cache_write, estimated, actual,
             cost_status, cost_source))

    def add_message(self, sid: str, role: str, content: str = "", *, ts: float = 1_780_000_001.0,
                    tool_name: str | None = None, finish_reason: str | None = None,
                    compacted: int = 0) -> None:
        self.con.execute(
            "INSERT INTO messages (session_id, role, content, tool_name, timestamp, finish_reason,"
            " compacted) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sid, role, content, tool_name, ts, finish_reason, compacted))

    def close(self) -> None:
        self.con.close()
