"""Read-only views of what the runtime recorded under the state root.

* ``checkpoints/<sid>/manifest.jsonl``: one row per checkpoint captured
  (``trigger``, ``fillPct``, ``qualityScore``, ``createdAt``, ``file``), read
  through the same checked-directory code the runtime uses (no symlink is
  followed, nothing is created or written).
* ``savings-events.jsonl``: what the plugin saved, including restores
  (``event_type``, ``tokens_saved``, ``session_id``, ``timestamp``).

These feed ``quality`` (the measured fill where a checkpoint recorded one),
``validate`` (split at a recorded change) and the dashboard's "Checkpoints and
restores" view. Nothing here runs on a hook's path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from token_optimizer import fsutil, jsutil
from token_optimizer.policy import MANIFEST_FILENAME

MAX_SESSIONS = 20_000
"""Session directories read at most (newest names are not known without a stat; sorted by name)."""
MAX_MANIFEST_BYTES = 1_000_000
MAX_SAVINGS_BYTES = 20_000_000
RESTORE_EVENTS = frozenset({"checkpoint_restore"})
"""``event_type`` values that mean a checkpoint was put back into a session."""


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


@dataclass
class CheckpointRow:
    session_id: str
    trigger: str
    created_ms: float
    fill_pct: float | None
    quality_score: float | None
    file: str

    def to_json(self) -> dict[str, Any]:
        return {"sessionId": self.session_id, "trigger": self.trigger,
                "createdAt": jsutil.iso_from_ms(self.created_ms), "fillPct": self.fill_pct,
                "qualityScore": self.quality_score, "file": Path(self.file).name}


@dataclass
class SavingsRow:
    event_type: str
    tokens_saved: float
    session_id: str | None
    ts_ms: float
    detail: str | None = None


@dataclass
class StateView:
    root: Path
    checkpoints: dict[str, list[CheckpointRow]] = field(default_factory=dict)
    """Per (sanitised) session id, oldest first."""
    savings: list[SavingsRow] = field(default_factory=list)

    def latest_fill(self, session_id: str) -> float | None:
        """The newest recorded fill percentage of a session (the runtime's measured fill)."""
        from token_optimizer.fsutil import sanitize_checkpoint_id

        rows = self.checkpoints.get(sanitize_checkpoint_id(session_id)) or []
        for r in reversed(rows):
            if r.fill_pct is not None:
                return r.fill_pct
        return None

    def restores(self) -> list[SavingsRow]:
        return [s for s in self.savings if s.event_type in RESTORE_EVENTS]

    def change_times(self) -> list[tuple[float, str]]:
        """Moments the tool recorded a change, oldest first: (epoch ms, label)."""
        out: list[tuple[float, str]] = []
        firsts = [rows[0].created_ms for rows in self.checkpoints.values() if rows]
        if firsts:
            out.append((min(firsts), "first checkpoint"))
        if self.savings:
            out.append((min(s.ts_ms for s in self.savings), "first savings event"))
        return sorted(out)


def _manifest_rows(sid: str, rows: list[dict[str, Any]]) -> list[CheckpointRow]:
    out: list[CheckpointRow] = []
    for e in rows:
        trig, created, file = e.get("trigger"), e.get("createdAt"), e.get("file")
        if not (isinstance(trig, str) and trig and isinstance(created, str)):
            continue
        ts = jsutil.parse_iso_ms(created)
        if math.isnan(ts):
            continue
        out.append(CheckpointRow(sid, trig, ts, _num(e.get("fillPct")), _num(e.get("qualityScore")),
                                 file if isinstance(file, str) else ""))
    out.sort(key=lambda r: r.created_ms)
    return out


def read_checkpoints(root: Path) -> dict[str, list[CheckpointRow]]:
    out: dict[str, list[CheckpointRow]] = {}
    try:
        cdir = fsutil.open_checked_dir(root, root / "checkpoints")
    except (OSError, ValueError):
        return out
    with cdir:
        try:
            names = sorted(cdir.listdir())[:MAX_SESSIONS]
        except OSError:
            return out
        for name in names:
            try:
                with cdir.subdir(name) as d:
                    if not d.exists(MANIFEST_FILENAME):
                        continue
                    rows = d.read_jsonl(MANIFEST_FILENAME, MAX_MANIFEST_BYTES)
            except (OSError, ValueError):
                continue
            got = _manifest_rows(name, rows)
            if got:
                out[name] = got
    return out


def read_savings(root: Path) -> list[SavingsRow]:
    try:
        with fsutil.open_checked_dir(root, root) as d:
            if not d.exists("savings-events.jsonl"):
                return []
            rows = d.read_jsonl("savings-events.jsonl", MAX_SAVINGS_BYTES)
    except (OSError, ValueError):
        return []
    out: list[SavingsRow] = []
    for r in rows:
        et = r.get("event_type")
        ts = jsutil.parse_iso_ms(r.get("timestamp"))
        if not isinstance(et, str) or math.isnan(ts):
            continue
        sid = r.get("session_id")
        detail = r.get("detail")
        out.append(SavingsRow(et, _num(r.get("tokens_saved")) or 0.0,
                              sid if isinstance(sid, str) else None, ts,
                              detail if isinstance(detail, str) else None))
    out.sort(key=lambda s: s.ts_ms)
    return out


def read_state(root: Path | None) -> StateView:
    """Everything above for one state root (an empty view when it is missing)."""
    if root is None:
        return StateView(Path("."))
    return StateView(root, read_checkpoints(root), read_savings(root))


__all__ = ["CheckpointRow", "SavingsRow", "StateView", "read_state"]
