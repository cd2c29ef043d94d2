"""`token-optimizer demo` runs the bundled session end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from token_optimizer.cli import main
from token_optimizer.commands.demo import render


def test_demo_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "state"
    assert main(["--home", str(home), "demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    steps = report["steps"]
    triggers = [c["trigger"] for s in steps for c in s.get("checkpoints", [])]
    # Progressive bands, both milestones and the compaction checkpoint all happen.
    assert "milestone-edit-batch" in triggers
    assert "milestone-pre-fanout" in triggers
    assert "compact" in triggers
    assert any(t.startswith("progressive-") for t in triggers)
    # The redundant read is noticed, and the restore reaches the turn after compaction.
    comp = next(i for i, s in enumerate(steps) if s["step"] == "compaction")
    assert steps[comp]["restoreRequested"]
    after = steps[comp + 1]
    assert after["step"] == "user turn" and "prependContext" in after
    # The second session gets a continuity hint from the first one's checkpoints.
    second = [s for s in steps if s["session"] == "demo-payments-2" and s["step"] == "user turn"]
    assert "RECOVERED DATA" in second[0].get("prependContext", "")
    # Session end released everything for both sessions.
    ends = [s for s in steps if s["step"] == "session end"]
    assert all(sum(e["tracked"].values()) == 0 for e in ends)
    files = {f["path"] for f in report["files"]}
    assert "checkpoints/demo-payments-1/policy-state.json" in files
    assert "checkpoints/demo-payments-1/manifest.jsonl" in files
    assert (home / "checkpoints" / "demo-payments-1" / "policy-state.json").exists()


def test_demo_text_output_as_a_user_runs_it(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "token_optimizer", "demo"], capture_output=True,
                          text=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "checkpoint captured: milestone-edit-batch" in out
    assert "restore requested" in out
    assert "Files written:" in out


# ---------------------------------------------------------------- issue 13: every line agrees


def _demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["--home", str(tmp_path / "state"), "demo", "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_demo_checkpoint_names_agree_with_the_fill_shown(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    report = _demo(tmp_path, capsys)
    seen = 0
    for st in report["steps"]:
        for c in st.get("checkpoints", []):
            if c["trigger"].startswith("progressive-"):
                seen += 1
                assert c["fillPct"] >= int(c["trigger"].removeprefix("progressive-")), c
            # the fill printed on the same line of the turn is the one the checkpoint was taken at
            if c["phase"] in ("turn start", "after edit", "after write", "after sessions_spawn"):
                assert c["fillPct"] == st["atStart"]["fillPct"], (st["prompt"], c)
            elif c["phase"] == "after the model call":
                assert c["fillPct"] == st["fillPct"], (st["prompt"], c)
    assert seen >= 5


def test_demo_nudge_quotes_the_line_above_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _demo(tmp_path, capsys)
    nudged = [s for s in report["steps"] if "getting long" in s.get("prependContext", "")]
    assert len(nudged) == 1
    st = nudged[0]
    m = re.search(r"window is (\d+)% full and context quality has dropped to (\d+)/100", st["prependContext"])
    assert m, st["prependContext"]
    assert int(m.group(1)) == round(st["atStart"]["fillPct"])
    assert int(m.group(2)) == st["atStart"]["qualityScore"]
    proc = subprocess.run([sys.executable, "-m", "token_optimizer", "demo"], capture_output=True,
                          text=True, timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    lines = proc.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if "getting long" in ln)
    above = next(ln for ln in reversed(lines[:i]) if "context at turn start" in ln)
    assert f"fill {m.group(1)}.0%, quality {m.group(2)}" in above


def test_demo_restore_is_the_compactions_checkpoint(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    report = _demo(tmp_path, capsys)
    steps = report["steps"]
    comp = next(i for i, s in enumerate(steps) if s["step"] == "compaction")
    compact = [c for c in steps[comp]["checkpoints"] if c["trigger"] == "compact"]
    assert len(compact) == 1
    body = (Path(report["stateRoot"]) / "checkpoints" / "demo-payments-1" / compact[0]["file"]).read_text()
    restored = steps[comp + 1]["prependContext"]
    assert body.strip() in restored and "> Trigger: compact" in restored
    assert report["summary"]["restoresDelivered"] == [
        {"session": "demo-payments-1", "chars": len(restored)}]


def test_demo_redundant_read_is_flagged_and_the_changed_file_diffed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _demo(tmp_path, capsys)
    reads = [(t["path"], t.get("decision"), t.get("reason"), t["blocked"])
             for s in report["steps"] for t in s.get("tools", []) if t["tool"] == "read"]
    assert reads == [
        ("src/payments/retry.py", "allow", "first_read", False),
        ("src/payments/client.py", "allow", "first_read", False),
        ("src/payments/retry.py", "warn", "redundant_read_2", False),
        ("src/payments/client.py", "block", "delta_read_+2/-0", True),
    ]
    text = render(report)
    assert "src/payments/retry.py -> FLAGGED: redundant read #2" in text
    assert "src/payments/client.py -> ANSWERED WITH A DIFF" in text
    assert text.count("-> ok (first read") == 2


def test_demo_ends_with_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _demo(tmp_path, capsys)
    s = report["summary"]
    on_disk = sorted(p.name for p in (Path(report["stateRoot"]) / "checkpoints").rglob("*.md"))
    listed = sorted(c["file"] for st in report["steps"] for c in st.get("checkpoints", []))
    assert listed == on_disk  # every checkpoint written is shown, once
    assert sum(c["count"] for c in s["checkpointsCaptured"].values()) == len(on_disk)
    assert s["resumedFromCheckpoint"] == ["demo-payments-2"]
    assert [f["reason"] for f in s["readsFlagged"]] == ["redundant_read_2", "delta_read_+2/-0"]
    # measured: only the diff answered instead of the file; the rest is labelled estimated
    assert s["savingsByType"]["delta_read"]["basis"] == "measured"
    assert s["savedMeasuredTokens"] == s["savingsByType"]["delta_read"]["tokens"] > 0
    assert {k for k, v in s["savingsByType"].items() if v["basis"] == "estimated"} == {
        "fresh_session_nudge", "checkpoint_restore", "resume_lean"}
    assert s["savedEstimatedTokens"] == sum(v["tokens"] for v in s["savingsByType"].values()
                                           if v["basis"] == "estimated")
    text = render(report)
    tail = text[text.index("What the plugin did"):text.index("Files written:")]
    assert f"saved, measured:  {s['savedMeasuredTokens']} tokens really not sent" in tail
    assert f"saved, estimated: {s['savedEstimatedTokens']} tokens, not a measurement" in tail
    assert "restored:  the compaction's checkpoint" in tail
    assert "captured:  1 checkpoint(s) in demo-payments-2" in tail
