"""Host discovery and the one scan entry point every audit command uses.

:func:`scan` reads every store it is pointed at (incrementally, through the
cache under the state root) and returns normalised :class:`SessionRow`s;
:func:`detect` lists what it would read, with sizes. Both take explicit roots
so tests (and the real-host suite) can point them at any directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from token_optimizer.audit import hermes, openclaw
from token_optimizer.audit.cache import CACHE_FILE, AuditCache
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.money import Pricer
from token_optimizer.audit.openclaw import FileRow
from token_optimizer.audit.sqlite_ro import file_size

Progress = Callable[[int, int, str], None]


@dataclass
class Roots:
    openclaw: Path | None
    hermes: Path | None

    @classmethod
    def default(cls) -> Roots:
        return cls(openclaw.default_root(), hermes.default_home())


class ScanResult:
    """The sessions found, newest first.

    Sessions from the legacy transcript files come out of the cache as finished JSON
    fragments; :meth:`json_array` joins those as they are (``scan --json`` prints them
    without building a :class:`SessionRow` per session) and :attr:`rows` builds the
    objects on first use.
    """

    def __init__(self, rows: list[SessionRow], events_read: int = 0, duplicates: int = 0,
                 unpriced_tokens: int = 0, unpriced_models: list[str] | None = None, *,
                 file_rows: dict[str, FileRow] | None = None) -> None:
        self.events_read = events_read
        """Transcript events / messages actually read this run (0 on a warm run with nothing new)."""
        self.duplicates = duplicates
        self.unpriced_tokens = unpriced_tokens
        self.unpriced_models = list(unpriced_models or [])
        entries: list[tuple[float, str, str, SessionRow | FileRow]] = [
            (-(r.started_ms or 0.0), r.host, r.session_id, r) for r in rows]
        for sid, fr in (file_rows or {}).items():
            entries.append((-(fr[0] or 0.0), "openclaw", sid, fr))
        entries.sort(key=lambda e: e[:3])
        self._entries = [e[3] for e in entries]
        self._rows: list[SessionRow] | None = None

    @property
    def rows(self) -> list[SessionRow]:
        if self._rows is None:
            self._rows = [e if isinstance(e, SessionRow)
                          else SessionRow.from_json(orjson.loads(e[2]), e[0], e[1])
                          for e in self._entries]
        return self._rows

    def _select(self, since: float | None, until: float | None,
                agents: set[str] | None) -> list[SessionRow | FileRow]:
        out: list[SessionRow | FileRow] = []
        for e in self._entries:
            started = e.started_ms if isinstance(e, SessionRow) else e[0]
            if since is not None and (started is None or started < since):
                continue
            if until is not None and (started is None or started > until):
                continue
            if agents and isinstance(e, SessionRow) and e.host != "openclaw" \
                    and e.agent not in agents:
                continue  # (file rows are all OpenClaw's)
            out.append(e)
        return out

    def json_rows(self, since: float | None = None, until: float | None = None,
                  agents: set[str] | None = None) -> list[dict[str, Any]]:
        """``to_json()`` of the rows started within [since, until] (and, with ``agents``,
        of OpenClaw rows or rows of those agents), newest first."""
        return [e.to_json() if isinstance(e, SessionRow) else orjson.loads(e[2])
                for e in self._select(since, until, agents)]

    def json_array(self, since: float | None = None, until: float | None = None,
                   agents: set[str] | None = None) -> bytes:
        """``orjson.dumps(self.json_rows(…), option=ROW_JSON_OPTS)``, from the cached
        fragments where there are some."""
        sel = self._select(since, until, agents)
        if not sel:
            return orjson.dumps([], option=openclaw.ROW_JSON_OPTS)
        frags = [openclaw.row_fragment(e.to_json()) if isinstance(e, SessionRow) else e[2]
                 for e in sel]
        return b"[\n  " + b",\n  ".join(frags) + b"\n]"


def scan(roots: Roots, state_root: Path | None, *, agents: set[str] | None = None,
         profiles: set[str] | None = None, progress: Progress | None = None,
         pricer: Pricer | None = None, use_cache: bool = True) -> ScanResult:
    """All sessions of the hosts under ``roots``; the cache lives in ``state_root``."""
    pricer = pricer or Pricer(roots.openclaw)
    cache = AuditCache(state_root / CACHE_FILE if (use_cache and state_root) else None)
    rows: list[SessionRow] = []
    file_rows: dict[str, FileRow] = {}
    events = dups = 0
    try:
        if roots.openclaw is not None and roots.openclaw.is_dir():
            oc = openclaw.scan_openclaw(roots.openclaw, cache, pricer, agents=agents,
                                        progress=progress)
            rows.extend(oc.rows)
            file_rows = oc.file_rows
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
    unpriced_tokens = sum(r.unpriced_tokens for r in rows)
    unpriced = {m for r in rows for m in r.unpriced_models}
    for fr in file_rows.values():
        if b'"unpricedModels": []' not in fr[2]:  # the row's own key (splits have none)
            d = orjson.loads(fr[2])
            unpriced_tokens += d["unpricedTokens"]
            unpriced.update(d["unpricedModels"])
    return ScanResult(rows, events, dups, unpriced_tokens, sorted(unpriced), file_rows=file_rows)


def has_store(roots: Roots) -> bool:
    """Whether any host store exists under ``roots`` (stops at the first one found)."""
    oc = roots.openclaw
    if oc is not None and oc.is_dir():
        if openclaw.agent_dbs(oc) or (oc / openclaw.STATE_DB).is_file():
            return True
        for _agent, d in openclaw.transcript_dirs(oc):
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if openclaw.transcript_sid(e.name) is not None and e.is_file():
                            return True
            except OSError:
                continue
    hm = roots.hermes
    return hm is not None and hm.is_dir() and bool(hermes.state_dbs(hm))


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


__all__ = ["Roots", "ScanResult", "detect", "has_store", "scan"]
