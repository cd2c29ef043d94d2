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
  aggregated in SQL: roles, tool names, ``finish_reason``, tool errors.

In-place compaction (``SessionDB.archive_and_compact``) UPDATEs every active row
to ``active = 0, compacted = 1`` (ids unchanged) and INSERTs the compacted set --
kept head, one summary message, kept tail -- as fresh rows. Counting rows would
count the kept head and tail twice and every archived row as a compaction, and
Hermes then resets ``sessions.tool_call_count``/``message_count`` to the live set.
So a session whose new rows hold a summary or a ``compacted`` row (and from then
on every time it grows) is re-aggregated from all its rows in id order: a row is
a copy when it matches (role, content, tool call) an earlier archived row not
already matched, the summary rows (content prefix ``[CONTEXT COMPACTION``/
``[CONTEXT SUMMARY]:`` or the merged-into-tail delimiter; Hermes' in-process
``_compressed_summary`` flag is not persisted) are neither messages nor copies,
compactions are the distinct summaries, and tool calls are counted from the
original assistant rows' ``tool_calls``. Sessions without compaction stay on the
incremental path.

Tool errors are the tool-result rows whose content is one of Hermes' error
shapes (``Error…`` text or a JSON object with ``"error"``/``"success": false``).
"""

from __future__ import annotations

import json
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


# Hermes' summary row (agent/context_compressor.py): SUMMARY_PREFIX and its historical
# versions start "[CONTEXT COMPACTION", LEGACY_SUMMARY_PREFIX is "[CONTEXT SUMMARY]:", and a
# summary merged into the first tail message follows _MERGED_SUMMARY_DELIMITER.
_MERGED_DELIMITER = "[END OF PRIOR CONTEXT — COMPACTION SUMMARY BELOW]"
_SUMMARY_SQL = ("(role IN ('user', 'assistant') AND (ltrim(content) LIKE '[CONTEXT COMPACTION%' "
                "OR ltrim(content) LIKE '[CONTEXT SUMMARY]:%' "
                f"OR instr(content, '{_MERGED_DELIMITER}') > 0))")
_CACHE_V = 2
"""Version of this reader's cache entry (2: compaction-aware message aggregates)."""


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


def _new_agg() -> dict[str, Any]:
    return {"n": 0, "u": 0, "a": 0, "t": 0, "e": 0, "c": 0, "t0": None, "t1": None,
            "fr": {}, "tn": {}}


def _n_tool_calls(raw: Any) -> int:
    """Tool calls in a stored ``tool_calls`` value, counted as Hermes' own counter does."""
    if not raw:
        return 0
    try:
        v = json.loads(raw)
    except (TypeError, ValueError):
        return 1
    return len(v) if isinstance(v, list) else (1 if v else 0)


def _call_ids(raw: Any) -> frozenset[str]:
    try:
        v = json.loads(raw) if raw else None
    except (TypeError, ValueError):
        return frozenset()
    if not isinstance(v, list):
        return frozenset()
    return frozenset(str(tc.get("call_id") or tc.get("id")) for tc in v
                     if isinstance(tc, dict) and (tc.get("call_id") or tc.get("id")))


def _take(pool: dict[tuple[Any, ...], int],
          loose: dict[tuple[Any, ...], list[tuple[frozenset[str], tuple[Any, ...]]]],
          key: tuple[Any, ...], pre: tuple[Any, ...], ids: frozenset[str]) -> bool:
    """Match a row to an unmatched earlier archived row (it is then a compaction copy)."""
    cands = loose.get(pre, [])
    if pool.get(key, 0) > 0:
        hit = next(i for i, c in enumerate(cands) if c[1] == key)
    elif key[0] == "assistant" and key[1] and ids:
        hit = next((i for i, c in enumerate(cands) if ids <= c[0]), -1)
        if hit < 0:
            return False
    else:
        return False
    pool[cands.pop(hit)[1]] -= 1
    return True


def _recompute(con: sqlite3.Connection, sid: str, cols: set[str]) -> dict[str, Any]:
    """A compacted session's aggregates from all its rows, each message and compaction once."""
    def col(c: str) -> str:
        return f'"{c}"' if c in cols else "NULL"
    rows = con.execute(
        f"SELECT role, content, {col('tool_call_id')}, {col('tool_calls')}, {col('tool_name')}, "
        f"{col('finish_reason')}, {col('compacted')}, timestamp, {_TOOL_ERROR_SQL}, "
        f"{_SUMMARY_SQL} FROM messages WHERE session_id = ? ORDER BY id", (sid,)).fetchall()
    keys = [((role, content, tcid, tcalls, tname), _call_ids(tcalls))
            for role, content, tcid, tcalls, tname, *_ in rows]
    summ = [bool(r[9]) for r in rows]
    archived = [bool(r[6]) for r in rows]

    def copies(eligible: list[bool]) -> list[bool]:
        # archived rows not yet matched by a later copy, by exact key; by (role, content,
        # tool call id, tool name) with their call ids for an assistant copy whose orphaned
        # tool calls the compressor stripped (its calls are then a subset of the archived row's)
        pool: dict[tuple[Any, ...], int] = {}
        loose: dict[tuple[Any, ...], list[tuple[frozenset[str], tuple[Any, ...]]]] = {}
        out = []
        for i, (key, ids) in enumerate(keys):
            pre = key[:3] + key[4:]
            out.append(eligible[i] and not summ[i] and _take(pool, loose, key, pre, ids))
            if archived[i] and not summ[i]:
                pool[key] = pool.get(key, 0) + 1
                loose.setdefault(pre, []).append((ids, key))
        return out

    # archive_and_compact inserts the kept head, the summary and the kept tail in one go, so a
    # copy sits in an unbroken run of matching rows around a summary; a row that only repeats
    # an earlier archived one ("continue" twice) elsewhere is a message of its own
    tentative = copies([True] * len(rows))
    eligible = [False] * len(rows)
    start = 0
    for i in range(len(rows) + 1):
        if i < len(rows) and (tentative[i] or summ[i]):
            continue
        if any(summ[start:i]):
            eligible[start:i] = [True] * (i - start)
        start = i + 1
    is_copy = copies(eligible)

    a = _new_agg()
    a["x"] = 1
    a["tc"] = 0
    for i, (role, _content, _tcid, tcalls, tname, fr, _comp, ts, err, _s) in enumerate(rows):
        if ts is not None:
            t = float(ts)
            a["t0"] = t if a["t0"] is None or t < a["t0"] else a["t0"]
            a["t1"] = t if a["t1"] is None or t > a["t1"] else a["t1"]
        if summ[i] or is_copy[i]:
            continue
        a["n"] += 1
        a["u"] += role == "user"
        a["a"] += role == "assistant"
        if role == "assistant":
            a["tc"] += _n_tool_calls(tcalls)
        if role == "tool":
            a["t"] += 1
            a["e"] += int(bool(err))
            if tname is not None:
                a["tn"][str(tname)] = a["tn"].get(str(tname), 0) + 1
        if fr is not None:
            a["fr"][str(fr)] = a["fr"].get(str(fr), 0) + 1
    summaries = {r[1] for r, sm in zip(rows, summ, strict=True) if sm}
    any_compacted = any(archived)
    # compacted rows without a recognisable summary (a custom or failed summary) still
    # mean the session was compacted at least once
    a["c"] = len(summaries) or int(any_compacted)
    return a


def _read_messages(con: sqlite3.Connection, after: int,
                   agg: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Fold messages with ``id > after`` into ``agg``; returns (new watermark, rows read)."""
    cols = table_columns(con, "messages")
    if "session_id" not in cols:
        return after, 0
    rows = con.execute(
        "SELECT session_id, count(*), sum(role = 'user'), sum(role = 'assistant'), "
        f"sum(role = 'tool'), sum({_TOOL_ERROR_SQL}), max(id), "
        "min(timestamp), max(timestamp) FROM messages WHERE id > ? GROUP BY session_id",
        (after,)).fetchall()
    top = after
    n = 0
    # sessions compacted before, or whose new rows show a compaction: re-aggregated whole
    redo = {sid for sid, v in agg.items() if v.get("x")} & {str(r[0]) for r in rows}
    if "content" in cols and "role" in cols:
        flag = f"{_SUMMARY_SQL} OR compacted = 1" if "compacted" in cols else _SUMMARY_SQL
        redo |= {str(r[0]) for r in con.execute(
            f"SELECT DISTINCT session_id FROM messages WHERE id > ? AND ({flag})", (after,))}
    for sid, cnt, users, assts, tools, errs, mx, t0, t1 in rows:
        top = max(top, int(mx))
        n += int(cnt or 0)
        if str(sid) in redo:
            continue
        a = agg.setdefault(str(sid), _new_agg())
        a["n"] += int(cnt or 0)
        a["u"] += int(users or 0)
        a["a"] += int(assts or 0)
        a["t"] += int(tools or 0)
        a["e"] += int(errs or 0)
        if t0 is not None and (a["t0"] is None or t0 < a["t0"]):
            a["t0"] = float(t0)
        if t1 is not None and (a["t1"] is None or t1 > a["t1"]):
            a["t1"] = float(t1)
    if "finish_reason" in cols:
        for sid, fr, cnt in con.execute(
                "SELECT session_id, finish_reason, count(*) FROM messages "
                "WHERE id > ? AND finish_reason IS NOT NULL GROUP BY 1, 2", (after,)):
            if str(sid) not in redo:
                d = agg[str(sid)]["fr"]
                d[str(fr)] = d.get(str(fr), 0) + int(cnt)
    if "tool_name" in cols:
        for sid, tn, cnt in con.execute(
                "SELECT session_id, tool_name, count(*) FROM messages "
                "WHERE id > ? AND role = 'tool' AND tool_name IS NOT NULL GROUP BY 1, 2", (after,)):
            if str(sid) not in redo:
                d = agg[str(sid)]["tn"]
                d[str(tn)] = d.get(str(tn), 0) + int(cnt)
    for sid in sorted(redo):
        agg[sid] = _recompute(con, sid, cols)
    return top, n


def read_store(profile: str, path: Path, cache: AuditCache) -> HermesStore:
    key = f"hermes:db:{path}"
    stamp = store_stamp(path)
    cached = cache.get(key)
    if cached and cached.get("v") != _CACHE_V:
        cached = None
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
    cache.put(key, {"v": _CACHE_V, "stamp": list(stamp) if stamp else None, "ino": ino, "watermark": watermark,
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
        compacted = bool(m.get("x"))
        row = SessionRow(
            host="hermes", session_id=sid, agent=store.profile,
            project=str(s["git_repo_root"] or s["cwd"] or store.profile),
            started_ms=float(started) * 1000 if started is not None else None,
            ended_ms=float(ended) * 1000 if ended is not None else None,
            source=f"{store.path}#sessions", session_key=s["session_key"],
            reasoning_tokens=max(_i(s["reasoning_tokens"]), sums[4]),
            run_type="cron" if src == "cron" else "manual", cron_job=cron_job,
            # after a compaction Hermes' counters track only the live (compacted) set
            message_count=int(m.get("n", 0)) if compacted else
            _i(s["message_count"]) or int(m.get("n", 0)),
            user_messages=int(m.get("u", 0)), assistant_messages=int(m.get("a", 0)),
            api_calls=_i(s["api_call_count"]),
            tool_calls=(int(m.get("tc", 0)) or int(m.get("t", 0))) if compacted else
            _i(s["tool_call_count"]) or int(m.get("t", 0)),
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
