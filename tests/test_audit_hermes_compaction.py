"""Hermes in-place compaction (``archive_and_compact``): each message and compaction counted once."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from audit_stores import HermesStore
from test_audit_readers import by_id, scan_root

from token_optimizer.audit.model import SessionRow

# Hermes' agent/context_compressor.py SUMMARY_PREFIX (start) and _SUMMARY_END_MARKER
PREFIX = "[CONTEXT COMPACTION — REFERENCE ONLY] Earlier turns were compacted into the summary below."
END = "--- END OF CONTEXT SUMMARY — respond to the message below, not the summary above ---"

Msg = dict[str, Any]


def insert(con: sqlite3.Connection, sid: str, msgs: list[Msg]) -> None:
    """``SessionDB._insert_message_rows``: fresh active rows (``compacted`` left at 0)."""
    for m in msgs:
        tc = m.get("tool_calls")
        con.execute(
            "INSERT INTO messages (session_id, role, content, tool_call_id, tool_calls, tool_name,"
            " timestamp, finish_reason, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (sid, m["role"], m.get("content"), m.get("tool_call_id"),
             json.dumps(tc) if tc else None, m.get("tool_name"), 1_780_000_100.0,
             m.get("finish_reason")))
    con.execute("UPDATE sessions SET message_count = message_count + ?, tool_call_count ="
                " tool_call_count + ? WHERE id = ?",
                (len(msgs), sum(len(m.get("tool_calls") or []) for m in msgs), sid))


def archive_and_compact(con: sqlite3.Connection, sid: str, compacted: list[Msg]) -> None:
    """``SessionDB.archive_and_compact``: soft-archive the live rows, insert the compacted set."""
    con.execute("UPDATE messages SET active = 0, compacted = 1 WHERE session_id = ? AND active = 1",
                (sid,))
    con.execute("UPDATE sessions SET message_count = 0, tool_call_count = 0 WHERE id = ?", (sid,))
    insert(con, sid, compacted)


def turn(k: int, calls: int = 1) -> list[Msg]:
    """A user turn: the model calls ``calls`` tools (one result each), then answers."""
    out: list[Msg] = [{"role": "user", "content": f"task {k}"}]
    for c in range(calls):
        cid = f"call_{k}_{c}"
        out.append({"role": "assistant", "content": None, "finish_reason": "tool_calls",
                    "tool_calls": [{"id": cid, "type": "function",
                                    "function": {"name": "terminal", "arguments": "{}"}}]})
        out.append({"role": "tool", "content": "Error: boom" if c else '{"output": "ok"}',
                    "tool_call_id": cid, "tool_name": "terminal"})
    out.append({"role": "assistant", "content": f"done {k}", "finish_reason": "stop"})
    return out


def summary(n: int) -> Msg:
    return {"role": "user", "content": f"{PREFIX}\nsummary number {n}\n\n{END}"}


def live(con: sqlite3.Connection, sid: str) -> list[Msg]:
    rows = con.execute("SELECT role, content, tool_call_id, tool_calls, tool_name, finish_reason"
                       " FROM messages WHERE session_id = ? AND active = 1 ORDER BY id", (sid,))
    return [{"role": r, "content": c, "tool_call_id": t, "tool_name": tn, "finish_reason": fr,
             "tool_calls": json.loads(tc) if tc else None} for r, c, t, tc, tn, fr in rows]


def compact(con: sqlite3.Connection, sid: str, n: int, head: int = 1, tail: int = 4) -> None:
    """The compressor's result: kept head, the summary, kept tail (copies of live rows)."""
    cur = live(con, sid)
    archive_and_compact(con, sid, [*cur[:head], summary(n), *cur[-tail:]])


def store(tmp_path: Path) -> tuple[HermesStore, Path, Path]:
    home = tmp_path / "hermes"
    h = HermesStore(home)
    h.add_session("plain", inp=10, out=1)
    h.add_session("c", inp=10, out=1)
    insert(h.con, "plain", turn(0) + turn(1, calls=2))
    return h, home, tmp_path / "state"


def counts(r: SessionRow) -> tuple[int, int, int, int, int, int]:
    return (r.user_messages, r.assistant_messages, r.tool_calls, r.tool_errors, r.compactions,
            r.message_count)


PLAIN = (2, 5, 3, 1, 0, 10)


def test_one_compaction_counts_each_message_once(tmp_path: Path) -> None:
    h, home, state = store(tmp_path)
    msgs = turn(0) + turn(1, calls=2) + turn(2, calls=3)  # 3 user, 9 assistant, 6 tools
    insert(h.con, "c", msgs)
    compact(h.con, "c", 1)
    insert(h.con, "c", turn(3))
    h.close()
    rows = by_id(scan_root(hermes=home, state=state))
    c = rows["c"]
    assert counts(c) == (4, 11, 7, 3, 1, 22)
    assert c.stop_reasons == {"tool_calls": 7, "stop": 4} and c.tools == ["terminal"]
    assert counts(rows["plain"]) == PLAIN
    assert by_id(scan_root(hermes=home, state=state))["c"] == c  # warm cache: the same row


def test_two_compactions_in_a_row(tmp_path: Path) -> None:
    h, home, state = store(tmp_path)
    insert(h.con, "c", turn(0) + turn(1, calls=2))
    compact(h.con, "c", 1)
    insert(h.con, "c", turn(2))
    compact(h.con, "c", 2, head=2)  # the head now re-inserts the first summary too
    insert(h.con, "c", turn(3, calls=2))
    compact(h.con, "c", 3, tail=6)
    h.close()
    c = by_id(scan_root(hermes=home, state=state))["c"]
    assert counts(c) == (4, 10, 6, 2, 3, 20)


def test_compaction_after_a_warm_cache(tmp_path: Path) -> None:
    h, home, state = store(tmp_path)
    insert(h.con, "c", turn(0) + turn(1, calls=2))
    h.con.commit()
    first = by_id(scan_root(hermes=home, state=state))
    assert counts(first["c"]) == PLAIN
    compact(h.con, "c", 1)
    h.con.commit()
    res = scan_root(hermes=home, state=state)
    assert res.events_read == 6  # incremental: only the compacted set is new
    assert counts(by_id(res)["c"]) == (*PLAIN[:4], 1, 10)
    insert(h.con, "c", turn(2))  # grows after the compaction: still counted once
    insert(h.con, "plain", turn(2))
    h.close()
    rows = by_id(scan_root(hermes=home, state=state))
    assert counts(rows["c"]) == (3, 7, 4, 1, 1, 14)
    assert counts(rows["plain"]) == (3, 7, 4, 1, 0, 14)


def test_repeated_message_outside_the_compacted_set_is_its_own(tmp_path: Path) -> None:
    h, home, state = store(tmp_path)
    insert(h.con, "c", turn(0) + turn(0) + turn(1))  # "task 0"/"done 0" said twice
    compact(h.con, "c", 1, tail=2)
    insert(h.con, "c", turn(2) + turn(0))  # later, a repeat of archived rows
    h.close()
    c = by_id(scan_root(hermes=home, state=state))["c"]
    assert (c.user_messages, c.assistant_messages, c.compactions) == (5, 10, 1)


def test_merged_into_tail_summary_and_stripped_tool_calls(tmp_path: Path) -> None:
    h, home, state = store(tmp_path)
    insert(h.con, "c", turn(0) + turn(1, calls=2))
    h.con.execute("UPDATE messages SET content = 'thinking', tool_calls = ? WHERE id = (SELECT"
                  " id FROM messages WHERE session_id = 'c' AND role = 'assistant' ORDER BY id"
                  " LIMIT 1)", (json.dumps([{"id": "x1"}, {"id": "x2"}, {"id": "x3"}]),))
    cur = live(h.con, "c")
    tail = [dict(m) for m in cur[-3:]]
    # the compressor merged the summary into the first tail message ...
    tail[0]["content"] = ("[PRIOR CONTEXT — for reference only; not a new message]\n"
                          f"{tail[0]['content']}\n\n[END OF PRIOR CONTEXT — COMPACTION SUMMARY "
                          f"BELOW]\n\n{PREFIX}\nsummary\n\n{END}")
    head = [dict(cur[0]), dict(cur[1], tool_calls=[{"id": "x1"}, {"id": "x2"}])]  # x3 stripped
    archive_and_compact(h.con, "c", head + tail)
    h.close()
    c = by_id(scan_root(hermes=home, state=state))["c"]
    assert (c.user_messages, c.assistant_messages, c.tool_calls, c.compactions) == (2, 5, 5, 1)
