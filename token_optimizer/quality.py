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

from token_optimizer.jsutil import js_number, js_round, to_fixed, utf16_slice
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
    """Per-token input rate from a pricing card (``ModelPricing`` or a mapping)."""
    rate = card.get("input") if isinstance(card, dict) else getattr(card, "input", None)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        return 0.0
    return float(rate)


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


# ---------------------------------------------------------------- aggregate score (5.2, 5.4)


@dataclass
class QualitySignal:
    name: str
    weight: float
    score: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight": self.weight,
            "score": self.score,
            "description": self.description,
        }


@dataclass
class DistortionBounds:
    theoretical_max: int
    achieved_score: int
    utilization: float
    recommendation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "theoreticalMax": self.theoretical_max,
            "achievedScore": self.achieved_score,
            "utilization": self.utilization,
            "recommendation": self.recommendation,
        }


@dataclass
class QualityReport:
    score: int
    grade: str
    band: str
    signals: list[QualitySignal]
    recommendations: list[str]
    distortion_bounds: DistortionBounds | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of the reference's ``QualityReport`` (``distortionBounds`` omitted when absent)."""
        out: dict[str, Any] = {
            "score": self.score,
            "grade": self.grade,
            "band": self.band,
            "signals": [s.to_dict() for s in self.signals],
            "recommendations": list(self.recommendations),
        }
        if self.distortion_bounds is not None:
            out["distortionBounds"] = self.distortion_bounds.to_dict()
        return out


_NO_DATA = "Not enough data yet: run a few sessions first."

_RECOMMENDATIONS: dict[str, str] = {
    "Context Fill": "Trim always-loaded context; `npx token-optimizer context` shows which components are bloated.",
    "Session Length Risk": "Turn on Smart Compaction so session state survives compaction.",
    "Model Routing": "Send heartbeat and cron work to Haiku or a flash-tier model; keep the heavy models for manual work.",
    "Empty Run Ratio": "Give heartbeat scripts an early exit so they skip runs with no pending work.",
    "Outcome Health": "Look into failed and abandoned sessions; frequent abandonment can mean too much startup overhead.",
    "Message Efficiency": "Output is small next to input; trim system prompts and cut context overhead.",
    "Compression Opportunity": "Many runs look alike; cache repeated prompts or deduplicate shared system instructions.",
}


def _window_label(window: int) -> str:
    if window >= 1_000_000:
        return js_number(window / 1e6) + "M"
    return js_number(window / 1000) + "K"


def _pct(count: int, total: int) -> float:
    return count / total * 100


def _total_overhead(context_audit: Any) -> float | None:
    if context_audit is None:
        return None
    if isinstance(context_audit, (int, float)) and not isinstance(context_audit, bool):
        return float(context_audit)
    if isinstance(context_audit, dict):
        v = context_audit.get("totalOverhead", context_audit.get("total_overhead"))
    else:
        v = getattr(context_audit, "total_overhead", getattr(context_audit, "totalOverhead", None))
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _dominant_model(runs: list[AgentRun]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.model] = counts.get(r.model, 0) + 1
    best, best_n = runs[0].model, 0
    for model, n in counts.items():  # insertion order: the first-seen model wins ties
        if n > best_n:
            best, best_n = model, n
    return best


def _fingerprint(run: AgentRun) -> str:
    tools = ",".join(sorted(run.tools_used, key=lambda t: t.encode("utf-16-be")))
    fp = "|".join(
        [run.agent_name, run.model, run.run_type, tools, "msgs:" + js_number(run.message_count)]
    )
    return utf16_slice(fp, 100)


def _compute_signals(
    runs: list[AgentRun], context_audit: Any = None, fill_ratios: list[float] | None = None
) -> list[QualitySignal]:
    n = len(runs)
    sigs: list[QualitySignal] = []

    # S1 context fill (``fill_ratios``: the corrected per-run fill, COMPAT.md D1)
    if fill_ratios is not None and len(fill_ratios) == n:
        avg_fill = sum(fill_ratios) / n if n else 0.0
    else:
        avg_fill = (
            sum(r.tokens.input / context_window_for_model(r.model) for r in runs) / n if n else 0.0
        )
    dominant_window = (
        context_window_for_model(_dominant_model(runs)) if n else DEFAULT_CONTEXT_WINDOW
    )
    overhead_tokens = _total_overhead(context_audit)
    overhead = overhead_tokens / dominant_window if overhead_tokens is not None else 0.0
    eff = max(avg_fill, overhead)
    s1 = 100 if eff < 0.2 else 80 if eff < 0.4 else 60 if eff < 0.6 else 30 if eff < 0.8 else 10
    verdict = (
        "plenty of headroom left."
        if s1 >= 70
        else "consider compacting sooner or trimming overhead."
    )
    sigs.append(
        QualitySignal(
            "Context Fill",
            0.20,
            s1,
            f"Context is on average {to_fixed(eff * 100, 0)}% full of the {_window_label(dominant_window)} window; {verdict}",
        )
    )

    if not n:
        for name, weight in (
            ("Session Length Risk", 0.16),
            ("Model Routing", 0.16),
            ("Empty Run Ratio", 0.16),
            ("Outcome Health", 0.12),
            ("Message Efficiency", 0.10),
            ("Compression Opportunity", 0.10),
        ):
            sigs.append(QualitySignal(name, weight, 0, _NO_DATA))
        return sigs

    # S2 session length
    long_pct = _pct(sum(1 for r in runs if r.message_count > 50), n)
    s2 = 100 if long_pct < 5 else 75 if long_pct < 15 else 50 if long_pct < 30 else 20
    avg_msgs = sum(r.message_count for r in runs) / n
    verdict = "sessions stay a manageable length." if s2 >= 70 else "auto-compaction would help."
    sigs.append(
        QualitySignal(
            "Session Length Risk",
            0.16,
            s2,
            f"{to_fixed(long_pct, 0)}% of sessions run past 50 messages (average {to_fixed(avg_msgs, 0)}); {verdict}",
        )
    )

    # S3 model routing
    from token_optimizer.pricing import EXPENSIVE_MODELS  # type: ignore[import-not-found, unused-ignore]

    beats = [r for r in runs if r.run_type in ("heartbeat", "cron")]
    if not beats:
        sigs.append(
            QualitySignal(
                "Model Routing",
                0.16,
                85,
                "No heartbeat or cron runs found; manual runs are not scored for routing.",
            )
        )
    else:
        mis = _pct(sum(1 for r in beats if r.model in EXPENSIVE_MODELS), len(beats))
        s3 = 100 if mis == 0 else 80 if mis < 10 else 50 if mis < 30 else 15
        verdict = (
            "routing looks right." if s3 >= 70 else "route cron/heartbeat work to Haiku or similar."
        )
        sigs.append(
            QualitySignal(
                "Model Routing",
                0.16,
                s3,
                f"{to_fixed(mis, 0)}% of heartbeat runs use an expensive model; {verdict}",
            )
        )

    # S4 empty runs
    def _is_empty(r: AgentRun) -> bool:
        return r.outcome == "empty" or (
            r.tokens.total > 5000 and r.tokens.output < 100 and r.message_count <= 4
        )

    empty_pct = _pct(sum(1 for r in runs if _is_empty(r)), n)
    s4 = 100 if empty_pct < 5 else 70 if empty_pct < 15 else 40 if empty_pct < 30 else 10
    verdict = "usage is efficient." if s4 >= 70 else "guard conditions could skip idle runs."
    sigs.append(
        QualitySignal(
            "Empty Run Ratio",
            0.16,
            s4,
            f"{to_fixed(empty_pct, 0)}% of runs loaded context but produced nothing; {verdict}",
        )
    )

    # S5 outcomes
    success_pct = _pct(sum(1 for r in runs if r.outcome == "success"), n)
    failures = sum(1 for r in runs if r.outcome == "failure")
    abandoned = sum(1 for r in runs if r.outcome == "abandoned")
    s5 = 100 if success_pct > 80 else 70 if success_pct > 60 else 40 if success_pct > 40 else 15
    verdict = "outcomes look healthy." if s5 >= 70 else "the failure/abandon rate deserves a look."
    sigs.append(
        QualitySignal(
            "Outcome Health",
            0.12,
            s5,
            f"Success rate {to_fixed(success_pct, 0)}% ({failures} failures, {abandoned} abandoned); {verdict}",
        )
    )

    # S6 message efficiency
    def _ratio(r: AgentRun) -> float:
        denom = r.tokens.input + r.tokens.output
        return r.tokens.output / denom if denom else 0.0

    avg_ratio = sum(_ratio(r) for r in runs) / n
    s6 = 100 if avg_ratio > 0.3 else 80 if avg_ratio > 0.2 else 50 if avg_ratio > 0.1 else 20
    verdict = (
        "output efficiency is good."
        if s6 >= 70
        else "input far outweighs output; trim system prompts."
    )
    sigs.append(
        QualitySignal(
            "Message Efficiency",
            0.10,
            s6,
            f"Output is {to_fixed(avg_ratio * 100, 1)}% of tokens on average; {verdict}",
        )
    )

    # S7 redundancy
    redundancy = 1 - len({_fingerprint(r) for r in runs}) / n
    s7 = 100 if redundancy < 0.05 else 80 if redundancy < 0.15 else 50 if redundancy < 0.3 else 20
    verdict = (
        "inputs are diverse."
        if s7 >= 70
        else "prompts repeat; caching or deduplication would help."
    )
    sigs.append(
        QualitySignal(
            "Compression Opportunity",
            0.10,
            s7,
            f"{to_fixed(redundancy * 100, 0)}% of runs share a near-identical profile; {verdict}",
        )
    )
    return sigs


def _weighted(signals: list[QualitySignal]) -> float:
    total_w = sum(s.weight for s in signals)
    if abs(total_w - 1) > 0.001:
        log.warning("[token-optimizer] quality weights sum to %s; normalising", js_number(total_w))
        return sum(s.score * (s.weight / total_w) for s in signals)
    acc = 0.0
    for s in signals:
        acc += s.score * s.weight
    return acc


def compute_distortion_bounds(
    runs: list[AgentRun], window: int, signals: list[QualitySignal] | None = None
) -> DistortionBounds:
    """How close the achieved score is to the best a session of this shape can reach (5.4)."""
    if not runs:
        return DistortionBounds(
            100, 0, 0, "No data yet: run some sessions to establish quality bounds."
        )
    avg_msg_tok = sum(
        (r.tokens.total / r.message_count if r.message_count > 0 else 0) for r in runs
    ) / len(runs)
    capacity = window / avg_msg_tok if avg_msg_tok > 0 else window / 1000
    floor = 1 / math.sqrt(max(1.0, capacity))
    theoretical_max = js_round(100 * (1 - floor))
    sigs = signals if signals is not None else _compute_signals(runs)
    achieved = js_round(_clamp(_weighted(sigs), 0, 100))
    u = achieved / theoretical_max if theoretical_max > 0 else 0.0
    if u > 0.85:
        rec = "Close to the practical ceiling; further gains need structural changes such as a model upgrade or a new architecture."
    elif u > 0.7:
        rec = "Good use of the available headroom; targeted prompt work and caching can close the rest."
    elif u >= 0.5:
        rec = "Moderate headroom: cut empty runs, enable compaction and tune model routing."
    else:
        rec = "Lots of headroom: start with the lowest-scoring quality signals."
    return DistortionBounds(theoretical_max, achieved, js_round(u * 1000) / 1000, rec)


def score_quality(
    runs: list[AgentRun], context_audit: Any = None, *, fill_ratios: list[float] | None = None
) -> QualityReport:
    """Seven-signal aggregate quality report over many runs (analysis.md 5.2).

    ``context_audit`` may be the audit result (mapping with ``totalOverhead`` or an
    object with ``total_overhead``) or the overhead token count itself.
    ``fill_ratios`` (one per run, prompt ÷ window) replaces the reference's
    cumulative-input fill in the Context Fill signal.
    """
    runs = list(runs)
    signals = _compute_signals(runs, context_audit, fill_ratios)
    score = js_round(_clamp(_weighted(signals), 0, 100))
    recs = [
        _RECOMMENDATIONS[s.name] for s in sorted(signals, key=lambda s: s.score) if s.score < 70
    ]
    bounds = None
    if runs:
        bounds = compute_distortion_bounds(
            runs, context_window_for_model(_dominant_model(runs)), signals
        )
    return QualityReport(
        score, score_to_grade(score), band_from_score(score), signals, recs, bounds
    )
