"""``token-optimizer sessions`` and ``prune``: the session routing index, for operators.

Both use the state root chosen by :mod:`token_optimizer.commands.stateroot`
(``--home``, ``TOKEN_OPTIMIZER_HOME``, ``<HERMES_HOME>/token-optimizer`` when
Hermes is the host in use, else the OpenClaw root) and name it in their output.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from token_optimizer.commands import stateroot
from token_optimizer.commands.render import fmt_bytes, print_json
from token_optimizer.fsutil import StatePaths
from token_optimizer.session_index import (
    SessionIndex,
    _agent_from_key,
    _parse_ts,
    default_session_files,
)


def _session_disk_bytes(paths: StatePaths, key: str, entry: dict[str, Any]) -> int:
    """Bytes of per-session state under the root, as each store counts its own files."""
    sid = str(entry.get("session_id", ""))
    agents = [a for a in (entry.get("agent"), entry.get("platform"), _agent_from_key(key))
              if isinstance(a, str) and a]
    return sum(f.size(f.session_files(sid, agents)) for f in default_session_files(paths))


def _fmt_age(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _fmt_size(n: int) -> str:
    return fmt_bytes(n, ("B", "KiB", "MiB", "GiB"))


def _cmd_sessions(args: argparse.Namespace) -> int:
    """List the session index of the state root (see :mod:`token_optimizer.commands.stateroot`)."""
    paths, source = stateroot.describe(args)
    idx = SessionIndex(paths)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for key, e in idx.entries().items():
        updated = _parse_ts(e.get("updated_at"))
        rows.append(
            {
                "session_key": key,
                "session_id": e.get("session_id"),
                "created_at": e.get("created_at"),
                "updated_at": e.get("updated_at"),
                "age_seconds": round(now - updated, 3) if math.isfinite(updated) else None,
                "suspended": bool(e.get("suspended")),
                "platform": e.get("platform"),
                "agent": e.get("agent"),
                "size_bytes": _session_disk_bytes(paths, key, e),
            }
        )
    rows.sort(key=lambda r: (r["age_seconds"] is None, r["age_seconds"] or 0.0))
    if args.json:
        print_json({"index": str(idx.path), "stateRoot": str(paths.root), "stateRootSource": source,
                     "count": len(rows), "sessions": rows})
        return 0
    if not rows:
        print(f"No sessions in the index ({idx.path}; {stateroot.label(source)}).")
        return 0
    headers = ("SESSION KEY", "SESSION ID", "AGE", "SUSPENDED", "SIZE")
    table = [
        (
            str(r["session_key"]),
            str(r["session_id"]),
            _fmt_age(r["age_seconds"] if r["age_seconds"] is not None else math.nan),
            "yes" if r["suspended"] else "no",
            _fmt_size(int(r["size_bytes"])),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip())
    print(f"{len(rows)} session(s) in {idx.path} ({stateroot.label(source)})")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    """Prune idle entries of the state root's session index (root as in ``sessions``)."""
    from token_optimizer.config import Config, coerce_max_age_days

    paths, source = stateroot.describe(args)
    if args.max_age_days is None:
        days = Config.from_env().session_store_max_age_days
    else:
        days = coerce_max_age_days(args.max_age_days, source="--max-age-days")
    idx = SessionIndex(paths)
    total = len(idx)
    keys = idx.prune_candidates(days) if args.dry_run else idx.prune_keys(days)
    count = len(keys)
    result = {
        "index": str(idx.path),
        "stateRoot": str(paths.root),
        "stateRootSource": source,
        "max_age_days": days,
        "dry_run": bool(args.dry_run),
        "disabled": days <= 0,
        "removed": count,
        "keys": keys,
        "remaining": total - (0 if args.dry_run else count),
    }
    if args.json:
        print_json(result)
        return 0
    if days <= 0:
        print("Pruning is disabled (max age 0 days); nothing removed.")
        return 0
    verb = "Would prune" if args.dry_run else "Pruned"
    print(
        f"{verb} {count} of {total} session index entr{'y' if total == 1 else 'ies'} idle more than {days} days"
        f" ({idx.path}; {stateroot.label(source)})."
    )
    for k in keys:
        print(f"  {k}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``sessions`` and ``prune`` to the ``token-optimizer`` command line."""
    p = subparsers.add_parser(
        "sessions",
        help="list the session routing index (key, id, age, suspended, size on disk)",
        description="List the session routing index: one line per session key with its current "
        "session id, time since last activity, suspension flag and per-session state size.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_sessions)

    q = subparsers.add_parser(
        "prune",
        help="remove session index entries idle longer than the max age, with their per-session state",
        description="Remove session index entries whose last activity is older than the max age "
        "(suspended entries are kept), together with their checkpoints and read-cache files. "
        "Best run while the gateway is stopped: a running gateway prunes hourly by itself.",
    )
    q.add_argument(
        "--max-age-days",
        type=int,
        default=None,
        metavar="N",
        help="age limit in days (default: $TOKEN_OPTIMIZER_SESSION_STORE_MAX_AGE_DAYS or 90; 0 disables)",
    )
    q.add_argument(
        "--dry-run", action="store_true", help="show what would be removed; change nothing"
    )
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_cmd_prune)
