"""Dashboard benchmark: build the HTML for 10,000 sessions.

``python -m bench.bench_dashboard`` generates a Hermes ``state.db`` of
``--sessions`` sessions (default 10,000, via ``bench_audit.gen_hermes``) and a
state root with checkpoint manifests for a fifth of them and restore events,
scans it once (reported, not part of the target), then times building the
dashboard from the scanned rows: data, quality scores, context audit, HTML
render and the atomic write. Targets: build ≤ 3 s, file ≤ 1.5 MB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_audit import gen_hermes

TARGET_S = 3.0
TARGET_BYTES = 1_500_000


def _state(root: Path, session_ids: list[str]) -> None:
    from token_optimizer.fsutil import sanitize_checkpoint_id
    from token_optimizer.jsutil import iso_from_ms

    now = time.time() * 1000
    for i, sid in enumerate(session_ids[::5]):
        d = root / "checkpoints" / sanitize_checkpoint_id(sid)
        d.mkdir(parents=True, exist_ok=True)
        rows = [json.dumps({"trigger": t, "fillPct": 20.0 + 15 * k, "qualityScore": 90 - 8 * k,
                            "createdAt": iso_from_ms(now - i * 60_000 + k * 1000),
                            "file": str(d / f"{k}.md")})
                for k, t in enumerate(("progressive-20", "progressive-35", "progressive-50", "compact"))]
        (d / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    (root / "savings-events.jsonl").write_text("".join(
        json.dumps({"timestamp": iso_from_ms(now - k * 3_600_000), "event_type": "checkpoint_restore",
                    "tokens_saved": 1500, "session_id": session_ids[k * 5], "detail": None}) + "\n"
        for k in range(min(500, len(session_ids) // 5))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)

    from token_optimizer.audit.context import audit_hermes
    from token_optimizer.audit.scan import Roots, scan
    from token_optimizer.audit.statestore import read_state
    from token_optimizer.dashboard import build_data, render_html, write_dashboard

    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        home, state = base / "hermes", base / "state"
        t = time.perf_counter()
        gen_hermes(home, args.sessions)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        rows = scan(Roots(None, home), state, use_cache=False).rows
        scan_s = time.perf_counter() - t
        _state(state, [r.session_id for r in rows])

        t = time.perf_counter()
        view = read_state(state)
        audits = [audit_hermes(home)]
        data = build_data(rows, state=view, audits=audits, days=None, tz=dt.UTC, findings=[],
                          findings_source="bench")
        t_data = time.perf_counter() - t
        html = render_html(data)
        path = write_dashboard(base / "dashboard.html", html)
        build_s = time.perf_counter() - t
        size = path.stat().st_size
        checkpoints = sum(len(v) for v in view.checkpoints.values())
    ok = build_s <= TARGET_S and size <= TARGET_BYTES
    print(f"sessions: {len(rows)} (checkpoints {checkpoints}); generate {gen_s:.2f} s, "
          f"scan {scan_s:.2f} s (not part of the target)")
    print(f"dashboard build: {build_s:.2f} s (data {t_data:.2f} s, render+write {build_s - t_data:.2f} s)"
          f" target <= {TARGET_S:.1f} s")
    print(f"dashboard file: {size:,} bytes ({size / 1e6:.2f} MB), target <= {TARGET_BYTES / 1e6:.1f} MB")
    print("OK" if ok else "OVER TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
