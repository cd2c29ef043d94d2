"""``token-optimizer config [--host openclaw|hermes] [--all] [--json]``: the effective settings.

Each declared setting (:mod:`token_optimizer.settings`) with its value and where it came
from: ``default``, ``env``, ``OpenClaw plugin config`` or ``Hermes plugin config`` (and
``read-cache/config.json`` for the two read-cache switches). A value that was given but
rejected is flagged, with the value used instead; the command then exits 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from token_optimizer import settings as st
from token_optimizer.commands import hostconfig, stateroot
from token_optimizer.fsutil import StatePaths, open_checked_dir
from token_optimizer.jsutil import loads


def read_cache_file(paths: StatePaths) -> dict[str, Any]:
    """``read-cache/config.json`` (the reference's file; ``{}`` when absent or unreadable)."""
    try:
        with open_checked_dir(paths.root, paths.read_cache) as d:
            data = loads(d.read_bytes("config.json"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def effective(host: str | None, plugin: Mapping[str, Any] | None, paths: StatePaths,
              *, include_internal: bool = False) -> list[st.Resolved]:
    """Every setting as the runtime of ``host`` would read it now."""
    sources = st.Sources.current(plugin, host)
    rc = read_cache_file(paths)
    out: list[st.Resolved] = []
    for s in st.SETTINGS:
        if s.internal and not include_internal:
            continue
        file_value: object = None
        if s is st.READ_CACHE and rc.get("read_cache_enabled") is False:
            file_value = False
        elif s is st.READ_CACHE_MODE and isinstance(rc.get("read_cache_mode"), str) \
                and rc["read_cache_mode"].strip():
            file_value = rc["read_cache_mode"]
        out.append(st.resolve(s, sources, file_value))
    return out


def pick_host(name: str | None) -> tuple[str | None, hostconfig.HostConfig | None, list[str]]:
    """The named host, else the first whose config exists; plus the other hosts found."""
    if name:
        return name, hostconfig.host_config(name), []
    found = hostconfig.detect()
    if not found:
        return None, None, []
    return found[0].host, found[0], [c.host for c in found[1:]]


def state_paths(args: argparse.Namespace, host: str | None) -> StatePaths:
    """The state root for ``host`` (the one rule of :mod:`token_optimizer.commands.stateroot`)."""
    return stateroot.resolve(getattr(args, "home", None), host, detect=False)[0]


def _show(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _cmd_config(args: argparse.Namespace) -> int:
    host, cfg, others = pick_host(args.host)
    plugin = cfg.plugin_config() if cfg is not None else None
    paths = state_paths(args, host)
    rows = effective(host, plugin, paths, include_internal=args.all)
    bad = [r for r in rows if not r.valid]
    if args.json:
        print(json.dumps({
            "ok": not bad, "host": host, "configFile": str(cfg.path) if cfg else None,
            "otherHosts": others, "stateRoot": str(paths.root),
            "settings": [r.to_json() for r in rows]}, indent=2))
        return 1 if bad else 0
    where = f"{host} ({cfg.path})" if host and cfg else "no host config found: environment and defaults"
    lines = [f"Token Optimizer settings for {where}"]
    if others:
        lines.append(f"(also found: {', '.join(others)}; choose with --host)")
    width = max(len(r.setting.name) for r in rows)
    for r in rows:
        flag = "" if r.valid else f"  INVALID {r.raw!r}: {r.problem}"
        lines.append(f"  {r.setting.name:<{width}}  {_show(r.value):<14} {r.source}{flag}")
    lines.append(f"{len(bad)} invalid setting(s)" if bad else "all settings valid")
    print("\n".join(lines))
    return 1 if bad else 0


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help="show the effective settings and where each came from")
    p.add_argument("--host", choices=hostconfig.HOSTS, default=None,
                   help="read this host's plugin config (default: the first host found)")
    p.add_argument("--all", action="store_true", help="include internal/test settings")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_config)
