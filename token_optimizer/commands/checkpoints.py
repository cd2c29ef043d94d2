"""``token-optimizer doctor`` and ``checkpoint-stats``: the checkpoint store's health and telemetry."""

from __future__ import annotations

import argparse
import math
from typing import Any

from token_optimizer import jsutil
from token_optimizer.fsutil import resolve_paths
from token_optimizer.policy import CheckpointPolicy, PolicySettings


def _parse_days(raw: str | None, default: int = 30) -> int:
    """``--days``: integer prefix; unparsable or 0 gives the default; clamped to [1, 365]."""
    n = jsutil.parse_int(raw) if raw is not None else math.nan
    if math.isnan(n) or n == 0:
        n = default
    return int(min(365, max(1, n)))


def _cmd_doctor(args: argparse.Namespace) -> int:
    policy = CheckpointPolicy(resolve_paths(args.home), PolicySettings.resolve())
    h = policy.health()
    if args.json:
        print(jsutil.dumps_pretty(h))
        return 0
    lines = [
        "Token Optimizer checkpoint doctor",
        "=" * 50,
        f"Status:              {'healthy' if h['ok'] else 'needs attention'}",
        f"Checkpoint root:     {h['checkpointRoot']}",
        f"Sessions:            {h['sessionCount']}",
        f"Checkpoint files:    {h['checkpointCount']}",
        f"Policy files:        {h['policyCount']}",
        f"Pending triggers:    {h['pendingCount']}",
        f"Stored bytes:        {h['checkpointBytes']}",
        f"Recent events (7d):  {h['recentCheckpointEvents']}",
        f"Last trigger:        {h.get('lastCheckpointTrigger') or 'none'}",
    ]
    if h["issues"]:
        lines.append("Issues:")
        lines.extend(f"  - {issue}" for issue in h["issues"])
    else:
        lines.append("Issues: none")
    print("\n".join(lines))
    return 0


def _cmd_checkpoint_stats(args: argparse.Namespace) -> int:
    days = _parse_days(args.days)
    policy = CheckpointPolicy(resolve_paths(args.home), PolicySettings.resolve())
    s = policy.telemetry_summary(days)
    if args.json:
        print(jsutil.dumps_pretty(s))
        return 0
    lines = [
        f"Checkpoint telemetry ({days}d)",
        "=" * 50,
        f"Enabled:        {'yes' if s['enabled'] else 'no'}",
        f"Event log:      {s['eventLog']}",
        f"Total events:   {s['totalEvents']}",
        f"Recent events:  {s['recentEvents']}",
        "By trigger:",
    ]
    if s["byTrigger"]:
        lines.extend(f"  {trig}: {n}" for trig, n in s["byTrigger"].items())
    else:
        lines.append("  none")
    lines.append("Last event:")
    last = s["lastEvent"]
    if last is None:
        lines.append("  none")
    else:
        lines.append(f"  {last.get('timestamp', '')}  {last.get('trigger', 'unknown')}  "
                     f"session={last.get('sessionId', 'unknown')}")
    print("\n".join(lines))
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``doctor`` and ``checkpoint-stats`` (both with ``--json``)."""
    p = subparsers.add_parser("doctor", help="check the checkpoint store's health")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_doctor)
    s = subparsers.add_parser("checkpoint-stats", help="summarise checkpoint telemetry")
    s.add_argument("--days", default=None, metavar="N", help="window in days (default 30, 1-365)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_checkpoint_stats)
