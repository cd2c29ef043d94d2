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
from token_optimizer import settings as st
from token_optimizer.bounded import BoundedMap, StripedLocks
from token_optimizer.events import clean_text
from token_optimizer.fsutil import StatePaths, sanitize_checkpoint_id

log = logging.getLogger("token_optimizer.policy")

EDITED_FILES_CAP = 1000
"""Distinct edited paths remembered per session (``editedFiles`` in policy-state.json)."""
FILL_BANDS = (20, 35, 50, 65, 80)
QUALITY_THRESHOLDS = (80, 70, 50, 40)

STATE_FILENAME = "policy-state.json"
EVENTS_FILENAME = "checkpoint-events.jsonl"
MANIFEST_FILENAME = "manifest.jsonl"
PRE_FANOUT = "pre-fanout"
TELEMETRY_PLATFORM = "openclaw"

ENV_CHECKPOINT_COOLDOWN: str = st.CHECKPOINT_COOLDOWN_MS.env or ""
ENV_EVALUATION_COOLDOWN: str = st.EVALUATION_COOLDOWN_MS.env or ""
ENV_EDIT_BATCH_WRITES: str = st.EDIT_BATCH_WRITE_THRESHOLD.env or ""
ENV_EDIT_BATCH_FILES: str = st.EDIT_BATCH_FILE_THRESHOLD.env or ""
ENV_TELEMETRY: str = st.CHECKPOINT_TELEMETRY.env or ""

_DAY_MS = 86_400_000
EVENTS_MAX_BYTES = 16 << 20
"""Size cap of ``checkpoint-events.jsonl`` at prune time (newest rows kept)."""
_MAX_STATE_BYTES = 16 << 20
_MAX_MANIFEST_BYTES = 32 << 20
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
        """The reference's own reading of these variables (JS ``parseInt``: ``"5s"`` -> 5,
        ``"abc"`` -> ``NaN``), kept as the spec pins it; the runtime uses :meth:`resolve`."""
        e: Mapping[str, str] = os.environ if env is None else env

        def num(s: st.Setting) -> float:
            raw = e.get(s.env or "")
            return jsutil.parse_int(str(s.default) if raw is None else raw)

        flag = e.get(ENV_TELEMETRY)
        return cls(
            checkpoint_cooldown_ms=num(st.CHECKPOINT_COOLDOWN_MS),
            evaluation_cooldown_ms=num(st.EVALUATION_COOLDOWN_MS),
            edit_batch_write_threshold=num(st.EDIT_BATCH_WRITE_THRESHOLD),
            edit_batch_file_threshold=num(st.EDIT_BATCH_FILE_THRESHOLD),
            telemetry=("0" if flag is None else flag).lower() in ("1", "true", "yes", "on"),
        )

    @classmethod
    def resolve(cls, sources: st.Sources | None = None) -> PolicySettings:
        """The validated settings (environment over plugin config; a rejected value gives
        the default and one warning; see :mod:`token_optimizer.settings`)."""
        src = sources if sources is not None else st.Sources.current()
        return cls(
            checkpoint_cooldown_ms=src.value(st.CHECKPOINT_COOLDOWN_MS),
            evaluation_cooldown_ms=src.value(st.EVALUATION_COOLDOWN_MS),
            edit_batch_write_threshold=src.value(st.EDIT_BATCH_WRITE_THRESHOLD),
            edit_batch_file_threshold=src.value(st.EDIT_BATCH_FILE_THRESHOLD),
            telemetry=bool(src.value(st.CHECKPOINT_TELEMETRY)),
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


def _mark_captured(st: SessionCheckpointState, trigger: str) -> None:
    """Add a one-shot trigger (fill band, quality threshold, pre-fan-out) to the captured sets."""
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


def _apply_decision(st: SessionCheckpointState, trigger: str, now: float) -> None:
    """``recordCheckpointDecision``'s in-memory effect (runtime.md §4.7)."""
    st.last_checkpoint_at = now
    if trigger == "milestone-edit-batch":
        st.edit_batch_marker_writes = st.edit_write_count
        st.edit_batch_marker_files = len(st.edited_files)
    else:
        _mark_captured(st, trigger)


_SCALARS = ("last_checkpoint_at", "last_evaluated_at", "edit_write_count",
            "edit_batch_marker_writes", "edit_batch_marker_files")


def _scalars(st: SessionCheckpointState) -> tuple[float, ...]:
    return tuple(getattr(st, k) for k in _SCALARS)


def _merge(st: SessionCheckpointState, disk: SessionCheckpointState, before: tuple[float, ...]) -> None:
    """Fold what another process wrote into ``st`` (nothing either side recorded is lost).

    Sets: union, in the file's order first, then ours. Numbers: a value on
    disk that is larger than ours *before this decision* came from another
    process and wins when larger; otherwise ours stands (so one process alone
    writes exactly what the reference would).
    """
    for name in ("captured_fill_bands", "captured_quality_thresholds", "captured_milestones",
                 "edited_files"):
        mine: dict[Any, None] = getattr(st, name)
        theirs: dict[Any, None] = getattr(disk, name)
        if any(k not in mine for k in theirs):
            merged = dict(theirs)
            merged.update(mine)
            setattr(st, name, merged)
    for name, old in zip(_SCALARS, before, strict=True):
        d = getattr(disk, name)
        if d > old and d > getattr(st, name):
            setattr(st, name, d)


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
        self.settings = settings if settings is not None else PolicySettings.resolve()
        self.states: BoundedMap[str, SessionCheckpointState] = BoundedMap("checkpoint-policy-states")
        self._stripes = StripedLocks(_LOCK_STRIPES)

    # ------------------------------------------------------------ locking and keys

    @staticmethod
    def key_for(session_id: str) -> str:
        """The sanitised id: directory name and in-memory key."""
        return sanitize_checkpoint_id(session_id)

    def _lock_for(self, key: str) -> threading.RLock:
        return self._stripes.for_key(key)

    def session_dir(self, session_id: str) -> Path:
        """``<root>/<sanitised id>`` (unresolved; no I/O)."""
        return self.paths.checkpoints / self.key_for(session_id)

    def _root_dir(self, *, create: bool = False) -> fsutil.CheckedDir:
        """``checkpoints/``, reached from the state root without following a symlink."""
        return fsutil.open_checked_dir(self.paths.root, self.paths.checkpoints, create=create)

    def _resolved_root(self) -> Path | None:
        """Realpath of the checkpoint root; None when missing, symlinked or unsafe."""
        try:
            with self._root_dir() as d:
                return d.realpath
        except OSError:
            return None

    def session_dir_checked(self, session_id: str, *, create: bool = False) -> fsutil.CheckedDir:
        """The session's directory (created 0700 when ``create``), every level checked."""
        key = self.key_for(session_id)
        with self._root_dir(create=create) as root:
            return root.subdir(key, create=create)

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
        try:
            with self._root_dir() as root, root.subdir(key) as d:
                return self._disk_state(d)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("[token-optimizer] ignoring unsafe checkpoint directory %s: %s",
                        self.paths.checkpoints / key, exc)
            return None

    def _disk_state(self, d: fsutil.CheckedDir) -> SessionCheckpointState | None:
        """The persisted state of one session directory, reconciled with its manifest.

        A checkpoint whose manifest row was written by a process that died
        before recording the decision still counts as captured: its fill
        band, quality threshold or milestone is added, ``lastCheckpointAt``
        moves up to the row's ``createdAt``, and an unrecorded edit-batch row
        sets the edit-batch markers. So a fresh process never captures the
        same band twice (the reference would).
        """
        st: SessionCheckpointState | None = None
        try:
            doc = jsutil.loads(d.read_bytes(STATE_FILENAME, _MAX_STATE_BYTES))
            if isinstance(doc, dict):
                st = SessionCheckpointState.from_json(doc)
            else:
                log.warning("[token-optimizer] policy state %s is not an object; starting fresh",
                            d.path / STATE_FILENAME)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("[token-optimizer] unreadable policy state %s (%s); starting fresh",
                        d.path / STATE_FILENAME, exc)
        try:
            rows = d.read_jsonl(MANIFEST_FILENAME, _MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            rows = []
        except OSError as exc:
            log.warning("[token-optimizer] unreadable checkpoint manifest %s: %s",
                        d.path / MANIFEST_FILENAME, exc)
            rows = []
        if not rows:
            return st
        st = st if st is not None else SessionCheckpointState()
        recorded_at = st.last_checkpoint_at
        for row in rows:
            trigger = row.get("trigger")
            created = jsutil.parse_iso_ms(row.get("createdAt"))
            if not isinstance(trigger, str) or math.isnan(created):
                continue
            _mark_captured(st, trigger)
            if created > recorded_at:
                st.last_checkpoint_at = max(st.last_checkpoint_at, created)
                if trigger == "milestone-edit-batch":
                    st.edit_batch_marker_writes = st.edit_write_count
                    st.edit_batch_marker_files = len(st.edited_files)
        return st

    def _persist_locked(self, d: fsutil.CheckedDir, st: SessionCheckpointState) -> None:
        d.atomic_write(STATE_FILENAME, jsutil.dumps_pretty(st.to_json()), durable=self.settings.durable)

    # ------------------------------------------------------------ evaluation gate

    def register_write_event(self, session_id: str, file_path: str | None) -> None:
        """Count a write tool call (memory only).

        ``editedFiles`` keeps at most :data:`EDITED_FILES_CAP` paths, oldest dropped
        first (ours: the reference's list grows with every distinct file a session
        writes; past the cap only the write count can reach the edit-batch threshold).
        """
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            st.edit_write_count += 1
            if file_path:
                st.edited_files[clean_text(file_path)] = None
                while len(st.edited_files) > EDITED_FILES_CAP:
                    del st.edited_files[next(iter(st.edited_files))]

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
        ignore_cooldown: bool = False, peak_fill: float | None = None,
    ) -> Decision | None:
        """Fill band (highest uncaptured band <= fill), else quality threshold.

        ``peak_fill`` (ours) is the highest fill the session has reached: a band
        crossed earlier but held back (by a cooldown, or skipped when the fill
        jumped over it) stays due after the fill has dropped, e.g. after a
        compaction, and is taken once the current bands and thresholds are.
        """
        now = jsutil.now_ms() if now_ms is None else now_ms
        key = self.key_for(session_id)
        with self._lock_for(key):
            st = self._state_locked(key)
            if not ignore_cooldown and self._cooldown_active(st, now):
                return None
            return self._snapshot_target(st, snap, peak_fill)

    @staticmethod
    def _highest_band(st: SessionCheckpointState, fill: float) -> int | None:
        target: int | None = None
        for band in FILL_BANDS:
            if fill >= band and band not in st.captured_fill_bands:
                target = band
        return target

    def _snapshot_target(self, st: SessionCheckpointState, snap: Snapshot,
                         peak_fill: float | None = None) -> Decision | None:
        target = self._highest_band(st, snap.fill_pct)
        if target is not None:
            return Decision(f"progressive-{target}", snap.fill_pct, snap.quality_score)
        for threshold in QUALITY_THRESHOLDS:
            if snap.quality_score < threshold and threshold not in st.captured_quality_thresholds:
                return Decision(f"quality-{threshold}", snap.fill_pct, snap.quality_score)
        if peak_fill is not None and peak_fill > snap.fill_pct:
            target = self._highest_band(st, peak_fill)
            if target is not None:
                return Decision(f"progressive-{target}", snap.fill_pct, snap.quality_score)
        return None

    def snapshot_due(self, session_id: str, snap: Snapshot,
                     peak_fill: float | None = None) -> bool:
        """Would ``snap`` earn a band or threshold once no cooldown holds it back?"""
        key = self.key_for(session_id)
        with self._lock_for(key):
            return self._snapshot_target(self._state_locked(key), snap, peak_fill) is not None

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
        applied = False
        error: Exception | None = None
        for _attempt in (1, 2):
            try:
                with self.session_dir_checked(key, create=True) as d, d.lock(), self._lock_for(key):
                    st = self._state_locked(key)
                    before = _scalars(st)
                    if not applied:
                        _apply_decision(st, trigger, now)
                        applied = True
                    disk = self._disk_state(d)
                    if disk is not None:
                        _merge(st, disk, before)
                    self._persist_locked(d, st)
                return
            except FileNotFoundError as exc:
                # the directory vanished between opening and writing (a cleanup
                # in another process): create it again once
                error = exc
            except (OSError, ValueError, TypeError) as exc:  # TypeError: unencodable text
                error = exc
                break
        if not applied:
            with self._lock_for(key):
                _apply_decision(self._state_locked(key), trigger, now)
        log.warning("[token-optimizer] could not persist checkpoint policy state for %s: %s", key, error)

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
            line = jsutil.dumps_compact(row) + "\n"
            with self._root_dir(create=True) as d:
                d.append(EVENTS_FILENAME, line)
        except (OSError, TypeError, ValueError) as exc:
            log.debug("[token-optimizer] checkpoint telemetry append failed: %s", exc)

    # ------------------------------------------------------------ reading artifacts

    def checkpoint_files(self, session_id: str) -> list[CheckpointFile]:
        """Valid manifest entries whose artifact is a safe file (manifest order)."""
        try:
            with self.session_dir_checked(session_id) as d:
                return _manifest_files(d, d.read_jsonl(MANIFEST_FILENAME, _MAX_MANIFEST_BYTES))
        except (OSError, ValueError):
            return []

    def telemetry_summary(self, days: int = 7, *, now_ms: float | None = None) -> dict[str, Any]:
        """Summary of ``checkpoint-events.jsonl`` (read whether or not telemetry is on)."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        root = self._resolved_root()
        event_log = (root if root is not None else self.paths.checkpoints) / EVENTS_FILENAME
        cutoff = now - days * _DAY_MS
        events: list[tuple[float, dict[str, Any]]] = []
        rows: list[dict[str, Any]] = []
        if root is not None:
            try:
                with self._root_dir() as d:
                    rows = d.read_jsonl(EVENTS_FILENAME)
            except OSError:
                rows = []
        for ev in rows:
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
                with self._root_dir() as rd:
                    sessions, checkpoints, policies, total_bytes = _scan_root(rd, root, issues)
            except OSError as exc:
                issues.append(f"Could not list the checkpoint root ({exc.strerror}): {root}")
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
        """Delete session-dir files older than ``max_age_days`` (mtime); drop empty dirs.

        Also settles what a killed writer left behind: a checkpoint temp file
        whose manifest row was written is renamed into place (the capture had
        committed), any other stale temp file of ours is removed (see
        :func:`token_optimizer.fsutil.stale_temps`). Each session directory is
        handled under its cross-process lock.
        """
        now = jsutil.now_ms() if now_ms is None else now_ms
        # compare in exact nanoseconds: float ms lose precision at epoch scale
        cutoff_ns = Fraction(now - max_age_days * _DAY_MS) * 1_000_000
        try:
            root = self._root_dir()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("[token-optimizer] checkpoint cleanup skipped, unsafe root %s: %s",
                        self.paths.checkpoints, exc)
            return 0
        removed = 0
        with root:
            fsutil.remove_stale_temps(root)
            try:
                names = root.listdir()
            except OSError as exc:
                log.warning("[token-optimizer] checkpoint cleanup could not list %s: %s", root.path, exc)
                return 0
            for name in names:
                try:
                    d = root.subdir(name)
                except OSError:
                    continue  # a file, a symlink or gone
                removed += _clean_and_drop_empty(root, d, name, cutoff_ns)
        return removed

    def cleanup_session(self, session_id: str, max_age_days: int = 7, *,
                        now_ms: float | None = None) -> int:
        """:meth:`cleanup_artifacts` for one session's directory only: what a session
        end pays, so it does not grow with the number of sessions on disk."""
        now = jsutil.now_ms() if now_ms is None else now_ms
        cutoff_ns = Fraction(now - max_age_days * _DAY_MS) * 1_000_000
        name = self.key_for(session_id)
        try:
            root = self._root_dir()
        except OSError:
            return 0
        with root:
            try:
                d = root.subdir(name)
            except OSError:
                return 0
            return _clean_and_drop_empty(root, d, name, cutoff_ns)

    def prune_events(self, days: int = 90, max_bytes: int = EVENTS_MAX_BYTES) -> int:
        """``checkpoint-events.jsonl``: drop unparsable rows, rows older than ``days`` and the
        oldest rows past ``max_bytes`` (the reference never prunes it). Never raises."""
        try:
            with self._root_dir() as d:
                return fsutil.prune_jsonl_by_age(d, EVENTS_FILENAME, days, max_bytes)
        except OSError:
            return 0

    def tracked_count(self) -> int:
        """Number of session states held in memory."""
        return len(self.states)


# ---------------------------------------------------------------- disk helpers


def _manifest_files(d: fsutil.CheckedDir, rows: list[dict[str, Any]]) -> list[CheckpointFile]:
    """Manifest rows whose artifact is a regular file directly in ``d`` (runtime.md §4.10)."""
    real = d.realpath
    accepted = {os.path.normpath(d.path), os.path.normpath(real)}
    out: list[CheckpointFile] = []
    for entry in rows:
        file, trigger, created = entry.get("file"), entry.get("trigger"), entry.get("createdAt")
        if not (isinstance(file, str) and file and isinstance(trigger, str) and trigger
                and isinstance(created, str) and created):
            continue
        ts = jsutil.parse_iso_ms(created)
        if math.isnan(ts):
            continue
        parent, name = os.path.split(os.path.normpath(file))
        if parent not in accepted or not name or "\0" in name:
            continue
        try:
            if not stat.S_ISREG(d.lstat(name).st_mode):
                continue
        except OSError:
            continue
        out.append(CheckpointFile(real / name, trigger, ts))
    return out


def _scan_root(rd: fsutil.CheckedDir, root: Path, issues: list[str]) -> tuple[int, int, int, int]:
    """The health scan of the checkpoint root: (sessions, checkpoints, policies, bytes)."""
    sessions = checkpoints = policies = total_bytes = 0
    for name in sorted(rd.listdir()):
        entry = root / name
        try:
            st = rd.lstat(name)
        except OSError:
            continue
        if name == EVENTS_FILENAME and stat.S_ISREG(st.st_mode):
            continue  # our own telemetry log, not a session (fixes §13.4 E)
        if not stat.S_ISDIR(st.st_mode):
            issues.append(f"Skipped unsafe checkpoint directory: {entry}")
            continue
        try:
            d = rd.subdir(name)
        except OSError:
            issues.append(f"Skipped unsafe checkpoint directory: {entry}")
            continue
        sessions += 1
        with d:
            try:
                files = sorted(d.listdir())
            except OSError as exc:
                issues.append(f"Could not list checkpoint directory ({exc.strerror}): {entry}")
                continue
            for fname in files:
                try:
                    fst = d.lstat(fname)
                except OSError:
                    continue
                if not stat.S_ISREG(fst.st_mode):
                    issues.append(f"Skipped unsafe checkpoint file: {entry / fname}")
                    continue
                total_bytes += fst.st_size
                if fname.endswith(".md"):
                    checkpoints += 1
                elif fname == STATE_FILENAME:
                    policies += 1
    return sessions, checkpoints, policies, total_bytes


def _clean_and_drop_empty(root: fsutil.CheckedDir, d: fsutil.CheckedDir, name: str,
                          cutoff_ns: Fraction) -> int:
    """Clean session directory ``d`` (``root/name``) under its lock; remove it once empty."""
    with d, d.lock():
        removed = _clean_session_dir(d, cutoff_ns)
        with contextlib.suppress(OSError):
            if not d.listdir():
                root.rmdir(name)
    return removed


def _clean_session_dir(d: fsutil.CheckedDir, cutoff_ns: Fraction) -> int:
    """Age cleanup of one session directory (caller holds its lock); returns files removed."""
    try:
        temps = fsutil.stale_temps(d)
    except OSError:
        temps = []
    if temps:
        committed: set[str] = set()
        if any(target.endswith(".md") for _tmp, target in temps):
            with contextlib.suppress(OSError):
                for row in d.read_jsonl(MANIFEST_FILENAME, _MAX_MANIFEST_BYTES):
                    fn = row.get("filename")
                    if isinstance(fn, str):
                        committed.add(fn)
        for tmp, target in temps:
            with contextlib.suppress(OSError):
                if target in committed and not d.exists(target):
                    d.rename(tmp, target)  # the capture committed (manifest row) before the kill
                else:
                    d.unlink(tmp)
    removed = 0
    try:
        files = d.listdir()
    except OSError:
        return 0
    gone: set[str] = set()
    for fname in files:
        try:
            st = d.lstat(fname)
            if stat.S_ISREG(st.st_mode) and st.st_mtime_ns < cutoff_ns:
                d.unlink(fname)
                removed += 1
                gone.add(fname)
        except OSError:
            continue
    if gone and MANIFEST_FILENAME not in gone:
        # Ours: the manifest of a long-lived session keeps growing while its old
        # checkpoints age out; rows naming a file just removed go with it (a reader
        # skips rows without a file anyway), so the manifest is bounded by the same age.
        def keep(row: dict[str, Any]) -> bool:
            fn = row.get("filename")
            return not (isinstance(fn, str) and fn in gone)
        with contextlib.suppress(OSError):
            fsutil.rewrite_jsonl(d, MANIFEST_FILENAME, keep, durable=False)
    return removed
