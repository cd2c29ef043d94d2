"""µs per ledger event and per snapshot as a session's history grows.

Run: ``python -m bench.bench_ledger [--ops N] [--repeat R] [--no-parse]``

For each history size (100, 1k, 10k, 50k messages) a session is first fed that
many messages (every assistant message with a usage event), then we time:

* ``on_usage``    one model call's usage (a new request id),
* ``on_message``  one live message,
* ``on_messages`` the host's full history with one new message appended,
* ``snapshot``    fill + quality + run,

and, for comparison, one full ``parse_session`` of an equivalent transcript
(what the reference does on every hook). The ledger figures must be flat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from token_optimizer.events import Identity, Usage
from token_optimizer.ledger import Ledger
from token_optimizer.models import Message
from token_optimizer.transcripts import parse_session

SIZES = (100, 1_000, 10_000, 50_000)
SID = "bench-session"


def _usage(i: int) -> Usage:
    return Usage(Identity(SID, agent_id="main"), model="claude-opus-4-8", input_tokens=1_000 + i % 7,
                 output_tokens=200, cache_read_tokens=40_000, cache_write_tokens=500,
                 request_id=f"req-{i}", timestamp_ms=1.78e12 + i * 1000.0)


def _message(i: int) -> Message:
    role = "user" if i % 2 == 0 else "assistant"
    return Message(role, f"message number {i} with some ordinary text", f"2026-08-01T10:00:{i % 60:02d}.000Z")


def _build(size: int) -> tuple[Ledger, list[Message]]:
    ledger = Ledger()
    history: list[Message] = []
    for i in range(size):
        m = _message(i)
        history.append(m)
        if m.role == "assistant":
            ledger.on_usage(_usage(i))
    ledger.on_messages(SID, history)
    return ledger, history


def _time_us(op: Callable[[int], object], ops: int, repeat: int, start: int) -> float:
    samples = []
    for r in range(repeat):
        base = start + r * ops
        t0 = time.perf_counter_ns()
        for i in range(base, base + ops):
            op(i)
        samples.append((time.perf_counter_ns() - t0) / ops / 1000)
    return statistics.median(samples)


def _transcript(path: Path, size: int) -> None:
    with open(path, "w") as fh:
        for i in range(size):
            role = "user" if i % 2 == 0 else "assistant"
            msg: dict[str, object] = {"role": role, "content": [{"type": "text", "text": f"message number {i}"}]}
            if role == "assistant":
                msg["model"] = "claude-opus-4-8"
                msg["usage"] = {"inputTokens": 1000, "outputTokens": 200, "cacheReadInputTokens": 40_000}
            fh.write(json.dumps({"type": "message", "timestamp": "2026-08-01T10:00:00.000Z", "message": msg}) + "\n")


def _measure(size: int, ops: int, repeat: int) -> tuple[float, float, float, float]:
    ledger, history = _build(size)
    start = size + 1
    u = _time_us(lambda i: ledger.on_usage(_usage(i)), ops, repeat, start)
    m = _time_us(lambda i: ledger.on_message(SID, _message(i)), ops, repeat, start)

    def grow(i: int) -> None:
        history.append(_message(i))
        ledger.on_messages(SID, history)

    h = _time_us(grow, ops, repeat, start + 10 * ops)
    s = _time_us(lambda i: ledger.snapshot(SID), ops, repeat, 0)
    return u, m, h, s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-parse", action="store_true", help="skip the full-parse comparison")
    args = ap.parse_args(argv)

    print(f"{'history':>8} {'on_usage':>10} {'on_message':>11} {'on_messages':>12} {'snapshot':>10}"
          f" {'full parse':>12}   (µs/op, median of {args.repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            u, m, h, s = _measure(size, args.ops, args.repeat)
            parse = "-"
            if not args.no_parse:
                p = Path(tmp) / f"s{size}.jsonl"
                _transcript(p, size)
                t0 = time.perf_counter_ns()
                parse_session(p, "main")
                parse = f"{(time.perf_counter_ns() - t0) / 1000:,.0f}"
            print(f"{size:>8,} {u:>10.2f} {m:>11.2f} {h:>12.2f} {s:>10.2f} {parse:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
