"""Savings ledger, compression telemetry and the v5 feature switches.

Three small stores under the state root (runtime.md §2.11, §9, §10;
analysis.md §7.1):

* ``savings-events.jsonl`` -- append-only ledger of tokens the plugin saved
  (restored checkpoints, followed hints, fresh-session nudges ...), pruned to
  90 days and :data:`SAVINGS_MAX_BYTES` at gateway start (the reference never
  prunes it).
* ``compression-events.jsonl`` -- one row per delta read / structure map /
  other compression, pruned to 90 days (and :data:`COMPRESSION_MAX_BYTES`)
  at gateway start.
* ``v5-features.json`` -- on/off state of the v5 compression features,
  re-read on every query so a CLI toggle applies to a running gateway.

Everything here is best-effort: a failed write is logged at debug level and
never reaches the caller.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from token_optimizer.fsutil import (
    CheckedDir,
    StatePaths,
    open_checked_dir,
    prune_jsonl_by_age,
    remove_stale_temps,
)
from token_optimizer.jsutil import (
    dumps_compact,
    dumps_pretty,
    iso_now,
    js_number,
    js_round,
    loads,
    now_ms,
    parse_iso_ms,
    utf16_slice,
)
from token_optimizer.token_estimate import estimate_tokens

log = logging.getLogger("token_optimizer.telemetry")

MAX_DETAIL_LEN = 200
"""Longest ``detail`` (UTF-16 code units) written to either log."""
SUMMARY_DAYS = 30
PRUNE_DAYS = 90
DAY_MS = 86_400_000
SAVINGS_MAX_BYTES = 16 << 20
"""Size cap of ``savings-events.jsonl`` at prune time (newest rows kept)."""
COMPRESSION_MAX_BYTES = 16 << 20
"""Size cap of ``compression-events.jsonl`` at prune time (newest rows kept)."""
WELCOME_VERSION = "2.3.0"
"""Version tag of the CLI's first-run welcome marker (``welcome_<version>``)."""

MEASURED = "measured"
"""Basis of a savings row whose tokens were really not sent (a blocked or delta read)."""
ESTIMATED = "estimated"
"""Basis of a savings row whose figure is a counterfactual (a nudge, a restore, a hint)."""
BASES = (MEASURED, ESTIMATED)


# ---------------------------------------------------------------- v5 catalogue


@dataclass(frozen=True)
class V5Feature:
    id: str
    label: str
    description: str
    default_enabled: bool
    risk: str
    status: str
    """``shipped``, ``beta`` or ``deferred`` (deferred ones can never be on)."""

    def to_dict(self, enabled: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "description": self.description,
            "defaultEnabled": self.default_enabled,
            "risk": self.risk,
            "status": self.status,
            "enabled": enabled,
        }


V5_FEATURES: tuple[V5Feature, ...] = (
    V5Feature("delta_read", "Delta Mode",
              "When a file the agent already read changes on disk, answer the re-read "
              "with a line diff instead of the whole file.", True, "low", "shipped"),
    V5Feature("structure_map_beta", "Structure Map Beta",
              "Summarise repeated reads of an unchanged file as a structural digest "
              "(classes, functions, imports).", True, "low", "beta"),
    V5Feature("quality_nudge", "Quality Nudges",
              "Suggest a checkpoint when the context quality score drops sharply.",
              False, "medium", "deferred"),
    V5Feature("loop_detection", "Loop Detection",
              "Notice the same tool call being repeated with identical arguments.",
              False, "medium", "deferred"),
    V5Feature("bash_compression", "Bash Output Compression",
              "Shrink the output of read-only shell commands before it enters context.",
              False, "medium", "deferred"),
    V5Feature("bash_compress_search", "Search Results Compression",
              "Group grep-style search output of 30 or more lines by file.",
              False, "medium", "deferred"),
    V5Feature("verbosity_steer", "Verbosity Steering",
              "Ask for shorter answers as the context fills (tiers at 25% and 75%).",
              False, "medium", "deferred"),
)
_V5_BY_ID: dict[str, V5Feature] = {f.id: f for f in V5_FEATURES}


def v5_feature(feature_id: str) -> V5Feature | None:
    return _V5_BY_ID.get(feature_id)


def js_truthy(v: object) -> bool:
    """JavaScript truthiness of a JSON value."""
    if v is None or v is False:
        return False
    if v is True:
        return True
    if isinstance(v, (int, float)):
        return not (v == 0 or (isinstance(v, float) and math.isnan(v)))
    if isinstance(v, str):
        return v != ""
    return True


def _round4(x: float) -> float:
    return js_round(x * 10000) / 10000


def _num_or_zero(v: object) -> float:
    """``v || 0`` for a JSON value used in a sum (non-numbers count as 0)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return 0
    if isinstance(v, float) and math.isnan(v):
        return 0
    return v


def _cut_detail(detail: str | None) -> str | None:
    if detail is None:
        return None
    return utf16_slice(detail, MAX_DETAIL_LEN)


def _key_str(v: object) -> str:
    """How JS turns a value into an object key."""
    if isinstance(v, str):
        return v
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return js_number(v)
    return dumps_compact(v)


def savings_basis(row: dict[str, Any]) -> tuple[str, float]:
    """``(basis, tokens)`` of one savings row.

    A row with our ``basis`` key says which it is. A row without one (written by
    the reference or by an earlier version) is counted as estimated: every figure
    those wrote (nudges, restores, hints, lean resumes) was a counterfactual.
    """
    basis = row.get("basis")
    if basis == ESTIMATED:
        return ESTIMATED, _num_or_zero(row.get("estimated_tokens"))
    if basis == MEASURED:
        return MEASURED, _num_or_zero(row.get("tokens_saved"))
    return ESTIMATED, _num_or_zero(row.get("tokens_saved"))


def savings_by_session(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per session (first-seen order): measured and estimated tokens, and per event type."""
    sessions: dict[str, dict[str, Any]] = {}
    for row in rows:
        sid = row.get("session_id")
        key = sid if isinstance(sid, str) and sid else "(none)"
        basis, tokens = savings_basis(row)
        s = sessions.get(key)
        if s is None:
            s = {"sessionId": key, "measuredTokens": 0, "estimatedTokens": 0, "events": 0,
                 "first": row.get("timestamp"), "last": row.get("timestamp"), "byType": {}}
            sessions[key] = s
        s["events"] += 1
        s["last"] = row.get("timestamp")
        s[f"{basis}Tokens"] += tokens
        t = s["byType"].setdefault(str(row["event_type"]), {"count": 0, "basis": basis, "tokens": 0})
        t["count"] += 1
        t["tokens"] += tokens
        if t["basis"] != basis:
            t["basis"] = "mixed"
    return list(sessions.values())


# ---------------------------------------------------------------- the stores


class Telemetry:
    """Savings ledger, compression telemetry and v5 switches under one state root."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths

    # ------------------------------------------------------------ shared

    def _root(self, *, create: bool = False) -> CheckedDir:
        """The state root itself (a real directory); every file here goes through it."""
        return open_checked_dir(self.paths.root, self.paths.root, create=create)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with self._root(create=True) as d:
            d.append(name, dumps_compact(row) + "\n")

    def _prune(self, name: str, days: float, max_bytes: int) -> int:
        """Drop unparsable rows, rows older than ``days`` and the oldest rows past ``max_bytes``."""
        try:
            with self._root() as d:
                return prune_jsonl_by_age(d, name, days, max_bytes)
        except FileNotFoundError:
            return 0
        except Exception as exc:
            log.debug("[token-optimizer] %s prune failed: %s", name, exc)
            return 0

    # ------------------------------------------------------------ savings

    def log_savings_event(self, event_type: str, tokens_saved: float, session_id: str | None,
                          detail: str | None = None, *, basis: str | None = None) -> None:
        """Append one row to ``savings-events.jsonl``; never raises.

        The row keeps the reference's five keys in order. ``basis`` adds a trailing
        ``basis`` key (the reference's readers pick the keys they know and ignore
        the rest): ``measured`` rows carry in ``tokens_saved`` tokens that were
        really not sent; ``estimated`` rows carry ``tokens_saved: 0`` and the
        estimate in a trailing ``estimated_tokens``, so a reader that sums
        ``tokens_saved`` (the reference's dashboard shows it as a measured floor)
        never counts an estimate. Without ``basis`` the row is the reference's own.
        """
        try:
            try:
                saved: int | None = js_round(float(tokens_saved))
            except (TypeError, ValueError):
                saved = None  # NaN/Infinity serialise as null in JS
            row: dict[str, Any] = {
                "timestamp": iso_now(),
                "event_type": event_type,
                "tokens_saved": 0 if basis == ESTIMATED else saved,
                "session_id": session_id if session_id else None,
                "detail": _cut_detail(detail),
            }
            if basis in BASES:
                row["basis"] = basis
                if basis == ESTIMATED:
                    row["estimated_tokens"] = saved
            self._append(self.paths.savings_log.name, row)
        except Exception as exc:  # best effort by contract
            log.debug("[token-optimizer] savings event not recorded: %s", exc)

    def read_savings_events(self, days: float | None = None) -> list[dict[str, Any]]:
        """Savings rows (objects with an ``event_type``), those of the last ``days`` days
        when given. Missing or unreadable log: ``[]``. Never raises."""
        try:
            with self._root() as d:
                rows = d.read_jsonl(self.paths.savings_log.name)
        except (OSError, ValueError):
            return []
        cutoff = now_ms() - days * DAY_MS if days is not None else None
        out: list[dict[str, Any]] = []
        for row in rows:
            if not isinstance(row.get("event_type"), str) or not row["event_type"]:
                continue
            if cutoff is not None:
                ts = parse_iso_ms(row.get("timestamp"))
                if math.isnan(ts) or ts < cutoff:
                    continue
            out.append(row)
        return out

    # ------------------------------------------------------------ compression

    def log_compression_event(
        self,
        feature: str,
        session_id: str | None,
        detail: str | None = None,
        original_text: str = "",
        compressed_text: str = "",
        verified: bool = False,
        *,
        command_pattern: str | None = None,
        original_tokens: int | None = None,
        compressed_tokens: int | None = None,
        quality_preserved: bool | None = None,
    ) -> bool:
        """Append one row to ``compression-events.jsonl``; False on any error."""
        try:
            orig = original_tokens if original_tokens is not None else estimate_tokens(original_text or "")
            comp = compressed_tokens if compressed_tokens is not None else estimate_tokens(compressed_text or "")
            ratio: float = _round4(1 - comp / orig) if orig > 0 else 0
            row = {
                "timestamp": iso_now(),
                "session_id": session_id,
                "feature": feature,
                "command_pattern": command_pattern,
                "original_tokens": orig,
                "compressed_tokens": comp,
                "compression_ratio": ratio,
                "quality_preserved": 0 if quality_preserved is False else 1,
                "verified": 1 if verified else 0,
                "detail": _cut_detail(detail),
            }
            self._append(self.paths.compression_log.name, row)
            return True
        except Exception as exc:
            log.debug("[token-optimizer] compression event not recorded: %s", exc)
            return False

    def read_recent_events(self, days: float) -> list[dict[str, Any]]:
        """Compression rows whose timestamp is within the last ``days`` days."""
        out: list[dict[str, Any]] = []
        try:
            with self._root() as d:
                rows = d.read_jsonl(self.paths.compression_log.name)
        except FileNotFoundError:
            return out
        except OSError as exc:
            log.debug("[token-optimizer] compression log unreadable: %s", exc)
            return out
        cutoff = now_ms() - days * DAY_MS
        for row in rows:
            ts = parse_iso_ms(row.get("timestamp"))
            if math.isnan(ts) or ts < cutoff:
                continue
            out.append(row)
        return out

    def compression_summary(self, days: int = SUMMARY_DAYS) -> dict[str, Any]:
        """Totals and per-feature aggregates over the recent compression rows."""
        events = self.read_recent_events(days)
        groups: dict[str, dict[str, Any]] = {}
        ratios: dict[str, list[float]] = {}
        total_o: float = 0
        total_c: float = 0
        for ev in events:
            key = _key_str(ev.get("feature"))
            o = _num_or_zero(ev.get("original_tokens"))
            c = _num_or_zero(ev.get("compressed_tokens"))
            g = groups.get(key)
            if g is None:
                g = {"events": 0, "original_tokens": 0, "compressed_tokens": 0}
                groups[key] = g
                ratios[key] = []
            g["events"] += 1
            g["original_tokens"] += o
            g["compressed_tokens"] += c
            ratios[key].append(_num_or_zero(ev.get("compression_ratio")))
            total_o += o
            total_c += c
        by_feature: dict[str, Any] = {}
        for key, g in groups.items():
            rs = ratios[key]
            by_feature[key] = {
                "events": g["events"],
                "original_tokens": g["original_tokens"],
                "compressed_tokens": g["compressed_tokens"],
                "tokens_saved": g["original_tokens"] - g["compressed_tokens"],
                "avg_ratio": _round4(sum(rs) / len(rs)) if rs else 0,
            }
        return {
            "total_events": len(events),
            "total_original_tokens": total_o,
            "total_compressed_tokens": total_c,
            "total_tokens_saved": total_o - total_c,
            "overall_ratio": _round4(1 - total_c / total_o) if total_o > 0 else 0,
            "by_feature": by_feature,
            "period_days": days,
        }

    def prune_old_events(self, days: int = PRUNE_DAYS, max_bytes: int = COMPRESSION_MAX_BYTES) -> int:
        """Compression log: drop unparsable rows, rows older than ``days`` and the
        oldest rows past ``max_bytes``; returns how many were dropped."""
        return self._prune(self.paths.compression_log.name, days, max_bytes)

    def prune_savings_events(self, days: int = PRUNE_DAYS, max_bytes: int = SAVINGS_MAX_BYTES) -> int:
        """Savings ledger: the same bound as the compression log (the reference keeps it forever)."""
        return self._prune(self.paths.savings_log.name, days, max_bytes)

    def remove_stale_temps(self) -> int:
        """Start-up: temp files of dead or wedged writers in the state root. Never raises."""
        try:
            with self._root() as d:
                return remove_stale_temps(d)
        except OSError:
            return 0

    # ------------------------------------------------------------ v5 switches

    def _read_v5_state(self) -> dict[str, Any]:
        try:
            with self._root() as d:
                text = d.read_text(self.paths.v5_features.name)
        except OSError:
            return {}
        try:
            data = loads(text)
        except ValueError:
            return {}  # fail open; the corrupt file stays for inspection
        return data if isinstance(data, dict) else {}

    def _write_v5_state(self, state: dict[str, Any]) -> None:
        try:
            with self._root(create=True) as d:
                d.atomic_write(self.paths.v5_features.name, dumps_pretty(state))
        except Exception as exc:
            log.debug("[token-optimizer] v5 feature state not saved: %s", exc)

    def is_v5_enabled(self, name: str) -> bool:
        feat = _V5_BY_ID.get(name)
        if feat is None or feat.status == "deferred":
            return False
        state = self._read_v5_state()
        if name in state:
            return js_truthy(state[name])
        return feat.default_enabled

    def set_v5(self, name: str, on: bool) -> bool:
        """Store the switch; False (nothing written) for unknown or deferred features."""
        feat = _V5_BY_ID.get(name)
        if feat is None or feat.status == "deferred":
            return False
        state = self._read_v5_state()
        state[name] = bool(on)
        self._write_v5_state(state)
        return True

    def list_v5(self) -> list[dict[str, Any]]:
        """The catalogue, in order, with each feature's effective state."""
        state = self._read_v5_state()
        out = []
        for f in V5_FEATURES:
            if f.status == "deferred":
                enabled = False
            elif f.id in state:
                enabled = js_truthy(state[f.id])
            else:
                enabled = f.default_enabled
            out.append(f.to_dict(enabled))
        return out

    def has_seen_welcome(self, version: str = WELCOME_VERSION) -> bool:
        return js_truthy(self._read_v5_state().get(f"welcome_{version}"))

    def mark_welcome_seen(self, version: str = WELCOME_VERSION) -> None:
        state = self._read_v5_state()
        state[f"welcome_{version}"] = True
        self._write_v5_state(state)
