"""Read cache: spot redundant file reads, serve diffs for changed files (runtime.md §6).

For every read-tool call the runtime asks :meth:`ReadCache.before_read`
whether the read should go ahead. The cache remembers, per agent and
session, which files were read with which offset/limit and the file's mtime
at that moment (``read-cache/<agent>-<session>.json``):

* first read of a file -> allowed and remembered;
* the same file and range again with an unchanged mtime -> a *redundant*
  read: logged as ``warn`` (default), or blocked with a structural digest of
  the file in ``block`` mode. A blocked *full* read credits a measured
  ``redundant_read`` saving (the file's tokens net of the reply); a blocked
  *ranged* read (offset/limit given) credits nothing, since how much the range
  would have returned is not known here;
* the file changed (mtime) or the range differs -> allowed, entry refreshed;
  except that with the v5 ``delta_read`` feature a changed file re-read in
  full is answered with a line diff against the content seen last time
  (blocked, in every mode);
* paths matching ``.contextignore`` are always blocked; binary files are
  never looked at.

Writes through the agent's own write tools invalidate the file
(:meth:`after_write`); compaction drops the session's cache
(:meth:`clear_cache`). Every decision is appended to
``read-cache/decisions/<session>.jsonl``.

Continuity hints record which paths they surfaced
(:meth:`record_hint_serve`); the first read of such a path within four hours
credits a ``hint_followed`` savings event.

Nothing here raises into the host: on any error the read is allowed and the
problem is logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from token_optimizer import settings as st
from token_optimizer.bounded import BoundedMap, BoundedSet
from token_optimizer.delta_diff import compute_delta
from token_optimizer.fsutil import (
    CheckedDir,
    StatePaths,
    UnsafePathError,
    open_checked_dir,
    remove_stale_temps,
    sanitize_removing,
    trim_jsonl_tail,
)
from token_optimizer.jsutil import dumps_compact, js_number, js_trim, loads, now_ms
from token_optimizer.telemetry import ESTIMATED, MEASURED, Telemetry, js_truthy
from token_optimizer.token_estimate import estimate_tokens_from_bytes
from token_optimizer.write_behind import WriteBehind

log = logging.getLogger("token_optimizer.read_cache")

MAX_CACHE_ENTRIES = 500
MAX_CONTEXTIGNORE_PATTERNS = 200
CONTEXTIGNORE_CACHE_ENTRIES = 32
"""Workspaces whose compiled ``.contextignore`` patterns are kept (LRU)."""
DELTA_CACHE_MAX_BYTES = 51_200
DELTA_CACHE_MAX_ENTRIES = 100
MTIME_TOLERANCE_S = 0.001
ACTIVE_READ_MAX_FILES = 25
ACTIVE_READ_MIN_COUNT = 2
ACTIVE_READ_TOKEN_CAP = 200_000
HINT_FOLLOW_MAX_AGE_S = 4 * 60 * 60
HINT_FOLLOW_TOKEN_CREDIT = 5_000
HINT_SERVE_MAX_PATHS = 25
DIGEST_MAX_ITEMS = 50
DIGEST_MAX_LINES = 10_000
DIGEST_FAILURE = "(unable to generate digest)"
MAX_REMEMBERED_AGENTS = 16
"""Agent prefixes remembered per session so compaction can clear them all."""
DECISIONS_MAX_BYTES = 1 << 20
"""Size cap of one decisions log: past it the oldest half of the rows is dropped."""
HINT_SERVES_MAX_ENTRIES = 500
"""Size cap of one hint sidecar: past it the oldest-served paths are dropped."""

BINARY_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".svg",
    ".pdf", ".wasm", ".zip", ".tar", ".gz", ".bz2", ".7z", ".rar",
    ".exe", ".dll", ".so", ".dylib", ".o", ".a",
    ".mp3", ".mp4", ".wav", ".avi", ".mov", ".mkv",
    ".ttf", ".otf", ".woff", ".woff2", ".eot",
    ".pyc", ".pyo", ".class", ".jar",
    ".sqlite", ".db", ".sqlite3",
})
_JS_EXTENSIONS = frozenset({".js", ".ts", ".jsx", ".tsx", ".mjs", ".cjs"})

PREFIX = "[Token Optimizer] "


# ---------------------------------------------------------------- pure helpers


_GLOB_ESCAPE = re.compile(r"[.+^${}()|\[\]\\]")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``.contextignore`` glob: ``**`` any text, ``*`` and ``?`` stay within a segment."""
    escaped = _GLOB_ESCAPE.sub(lambda m: "\\" + m.group(0), pattern)
    parts = escaped.split("**")
    body = ".*".join(p.replace("*", "[^/]*").replace("?", "[^/]") for p in parts)
    return re.compile(body)


_TS_TYPE = re.compile(r"^(export\s+)?(class|interface|type|enum)\s+")
_TS_FUNC = re.compile(r"^(export\s+)?(async\s+)?function\s+")
_TS_CONST = re.compile(r"^export\s+(default\s+)?(const|let|var)\s+")


def _digest_python(lines: list[str]) -> list[str]:
    items: list[str] = []
    for i, line in enumerate(lines, 1):
        if len(items) >= DIGEST_MAX_ITEMS:
            break
        s = js_trim(line)
        if s.startswith("class "):
            items.append(f"L{i}: {s.split('(')[0].split(':')[0]}")
        elif s.startswith("def "):
            items.append(f"L{i}: {s.split('(')[0]}")
        elif s.startswith(("import ", "from ")):
            items.append(f"L{i}: {s}")
    return items


def _digest_js(lines: list[str]) -> list[str]:
    items: list[str] = []
    for i, line in enumerate(lines, 1):
        if len(items) >= DIGEST_MAX_ITEMS:
            break
        s = js_trim(line)
        if _TS_TYPE.match(s) or _TS_FUNC.match(s):
            items.append(f"L{i}: {js_trim(s.split('{')[0])}")
        elif _TS_CONST.match(s):
            items.append(f"L{i}: {js_trim(s.split('=')[0])}")
    return items


def generate_digest(file_path: str, content: str) -> str:
    """Structural summary of a file: declarations for Python/JS/TS, else size and ends."""
    lines = content.split("\n")
    n = len(lines)
    if n > DIGEST_MAX_LINES:
        return f"{n} lines (too large to summarise structurally)"
    ext = os.path.splitext(file_path)[1].lower()
    if ext == ".py" or ext in _JS_EXTENSIONS:
        items = _digest_python(lines) if ext == ".py" else _digest_js(lines)
        return "\n".join(items) if items else f"{n} lines"
    if n <= 6:
        return f"{n} lines"
    first = "\n".join(lines[:3])
    last = "\n".join(lines[-3:])
    return f"{n} lines\nFirst 3:\n{first}\nLast 3:\n{last}"


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: object, default: float) -> float:
    return v if _is_num(v) else default  # type: ignore[return-value]


def _strict_eq(a: object, b: object) -> bool:
    """JS ``===`` for JSON scalars (``true`` is not ``1``)."""
    if _is_num(a) and _is_num(b):
        return a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return type(a) is type(b) and a == b


def _mtime_s(st: os.stat_result) -> float:
    """``stat.mtimeMs / 1000`` computed the way Node derives ``mtimeMs``."""
    ns = st.st_mtime_ns
    ms = (ns // 1_000_000_000) * 1000 + (ns % 1_000_000_000) / 1e6
    return ms / 1000


def _read_file_text(path: str) -> str:
    """File content as Node's ``readFileSync(p, "utf-8")`` gives it (no newline translation)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _empty_cache() -> dict[str, Any]:
    return {"files": {}}


# ---------------------------------------------------------------- the cache



def _drop_oldest(entries: dict[str, Any], cap: int, stamp: str) -> None:
    """Delete the entries with the smallest ``stamp`` field until at most ``cap`` remain."""
    excess = len(entries) - cap
    if excess <= 0:
        return

    def when(k: str) -> float:
        e = entries[k]
        return _num(e.get(stamp), 0) if isinstance(e, dict) else 0

    for k in sorted(entries, key=when)[:excess]:
        del entries[k]

class ReadCache:
    """Per-session read bookkeeping; see the module docstring."""

    def __init__(self, paths: StatePaths, *, cwd: Callable[[], str] = os.getcwd,
                 telemetry: Telemetry | None = None, sources: st.Sources | None = None) -> None:
        self.paths = paths
        self.sources = sources if sources is not None else st.Sources.current()
        """The environment (read live, on every call) and the host's plugin config."""
        self._cwd = cwd
        self.telemetry = telemetry if telemetry is not None else Telemetry(paths)
        self._lock = threading.RLock()
        self._hint_writes: WriteBehind[tuple[str, list[str], float]] = WriteBehind(
            "hint-writer", self._apply_hint_serves, self._lock)
        """Hint serves handed off by the first turn (applied before any hint read)."""
        self._ignore: LRUCache[tuple[tuple[str, int, int] | None, ...], list[re.Pattern[str]]] = \
            LRUCache(maxsize=CONTEXTIGNORE_CACHE_ENTRIES)
        self._ignore_lock = threading.Lock()
        self._delta: LRUCache[str, tuple[float, str]] = LRUCache(maxsize=DELTA_CACHE_MAX_ENTRIES)
        self._delta_lock = threading.Lock()
        self._agents: BoundedMap[str, tuple[str, ...]] = BoundedMap("read_cache.agents")
        self._listed: BoundedSet[str] = BoundedSet("read_cache.listed")
        """Sessions whose ``read-cache/`` listing was done (at most once each)."""
        self.listings = 0
        """Listings of ``read-cache/`` done to find a session's agent prefixes (for tests)."""

    # ------------------------------------------------------------ settings

    def _dir(self, *, create: bool = False) -> CheckedDir:
        """``read-cache/``, reached from the state root without following a symlink.

        Every file operation of the cache goes through it (reads, writes,
        listings and unlinks): a symlink planted at the root's sub-directory,
        ``read-cache``, ``decisions`` or a file stops it, so nothing outside
        the state root is ever read, written or removed.
        """
        return open_checked_dir(self.paths.root, self.paths.read_cache, create=create)

    def _config(self) -> dict[str, Any]:
        try:
            with self._dir() as d:
                data = loads(d.read_bytes("config.json"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _sources(self, env: Mapping[str, str] | None) -> st.Sources:
        if env is None:
            return self.sources
        return st.Sources(env, self.sources.plugin, self.sources.host)

    def enabled(self, env: Mapping[str, str] | None = None) -> bool:
        """Off for ``TOKEN_OPTIMIZER_READ_CACHE`` = ``0/false/no/off`` (``1/true/yes/on``
        for on), else plugin config ``readCache``, else ``read_cache_enabled: false`` in
        ``read-cache/config.json`` (only the boolean ``false`` there disables, as in the
        reference). Any other value warns once and leaves the cache on."""
        src = self._sources(env)
        r = st.resolve(st.READ_CACHE, src)
        if r.source == st.SOURCE_DEFAULT:  # nothing set: the reference's file decides
            return self._config().get("read_cache_enabled") is not False
        if r.problem is not None:
            st.warn_invalid(r)
        return bool(r.value)

    def mode(self, env: Mapping[str, str] | None = None) -> str:
        """``warn`` or ``block``, lower-cased and untrimmed like the reference: a value that is
        neither (``blok``, ``"block "``, a set-but-empty variable) behaves as warn and logs one
        warning saying so. The environment (even empty) wins, then plugin config
        ``readCacheMode``, then ``read_cache_mode`` in ``read-cache/config.json``."""
        src = self._sources(env)
        r = st.resolve(st.READ_CACHE_MODE, src)
        if r.source == st.SOURCE_DEFAULT:
            cfg = self._config().get("read_cache_mode")
            if not (isinstance(cfg, str) and js_trim(cfg)):
                return "warn"
            r = st.resolve(st.READ_CACHE_MODE, src, file_value=cfg)
        if r.problem is not None:
            st.warn_invalid(r)
        return r.raw.lower() if isinstance(r.raw, str) else str(r.value)

    # ------------------------------------------------------------ .contextignore

    @staticmethod
    def _ignore_source(path: Path) -> tuple[str, int, int] | None:
        """Cache key part of one ``.contextignore``: its path, mtime and size (None if absent)."""
        try:
            s = os.stat(path)
        except (OSError, ValueError):
            return None
        return (str(path), s.st_mtime_ns, s.st_size)

    def _ignore_patterns(self) -> list[re.Pattern[str]]:
        """The patterns in force for the current workspace (the ``cwd`` callable).

        The workspace's ``.contextignore`` comes first, then the global
        ``<openclaw dir>/.contextignore``; together at most
        :data:`MAX_CONTEXTIGNORE_PATTERNS`. Compiled patterns are cached per
        (workspace, the two files' mtime and size), so every session's own
        workspace is honoured and an edited file is seen on the next read; the
        cache holds :data:`CONTEXTIGNORE_CACHE_ENTRIES` workspaces at most.
        """
        sources: list[Path] = []
        with contextlib.suppress(Exception):
            sources.append(Path(self._cwd()) / ".contextignore")
        sources.append(self.paths.openclaw_dir / ".contextignore")
        key = tuple(self._ignore_source(src) for src in sources)
        with self._ignore_lock:
            cached = self._ignore.get(key)
        if cached is not None:
            return cached
        raw: list[str] = []
        for src, part in zip(sources, key, strict=True):
            if part is None:
                continue
            try:
                text = src.read_bytes().decode("utf-8", errors="replace")
            except OSError:
                continue
            for line in text.split("\n"):
                s = js_trim(line)
                if s and not s.startswith("#"):
                    raw.append(s)
        compiled: list[re.Pattern[str]] = []
        for pat in raw[:MAX_CONTEXTIGNORE_PATTERNS]:
            try:
                compiled.append(glob_to_regex(pat))
            except re.error:
                log.debug("[token-optimizer] unusable .contextignore pattern: %r", pat)
        with self._ignore_lock:
            self._ignore[key] = compiled
        return compiled

    def is_ignored(self, abs_path: str) -> bool:
        base = os.path.basename(abs_path)
        return any(p.fullmatch(abs_path) or p.fullmatch(base) for p in self._ignore_patterns())

    # ------------------------------------------------------------ files

    def _resolve(self, raw: str) -> str:
        p = os.path.normpath(os.path.join(self._cwd(), raw))
        if p.startswith("//") and not p.startswith("///"):
            p = p[1:]  # path.resolve collapses the POSIX double-slash root
        return p

    @staticmethod
    def _cache_name(agent_id: str, session_id: str) -> str:
        agent = sanitize_removing(agent_id or "", "default")
        sess = sanitize_removing(session_id or "", "unknown")
        return f"{agent}-{sess}.json"

    def _load(self, agent_id: str, session_id: str) -> dict[str, Any]:
        name = self._cache_name(agent_id, session_id)
        try:
            with self._dir() as d:
                try:
                    text = d.read_text(name)
                except FileNotFoundError:
                    return _empty_cache()
                try:
                    data = loads(text)
                    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
                        raise ValueError("no files map")
                except ValueError:
                    with contextlib.suppress(OSError):
                        d.unlink(name)
                    return _empty_cache()
                return data
        except FileNotFoundError:
            return _empty_cache()
        except OSError as exc:
            log.debug("[token-optimizer] read cache unreadable (%s): %s", name, exc)
            return _empty_cache()

    def _save(self, agent_id: str, session_id: str, cache: dict[str, Any]) -> None:
        _drop_oldest(cache["files"], MAX_CACHE_ENTRIES, "lastAccess")
        with self._dir(create=True) as d:
            d.atomic_write(self._cache_name(agent_id, session_id), dumps_compact(cache), durable=False)

    def _log_decision(self, decision: str, file_path: str, reason: str, session_id: str) -> None:
        # Unlike the reference, a decisions directory that cannot be created
        # does not abort the handler: logging must not change the decision.
        try:
            sess = sanitize_removing(session_id or "", "unknown")
            row = {"ts": now_ms() / 1000, "decision": decision, "file": file_path,
                   "reason": reason, "session": session_id}
            line = dumps_compact(row) + "\n"
            with self._dir(create=True) as rc, rc.subdir("decisions", create=True) as d:
                size = d.append(f"{sess}.jsonl", line)
                if size + len(line) > DECISIONS_MAX_BYTES:
                    trim_jsonl_tail(d, f"{sess}.jsonl", DECISIONS_MAX_BYTES // 2, durable=False)
        except Exception as exc:
            log.debug("[token-optimizer] read decision not logged: %s", exc)

    def _remember_agent(self, agent_id: str, session_id: str) -> None:
        sess = sanitize_removing(session_id or "", "unknown")
        agent = sanitize_removing(agent_id or "", "default")
        known = self._agents.get(sess) or ()
        if agent not in known:
            self._agents.set(sess, (*known, agent)[-MAX_REMEMBERED_AGENTS:])

    # ------------------------------------------------------------ delta content cache

    def _delta_key(self, session_id: str, abs_path: str) -> str:
        return f"{session_id}::{abs_path}"

    def _delta_get(self, key: str) -> tuple[float, str] | None:
        with self._delta_lock:
            return self._delta.get(key)

    def _delta_set(self, key: str, mtime: float, content: str) -> None:
        with self._delta_lock:
            self._delta.pop(key, None)
            self._delta[key] = (mtime, content)

    def _delta_drop(self, key: str) -> None:
        with self._delta_lock:
            self._delta.pop(key, None)

    def clear_delta_cache_for_session(self, session_id: str) -> None:
        prefix = f"{session_id}::"
        with self._delta_lock:
            for key in [k for k in self._delta if k.startswith(prefix)]:
                self._delta.pop(key, None)

    def _seed_delta(self, key: str, abs_path: str, mtime: float) -> None:
        """Refresh the delta content for a full read; drop it when too big or unreadable."""
        try:
            if os.stat(abs_path).st_size <= DELTA_CACHE_MAX_BYTES:
                self._delta_set(key, mtime, _read_file_text(abs_path))
            else:
                self._delta_drop(key)
        except (OSError, ValueError):
            self._delta_drop(key)

    # ------------------------------------------------------------ hooks

    def before_read(self, file_path: str | None, offset: int | None, limit: int | None,
                    agent_id: str, session_id: str) -> str | None:
        """Decide a read: the block message when it must be blocked, else None. Never raises."""
        try:
            with self._lock:
                return self._before_read(file_path, offset, limit, agent_id or "", session_id or "")
        except Exception as exc:
            log.warning("[token-optimizer] read cache failed, read allowed: %s", exc)
            return None

    def _before_read(self, raw: str | None, offset: int | None, limit: int | None,
                     agent_id: str, session_id: str) -> str | None:
        if not self.enabled():
            return None
        mode = self.mode()
        if not raw:
            return None
        fp = self._resolve(raw)
        base = os.path.basename(fp)

        if self.is_ignored(fp):
            self._log_decision("block", fp, "contextignore", session_id)
            return (f"{PREFIX}Blocked by .contextignore: {base}\n"
                    "Take the matching pattern out of .contextignore to make this file readable again.")

        if os.path.splitext(fp)[1].lower() in BINARY_EXTENSIONS:
            return None

        self._remember_agent(agent_id, session_id)
        cache = self._load(agent_id, session_id)
        files: dict[str, Any] = cache["files"]
        found = files.get(fp)
        entry: dict[str, Any] | None = found if isinstance(found, dict) else None
        off = offset if offset is not None else 0
        lim = limit if limit is not None else 0
        full_read = off == 0 and lim == 0
        tel = self.telemetry
        key = self._delta_key(session_id, fp)

        if entry is None:
            try:
                st = os.stat(fp)
            except (OSError, ValueError):
                return None
            mtime = _mtime_s(st)
            files[fp] = {"mtime": mtime, "offset": off, "limit": lim,
                         "tokensEst": estimate_tokens_from_bytes(st.st_size), "readCount": 1,
                         "lastAccess": now_ms() / 1000, "digest": ""}
            self._save(agent_id, session_id, cache)
            self._log_decision("allow", fp, "first_read", session_id)
            try:
                if self.claim_hint_follow(session_id, fp):
                    tel.log_savings_event("hint_followed", HINT_FOLLOW_TOKEN_CREDIT, session_id,
                                          f"hint->read: {base}", basis=ESTIMATED)
            except Exception as exc:
                log.debug("[token-optimizer] hint credit skipped: %s", exc)
            if full_read and tel.is_v5_enabled("delta_read"):
                with contextlib.suppress(OSError, ValueError):
                    if os.stat(fp).st_size <= DELTA_CACHE_MAX_BYTES:
                        self._delta_set(key, mtime, _read_file_text(fp))
            return None

        try:
            st = os.stat(fp)
        except (OSError, ValueError):
            del files[fp]
            self._save(agent_id, session_id, cache)
            self._log_decision("allow", fp, "file_changed_or_deleted", session_id)
            return None
        current = _mtime_s(st)
        mtime_match = abs(current - _num(entry.get("mtime"), math.nan)) < MTIME_TOLERANCE_S
        range_match = _strict_eq(entry.get("offset"), off) and _strict_eq(entry.get("limit"), lim)

        if not (mtime_match and range_match):
            delta_on = tel.is_v5_enabled("delta_read")
            cached = (self._delta_get(key)
                      if delta_on and full_read and range_match and not mtime_match else None)
            if cached is not None:
                try:
                    if os.stat(fp).st_size <= DELTA_CACHE_MAX_BYTES:
                        new = _read_file_text(fp)
                        d = compute_delta(cached[1], new)
                        self._delta_set(key, current, new)
                        entry["mtime"] = current
                        entry["readCount"] = _num(entry.get("readCount"), 0) + 1
                        entry["lastAccess"] = now_ms() / 1000
                        entry["digest"] = ""
                        self._save(agent_id, session_id, cache)
                        tel.log_compression_event(
                            "delta_read", session_id,
                            detail=f"delta {d.summary}" + (" fallback" if d.fallback else ""),
                            original_text=new, compressed_text=d.body, verified=False,
                            command_pattern=f"Read:{base}", quality_preserved=not d.fallback)
                        self._log_decision("block", fp, f"delta_read_{d.summary}", session_id)
                        msg = (f"{PREFIX}Delta view \u2014 {base} changed {d.summary}\n\n{d.body}\n\n"
                               "(Ask again with a different offset/limit to get the whole file.)")
                        self._log_read_saving("delta_read", session_id, new, msg,
                                              f"delta {d.summary}: {base}")
                        return msg
                    self._delta_drop(key)
                except Exception as exc:
                    log.debug("[token-optimizer] delta read skipped: %s", exc)
                    self._delta_drop(key)

            entry["mtime"] = current
            entry["offset"] = off
            entry["limit"] = lim
            entry["readCount"] = _num(entry.get("readCount"), 0) + 1
            entry["lastAccess"] = now_ms() / 1000
            entry["digest"] = ""
            self._save(agent_id, session_id, cache)
            if delta_on and full_read:
                self._seed_delta(key, fp, current)
            elif not full_read:
                self._delta_drop(key)
            self._log_decision("allow", fp, "file_modified_or_different_range", session_id)
            return None

        # Redundant read: same file, same range, unchanged.
        count = _num(entry.get("readCount"), 0) + 1
        entry["readCount"] = count
        entry["lastAccess"] = now_ms() / 1000
        fresh_content: str | None = None
        digest = entry.get("digest")
        if not js_truthy(digest):
            try:
                fresh_content = _read_file_text(fp)
                digest = generate_digest(fp, fresh_content)
            except (OSError, ValueError):
                digest = DIGEST_FAILURE
            entry["digest"] = digest
        self._save(agent_id, session_id, cache)
        digest_text = digest if isinstance(digest, str) else dumps_compact(digest)

        if fresh_content is not None and digest_text and digest_text != DIGEST_FAILURE \
                and tel.is_v5_enabled("structure_map_beta"):
            served = mode == "block"
            # In warn mode the full read goes through and the digest is never served:
            # the row says so and counts nothing saved (COMPAT.md).
            tel.log_compression_event(
                "structure_map", session_id,
                detail=f"redundant_read {js_number(count)}" + ("" if served else " not served (warn)"),
                original_text=fresh_content, compressed_text=digest_text if served else fresh_content,
                verified=False, command_pattern=f"Read:{base}", quality_preserved=True)

        reason = f"redundant_read_{js_number(count)}"
        if mode == "block":
            self._log_decision("block", fp, reason, session_id)
            msg = (f"{PREFIX}{base} is already in context and has not changed (read #{js_number(count)}).\n"
                   f"Structure of {base}:\n{digest_text}\n\n"
                   "Change the file first, or pass a different offset/limit, to read it again.")
            if full_read:
                # Only a blocked full read is credited: the whole file was really not sent.
                # A ranged read (offset/limit) is blocked too but earns no row: what the
                # range would have returned depends on the host's line semantics, and a
                # file-sized figure would overstate a measured saving.
                self._log_read_saving("redundant_read", session_id, st.st_size, msg,
                                      f"read #{js_number(count)} blocked: {base}")
            return msg
        self._log_decision("warn", fp, reason, session_id)
        return None

    def _log_read_saving(self, event_type: str, session_id: str, content: str | int,
                         sent: str, detail: str) -> None:
        """A read answered with ``sent`` instead of ``content`` (text, or a size in bytes):
        the difference was really not sent (measured). Never raises."""
        try:
            size = content if isinstance(content, int) else len(content.encode("utf-8"))
            saved = estimate_tokens_from_bytes(size) - estimate_tokens_from_bytes(len(sent.encode("utf-8")))
            if saved > 0:
                self.telemetry.log_savings_event(event_type, saved, session_id or None, detail,
                                                 basis=MEASURED)
        except Exception as exc:
            log.debug("[token-optimizer] read saving not recorded: %s", exc)

    def after_write(self, file_path: str | None, agent_id: str, session_id: str) -> None:
        """A write tool touched ``file_path``: forget it. Never raises."""
        try:
            if not file_path:
                return
            with self._lock:
                fp = self._resolve(file_path)
                cache = self._load(agent_id or "", session_id or "")
                if fp in cache["files"]:
                    del cache["files"][fp]
                    self._save(agent_id or "", session_id or "", cache)
                self._delta_drop(self._delta_key(session_id or "", fp))
        except Exception as exc:
            log.warning("[token-optimizer] read cache invalidation failed: %s", exc)

    def _session_agents(self, d: CheckedDir, agent_id: str, sess: str) -> set[str]:
        """The agent prefixes whose ``<agent>-<sess>.json`` may exist.

        The one given, ``default``, ``unknown`` and those this process saw for the
        session. Only when the process has no memory of the session (a restart) is
        ``read-cache/`` listed for other single-segment prefixes, and that at most
        once per session (:attr:`listings` counts them); the prefixes found are then
        remembered like the ones seen on reads.
        """
        agents = {sanitize_removing(agent_id or "", "default"), "default", "unknown"}
        remembered = self._agents.get(sess)
        if remembered is not None:
            agents.update(remembered)
        elif self._listed.add(sess):
            self.listings += 1
            suffix = f"-{sess}.json"
            found: list[str] = []
            with contextlib.suppress(OSError):
                for name in d.listdir():
                    if name.endswith(suffix) and not name.startswith("hint-serves-"):
                        prefix = name[: -len(suffix)]
                        if prefix and "-" not in prefix:
                            found.append(prefix)
            agents.update(found)
            if found:
                self._agents.set(sess, tuple(sorted(found))[-MAX_REMEMBERED_AGENTS:])
        return agents

    def clear_cache(self, agent_id: str, session_id: str) -> None:
        """Compaction: delete the session's read cache and decisions log. Never raises.

        The reference deletes only ``<agent>-<session>.json`` for the agent id
        it is given, which misses the cache when reads and compaction resolve
        the agent differently (runtime.md §13.4 B). Here every agent prefix of
        the session is cleared: the one given, ``default``, ``unknown``, the ones
        seen by this process and, when the process has no memory of the session,
        any single-segment prefix found on disk (``main`` ...; one listing per
        session at most, see :meth:`_session_agents`).
        """
        try:
            with self._lock:
                sess = sanitize_removing(session_id or "", "unknown")
                suffix = f"-{sess}.json"
                try:
                    d = self._dir()
                except FileNotFoundError:
                    self._agents.discard(sess)
                    return
                with d:
                    agents = self._session_agents(d, agent_id, sess)
                    self._agents.discard(sess)
                    self._listed.add(sess)  # cleared: no other prefix is left on disk
                    for agent in agents:
                        with contextlib.suppress(OSError):
                            d.unlink(f"{agent}{suffix}")
                    with contextlib.suppress(OSError), d.subdir("decisions") as dec:
                        dec.unlink(f"{sess}.jsonl")
        except Exception as exc:
            log.warning("[token-optimizer] read cache clear failed: %s", exc)

    def active_read_tokens(self, agent_id: str, session_id: str) -> int:
        """Tokens of files this session read at least twice (top 25 by recency, cap 200 000).

        Caches of every agent prefix of the session are summed (the prefixes of
        :meth:`_session_agents`: no directory listing while the process
        remembers the session).
        """
        try:
            sess = sanitize_removing(session_id or "", "unknown")
            suffix = f"-{sess}.json"
            entries: list[dict[str, Any]] = []
            try:
                d = self._dir()
            except OSError:
                return 0
            with d:
                for agent in sorted(self._session_agents(d, agent_id, sess)):
                    try:
                        data = loads(d.read_text(f"{agent}{suffix}"))
                    except (OSError, ValueError):
                        continue
                    files = data.get("files") if isinstance(data, dict) else None
                    if not isinstance(files, dict):
                        continue
                    for e in files.values():
                        if isinstance(e, dict) and _num(e.get("readCount"), 0) >= ACTIVE_READ_MIN_COUNT:
                            entries.append(e)
            entries.sort(key=lambda e: _num(e.get("lastAccess"), 0), reverse=True)
            total = sum(_num(e.get("tokensEst"), 0) for e in entries[:ACTIVE_READ_MAX_FILES])
            return int(min(ACTIVE_READ_TOKEN_CAP, total))
        except Exception as exc:
            log.debug("[token-optimizer] active read tokens unavailable: %s", exc)
            return 0

    # ------------------------------------------------------------ hint follow-through

    @staticmethod
    def _hint_name(session_id: str) -> str:
        return f"hint-serves-{sanitize_removing(session_id, 'unknown')}.json"

    def _load_hints(self, d: CheckedDir, session_id: str) -> dict[str, Any]:
        """The session's hint sidecar in ``read-cache/`` (``d``); ``{}`` when absent or bad."""
        name = self._hint_name(session_id)
        try:
            text = d.read_text(name)
        except OSError:
            return {}
        try:
            data = loads(text)
        except ValueError:
            with contextlib.suppress(OSError):
                d.unlink(name)
            return {}
        return data if isinstance(data, dict) else {}

    def _save_hints(self, d: CheckedDir, session_id: str, serves: dict[str, Any]) -> None:
        try:
            _drop_oldest(serves, HINT_SERVES_MAX_ENTRIES, "servedAt")
            d.atomic_write(self._hint_name(session_id), dumps_compact(serves), durable=False)
        except Exception as exc:
            log.debug("[token-optimizer] hint sidecar not saved: %s", exc)

    def record_hint_serve(self, session_id: str, paths: list[str]) -> None:
        """Remember paths a hint surfaced (first 25; existing entries untouched). Never raises.

        The sidecar is written after the hook returns, on this cache's writer thread
        in the next quiet moment; :meth:`claim_hint_follow` makes any write still
        queued first.
        """
        if not session_id or not paths:
            return
        try:
            self._hint_writes.submit((session_id, list(paths)[:HINT_SERVE_MAX_PATHS],
                                      now_ms() / 1000))
        except Exception as exc:
            log.debug("[token-optimizer] hint serve not recorded: %s", exc)

    def _apply_hint_serves(self, items: list[tuple[str, list[str], float]]) -> None:
        for session_id, paths, now_s in items:
            self._write_hint_serve(session_id, paths, now_s)

    def _write_hint_serve(self, session_id: str, paths: list[str], now_s: float) -> None:
        try:
            # one checked open of read-cache/ for the read and the write (a new session's
            # first hint always writes)
            with self._lock, self._dir(create=True) as d:
                serves = self._load_hints(d, session_id)
                changed = False
                for raw in paths:
                    if not isinstance(raw, str):
                        continue
                    fp = js_trim(raw)
                    if not fp or js_truthy(serves.get(fp)):
                        continue
                    serves[fp] = {"filePath": fp, "servedAt": now_s, "credited": False}
                    changed = True
                if changed:
                    self._save_hints(d, session_id, serves)
        except Exception as exc:
            log.debug("[token-optimizer] hint serve not recorded: %s", exc)

    def claim_hint_follow(self, session_id: str, file_path: str) -> bool:
        """Credit a hinted path once, within four hours of the hint. Never raises."""
        if not session_id or not file_path:
            return False
        try:
            with self._lock:
                self._hint_writes.drain()
                try:
                    d = self._dir()
                except OSError:
                    return False  # no (usable) read-cache/: nothing was served
                with d:
                    serves = self._load_hints(d, session_id)
                    entry = serves.get(file_path)
                    if not isinstance(entry, dict) or js_truthy(entry.get("credited")):
                        return False
                    age = now_ms() / 1000 - _num(entry.get("servedAt"), math.nan)
                    if age > HINT_FOLLOW_MAX_AGE_S:
                        return False
                    serves[file_path] = {**entry, "credited": True}
                    self._save_hints(d, session_id, serves)
                    return True
        except Exception as exc:
            log.debug("[token-optimizer] hint credit failed: %s", exc)
            return False

    def remove_stale_temps(self) -> int:
        """Start-up: temp files of dead or wedged writers in ``read-cache/``. Never raises."""
        removed = 0
        try:
            with self._dir() as d:
                removed += remove_stale_temps(d)
                with contextlib.suppress(OSError), d.subdir("decisions") as dec:
                    removed += remove_stale_temps(dec)
        except OSError:
            pass
        return removed

    # ------------------------------------------------------------ memory

    def flush(self) -> None:
        """Write the hint serves still queued (gateway stop)."""
        self._hint_writes.drain()

    def close(self) -> None:
        """Shutdown: write the hint serves still queued."""
        self._hint_writes.close()

    def release(self, session_id: str) -> None:
        """Session ended: drop its in-memory state (delta contents, remembered agents)."""
        self.clear_delta_cache_for_session(session_id or "")
        self._agents.discard(sanitize_removing(session_id or "", "unknown"))

    def tracked_counts(self) -> dict[str, int]:
        with self._delta_lock:
            delta = len(self._delta)
        return {"read_cache.delta": delta, "read_cache.agents": len(self._agents)}


# ---------------------------------------------------------------- per-session files


class ReadCacheFiles:
    """What the read cache keeps on disk for a session, and how it goes away.

    Per session: ``read-cache/<agent>-<session>.json`` for each agent prefix,
    ``read-cache/hint-serves-<session>.json`` and ``read-cache/decisions/<session>.jsonl``.
    The session index calls these methods when it prunes a session; it knows no
    file name itself. Every operation goes through a checked directory (no symlink
    is followed, nothing outside the state root is reached).
    """

    column = "rc"
    """The session index column that holds :meth:`disk_name` for each entry."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths

    @staticmethod
    def disk_name(session_id: str) -> str:
        """The session part of this store's file names."""
        return sanitize_removing(session_id or "", "unknown")

    def session_files(self, session_id: str, agents: Iterable[str]) -> list[str]:
        """Names (relative to ``read-cache/``) this store may keep for the session.

        ``agents`` are the agent / platform ids the session was seen with; the
        ``default`` prefix is always included.
        """
        sess = self.disk_name(session_id)
        if sess == "unknown":
            return []
        prefixes = {sanitize_removing(a, "default") for a in agents if a} | {"default"}
        names = [f"{p}-{sess}.json" for p in sorted(prefixes)]
        return [*names, ReadCache._hint_name(session_id), f"decisions/{sess}.jsonl"]

    def _checked(self) -> CheckedDir | None:
        try:
            return open_checked_dir(self.paths.root, self.paths.read_cache)
        except (OSError, UnsafePathError):
            return None

    def _each(self, names: Iterable[str], fn: Callable[[CheckedDir, str], int]) -> int:
        d = self._checked()
        if d is None:
            return 0
        total = 0
        with d:
            dec: CheckedDir | None = None
            try:
                for rel in names:
                    sub, _, name = rel.rpartition("/")
                    target = d
                    if sub == "decisions":
                        if dec is None:
                            try:
                                dec = d.subdir("decisions")
                            except (OSError, UnsafePathError):
                                continue
                        target = dec
                    elif sub:
                        continue
                    with contextlib.suppress(OSError):
                        total += fn(target, name)
            finally:
                if dec is not None:
                    dec.close()
        return total

    def remove(self, names: Iterable[str]) -> int:
        """Delete the named regular files; returns how many were removed."""
        def unlink(d: CheckedDir, name: str) -> int:
            if not stat.S_ISREG(d.lstat(name).st_mode):
                return 0
            d.unlink(name)
            return 1
        return self._each(names, unlink)

    def size(self, names: Iterable[str]) -> int:
        """Bytes of the named regular files."""
        def size_of(d: CheckedDir, name: str) -> int:
            st = d.lstat(name)
            return st.st_size if stat.S_ISREG(st.st_mode) else 0
        return self._each(names, size_of)

    def idle_files(self, cutoff: float) -> list[tuple[str, list[str]]]:
        """Files untouched since ``cutoff`` (epoch seconds), each with the session
        names it may belong to (an agent prefix may itself contain ``-``)."""
        out: list[tuple[str, list[str]]] = []
        d = self._checked()
        if d is None:
            return out
        with d:
            for name in sorted(_listdir(d)):
                owners = _owner_candidates(name)
                if owners and _idle(d, name, cutoff):
                    out.append((name, owners))
            try:
                dec = d.subdir("decisions")
            except (OSError, UnsafePathError):
                return out
            with dec:
                for name in sorted(_listdir(dec)):
                    if name.endswith(".jsonl") and _idle(dec, name, cutoff):
                        out.append((f"decisions/{name}", [name[:-6]]))
        return out


def _listdir(d: CheckedDir) -> list[str]:
    try:
        return d.listdir()
    except OSError:
        return []


def _idle(d: CheckedDir, name: str, cutoff: float) -> bool:
    try:
        st = d.lstat(name)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff


def _owner_candidates(name: str) -> list[str]:
    """Session names a ``<prefix>-<session>.json`` file can belong to (every dash split)."""
    if not name.endswith(".json"):
        return []
    stem = name[:-5]
    out: list[str] = []
    i = stem.find("-")
    while i >= 0:
        if stem[i + 1:]:
            out.append(stem[i + 1:])
        i = stem.find("-", i + 1)
    return out
