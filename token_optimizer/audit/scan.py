"""Host discovery and the one scan entry point every audit command uses.

:func:`scan` reads every store it is pointed at (incrementally, through the
cache under the state root) and returns normalised :class:`SessionRow`s;
:func:`detect` lists what it would read, with sizes. Both take explicit roots
so tests (and the real-host suite) can point them at any directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from token_optimizer.audit import hermes, openclaw
from token_optimizer.audit.cache import CACHE_FILE, AuditCache
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.money import Pricer
from token_optimizer.audit.sqlite_ro import file_size

Progress = Callable[[int, int, str], None]


@dataclass
class Roots:
    openclaw: Path | None
    hermes: Path | None

    @classmethod
    def default(cls) -> Roots:
        return cls(openclaw.default_root(), hermes.default_home())


@dataclass
class ScanResult:
    rows: list[SessionRow]
    events_read: int = 0
    """Transcript events / messages actually read this run (0 on a warm run with nothing new)."""
    duplicates: int = 0
    unpriced_tokens: int = 0
    unpriced_models: list[str] = field(default_factory=list)


def scan(roots: Roots, state_root: Path | None, *, agents: set[str] | None = None,
         profiles: set[str] | None = None, progress: Progress | None = None,
         pricer: Pricer | None = None, use_cache: bool = True) -> ScanResult:
    """All sessions of the hosts under ``roots``; the cache lives in ``state_root``."""
    pricer = pricer or Pricer(roots.openclaw)
    cache = AuditCache(state_root / CACHE_FILE if (use_cache and state_root) else None)
    rows: list[SessionRow] = []
    events = dups = 0
    try:
        if roots.openclaw is not None and roots.openclaw.is_dir():
            oc = openclaw.scan_openclaw(roots.openclaw, cache, pricer, agents=agents,
                                        progress=progress)
            rows.extend(oc.rows)
            events += oc.events_read
            dups += oc.duplicates
        if roots.hermes is not None and roots.hermes.is_dir():
            hs = hermes.scan_hermes(roots.hermes, cache, pricer, profiles=profiles,
                                    progress=progress)
            rows.extend(hs.rows)
            events += hs.messages_read
        cache.flush()
    finally:
        cache.close()
    rows.sort(key=lambda r: (-(r.started_ms or 0.0), r.host, r.session_id))
    unpriced = sorted({m for r in rows for m in r.unpriced_models})
    return ScanResult(rows, events, dups, sum(r.unpriced_tokens for r in rows), unpriced)


def detect(roots: Roots) -> dict[str, Any]:
    """Which hosts and stores exist, with sizes (nothing is opened)."""
    hosts: list[dict[str, Any]] = []
    oc = roots.openclaw
    if oc is not None:
        stores: list[dict[str, Any]] = []
        if oc.is_dir():
            for agent, db in openclaw.agent_dbs(oc):
                stores.append({"kind": "agent-db", "agent": agent, "path": str(db),
                               "bytes": file_size(db)})
            state = oc / openclaw.STATE_DB
            if state.is_file():
                stores.append({"kind": "state-db", "path": str(state), "bytes": file_size(state)})
            files = openclaw.transcript_files(oc)
            if files:
                by_agent: dict[str, list[Path]] = {}
                for agent, _sid, p in files:
                    by_agent.setdefault(agent, []).append(p)
                for agent, ps in sorted(by_agent.items()):
                    size = 0
                    for p in ps:
                        with contextlib.suppress(OSError):
                            size += p.stat().st_size
                    stores.append({"kind": "transcript-files", "agent": agent,
                                   "path": str(ps[0].parent), "files": len(ps), "bytes": size})
        hosts.append({"host": "openclaw", "root": str(oc), "found": oc.is_dir() and bool(stores),
                      "stores": stores})
    hm = roots.hermes
    if hm is not None:
        stores = []
        if hm.is_dir():
            for profile, db in hermes.state_dbs(hm):
                stores.append({"kind": "state-db", "profile": profile, "path": str(db),
                               "bytes": file_size(db)})
        hosts.append({"host": "hermes", "root": str(hm), "found": bool(stores), "stores": stores})
    return {"found": any(h["found"] for h in hosts), "hosts": hosts}


__all__ = ["Roots", "ScanResult", "detect", "scan"]
