"""Checkpoint policy: when to take a progressive, quality or milestone checkpoint.

Behaviour follows runtime.md §4. Each session has a
:class:`SessionCheckpointState` held in a :class:`~token_optimizer.bounded.BoundedMap`
(cap :data:`token_optimizer.bounded.MAX_TRACKED_SESSIONS`, read at use time).

Decisions are pure with respect to disk. Recording a decision
(:meth:`CheckpointPolicy.record_decision`) writes the whole state through to
``checkpoints/<sanitised id>/policy-state.json`` (the reference's layout:
pretty JSON, nine keys, no trailing newline), atomically and durably. A state
that is not in memory is rehydrated from that file, so after an eviction or a
restart a fill band, quality threshold or milestone never fires twice.

Differences from the reference, on purpose (see COMPAT.md):

* The in-memory map is keyed by the *sanitised* session id, the same key the
  capture path records under, so decisions always see their own recordings
  (runtime.md §13.4 D).
* The health scan does not report the telemetry log ``checkpoint-events.jsonl``
  in the checkpoint root as an unsafe directory (§13.4 E).
* Persistence failures are logged, never raised (the in-memory state still
  records the decision); directory-listing failures in the health scan and the
  cleanup are reported or skipped instead of raised.

Thread safety: every compound read-modify-write of one session's state, and
its persistence, runs under a lock chosen by the sanitised id (a fixed pool of
lock stripes, so the number of locks stays bounded).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from token_optimizer import fsutil, jsutil
from token_optimizer.bounded import BoundedMap, StripedLocks
from token_optimizer.fsutil import StatePaths, resolve_paths, sanitize_checkpoint_id

log = logging.getLogger("token_optimizer.policy")

FILL_BANDS = (20, 35, 50, 65, 80)
QUALITY_THRESHOLDS = (80, 70, 50, 40)

STATE_FILENAME = "policy-state.json"
EVENTS_FILENAME = "checkpoint-events.jsonl"
MANIFEST_FILENAME = "manifest.jsonl"
PRE_FANOUT = "pre-fanout"
TELEMETRY_PLATFORM = "openclaw"

ENV_CHECKPOINT_COOLDOWN = "TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS"
ENV_EVALUATION_COOLDOWN = "TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS"
ENV_EDIT_BATCH_WRITES = "TOKEN_OPTIMIZER_EDIT_BATCH_WRITE_THRESHOLD"
ENV_EDIT_BATCH_FILES = "TOKEN_OPTIMIZER_EDIT_BATCH_FILE_THRESHOLD"
ENV_TELEMETRY = "TOKEN_OPTIMIZER_CHECKPOINT_TELEMETRY"

_DAY_MS = 86_400_000
_MAX_STATE_BYTES = 16 << 20
_LOCK_STRIPES = 64


# ---------------------------------------------------------------- settings


@dataclass
class PolicySettings:
    """Tunables. ``NaN`` values keep the reference's semantics (comparisons false).

    * cooldown ``NaN``: the checkpoint cooldown is never active;
    * evaluation cooldown ``NaN``: runtime evaluation never runs;
    * an edit-batch threshold ``NaN``: edit-batch fires on every write.
    """

    checkpoint_cooldown_ms: float = 90_000
    evaluation_cooldown_ms: float = 30_000
    edit_batch_write_threshold: float = 4
    edit_batch_file_threshold: float = 3
    telemetry: bool = False
    durable: bool = True
    """fsync the state file and its directory on each write-through (not an env var)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PolicySettings:
        """Read the spec's environment variables (JS ``parseInt`` semantics)."""
        e: Mapping[str, str] = os.environ if env is None else env

        def num(name: str, default: str) -> float:
            raw = e.get(name)
            return jsutil.parse_int(default if raw is None else raw)

        flag = e.get(ENV_TELEMETRY)
        return cls(
            checkpoint_cooldown_ms=num(ENV_CHECKPOINT_COOLDOWN, "90000"),
            evaluation_cooldown_ms=num(ENV_EVALUATION_COOLDOWN, "30000"),
            edit_batch_write_threshold=num(ENV_EDIT_BATCH_WRITES, "4"),
            edit_batch_file_threshold=num(ENV_EDIT_BATCH_FILES, "3"),
            telemetry=("0" if flag is None else flag).lower() in ("1", "true", "yes", "on"),
        )


# ---------------------------------------------------------------- data types


@dataclass
class Decision:
    trigger: str
    fill_pct: float | None = None
    quality_score: float | None = None


@dataclass
class Snapshot:
    fill_pct: float
    quality_score: float
    context_window: int


@dataclass
class CheckpointFile:
    path: Path
    trigger: str
    created_at_ms: float


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: float) -> float:
    """Integral floats become ints, so they hash/print like JS numbers."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@dataclass(slots=True)
class SessionCheckpointState:
    """One session's policy state (runtime.md §4.1).

    The four collections are insertion-ordered sets (dict keys), serialised in
    insertion order like the reference's JS ``Set``s.
    """

    captured_fill_bands: dict[float, None] = field(default_factory=dict)
    captured_quality_thresholds: dict[float, None] = field(default_factory=dict)
    captured_milestones: dict[str, None] = field(default_factory=dict)
    last_checkpoint_at: float = 0
    last_evaluated_at: float = 0
    edit_write_count: float = 0
    edited_files: dict[str, None] = field(default_factory=dict)
    edit_batch_marker_writes: float = 0
    edit_batch_marker_files: float = 0

    def to_json(self) -> dict[str, Any]:
        """The ``policy-state.json`` document, keys in the reference's order."""
        return {
            "capturedFillBands": list(self.captured_fill_bands),
            "capturedQualityThresholds": list(self.captured_quality_thresholds),
            "capturedMilestones": list(self.captured_milestones),
            "lastCheckpointAt": self.last_checkpoint_at,
            "lastEvaluatedAt": self.last_evaluated_at,
            "editWriteCount": self.edit_write_count,
            "editedFiles": list(self.edited_files),
            "editBatchMarkerWrites": self.edit_batch_marker_writes,
            "editBatchMarkerFiles": self.edit_batch_marker_files,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SessionCheckpointState:
        """Build a state from a parsed file; missing or mistyped fields default to empty/0."""

        def numbers(key: str) -> dict[float, None]:
            v = doc.get(key)
            if not isinstance(v, list):
                return {}
            return {_num(x): None for x in v if _is_number(x) and math.isfinite(x)}

        def strings(key: str) -> dict[str, None]:
            v = doc.get(key)
            if not isinstance(v, list):
                return {}
            return {x: None for x in v if isinstance(x, str)}

        def scalar(key: str) -> float:
            v: Any = doc.get(key)
            return _num(v) if _is_number(v) and math.isfinite(v) else 0

        return cls(
            captured_fill_bands=numbers("capturedFillBands"),
            captured_quality_thresholds=numbers("capturedQualityThresholds"),
            captured_milestones=strings("capturedMilestones"),
            last_checkpoint_at=scalar("lastCheckpointAt"),
            last_evaluated_at=scalar("lastEvaluatedAt"),
            edit_write_count=scalar("editWriteCount"),
            edited_files=strings("editedFiles"),
            edit_batch_marker_writes=scalar("editBatchMarkerWrites"),
            edit_batch_marker_files=scalar("editBatchMarkerFiles"),
        )


def _trigger_number(trigger: str) -> float | None:
    """``parseInt(trigger.split("-")[1])``; None when NaN."""
    parts = trigger.split("-")
    n = jsutil.parse_int(parts[1] if len(parts) > 1 else "")
    return None if math.isnan(n) else _num(n)


# ---------------------------------------------------------------- locale order

# Approximation of ICU root collation (JS ``localeCompare``) for ASCII:
# punctuation and symbols first in CLDR order, then digits, then letters
# case-insensitively, lower case before upper case on ties.
_CLDR_ASCII = "\t\n\v\f\r _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$0123456789"
_CLDR_RANK = {c: i for i, c in enumerate(_CLDR_ASCII)}


def locale_sort_key(s: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    primary: list[int] = []
    tertiary: list[int] = []
    for c in s:
        if c in _CLDR_RANK:
            primary.append(_CLDR_RANK[c])
        elif "a" <= c.lower() <= "z" and c.isascii():
            primary.append(len(_CLDR_ASCII) + ord(c.lower()) - 97)
        else:
            primary.append(1000 + ord(c.lower()))
        tertiary.append(1 if c.isupper() else 0)
    return tuple(primary), tuple(tertiary)


# ---------------------------------------------------------------- the policy


class CheckpointPolicy:
    """Per-session checkpoint decisions with write-through persistence."""

    def __init__(self, paths: StatePaths, settings: PolicySettings | None = None) -> None:
        self.paths = paths
        self.settings = settings if settings is not None else PolicySettings.from_env()
        self.states: BoundedMap[str, SessionCheckpointState] = BoundedMap("checkpoint-policy-states")
        self._stripes = StripedLocks(_LOCK_STRIPES)

    # ------------------------------------------------------------ locking and keys

    @staticmethod
    def key_for(session_id: str) -> str:
        """The sanitised id: directory name and in-memory key."""
        return sanitize_checkpoint_id(session_id)

    def _lock_for(self, key: str) -> threading.RLock:
        return self._stripes.for_key(key)

    @property
    def checkpoint_root(self) -> Path:
        return self.paths.checkpoints

    def session_dir(self, session_id: str) -> Path:
        """``<root>/<sanitised id>`` (unresolved; no I/O)."""
        return self.paths.checkpoints / self.key_for(session_id)

    def manifest_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / MANIFEST_FILENAME

    def state_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / STATE_FILENAME

    def _resolved_root(self) -> Path | None:
        """Realpath of the checkpoint root; None when missing or a symlink."""
        return fsutil.real_dir(self.paths.checkpoints)

    # ------------------------------------------------------------ state cache

    def _state_locked(self, key: str) -> SessionCheckpointState:
        st = self.states.get(key)
        if st is not None:
            return st
        loaded = self._load(key)
        st = loaded if loaded is not None else SessionCheckpointState()
        self.states.set(key, st)
        return st

    def get_state(self, session_id: str) -> SessionCheckpointState:
        """The session's state: from memory (no reorder), else from disk, else fresh."""
        key = self.key_for(session_id)
        with self._lock_for(key):
            return self._state_locked(key)

    def peek_state(self, session_id: str) -> SessionCheckpointState:
        """Like :meth:`get_state`, but a state loaded from disk is not kept in memory.

        For read-only views (status, doctor) that must not re-track a released session.
        """
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self.states.get(key)
            if st is not None:
                return st
            loaded = self._load(key)
            return loaded if loaded is not None else SessionCheckpointState()

    def clear_state(self, session_id: str) -> None:
        """Forget the in-memory state (the persisted file stays)."""
        key = self.key_for(session_id)
        with self._lock_for(key):
            self.states.discard(key)

    def _load(self, key: str) -> SessionCheckpointState | None:
        root = self._resolved_root()
        if root is None:
            return None
        sdir = root / key
        if not fsutil.safe_dir(sdir, root):
            if os.path.lexists(sdir):
                log.warning("[token-optimizer] ignoring unsafe checkpoint directory: %s", sdir)
            return None
        path = sdir / STATE_FILENAME
        if not os.path.lexists(path):
            return None
        if not fsutil.safe_file(path, sdir):
            log.warning("[token-optimizer] ignoring unsafe policy state file: %s", path)
            return None
        try:
            doc = jsutil.loads(fsutil.read_text_no_follow(path, max_bytes=_MAX_STATE_BYTES))
        except (OSError, ValueError) as exc:
            log.warning("[token-optimizer] unreadable policy state %s (%s); starting fresh", path, exc)
            return None
        if not isinstance(doc, dict):
            log.warning("[token-optimizer] policy state %s is not an object; starting fresh", path)
            return None
        return SessionCheckpointState.from_json(doc)

    def _session_dir_for_write(self, key: str) -> Path:
        """The session directory, created 0700 when missing; symlinks refused.

        The root is checked before anything is created below it, so a symlinked
        root can never make us create a directory elsewhere.
        """
        root = self.paths.checkpoints
        sdir = root / key
        try:
            # fast path: both already real directories (a key has no separators,
            # so a real sdir directly inside a real root cannot escape it)
            if stat.S_ISDIR(os.lstat(sdir).st_mode) and stat.S_ISDIR(os.lstat(root).st_mode):
                return sdir
        except FileNotFoundError:
            pass
        fsutil.ensure_dir(root, base=root)
        return fsutil.ensure_dir(sdir, base=root)

    def _persist_locked(self, key: str, st: SessionCheckpointState) -> None:
        data = jsutil.dumps_pretty(st.to_json())
        for attempt in (1, 2):
            try:
                sdir = self._session_dir_for_write(key)
                fsutil.atomic_write(sdir / STATE_FILENAME, data, durable=self.settings.durable)
                return
            except FileNotFoundError:
                # the directory vanished between creation and write (a cleanup
                # from another process); create it again once
                if attempt == 2:
                    raise

    # ------------------------------------------------------------ evaluation gate

    def register_write_event(self, session_id: str, file_path: str | None) -> None:
        """Count a write tool call (memory only)."""
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            st.edit_write_count += 1
            if file_path:
                st.edited_files[file_path] = None

    def should_evaluate(self, session_id: str, now_ms: float | None = None) -> bool:
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            return bool(now - st.last_evaluated_at >= self.settings.evaluation_cooldown_ms)

    def mark_evaluated(self, session_id: str, now_ms: float | None = None) -> None:
        """Remember the evaluation time (memory only)."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            self._state_locked(key).last_evaluated_at = now

    def _cooldown_active(self, st: SessionCheckpointState, now: float) -> bool:
        return bool(now - st.last_checkpoint_at < self.settings.checkpoint_cooldown_ms)

    # ------------------------------------------------------------ decisions

    def decide_snapshot(
        self, session_id: str, snap: Snapshot, now_ms: float | None = None, *,
        ignore_cooldown: bool = False,
    ) -> Decision | None:
        """Fill band (highest uncaptured band <= fill), else quality threshold."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            if not ignore_cooldown and self._cooldown_active(st, now):
                return None
            return self._snapshot_target(st, snap)

    @staticmethod
    def _snapshot_target(st: SessionCheckpointState, snap: Snapshot) -> Decision | None:
        target: int | None = None
        for band in FILL_BANDS:
            if snap.fill_pct >= band and band not in st.captured_fill_bands:
                target = band
        if target is not None:
            return Decision(f"progressive-{target}", snap.fill_pct, snap.quality_score)
        for threshold in QUALITY_THRESHOLDS:
            if snap.quality_score < threshold and threshold not in st.captured_quality_thresholds:
                return Decision(f"quality-{threshold}", snap.fill_pct, snap.quality_score)
        return None

    def snapshot_due(self, session_id: str, snap: Snapshot) -> bool:
        """Would ``snap`` earn a band or threshold once no cooldown holds it back?"""
        key = self.key_for(session_id)
        with self._lock_for(key):
            return self._snapshot_target(self._state_locked(key), snap) is not None

    def milestone_taken(self, session_id: str, trigger: str) -> bool:
        """Has the once-per-session milestone ``trigger`` been captured?"""
        if trigger != "milestone-pre-fanout":
            return False
        key = self.key_for(session_id)
        with self._lock_for(key):
            return PRE_FANOUT in self._state_locked(key).captured_milestones

    def decide_pre_fanout(
        self, session_id: str, snap: Snapshot | None = None, now_ms: float | None = None, *,
        ignore_cooldown: bool = False,
    ) -> Decision | None:
        """Once per session lifetime, before the first fan-out tool call."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            if PRE_FANOUT in st.captured_milestones:
                return None
            if not ignore_cooldown and self._cooldown_active(st, now):
                return None
        return Decision(
            "milestone-pre-fanout",
            snap.fill_pct if snap is not None else None,
            snap.quality_score if snap is not None else None,
        )

    def _edit_batch_met(self, st: SessionCheckpointState) -> bool:
        write_delta = st.edit_write_count - st.edit_batch_marker_writes
        file_delta = len(st.edited_files) - st.edit_batch_marker_files
        s = self.settings
        return not (write_delta < s.edit_batch_write_threshold
                    and file_delta < s.edit_batch_file_threshold)

    def edit_batch_due(self, session_id: str) -> bool:
        """Enough writes since the last marker, whatever the cooldown says."""
        key = self.key_for(session_id)
        with self._lock_for(key):
            return self._edit_batch_met(self._state_locked(key))

    def decide_edit_batch(
        self, session_id: str, snap: Snapshot | None = None, now_ms: float | None = None, *,
        ignore_cooldown: bool = False,
    ) -> Decision | None:
        """Enough writes, or enough new distinct files, since the last marker."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            if not ignore_cooldown and self._cooldown_active(st, now):
                return None
            if not self._edit_batch_met(st):
                return None
        return Decision(
            "milestone-edit-batch",
            snap.fill_pct if snap is not None else None,
            snap.quality_score if snap is not None else None,
        )

    # ------------------------------------------------------------ recording

    def record_decision(self, session_id: str, trigger: str, now_ms: float | None = None) -> None:
        """Mark ``trigger`` as taken and write the whole state through to disk.

        A persistence failure is logged; the in-memory state keeps the decision.
        """
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            st.last_checkpoint_at = now
            if trigger.startswith("progressive-"):
                band = _trigger_number(trigger)
                if band is not None:
                    st.captured_fill_bands[band] = None
            elif trigger.startswith("quality-"):
                threshold = _trigger_number(trigger)
                if threshold is not None:
                    st.captured_quality_thresholds[threshold] = None
            elif trigger == "milestone-pre-fanout":
                st.captured_milestones[PRE_FANOUT] = None
            elif trigger == "milestone-edit-batch":
                st.edit_batch_marker_writes = st.edit_write_count
                st.edit_batch_marker_files = len(st.edited_files)
            try:
                self._persist_locked(key, st)
            except (OSError, ValueError) as exc:
                log.warning("[token-optimizer] could not persist checkpoint policy state for %s: %s",
                            key, exc)

    def register_capture(self, session_id: str, trigger: str, telemetry: dict[str, Any]) -> None:
        """A new checkpoint artifact was written: telemetry row, then record the decision.

        ``telemetry`` keys: ``fillPct``, ``qualityScore``, ``toolName``,
        ``eventKind``, ``model`` (snake_case spellings accepted too); absent or
        None values are omitted from the row.
        """
        self._append_event(session_id, trigger, telemetry)
        self.record_decision(session_id, trigger)

    def _append_event(self, session_id: str, trigger: str, telemetry: Mapping[str, Any]) -> None:
        if not self.settings.telemetry:
            return
        row: dict[str, Any] = {
            "timestamp": jsutil.iso_now(),
            "platform": TELEMETRY_PLATFORM,
            "sessionId": self.key_for(session_id),
            "trigger": trigger,
        }
        for camel, snake in (("fillPct", "fill_pct"), ("qualityScore", "quality_score"),
                             ("toolName", "tool_name"), ("eventKind", "event_kind"),
                             ("model", "model")):
            v = telemetry.get(camel, telemetry.get(snake))
            if v is not None and v is not jsutil.UNDEFINED:
                row[camel] = v
        try:
            root = fsutil.ensure_dir(self.paths.checkpoints, base=self.paths.checkpoints)
            target = root / EVENTS_FILENAME
            fsutil.check_write_target(target)
            fsutil.append_no_follow(target, jsutil.dumps_compact(row) + "\n")
        except (OSError, TypeError, ValueError) as exc:
            log.debug("[token-optimizer] checkpoint telemetry append failed: %s", exc)

    # ------------------------------------------------------------ reading artifacts

    def checkpoint_files(self, session_id: str) -> list[CheckpointFile]:
        """Valid manifest entries whose artifact is a safe file (manifest order)."""
        root = self._resolved_root()
        if root is None:
            return []
        sdir = root / self.key_for(session_id)
        if not fsutil.safe_dir(sdir, root):
            return []
        real_dir = Path(os.path.realpath(sdir))
        manifest = real_dir / MANIFEST_FILENAME
        if not fsutil.safe_file(manifest, real_dir):
            return []
        try:
            text = fsutil.read_text_no_follow(manifest)
        except OSError:
            return []
        out: list[CheckpointFile] = []
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                entry = jsutil.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            file, trigger, created = entry.get("file"), entry.get("trigger"), entry.get("createdAt")
            if not (isinstance(file, str) and file and isinstance(trigger, str) and trigger
                    and isinstance(created, str) and created):
                continue
            ts = jsutil.parse_iso_ms(created)
            if math.isnan(ts):
                continue
            fp = Path(file)
            if not fsutil.safe_file(fp, real_dir):
                continue
            out.append(CheckpointFile(Path(os.path.realpath(fp)), trigger, ts))
        return out

    def telemetry_summary(self, days: int = 7, *, now_ms: float | None = None) -> dict[str, Any]:
        """Summary of ``checkpoint-events.jsonl`` (read whether or not telemetry is on)."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        root = self._resolved_root()
        event_log = (root if root is not None else self.paths.checkpoints) / EVENTS_FILENAME
        cutoff = now - days * _DAY_MS
        events: list[tuple[float, dict[str, Any]]] = []
        if root is not None and fsutil.safe_file(event_log, root):
            try:
                text = fsutil.read_text_no_follow(event_log)
            except OSError:
                text = ""
            for line in text.split("\n"):
                if not line:
                    continue
                try:
                    ev = jsutil.loads(line)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                ts = jsutil.parse_iso_ms(ev.get("timestamp"))
                if math.isnan(ts):
                    continue
                events.append((ts, ev))
        recent = [(ts, ev) for ts, ev in events if ts >= cutoff]
        counts: dict[str, int] = {}
        for _, ev in recent:
            trig = ev.get("trigger")
            name = trig if isinstance(trig, str) else "unknown"
            counts[name] = counts.get(name, 0) + 1
        by_trigger = {k: counts[k] for k in sorted(counts, key=locale_sort_key)}
        last_event: dict[str, Any] | None = None
        if recent:
            _, newest = sorted(recent, key=lambda p: -p[0])[0]  # stable: earliest line wins ties
            last_event = {}
            for k, want_str in (("timestamp", True), ("sessionId", True), ("trigger", True),
                                ("fillPct", False), ("qualityScore", False)):
                v = newest.get(k)
                if (isinstance(v, str) if want_str else _is_number(v)):
                    last_event[k] = v
        return {
            "enabled": self.settings.telemetry,
            "eventLog": str(event_log),
            "days": days,
            "totalEvents": len(events),
            "recentEvents": len(recent),
            "byTrigger": by_trigger,
            "lastEvent": last_event,
        }

    def checkpoint_health(self) -> dict[str, Any]:
        """The reference's health record (runtime.md §4.9)."""
        root_path = self.paths.checkpoints
        issues: list[str] = []
        sessions = checkpoints = policies = total_bytes = 0
        root: Path | None = None
        if not os.path.lexists(root_path):
            issues.append("Checkpoint root does not exist yet.")
        else:
            root = self._resolved_root()
            if root is None:
                issues.append(f"Checkpoint root is invalid or symlinked: {root_path}")
        if root is not None:
            try:
                names = sorted(os.listdir(root))
            except OSError as exc:
                issues.append(f"Could not list the checkpoint root ({exc.strerror}): {root}")
                names = []
            for name in names:
                entry = root / name
                if name == EVENTS_FILENAME and fsutil.safe_file(entry, root):
                    continue  # our own telemetry log, not a session (fixes §13.4 E)
                if not fsutil.safe_dir(entry, root):
                    issues.append(f"Skipped unsafe checkpoint directory: {entry}")
                    continue
                sessions += 1
                try:
                    files = sorted(os.listdir(entry))
                except OSError as exc:
                    issues.append(f"Could not list checkpoint directory ({exc.strerror}): {entry}")
                    continue
                for fname in files:
                    fp = entry / fname
                    if not fsutil.safe_file(fp, entry):
                        issues.append(f"Skipped unsafe checkpoint file: {fp}")
                        continue
                    try:
                        total_bytes += os.lstat(fp).st_size
                    except OSError:
                        continue
                    if fname.endswith(".md"):
                        checkpoints += 1
                    elif fname == STATE_FILENAME:
                        policies += 1
        summary = self.telemetry_summary(7)
        last = summary["lastEvent"]
        out: dict[str, Any] = {
            "checkpointRoot": str(root_path),
            "sessionCount": sessions,
            "checkpointCount": checkpoints,
            "policyCount": policies,
            "pendingCount": 0,
            "checkpointBytes": total_bytes,
            "recentEventCount": summary["recentEvents"],
        }
        if last is not None and isinstance(last.get("trigger"), str):
            out["lastTrigger"] = last["trigger"]
        out["issues"] = issues
        return out

    def health(self) -> dict[str, Any]:
        """The ``doctor`` record (runtime.md §1.9); ``lastCheckpointTrigger`` omitted when none."""
        h = self.checkpoint_health()
        out: dict[str, Any] = {
            "ok": not h["issues"],
            "checkpointRoot": h["checkpointRoot"],
            "sessionCount": h["sessionCount"],
            "checkpointCount": h["checkpointCount"],
            "policyCount": h["policyCount"],
            "pendingCount": h["pendingCount"],
            "checkpointBytes": h["checkpointBytes"],
            "recentCheckpointEvents": h["recentEventCount"],
        }
        if "lastTrigger" in h:
            out["lastCheckpointTrigger"] = h["lastTrigger"]
        out["issues"] = h["issues"]
        return out

    # ------------------------------------------------------------ retention

    def cleanup_artifacts(self, max_age_days: int = 7, *, now_ms: float | None = None) -> int:
        """Delete session-dir files older than ``max_age_days`` (mtime); drop empty dirs."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        root = self._resolved_root()
        if root is None:
            return 0
        # compare in exact nanoseconds: float ms lose precision at epoch scale
        cutoff_ns = Fraction(now - max_age_days * _DAY_MS) * 1_000_000
        try:
            names = os.listdir(root)
        except OSError as exc:
            log.warning("[token-optimizer] checkpoint cleanup could not list %s: %s", root, exc)
            return 0
        removed = 0
        for name in names:
            sdir = root / name
            with self._lock_for(name):
                if not fsutil.safe_dir(sdir, root):
                    continue
                try:
                    files = os.listdir(sdir)
                except OSError:
                    continue
                for fname in files:
                    fp = sdir / fname
                    if not fsutil.safe_file(fp, sdir):
                        continue
                    try:
                        if os.lstat(fp).st_mtime_ns < cutoff_ns:
                            os.unlink(fp)
                            removed += 1
                    except OSError:
                        continue
                with contextlib.suppress(OSError):
                    if not os.listdir(sdir):
                        os.rmdir(sdir)
        return removed

    def tracked_count(self) -> int:
        """Number of session states held in memory."""
        return len(self.states)


# ---------------------------------------------------------------- CLI


def _parse_days(raw: str | None, default: int = 30) -> int:
    """``--days``: integer prefix; unparsable or 0 gives the default; clamped to [1, 365]."""
    n = jsutil.parse_int(raw) if raw is not None else math.nan
    if math.isnan(n) or n == 0:
        n = default
    return int(min(365, max(1, n)))


def _cmd_doctor(args: argparse.Namespace) -> int:
    policy = CheckpointPolicy(resolve_paths(args.home), PolicySettings.from_env())
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
    policy = CheckpointPolicy(resolve_paths(args.home), PolicySettings.from_env())
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
