"""Session-index benchmark: open, prune at 100,000 entries; cost of a touch and of a new entry.

Run: ``python -m bench.bench_session_index [--entries N] [--touches N] [--new N]``.

Requirements (issue #7, issue 11 items 6 and 9): with 100k entries one prune
takes under 1 s and opening the index is O(1) (nothing is loaded into memory);
a touch of a known entry and a new entry are each one small SQLite transaction
(WAL, no ``fsync``), O(log n) and well under 1 ms. Exits 1 if a limit is missed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from token_optimizer.fsutil import resolve_paths
from token_optimizer.session_index import SessionIndex, _Entry

DAY = 86400.0


def _seed(root: Path, n: int, old_fraction: float, now: float) -> None:
    """Bulk-insert ``n`` entries; the first ``old_fraction`` of them idle 200 days."""
    idx = SessionIndex(resolve_paths(root))
    conn = idx._db(create=True)
    assert conn is not None
    n_old = int(n * old_fraction)
    with idx._tx(conn):
        for i in range(n):
            t = now - 200 * DAY if i < n_old else now - (i % 80) * DAY
            key = f"agent:main:discord:group:{100000 + i}:{i % 97}"
            idx._insert(conn, key, _Entry(f"sid-{i:06d}", "2026-01-01T00:00:00.000Z", t,
                                          platform="discord", agent="main"))
    idx.close()


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": statistics.median(s), "p99_ms": s[max(0, int(len(s) * 0.99) - 1)]}


def run(entries: int, touches: int, new: int) -> dict[str, Any]:
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "state"
        t0 = time.perf_counter()
        _seed(root, entries, 0.3, now)
        seed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        idx = SessionIndex(resolve_paths(root))
        n = len(idx)
        open_s = time.perf_counter() - t0
        keys = [f"agent:main:discord:group:{100000 + i}:{i % 97}" for i in range(entries)]
        touch = []
        for k in range(touches):
            key = keys[(k * 7919) % entries]
            sid = f"sid-{(k * 7919) % entries:06d}"
            a = time.perf_counter()
            idx.touch(key, sid, platform="discord", agent="main")
            touch.append((time.perf_counter() - a) * 1000)
        fresh = []
        for k in range(new):
            a = time.perf_counter()
            idx.touch(f"agent:main:web:dm:new-{k}", f"new-{k}")
            fresh.append((time.perf_counter() - a) * 1000)
        t0 = time.perf_counter()
        removed = idx.prune_old_entries(90)
        prune_s = time.perf_counter() - t0
        idx.close()
        size_mb = (root / "session-index.sqlite3").stat().st_size / 1e6
    return {"entries": n, "seed_s": seed_s, "open_s": open_s, "touch": _ms(touch),
            "new_entry": _ms(fresh), "prune_s": prune_s, "pruned": removed, "db_mb": size_mb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--touches", type=int, default=5_000)
    ap.add_argument("--new", type=int, default=1_000)
    args = ap.parse_args()
    r = run(args.entries, args.touches, args.new)
    print(f"entries {r['entries']:,} (db {r['db_mb']:.1f} MB, seeded in {r['seed_s']:.2f} s)")
    print(f"open + count      {r['open_s'] * 1000:8.2f} ms")
    print(f"touch (known)     median {r['touch']['median_ms']:.4f} ms  p99 {r['touch']['p99_ms']:.4f} ms")
    print(f"new entry         median {r['new_entry']['median_ms']:.4f} ms  p99 {r['new_entry']['p99_ms']:.4f} ms")
    print(f"prune             {r['prune_s']:8.3f} s  ({r['pruned']:,} removed)")
    ok = r["prune_s"] < 1.0 and r["touch"]["median_ms"] < 1.0 and r["new_entry"]["median_ms"] < 1.0
    print("OK" if ok else "LIMIT MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
