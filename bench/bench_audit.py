"""Audit scan benchmark: a generated OpenClaw store and a Hermes ``state.db``.

``python -m bench.bench_audit`` builds (under a temp dir, or ``--dir``):

* an OpenClaw agent store of ``--sessions`` sessions (default 10,000) and
  ``--events`` transcript events (default 1,000,000), about a third of them
  1 KiB or more and stored zstd-compressed as OpenClaw does;
* a Hermes ``state.db`` of ``--hermes-sessions`` sessions (default 10,000) with
  per-model usage rows and messages;

then runs, each in a fresh subprocess so peak RSS is the scan's own: a cold scan
(empty cache), a warm re-scan with nothing new, and a re-scan after appending
to a few sessions. Each time is the scan plus building its ``SessionRow`` objects
(what the report and audit commands go on to do; a warm scan alone is also shown).
Targets: cold ≤ 10 s, warm ≤ 0.5 s, peak RSS ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "tests" / "audit_schema"
NAV = ('{"version":1,"report":{"kind":"canonical"},"navigation":{},"reset":{},"model":{},'
       '"modelBytes":1,"modelWithoutCheckpointBytes":1,"withoutCustomDataBytes":1}')
MODELS = ["claude-sonnet-4-6", "claude-opus-4-6", "gpt-5.2", "claude-haiku-4-5", "local-model-x"]


def _zstd_compress(data: bytes) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef, unused-ignore]
    out: bytes = zstd.compress(data, level=1)
    return out


def _writer(path: Path, schema: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.create_function("octet_length", 1,
                        lambda v: None if v is None else len(v.encode() if isinstance(v, str) else v),
                        deterministic=True)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.executescript((SCHEMA_DIR / schema).read_text())
    return con


def _event(rng: random.Random, i: int, ts: int, big: bool) -> dict[str, Any]:
    kind = i % 3
    pad = "lorem ipsum dolor sit amet " * (48 if big else 2)
    if kind == 0:
        return {"type": "message", "id": f"e{i}", "parentId": None,
                "message": {"role": "user", "content": [{"type": "text", "text": "please " + pad}],
                            "timestamp": ts}}
    if kind == 1:
        inp = rng.randint(10, 5000)
        out = rng.randint(10, 2000)
        cr = rng.randint(0, 50_000)
        usage: dict[str, Any] = {"input": inp, "output": out, "cacheRead": cr, "cacheWrite": 0,
                                 "totalTokens": inp + out + cr}
        if rng.random() < 0.5:
            usage["cost"] = {"input": 0.001, "output": 0.002, "cacheRead": 0.0, "cacheWrite": 0,
                             "total": 0.003}
        return {"type": "message", "id": f"e{i}", "parentId": None,
                "message": {"role": "assistant", "model": MODELS[i % len(MODELS)],
                            "provider": "anthropic", "usage": usage, "stopReason": "toolUse",
                            "content": [{"type": "text", "text": pad},
                                        {"type": "toolCall", "id": "c", "name": "exec",
                                         "arguments": {"command": "ls"}}],
                            "timestamp": ts}}
    return {"type": "message", "id": f"e{i}", "parentId": None,
            "message": {"role": "toolResult", "toolCallId": "c", "toolName": "exec",
                        "isError": rng.random() < 0.05, "content": [{"type": "text", "text": pad}],
                        "timestamp": ts}}


def gen_openclaw(root: Path, sessions: int, events: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    con = _writer(root / "agents" / "main" / "agent" / "openclaw-agent.sqlite", "openclaw_agent.sql")
    base = 1_780_000_000_000
    per = max(1, events // sessions)
    con.execute("BEGIN")
    for s in range(sessions):
        sid = f"sess-{s:06d}"
        key = f"agent:main:cron:job{s % 7}:run:r{s}" if s % 10 == 0 else f"agent:main:s{s}"
        ts = base + s * 60_000
        con.execute("INSERT INTO session_nodes (session_key, current_session_id, entry_json,"
                    " updated_at, created_via) VALUES (?, ?, '{}', ?, ?)",
                    (key, sid, ts, "cron" if s % 10 == 0 else "operator"))
        con.execute("INSERT INTO session_windows (session_id, session_key, reason, created_at,"
                    " updated_at, started_at) VALUES (?, ?, 'initial', ?, ?, ?)",
                    (sid, key, ts, ts, ts))
        rows_json = []
        rows_z = []
        n = per if s < sessions - 1 else events - per * (sessions - 1)
        for i in range(n):
            big = (i % 3) == 1 or rng.random() < 0.0  # assistant turns are the large ones
            ev = orjson.dumps(_event(rng, i, ts + i * 1000, big))
            if len(ev) >= 1024:
                rows_z.append((sid, i + 1, ts + i, _zstd_compress(ev), len(ev), NAV))
            else:
                rows_json.append((sid, i + 1, ev.decode(), ts + i, len(ev)))
        con.executemany("INSERT INTO transcript_events (session_id, seq, event_json, created_at,"
                        " event_utf8_bytes) VALUES (?, ?, ?, ?, ?)", rows_json)
        con.executemany("INSERT INTO transcript_events (session_id, seq, event_json, created_at,"
                        " event_zstd, event_utf8_bytes, navigation_json) VALUES (?, ?, NULL, ?, ?, ?, ?)",
                        rows_z)
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def gen_hermes(home: Path, sessions: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    con = _writer(home / "state.db", "hermes_state.sql")
    con.execute("BEGIN")
    for s in range(sessions):
        sid = f"20260601_{s:06d}_abcdef"
        inp, out = rng.randint(1000, 90_000), rng.randint(100, 9000)
        con.execute("INSERT INTO sessions (id, source, model, started_at, ended_at, input_tokens,"
                    " output_tokens, cache_read_tokens, api_call_count, estimated_cost_usd,"
                    " cost_status, message_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, "cron" if s % 9 == 0 else "cli", "anthropic/claude-sonnet-4-6",
                     1_780_000_000 + s * 60, 1_780_000_030 + s * 60, inp, out, inp // 2, 4,
                     0.01, "estimated", 6))
        con.execute("INSERT INTO session_model_usage (session_id, model, api_call_count,"
                    " input_tokens, output_tokens, estimated_cost_usd, cost_status)"
                    " VALUES (?, ?, 3, ?, ?, 0.008, 'estimated')",
                    (sid, "anthropic/claude-sonnet-4-6", inp - 500, out - 50))
        con.executemany("INSERT INTO messages (session_id, role, content, tool_name, timestamp,"
                        " finish_reason) VALUES (?, ?, ?, ?, ?, ?)",
                        [(sid, "user", "hello", None, 1_780_000_000 + s * 60, None),
                         (sid, "assistant", "ok", None, 1_780_000_001 + s * 60, "tool_calls"),
                         (sid, "tool", "Error: x" if s % 13 == 0 else "fine", "terminal",
                          1_780_000_002 + s * 60, None),
                         (sid, "assistant", "done", None, 1_780_000_003 + s * 60, "stop")])
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def append_openclaw(root: Path, sessions: int = 5) -> None:
    con = _writer(root / "agents" / "main" / "agent" / "openclaw-agent.sqlite", "openclaw_agent.sql")
    rng = random.Random(9)
    for s in range(sessions):
        sid = f"sess-{s:06d}"
        top = con.execute("SELECT max(seq) FROM transcript_events WHERE session_id=?", (sid,)).fetchone()[0]
        ev = orjson.dumps(_event(rng, 1, 1_790_000_000_000, False)).decode()
        con.execute("INSERT INTO transcript_events (session_id, seq, event_json, created_at,"
                    " event_utf8_bytes) VALUES (?, ?, ?, 0, ?)", (sid, top + 1, ev, len(ev)))
    con.close()


def _scan_child(oc: str, hm: str, state: str) -> None:
    from token_optimizer.audit.scan import Roots, scan

    t0 = time.perf_counter()
    res = scan(Roots(Path(oc) if oc else None, Path(hm) if hm else None), Path(state))
    t1 = time.perf_counter()
    rows = res.rows  # what every report and audit command goes on to build
    dt = time.perf_counter() - t0
    # the scan's own process, or a worker of its process pool if one grew larger
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": dt, "scan_seconds": t1 - t0, "peak_rss_mb": peak_kb / 1024,
                      "sessions": len(rows),
                      "events_read": res.events_read,
                      "tokens": sum(r.tokens.total for r in rows),
                      "cost": sum(r.cost_usd for r in rows)}))


def _run(oc: Path | None, hm: Path | None, state: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.bench_audit", "--child",
                          str(oc or ""), str(hm or ""), str(state)],
                         check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_audit")
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--hermes-sessions", type=int, default=10_000)
    ap.add_argument("--dir", help="work directory (default: a temp dir, removed afterwards)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _scan_child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        base = Path(args.dir) if args.dir else Path(tmp)
        oc, hm = base / "openclaw", base / "hermes"
        t0 = time.perf_counter()
        if not (oc / "agents").exists():
            gen_openclaw(oc, args.sessions, args.events)
        if not (hm / "state.db").exists():
            gen_hermes(hm, args.hermes_sessions)
        print(f"generated in {time.perf_counter() - t0:.1f} s "
              f"(openclaw {args.sessions} sessions / {args.events} events, "
              f"hermes {args.hermes_sessions} sessions)")
        for label, o, h in (("openclaw", oc, None), ("hermes", None, hm)):
            state = base / f"state-{label}"
            for f in state.glob("audit-cache.sqlite*"):
                os.unlink(f)
            cold = _run(o, h, state)
            warm = _run(o, h, state)
            line = (f"{label}: cold {cold['seconds']:.2f} s (peak RSS {cold['peak_rss_mb']:.0f} MB, "
                    f"{cold['sessions']} sessions, {cold['events_read']} rows read); "
                    f"warm {warm['seconds']:.3f} s (scan {warm['scan_seconds']:.3f} s + rows; "
                    f"peak RSS {warm['peak_rss_mb']:.0f} MB, "
                    f"{warm['events_read']} rows read)")
            if o is not None:
                append_openclaw(o)
                inc = _run(o, h, state)
                line += f"; after 5 appends {inc['seconds']:.3f} s ({inc['events_read']} rows read)"
            print(line)
            ok = cold["seconds"] <= 10 and warm["seconds"] <= 0.5 and max(
                cold["peak_rss_mb"], warm["peak_rss_mb"]) <= 200
            print(f"  targets (cold ≤ 10 s, warm ≤ 0.5 s, RSS ≤ 200 MB): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
