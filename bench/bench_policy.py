"""Cost of a checkpoint-policy decision and memory held by per-session state.

Run: ``python -m bench.bench_policy [--writes N]``

1. µs per recorded decision with durable write-through (temp file, fsync,
   rename, directory fsync), the same without fsync, a pure decision and a
   rehydration from disk. Target: <= 1 ms per durable decision.
2. RSS growth after 100,000 distinct sessions pass through every per-session
   collection (policy states plus BoundedSet/BoundedMap instances like the
   runtime's), measured in a fresh subprocess. Target: <= 20 MB above baseline.

The state root is a temporary directory (``--dir`` to put it elsewhere, e.g.
on the file system the gateway uses); it is removed afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from token_optimizer import bounded
from token_optimizer.bounded import BoundedMap, BoundedSet
from token_optimizer.fsutil import resolve_paths
from token_optimizer.policy import CheckpointPolicy, PolicySettings, Snapshot

NOW = 1_800_000_000_000
SESSIONS_RSS = 100_000
TARGET_WRITE_US = 1000.0
TARGET_RSS_MB = 20.0


def _pcts(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] / 1000

    return {"mean_us": statistics.fmean(s) / 1000, "p50_us": pct(0.5), "p90_us": pct(0.9),
            "p99_us": pct(0.99)}


def bench_writes(base: Path, writes: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for durable in (True, False):
        root = Path(tempfile.mkdtemp(dir=base))
        p = CheckpointPolicy(resolve_paths(root), PolicySettings(durable=durable))
        for i in range(50):  # session dirs exist, like a running gateway
            p.record_decision(f"s{i}", "compact", NOW)
        samples: list[int] = []
        for i in range(writes):
            t0 = time.perf_counter_ns()
            p.record_decision(f"s{i % 50}", "progressive-20" if i % 2 else "compact", NOW + i)
            samples.append(time.perf_counter_ns() - t0)
        out["record_decision durable" if durable else "record_decision no fsync"] = _pcts(samples)

    # the syscall floor: the same temp-write / fsync / rename / dir-fsync, no policy code
    payload = b'{\n  "capturedFillBands": [\n    20\n  ]\n}' * 8
    for durable in (True, False):
        d = Path(tempfile.mkdtemp(dir=base))
        samples = []
        for i in range(writes):
            t0 = time.perf_counter_ns()
            tmp = d / f".state.{i}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, payload)
            if durable:
                os.fsync(fd)
            os.close(fd)
            os.replace(tmp, d / "policy-state.json")
            if durable:
                dfd = os.open(d, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
            samples.append(time.perf_counter_ns() - t0)
        out["floor: raw syscalls durable" if durable else "floor: raw syscalls no fsync"] = \
            _pcts(samples)

    p = CheckpointPolicy(resolve_paths(Path(tempfile.mkdtemp(dir=base))), PolicySettings())
    snap = Snapshot(fill_pct=57.0, quality_score=64, context_window=200_000)
    samples = []
    for i in range(20_000):
        t0 = time.perf_counter_ns()
        p.decide_snapshot(f"d{i % 100}", snap, NOW)
        samples.append(time.perf_counter_ns() - t0)
    out["decide_snapshot (in memory)"] = _pcts(samples)

    root = Path(tempfile.mkdtemp(dir=base))
    p = CheckpointPolicy(resolve_paths(root), PolicySettings(durable=False))
    for i in range(200):
        p.record_decision(f"r{i}", "progressive-35", NOW)
    samples = []
    for _ in range(5):
        for i in range(200):
            p.clear_state(f"r{i}")
            t0 = time.perf_counter_ns()
            p.get_state(f"r{i}")
            samples.append(time.perf_counter_ns() - t0)
    out["get_state rehydrate from disk"] = _pcts(samples)
    return out


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(base: Path, sessions: int) -> dict[str, float]:
    """Push ``sessions`` distinct ids through every per-session collection."""
    root = Path(tempfile.mkdtemp(dir=base))
    policy = CheckpointPolicy(resolve_paths(root), PolicySettings(durable=False))
    continuity: BoundedSet[str] = BoundedSet("bench-continuity")
    nudged: BoundedSet[str] = BoundedSet("bench-nudged")
    prior: BoundedMap[str, float] = BoundedMap("bench-prior-scores")
    compactions: BoundedMap[str, int] = BoundedMap("bench-compactions")
    snap = Snapshot(fill_pct=42.0, quality_score=66, context_window=200_000)
    # warm up code paths and allocator pools, then take the baseline
    for i in range(50):
        policy.decide_snapshot(f"warm-{i}", snap, NOW)
    policy.states.clear()
    gc.collect()
    base_kb = _rss_kb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for i in range(sessions):
        sid = f"agent:main:lane-{i:06d}-{os.urandom(4).hex()}"
        policy.register_write_event(sid, f"/work/project/src/module_{i % 97}.py")
        policy.register_write_event(sid, f"/work/project/src/other_{i % 89}.py")
        if policy.should_evaluate(sid, NOW):
            policy.mark_evaluated(sid, NOW)
        d = policy.decide_snapshot(sid, snap, NOW)
        if d is not None and i % 20 == 0:
            policy.record_decision(sid, d.trigger, NOW)
        continuity.add(sid)
        nudged.add(sid)
        prior.set(sid, 66.0)
        compactions.set(sid, i)
    elapsed = time.perf_counter() - t0
    gc.collect()
    after_kb = _rss_kb()
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = [len(policy.states), len(continuity), len(nudged), len(prior), len(compactions)]
    return {
        "sessions": sessions,
        "cap": bounded.current_cap(),
        "max_collection_size": max(sizes),
        "rss_baseline_mb": base_kb / 1024,
        "rss_growth_mb": (after_kb - base_kb) / 1024,
        "peak_growth_mb": (peak_after - peak_before) / 1024,
        "seconds": elapsed,
    }


def bench_rss(base: Path, sessions: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_policy", "--rss-child", "--dir", str(base),
         "--sessions", str(sessions)],
        check=True, capture_output=True, text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=SESSIONS_RSS)
    ap.add_argument("--dir", default=None, help="parent directory for the temporary state roots")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.rss_child:
        print(json.dumps(rss_child(Path(args.dir), args.sessions)))
        return 0

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-policy-") as tmp:
        base = Path(tmp)
        print(f"state root under {base} (load average {os.getloadavg()[0]:.2f})")
        print(f"\nper-decision cost, {args.writes:,} writes over 50 sessions")
        print(f"  {'operation':32s} {'mean µs':>9s} {'p50 µs':>9s} {'p90 µs':>9s} {'p99 µs':>9s}")
        for name, r in bench_writes(base, args.writes).items():
            flag = ""
            if name == "record_decision durable":
                flag = "  ok (<= 1 ms)" if r["p50_us"] <= TARGET_WRITE_US else "  OVER TARGET"
            print(f"  {name:32s} {r['mean_us']:9.1f} {r['p50_us']:9.1f} {r['p90_us']:9.1f} "
                  f"{r['p99_us']:9.1f}{flag}")
        rss = bench_rss(base, args.sessions)
        flag = "ok" if rss["rss_growth_mb"] <= TARGET_RSS_MB else "OVER TARGET"
        print(f"\nRSS after {int(rss['sessions']):,} distinct sessions through every per-session "
              f"collection (fresh subprocess, cap {int(rss['cap'])}):")
        print(f"  baseline {rss['rss_baseline_mb']:.1f} MB, growth {rss['rss_growth_mb']:.2f} MB "
              f"({flag}, target <= {TARGET_RSS_MB:.0f} MB), peak growth "
              f"{rss['peak_growth_mb']:.2f} MB, largest collection {int(rss['max_collection_size'])}, "
              f"{rss['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
