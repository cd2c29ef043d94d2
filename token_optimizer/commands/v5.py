"""``token-optimizer v5``: show or toggle the v5 compression features."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, TextIO

from token_optimizer.commands import stateroot
from token_optimizer.fsutil import StatePaths
from token_optimizer.jsutil import dumps_pretty, js_number
from token_optimizer.telemetry import (
    _V5_BY_ID,
    SUMMARY_DAYS,
    V5_FEATURES,
    WELCOME_VERSION,
    Telemetry,
)

log = logging.getLogger("token_optimizer")


_V5_ACTIONS = ("status", "info", "enable", "disable", "welcome")


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "v5",
        help="show or toggle the v5 compression features",
        description="Show or toggle the v5 compression features (delta reads, structure map).",
    )
    p.add_argument("action", nargs="?", default="status",
                   help="status (default; alias: list), info, enable, disable or welcome")
    p.add_argument("feature", nargs="?", help="feature id for info/enable/disable")
    p.add_argument("--json", action="store_true", help="machine-readable output (status only)")
    p.set_defaults(func=_cmd_v5)


def print_welcome(tel: Telemetry, out: TextIO) -> None:
    """The v5 welcome block; marks the welcome as seen."""
    out.write("Token Optimizer v5: active compression\n")
    out.write("=" * 50 + "\n")
    for f in tel.list_v5():
        mark = "[ - ]" if f["status"] == "deferred" else ("[ON ]" if f["enabled"] else "[off]")
        out.write(f"  {mark} {f['label']} ({f['id']})\n")
    out.write("\nToggle with: token-optimizer v5 enable|disable <feature-id>\n")
    tel.mark_welcome_seen(WELCOME_VERSION)


def maybe_show_welcome(paths: StatePaths, out: TextIO) -> bool:
    """First text-mode run: show the welcome once (cli.md §1.2). Never raises."""
    try:
        tel = Telemetry(paths)
        if tel.has_seen_welcome(WELCOME_VERSION):
            return False
        print_welcome(tel, out)
        return True
    except Exception as exc:
        log.debug("[token-optimizer] welcome skipped: %s", exc)
        return False


def _cmd_v5(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    tel = Telemetry(stateroot.state_paths(args))
    action = args.action
    if action == "list":
        action = "status"
    if action == "status":
        return _v5_status(tel, out, bool(args.json))
    if action == "welcome":
        print_welcome(tel, out)
        return 0
    if action not in _V5_ACTIONS:
        out.write(f"Unknown v5 subcommand: {action}\n")
        out.write(f"Supported: {', '.join(_V5_ACTIONS)}\n")
        return 1
    name = args.feature
    if not name:
        out.write("Usage: token-optimizer v5 <info|enable|disable> <feature-id>\n")
        return 1
    feat = _V5_BY_ID.get(name)
    if feat is None:
        out.write(f"Unknown feature: {name}\n")
        out.write(f"Known features: {', '.join(f.id for f in V5_FEATURES)}\n")
        return 1
    if action == "info":
        enabled = tel.is_v5_enabled(name)
        out.write(f"{feat.label}\n")
        out.write(f"  id:          {feat.id}\n")
        out.write(f"  status:      {feat.status}\n")
        out.write(f"  risk:        {feat.risk}\n")
        out.write(f"  enabled:     {'yes' if enabled else 'no'}\n")
        out.write(f"  default:     {'on' if feat.default_enabled else 'off'}\n")
        out.write(f"  description: {feat.description}\n")
        return 0
    if feat.status == "deferred":
        out.write(f"{feat.label} is deferred in this release and cannot be toggled.\n")
        return 1
    on = action == "enable"
    tel.set_v5(name, on)
    out.write(f"{feat.label}: {'enabled' if on else 'disabled'}\n")
    return 0


def _v5_status(tel: Telemetry, out: TextIO, as_json: bool) -> int:
    features = tel.list_v5()
    summary = tel.compression_summary(SUMMARY_DAYS)
    if as_json:
        out.write(dumps_pretty({"features": features, "summary": summary}) + "\n")
        return 0
    out.write("v5 compression features\n")
    out.write("=" * 50 + "\n")
    for f in features:
        mark = "deferred" if f["status"] == "deferred" else ("enabled" if f["enabled"] else "disabled")
        out.write(f"  {'[' + mark + ']':<11} {f['id']:<22} {f['label']}\n")
    out.write(
        f"\nLast {SUMMARY_DAYS} days: {js_number(summary['total_events'])} events, "
        f"{js_number(summary['total_tokens_saved'])} tokens saved "
        f"(ratio {js_number(summary['overall_ratio'])})\n"
    )
    return 0
