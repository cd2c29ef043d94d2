"""Hermes Agent 0.19.0 reader: ``$HERMES_HOME/state.db`` and ``profiles/*/state.db``.

Schema checked against the installed host's ``hermes_state.py`` (``SCHEMA_SQL``,
schema version 22):

* ``sessions``: one row per conversation with running counters
  (``input_tokens`` = fresh input, ``output_tokens``, ``cache_read_tokens``,
  ``cache_write_tokens``, ``reasoning_tokens``), money (``actual_cost_usd``,
  ``estimated_cost_usd``, ``cost_status`` in actual/estimated/included/unknown,
  ``cost_source``), ``message_count``, ``tool_call_count``, ``api_call_count``,
  ``compression_fallback_streak``, ``rewind_count``, ``source`` (``cron`` for
  scheduled runs, whose ids are ``cron_<job>_<stamp>``), ``end_reason``, ``cwd``,
  ``git_repo_root``.
* ``session_model_usage``: per (model, provider, task) token and cost buckets.
  As ``hermes insights`` does, a session's tokens are the sum of its buckets
  plus any residual of the session counters not covered by them (attributed to
  the session's model), so totals agree with ``hermes insights``.
* ``messages``: read incrementally by ``id`` (AUTOINCREMENT, never reused) and
  aggregated in SQL: roles, tool names, ``finish_reason``, tool errors,
  ``compacted`` rows.

Tool errors are the tool-result rows whose content is one of Hermes' error
shapes (``Error…`` text or a JSON object with ``"error"``/``"success": false``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from token_optimizer.audit.cache import AuditCache
from token_optimizer.audit.model import CostBasis, ModelSplit, SessionRow, Tokens
from token_optimizer.audit.money import Pricer, finish_session, split_basis
from token_optimizer.audit.sqlite_ro import connect_ro, store_stamp, table_columns

log = logging.getLogger("token_optimizer")

Progress = Callable[[int, int, str], None]

_TOOL_ERROR_SQL = ("(role = 'tool' AND (content LIKE 'Error%' OR content LIKE '{\"error\"%' "
                   "OR content LIKE '{\"success\": false%' OR content LIKE '{\"success\":false%'))")


def default_home() -> Path:
    env = os.environ.get("HERMES_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".hermes"


def state_dbs(home: Path) -> list[tuple[str, Path]]:
    """(profile, state.db) under ``home``: ``default`` for the home itself, then each profile."""
    out: list[tuple[str, Path]] = []
    if (home / "state.db").is_file():
        out.append(("default", home / "state.db"))
    try:
        profiles = sorted(os.scandir(home / "profiles"), key=lambda e: e.name)
    except OSError:
        return out
    for e in profiles:
        p = Path(e.path) / "state.db"
        if e.is_dir() and p.is_file():
            out.append((e.name, p))
    return out


_SESSION_COLS = ["id", "source", "session_key", "model", "started_at", "ended_at", "end_reason",
                 "message_count", "tool_call_count", "input_tokens", "output_tokens",
                 "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cwd",
                 "git_repo_root", "billing_provider", "estimated_cost_usd", "actual_cost_usd",
                 "cost_status", "cost_source", "title", "api_call_count",
                 "compression_fallback_streak", "rewind_count", "profile_name", "archived"]
_USAGE_COLS = ["session_id", "model", "billing_provider", "task", "api_call_count",
               "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "reasoning_tokens", "estimated_cost_usd", "actual_cost_usd", "cost_status",
               "cost_source"]


def _select(con: sqlite3.Connection, table: str, cols: list[str], tail: str = "",
            params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    have = table_columns(con, table)
    if not have:
        return []
    sel = ", ".join(f'"{c}"' if c in have else f'NULL AS "{c}"' for c in cols)
    cur = con.execute(f'SELECT {sel} FROM "{table}" {tail}', params)
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@dataclass
class HermesStore:
    profile: str
    path: Path
    sessions: list[dict[str, Any]]
    usage: dict[str, list[dict[str, Any]]]
    messages: dict[str, dict[str, Any]]
    messages_read: int


def _read_messages(con: sqlite3.Connection, after: int,
                   agg: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Fold messages with ``id > after`` into ``agg``; returns (new watermark, rows read)."""
    cols = table_columns(con, "messages")
    if "session_id" not in cols:
        return after, 0
    compacted = "sum(compacted)" if "compacted" in cols else "0"
    rows = con.execute(
        "SELECT session_id, count(*), sum(role = 'user'), sum(role = 'assistant'), "
        f"sum(role = 'tool'), sum({_TOOL_ERROR_SQL}), {compacted}, max(id), "
        "min(timestamp), max(timestamp) FROM messages WHERE id > ? GROUP BY session_id",
        (after,)).fetchall()
    top = after
    n = 0
    for sid, cnt, users, assts, tools, errs, comp, mx, t0, t1 in rows:
        a = agg.setdefault(str(sid), {"n": 0, "u": 0, "a": 0, "t": 0, "e": 0, "c": 0,
                                      "t0": None, "t1": None, "fr": {}, "tn": {}})
        a["n"] += int(cnt or 0)
        a["u"] += int(users or 0)
        a["a"] += int(assts or 0)
        a["t"] += int(tools or 0)
        a["e"] += int(errs or 0)
        a["c"] += int(comp or 0)
        if t0 is not None and (a["t0"] is None or t0 < a["t0"]):
            a["t0"] = float(t0)
        if t1 is not None and (a["t1"] is None or t1 > a["t1"]):
            a["t1"] = float(t1)
        top = max(top, int(mx))
        n += int(cnt or 0)
    if "finish_reason" in cols:
        for sid, fr, cnt in con.execute(
                "SELECT session_id, finish_reason, count(*) FROM messages "
                "WHERE id > ? AND finish_reason IS NOT NULL GROUP BY 1, 2", (after,)):
            d = agg[str(sid)]["fr"]
            d[str(fr)] = d.get(str(fr), 0) + int(cnt)
    if "tool_name" in cols:
        for sid, tn, cnt in con.execute(
                "SELECT session_id, tool_name, count(*) FROM messages "
                "WHERE id > ? AND role = 'tool' AND tool_name IS NOT NULL GROUP BY 1, 2", (after,)):
            d = agg[str(sid)]["tn"]
            d[str(tn)] = d.get(str(tn), 0) + int(cnt)
    return top, n


def read_store(profile: str, path: Path, cache: AuditCache) -> HermesStore:
    key = f"hermes:db:{path}"
    stamp = store_stamp(path)
    cached = cache.get(key)
    if cached and stamp is not None and cached.get("stamp") == list(stamp):
        return HermesStore(profile, path, cached["sessions"], cached["usage"], cached["messages"], 0)
    try:
        ino = os.stat(path).st_ino
    except OSError:
        ino = -1
    con = connect_ro(path)
    try:
        sessions = _select(con, "sessions", _SESSION_COLS)
        usage: dict[str, list[dict[str, Any]]] = {}
        for r in _select(con, "session_model_usage", _USAGE_COLS):
            usage.setdefault(str(r["session_id"]), []).append(r)
        watermark = -1
        agg: dict[str, dict[str, Any]] = {}
        if cached and cached.get("ino") == ino:
            watermark = int(cached.get("watermark", -1))
            agg = cached.get("messages", {})
            row = con.execute("SELECT max(id) FROM messages").fetchone() \
                if "id" in table_columns(con, "messages") else None
            if row is None or row[0] is None or int(row[0]) < watermark:
                watermark, agg = -1, {}  # messages vanished or table rebuilt: start over
        watermark, n = _read_messages(con, watermark, agg)
        live = {str(s["id"]) for s in sessions}
        agg = {k: v for k, v in agg.items() if k in live}
    finally:
        con.close()
    cache.put(key, {"stamp": list(stamp) if stamp else None, "ino": ino, "watermark": watermark,
                    "sessions": sessions, "usage": usage, "messages": agg})
    return HermesStore(profile, path, sessions, usage, agg, n)


def _f(v: Any) -> float:
    try:
        x = float(v or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return x if x > 0 else 0.0


def _i(v: Any) -> int:
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):
        return 0


def _bucket_split(model: str, calls: int, toks: Tokens, actual: float, estimated: float,
                  status: str | None, source: str | None, pricer: Pricer) -> ModelSplit:
    s = ModelSplit(model=model or "unknown", calls=calls, tokens=toks)
    priced_by: list[CostBasis] = []
    if actual > 0:
        s.recorded_usd = actual
        priced_by.append("recorded")
    elif status == "included":
        priced_by.append("included")
    elif estimated > 0 and (status or source) and status != "unknown":
        s.estimated_usd = estimated
        priced_by.append("estimated")
    elif toks.total > 0:
        price = pricer.price(s.model, toks.input, toks.output, toks.cache_read, toks.cache_write,
                             per_call=False)
        if price is None:
            s.unpriced_tokens = toks.total
        else:
            s.table_usd = price
            s.price_source = pricer.source(s.model)
            priced_by.append("table")
    s.cost_usd = s.recorded_usd + s.estimated_usd + s.table_usd
    s.basis = split_basis(s, priced_by)
    return s


def _merge(splits: dict[str, ModelSplit], s: ModelSplit) -> None:
    cur = splits.get(s.model)
    if cur is None:
        splits[s.model] = s
        return
    cur.calls += s.calls
    cur.tokens.add(s.tokens)
    cur.recorded_usd += s.recorded_usd
    cur.estimated_usd += s.estimated_usd
    cur.table_usd += s.table_usd
    cur.unpriced_tokens += s.unpriced_tokens
    cur.cost_usd += s.cost_usd
    cur.price_source = cur.price_source or s.price_source
    cur.basis = split_basis(cur, [b for b in (cur.basis, s.basis) if b not in ("none", "unpriced")])


def build_rows(store: HermesStore, pricer: Pricer) -> list[SessionRow]:
    rows: list[SessionRow] = []
    for s in store.sessions:
        sid = str(s["id"])
        model = str(s["model"] or "unknown")
        splits: dict[str, ModelSplit] = {}
        sums = [0, 0, 0, 0, 0, 0]
        cost_sums = [0.0, 0.0]
        for u in store.usage.get(sid, []):
            toks = Tokens(_i(u["input_tokens"]), _i(u["output_tokens"]),
                          _i(u["cache_read_tokens"]), _i(u["cache_write_tokens"]))
            sums[0] += toks.input
            sums[1] += toks.output
            sums[2] += toks.cache_read
            sums[3] += toks.cache_write
            sums[4] += _i(u["reasoning_tokens"])
            sums[5] += _i(u["api_call_count"])
            cost_sums[0] += _f(u["actual_cost_usd"])
            cost_sums[1] += _f(u["estimated_cost_usd"])
            _merge(splits, _bucket_split(str(u["model"] or model), _i(u["api_call_count"]), toks,
                                         _f(u["actual_cost_usd"]), _f(u["estimated_cost_usd"]),
                                         u["cost_status"], u["cost_source"], pricer))
        residual = Tokens(max(0, _i(s["input_tokens"]) - sums[0]),
                          max(0, _i(s["output_tokens"]) - sums[1]),
                          max(0, _i(s["cache_read_tokens"]) - sums[2]),
                          max(0, _i(s["cache_write_tokens"]) - sums[3]))
        r_actual = max(0.0, _f(s["actual_cost_usd"]) - cost_sums[0])
        r_est = max(0.0, _f(s["estimated_cost_usd"]) - cost_sums[1])
        r_calls = max(0, _i(s["api_call_count"]) - sums[5])
        if residual.total or r_actual or r_est or r_calls:
            _merge(splits, _bucket_split(model, r_calls, residual, r_actual, r_est,
                                         s["cost_status"], s["cost_source"], pricer))
        m = store.messages.get(sid, {})
        started = s["started_at"]
        ended = s["ended_at"] if s["ended_at"] is not None else m.get("t1")
        src = str(s["source"] or "")
        cron_job = None
        if src == "cron" and sid.startswith("cron_"):
            parts = sid[5:].rsplit("_", 2)
            cron_job = parts[0] if len(parts) == 3 else None
        tool_names = sorted(m.get("tn", {}))
        row = SessionRow(
            host="hermes", session_id=sid, agent=store.profile,
            project=str(s["git_repo_root"] or s["cwd"] or store.profile),
            started_ms=float(started) * 1000 if started is not None else None,
            ended_ms=float(ended) * 1000 if ended is not None else None,
            source=f"{store.path}#sessions", session_key=s["session_key"],
            reasoning_tokens=max(_i(s["reasoning_tokens"]), sums[4]),
            run_type="cron" if src == "cron" else "manual", cron_job=cron_job,
            message_count=_i(s["message_count"]) or int(m.get("n", 0)),
            user_messages=int(m.get("u", 0)), assistant_messages=int(m.get("a", 0)),
            api_calls=_i(s["api_call_count"]),
            tool_calls=_i(s["tool_call_count"]) or int(m.get("t", 0)),
            tool_errors=int(m.get("e", 0)), tools=tool_names,
            stop_reasons=dict(m.get("fr", {})),
            error_turns=int(m.get("fr", {}).get("error", 0)),
            compactions=int(m.get("c", 0)),
            compaction_fallback_streak=_i(s["compression_fallback_streak"]),
            rewinds=_i(s["rewind_count"]), end_reason=s["end_reason"], platform=src or None,
            status="ended" if s["ended_at"] is not None else "live",
            topic=str(s["title"]) if s["title"] else None,
        )
        finish_session(row, splits.values())
        if row.model == "unknown":
            row.model = model
        rows.append(row)
    return rows


@dataclass
class HermesScan:
    rows: list[SessionRow]
    messages_read: int


def scan_hermes(home: Path, cache: AuditCache, pricer: Pricer, *,
                profiles: set[str] | None = None, progress: Progress | None = None) -> HermesScan:
    rows: list[SessionRow] = []
    n = 0
    dbs = [(p, d) for p, d in state_dbs(home) if not profiles or p in profiles]
    for i, (profile, db) in enumerate(dbs):
        try:
            store = read_store(profile, db, cache)
        except sqlite3.Error as exc:
            log.warning("cannot read %s: %s", db, exc)
            continue
        n += store.messages_read
        rows.extend(build_rows(store, pricer))
        if progress:
            progress(i + 1, len(dbs), "hermes stores")
    return HermesScan(rows, n)
