"""Context windows, the per-session quality score and the fresh-session nudge.

Spec: analysis.md section 5 (5.1 windows, 5.3 grades/bands, 5.5 per-session
scorer, 5.6 nudge). Numeric results follow the reference exactly (JS
``Math.round`` via :func:`jsutil.js_round`, ``toFixed`` via
:func:`jsutil.to_fixed`); the nudge sentence wording is this project's own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from token_optimizer.jsutil import js_number, js_round, to_fixed
from token_optimizer.models import AgentRun

log = logging.getLogger("token_optimizer")

# ---------------------------------------------------------------- windows

DEFAULT_CONTEXT_WINDOW = 200_000

# Insertion order matters: the substring fallback takes the first key found.
MODEL_CONTEXT_WINDOWS: dict[str, int] = {
    "opus": 1_000_000,
    "sonnet": 1_000_000,
    "haiku": 200_000,
    "gpt-5.6": 1_050_000,
    "gpt-5.6-sol": 1_050_000,
    "gpt-5.6-terra": 1_050_000,
    "gpt-5.6-luna": 1_050_000,
    "gpt-5.4": 1_100_000,
    "gpt-5.2": 400_000,
    "gpt-5.1": 400_000,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "gpt-4.1": 1_000_000,
    "gpt-4.1-mini": 1_000_000,
    "gpt-4.1-nano": 1_000_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "gemini-3-pro": 1_000_000,
    "gemini-3-flash": 1_000_000,
    "gemini-3.1-pro": 1_000_000,
    "gemini-2.5-pro": 2_000_000,
    "gemini-2.5-flash": 1_000_000,
    "gemini-2.0-flash": 1_000_000,
    "gemini-2.0-flash-lite": 1_000_000,
    "deepseek-v3": 128_000,
    "deepseek-r1": 128_000,
    "qwen3": 128_000,
    "qwen3-mini": 128_000,
    "qwen-coder": 128_000,
    "mistral-large": 262_000,
    "mistral-small": 128_000,
    "grok-4": 131_000,
    "kimi-k2.5": 128_000,
    "minimax-2": 128_000,
    "glm-4.7": 128_000,
    "glm-4.7-flash": 128_000,
    "mimo-flash": 128_000,
    "o3-pro": 200_000,
    "local": 128_000,
}

_CLAUDE_MARKERS = ("claude", "fable", "opus", "sonnet")


def context_window_for_model(model: str | None) -> int:
    """Context window (tokens) for a raw model id; only lowercasing is applied."""
    if not model:
        return DEFAULT_CONTEXT_WINDOW
    lower = model.lower()
    exact = MODEL_CONTEXT_WINDOWS.get(lower)
    if exact is not None:
        return exact
    if any(m in lower for m in _CLAUDE_MARKERS):
        if "haiku" in lower:
            return 200_000
        if "claude-2" in lower or "claude-3" in lower:
            return 200_000
        return 1_000_000
    for key, window in MODEL_CONTEXT_WINDOWS.items():
        if key in lower:
            return window
    return DEFAULT_CONTEXT_WINDOW


# ---------------------------------------------------------------- grades and bands


def score_to_grade(score: float) -> str:
    if score >= 90:
        return "S"
    if score >= 80:
        return "A"
    if score >= 70:
        return "B"
    if score >= 55:
        return "C"
    if score >= 40:
        return "D"
    return "F"


def band_from_score(score: float) -> str:
    if score >= 80:
        return "Good"
    if score >= 60:
        return "Fair"
    if score >= 40:
        return "Needs Work"
    return "Poor"


# ---------------------------------------------------------------- per-session score


@dataclass
class SessionQuality:
    score: int
    grade: str
    band: str


def _fill_points(ratio: float) -> int:
    if ratio < 0.2:
        return 100
    if ratio < 0.4:
        return 80
    if ratio < 0.6:
        return 60
    if ratio < 0.8:
        return 30
    return 10


def _message_points(count: float) -> int:
    if count <= 20:
        return 100
    if count <= 35:
        return 80
    if count <= 50:
        return 60
    if count <= 80:
        return 30
    return 10


def _cache_points(hit: float) -> int:
    if hit > 0.5:
        return 100
    if hit > 0.3:
        return 80
    if hit > 0.1:
        return 60
    if hit > 0:
        return 40
    return 20


def _out_in_points(ratio: float) -> int:
    if ratio > 0.3:
        return 100
    if ratio > 0.15:
        return 80
    if ratio > 0.05:
        return 60
    if ratio > 0.01:
        return 30
    return 10


def _duration_points(minutes: float) -> int:
    if minutes <= 15:
        return 100
    if minutes <= 30:
        return 80
    if minutes <= 60:
        return 60
    if minutes <= 120:
        return 30
    return 10


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def score_session_quality(run: AgentRun, *, fill_ratio: float | None = None) -> SessionQuality:
    """Five-signal per-session score (analysis.md 5.5).

    ``fill_ratio`` (a 0..1 ratio) replaces ``input / window`` for the fill
    signal; the ledger passes its corrected fill (prompt incl. cache / window).
    """
    t = run.tokens
    if fill_ratio is None:
        window = context_window_for_model(run.model)
        fill = t.input / window if window else 0.0
    else:
        fill = fill_ratio
    total = t.total
    cache_hit = t.cache_read / total if total else 0.0
    out_in = t.output / t.input if t.input else 0.0
    weighted = (
        _fill_points(fill) * 0.25
        + _message_points(run.message_count) * 0.25
        + _cache_points(cache_hit) * 0.20
        + _out_in_points(out_in) * 0.15
        + _duration_points(run.duration_seconds / 60) * 0.15
    )
    score = js_round(_clamp(weighted, 0, 100))
    return SessionQuality(score=score, grade=score_to_grade(score), band=band_from_score(score))


# ---------------------------------------------------------------- fresh-session nudge

FRESH_NUDGE_QUALITY_THRESHOLD = 70
FRESH_NUDGE_MIN_FILL = 50
FRESH_NUDGE_LEAN_BLOCK_TOKENS = 1000


def fresh_session_savings_estimate(
    fill_pct: float, model: str = "", context_window: int | None = None
) -> tuple[int, int]:
    """``(saved_tokens, context_window)`` for starting over with a lean resume block."""
    if context_window and context_window > 0:
        window = int(context_window)
    else:
        window = context_window_for_model(model) or DEFAULT_CONTEXT_WINDOW
    fill = float(fill_pct)
    if math.isnan(fill):
        # JS Math.min/max propagate NaN and Math.round(NaN) is NaN; max(0, NaN - 1000) is NaN.
        # A NaN token count is useless to every caller, so report nothing saved.
        return 0, window
    safe_fill = _clamp(fill, 0, 100)
    current = js_round(safe_fill / 100 * window)
    return max(0, current - FRESH_NUDGE_LEAN_BLOCK_TOKENS), window


def _input_rate(card: Any) -> float:
    """Per-token input rate from a pricing card (dict or object, per-token or per-million)."""
    rate = card.get("input") if isinstance(card, dict) else getattr(card, "input", None)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        return 0.0
    r = float(rate)
    # The reference stores per-token rates (USD/1M / 1e6). A value this large can
    # only be a per-million figure, so convert it.
    if r >= 0.01:
        r /= 1e6
    return r


def fresh_session_savings_usd(saved_tokens: float, model: str = "") -> float:
    """API-equivalent USD of ``saved_tokens`` at the model's default input rate (0 on any problem)."""
    try:
        from token_optimizer.pricing import (  # type: ignore[import-not-found, unused-ignore]
            DEFAULT_PRICING,
            normalize_model_name,
        )

        key = normalize_model_name(model or "")
        if key is None:
            return 0.0
        card = DEFAULT_PRICING.get(key)
        if card is None:
            return 0.0
        rate = _input_rate(card)
        if not rate > 0:
            return 0.0
        return max(0.0, float(saved_tokens) * rate)
    except Exception:  # pricing absent or misbehaving: no cost clause
        return 0.0


def build_fresh_session_nudge(
    quality_score: float,
    fill_pct: float,
    has_prior: bool,
    model: str = "",
    context_window: int | None = None,
) -> str | None:
    """One-line suggestion to start a fresh session, or ``None`` when not warranted."""
    if not has_prior:
        return None
    if not (quality_score < FRESH_NUDGE_QUALITY_THRESHOLD and fill_pct >= FRESH_NUDGE_MIN_FILL):
        return None
    if not math.isfinite(fill_pct):
        return None  # an infinite fill is a caller bug; never print "Infinity%"
    saved, _window = fresh_session_savings_estimate(fill_pct, model, context_window)
    fill = js_round(fill_pct)
    saved_str = f"~{saved // 1000}K" if saved >= 1000 else f"~{saved}"
    usd = fresh_session_savings_usd(saved, model)
    cost = f", about ${to_fixed(usd, 2)} in API-equivalent input cost" if usd >= 0.01 else ""
    q = js_number(quality_score)
    return (
        f"[Token Optimizer] This session is getting long: the context window is {fill}% full "
        f"and context quality has dropped to {q}/100. "
        f"Starting a fresh session would free {saved_str} tokens (~{fill}% of the window){cost}. "
        "Nothing is lost: the active task, key decisions, touched files and tool results are "
        "checkpointed, so a new session can pick up exactly where this one stopped. "
        "To switch, open a new session and ask it to continue; the context is rebuilt at no extra cost."
    )
