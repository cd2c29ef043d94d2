"""``token-optimizer checkpoint-stats`` (checkpoint telemetry) and the ``doctor`` registration.

The doctor itself lives in :mod:`token_optimizer.commands.doctor`; the checkpoint store's
health is one of its sections.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from token_optimizer import jsutil
from token_optimizer.commands import doctor, stateroot
from token_optimizer.policy import CheckpointPolicy, PolicySettings

DAYS_MAX = 365


class DaysError(ValueError):
    pass


def _parse_days(raw: str | None, default: int = 30) -> int:
    """``--days``: the reference's integer prefix (``12d`` -> 12), clamped to at most 365.

    0, a negative number or no number at all is an error (it used to mean 30 or 1 in
    silence)."""
    if raw is None:
        return default
    n = jsutil.parse_int(raw)
    if math.isnan(n) or n < 1:
        raise DaysError(f"--days must be a whole number of days from 1 to {DAYS_MAX}, got {raw!r}")
    return int(min(DAYS_MAX, n))


def _cmd_checkpoint_stats(args: argparse.Namespace) -> int:
    try:
        days = _parse_days(args.days)
    except DaysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    policy = CheckpointPolicy(stateroot.state_paths(args), PolicySettings.resolve())
    s = policy.telemetry_summary(days)
    if args.json:
        print(jsutil.dumps_pretty(s))
        return 0
    lines = [
        f"Checkpoint telemetry ({days}d)",
        "=" * 50,
        f"Enabled:        {'yes' if s['enabled'] else 'no'}",
    ]
    if not s["enabled"]:
        lines.append(f"  {doctor.TELEMETRY_HINT}")
    lines += [
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
    doctor.register_cli(subparsers)
    s = subparsers.add_parser("checkpoint-stats", help="summarise checkpoint telemetry")
    s.add_argument("--days", default=None, metavar="N",
                   help=f"window in days (default 30, 1-{DAYS_MAX}; larger values mean {DAYS_MAX})")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_checkpoint_stats)
