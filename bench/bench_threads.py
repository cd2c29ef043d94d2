"""Many threads, many sessions, one runtime: it finishes, stays bounded, loses no decision.

Run: ``python -m bench.bench_threads [--threads 10] [--sessions 1000] [--dir D]``

Each thread drives its own sessions through one shared ``TokenOptimizer``:
``session_start``, one model call at ~60 % fill, the first user turn (the
continuity search over every earlier checkpoint, then a snapshot evaluation
that captures the fill-band checkpoint), and a file write. Sessions never end.
Afterwards it checks that every per-session collection is within its cap and
that every checkpoint in a manifest has its decision in the session's
``policy-state.json`` (read back by a fresh policy, as a new process would), and
that every session's index entry (written behind the hook) is on disk after close.

Issue 11, item 8: before the checkpoint index, 10 x 1,000 did not finish in 500 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from token_optimizer.events import Identity, ToolAfter, TurnPrepare, Usage
from token_optimizer.fsutil import resolve_paths
from token_optimizer.policy import CheckpointPolicy, PolicySettings
from token_optimizer.runtime import TokenOptimizer
from token_optimizer.session_index import SessionIndex


def drive(rt: TokenOptimizer, tag: str, sessions: int, work: Path, lat: list[float]) -> None:
    for i in range(sessions):
        sid = f"{tag}-{i:05d}"
        ident = Identity(sid, f"agent:main:web:{sid}", "main", "web")
        rt.session_start(ident)
        rt.usage(Usage(ident, model="claude-sonnet-4", input_tokens=2_000, output_tokens=400,
                       cache_read_tokens=118_000, context_budget=200_000))
        t0 = time.perf_counter()
        rt.turn_prepare(TurnPrepare(ident, f"continue the {tag} parser work, module {i % 40}",
                                    cwd=str(work)))
        lat.append((time.perf_counter() - t0) * 1000)
        rt.tool_after(ToolAfter(ident, "write", {"file_path": str(work / f"m{i % 40}.py")}))


def check(rt: TokenOptimizer, root: Path) -> dict[str, Any]:
    over = {n: (len(c), c.cap) for n, c in rt.collections().items() if len(c) > c.cap}
    fresh = CheckpointPolicy(resolve_paths(root), PolicySettings())
    rows = missing = 0
    ck = root / "checkpoints"
    for d in sorted(ck.iterdir()) if ck.exists() else []:
        m = d / "manifest.jsonl"
        if not m.exists():
            continue
        state = fresh.peek_state(d.name)
        for line in m.read_text().splitlines():
            row = json.loads(line)
            rows += 1
            trig = str(row["trigger"])
            if trig.startswith("progressive-") and \
                    float(trig.split("-", 1)[1]) not in state.captured_fill_bands:
                missing += 1
    return {"over_cap": over, "checkpoints": rows, "missing_decisions": missing}


def run(threads: int, sessions: int, base: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        root = Path(tmp) / "state"
        work = Path(tmp) / "project"
        work.mkdir()
        rt = TokenOptimizer(root, settings=PolicySettings(checkpoint_cooldown_ms=0,
                                                          evaluation_cooldown_ms=0),
                            cwd=str(work))
        lat: list[list[float]] = [[] for _ in range(threads)]
        errors: list[BaseException] = []

        def target(t: int) -> None:
            try:
                drive(rt, f"t{t}", sessions, work, lat[t])
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        t0 = time.perf_counter()
        ths = [threading.Thread(target=target, args=(t,)) for t in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        elapsed = time.perf_counter() - t0
        result = check(rt, root)
        rt.close()
        # the first turns' index entries are written behind the hook: all there after close,
        # as another process reads them
        idx = SessionIndex(resolve_paths(root))
        result["index_missing"] = threads * sessions - len(idx)
        idx.close()
    flat = sorted(x for row in lat for x in row)
    result.update({
        "threads": threads, "sessions_per_thread": sessions, "elapsed_s": round(elapsed, 1),
        "first_turn_median_ms": round(statistics.median(flat), 3) if flat else None,
        "first_turn_p99_ms": round(flat[max(0, int(len(flat) * 0.99) - 1)], 3) if flat else None,
        "errors": [repr(e) for e in errors],
    })
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run(args.threads, args.sessions, args.dir)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['threads']} threads x {r['sessions_per_thread']:,} sessions: "
              f"{r['elapsed_s']} s; first turn median {r['first_turn_median_ms']} ms, "
              f"p99 {r['first_turn_p99_ms']} ms")
        print(f"checkpoints {r['checkpoints']:,}, decisions missing on disk "
              f"{r['missing_decisions']}, session index entries missing {r['index_missing']}, "
              f"collections over cap {r['over_cap'] or 'none'}, errors {len(r['errors'])}")
    ok = (not r["over_cap"] and not r["missing_decisions"] and not r["errors"]
          and not r["index_missing"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
