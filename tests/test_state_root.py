"""Every command picks its state root by one rule (commands/stateroot.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from token_optimizer.cli import main
from token_optimizer.fsutil import resolve_paths
from token_optimizer.session_index import SessionIndex
from token_optimizer.telemetry import Telemetry


def _hermes_only(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with Hermes set up and no ~/.openclaw; returns the Hermes state root."""
    hh = tmp_path / "hermes-home"
    hh.mkdir()
    (hh / "config.yaml").write_text("plugins:\n  enabled: [token-optimizer]\n")
    monkeypatch.setenv("HERMES_HOME", str(hh))
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME")
    monkeypatch.delenv("OPENCLAW_STATE_DIR", raising=False)
    monkeypatch.delenv("OPENCLAW_CONFIG_PATH", raising=False)
    assert not (home / ".openclaw").exists()
    return hh / "token-optimizer"


def _seed(root: Path, sid: str) -> None:
    paths = resolve_paths(root)
    idx = SessionIndex(paths)
    idx.touch(f"agent:main:{sid}", sid)
    idx.close()
    Telemetry(paths).log_savings_event("redundant_read", 1234, sid, "seed")


def test_sessions_reads_the_hermes_root_on_a_hermes_only_machine(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    root = _hermes_only(home, tmp_path, monkeypatch)
    _seed(root, "h1")
    assert main(["sessions", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert Path(doc["index"]).parent == root and doc["stateRoot"] == str(root)
    assert doc["stateRootSource"] == "hermes"
    assert [s["session_id"] for s in doc["sessions"]] == ["h1"]
    assert main(["sessions"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and "Hermes" in out
    assert main(["savings", "--json"]) == 0
    assert "h1" in capsys.readouterr().out
    assert main(["prune", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stateRoot"] == str(root)
    assert main(["checkpoints", "list"]) == 0
    assert str(root) in capsys.readouterr().out
    assert not (home / ".openclaw").exists()  # nothing created under the OpenClaw root


def test_home_flag_and_env_win_over_hermes(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _seed(_hermes_only(home, tmp_path, monkeypatch), "h1")
    flag, env = tmp_path / "flag", tmp_path / "env"
    _seed(flag, "f1")
    _seed(env, "e1")
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(env))
    assert main(["sessions", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stateRootSource"] == "TOKEN_OPTIMIZER_HOME"
    assert [s["session_id"] for s in doc["sessions"]] == ["e1"]
    assert main(["--home", str(flag), "sessions", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stateRootSource"] == "--home"
    assert [s["session_id"] for s in doc["sessions"]] == ["f1"]


def test_openclaw_found_first_keeps_the_openclaw_root(home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _seed(_hermes_only(home, tmp_path, monkeypatch), "h1")
    oc = home / ".openclaw"
    oc.mkdir()
    (oc / "openclaw.json").write_text("{}")
    _seed(oc / "token-optimizer", "o1")
    assert main(["sessions", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stateRootSource"] == "openclaw"
    assert [s["session_id"] for s in doc["sessions"]] == ["o1"]
    # config and doctor agree with the other commands
    assert main(["config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stateRoot"] == str(oc / "token-optimizer")
