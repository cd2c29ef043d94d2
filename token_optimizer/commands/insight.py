"""``context``, ``quality``, ``drift`` and ``validate``: what every request carries and whether a change helped.

All four take ``--json``; ``quality`` and ``validate`` take the audit's period
flags (``--days``/``--since``/``--until``, ``--agent``, ``--profile``,
``--timezone``). Nothing here is imported by the runtime or a hook.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from token_optimizer.audit.context import ContextAudit, audit_hermes, audit_openclaw
from token_optimizer.audit.insight import (
    ALPHA,
    MIN_SAMPLES,
    build_snapshot,
    diff_snapshots,
    latest_snapshot,
    quality_report,
    save_snapshot,
    snapshot_date,
    validate,
)
from token_optimizer.audit.statestore import StateView, read_state
from token_optimizer.audit.timeutil import parse_bound
from token_optimizer.commands import stateroot
from token_optimizer.commands.audit import _common, _roots, _run_scan
from token_optimizer.commands.render import fmt_tokens, print_json

DEFAULT_DAYS = 30


def _state_root(args: argparse.Namespace) -> Path:
    return stateroot.state_paths(args).root


def _host_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--openclaw-root", metavar="DIR",
                   help="OpenClaw state dir (default: $OPENCLAW_STATE_DIR or ~/.openclaw)")
    p.add_argument("--hermes-home", metavar="DIR", help="Hermes home (default: $HERMES_HOME or ~/.hermes)")


def context_audits(args: argparse.Namespace) -> list[ContextAudit]:
    roots = _roots(args)
    out: list[ContextAudit] = []
    if roots.openclaw is not None:
        out.append(audit_openclaw(roots.openclaw))
    if roots.hermes is not None:
        out.append(audit_hermes(roots.hermes))
    return out


def _any_install(args: argparse.Namespace) -> bool:
    """Whether an OpenClaw or Hermes install is there (what ``ContextAudit.found`` says),
    without reading its configuration."""
    roots = _roots(args)
    return any(r is not None and r.is_dir() for r in (roots.openclaw, roots.hermes))


def _not_found() -> int:
    print("No OpenClaw or Hermes install found (see `token-optimizer detect`).", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- context


def _cmd_context(args: argparse.Namespace) -> int:
    audits = [a for a in context_audits(args) if a.found]
    if not audits:
        return _not_found()
    if args.json:
        print_json({"hosts": [a.to_json() for a in audits]})
        return 0
    for a in audits:
        name = "OpenClaw" if a.host == "openclaw" else "Hermes"
        total = a.total_overhead
        print(f"Context overhead, {name} ({a.root})")
        print("=" * 50)
        print(f"About {fmt_tokens(total)} tokens ride along with every message.\n")
        for c in a.components:
            bar = "█" * min(40, round(c.tokens / total * 40)) if total else ""
            fixed = " (fixed)" if not c.optimizable else ""
            print(f"{c.name[:25]:<25} {c.tokens:>8,} {bar}{fixed}")
            if c.detail:
                print(f"{'':<25}          {c.detail}")
        if a.mcp_servers:
            print("\nMCP servers:")
            for m in a.mcp_servers:
                state = "disabled" if m.disabled else (f"{m.tool_count} tools" if m.tools_known
                                                       else "tools unknown")
                print(f"  {m.name:<24} {state:<14} {m.command[:60]}")
        print("\nRecommendations:")
        for r in a.recommendations:
            print(f"  → {r}")
        for n in a.notes:
            print(f"  (note: {n})")
        print()
    return 0


# ---------------------------------------------------------------- quality


def _cmd_quality(args: argparse.Namespace) -> int:
    if not _any_install(args):
        return _not_found()
    _res, rows, _tz, window = _run_scan(args, DEFAULT_DAYS)
    state = read_state(_state_root(args))
    rep, extra = quality_report(rows, state)
    if args.json:
        print_json({**rep.to_dict(), **extra, "window": window})
        return 0
    print(f"Quality score: {rep.grade} ({rep.score}/100) ({rep.band})")
    print("=" * 50)
    print(f"{extra['sessions']} sessions; average fill {extra['fill']['averagePct']}% "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(extra['fill']['basis'].items())) or 'no sessions'})\n")
    for s in rep.signals:
        bar = ("█" * round(s.score / 2.5)).ljust(40)
        print(f"{s.name:<22} {s.score:>3} {bar} ({round(s.weight * 100)}%)")
    if rep.recommendations:
        print("\nRecommendations:")
        for r in rep.recommendations:
            print(f"  → {r}")
    return 0


# ---------------------------------------------------------------- drift


def _cmd_drift(args: argparse.Namespace) -> int:
    audits = [a for a in context_audits(args) if a.found]
    if not audits:
        return _not_found()
    root = _state_root(args)
    snap = build_snapshot(audits)
    if args.snapshot:
        path = save_snapshot(root, snap)
        if args.json:
            print_json({"saved": str(path), "snapshot": snap})
        else:
            print(f"Snapshot saved: {path}")
        return 0
    prev = latest_snapshot(root)
    if prev is None:
        report: dict[str, Any] = {"hasDrift": False, "snapshotDate": "none", "snapshotFile": None,
                                  "changes": [],
                                  "hint": "no snapshot yet: run `token-optimizer drift --snapshot` first"}
        if args.json:
            print_json(report)
        else:
            print("No snapshot to compare with yet; run `token-optimizer drift --snapshot` first.")
        return 0
    name, old = prev
    changes = diff_snapshots(old, snap)
    report = {"hasDrift": bool(changes), "snapshotDate": snapshot_date(name), "snapshotFile": name,
              "snapshotCapturedAt": old.get("capturedAt"), "changes": changes}
    if args.json:
        print_json(report)
        return 0
    if not changes:
        print(f"No drift since {report['snapshotDate']}.")
        return 0
    print(f"Drift since {report['snapshotDate']}:")
    sign = {"added": "+", "removed": "-", "changed": "~"}
    for c in changes:
        print(f"  {sign[c['type']]} [{c['host']} {c['component']}] {c['details']}")
    return 0


# ---------------------------------------------------------------- validate


def _split_point(args: argparse.Namespace, state: StateView, tz: Any) -> tuple[float | None, str | None]:
    at = args.at
    if not at:
        return None, None
    if at == "snapshot":
        prev = latest_snapshot(_state_root(args))
        if prev is None:
            raise SystemExit("validate: no snapshot recorded (run `token-optimizer drift --snapshot`)")
        from token_optimizer.jsutil import parse_iso_ms

        return parse_iso_ms(prev[1].get("capturedAt")), f"snapshot {prev[0]}"
    if at in ("checkpoint", "savings"):
        label = "first checkpoint" if at == "checkpoint" else "first savings event"
        for ts, what in state.change_times():
            if what == label:
                return ts, label
        raise SystemExit(f"validate: no {label} recorded under {state.root}")
    try:
        return parse_bound(at, tz, end=False), at
    except ValueError as exc:
        raise SystemExit(f"validate: --at {at!r}: {exc}") from None


def _cmd_validate(args: argparse.Namespace) -> int:
    if not _any_install(args):
        return _not_found()
    _res, rows, tz, window = _run_scan(args, DEFAULT_DAYS)
    state = read_state(_state_root(args))
    at_ms, label = _split_point(args, state, tz)
    res = validate(rows, state, at_ms=at_ms, at_label=label, strategy=args.strategy)
    if args.json:
        print_json({**res, "window": window})
        return 0
    print(f"  VALIDATE: IMPACT OF A CHANGE ({res['strategy']} split)")
    print(f"  Split {res['splitLabel']}")
    print("=" * 58)
    print(f"  {'Metric':<26}{'n':>9}{'Before':>12}{'After':>12}{'Change':>9}  Verdict")
    for m in res["metrics"]:
        fmt = _fmt_metric(m["metric"])
        n = f"{m['before']['n']}/{m['after']['n']}"
        print(f"  {m['label']:<26}{n:>9}{fmt(m['before']['mean']):>12}{fmt(m['after']['mean']):>12}"
              f"{m['changePct']:>+8.1f}%  {m['verdict'].replace('_', ' ')}")
    arrow = {"improved": "UP", "regressed": "DOWN", "no_change": "FLAT", "mixed": "MIXED",
             "insufficient_data": "?"}[res["verdict"]]
    print(f"\n  Verdict: {res['verdict'].replace('_', ' ').upper()} ({arrow})")
    print(f"  Sessions: {res['before']['count']} before, {res['after']['count']} after")
    print(f"  Rule: at least {MIN_SAMPLES} sessions each side; a metric changes only when a "
          f"Mann-Whitney U test gives p < {ALPHA} (positive change = better).")
    return 0


def _fmt_metric(key: str) -> Any:
    if key == "tokens":
        return fmt_tokens
    if key == "cost":
        return lambda v: f"${v:.4f}"
    if key == "cacheHit":
        return lambda v: f"{v:.3f}"
    return lambda v: f"{v:.1f}"


# ---------------------------------------------------------------- registration


def register_cli(subparsers: Any) -> None:
    """Add ``context``, ``quality``, ``drift`` and ``validate``."""
    c = subparsers.add_parser(
        "context", help="per-message overhead: system prompt, bootstrap files, skills, MCP, toolsets",
        description="Estimate what every request carries before the user types, per host, with "
        "recommendations. OpenClaw: openclaw.json, the workspace bootstrap files and the skills "
        "directories; Hermes: config.yaml, SOUL.md, memories, skills and toolsets.")
    _host_args(c)
    c.set_defaults(func=_cmd_context)

    q = subparsers.add_parser(
        "quality", help="the 7-signal quality score and grade over a period",
        description="Seven-signal score (context fill, session length, model routing, empty runs, "
        "outcomes, message efficiency, redundancy). Fill is the newest checkpoint's measured fill, "
        "else the mean prompt per model call over the window; never the cumulative input.")
    _common(q, days_help=f"sessions started in the last N days (default {DEFAULT_DAYS})")
    q.set_defaults(func=_cmd_quality)

    d = subparsers.add_parser(
        "drift", help="what changed in the per-message setup since the last snapshot",
        description="Compare skills, MCP servers, toolsets, agents, bootstrap file sizes and the "
        "model config with the newest snapshot under <state root>/snapshots/.")
    _host_args(d)
    d.add_argument("--snapshot", action="store_true", help="save a new snapshot instead of comparing")
    d.set_defaults(func=_cmd_drift)

    v = subparsers.add_parser(
        "validate", help="did a change help? compare sessions before and after a split",
        description=f"Split the period at --at (a date, 'snapshot' = the newest drift snapshot, "
        f"'checkpoint' = the first checkpoint the runtime captured, 'savings' = the first savings "
        f"event), else at the largest time gap (--strategy auto) or the midpoint (halves). Each "
        f"metric is 'improved'/'regressed' only with at least {MIN_SAMPLES} sessions per side and "
        f"a two-sided Mann-Whitney U p < {ALPHA}; otherwise 'no change' or 'too few sessions'.")
    _common(v, days_help=f"sessions started in the last N days (default {DEFAULT_DAYS})")
    v.add_argument("--strategy", choices=("auto", "halves"), default="auto")
    v.add_argument("--at", metavar="WHEN", help="DATE, 'snapshot', 'checkpoint' or 'savings'")
    v.set_defaults(func=_cmd_validate)


__all__ = ["context_audits", "register_cli"]
