"""Savings ledger, compression telemetry, v5 switches and the ``v5`` CLI."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
from pathlib import Path

import pytest

from token_optimizer import telemetry as tmod
from token_optimizer.commands import v5 as v5cmd
from token_optimizer.commands.v5 import register_cli
from token_optimizer.fsutil import StatePaths
from token_optimizer.jsutil import iso_from_ms, now_ms
from token_optimizer.telemetry import V5_FEATURES, Telemetry

TS = "2026-11-21T10:08:47.304Z"


@pytest.fixture
def tel(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> Telemetry:
    monkeypatch.setattr(tmod, "iso_now", lambda: TS)
    return Telemetry(paths)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# ---------------------------------------------------------------- savings


def test_savings_row_matches_observed_fixture(tel: Telemetry, paths: StatePaths) -> None:
    tel.log_savings_event("fresh_session_nudge", 89000, "abc-123", "score=33 fill_pct=70.3")
    tel.log_savings_event("checkpoint_restore", 77.4, "abc-123", "queued after compact")
    expected = (
        '{"timestamp":"2026-11-21T10:08:47.304Z","event_type":"fresh_session_nudge","tokens_saved":89000,'
        '"session_id":"abc-123","detail":"score=33 fill_pct=70.3"}\n'
        '{"timestamp":"2026-11-21T10:08:47.304Z","event_type":"checkpoint_restore","tokens_saved":77,'
        '"session_id":"abc-123","detail":"queued after compact"}\n'
    )
    assert paths.savings_log.read_bytes() == expected.encode()
    assert _mode(paths.savings_log) == 0o600
    assert _mode(paths.root) == 0o700


def test_savings_rounding_nulls_and_truncation(tel: Telemetry, paths: StatePaths) -> None:
    tel.log_savings_event("a", 2.5, "", None)
    tel.log_savings_event("b", -2.5, None, "")
    tel.log_savings_event("c", float("nan"), "s", "é" * 250)
    rows = [json.loads(x) for x in paths.savings_log.read_text("utf-8").splitlines()]
    assert rows[0] == {"timestamp": TS, "event_type": "a", "tokens_saved": 3, "session_id": None, "detail": None}
    assert rows[1]["tokens_saved"] == -2 and rows[1]["session_id"] is None and rows[1]["detail"] == ""
    assert rows[2]["tokens_saved"] is None and rows[2]["detail"] == "é" * 200
    # raw UTF-8, not \u escapes
    assert "é" in paths.savings_log.read_text("utf-8")


def test_savings_never_raises(tel: Telemetry, paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    paths.savings_log.mkdir()  # a directory where the log should be
    tel.log_savings_event("x", 1, "s")


# ---------------------------------------------------------------- compression


def test_compression_row_matches_observed_fixture(tel: Telemetry, paths: StatePaths) -> None:
    ok = tel.log_compression_event("delta_read", "s:1", detail="delta +2/-1", original_text="a" * 79,
                                   compressed_text="b" * 49, verified=False, command_pattern="Read:a.ts",
                                   quality_preserved=True)
    assert ok is True
    expected = (
        '{"timestamp":"2026-11-21T10:08:47.304Z","session_id":"s:1","feature":"delta_read",'
        '"command_pattern":"Read:a.ts","original_tokens":24,"compressed_tokens":15,"compression_ratio":0.375,'
        '"quality_preserved":1,"verified":0,"detail":"delta +2/-1"}\n'
    )
    assert paths.compression_log.read_bytes() == expected.encode()
    assert _mode(paths.compression_log) == 0o600


def test_compression_row_defaults_and_flags(tel: Telemetry, paths: StatePaths) -> None:
    tel.log_compression_event("structure_map", None, original_text="", compressed_text="xyz",
                              verified=True, quality_preserved=False)
    tel.log_compression_event("x", "", detail="d" * 300, original_tokens=10, compressed_tokens=15)
    tel.log_compression_event("y", "s", quality_preserved=None)
    r1, r2, r3 = (json.loads(x) for x in paths.compression_log.read_text().splitlines())
    assert r1["session_id"] is None and r1["command_pattern"] is None and r1["detail"] is None
    assert (r1["original_tokens"], r1["compressed_tokens"], r1["compression_ratio"]) == (0, 1, 0)
    assert (r1["quality_preserved"], r1["verified"]) == (0, 1)
    assert r2["session_id"] == "" and r2["compression_ratio"] == -0.5 and len(r2["detail"]) == 200
    assert r3["quality_preserved"] == 1 and r3["verified"] == 0


def test_compression_returns_false_on_error(tel: Telemetry, paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    paths.compression_log.mkdir()
    assert tel.log_compression_event("delta_read", "s") is False


def _row(ts_ms: float, feature: str, o: int, c: int, ratio: float) -> str:
    return json.dumps({"timestamp": iso_from_ms(ts_ms), "session_id": "s", "feature": feature,
                       "command_pattern": None, "original_tokens": o, "compressed_tokens": c,
                       "compression_ratio": ratio, "quality_preserved": 1, "verified": 0, "detail": None},
                      separators=(",", ":"))


def test_summary_matches_observed_shape(tel: Telemetry, paths: StatePaths) -> None:
    now = now_ms()
    paths.root.mkdir(parents=True)
    lines = [
        _row(now - 1000, "structure_map", 20, 16, 0.2),
        "not json",
        "",
        _row(now - 2000, "delta_read", 24, 15, 0.375),
        _row(now - 40 * 86_400_000, "delta_read", 999, 1, 0.999),  # outside 30 days
        _row(now - 3000, "structure_map", 22, 18, 0.189),
    ]
    paths.compression_log.write_text("\n".join(lines) + "\n")
    summary = tel.compression_summary()
    assert json.dumps(summary, separators=(",", ":")) == (
        '{"total_events":3,"total_original_tokens":66,"total_compressed_tokens":49,"total_tokens_saved":17,'
        '"overall_ratio":0.2576,"by_feature":{"structure_map":{"events":2,"original_tokens":42,'
        '"compressed_tokens":34,"tokens_saved":8,"avg_ratio":0.1945},"delta_read":{"events":1,'
        '"original_tokens":24,"compressed_tokens":15,"tokens_saved":9,"avg_ratio":0.375}},"period_days":30}'
    )


def test_summary_empty(tel: Telemetry) -> None:
    s = tel.compression_summary(7)
    assert s == {"total_events": 0, "total_original_tokens": 0, "total_compressed_tokens": 0,
                 "total_tokens_saved": 0, "overall_ratio": 0, "by_feature": {}, "period_days": 7}


def test_prune_drops_old_and_unparsable_rows(tel: Telemetry, paths: StatePaths) -> None:
    now = now_ms()
    paths.root.mkdir(parents=True)
    fresh = _row(now - 89 * 86_400_000, "delta_read", 10, 5, 0.5)
    fresh2 = _row(now - 1000, "structure_map", 10, 5, 0.5)
    content = "\n".join([
        "  " + fresh + "  ",
        _row(now - 91 * 86_400_000, "delta_read", 10, 5, 0.5),
        "{broken",
        '{"timestamp":"yesterday-ish"}',
        "[1,2]",
        "",
        "   ",
        fresh2,
    ])
    paths.compression_log.write_text(content)
    assert tel.prune_old_events(90) == 4
    assert paths.compression_log.read_text() == fresh + "\n" + fresh2 + "\n"
    assert _mode(paths.compression_log) == 0o600
    assert sorted(os.listdir(paths.root)) == ["compression-events.jsonl"]  # no temp file left


def test_prune_all_dropped_leaves_empty_file(tel: Telemetry, paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    paths.compression_log.write_text("junk\n")
    assert tel.prune_old_events() == 1
    assert paths.compression_log.read_text() == ""


def test_prune_missing_file(tel: Telemetry, paths: StatePaths) -> None:
    assert tel.prune_old_events() == 0
    assert not paths.compression_log.exists()


# ---------------------------------------------------------------- v5 switches


def test_v5_defaults(tel: Telemetry) -> None:
    assert [f.id for f in V5_FEATURES] == ["delta_read", "structure_map_beta", "quality_nudge", "loop_detection",
                                           "bash_compression", "bash_compress_search", "verbosity_steer"]
    assert tel.is_v5_enabled("delta_read") is True
    assert tel.is_v5_enabled("structure_map_beta") is True
    assert tel.is_v5_enabled("quality_nudge") is False
    assert tel.is_v5_enabled("nope") is False
    listed = tel.list_v5()
    assert list(listed[0]) == ["id", "label", "description", "defaultEnabled", "risk", "status", "enabled"]
    assert [(f["label"], f["risk"], f["status"], f["enabled"]) for f in listed[:3]] == [
        ("Delta Mode", "low", "shipped", True),
        ("Structure Map Beta", "low", "beta", True),
        ("Quality Nudges", "medium", "deferred", False),
    ]


def test_v5_file_format_matches_observed(tel: Telemetry, paths: StatePaths) -> None:
    tel.set_v5("delta_read", False)
    tel.mark_welcome_seen("2.3.1")
    assert paths.v5_features.read_bytes() == b'{\n  "delta_read": false,\n  "welcome_2.3.1": true\n}'
    assert _mode(paths.v5_features) == 0o600
    assert tel.is_v5_enabled("delta_read") is False
    assert tel.has_seen_welcome("2.3.1") and not tel.has_seen_welcome("2.3.0")
    tel.set_v5("delta_read", True)  # existing key keeps its position
    assert paths.v5_features.read_text() == '{\n  "delta_read": true,\n  "welcome_2.3.1": true\n}'


def test_v5_deferred_and_unknown_cannot_be_set(tel: Telemetry, paths: StatePaths) -> None:
    assert tel.set_v5("loop_detection", True) is False
    assert tel.set_v5("unknown", True) is False
    assert not paths.v5_features.exists()
    paths.root.mkdir(parents=True)
    paths.v5_features.write_text('{"loop_detection": true}')
    assert tel.is_v5_enabled("loop_detection") is False


def test_v5_reread_every_query_with_js_truthiness(tel: Telemetry, paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    paths.v5_features.write_text('{"delta_read": "false", "structure_map_beta": 0}')
    assert tel.is_v5_enabled("delta_read") is True  # non-empty string is truthy
    assert tel.is_v5_enabled("structure_map_beta") is False
    paths.v5_features.write_text('{"delta_read": null}')
    assert tel.is_v5_enabled("delta_read") is False


@pytest.mark.parametrize("content", ["{corrupt", "[1]", "null", "7"])
def test_v5_corrupt_state_fails_open_and_is_kept(tel: Telemetry, paths: StatePaths, content: str) -> None:
    paths.root.mkdir(parents=True)
    paths.v5_features.write_text(content)
    assert tel.is_v5_enabled("delta_read") is True
    assert paths.v5_features.read_text() == content


# ---------------------------------------------------------------- CLI


def _run(paths: StatePaths, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="token-optimizer")
    parser.add_argument("--home")
    sub = parser.add_subparsers(dest="command")
    register_cli(sub)
    args = parser.parse_args(["--home", str(paths.root), *argv])
    out = io.StringIO()
    rc = v5cmd._cmd_v5(args, out)
    return rc, out.getvalue()


def test_cli_status_json(paths: StatePaths) -> None:
    rc, out = _run(paths, "v5", "status", "--json")
    assert rc == 0
    data = json.loads(out)
    assert [f["id"] for f in data["features"]][:2] == ["delta_read", "structure_map_beta"]
    assert data["summary"]["period_days"] == 30
    assert out.startswith('{\n  "features": [\n')


def test_cli_json_without_action_works(paths: StatePaths) -> None:
    # The reference reads the action from raw argv and fails on ``v5 --json``.
    rc, out = _run(paths, "v5", "--json")
    assert rc == 0 and json.loads(out)["summary"]["total_events"] == 0


def test_cli_enable_disable_and_text_status(paths: StatePaths) -> None:
    rc, out = _run(paths, "v5", "disable", "delta_read")
    assert rc == 0 and "Delta Mode" in out and "disabled" in out
    assert Telemetry(paths).is_v5_enabled("delta_read") is False
    rc, out = _run(paths, "v5", "list")
    assert rc == 0
    assert "[disabled]" in out and "[enabled]" in out and "[deferred]" in out
    rc, out = _run(paths, "v5", "enable", "delta_read")
    assert rc == 0 and Telemetry(paths).is_v5_enabled("delta_read") is True


def test_cli_errors_exit_1_on_stdout(paths: StatePaths) -> None:
    rc, out = _run(paths, "v5", "enable")
    assert rc == 1 and "token-optimizer v5 <info|enable|disable> <feature-id>" in out
    rc, out = _run(paths, "v5", "enable", "bogus")
    assert rc == 1 and "bogus" in out and "delta_read" in out
    rc, out = _run(paths, "v5", "enable", "loop_detection")
    assert rc == 1 and "Loop Detection" in out and not paths.v5_features.exists()
    rc, out = _run(paths, "v5", "frobnicate")
    assert rc == 1 and "frobnicate" in out and "status, info, enable, disable, welcome" in out


def test_cli_info_and_welcome(paths: StatePaths) -> None:
    rc, out = _run(paths, "v5", "info", "structure_map_beta")
    assert rc == 0 and "Structure Map Beta" in out and "beta" in out
    rc, out = _run(paths, "v5", "welcome")
    assert rc == 0 and "[ON ]" in out and "[ - ]" in out
    assert Telemetry(paths).has_seen_welcome("2.3.0")
    assert v5cmd.maybe_show_welcome(paths, io.StringIO()) is False
