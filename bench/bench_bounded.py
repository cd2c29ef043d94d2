"""ns/op of the bounded helpers at 100% churn, against a plain OrderedDict and cachetools.

Run: ``python -m bench.bench_bounded [--ops N] [--repeat R]``

Every operation inserts a key never seen before into a collection already
holding ``cap`` (2,000) entries, so each op also evicts one: the worst case
of the per-session collections (a gateway seeing only new sessions).
A second table measures the "hit" case (re-setting / re-adding live keys).
Target: <= 1 µs per op for both helpers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

from cachetools import FIFOCache

from token_optimizer.bounded import BoundedMap, BoundedSet

CAP = 2000
TARGET_NS = 1000.0


def _od_set_factory(cap: int) -> Callable[[str], object]:
    d: OrderedDict[str, int] = OrderedDict()

    def op(k: str) -> None:
        if k in d:
            d.move_to_end(k)
        d[k] = 1
        while len(d) > cap:
            oldest = next(iter(d))
            if oldest == k:
                break
            d.popitem(last=False)

    return op


def _od_add_factory(cap: int) -> Callable[[str], object]:
    d: OrderedDict[str, None] = OrderedDict()

    def op(k: str) -> None:
        if k in d:
            return
        d[k] = None
        while len(d) > cap:
            oldest = next(iter(d))
            if oldest == k:
                break
            d.popitem(last=False)

    return op


def _fifo_set_factory(cap: int) -> Callable[[str], object]:
    c: FIFOCache[str, int] = FIFOCache(maxsize=cap)

    def op(k: str) -> None:
        c[k] = 1

    return op


def _fifo_add_factory(cap: int) -> Callable[[str], object]:
    c: FIFOCache[str, None] = FIFOCache(maxsize=cap)

    def op(k: str) -> None:
        if k not in c:
            c[k] = None

    return op


def _bset_factory(cap: int) -> Callable[[str], object]:
    s: BoundedSet[str] = BoundedSet("bench-set", cap=cap, register=False)
    return s.add


def _bmap_factory(cap: int) -> Callable[[str], object]:
    m: BoundedMap[str, int] = BoundedMap("bench-map", cap=cap, register=False)

    def op(k: str) -> None:
        m.set(k, 1)

    return op


CANDIDATES: list[tuple[str, Callable[[int], Callable[[str], object]]]] = [
    ("BoundedSet.add", _bset_factory),
    ("BoundedMap.set", _bmap_factory),
    ("OrderedDict set (same loop)", _od_set_factory),
    ("OrderedDict add (same loop)", _od_add_factory),
    ("cachetools FIFOCache set", _fifo_set_factory),
    ("cachetools FIFOCache guarded add", _fifo_add_factory),
]


def measure(factory: Callable[[int], Callable[[str], object]], ops: int, repeat: int,
            churn: bool) -> list[float]:
    """ns/op for each repetition (fresh collection pre-filled to the cap)."""
    prefill = [f"pre-{i}" for i in range(CAP)]
    fresh = [f"sess-{i}" for i in range(ops)]
    hits = [prefill[i % CAP] for i in range(ops)]
    results: list[float] = []
    for _ in range(repeat):
        op = factory(CAP)
        for k in prefill:
            op(k)
        keys = fresh if churn else hits
        t0 = time.perf_counter_ns()
        for k in keys:
            op(k)
        results.append((time.perf_counter_ns() - t0) / ops)
    return results


def run(ops: int, repeat: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for churn in (True, False):
        title = "100% churn (every op inserts a new key and evicts one)" if churn else \
            "hits (every op touches a live key; no eviction)"
        print(f"\n{title}; cap {CAP}, {ops:,} ops x {repeat}")
        print(f"  {'collection':34s} {'median ns/op':>12s} {'best ns/op':>11s}")
        for name, factory in CANDIDATES:
            res = measure(factory, ops, repeat, churn)
            med, best = statistics.median(res), min(res)
            out[f"{name} [{'churn' if churn else 'hit'}]"] = {"median_ns": med, "best_ns": best}
            flag = ""
            if name.startswith("Bounded") and churn:
                flag = "  ok (<= 1 µs)" if med <= TARGET_NS else "  OVER TARGET"
            print(f"  {name:34s} {med:12.0f} {best:11.0f}{flag}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    run(args.ops, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
