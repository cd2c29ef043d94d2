"""``context``, ``quality``, ``drift`` and ``validate``: real behaviour on generated host stores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from audit_stores import OpenClawStore, assistant_event, user_event
from dash_fixture import build_fixture

from token_optimizer.audit.context import audit_hermes, audit_openclaw
from token_optimizer.audit.insight import mann_whitney, quality_report, session_fill, validate
from token_optimizer.audit.model import ModelSplit, SessionRow, Tokens
from token_optimizer.audit.statestore import read_state
from token_optimizer.cli import main


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def fx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    f = build_fixture(tmp_path)
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(f.state))
    return f


# ---------------------------------------------------------------- context


def test_context_reads_openclaw_json_not_config_json(tmp_path: Path) -> None:
    root = tmp_path / "oc"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"mcpServers": {"ghost": {"command": "x"}}}))
    a = audit_openclaw(root)
    assert [m.name for m in a.mcp_servers] == []  # the reference would list "ghost"
    (root / "openclaw.json").write_text('{\n  // the host writes JSON; comments are tolerated\n'
                                        '  "mcp": {"servers": {"docs": {"url": "http://127.0.0.1:9",'
                                        ' "toolFilter": {"include": ["a", "b", "c"]},},},},\n}')
    a = audit_openclaw(root)
    assert [(m.name, m.tool_count, m.tokens) for m in a.mcp_servers] == [("docs", 3, 450)]


def test_context_counts_what_is_injected_and_respects_disabled_skills(fx: Any) -> None:
    a = audit_openclaw(fx.openclaw).to_json()
    comp = {c["name"]: c for c in a["components"]}
    assert a["components"][0]["name"] == "Core system prompt (est.)"
    # SOUL.md is 10,507 chars; bootstrapMaxChars is 6,000 in the fixture: 6,000/3.8 tokens
    assert comp["SOUL.md"]["tokens"] == math.ceil(6000 / 3.8)
    assert "truncated" in comp["SOUL.md"]["detail"]
    assert comp["USER.md"]["tokens"] == math.ceil(4000 / 3.8)  # USER.md's fixed 4,000 cap
    assert a["manage"]["skills"] == {"active": ["github", "notes"], "archived": ["weather"]}
    assert a["manage"]["mcpServers"] == {"active": ["docs", "files"], "disabled": ["old"]}
    assert a["totalOverhead"] == sum(c["tokens"] for c in a["components"])
    assert any("SOUL.md is longer than the host injects" in r for r in a["recommendations"])
    assert any("files" in r and "tool filter" in r for r in a["recommendations"])


def test_context_hermes_config_yaml_skills_and_mcp(fx: Any) -> None:
    a = audit_hermes(fx.hermes).to_json()
    assert [s["name"] for s in a["skills"] if not s["isArchived"]] == ["review"]
    assert [s["name"] for s in a["skills"] if s["isArchived"]] == ["old-skill"]
    assert [(m["name"], m["toolCount"]) for m in a["mcpServers"]] == [("github", 3)]
    assert [t["name"] for t in a["toolsets"]] == ["hermes-cli"]
    names = {c["name"] for c in a["components"]}
    assert {"SOUL.md", "MEMORY.md", "Skills (1 active)", "MCP servers (1 active)"} <= names


def test_context_cli_json_and_default_root_from_env(fx: Any, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(fx.openclaw))
    monkeypatch.setenv("HERMES_HOME", str(fx.hermes))
    out = run_json(capsys, ["context", "--json"])
    assert [h["host"] for h in out["hosts"]] == ["openclaw", "hermes"]
    assert out["hosts"][0]["root"] == str(fx.openclaw)
    assert main(["context", "--openclaw-root", str(fx.openclaw / "nope"),
                 "--hermes-home", str(fx.hermes / "nope")]) == 1


# ---------------------------------------------------------------- quality


def _row(sid: str, *, inp: int, cr: int = 0, calls: int = 1, model: str = "claude-sonnet-4-6",
         started: float = 1_780_000_000_000, out: int = 500, msgs: int = 6) -> SessionRow:
    t = Tokens(inp, out, cr, 0)
    return SessionRow("openclaw", sid, "main", "main", started, started + 600_000, "x", tokens=t,
                      models=[ModelSplit(model, calls=calls, tokens=t)], model=model,
                      message_count=msgs, api_calls=calls, cost_usd=inp / 1e6)


def test_fill_is_the_mean_call_prompt_not_the_cumulative_input() -> None:
    # 40 uncached calls of 25K each: cumulative fresh input 1M (the reference's fill: 100 %)
    r = _row("s", inp=1_000_000, calls=40)
    fill, basis = session_fill(r, None)
    assert basis == "mean-call"
    assert fill == pytest.approx(25_000 / 1_000_000)
    rep, extra = quality_report([r], None)
    assert rep.signals[0].name == "Context Fill" and rep.signals[0].score == 100
    assert extra["fill"]["basis"] == {"mean-call": 1}


def test_checkpoint_fill_wins_where_recorded(fx: Any) -> None:
    state = read_state(fx.state)
    r = _row(fx.session_ids[0], inp=1000)
    assert session_fill(r, state) == (0.61, "checkpoint")  # the newest manifest row's fillPct


def test_quality_cli_json(fx: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["quality", "--json", *fx.argv()])
    assert out["signals"][0]["name"] == "Context Fill"
    assert out["sessions"] == 20
    assert out["fill"]["basis"] == {"checkpoint": 8, "mean-call": 12}
    assert out["grade"] in "SABCDF" and 0 <= out["score"] <= 100


# ---------------------------------------------------------------- drift


def test_drift_json_without_snapshot_says_so(fx: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["drift", "--json", *fx.argv()])
    assert out["hasDrift"] is False and out["snapshotDate"] == "none"
    assert "--snapshot" in out["hint"]


def test_drift_reports_added_skill_grown_file_and_removed_server(fx: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    saved = run_json(capsys, ["drift", "--snapshot", "--json", *fx.argv()])
    assert Path(saved["saved"]).is_file()
    assert run_json(capsys, ["drift", "--json", *fx.argv()])["hasDrift"] is False
    skill = fx.openclaw / "skills" / "deploy" / "SKILL.md"
    skill.parent.mkdir(parents=True)
    skill.write_text("---\nname: deploy\ndescription: Ship it.\n---\n")
    (fx.hermes / "SOUL.md").write_text("You are Hermes. " * 200)
    cfg = json.loads((fx.openclaw / "openclaw.json").read_text())
    del cfg["mcp"]["servers"]["docs"]
    (fx.openclaw / "openclaw.json").write_text(json.dumps(cfg))
    out = run_json(capsys, ["drift", "--json", *fx.argv()])
    got = {(c["host"], c["component"], c["type"], c["details"].split(" ")[0]) for c in out["changes"]}
    assert ("openclaw", "skill", "added", "deploy") in got
    assert ("openclaw", "MCP server", "removed", "docs") in got
    assert ("hermes", "SOUL.md", "changed", "grew") in got
    assert out["hasDrift"] is True


def test_two_snapshots_on_one_day_are_both_kept(fx: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    run_json(capsys, ["drift", "--snapshot", "--json", *fx.argv()])
    time.sleep(1.1)
    run_json(capsys, ["drift", "--snapshot", "--json", *fx.argv()])
    assert len(list((fx.state / "snapshots").glob("snapshot-*.json"))) == 2


def test_snapshots_are_capped_to_the_newest(fx: Any, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from token_optimizer.audit import insight as imod

    assert imod.SNAPSHOT_KEEP == 50
    monkeypatch.setattr(imod, "SNAPSHOT_KEEP", 3)
    snaps = fx.state / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    old = [f"snapshot-2020-01-0{i}T000000Z.json" for i in range(1, 6)]
    for n in old:
        (snaps / n).write_text('{"capturedAt": "2020-01-01T00:00:00.000Z"}')
    (snaps / "notes.txt").write_text("mine")
    saved = Path(run_json(capsys, ["drift", "--snapshot", "--json", *fx.argv()])["saved"])
    kept = {p.name for p in snaps.iterdir()}
    assert kept == {*old[-2:], saved.name, "notes.txt"}  # the new one plus the two newest old ones


# ---------------------------------------------------------------- validate


def test_mann_whitney_reference_values() -> None:
    assert mann_whitney([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    z, p = mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])  # fully separated, n = 5 + 5
    assert z == pytest.approx(-2.611, abs=1e-3) and p == pytest.approx(0.00902, abs=1e-4)
    assert mann_whitney([], [1.0]) == (0.0, 1.0)


def test_validate_verdicts_and_sample_sizes() -> None:
    day = 86_400_000
    before = [_row(f"b{i}", inp=200_000 + i * 1000, started=1_780_000_000_000 + i * 3_600_000) for i in range(8)]
    after = [_row(f"a{i}", inp=20_000 + i * 1000, started=1_780_000_000_000 + 3 * day + i * 3_600_000)
             for i in range(8)]
    res = validate(before + after, None, at_ms=1_780_000_000_000 + 2 * day, at_label="the fix")
    m = {x["metric"]: x for x in res["metrics"]}
    assert m["tokens"]["verdict"] == "improved" and m["tokens"]["before"]["n"] == 8
    assert m["messages"]["verdict"] == "no_change"  # identical samples
    assert res["verdict"] == "improved"
    assert res["deltas"]["tokensPct"] > 0  # positive = better, as in the reference
    small = validate(before[:3] + after[:3], None, at_ms=1_780_000_000_000 + 2 * day)
    assert small["verdict"] == "insufficient_data"
    assert {x["verdict"] for x in small["metrics"]} == {"too_few_sessions"}
    worse = validate(after + [_row(f"c{i}", inp=400_000, started=1_780_000_000_000 + 5 * day + i)
                              for i in range(8)], None, at_ms=1_780_000_000_000 + 4 * day)
    assert worse["verdict"] == "regressed"


def test_validate_cli_splits_at_a_recorded_change(fx: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["validate", "--json", "--at", "checkpoint", *fx.argv()])
    assert out["splitLabel"].startswith("at first checkpoint")
    assert out["before"]["count"] + out["after"]["count"] == 20
    auto = run_json(capsys, ["validate", "--json", *fx.argv()])
    assert auto["strategy"] == "auto" and auto["before"]["count"] == 10
    assert auto["verdict"] == "improved"
    assert auto["rule"] == {"minSamplesPerSide": 5, "test": "Mann-Whitney U, two-sided", "alpha": 0.05}
    dated = run_json(capsys, ["validate", "--json", "--at", "2000-01-01", *fx.argv()])
    assert dated["before"]["count"] == 0 and dated["verdict"] == "insufficient_data"


def test_validate_at_snapshot_needs_one(fx: Any) -> None:
    with pytest.raises(SystemExit, match="no snapshot"):
        main(["validate", "--at", "snapshot", *fx.argv()])


def test_quality_on_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(tmp_path / "state"))
    oc = OpenClawStore(tmp_path / "oc")
    oc.add_session("old", created_ms=1_000_000_000_000)
    oc.add_events("old", [user_event("x", 1_000_000_000_000), assistant_event(1_000_000_001_000)])
    oc.close()
    out = run_json(capsys, ["quality", "--json", "--openclaw-root", str(tmp_path / "oc"),
                            "--hermes-home", str(tmp_path / "none")])
    assert out["sessions"] == 0 and out["grade"] == "F"  # the reference's no-data score (20)
