"""Token totals against ``hermes insights`` on the same generated ``state.db``.

``python -m bench.bench_hermes_insights [--hermes-python PY] [--sessions N]``:
generates a Hermes home (as ``bench_audit`` does), asks Hermes' own insights
engine (``agent.insights.InsightsEngine.generate``, what ``hermes insights``
prints) for its overview through the Hermes interpreter with ``HERMES_HOME``
pointed at it, scans the same store here, and prints both. Skips with a
message when the Hermes venv is missing (default
``~/.cache/token-optimizer-tests/hermes-venv/bin/python``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_PY = Path.home() / ".cache" / "token-optimizer-tests" / "hermes-venv" / "bin" / "python"
KEYS = ("total_sessions", "total_input_tokens", "total_output_tokens",
        "total_cache_read_tokens", "total_cache_write_tokens", "total_tokens")
_CHILD = """
import json
from hermes_state import SessionDB
from agent.insights import InsightsEngine
rep = InsightsEngine(SessionDB()).generate(days=36500)
print(json.dumps(rep.get("overview", rep), default=str))
"""


def insights_totals(home: Path, python: Path) -> dict[str, Any]:
    env = {**os.environ, "HERMES_HOME": str(home)}
    out = subprocess.run([str(python), "-c", _CHILD], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    ov: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return {k: ov.get(k) for k in KEYS}


def our_totals(home: Path, state: Path) -> dict[str, Any]:
    from token_optimizer.audit.scan import Roots, scan

    rows = scan(Roots(None, home), state).rows
    t = {"total_sessions": len(rows),
         "total_input_tokens": sum(r.tokens.input for r in rows),
         "total_output_tokens": sum(r.tokens.output for r in rows),
         "total_cache_read_tokens": sum(r.tokens.cache_read for r in rows),
         "total_cache_write_tokens": sum(r.tokens.cache_write for r in rows)}
    t["total_tokens"] = sum(v for k, v in t.items() if k != "total_sessions")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_hermes_insights")
    ap.add_argument("--hermes-python", type=Path, default=DEFAULT_PY)
    ap.add_argument("--sessions", type=int, default=10_000)
    args = ap.parse_args(argv)
    if not args.hermes_python.exists():
        print(f"no Hermes interpreter at {args.hermes_python}; skipping")
        return 0
    from bench.bench_audit import gen_hermes

    with tempfile.TemporaryDirectory(prefix="bench-insights-") as tmp:
        home = Path(tmp) / "hermes"
        gen_hermes(home, args.sessions)
        theirs = insights_totals(home, args.hermes_python)
        ours = our_totals(home, Path(tmp) / "state")
        print(f"{'':24} {'hermes insights':>16} {'token-optimizer':>16}")
        for k in KEYS:
            print(f"{k:24} {theirs[k]!s:>16} {ours[k]!s:>16}")
        print(f"token totals: {'same' if theirs == ours else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
