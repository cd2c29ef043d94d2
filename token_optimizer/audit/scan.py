"""Host discovery and the one scan entry point every audit command uses.

:func:`scan` reads every store it is pointed at (incrementally, through the
cache under the state root) and returns normalised :class:`SessionRow`s;
:func:`detect` lists what it would read, with sizes. Both take explicit roots
so tests (and the real-host suite) can point them at any directory.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from token_optimizer.audit import hermes, openclaw, snapshot
from token_optimizer.audit.cache import CACHE_FILE, AuditCache
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.money import Pricer
from token_optimizer.audit.openclaw import FileRow
from token_optimizer.audit.snapshot import Pack
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

    Every row is kept as a fragment of the indented ``scan --json`` array (a
    :class:`~token_optimizer.audit.snapshot.Pack`): :meth:`json_array` slices what it
    prints out of it, and :attr:`rows` builds the :class:`SessionRow` objects on first
    use (or keeps those a cold scan built). Sessions from the legacy transcript files
    arrive from their cache as finished fragments already.
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
        self._entries: list[SessionRow | FileRow] | None = [e[3] for e in entries]
        self._pack: Pack | None = None
        self._rows: list[SessionRow] | None = None

    @classmethod
    def from_pack(cls, pack: Pack) -> ScanResult:
        """A result read back whole (nothing was new): no rows are built until asked for."""
        res = cls([], 0, pack.duplicates, pack.unpriced_tokens, pack.unpriced_models)
        res._entries = None
        res._pack = pack
        return res

    @property
    def pack(self) -> Pack:
        if self._pack is None:
            assert self._entries is not None
            self._pack = Pack.build(
                ((e.started_ms, e.ended_ms, e.host, e.agent, openclaw.row_fragment(e.to_json()))
                 if isinstance(e, SessionRow) else (e[0], e[1], "openclaw", "", e[2])
                 for e in self._entries),
                self.duplicates, self.unpriced_tokens, self.unpriced_models)
        return self._pack

    @property
    def rows(self) -> list[SessionRow]:
        if self._rows is None:
            if self._entries is not None:
                self._rows = [e if isinstance(e, SessionRow)
                              else SessionRow.from_json(orjson.loads(e[2]), e[0], e[1])
                              for e in self._entries]
            else:
                p = self.pack
                with _gc_paused():
                    self._rows = [SessionRow.from_json(orjson.loads(p.fragment(i)), *p.time(i))
                                  for i in range(len(p))]
        return self._rows

    def json_rows(self, since: float | None = None, until: float | None = None,
                  agents: set[str] | None = None) -> list[dict[str, Any]]:
        """``to_json()`` of the rows started within [since, until] (and, with ``agents``,
        of OpenClaw rows or rows of those agents), newest first."""
        rows: list[dict[str, Any]] = orjson.loads(self.json_array(since, until, agents))
        return rows

    def json_array(self, since: float | None = None, until: float | None = None,
                   agents: set[str] | None = None) -> bytes:
        """``orjson.dumps(self.json_rows(…), option=ROW_JSON_OPTS)``, sliced out of the pack."""
        return b"".join(self.json_parts(since, until, agents))

    def json_parts(self, since: float | None = None, until: float | None = None,
                   agents: set[str] | None = None) -> list[bytes]:
        """:meth:`json_array` as pieces to write one after the other (no piece splits a
        row, so a per-piece text replacement sees whole strings)."""
        p = self.pack
        return p.array_parts(p.select(since, until, agents))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a scan builds its (acyclic) rows and states:
    on 10,000 sessions the collector's passes over the growing heap cost more than the
    scan itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def scan(roots: Roots, state_root: Path | None, *, agents: set[str] | None = None,
         profiles: set[str] | None = None, progress: Progress | None = None,
         pricer: Pricer | None = None, use_cache: bool = True) -> ScanResult:
    """All sessions of the hosts under ``roots``; the cache lives in ``state_root``.

    When nothing the rows are made from changed since a scan with the same roots
    and filters, its stored result is returned (:mod:`~token_optimizer.audit.snapshot`);
    otherwise each store is read incrementally and the new result is stored.
    """
    pricer = pricer or Pricer(roots.openclaw)
    cache = AuditCache(state_root / CACHE_FILE if (use_cache and state_root) else None)
    try:
        with _gc_paused():
            slot = fp = None
            listings: dict[str, list[Any]] = {}
            if cache.available:
                slot, fp = snapshot.slot_and_fingerprint(roots.openclaw, roots.hermes, agents,
                                                         profiles, pricer, listings)
                pack = snapshot.load(cache, slot, fp)
                if pack is not None:
                    return ScanResult.from_pack(pack)
            res = _read_stores(roots, cache, pricer, agents, profiles, progress, listings)
            if slot is not None and fp is not None:
                snapshot.store(cache, slot, fp, res.pack)
            cache.flush()
            return res
    finally:
        cache.close()


def _read_stores(roots: Roots, cache: AuditCache, pricer: Pricer, agents: set[str] | None,
                 profiles: set[str] | None, progress: Progress | None,
                 listings: dict[str, list[Any]]) -> ScanResult:
    rows: list[SessionRow] = []
    file_rows: dict[str, FileRow] = {}
    events = dups = 0
    if roots.openclaw is not None and roots.openclaw.is_dir():
        oc = openclaw.scan_openclaw(roots.openclaw, cache, pricer, agents=agents,
                                    progress=progress, listings=listings)
        rows.extend(oc.rows)
        file_rows = oc.file_rows
        events += oc.events_read
        dups += oc.duplicates
    if roots.hermes is not None and roots.hermes.is_dir():
        hs = hermes.scan_hermes(roots.hermes, cache, pricer, profiles=profiles,
                                progress=progress)
        rows.extend(hs.rows)
        events += hs.messages_read
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
