"""Quality scoring, context windows and the fresh-session nudge (analysis.md section 5)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from token_optimizer import quality as q
from token_optimizer.models import AgentRun, TokenBreakdown


def _run(**kw: object) -> AgentRun:
    base: dict[str, object] = {"session_id": "s", "agent_name": "main", "timestamp_ms": 0.0}
    base.update(kw)
    return AgentRun(**base)  # type: ignore[arg-type]


@pytest.fixture
def pricing_available(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Use the real pricing module when it exists, else a minimal stand-in with the spec's rates."""
    try:
        import token_optimizer.pricing  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        stub = types.ModuleType("token_optimizer.pricing")
        table = {
            "opus": {"input": 5.0 / 1e6},
            "sonnet": {"input": 3.0 / 1e6},
            "gpt-5.6-sol": {"input": 5.0 / 1e6},
            "gpt-5.6-terra": {"input": 2.0 / 1e6},
            "gpt-5.6-luna": {"input": 0.20 / 1e6},
        }

        def normalize(mid: str) -> str | None:
            low = mid.lower().replace("_", "-")
            for key in ("gpt-5.6-terra", "gpt-5.6-luna", "opus", "sonnet"):
                if key in low:
                    return key
            if "gpt-5.6" in low:
                return "gpt-5.6-sol"
            return None

        stub.DEFAULT_PRICING = table  # type: ignore[attr-defined]
        stub.normalize_model_name = normalize  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "token_optimizer.pricing", stub)
    yield


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("fable", 1_000_000),
        ("claude-3-5-sonnet", 200_000),
        ("claude-2.1", 200_000),
        ("claude-haiku-4-5", 200_000),
        ("claude-opus-4-8", 1_000_000),
        ("gpt-5.5", 400_000),
        ("gpt-5.5-pro", 400_000),
        ("gpt-5.3-codex", 400_000),
        ("gpt-5.4-nano", 1_100_000),
        ("gemini-2.5-flash-lite", 1_000_000),
        ("gemini-3.1-pro-preview", 1_000_000),
        ("gemini-3.5-flash", 200_000),
        ("gemini-3.1-flash-lite", 200_000),
        ("gemini-flash-lite", 200_000),
        ("GPT-5.6", 1_050_000),
        ("gpt-5.6", 1_050_000),
        ("openrouter/openai/gpt-5.6-terra-2026-07-09", 1_050_000),
        ("gpt-4o-mini", 128_000),
        ("mistral-large-2", 262_000),
        ("unknown", 200_000),
        ("", 200_000),
        (None, 200_000),
    ],
)
def test_context_window_for_model(model: str | None, window: int) -> None:
    assert q.context_window_for_model(model) == window


def test_window_substring_uses_table_order() -> None:
    # "gpt-4o" (128K) precedes "o3" (200K) in the table, so it wins the substring step
    assert q.context_window_for_model("xgpt-4o3") == 128_000
    # "gemini-2.5-pro" (2M) precedes "local" (128K)
    assert q.context_window_for_model("local/gemini-2.5-pro") == 2_000_000
    # the Claude rule runs before the substring step: "opus" inside a longer id -> 1M
    assert q.context_window_for_model("bedrock/anthropic.claude-opus-4") == 1_000_000


# ---------------------------------------------------------------- grades / bands


@pytest.mark.parametrize(
    ("score", "grade", "band"),
    [
        (100, "S", "Good"),
        (90, "S", "Good"),
        (89, "A", "Good"),
        (80, "A", "Good"),
        (79, "B", "Fair"),
        (70, "B", "Fair"),
        (69, "C", "Fair"),
        (60, "C", "Fair"),
        (59, "C", "Needs Work"),
        (55, "C", "Needs Work"),
        (54, "D", "Needs Work"),
        (40, "D", "Needs Work"),
        (39, "F", "Poor"),
        (0, "F", "Poor"),
    ],
)
def test_grade_and_band_cutoffs(score: int, grade: str, band: str) -> None:
    assert q.score_to_grade(score) == grade
    assert q.band_from_score(score) == band


# ---------------------------------------------------------------- per-session score


def test_all_zero_run_scores_71_with_js_rounding() -> None:
    # weighted 70.5: Python's round() would give 70, JS Math.round gives 71
    res = q.score_session_quality(_run())
    assert (res.score, res.grade, res.band) == (71, "B", "Fair")


def test_sonnet_run_scores_81() -> None:
    run = _run(
        model="sonnet",
        tokens=TokenBreakdown(input=100_000, output=20_000),
        message_count=10,
        duration_seconds=600,
    )
    res = q.score_session_quality(run)
    assert (res.score, res.grade, res.band) == (81, "A", "Good")


def test_fill_ratio_override_replaces_input_over_window() -> None:
    run = _run(
        model="sonnet",
        tokens=TokenBreakdown(input=100_000, output=20_000),
        message_count=10,
        duration_seconds=600,
    )
    # fill 0.85 -> 10 points instead of 100: 81 - 0.25*90 = 58.5 -> 59
    assert q.score_session_quality(run, fill_ratio=0.85).score == 59
    # a tiny corrected fill keeps the full fill points
    assert q.score_session_quality(run, fill_ratio=0.0).score == 81


def test_poor_long_session() -> None:
    run = _run(
        model="haiku",
        tokens=TokenBreakdown(input=190_000, output=100, cache_read=0),
        message_count=200,
        duration_seconds=3 * 3600,
    )
    # fill 0.95 ->10, msgs ->10, cache 0 ->20, out/in tiny ->10, duration ->10
    res = q.score_session_quality(run)
    assert res.score == js_expected(10 * 0.25 + 10 * 0.25 + 20 * 0.2 + 10 * 0.15 + 10 * 0.15)
    assert res.band == "Poor" and res.grade == "F"


def js_expected(x: float) -> int:
    import math

    return math.floor(x + 0.5)


def test_signal_band_edges() -> None:
    # messages: exactly 20 is still 100 points; 21 drops to 80
    a = q.score_session_quality(_run(message_count=20))
    b = q.score_session_quality(_run(message_count=21))
    assert a.score - b.score == 5  # 20 points * 0.25
    # cache hit exactly 0.5 is in the >0.3 band (80), not 100
    half = _run(tokens=TokenBreakdown(input=0, cache_read=50, output=50))
    res = q.score_session_quality(half)
    # fill 0 ->100, msgs ->100, cache .5 ->80, out/in (input 0) ->10, dur ->100
    assert res.score == js_expected(25 + 25 + 16 + 1.5 + 15)


# ---------------------------------------------------------------- savings estimate


def test_savings_estimate_vectors() -> None:
    assert q.fresh_session_savings_estimate(60, "sonnet") == (599_000, 1_000_000)
    assert q.fresh_session_savings_estimate(150, "x", 0) == (199_000, 200_000)
    assert q.fresh_session_savings_estimate(0.1, "haiku") == (0, 200_000)
    assert q.fresh_session_savings_estimate(62.4, "opus", 1_000_000) == (623_000, 1_000_000)
    # a positive session window wins over the model table
    assert q.fresh_session_savings_estimate(50, "sonnet", 300_000) == (149_000, 300_000)
    assert q.fresh_session_savings_estimate(-5, "sonnet") == (0, 1_000_000)


def test_savings_usd_pinned_rates(pricing_available: None) -> None:
    assert q.fresh_session_savings_usd(1_000_000, "GPT-5.6 Sol Pro") == pytest.approx(5.0)
    assert q.fresh_session_savings_usd(
        1_000_000, "openai:gpt-5.6-terra-2026-07-09"
    ) == pytest.approx(2.0)
    assert q.fresh_session_savings_usd(1_000_000, "gpt-5.6_luna") == pytest.approx(0.20)
    assert q.fresh_session_savings_usd(1_000_000, "no-such-model-zzz") == 0.0


# ---------------------------------------------------------------- nudge


def test_nudge_requires_prior_score() -> None:
    assert q.build_fresh_session_nudge(10, 90, False, "opus") is None


@pytest.mark.parametrize(("score", "fill"), [(70, 90), (85, 99), (10, 49.9), (69, 49)])
def test_nudge_conditions(score: float, fill: float) -> None:
    assert q.build_fresh_session_nudge(score, fill, True, "opus") is None


def test_nudge_fires_at_edges() -> None:
    msg = q.build_fresh_session_nudge(69, 50, True, "sonnet")
    assert msg is not None and "50%" in msg


def test_nudge_observed_values(pricing_available: None) -> None:
    msg = q.build_fresh_session_nudge(55, 62.4, True, "opus", 1_000_000)
    assert msg is not None
    assert msg.startswith("[Token Optimizer] ")
    assert "\n" not in msg
    assert "62%" in msg and "55" in msg and "~623K" in msg and "$3.12" in msg
    # order: fill, quality, reclaim, window share immediately followed by the cost clause
    i_fill, i_q, i_s = msg.index("62%"), msg.index("55"), msg.index("~623K")
    assert i_fill < i_q < i_s
    share = msg.index("(~62%", i_s)
    assert msg.index("$3.12") > share
    assert msg[msg.index(")", share) + 1 :].startswith(",")


def test_nudge_small_saving_and_no_cost_clause(pricing_available: None) -> None:
    # window 1000 tokens at 60% -> 600 current, nothing reclaimable beyond the lean block
    msg = q.build_fresh_session_nudge(40, 60, True, "no-such-model-zzz", 1000)
    assert msg is not None
    assert "~0 tokens" in msg
    assert "$" not in msg


def test_nudge_non_finite_fill_is_ignored() -> None:
    assert q.build_fresh_session_nudge(40, float("inf"), True, "opus") is None
    assert q.build_fresh_session_nudge(40, float("nan"), True, "opus") is None


# ---------------------------------------------------------------- aggregate score (5.2 / 5.4)


def test_score_quality_no_runs() -> None:
    rep = q.score_quality([])
    assert (rep.score, rep.grade, rep.band) == (20, "F", "Poor")
    assert [s.score for s in rep.signals] == [100, 0, 0, 0, 0, 0, 0]
    assert len(rep.recommendations) == 6
    assert rep.distortion_bounds is None
    assert "distortionBounds" not in rep.to_dict()
    assert sum(s.weight for s in rep.signals) == pytest.approx(1.0)


def _four_runs() -> list[AgentRun]:
    return [
        _run(
            model="sonnet",
            tokens=TokenBreakdown(input=100_000, output=20_000),
            message_count=10,
            outcome="success",
        ),
        _run(
            model="sonnet",
            tokens=TokenBreakdown(input=100_000, output=20_000),
            message_count=60,
            outcome="success",
        ),
        _run(
            model="opus",
            run_type="heartbeat",
            tokens=TokenBreakdown(input=50_000, output=10_000),
            message_count=4,
            outcome="success",
        ),
        _run(
            model="haiku",
            run_type="heartbeat",
            tokens=TokenBreakdown(input=60_000, output=50),
            message_count=3,
            outcome="empty",
        ),
    ]


def test_score_quality_four_run_vector() -> None:
    rep = q.score_quality(_four_runs(), {"totalOverhead": 30_000})
    assert (rep.score, rep.grade, rep.band) == (60, "C", "Fair")
    assert [s.score for s in rep.signals] == [100, 50, 15, 40, 70, 50, 100]
    assert [s.name for s in rep.signals] == [
        "Context Fill",
        "Session Length Risk",
        "Model Routing",
        "Empty Run Ratio",
        "Outcome Health",
        "Message Efficiency",
        "Compression Opportunity",
    ]
    assert "1M window" in rep.signals[0].description
    b = rep.distortion_bounds
    assert b is not None and (b.theoretical_max, b.achieved_score, b.utilization) == (89, 60, 0.674)
    # recommendations: signals below 70, lowest score first (stable)
    assert rep.recommendations == [
        q._RECOMMENDATIONS[n]
        for n in ("Model Routing", "Empty Run Ratio", "Session Length Risk", "Message Efficiency")
    ]
    d = rep.to_dict()
    assert d["distortionBounds"] == {
        "theoreticalMax": 89,
        "achievedScore": 60,
        "utilization": 0.674,
        "recommendation": b.recommendation,
    }


def test_overhead_dominates_fill_signal() -> None:
    runs = _four_runs()
    # 700K overhead on the dominant 1M window -> eff 0.7 -> 30 points
    rep = q.score_quality(runs, 700_000)
    assert rep.signals[0].score == 30
    assert "70%" in rep.signals[0].description


def test_no_heartbeats_routing_85_and_redundancy() -> None:
    same = [
        _run(
            model="sonnet",
            tokens=TokenBreakdown(input=1000, output=500),
            message_count=5,
            outcome="success",
        )
    ]
    rep = q.score_quality(same * 4)
    routing = rep.signals[2]
    assert routing.score == 85
    # four identical fingerprints: redundancy 0.75 -> 20
    assert rep.signals[6].score == 20


def test_distortion_bounds_without_runs_and_fallback_capacity() -> None:
    b = q.compute_distortion_bounds([], 200_000)
    assert (b.theoretical_max, b.achieved_score, b.utilization) == (100, 0, 0)
    # zero messages: capacity falls back to window/1000 = 200 -> floor 1/sqrt(200) -> max round(92.93) = 93
    b2 = q.compute_distortion_bounds([_run(model="haiku")], 200_000)
    assert b2.theoretical_max == 93
