"""A whole scan's finished result, kept for the next run with the same inputs.

The readers are incremental per store (``AuditCache`` entries hold their
accumulators), but a warm run through them still rebuilds every row: it loads
every session's state, prices it and renders it again, which on 10,000 sessions
costs more than the stores' ``stat`` calls by two orders of magnitude. So each
scan also leaves its finished result behind, as one blob (a :class:`Pack`), under
a fingerprint of everything the rows are made from:

* every store's ``stat`` stamp: each OpenClaw agent database and the state
  database (cron job names), each legacy transcript file's name, size and
  mtime, and each Hermes ``state.db`` (the stamp the readers trust to skip a
  store, :func:`~token_optimizer.audit.sqlite_ro.store_stamp`, plus the inode);
* the price inputs (:meth:`Pricer.fingerprint`), the package version and this
  format, and the ``--agent``/``--profile`` filters.

When the fingerprint matches, the scan is the blob: no store is opened, no row is
built. ``scan --json`` slices the rows it prints out of it (they are stored as
the fragments of the indented array, newest first) and the other commands build
their :class:`SessionRow`\\s from it. Anything new changes a stamp and the scan
runs through the readers as before. The window (``--days``/``--since``/
``--until``) is applied to the result, so it is not part of the fingerprint.

Slots are keyed by the roots and filters (``MAX_SLOTS`` of them, least recently
written dropped first), so alternating between commands with different filters
does not throw either result away.
"""

from __future__ import annotations

import math
import os
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from token_optimizer.audit import hermes, openclaw
from token_optimizer.audit.cache import AuditCache
from token_optimizer.audit.money import Pricer
from token_optimizer.audit.sqlite_ro import store_stamp

FORMAT = 1
MAX_SLOTS = 4
SLOT_PREFIX = "result:"
LRU_KEY = "result-slots"
_MAGIC = b"TOSNAP1\n"
_HEAD = struct.Struct("<8sQQ")
"""Magic, then the lengths of the fingerprint and of the metadata that follow."""
_SEP = b",\n  "


def _stamp(path: str | os.PathLike[str]) -> list[int]:
    """The readers' own stamp of a store (:func:`~token_optimizer.audit.sqlite_ro.store_stamp`)
    plus its inode; empty when it is absent."""
    return list(store_stamp(path, inode=True) or ())


def _listing(d: str) -> list[Any]:
    """Name, size and mtime of every regular ``*.jsonl*`` file in a ``sessions`` dir, flat
    and in name order (one ``stat`` per file; nothing is opened). A superset of the
    transcripts :func:`~token_optimizer.audit.openclaw.list_transcripts` counts: an extra
    file can only make a change look bigger than it is."""
    try:
        with os.scandir(d) as it:
            entries = sorted((e for e in it if ".jsonl" in e.name), key=_name)
    except OSError:
        return []
    out: list[Any] = []
    add = out.extend
    for e in entries:
        try:
            if not e.is_file():
                continue
            st = e.stat()
        except OSError:
            continue
        add((e.name, st.st_size, st.st_mtime_ns))
    return out


def _name(e: os.DirEntry[str]) -> str:
    return e.name


def slot_and_fingerprint(openclaw_root: Path | None, hermes_home: Path | None,
                         agents: set[str] | None, profiles: set[str] | None,
                         pricer: Pricer,
                         listings: dict[str, list[Any]] | None = None) -> tuple[str, bytes]:
    """The cache key of this scan's slot (roots and filters) and its inputs' fingerprint.

    The fingerprint is the inputs' stamps themselves, not a digest of them: comparing
    it is one ``memcmp`` and no two different inputs can share one. ``listings``, when
    given, receives each ``sessions`` dir's flat (name, size, mtime_ns) listing, so a
    scan that goes on to read the files does not list them again."""
    from token_optimizer import __version__

    filters = [str(openclaw_root) if openclaw_root else None,
               str(hermes_home) if hermes_home else None,
               sorted(agents or ()), sorted(profiles or ())]
    slot = SLOT_PREFIX + orjson.dumps(filters).decode()
    parts: list[Any] = [FORMAT, __version__, sys.byteorder, filters, pricer.fingerprint()]
    if openclaw_root is not None and openclaw_root.is_dir():
        for agent, db in openclaw.agent_dbs(openclaw_root):
            if not agents or agent in agents:
                parts.append(["db", agent, _stamp(db)])
        parts.append(["state", _stamp(openclaw_root / openclaw.STATE_DB)])
        for agent, d in openclaw.transcript_dirs(openclaw_root):
            if not agents or agent in agents:
                flat = _listing(d)
                if listings is not None:
                    listings[d] = flat
                parts.append(["files", agent, flat])
    if hermes_home is not None and hermes_home.is_dir():
        for profile, db in hermes.state_dbs(hermes_home):
            if not profiles or profile in profiles:
                parts.append(["hermes", profile, _stamp(db)])
    return slot, orjson.dumps(parts)


@dataclass
class Pack:
    """Rows newest first as fragments of the indented ``scan --json`` array, joined.

    ``offs[i]`` is where row ``i`` starts in ``body``; it ends 4 bytes (the
    separator) before ``offs[i + 1]`` (``offs[n]`` is ``len(body) + 4``, or 0 with no rows).
    ``starts``/``ends`` are the rows' times (NaN for none), ``hosts`` one letter
    per row (``o`` OpenClaw, ``h`` Hermes) and ``agents`` their agents.
    """

    body: bytes | bytearray
    offs: array[int]
    starts: array[float]
    ends: array[float]
    hosts: str
    agents: list[str]
    duplicates: int
    unpriced_tokens: int
    unpriced_models: list[str]

    @classmethod
    def build(cls, entries: Iterable[tuple[float | None, float | None, str, str, bytes]],
              duplicates: int, unpriced_tokens: int, unpriced_models: list[str]) -> Pack:
        """From (started, ended, host, agent, fragment) in output order."""
        offs: array[int] = array("q")
        starts: array[float] = array("d")
        ends: array[float] = array("d")
        hosts: list[str] = []
        agents: list[str] = []
        body = bytearray()  # one buffer, no list of fragments beside it
        for started, ended, host, agent, frag in entries:
            if offs:
                body += _SEP
            offs.append(len(body))
            starts.append(math.nan if started is None else started)
            ends.append(math.nan if ended is None else ended)
            hosts.append("h" if host == "hermes" else "o")
            agents.append(agent)
            body += frag
        offs.append(len(body) + len(_SEP) if offs else 0)
        return cls(body, offs, starts, ends, "".join(hosts), agents, duplicates,
                   unpriced_tokens, unpriced_models)

    def __len__(self) -> int:
        return len(self.starts)

    def fragment(self, i: int) -> bytes:
        return bytes(self.body[self.offs[i]:self.offs[i + 1] - len(_SEP)])

    def time(self, i: int) -> tuple[float | None, float | None]:
        s, e = self.starts[i], self.ends[i]
        return (None if math.isnan(s) else s), (None if math.isnan(e) else e)

    def select(self, since: float | None, until: float | None,
               agents: set[str] | None) -> list[int]:
        """Indices of the rows started within [since, until] (a row without a start is
        out of any window) and, with ``agents``, of OpenClaw rows or rows of those agents."""
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        if since is None and until is None:
            idx = list(range(len(self)))
        else:  # NaN compares false: rows without a start drop out
            idx = [i for i, s in enumerate(self.starts) if lo <= s <= hi]
        if agents:
            hosts, names = self.hosts, self.agents
            idx = [i for i in idx if hosts[i] == "o" or names[i] in agents]
        return idx

    def array_parts(self, idx: list[int]) -> list[bytes]:
        """The indented JSON array of rows ``idx`` (ascending) as pieces to write one after
        the other: runs of neighbours are one slice of the body each (the whole body, when
        every row is selected, is not copied at all) and no row is split."""
        if not idx:
            return [orjson.dumps([], option=openclaw.ROW_JSON_OPTS)]
        runs: list[tuple[int, int]] = []
        start = prev = idx[0]
        for i in idx[1:]:
            if i != prev + 1:
                runs.append((start, prev))
                start = i
            prev = i
        runs.append((start, prev))
        offs, body, sep = self.offs, self.body, len(_SEP)
        parts: list[bytes] = [b"[\n  "]
        for k, (a, b) in enumerate(runs):
            if k:
                parts.append(_SEP)
            lo, hi = offs[a], offs[b + 1] - sep
            if isinstance(body, bytes) and lo == 0 and hi == len(body):
                parts.append(body)
            else:
                parts.append(bytes(body[lo:hi]))
        parts.append(b"\n]")
        return parts

    def array_bytes(self, idx: list[int]) -> bytes:
        """:meth:`array_parts` joined."""
        return b"".join(self.array_parts(idx))

    # ------------------------------------------------------------ storage

    def header_bytes(self, fingerprint: bytes) -> bytes:
        """Everything but the body (which is stored as it is, beside it)."""
        meta = orjson.dumps({"v": FORMAT, "n": len(self), "bodyBytes": len(self.body),
                             "hosts": self.hosts, "agents": self.agents,
                             "duplicates": self.duplicates,
                             "unpricedTokens": self.unpriced_tokens,
                             "unpricedModels": self.unpriced_models})
        return b"".join([_HEAD.pack(_MAGIC, len(fingerprint), len(meta)), fingerprint, meta,
                         self.offs.tobytes(), self.starts.tobytes(), self.ends.tobytes()])

    @classmethod
    def from_bytes(cls, header: bytes | None, body: bytes | None,
                   fingerprint: bytes) -> Pack | None:
        """The pack stored as ``header`` and ``body`` if it was made under ``fingerprint``
        (else ``None``: a stale, foreign or damaged blob is only a miss)."""
        if header is None or body is None or len(header) < _HEAD.size:
            return None
        try:
            magic, flen, mlen = _HEAD.unpack_from(header)
            pos = _HEAD.size
            if magic != _MAGIC or flen != len(fingerprint) \
                    or header[pos:pos + flen] != fingerprint:
                return None
            pos += flen
            meta = orjson.loads(header[pos:pos + mlen])
            if not isinstance(meta, dict) or meta.get("v") != FORMAT \
                    or meta.get("bodyBytes") != len(body):
                return None
            n = int(meta["n"])
            pos += mlen
            if len(header) != pos + 8 * (3 * n + 1):
                return None
            offs: array[int] = array("q")
            offs.frombytes(header[pos:pos + 8 * (n + 1)])
            pos += 8 * (n + 1)
            starts: array[float] = array("d")
            starts.frombytes(header[pos:pos + 8 * n])
            pos += 8 * n
            ends: array[float] = array("d")
            ends.frombytes(header[pos:pos + 8 * n])
            hosts, agents = str(meta["hosts"]), [str(a) for a in meta["agents"]]
            if len(hosts) != n or len(agents) != n or offs[0] != 0 \
                    or offs[n] != (len(body) + len(_SEP) if n else 0):
                return None
            return cls(body, offs, starts, ends, hosts, agents, int(meta["duplicates"]),
                       int(meta["unpricedTokens"]), [str(m) for m in meta["unpricedModels"]])
        except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError):
            return None


def _body_key(slot: str) -> str:
    return slot + "#body"


def load(cache: AuditCache, slot: str, fingerprint: bytes) -> Pack | None:
    header = cache.get_bytes(slot)
    if header is None:
        return None
    return Pack.from_bytes(header, cache.get_bytes(_body_key(slot)), fingerprint)


def store(cache: AuditCache, slot: str, fingerprint: bytes, pack: Pack) -> None:
    """Keep ``pack`` in ``slot``; the least recently written slots beyond ``MAX_SLOTS`` go."""
    cache.put_bytes(slot, pack.header_bytes(fingerprint))
    cache.put_bytes(_body_key(slot), pack.body)
    lru = cache.get(LRU_KEY)
    slots = [s for s in (lru if isinstance(lru, list) else []) if isinstance(s, str) and s != slot]
    slots.append(slot)
    for old in slots[:-MAX_SLOTS]:
        cache.delete(old)
        cache.delete(_body_key(old))
    cache.put(LRU_KEY, slots[-MAX_SLOTS:])


__all__ = ["MAX_SLOTS", "Pack", "load", "slot_and_fingerprint", "store"]
