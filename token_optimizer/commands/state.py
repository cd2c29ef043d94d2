"""``checkpoints list|show``, ``restore`` and ``savings``: what the plugin kept and what it saved.

All read-only. ``restore SESSION`` prints exactly what a post-compaction restore
would inject now, through the hook's own code path
(:func:`token_optimizer.runtime.restore_injection`). ``savings`` reads
``savings-events.jsonl`` and splits every figure into *measured* (tokens that
were really not sent: blocked and delta reads) and *estimated* (counterfactuals:
nudges, restores, followed hints, lean resumes; and every row written without a
``basis``, by the reference or by earlier versions).

Each reads the state root chosen by :mod:`token_optimizer.commands.stateroot`
(``--home``, ``TOKEN_OPTIMIZER_HOME``, ``<HERMES_HOME>/token-optimizer`` when
Hermes is the host in use, else the OpenClaw root).
"""

from __future__ import annotations

import argparse
import math
import stat
import sys
from pathlib import Path
from typing import Any, TextIO

from token_optimizer import fsutil, jsutil
from token_optimizer.checkpoints import CheckpointInfo, CheckpointStore, list_checkpoints
from token_optimizer.commands import stateroot
from token_optimizer.fsutil import StatePaths
from token_optimizer.policy import CheckpointPolicy, PolicySettings
from token_optimizer.telemetry import Telemetry, savings_by_session

DEFAULT_DAYS = 30
_SHOW_MAX_BYTES = 4 << 20


def _policy(paths: StatePaths) -> CheckpointPolicy:
    return CheckpointPolicy(paths, PolicySettings.from_env())


def _session_dirs(paths: StatePaths) -> list[str]:
    """Names of the session directories under ``checkpoints/`` (sorted)."""
    try:
        with fsutil.open_checked_dir(paths.root, paths.checkpoints) as d:
            out = []
            for name in d.listdir():
                try:
                    if stat.S_ISDIR(d.lstat(name).st_mode):
                        out.append(name)
                except OSError:
                    continue
            return sorted(out)
    except OSError:
        return []


def all_checkpoints(paths: StatePaths, session: str | None = None) -> list[tuple[str, CheckpointInfo]]:
    """``(session directory, checkpoint)`` pairs, oldest first within each session."""
    policy = _policy(paths)
    names = [CheckpointPolicy.key_for(session)] if session else _session_dirs(paths)
    return [(name, info) for name in names for info in list_checkpoints(policy, name)]


def _fmt_num(v: float | None, suffix: str = "") -> str:
    return "-" if v is None else f"{jsutil.js_number(v)}{suffix}"


def _cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    paths, source = stateroot.describe(args)
    rows = all_checkpoints(paths, args.session)
    if args.json:
        out.write(jsutil.dumps_pretty([info.to_dict(name) for name, info in rows]) + "\n")
        return 0
    if not rows:
        where = f" for session {args.session}" if args.session else ""
        out.write(f"No checkpoints{where} under {paths.checkpoints} ({stateroot.label(source)})\n")
        return 0
    from token_optimizer.commands.render import print_table

    table = [[name, info.created_at, info.trigger, _fmt_num(info.fill_pct, "%"),
              _fmt_num(info.quality_score), info.filename] for name, info in rows]
    print_table(["session", "captured", "trigger", "fill", "quality", "file"], table,
                right=[False, False, False, True, True, False], out=out)
    out.write(f"\n{len(rows)} checkpoint(s). Show one with: token-optimizer checkpoints show FILE\n")
    return 0


def find_checkpoint(paths: StatePaths, ident: str) -> tuple[list[tuple[str, CheckpointInfo]], bool]:
    """Checkpoints whose file name is ``ident`` (exact wins) or starts with it; and
    whether the match was exact."""
    rows = all_checkpoints(paths)
    exact = [r for r in rows if r[1].filename == ident]
    if exact:
        return exact, True
    return [r for r in rows if r[1].filename.startswith(ident)], False


def _cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    paths = stateroot.state_paths(args)
    ident = Path(args.id).name if args.id else ""
    if not ident:
        sys.stderr.write("checkpoints show: give a checkpoint file name or a prefix of one\n")
        return 2
    matches, _exact = find_checkpoint(paths, ident)
    if not matches:
        sys.stderr.write(f"no checkpoint named {ident!r} (see: token-optimizer checkpoints list)\n")
        return 1
    if len(matches) > 1:
        sys.stderr.write(f"{ident!r} matches {len(matches)} checkpoints; give more of the name:\n")
        for name, info in matches[:20]:
            sys.stderr.write(f"  {name}/{info.filename}\n")
        return 1
    _name, info = matches[0]
    try:
        text = fsutil.read_text_no_follow(info.path, max_bytes=_SHOW_MAX_BYTES, root=paths.root)
    except OSError as exc:
        sys.stderr.write(f"cannot read {info.path}: {exc}\n")
        return 1
    out.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    from token_optimizer.runtime import restore_injection

    paths = stateroot.state_paths(args)
    policy = _policy(paths)
    text = restore_injection(CheckpointStore(paths, policy), args.session)
    if text is None:
        sys.stderr.write(f"no checkpoint to restore for session {args.session!r}\n")
        return 1
    out.write(text if text.endswith("\n") else text + "\n")
    return 0


def _parse_days(raw: str | None) -> int | None:
    """``--days``: a whole number of days from 1 to 3650; ``None`` when invalid."""
    if raw is None:
        return DEFAULT_DAYS
    n = jsutil.parse_int(raw)
    if math.isnan(n) or str(raw).strip() != str(int(n)) or not 1 <= n <= 3650:
        return None
    return int(n)


def savings_report(paths: StatePaths, days: int) -> dict[str, Any]:
    rows = Telemetry(paths).read_savings_events(days)
    sessions = savings_by_session(rows)
    sessions.sort(key=lambda s: str(s.get("last") or ""), reverse=True)
    return {
        "periodDays": days,
        "log": str(paths.savings_log),
        "events": len(rows),
        "measuredTokens": sum(s["measuredTokens"] for s in sessions),
        "estimatedTokens": sum(s["estimatedTokens"] for s in sessions),
        "sessions": sessions,
    }


def _cmd_savings(args: argparse.Namespace, out: TextIO) -> int:
    days = _parse_days(args.days)
    if days is None:
        sys.stderr.write(f"--days must be a whole number from 1 to 3650, not {args.days!r}\n")
        return 2
    rep = savings_report(stateroot.state_paths(args), days)
    if args.json:
        out.write(jsutil.dumps_pretty(rep) + "\n")
        return 0
    from token_optimizer.commands.render import fmt_tokens, print_table

    out.write(f"Token Optimizer savings, last {days} day(s)\n")
    if not rep["sessions"]:
        out.write(f"No savings recorded in {rep['log']}\n")
        return 0
    table = []
    for s in rep["sessions"]:
        kinds = ", ".join(f"{t} x{v['count']} ({v['basis']})" for t, v in s["byType"].items())
        table.append([s["sessionId"], fmt_tokens(s["measuredTokens"]), fmt_tokens(s["estimatedTokens"]),
                      kinds])
    print_table(["session", "measured", "estimated", "events"], table,
                right=[False, True, True, False], out=out,
                footer=["total", fmt_tokens(rep["measuredTokens"]), fmt_tokens(rep["estimatedTokens"]),
                        f"{rep['events']} event(s)"])
    out.write("\nmeasured: tokens really not sent (a blocked or delta read, net of the reply sent "
              "instead)\nestimated: what a nudge, a restore, a followed hint or a lean resume may "
              "have spared; not a measurement\n")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``checkpoints list|show``, ``restore`` and ``savings``."""
    cp = subparsers.add_parser("checkpoints", help="list checkpoints or print one")
    cps = cp.add_subparsers(dest="checkpoints_command", metavar="ACTION")
    ls = cps.add_parser("list", help="every checkpoint with its trigger, fill and quality")
    ls.add_argument("--session", metavar="ID", help="only this session")
    ls.add_argument("--json", action="store_true", help="print JSON")
    sh = cps.add_parser("show", help="print a checkpoint's text")
    sh.add_argument("id", metavar="ID", help="a checkpoint file name, or a unique prefix of one")
    cp.set_defaults(func=_cmd_checkpoints)

    rs = subparsers.add_parser("restore", help="print what a restore would inject for a session now")
    rs.add_argument("session", metavar="SESSION", help="session id")
    rs.set_defaults(func=lambda a: _cmd_restore(a, sys.stdout))

    sv = subparsers.add_parser("savings", help="tokens saved per session, measured vs estimated")
    sv.add_argument("--days", default=None, metavar="N", help=f"window in days (default {DEFAULT_DAYS})")
    sv.add_argument("--json", action="store_true", help="print JSON")
    sv.set_defaults(func=lambda a: _cmd_savings(a, sys.stdout))


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    if getattr(args, "checkpoints_command", None) == "show":
        return _cmd_show(args, sys.stdout)
    for k, v in (("session", None), ("json", False)):
        if not hasattr(args, k):
            setattr(args, k, v)
    return _cmd_list(args, sys.stdout)
