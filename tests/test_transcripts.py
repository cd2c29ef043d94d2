"""Transcript parser (reference figures), incremental reader and message loader."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transcript_records import assistant, ts, user, write_jsonl

from token_optimizer import pricing
from token_optimizer.models import AgentRun, Message
from token_optimizer.transcripts import (
    SESSION_FILE_SIZE_LIMIT,
    IncrementalTranscript,
    RunAccumulator,
    extract_topic,
    extract_usage,
    load_messages_from_session_file,
    parse_session,
)

T0 = "2026-08-01T10:00:00.000Z"

pytestmark = pytest.mark.usefixtures("fresh_pricing")


NATIVE = [
    {"type": "session", "id": "sess-1", "cwd": "/proj", "timestamp": T0, "version": "2026.6.6"},
    {"type": "message", "timestamp": T0, "id": "m1", "parentId": "sess-1",
     "message": {"role": "user", "content": [{"type": "text", "text": "Refactor the auth module for me please"}]}},
    {"type": "compaction", "timestamp": "2026-08-01T10:00:02.000Z"},
    {"type": "reset"},
    {"type": "message", "timestamp": "2026-08-01T10:00:05.000Z", "id": "m2", "parentId": "m1",
     "message": {"role": "assistant", "model": "claude-opus-4-8", "content": [{"type": "text", "text": "Done."}],
                 "usage": {"inputTokens": 4200, "outputTokens": 900, "cacheReadInputTokens": 1500}}},
]


# ---------------------------------------------------------------- parse_session vectors


def test_native_session_vector(tmp_path: Path) -> None:
    run = parse_session(write_jsonl(tmp_path / "sess-1.jsonl", NATIVE), "main")
    assert run is not None
    assert run.system == "openclaw"
    assert run.session_id == "sess-1" and run.agent_name == "main" and run.project == "main"
    assert run.message_count == 2  # markers are not messages
    assert (run.tokens.input, run.tokens.output, run.tokens.cache_read, run.tokens.cache_write) == (4200, 900, 1500, 0)
    assert run.model == "opus"
    assert run.cost_usd == pytest.approx(0.04425, abs=1e-12)
    assert run.duration_seconds == 5
    assert run.topic == "Refactor the auth module for me please"
    assert run.outcome == "success"
    assert run.cache_write_1h_tokens == 0 and run.cache_write_5m_tokens == 0
    assert run.source_path == str(tmp_path / "sess-1.jsonl")


def test_legacy_top_level_type_still_parses(tmp_path: Path) -> None:
    recs = [
        {"type": "user", "timestamp": T0, "message": {"content": "hello there"}},
        {"type": "assistant", "timestamp": ts(3), "message": {"model": "claude-sonnet-4-6",
         "usage": {"input_tokens": 300, "output_tokens": 120}}},
    ]
    run = parse_session(write_jsonl(tmp_path / "legacy.jsonl", recs), "a")
    assert run is not None
    assert run.message_count == 2 and run.tokens.output == 120 and run.tokens.input == 300
    assert run.model == "sonnet"
    assert run.topic == "hello there"


def test_openai_style_usage_prices_fresh_input(tmp_path: Path) -> None:
    usage = {"input_tokens": 10000, "output_tokens": 0, "prompt_tokens_details": {"cached_tokens": 8000}}
    run = parse_session(write_jsonl(tmp_path / "o.jsonl", [user("hi"), assistant(usage, model="gpt-5.4")]), "a")
    assert run is not None
    assert run.tokens.input == 2000 and run.tokens.cache_read == 8000
    assert run.cost_usd == pytest.approx(2000 * 2.5e-6 + 8000 * 0.25e-6)


def test_request_id_dedup_takes_field_max(tmp_path: Path) -> None:
    recs = [user("q"),
            assistant({"inputTokens": 10, "outputTokens": 100}, 1, rid="r1"),
            assistant({"inputTokens": 10, "outputTokens": 300, "cacheReadInputTokens": 5}, 2, rid="r1"),
            assistant({"inputTokens": 7, "outputTokens": 1}, 3)]
    run = parse_session(write_jsonl(tmp_path / "d.jsonl", recs), "a")
    assert run is not None
    assert run.tokens.output == 301 and run.tokens.input == 17 and run.tokens.cache_read == 5
    assert run.message_count == 4  # every record still counts as a message


def test_usage_vector_nonneg_and_cache_creation() -> None:
    f = extract_usage({"inputTokens": "500", "outputTokens": -5, "cacheReadInputTokens": 1000,
                       "cache_creation": {"ephemeral_1h_input_tokens": 200}})
    assert (f.input, f.output, f.cache_read, f.cache_write, f.cw1h, f.cw5m) == (500, 0, 1000, 200, 200, 0)


def test_usage_undefined_vs_null_cache_read() -> None:
    # camelCase null and snake_case absent: "undefined" -> OpenAI style (input includes cache)
    a = extract_usage({"input_tokens": 10000, "cacheReadInputTokens": None,
                       "prompt_tokens_details": {"cached_tokens": 8000}})
    assert (a.input, a.cache_read) == (2000, 8000)
    # an explicit null in the last link is "not undefined" -> Anthropic style
    b = extract_usage({"input_tokens": 10000, "cache_read_input_tokens": None,
                       "prompt_tokens_details": {"cached_tokens": 8000}})
    assert (b.input, b.cache_read) == (10000, 8000)
    c = extract_usage({"inputTokens": float("nan"), "outputTokens": "abc", "cacheCreationInputTokens": "7"})
    assert (c.input, c.output, c.cache_write) == (0, 0, 7)


def test_cache_write_split_prices_1h_tokens(tmp_path: Path) -> None:
    usage = {"inputTokens": 0, "outputTokens": 0, "cacheCreationInputTokens": 1000,
             "cache_creation": {"ephemeral_1h_input_tokens": 600, "ephemeral_5m_input_tokens": 400}}
    run = parse_session(write_jsonl(tmp_path / "s.jsonl", [user("x"), assistant(usage)]), "a")
    assert run is not None
    assert run.cache_write_1h_tokens == 600 and run.cache_write_5m_tokens == 400
    assert run.cost_usd == pytest.approx(600 * 10e-6 + 400 * 6.25e-6)


@pytest.mark.parametrize(
    ("msgs", "out", "inp", "expected"),
    [(2, 199, 0, "abandoned"), (3, 50, 60_000, "empty"), (3, 50, 50_000, "success"), (2, 200, 0, "success")],
)
def test_outcome_rule(tmp_path: Path, msgs: int, out: int, inp: int, expected: str) -> None:
    recs: list[Any] = [user("go")]
    recs.append(assistant({"inputTokens": inp, "outputTokens": out}, 1))
    recs += [user("more", 2 + i) for i in range(msgs - 2)]
    run = parse_session(write_jsonl(tmp_path / "o.jsonl", recs), "a")
    assert run is not None and run.outcome == expected


def test_dominant_model_first_strict_max(tmp_path: Path) -> None:
    recs = [user("x"),
            assistant({"inputTokens": 100}, 1, model="claude-sonnet-4-6"),
            assistant({"inputTokens": 100}, 2, model="gpt-5.4"),
            assistant({"inputTokens": 50}, 3, model="claude-sonnet-4-6")]
    run = parse_session(write_jsonl(tmp_path / "m.jsonl", recs), "a")
    assert run is not None and run.model == "sonnet"
    tie = parse_session(write_jsonl(tmp_path / "t.jsonl", recs[:3]), "a")
    assert tie is not None and tie.model == "sonnet"  # a tie keeps the first seen


def test_unpriced_model_costs_nothing(tmp_path: Path) -> None:
    run = parse_session(write_jsonl(tmp_path / "u.jsonl", [user("x"), assistant({"inputTokens": 9000}, model="llama3")]), "a")
    assert run is not None and run.cost_usd == 0 and run.model == "llama3"
    run2 = parse_session(write_jsonl(tmp_path / "n.jsonl", [user("x")]), "a")
    assert run2 is not None and run2.model == "unknown" and run2.cost_usd == 0


def test_tools_sorted_unique_nested_only(tmp_path: Path) -> None:
    recs: list[Any] = [user("x"), assistant({}, 1, tools=("Write", "Read", "Write")),
                       {"type": "assistant", "content": [{"type": "tool_use", "name": "TopLevel"}]},
                       assistant(None, 2, tools=("Bash",))]
    run = parse_session(write_jsonl(tmp_path / "t.jsonl", recs), "a")
    assert run is not None and run.tools_used == ["Bash", "Read", "Write"]


def test_timestamps_follow_file_order(tmp_path: Path) -> None:
    recs = [user("x", 30), assistant({}, 10)]
    run = parse_session(write_jsonl(tmp_path / "t.jsonl", recs), "a")
    assert run is not None and run.duration_seconds == 0  # max(0, last - first)
    recs2 = [{"type": "session", "timestamp": "garbage"}, user("x", 5), {"type": "marker", "timestamp": ts(65)}]
    run2 = parse_session(write_jsonl(tmp_path / "t2.jsonl", recs2), "a")
    assert run2 is not None and run2.duration_seconds == 60


def test_tool_results_and_junk_lines_are_ignored(tmp_path: Path) -> None:
    recs: list[Any] = [
        "{broken json", "", "   ", "null", "5", "[1,2]", '"str"',
        {"type": "message", "message": {"role": "toolResult", "content": "big output"}},
        user("real", 1),
        "\ufeff" + json.dumps(assistant({"outputTokens": 5}, 2)),
    ]
    run = parse_session(write_jsonl(tmp_path / "j.jsonl", recs), "a")
    assert run is not None and run.message_count == 2 and run.tokens.output == 5


def test_none_cases(tmp_path: Path) -> None:
    assert parse_session(tmp_path / "missing.jsonl", "a") is None
    assert parse_session(write_jsonl(tmp_path / "e.jsonl", [{"type": "session", "timestamp": T0}]), "a") is None
    big = write_jsonl(tmp_path / "big.jsonl", [user("x")])
    with open(big, "r+b") as fh:
        fh.truncate(SESSION_FILE_SIZE_LIMIT + 1)  # sparse: cheap on disk
    assert parse_session(big, "a") is None
    it = IncrementalTranscript(big, "a")
    assert it.update() is None


def test_topic_skips_tool_result_only_user_record(tmp_path: Path) -> None:
    recs: list[Any] = [
        {"type": "user", "message": {"content": [{"type": "tool_result", "content": "x"}]}},
        {"type": "user", "message": {"content": ["Task: fix the bug. Then more", {"type": "image"}]}},
    ]
    run = parse_session(write_jsonl(tmp_path / "t.jsonl", recs), "a")
    assert run is not None and run.topic == "fix the bug"


@pytest.mark.parametrize(
    ("text", "topic"),
    [("Implement the following plan:\n\n## Add OAuth login\nmore", "Add OAuth login"),
     ("Task: fix the bug. Then more", "fix the bug"),
     (".leading dot text", ".leading dot text"),
     ("### h3 only\nline", "### h3 only"),
     ("implement the following:", ""),
     ("#\nfoo", "foo"),
     ("   ", ""),
     ("intro line\n# Heading wins\n", "Heading wins"),
     ("x" * 200, "x" * 120)],
)
def test_extract_topic(text: str, topic: str) -> None:
    assert extract_topic(text) == topic


def test_vertex_regional_tier_applies_per_request(tmp_path: Path) -> None:
    oc = tmp_path / "oc"
    (oc / "token-optimizer").mkdir(parents=True)
    (oc / "token-optimizer" / "config.json").write_text(json.dumps({"pricingTier": "vertex-regional"}))
    recs = [user("x"), assistant({"inputTokens": 1_000_000}, 1), assistant({"inputTokens": 1_000_000}, 2, model="gpt-5.4")]
    run = parse_session(write_jsonl(tmp_path / "v.jsonl", recs), "a", oc)
    assert run is not None and run.cost_usd == pytest.approx(5.0 * 1.1 + 2.5)


# ---------------------------------------------------------------- incremental reader


def same(a: AgentRun | None, b: AgentRun | None) -> bool:
    """Equal figures (the fallback 'now' timestamp of a run with no valid timestamps aside)."""
    if a is None or b is None:
        return a is b
    if a.timestamp_ms > 1.9e12:  # no record timestamp: both fell back to the parse time
        a = dataclasses.replace(a, timestamp_ms=0)
        b = dataclasses.replace(b, timestamp_ms=0)
    return a == b


def test_incremental_appends_equal_full_parse(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text("")
    it = IncrementalTranscript(p, "a", ring_size=3)
    assert it.update() is None
    chunks = [NATIVE[:2], [assistant({"inputTokens": 5, "outputTokens": 50}, 9, rid="r9")],
              [assistant({"inputTokens": 6, "outputTokens": 70}, 10, rid="r9"), user("again", 11)]]
    for chunk in chunks:
        with open(p, "a") as fh:
            for r in chunk:
                fh.write(json.dumps(r) + "\n")
        assert same(it.update(), parse_session(p, "a"))
        assert it.offset == p.stat().st_size
    run = it.current()
    assert run is not None and run.tokens.output == 70 and run.message_count == 4
    assert [m.content for m in it.recent] == ["ok", "ok", "again"]  # last three of four


def test_incremental_reads_only_the_new_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [user("a", 1), assistant({"inputTokens": 1}, 2)])
    it = IncrementalTranscript(p, "a")
    it.update()
    fed: list[bytes | str] = []
    orig = RunAccumulator.feed_line

    def spy(self: RunAccumulator, raw: bytes | str, **kw: Any) -> None:
        fed.append(raw)
        orig(self, raw, **kw)

    monkeypatch.setattr(RunAccumulator, "feed_line", spy)
    assert it.update() is not None
    assert fed == []  # nothing new, nothing parsed
    with open(p, "a") as fh:
        fh.write(json.dumps(user("b", 3)) + "\n")
    it.update()
    assert len(fed) == 1
    assert isinstance(fed[0], bytes) and b'"text": "b"' in fed[0]


def test_incremental_truncated_last_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [user("a", 1)])
    it = IncrementalTranscript(p, "a")
    it.update()
    line = json.dumps(assistant({"inputTokens": 10, "outputTokens": 500}, 4)) + "\n"
    off = it.offset
    with open(p, "a") as fh:
        fh.write(line[:20])  # half a record
    assert same(it.update(), parse_session(p, "a"))
    assert it.offset == off  # the partial line was not consumed
    run = it.current()
    assert run is not None and run.message_count == 1
    with open(p, "a") as fh:
        fh.write(line[20:-1])  # complete JSON but no newline yet
    assert same(it.update(), parse_session(p, "a"))
    run = it.current()
    assert run is not None and run.message_count == 2 and run.tokens.output == 500
    assert it.offset == off
    with open(p, "a") as fh:
        fh.write("\n")
    assert same(it.update(), parse_session(p, "a"))
    assert it.offset == p.stat().st_size
    run = it.current()
    assert run is not None and run.message_count == 2  # counted once


def test_incremental_rotated_shorter_file(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [user("a", 1), assistant({"outputTokens": 900}, 2), user("b", 3)])
    it = IncrementalTranscript(p, "a")
    it.update()
    write_jsonl(p, [user("new", 1)])  # truncated and rewritten: shorter
    assert same(it.update(), parse_session(p, "a"))
    run = it.current()
    assert run is not None and run.message_count == 1 and run.tokens.output == 0
    assert it.resets == 1


def test_incremental_replaced_file_same_length(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [user("aaaa", 1)])
    it = IncrementalTranscript(p, "a")
    it.update()
    q = write_jsonl(tmp_path / "tmp.jsonl", [user("bbbb", 1), user("more", 2)])
    os.replace(q, p)  # a new inode under the same name
    assert same(it.update(), parse_session(p, "a"))
    run = it.current()
    assert run is not None and run.topic == "bbbb" and run.message_count == 2


def test_incremental_rewritten_in_place_longer(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [user("aaaa", 1)])
    it = IncrementalTranscript(p, "a")
    it.update()
    with open(p, "r+") as fh:  # same inode, different head, longer
        fh.write(json.dumps(user("zzzz", 1)) + "\n" + json.dumps(user("more", 2)) + "\n")
    assert same(it.update(), parse_session(p, "a"))
    run = it.current()
    assert run is not None and run.topic == "zzzz"


def test_incremental_missing_file_then_created(tmp_path: Path) -> None:
    p = tmp_path / "later.jsonl"
    it = IncrementalTranscript(p, "a")
    assert it.update() is None and not it.available
    write_jsonl(p, [user("hello", 1)])
    assert same(it.update(), parse_session(p, "a"))


# ---------------------------------------------------------------- property: incremental == full


_MODELS = ["claude-opus-4-8", "claude-sonnet-4-6", "gpt-5.6-sol", "gpt-5.4", "llama3", "unknown"]


@st.composite
def records(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["user", "legacy_user", "assistant", "openai", "tool", "marker", "junk"]))
    sec = draw(st.integers(0, 3000))
    n = st.integers(0, 400_000)
    if kind == "user":
        return json.dumps(user(draw(st.text(max_size=30)), sec))
    if kind == "legacy_user":
        return json.dumps({"type": "user", "timestamp": ts(sec), "message": {"content": draw(st.text(max_size=20))}})
    if kind in ("assistant", "openai"):
        if kind == "assistant":
            usage: dict[str, Any] = {"inputTokens": draw(n), "outputTokens": draw(n),
                                     "cacheReadInputTokens": draw(n)}
            if draw(st.booleans()):
                usage["cache_creation"] = {"ephemeral_1h_input_tokens": draw(n), "ephemeral_5m_input_tokens": draw(n)}
        else:
            usage = {"input_tokens": draw(n), "output_tokens": draw(n),
                     "prompt_tokens_details": {"cached_tokens": draw(n)}}
        rid = draw(st.one_of(st.none(), st.sampled_from(["r1", "r2", "r3"])))
        tools = tuple(draw(st.lists(st.sampled_from(["Read", "Edit", "Bash"]), max_size=2)))
        return json.dumps(assistant(usage, sec, model=draw(st.sampled_from(_MODELS)), rid=rid, tools=tools))
    if kind == "tool":
        return json.dumps({"type": "message", "timestamp": ts(sec), "message": {"role": "toolResult", "content": "r"}})
    if kind == "marker":
        return json.dumps({"type": draw(st.sampled_from(["session", "compaction", "reset"])), "timestamp": ts(sec)})
    return draw(st.sampled_from(["{oops", "", "null", "  ", "[]", '{"type": "assistant"']))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(records(), min_size=1, max_size=25), cuts=st.lists(st.floats(0, 1), max_size=8),
       trailing=st.booleans())
def test_property_incremental_equals_full_parse(tmp_path: Path, lines: list[str], cuts: list[float],
                                                trailing: bool) -> None:
    data = ("\n".join(lines) + ("\n" if trailing else "")).encode()
    points = sorted({int(c * len(data)) for c in cuts} | {len(data)})
    p = tmp_path / "prop.jsonl"
    p.write_bytes(b"")
    pricing.reset_pricing_cache()
    it = IncrementalTranscript(p, "a")
    prev = 0
    for point in points:
        with open(p, "ab") as fh:
            fh.write(data[prev:point])
        prev = point
        assert same(it.update(), parse_session(p, "a"))


# ---------------------------------------------------------------- message loader


def test_load_messages_understands_both_record_styles(tmp_path: Path) -> None:
    recs: list[Any] = [
        NATIVE[0], NATIVE[1],
        {"type": "message", "message": {"role": "toolResult", "content": "tool output"}},
        {"type": "user", "timestamp": ts(3), "message": {"content": "legacy question"}},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""},
                                                      {"type": "tool_use", "name": "Read"}, {"type": "text", "text": "b"}]}},
        "{bad",
        NATIVE[4],
    ]
    msgs = load_messages_from_session_file(write_jsonl(tmp_path / "m.jsonl", recs))
    assert msgs == [
        Message("user", "Refactor the auth module for me please", T0),
        Message("user", "legacy question", ts(3)),
        Message("assistant", "a\nb", None),
        Message("assistant", "Done.", "2026-08-01T10:00:05.000Z"),
    ]
    last = load_messages_from_session_file(tmp_path / "m.jsonl", limit=1)
    assert last == [Message("assistant", "Done.", "2026-08-01T10:00:05.000Z")]


def test_load_messages_none_when_empty_or_missing(tmp_path: Path) -> None:
    assert load_messages_from_session_file(tmp_path / "nope.jsonl") is None
    assert load_messages_from_session_file(write_jsonl(tmp_path / "e.jsonl", [NATIVE[0]])) is None
