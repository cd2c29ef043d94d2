"""`token-optimizer demo` runs the bundled session end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from token_optimizer.cli import main


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
