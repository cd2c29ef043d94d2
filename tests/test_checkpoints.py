"""Checkpoint store: formats, digest, manifest, dedup, restore ranking, path safety."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import checkpoints as cp
from token_optimizer import fsutil
from token_optimizer.checkpoints import (
    CaptureResult,
    CheckpointStore,
    semantic_digest,
    trigger_priority,
)
from token_optimizer.fsutil import StatePaths
from token_optimizer.models import Message
from token_optimizer.policy import CheckpointPolicy, PolicySettings

T0 = 1795255711922  # 2026-11-21T10:08:31.922Z
T0_ISO = "2026-11-21T10:08:31.922Z"
T0_STAMP = "2026-11-21T10-08-31-922Z"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


class SpyPolicy:
    """Wraps the real policy and records the calls the store makes."""

    def __init__(self, real: CheckpointPolicy) -> None:
        self.real = real
        self.calls: list[tuple[Any, ...]] = []

    def record_decision(self, session_id: str, trigger: str, now_ms: float | None = None) -> None:
        self.calls.append(("record", session_id, trigger, now_ms))
        self.real.record_decision(session_id, trigger, now_ms=now_ms)

    def register_capture(self, session_id: str, trigger: str, telemetry: dict[str, Any]) -> None:
        self.calls.append(("register", session_id, trigger, dict(telemetry)))
        self.real.register_capture(session_id, trigger, telemetry)

    def checkpoint_files(self, session_id: str) -> Any:
        return self.real.checkpoint_files(session_id)

    def cleanup_artifacts(self, max_age_days: int = 7) -> int:
        return self.real.cleanup_artifacts(max_age_days)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy(paths: StatePaths) -> CheckpointPolicy:
    return CheckpointPolicy(paths, PolicySettings(durable=False))


@pytest.fixture
def spy(policy: CheckpointPolicy) -> SpyPolicy:
    return SpyPolicy(policy)


@pytest.fixture
def store(paths: StatePaths, spy: SpyPolicy, clock: Clock) -> CheckpointStore:
    return CheckpointStore(paths, spy, clock=clock)  # type: ignore[arg-type]


def sdir(paths: StatePaths, sid: str) -> Path:
    return paths.checkpoints / sid


def manifest_rows(paths: StatePaths, sid: str) -> list[dict[str, Any]]:
    p = sdir(paths, sid) / "manifest.jsonl"
    return [json.loads(line) for line in p.read_text("utf-8").splitlines() if line]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


OBSERVED_V2_MESSAGES = [
    Message("user", "Please always use tabs. You must keep the API stable.\nthanks", "2025-01-01T00:00:00Z"),
    Message("assistant", "I'll refactor the parser now.\nError: ENOENT reading file\nTypeError: x is undefined\nI edited src/a.ts to fix it"),
    Message("user", "ok"),
]


# ---------------------------------------------------------------- formats


def test_v1_no_messages_byte_exact(store: CheckpointStore, paths: StatePaths) -> None:
    r = store.capture_v1("sess:1/é", None, trigger="compact", event_kind="compact-before")
    assert r == CaptureResult(sdir(paths, "sess_1__").resolve() / f"{T0_STAMP}-compact.md", "compact", False, 1)
    expected = (
        "# Session Checkpoint\n> Captured at 2026-11-21T10:08:31.922Z\n> Session: sess_1__\n"
        "> Trigger: compact\n> Messages preserved: 0\n\n## Checkpoint Summary\n\n"
        f"{cp.NO_TRANSCRIPT_NOTE}\n"
    )
    assert r.path.read_bytes() == expected.encode("utf-8")


def test_v2_observed_example_byte_exact(store: CheckpointStore, paths: StatePaths, clock: Clock) -> None:
    clock.t = 1795255711912
    r = store.capture_v2(
        "sess:1/é", OBSERVED_V2_MESSAGES, trigger="progressive-50", fill_pct=62.5, quality_score=71.5,
        model="claude-sonnet-4", tool_name="Edit", event_kind="tool-after",
    )
    assert r is not None and r.version == 2 and not r.deduplicated
    assert r.path.name == "2026-11-21T10-08-31-912Z-progressive-50.md"
    expected = """# Session Checkpoint (v2)
> Captured at 2026-11-21T10:08:31.912Z
> Session: sess_1__
> Trigger: progressive-50
> Fill: 63%
> Quality: 72/100
> Model: claude-sonnet-4
> Messages preserved: 3

## User Instructions

- Please always use tabs. You must keep the API stable.

## Key Decisions

- I'll refactor the parser now.

## Errors Encountered

```
Error: ENOENT reading file
TypeError: x is undefined
```

## File Changes

- I edited src/a.ts to fix it

## Recent Messages

### User (2025-01-01T00:00:00Z)

Please always use tabs. You must keep the API stable.
thanks

### Assistant

I'll refactor the parser now.
Error: ENOENT reading file
TypeError: x is undefined
I edited src/a.ts to fix it

### User

ok
"""
    assert r.path.read_text("utf-8") == expected


def test_v1_header_extras_roles_and_truncation(store: CheckpointStore) -> None:
    msgs = [
        Message("system", "sys prompt"),
        Message("tool", "x" * 2001, "t1"),
        Message("user", "y" * 2000),
    ]
    r = store.capture_v1(
        "abc", msgs, trigger="stop", reason="why", fill_pct=0.5, quality_score=-2.5,
        active_agents=3, write_count=4.0, write_burst_count=2, context_window=200000, model="gpt-4o",
    )
    assert r is not None
    expected = "\n".join([
        "# Session Checkpoint", f"> Captured at {T0_ISO}", "> Session: abc", "> Trigger: stop",
        "> Reason: why", "> Fill: 1%", "> Quality: -2/100", "> Active agents: 3", "> Writes seen: 4",
        "> Write burst: 2", "> Context window: 200000", "> Model: gpt-4o", "> Messages preserved: 3", "",
        "## Assistant", "", "sys prompt", "",
        "## Assistant (t1)", "", "x" * 2000 + "\n\n[...truncated]", "",
        "## User", "", "y" * 2000, "",
    ])
    assert r.path.read_text("utf-8") == expected


def test_v1_keeps_last_max_messages_but_header_counts_all(store: CheckpointStore) -> None:
    msgs = [Message("user" if i % 2 else "assistant", f"message number {i}") for i in range(25)]
    r = store.capture_v1("abc", msgs)
    assert r is not None
    text = r.path.read_text("utf-8")
    assert "> Messages preserved: 25\n" in text  # 13.4 G: the total, not the rendered count
    assert text.count("## User") + text.count("## Assistant") == 20
    assert "message number 4\n" not in text and "message number 5\n" in text


def test_v2_without_messages_uses_v1_format(store: CheckpointStore) -> None:
    r = store.capture_v2("abc", [], trigger="compact")
    assert r is not None and r.version == 1
    assert r.path.read_text("utf-8").startswith("# Session Checkpoint\n")
    assert cp.NO_TRANSCRIPT_NOTE in r.path.read_text("utf-8")


def test_v2_recent_window_is_ten_and_caps_1500_with_split_pair(store: CheckpointStore) -> None:
    msgs = [Message("user", f"hello {i}") for i in range(12)]
    msgs.append(Message("assistant", "a" * 1499 + "\U0001f600" + "tail"))
    r = store.capture_v2("abc", msgs)
    assert r is not None
    text = r.path.read_text("utf-8")
    assert text.count("### User") == 9 and text.count("### Assistant") == 1
    assert "hello 2\n" not in text and "hello 3\n" in text
    # JS slice(0, 1500) leaves a lone high surrogate, which Node writes as U+FFFD
    assert "a" * 1499 + "\ufffd\n\n[...truncated]\n" in text


# ---------------------------------------------------------------- v2 extraction


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur: str | None = None
    for line in text.split("\n"):
        if line.startswith("## "):
            cur = line[3:]
            out[cur] = []
        elif cur is not None and line:
            out[cur].append(line)
    return out


def test_v2_extraction_rules(store: CheckpointStore) -> None:
    msgs = [
        # user instructions: first matching line with 10 < len < 500, trimmed
        Message("user", "short must\n   You should run the tests first.   \nNever mind, always lint."),
        Message("user", "nothing to see here"),
        Message("user", "You should run the tests first."),  # duplicate -> dropped
        Message("user", "This don\u2019t count; I DO NOT want globals"),  # typographic apostrophe ignored, "DO NOT" matches
        # assistant: decisions / errors / file changes
        Message("assistant", "ok\nWe are USING pnpm here\nI'll also do more"),
        Message("assistant", "the error: lowercase counts\nconfusing message\ntypeerror lower does not\nfoo failed twice\nTraceback (most recent)\nextra exception"),
        Message("assistant", "x" * 300 + " failed\nENOENT"),
        Message("assistant", "edit\nI created the file src/x.py\nmodified another"),
        Message("assistant", "usingx is not a word, ReWrite neither"),
        Message("system", "I'll never be extracted: Error: nope, created file"),
        Message("tool", "Error: tool output, I edited things"),
    ]
    r = store.capture_v2("abc", msgs)
    assert r is not None
    s = _sections(r.path.read_text("utf-8"))
    assert s["User Instructions"] == [
        "- You should run the tests first.",
        "- This don\u2019t count; I DO NOT want globals",
    ]
    assert s["Key Decisions"] == ["- We are USING pnpm here"]
    assert s["Errors Encountered"] == [
        "```", "the error: lowercase counts", "foo failed twice", "Traceback (most recent)", "```",
        "```", "ENOENT", "```",
    ]
    assert s["File Changes"] == ["- I created the file src/x.py"]


def test_v2_extraction_caps_and_dedup(store: CheckpointStore) -> None:
    msgs: list[Message] = []
    for i in range(12):
        msgs.append(Message("assistant", f"I'll do step {i:02d}"))
        msgs.append(Message("assistant", f"I'll do step {i:02d}"))  # duplicates collapse
    for i in range(7):
        msgs.append(Message("assistant", f"Error: problem {i}"))
    for i in range(11):
        msgs.append(Message("user", f"always rule {i:02d}"))
    r = store.capture_v2("abc", msgs)
    assert r is not None
    s = _sections(r.path.read_text("utf-8"))
    assert s["Key Decisions"] == [f"- I'll do step {i:02d}" for i in range(10)]
    assert s["Errors Encountered"] == [x for i in range(5) for x in ("```", f"Error: problem {i}", "```")]
    assert s["User Instructions"] == [f"- always rule {i:02d}" for i in range(10)]


def test_v2_line_length_limits() -> None:
    msgs = cp._normalise_messages([
        Message("assistant", "I'll do it"),            # 10 units: too short
        Message("assistant", "I'll do it!"),           # 11: ok
        Message("assistant", "I'll " + "z" * 495),     # 500: too long
        Message("assistant", "edit " + "q" * 294),     # 299: ok for file changes
        Message("assistant", "edit " + "q" * 295),     # 300: too long
        Message("assistant", "Error: " + "e" * 292),   # 299: kept
        Message("assistant", "Error: " + "e" * 293),   # 300: dropped
        Message("assistant", "Error:"),                # errors have no minimum
    ])
    ex = cp._extract(msgs)
    assert ex.decisions == ["I'll do it!"]
    assert ex.file_changes == ["edit " + "q" * 294]
    assert ex.errors == ["Error: " + "e" * 292, "Error:"]


def test_v2_sample_is_first_3000_units() -> None:
    content = "z" * 2990 + "\nI'll decide later on"
    ex = cp._extract(cp._normalise_messages([Message("assistant", content)]))
    assert ex.decisions == []  # the decision line is cut to "I'll deci" (9 units): too short
    ex2 = cp._extract(cp._normalise_messages([Message("assistant", "z" * 2980 + "\nI'll go ahead right now please")]))
    assert ex2.decisions == ["I'll go ahead right"]


# ---------------------------------------------------------------- digest


def test_digest_spec_vector() -> None:
    d = semantic_digest("sess:1/é", None, trigger="compact", event_kind="compact-before")
    assert d.startswith("d1a430e0") and d.endswith("b1baee56")
    assert d == "d1a430e099bf0376cd7e645a854958bf9254214eccab65ffd57627e7b1baee56"


def test_digest_parts_and_number_formatting() -> None:
    msgs = [Message("user", "u" * 700, "ts1"), Message("assistant", "a")]
    content = hashlib.sha256("|".join(["user", "ts1", "u" * 600, "assistant", "", "a"]).encode()).hexdigest()
    parts = ["abc", "progressive-50", "r", "62.500", "72", "Edit", "tool-after", "2", "5", "", "200000", "m", content]
    expected = hashlib.sha256("|".join(parts).encode()).hexdigest()
    got = semantic_digest("abc", msgs, trigger="progressive-50", reason="r", fill_pct=62.5, quality_score=71.5,
                          tool_name="Edit", event_kind="tool-after", active_agents=2, write_count=5.0,
                          context_window=200000, model="m")
    assert got == expected


def test_digest_uses_last_ten_messages_only() -> None:
    base = [Message("user", f"m{i}") for i in range(12)]
    other = [Message("assistant", "different")] * 2 + base[2:]
    assert semantic_digest("s", base) == semantic_digest("s", other)
    assert semantic_digest("s", base) != semantic_digest("s", base[:-1])


def test_digest_split_pair_hashes_like_node() -> None:
    msg = Message("user", "a" * 599 + "\U0001f600")
    content = hashlib.sha256(("user||" + "a" * 599 + "\ufffd").encode()).hexdigest()
    expected = hashlib.sha256("|".join(["s", "compact", *[""] * 10, content]).encode()).hexdigest()
    assert semantic_digest("s", [msg]) == expected


def test_capture_manifest_digest_matches_vector(store: CheckpointStore, paths: StatePaths) -> None:
    store.capture("sess:1/é", None, trigger="compact", event_kind="compact-before")
    (row,) = manifest_rows(paths, "sess_1__")
    assert row["semanticDigest"] == "d1a430e099bf0376cd7e645a854958bf9254214eccab65ffd57627e7b1baee56"


# ---------------------------------------------------------------- manifest and files


def test_manifest_row_layout_and_modes(store: CheckpointStore, paths: StatePaths, clock: Clock) -> None:
    r = store.capture("abc-123", OBSERVED_V2_MESSAGES, trigger="milestone-edit-batch", fill_pct=70.3125,
                      quality_score=33, tool_name="Edit", event_kind="tool-after", model="gpt-4o")
    assert r is not None and r.version == 2
    d = sdir(paths, "abc-123")
    raw = (d / "manifest.jsonl").read_text("utf-8")
    assert raw.endswith("\n") and raw.count("\n") == 1
    digest = semantic_digest("abc-123", OBSERVED_V2_MESSAGES, trigger="milestone-edit-batch", fill_pct=70.3125,
                             quality_score=33, tool_name="Edit", event_kind="tool-after", model="gpt-4o")
    filename = f"{T0_STAMP}-milestone-edit-batch.md"
    real = os.path.realpath(d / filename)
    assert raw == (
        f'{{"file":{json.dumps(real)},"filename":"{filename}","trigger":"milestone-edit-batch","reason":null,'
        f'"semanticDigest":"{digest}","fillPct":70.3125,"qualityScore":33,"messageCount":3,'
        f'"createdAt":"{T0_ISO}"}}\n'
    )
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(paths.checkpoints).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d / filename).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "manifest.jsonl").st_mode) == 0o600


def test_trigger_sanitised_in_file_name_only(store: CheckpointStore, paths: StatePaths) -> None:
    r = store.capture("abc", None, trigger="we/ird:trig.v1 😀")
    assert r is not None
    assert r.path.name == f"{T0_STAMP}-we_ird_trig.v1___.md"
    assert manifest_rows(paths, "abc")[0]["trigger"] == "we/ird:trig.v1 😀"
    assert "> Trigger: we/ird:trig.v1 😀\n" in r.path.read_text("utf-8")


def test_register_capture_called_with_sanitised_id_and_defined_keys(store: CheckpointStore, spy: SpyPolicy) -> None:
    store.capture("a:b", [Message("user", "hi")], trigger="progressive-20", fill_pct=21.0, model="m")
    assert spy.calls == [("register", "a_b", "progressive-20", {"sessionId": "a_b", "fillPct": 21.0, "model": "m"})]


def test_telemetry_row_per_new_artifact_not_on_dedup(paths: StatePaths, clock: Clock) -> None:
    store = CheckpointStore(paths, CheckpointPolicy(paths, PolicySettings(telemetry=True, durable=False)), clock=clock)
    store.capture("sess:1/é", None, trigger="compact", event_kind="compact-before")
    store.capture("sess:1/é", None, trigger="compact", event_kind="compact-before")  # dedup: no row
    store.capture("abc-123", [Message("user", "hi there")], trigger="milestone-edit-batch", fill_pct=70.3125,
                  quality_score=33, tool_name="Edit", event_kind="tool-after", model="gpt-4o")
    rows = [json.loads(x) for x in (paths.checkpoints / "checkpoint-events.jsonl").read_text().splitlines()]
    assert [list(r) for r in rows] == [
        ["timestamp", "platform", "sessionId", "trigger", "eventKind"],
        ["timestamp", "platform", "sessionId", "trigger", "fillPct", "qualityScore", "toolName", "eventKind", "model"],
    ]
    assert rows[0]["sessionId"] == "sess_1__" and rows[1]["fillPct"] == 70.3125 and rows[1]["model"] == "gpt-4o"


def test_same_millisecond_same_trigger_overwrites(store: CheckpointStore, paths: StatePaths) -> None:
    a = store.capture("abc", [Message("user", "first")])
    b = store.capture("abc", [Message("user", "second")])
    assert a is not None and b is not None and a.path == b.path and not b.deduplicated
    assert "second" in b.path.read_text("utf-8") and "first" not in b.path.read_text("utf-8")
    assert len(manifest_rows(paths, "abc")) == 2


# ---------------------------------------------------------------- dedup


def test_dedup_records_decision_and_writes_nothing(
    store: CheckpointStore, paths: StatePaths, spy: SpyPolicy, clock: Clock, policy: CheckpointPolicy
) -> None:
    first = store.capture("s:1", OBSERVED_V2_MESSAGES, trigger="progressive-50", fill_pct=55.0)
    assert first is not None
    before = tree(paths.checkpoints)
    manifest_before = (sdir(paths, "s_1") / "manifest.jsonl").read_bytes()
    spy.calls.clear()
    clock.t = T0 + 120_000
    again = store.capture("s:1", OBSERVED_V2_MESSAGES, trigger="progressive-50", fill_pct=55.0)
    assert again == CaptureResult(first.path, "progressive-50", True, 2)
    assert tree(paths.checkpoints) == before
    assert (sdir(paths, "s_1") / "manifest.jsonl").read_bytes() == manifest_before
    assert spy.calls == [("record", "s_1", "progressive-50", T0 + 120_000)]
    state = json.loads((sdir(paths, "s_1") / "policy-state.json").read_text("utf-8"))
    assert state["lastCheckpointAt"] == T0 + 120_000 and 50 in state["capturedFillBands"]


def test_dedup_needs_same_trigger_and_compares_last_line_only(store: CheckpointStore, paths: StatePaths, clock: Clock) -> None:
    msgs = [Message("user", "hello there")]
    a = store.capture("abc", msgs, trigger="compact")
    clock.t += 1
    b = store.capture("abc", msgs, trigger="milestone-pre-fanout")
    clock.t += 1
    c = store.capture("abc", msgs, trigger="compact")  # last line is the milestone -> no dedup
    assert a and b and c and not b.deduplicated and not c.deduplicated
    assert len({a.path, b.path, c.path}) == 3
    clock.t += 1
    d = store.capture("abc", msgs, trigger="compact")
    assert d is not None and d.deduplicated and d.path == c.path


def test_dedup_entry_without_string_file_returns_none(store: CheckpointStore, paths: StatePaths, spy: SpyPolicy) -> None:
    store.capture("abc", None)
    mf = sdir(paths, "abc") / "manifest.jsonl"
    row = manifest_rows(paths, "abc")[0]
    row["file"] = 5
    mf.write_text(json.dumps(row) + "\n\n")
    spy.calls.clear()
    assert store.capture("abc", None) is None
    assert [c[0] for c in spy.calls] == ["record", "record"]  # v2 (delegating to v1), then the v1 fallback


# ---------------------------------------------------------------- restore


def _fixture_checkpoint(paths: StatePaths, sid: str, name: str, body: str, trigger: str, created: str) -> Path:
    d = sdir(paths, sid)
    fsutil.ensure_dir(d, base=paths.root)
    f = d / name
    f.write_text(body)
    with (d / "manifest.jsonl").open("a") as fh:
        fh.write(json.dumps({"file": str(f), "trigger": trigger, "createdAt": created}) + "\n")
    return f


def test_restore_from_minimal_manifest_fixture(store: CheckpointStore, paths: StatePaths) -> None:
    sid = "test-compact-1795255711922-a1b2c3"
    _fixture_checkpoint(paths, sid, "progressive-50-1795255711922.md", "# Checkpoint\nbody\n",
                        "progressive-50", "2026-11-21T10:08:31.922Z")
    assert store.restore(sid) == "# Checkpoint\nbody\n"


def test_restore_prefers_newest_then_priority(store: CheckpointStore, paths: StatePaths) -> None:
    """COMPAT D19: newest first (the reference ranked by trigger priority regardless of age)."""
    sid = "rank"
    table = [
        ("compact", "2026-11-21T10:09:00.000Z"),
        ("progressive-65", "2026-11-21T10:00:00.000Z"),
        ("progressive-20", "2026-11-21T09:00:00.000Z"),
        ("quality-80", "2026-11-21T09:00:00.000Z"),
        ("quality-40", "2026-11-21T08:00:00.000Z"),
        ("milestone-edit-batch", "2026-11-21T07:00:00.000Z"),
        ("milestone-pre-fanout", "2026-11-21T06:00:00.000Z"),
        ("milestone-pre-fanout", "2026-11-21T06:30:00.000Z"),
    ]
    for i, (trig, created) in enumerate(table):
        _fixture_checkpoint(paths, sid, f"f{i}.md", f"{trig}@{created}", trig, created)
    order = []
    for _ in table:
        text = store.restore(sid)
        assert text is not None
        order.append(text)
        trig, created = text.split("@")
        name = f"f{table.index((trig, created))}.md"
        (sdir(paths, sid) / name).unlink()  # unreadable/missing entries are skipped
    assert order == [
        "compact@2026-11-21T10:09:00.000Z",  # the newest wins
        "progressive-65@2026-11-21T10:00:00.000Z",
        "quality-80@2026-11-21T09:00:00.000Z",  # same age: priority breaks the tie
        "progressive-20@2026-11-21T09:00:00.000Z",
        "quality-40@2026-11-21T08:00:00.000Z",
        "milestone-edit-batch@2026-11-21T07:00:00.000Z",
        "milestone-pre-fanout@2026-11-21T06:30:00.000Z",
        "milestone-pre-fanout@2026-11-21T06:00:00.000Z",
    ]
    assert store.restore(sid) is None


def test_restore_prefers_the_named_checkpoint(store: CheckpointStore, paths: StatePaths) -> None:
    sid = "pref"
    old = _fixture_checkpoint(paths, sid, "a.md", "the compaction's own", "compact",
                              "2026-11-21T08:00:00.000Z")
    _fixture_checkpoint(paths, sid, "b.md", "newer band", "progressive-80", "2026-11-21T09:00:00.000Z")
    assert store.restore(sid) == "newer band"
    assert store.restore(sid, prefer=old) == "the compaction's own"
    # a path that is not one of the session's checkpoints is ignored
    assert store.restore(sid, prefer="/etc/passwd") == "newer band"
    old.unlink()
    assert store.restore(sid, prefer=old) == "newer band"


def test_trigger_priority_table() -> None:
    assert [trigger_priority(t) for t in (
        None, "", "milestone-pre-fanout", "milestone-edit-batch", "quality-80", "quality-40", "quality-x",
        "progressive-20", "progressive-80", "progressive-", "progressive--5", "compact", "session-end", "end",
        "session-start", "stop", "stop-failure", "other", "quality-1e3",
    )] == [100, 100, 1000, 950, 820, 860, 900, 780, 720, 700, 700, 400, 300, 300, 250, 200, 175, 100, 899]


def test_restore_truncation_with_surrogate_pair_at_cut(store: CheckpointStore, paths: StatePaths) -> None:
    sid = "trunc"
    _fixture_checkpoint(paths, sid, "a.md", "a" * 3999 + "\U0001f600" + "b" * 100, "compact", T0_ISO)
    assert store.restore(sid) == "a" * 3999 + "\n[... truncated]"
    _fixture_checkpoint(paths, sid, "b.md", "c" * 3998 + "\U0001f600" + "b" * 100, "milestone-pre-fanout", T0_ISO)
    assert store.restore(sid) == "c" * 3998 + "\U0001f600" + "\n[... truncated]"
    _fixture_checkpoint(paths, sid, "c.md", "d" * 3998 + "\U0001f600", "milestone-pre-fanout", "2027-01-01T00:00:00.000Z")
    assert store.restore(sid) == "d" * 3998 + "\U0001f600"  # exactly 4000 units: untouched


def test_restore_large_file(store: CheckpointStore, paths: StatePaths) -> None:
    _fixture_checkpoint(paths, "big", "a.md", "é" * 200_000, "compact", T0_ISO)
    assert store.restore("big") == "é" * 4000 + "\n[... truncated]"


def test_restore_round_trip_and_missing(store: CheckpointStore) -> None:
    assert store.restore("nobody") is None
    r = store.capture("rt", [Message("user", "keep the tabs")])
    assert r is not None
    assert store.restore("rt") == r.path.read_text("utf-8")


# ---------------------------------------------------------------- safety


HOSTILE = ["../../escape", "/etc/passwd", "..", ".", "", "a/../../b", "\x00nul", "😀", "x" * 5000, "C:\\win"]


@pytest.mark.parametrize("sid", HOSTILE)
def test_hostile_session_ids_stay_inside_root(store: CheckpointStore, paths: StatePaths, home: Path, sid: str) -> None:
    def outside() -> set[Path]:
        return {p for p in home.rglob("*")
                if not fsutil.is_within(paths.checkpoints, p) and not fsutil.is_within(p, paths.checkpoints)}

    outside_before = outside()
    r = store.capture(sid, [Message("user", "always stay inside")])
    assert r is not None
    assert fsutil.is_within(paths.checkpoints.resolve(), r.path) and r.path.parent.parent == paths.checkpoints.resolve()
    assert store.restore(sid) == r.path.read_text("utf-8")
    assert outside() == outside_before


def test_long_session_id_capped_consistently(store: CheckpointStore, paths: StatePaths) -> None:
    sid = "x" * 5000
    capped = fsutil.sanitize_checkpoint_id(sid)
    assert len(capped) == 200 and capped != "x" * 200
    r = store.capture(sid, None)
    assert r is not None and r.path.parent.name == capped
    assert f"> Session: {capped}\n" in r.path.read_text("utf-8")
    assert manifest_rows(paths, capped)[0]["semanticDigest"] == semantic_digest(sid)
    assert semantic_digest(sid) == hashlib.sha256("|".join([capped, "compact", *[""] * 10, EMPTY_SHA]).encode()).hexdigest()


def test_symlinked_session_dir_refused(store: CheckpointStore, paths: StatePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    paths.checkpoints.mkdir(parents=True)
    (paths.checkpoints / "evil").symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert store.capture("evil", [Message("user", "hello world")]) is None
    assert list(target.iterdir()) == []
    assert all(rec.getMessage().startswith("[token-optimizer] ") for rec in caplog.records)
    # a manifest placed behind the link is not followed for restore either
    (target / "x.md").write_text("secret")
    (target / "manifest.jsonl").write_text(json.dumps({"file": str(target / "x.md"), "trigger": "compact", "createdAt": T0_ISO}) + "\n")
    assert store.restore("evil") is None


def test_symlinked_checkpoint_root_refused(store: CheckpointStore, paths: StatePaths, tmp_path: Path) -> None:
    target = tmp_path / "rootlink"
    target.mkdir()
    paths.root.mkdir(parents=True)
    paths.checkpoints.symlink_to(target)
    assert store.capture("abc", None) is None
    assert list(target.iterdir()) == []


def test_symlinked_manifest_not_followed(store: CheckpointStore, paths: StatePaths, tmp_path: Path) -> None:
    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"semanticDigest":"x"}\n')
    d = sdir(paths, "abc")
    fsutil.ensure_dir(d, base=paths.root)
    (d / "manifest.jsonl").symlink_to(victim)
    r = store.capture("abc", [Message("user", "hello world")])
    assert r is not None and r.path.exists()  # artifact written; manifest append skipped
    assert victim.read_text() == '{"semanticDigest":"x"}\n'
    assert store.restore("abc") is None  # unsafe manifest -> nothing listed


def test_symlinked_artifact_target_refused(store: CheckpointStore, paths: StatePaths, tmp_path: Path) -> None:
    victim = tmp_path / "victim.md"
    victim.write_text("untouched")
    d = sdir(paths, "abc")
    fsutil.ensure_dir(d, base=paths.root)
    (d / f"{T0_STAMP}-compact.md").symlink_to(victim)
    assert store.capture("abc", [Message("user", "hello world")]) is None
    assert victim.read_text() == "untouched"
    assert not (d / "manifest.jsonl").exists()


def test_manifest_entry_pointing_outside_is_ignored(store: CheckpointStore, paths: StatePaths, tmp_path: Path) -> None:
    outside = tmp_path / "outside.md"
    outside.write_text("secret")
    d = sdir(paths, "abc")
    fsutil.ensure_dir(d, base=paths.root)
    (d / "link.md").symlink_to(outside)
    with (d / "manifest.jsonl").open("w") as fh:
        for f in (outside, d / "link.md"):
            fh.write(json.dumps({"file": str(f), "trigger": "milestone-pre-fanout", "createdAt": T0_ISO}) + "\n")
    assert store.restore("abc") is None


# ---------------------------------------------------------------- robustness


def test_capture_accepts_odd_content_and_roles(store: CheckpointStore) -> None:
    msgs: list[Any] = [
        Message("user", [{"type": "text", "text": "always block text"}, {"type": "image"}, "raw"]),  # type: ignore[arg-type]
        Message("assistant", {"k": "é"}),  # type: ignore[arg-type]
        Message("assistant", 42),  # type: ignore[arg-type]
        Message("assistant", None),  # type: ignore[arg-type]
        Message(None, "no role"),  # type: ignore[arg-type]
        {"role": "user", "content": "from a mapping", "timestamp": 5},
        Message("user", "lone \ud800 surrogate"),
        Message("\udc00", "lone surrogate role"),
    ]
    r = store.capture("odd", msgs)
    assert r is not None and r.version == 2
    text = r.path.read_text("utf-8")
    assert "always block text\nraw" in text and '{"k":"é"}' in text and "\n42\n" in text
    assert "### User\n\nfrom a mapping\n" in text and "lone \ufffd surrogate" in text
    assert text.count("### Assistant") == 5


def test_capture_never_raises_when_policy_fails(paths: StatePaths, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def register_capture(self, *a: Any) -> None:
            raise OSError("disk full")

        def record_decision(self, *a: Any, **k: Any) -> None:
            raise OSError("disk full")

        def checkpoint_files(self, sid: str) -> Any:
            raise RuntimeError("boom")

    store = CheckpointStore(paths, Broken(), clock=clock)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert store.capture("abc", [Message("user", "hi there")]) is None
        assert store.restore("abc") is None
    assert any("[token-optimizer] " in r.getMessage() for r in caplog.records)


def test_capture_falls_back_to_v1_when_v2_write_fails(
    store: CheckpointStore, paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fsutil.CheckedDir.write
    calls = {"n": 0}

    def flaky(self: fsutil.CheckedDir, name: str, data: str | bytes, mode: int = 0o600,
              **kw: bool) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("transient")
        real(self, name, data, mode, **kw)

    # the artifact is written to a temp file through the checked session directory
    monkeypatch.setattr(fsutil.CheckedDir, "write", flaky)
    r = store.capture("abc", [Message("user", "hello world")])
    assert r is not None and r.version == 1
    assert r.path.read_text("utf-8").startswith("# Session Checkpoint\n")
    assert len(manifest_rows(paths, "abc")) == 1


def test_non_string_session_id_does_not_crash(store: CheckpointStore) -> None:
    r = store.capture(123, None)  # type: ignore[arg-type]
    assert r is not None and r.path.parent.name == "123"


# ---------------------------------------------------------------- cleanup


def test_cleanup_by_mtime(store: CheckpointStore, paths: StatePaths, clock: Clock) -> None:
    old = store.capture("old", [Message("user", "old session")])
    new = store.capture("new", [Message("user", "new session")])
    assert old and new
    stale = time.time() - 8 * 86400
    for f in sdir(paths, "old").iterdir():
        os.utime(f, (stale, stale))
    os.utime(new.path, (stale, stale))
    removed = store.cleanup(7)
    # old/: artifact, manifest.jsonl, policy-state.json; new/: the artifact only
    assert removed == 4
    assert not sdir(paths, "old").exists()
    assert sdir(paths, "new").exists() and not new.path.exists()
    assert (sdir(paths, "new") / "manifest.jsonl").exists()
