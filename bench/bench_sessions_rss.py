"""Memory held by sessions that never end, through the real runtime hooks.

Run: ``python -m bench.bench_sessions_rss [--sessions 100000] [--top]``

Each session: ``session_start``, a first user turn (``turn_prepare``, so the
session index and continuity run), one model call's usage, a file read and a
file write (read cache, write milestones), and never ``session_end``. RSS
(``VmRSS``, after a ``gc.collect``) is printed at 2,000, 10,000 and every
checkpoint up to ``--sessions``, measured in a fresh subprocess. ``--top``
also prints the biggest ``tracemalloc`` growth sites between 2,000 sessions and
the end (slower).

Issue 11, item 6, before: +12.4 MB over the first 2,000 sessions, then about
1.5 MB per 1,000 (+27.8 MB at 10,000). Target: after 100,000 sessions, RSS at
most 20 MB above the level at 2,000.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

MARKS = (2_000, 10_000, 25_000, 50_000, 100_000)
TARGET_MB = 20.0


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(sessions: int, top: bool, base: str | None) -> dict[str, Any]:
    from token_optimizer.events import Identity, ToolAfter, ToolBefore, TurnPrepare, Usage
    from token_optimizer.policy import PolicySettings
    from token_optimizer.runtime import TokenOptimizer

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp) / "project"
        work.mkdir()
        files = []
        for i in range(50):
            f = work / f"mod{i}.py"
            f.write_text(f"def f{i}():\n    return {i}\n" * 20)
            files.append(str(f))
        rt = TokenOptimizer(Path(tmp) / "state", settings=PolicySettings.from_env({}),
                            cwd=str(work))
        marks = [m for m in MARKS if m <= sessions]
        if sessions not in marks:
            marks.append(sessions)
        out: list[dict[str, float]] = []
        snap = None
        t0 = time.perf_counter()
        for i in range(1, sessions + 1):
            sid = f"s-{i:07d}"
            ident = Identity(sid, f"agent:main:discord:dm:{i}", "main", "discord")
            rt.session_start(ident)
            rt.turn_prepare(TurnPrepare(ident, f"please refactor module {i % 50} and its tests",
                                        cwd=str(work)))
            rt.usage(Usage(ident, model="claude-sonnet-4", input_tokens=900, output_tokens=300,
                           cache_read_tokens=20_000 + i % 1000, context_budget=200_000))
            path = files[i % 50]
            rt.tool_before(ToolBefore(ident, "read", {"file_path": path}))
            rt.tool_after(ToolAfter(ident, "read", {"file_path": path}))
            rt.tool_after(ToolAfter(ident, "write", {"file_path": path}))
            if i in marks:
                gc.collect()
                out.append({"sessions": i, "rss_mb": round(_rss_mb(), 1),
                            "elapsed_s": round(time.perf_counter() - t0, 1)})
                if top and i == marks[0]:
                    tracemalloc.start(8)
                    snap = tracemalloc.take_snapshot()
        growth: list[str] = []
        if snap is not None:
            after = tracemalloc.take_snapshot()
            for stat in after.compare_to(snap, "traceback")[:8]:
                growth.append(f"{stat.size_diff / 1e6:+.2f} MB {stat.count_diff:+d} blocks "
                              + " <- ".join(f"{fr.filename.rsplit('/', 1)[-1]}:{fr.lineno}"
                                            for fr in stat.traceback[:4]))
        sizes = {name: len(c) for name, c in rt.collections().items()}
        rt.close()
    return {"marks": out, "top": growth, "collections": sizes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--top", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None,
                    help="parent of the temporary state root (default: the system temp dir)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.sessions, args.top, args.dir)))
        return 0
    cmd = [sys.executable, "-m", "bench.bench_sessions_rss", "--child",
           "--sessions", str(args.sessions)] + (["--top"] if args.top else [])
    if args.dir:
        cmd += ["--dir", args.dir]
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    if args.json:
        print(json.dumps(res))
        return 0
    base = res["marks"][0]["rss_mb"]
    print(f"{'sessions':>9} {'RSS MB':>8} {'vs 2,000':>9} {'elapsed s':>10}")
    for m in res["marks"]:
        print(f"{m['sessions']:>9,} {m['rss_mb']:>8.1f} {m['rss_mb'] - base:>+9.1f}"
              f" {m['elapsed_s']:>10.1f}")
    worst = max(m["rss_mb"] for m in res["marks"]) - base
    print(f"growth after 2,000: {worst:+.1f} MB (target <= {TARGET_MB:.0f} MB)")
    print("largest collections:", ", ".join(
        f"{k}={v}" for k, v in sorted(res["collections"].items(), key=lambda kv: -kv[1])[:5]))
    for line in res["top"]:
        print("  ", line)
    return 0 if worst <= TARGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
