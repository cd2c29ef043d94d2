"""Per-turn cost of ``agent_turn_prepare`` at steady state, by session size.

Run: ``python -m bench.bench_turn`` (add ``--json`` for one JSON line).

For each size N (100, 1k, 10k, 50k messages) a session is grown to N messages
through the runtime's own event flow (turn prepare, usage, agent end), then
user turns are timed. Each timed turn carries what the OpenClaw shim sends:
the prompt and the tail of the history (the shim forwards at most the last
``HISTORY_TAIL`` messages plus the total count). The TypeScript reference
re-parses the whole transcript on every turn: 0.54 / 3.6 / 26.9 / 146 ms on
this machine for the same sizes. Target here: ≤ 0.3 ms median, flat in N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from token_optimizer.hosts.openclaw_events import handle
from token_optimizer.policy import PolicySettings
from token_optimizer.runtime import TokenOptimizer

SIZES = (100, 1_000, 10_000, 50_000)
HISTORY_TAIL = 40
TIMED_TURNS = 400
REFERENCE_MS = {100: 0.54, 1_000: 3.6, 10_000: 26.9, 50_000: 146.0}


def _msg(i: int) -> dict[str, Any]:
    role = "user" if i % 2 == 0 else "assistant"
    return {"role": role, "content": f"message {i}: refactoring module {i % 97} and its tests"}


def grow(rt: TokenOptimizer, sid: str, n: int) -> list[dict[str, Any]]:
    ctx = {"sessionId": sid, "sessionKey": f"agent:main:{sid}", "agentId": "main", "trigger": "user"}
    history: list[dict[str, Any]] = []
    while len(history) < n:
        i = len(history)
        tail = history[-HISTORY_TAIL:]
        handle(rt, "agent_turn_prepare", {"prompt": _msg(i)["content"], "messages": tail,
                                         "messagesTotal": len(history)}, ctx)
        history.append(_msg(i))
        history.append(_msg(i + 1))
        handle(rt, "llm_output", {"model": "claude-sonnet-4", "contextTokenBudget": 200_000,
                                 "usage": {"input": 800, "output": 300, "cacheRead": 30_000,
                                           "cacheWrite": 200}}, ctx)
        handle(rt, "agent_end", {"messages": history[-HISTORY_TAIL:], "messagesTotal": len(history)}, ctx)
    return history


def measure(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        # Default cooldowns: this is the steady state a real gateway sees.
        rt = TokenOptimizer(Path(tmp) / "state", settings=PolicySettings.from_env({}), cwd=tmp)
        sid = f"bench-{n}"
        history = grow(rt, sid, n)
        ctx = {"sessionId": sid, "sessionKey": f"agent:main:{sid}", "agentId": "main",
               "trigger": "user"}
        tail = history[-HISTORY_TAIL:]
        samples: list[float] = []
        for k in range(TIMED_TURNS):
            ev = {"prompt": f"timed turn {k}", "messages": tail, "messagesTotal": len(history)}
            t0 = time.perf_counter_ns()
            handle(rt, "agent_turn_prepare", ev, ctx)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        rt.close()
    samples.sort()
    return {
        "messages": n,
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 4),
        "reference_ms": REFERENCE_MS[n],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    args = ap.parse_args()
    rows = [measure(int(s)) for s in args.sizes.split(",")]
    if args.json:
        print(json.dumps({"bench": "agent_turn_prepare", "rows": rows}))
    else:
        print(f"{'messages':>9} {'median ms':>10} {'p99 ms':>8} {'TS ref ms':>10}")
        for r in rows:
            print(f"{r['messages']:>9} {r['median_ms']:>10.4f} {r['p99_ms']:>8.4f} {r['reference_ms']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
