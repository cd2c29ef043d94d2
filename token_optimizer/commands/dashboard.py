"""``dashboard``: one self-contained HTML file (no network request of any kind).

Writes ``<state root>/dashboard.html`` (or ``--out``), mode 0600, atomically,
then opens it with the desktop's opener unless ``--no-open``. The reference
also regenerates it on every ``session_end``; here nothing does that (no hook
imports this module), a setting for it may come later.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from token_optimizer.commands import stateroot
from token_optimizer.commands.audit import _common, _run_scan
from token_optimizer.commands.insight import _not_found, context_audits
from token_optimizer.commands.render import print_json

DEFAULT_DAYS = 30


def open_in_browser(path: Path) -> str | None:
    """Start the platform's opener without waiting; the error text when it cannot start."""
    if sys.platform == "darwin":
        argv = ["open", str(path)]
    elif os.name == "nt":
        os.startfile(str(path))  # type: ignore[attr-defined, unused-ignore]
        return None
    else:
        argv = ["xdg-open", str(path)]
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return str(exc)
    return None


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from token_optimizer.audit.statestore import read_state
    from token_optimizer.dashboard import build_data, default_findings, render_html, write_dashboard

    audits = context_audits(args)
    if not any(a.found for a in audits):
        return _not_found()
    t0 = time.perf_counter()
    _res, rows, tz, _window = _run_scan(args, DEFAULT_DAYS)
    state_paths, root_source = stateroot.describe(args)
    state_root = state_paths.root
    findings, source = default_findings(rows)
    days = args.days if args.days is not None else (None if (args.since or args.until) else DEFAULT_DAYS)
    data = build_data(rows, state=read_state(state_root), audits=audits, days=days, tz=tz,
                      findings=findings, findings_source=source)
    if args.json:
        print_json(data)
        return 0
    out = Path(args.out).expanduser() if args.out else state_root / "dashboard.html"
    try:
        path = write_dashboard(out, render_html(data))
    except OSError as exc:
        print(f"Could not write the dashboard ({exc}); try again in a moment.", file=sys.stderr)
        return 1
    size = path.stat().st_size
    print(f"Dashboard written to {path} ({size / 1024:.0f} KB, {len(rows)} sessions, "
          f"{time.perf_counter() - t0:.1f} s; state root {state_root}, {stateroot.label(root_source)})")
    if not args.no_open:
        err = open_in_browser(path)
        if err:
            print(f"Could not open a browser ({err}); open {path} yourself.", file=sys.stderr)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``dashboard``."""
    p = subparsers.add_parser(
        "dashboard", help="write one offline HTML dashboard and open it",
        description="Overview, waste, sessions, models, daily, context, quality, checkpoints and "
        "restores in one self-contained HTML file that makes no network request. Default file: "
        "<state root>/dashboard.html. --json prints the data instead.")
    _common(p, days_help=f"sessions started in the last N days (default {DEFAULT_DAYS})")
    p.add_argument("--out", metavar="FILE", help="where to write the HTML file")
    p.add_argument("--no-open", action="store_true", help="do not open it in a browser")
    p.set_defaults(func=_cmd_dashboard)


__all__ = ["open_in_browser", "register_cli"]
