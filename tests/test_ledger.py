"""Event-fed ledger: parity with the parser, fill semantics, history replay, bounds, threads."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transcript_records import assistant, user, write_jsonl

from token_optimizer import bounded
from token_optimizer.events import Identity, Usage
from token_optimizer.jsutil import parse_iso_ms
from token_optimizer.ledger import Ledger, LedgerSnapshot
from token_optimizer.models import AgentRun, Message
from token_optimizer.quality import context_window_for_model, score_session_quality
from token_optimizer.transcripts import extract_usage, message_from_record, parse_session, role_of

pytestmark = pytest.mark.usefixtures("fresh_pricing")


def usage_ev(sid: str, inp: int = 0, out: int = 0, cr: int = 0, cw: int = 0, *, model: str | None = "claude-opus-4-8",
             prompt: int | None = None, budget: int | None = None, rid: str | None = None,
             ts_ms: float | None = None) -> Usage:
    return Usage(Identity(sid), model=model, input_tokens=inp, output_tokens=out, cache_read_tokens=cr,
                 cache_write_tokens=cw, prompt_tokens=prompt, context_budget=budget, request_id=rid,
                 timestamp_ms=ts_ms)


def feed_as_events(ledger: Ledger, sid: str, recs: list[dict[str, Any]]) -> None:
    """What a host adapter would send for these transcript records."""
    for r in recs:
        role = role_of(r)
        if role != "user" and role != "assistant":
            continue
        ledger.on_message(sid, message_from_record(r, role))
        if role != "assistant":
            continue
        m = r["message"]
        if m.get("usage"):
            f = extract_usage(m["usage"])
            ledger.on_usage(usage_ev(sid, int(f.input), int(f.output), int(f.cache_read), int(f.cache_write),
                                     model=m.get("model"), rid=r.get("requestId"),
                                     ts_ms=parse_iso_ms(r["timestamp"])))
        for b in m.get("content", []):
            if b.get("type") == "tool_use":
                ledger.on_tool(sid, b["name"])


def assert_same_figures(a: AgentRun, b: AgentRun) -> None:
    assert a.tokens == b.tokens
    assert a.message_count == b.message_count
    assert a.duration_seconds == b.duration_seconds
    assert a.timestamp_ms == b.timestamp_ms
    assert a.model == b.model
    assert a.outcome == b.outcome
    assert a.topic == b.topic
    assert a.tools_used == b.tools_used
    assert a.cost_usd == pytest.approx(b.cost_usd, rel=1e-9, abs=1e-12)


RECS = [
    user("Refactor the auth module", 0),
    assistant({"inputTokens": 4200, "outputTokens": 900, "cacheReadInputTokens": 1500}, 5, rid="r1", tools=("Read",)),
    assistant({"inputTokens": 4200, "outputTokens": 1200, "cacheReadInputTokens": 1500}, 6, rid="r1"),
    user("now the tests", 20),
    assistant({"input_tokens": 10_000, "output_tokens": 300, "prompt_tokens_details": {"cached_tokens": 8000}},
              30, model="gpt-5.4", tools=("Edit", "Bash")),
    assistant({"inputTokens": 300, "outputTokens": 50, "cacheCreationInputTokens": 7000}, 95, rid="r3"),
]


# ---------------------------------------------------------------- parity with the parser


def test_ledger_figures_equal_parser_for_same_records(tmp_path: Path) -> None:
    expected = parse_session(write_jsonl(tmp_path / "s1.jsonl", RECS), "main")
    assert expected is not None
    ledger = Ledger()
    feed_as_events(ledger, "s1", RECS)
    snap = ledger.snapshot("s1")
    assert snap is not None
    assert_same_figures(snap.run, expected)
    assert snap.run.tokens.output == 1200 + 300 + 50  # request r1 counted once, at its max
    assert snap.model == expected.model == "opus"
    assert snap.tool_calls == 3


_MODELS = ["claude-opus-4-8", "claude-sonnet-4-6", "gpt-5.6-sol", "gpt-5.4", "llama3"]


@st.composite
def session_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    sec = 0
    for _ in range(draw(st.integers(1, 20))):
        sec += draw(st.integers(0, 120))
        if draw(st.booleans()):
            recs.append(user(draw(st.text(min_size=1, max_size=15)), sec))
        else:
            n = st.integers(0, 300_000)
            usage = {"inputTokens": draw(n), "outputTokens": draw(n), "cacheReadInputTokens": draw(n),
                     "cacheCreationInputTokens": draw(n)}
            rid = draw(st.one_of(st.none(), st.sampled_from(["a", "b", "c"])))
            tools = tuple(draw(st.lists(st.sampled_from(["Read", "Edit"]), max_size=2)))
            recs.append(assistant(usage, sec, model=draw(st.sampled_from(_MODELS)), rid=rid, tools=tools))
    return recs


def test_whitespace_only_first_user_text_gives_no_topic(tmp_path: Path) -> None:
    recs = [user("\r", 0), user("0", 1), user("later", 2)]
    expected = parse_session(write_jsonl(tmp_path / "w.jsonl", recs), "a")
    ledger = Ledger()
    feed_as_events(ledger, "w", recs)
    snap = ledger.snapshot("w")
    assert expected is not None and snap is not None
    assert snap.run.topic == expected.topic == "0"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=session_records())
def test_property_ledger_matches_parser(tmp_path: Path, recs: list[dict[str, Any]]) -> None:
    expected = parse_session(write_jsonl(tmp_path / "p.jsonl", recs), "a")
    ledger = Ledger()
    feed_as_events(ledger, "p", recs)
    snap = ledger.snapshot("p")
    if expected is None:
        return
    assert snap is not None
    assert_same_figures(snap.run, expected)


# ---------------------------------------------------------------- fill


def test_fill_is_latest_prompt_not_cumulative_input() -> None:
    ledger = Ledger()
    for i in range(3):
        ledger.on_usage(usage_ev("s", inp=1000, out=100, cr=50_000, cw=0, rid=f"r{i}"))
    snap = ledger.snapshot("s")
    assert snap is not None
    window = context_window_for_model("claude-opus-4-8")
    assert snap.context_window == window == 1_000_000
    assert snap.run.tokens.input == 3000
    assert snap.fill_pct == pytest.approx(51_000 / window * 100)  # the reference: 3000 / window
    assert snap.prompt_tokens == 51_000
    assert snap.quality_score == score_session_quality(snap.run, fill_ratio=snap.fill_pct / 100).score


def test_fill_prefers_host_prompt_tokens() -> None:
    ledger = Ledger()
    ledger.on_usage(usage_ev("s", inp=10, cr=100, prompt=300_000))
    snap = ledger.snapshot("s")
    assert snap is not None and snap.fill_pct == pytest.approx(30.0)
    ledger.on_usage(usage_ev("s", inp=10, cr=100))  # a later call without prompt_tokens
    snap = ledger.snapshot("s")
    assert snap is not None and snap.fill_pct == pytest.approx(110 / 1_000_000 * 100)


def test_context_budget_overrides_model_window() -> None:
    ledger = Ledger()
    ledger.on_usage(usage_ev("s", inp=1000, cr=50_000, budget=100_000))
    ledger.on_usage(usage_ev("s", inp=1000, cr=60_000))  # no budget: the last one stays
    snap = ledger.snapshot("s")
    assert snap is not None
    assert snap.context_window == 100_000
    assert snap.fill_pct == pytest.approx(61.0)


def test_fill_capped_at_100() -> None:
    ledger = Ledger()
    ledger.on_usage(usage_ev("s", inp=900_000, cr=900_000))
    snap = ledger.snapshot("s")
    assert snap is not None and snap.fill_pct == 100.0


def test_window_follows_latest_raw_model() -> None:
    ledger = Ledger()
    ledger.on_usage(usage_ev("s", inp=500_000, out=10, model="claude-opus-4-8"))
    ledger.on_usage(usage_ev("s", inp=100_000, out=10, model="claude-3-5-sonnet"))
    snap = ledger.snapshot("s")
    assert snap is not None
    assert snap.model == "opus"  # dominant, as the reference's run.model
    assert snap.context_window == 200_000  # legacy Sonnet window, not the normalised 1M
    assert snap.fill_pct == pytest.approx(50.0)


def test_duplicate_request_ids_are_merged() -> None:
    ledger = Ledger()
    ledger.on_usage(usage_ev("s", inp=100, out=10, rid="x"))
    ledger.on_usage(usage_ev("s", inp=100, out=30, cr=5, rid="x"))
    ledger.on_usage(usage_ev("s", inp=1, out=1, rid="y"))
    ledger.on_usage(usage_ev("s", inp=100, out=20, rid="x"))  # late repeat of an older request
    snap = ledger.snapshot("s")
    assert snap is not None
    assert (snap.run.tokens.input, snap.run.tokens.output, snap.run.tokens.cache_read) == (101, 31, 5)
    assert snap.prompt_tokens == 1  # the late repeat does not describe the current prompt


def test_snapshot_none_until_something_known() -> None:
    ledger = Ledger()
    assert ledger.snapshot("nobody") is None
    ledger.on_tool("s", "Read")
    assert ledger.has("s") and ledger.snapshot("s") is None
    ledger.on_message("s", Message("user", "hello"))
    snap = ledger.snapshot("s")
    assert snap is not None and snap.fill_pct == 0 and snap.run.message_count == 1


# ---------------------------------------------------------------- history


def msgs(*texts: str) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]


def count(ledger: Ledger, sid: str) -> int:
    snap = ledger.snapshot(sid)
    return 0 if snap is None else snap.run.message_count


def test_on_messages_counts_only_new_tail_and_is_idempotent() -> None:
    ledger = Ledger()
    h = msgs("u1", "a1")
    ledger.on_messages("s", h)
    ledger.on_messages("s", list(h))  # replay
    assert count(ledger, "s") == 2
    ledger.on_messages("s", [*h, *msgs("u2")])
    assert count(ledger, "s") == 3
    ledger.on_messages("s", [*h, *msgs("u2")])
    assert count(ledger, "s") == 3
    snap = ledger.snapshot("s")
    assert snap is not None and snap.run.topic == "u1"


def test_on_messages_rebases_after_compaction() -> None:
    ledger = Ledger()
    full = msgs("u1", "a1", "u2", "a2", "u3")
    ledger.on_messages("s", full)
    assert count(ledger, "s") == 5
    summary = Message("user", "summary of the conversation so far")
    ledger.on_messages("s", [summary, full[-1], Message("assistant", "a3")])  # shrank; u3 still there
    assert count(ledger, "s") == 6
    ledger.on_messages("s", [Message("user", "summary 2")])  # rewritten beyond recognition
    assert count(ledger, "s") == 6
    ledger.on_messages("s", [Message("user", "summary 2"), Message("user", "u4")])
    assert count(ledger, "s") == 7
    assert [m.content for m in ledger.recent_messages("s")][-2:] == ["a3", "u4"]


def test_recent_messages_ring_is_bounded() -> None:
    ledger = Ledger(ring_size=5)
    for i in range(30):
        ledger.on_message("s", Message("user" if i % 2 == 0 else "assistant", f"m{i}"))
    ledger.on_message("s", Message("toolResult", "ignored"))
    assert [m.content for m in ledger.recent_messages("s")] == [f"m{i}" for i in range(25, 30)]
    assert ledger.recent_messages("other") == []


# ---------------------------------------------------------------- transcript ingestion


def test_ingest_transcript_equals_parser_and_reads_tail(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "sess.jsonl", RECS[:3])
    ledger = Ledger(ring_size=3)
    ledger.ingest_transcript("sess", p, "main")
    snap = ledger.snapshot("sess")
    expected = parse_session(p, "main")
    assert snap is not None and expected is not None
    assert snap.run == expected
    with open(p, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in RECS[3:]))
    ledger.ingest_transcript("sess", p, "main")
    snap = ledger.snapshot("sess")
    expected = parse_session(p, "main")
    assert snap is not None and expected is not None
    assert snap.run == expected
    # fill comes from the last request's prompt: 300 fresh + 7000 cache write
    assert snap.prompt_tokens == 7300
    assert [m.role for m in ledger.recent_messages("sess")] == ["user", "assistant", "assistant"]


def test_ingest_missing_transcript_gives_no_snapshot(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.ingest_transcript("s", tmp_path / "none.jsonl", "main")
    assert ledger.snapshot("s") is None


# ---------------------------------------------------------------- bounds, release, threads, errors


def test_bound_3000_sessions_leave_at_most_cap() -> None:
    ledger = Ledger()
    for i in range(3000):
        ledger.on_usage(usage_ev(f"s{i}", inp=10, out=1))
    assert len(ledger) <= bounded.MAX_TRACKED_SESSIONS == 2000
    assert ledger.has("s2999") and not ledger.has("s0")
    assert ledger.collections()["ledger_sessions"].evictions == 1000


def test_active_session_is_refreshed_not_evicted(small_cap: int) -> None:
    ledger = Ledger()
    ledger.on_message("keep", Message("user", "hi"))
    for i in range(25):
        ledger.on_message(f"s{i}", Message("user", "x"))
        ledger.on_usage(usage_ev("keep", inp=1, rid=f"k{i}"))
    assert len(ledger) == small_cap
    assert ledger.has("keep")


def test_release_drops_entry() -> None:
    ledger = Ledger()
    ledger.on_usage(usage_ev("s", inp=10))
    ledger.release("s")
    assert not ledger.has("s") and ledger.snapshot("s") is None
    ledger.release("s")  # twice is fine


def test_concurrent_events_are_counted_exactly() -> None:
    ledger = Ledger()

    def worker(t: int) -> None:
        for i in range(300):
            ledger.on_usage(usage_ev("s", inp=1, out=2, rid=f"{t}-{i}"))
            ledger.on_message("s", Message("assistant", "x"))
            ledger.on_tool("s", "Read")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    snap = ledger.snapshot("s")
    assert snap is not None
    assert snap.run.tokens.input == 3000 and snap.run.tokens.output == 6000
    assert snap.run.message_count == 3000 and snap.tool_calls == 3000


def test_bad_input_is_ignored_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger()
    ledger.on_usage(cast(Any, None))
    ledger.on_usage(usage_ev("", inp=5))
    junk = Usage(Identity("s"), model=cast(Any, 42), input_tokens=cast(Any, "12"), output_tokens=-4,
                 cache_read_tokens=cast(Any, float("nan")), prompt_tokens=cast(Any, "x"),
                 context_budget=cast(Any, float("inf")))
    ledger.on_usage(junk)
    ledger.on_message("s", cast(Any, object()))
    ledger.on_messages("s", cast(Any, 5))
    snap = ledger.snapshot("s")
    assert isinstance(snap, LedgerSnapshot)
    assert (snap.run.tokens.input, snap.run.tokens.output, snap.run.tokens.cache_read) == (12, 0, 0)
    assert snap.context_window == 200_000  # unknown model, no usable budget
    assert any("[token-optimizer]" in r.getMessage() for r in caplog.records)
