"""Hermes keeps our state under its own home; earlier state is adopted once (COMPAT H8)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from token_optimizer import fsutil
from token_optimizer.hosts import hermes_home
from token_optimizer.hosts.hermes import HermesPlugin, StateDb
from token_optimizer.models import Message


def _state_db(path: Path, ids: list[str]) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, parent_session_id TEXT)")
    con.executemany("INSERT INTO sessions (id) VALUES (?)", [(i,) for i in ids])
    con.commit()
    con.close()
    return path


def _legacy_root(root: Path, sids: list[str]) -> None:
    for sid in sids:
        d = root / "checkpoints" / sid
        d.mkdir(parents=True)
        (d / "manifest.jsonl").write_text('{"trigger":"compact"}\n')
        (d / "policy-state.json").write_text("{}")
    (root / "read-cache" / "decisions").mkdir(parents=True)
    for sid in sids:
        agent = "hermes" if sid.startswith("h") else "main"
        (root / "read-cache" / f"{agent}-{sid}.json").write_text("{}")
        (root / "read-cache" / "decisions" / f"{sid}.jsonl").write_text("{}\n")


def test_state_root_is_under_hermes_home_per_profile(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME")
    monkeypatch.setenv("HERMES_HOME", str(tmp_path / ".hermes" / "profiles" / "work"))
    assert hermes_home.state_root() == tmp_path / ".hermes" / "profiles" / "work" / "token-optimizer"
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(tmp_path / "explicit"))
    assert hermes_home.state_root() is None  # the explicit override decides


def test_openclaw_state_dir_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME")
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "oc-state"))
    p = fsutil.resolve_paths()
    assert p.root == tmp_path / "oc-state" / "token-optimizer"
    assert p.openclaw_dir == tmp_path / "oc-state"
    monkeypatch.delenv("OPENCLAW_STATE_DIR")
    assert fsutil.resolve_paths().root == fsutil.default_home() / ".openclaw" / "token-optimizer"


def test_hermes_sessions_state_moves_once_and_openclaw_state_stays(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, new = tmp_path / "oc" / "token-optimizer", tmp_path / "hh" / "token-optimizer"
    _legacy_root(old, ["h1", "h2", "oc1"])
    db = _state_db(tmp_path / "state.db", ["h1", "h2", "h3"])
    with caplog.at_level(logging.INFO, logger="token_optimizer"):
        n = hermes_home.adopt_legacy_state(old, new, hermes_home.hermes_session_ids(db))
    assert n == 2
    lines = [r.getMessage() for r in caplog.records if "Hermes sessions" in r.getMessage()]
    assert len(lines) == 1 and str(old) in lines[0] and str(new) in lines[0]
    for sid in ("h1", "h2"):
        assert (new / "checkpoints" / sid / "manifest.jsonl").read_text() == '{"trigger":"compact"}\n'
        assert (new / "read-cache" / f"hermes-{sid}.json").exists()
        assert (new / "read-cache" / "decisions" / f"{sid}.jsonl").exists()
        assert not (old / "checkpoints" / sid).exists()
    # OpenClaw's own session is left where it is
    assert (old / "checkpoints" / "oc1" / "manifest.jsonl").exists()
    assert (old / "read-cache" / "main-oc1.json").exists()
    assert not (new / "checkpoints" / "oc1").exists()
    # a second start does nothing, even when new legacy state appears
    (old / "checkpoints" / "h3").mkdir()
    assert hermes_home.adopt_legacy_state(old, new, {"h3"}) == 0
    assert (old / "checkpoints" / "h3").is_dir()


def test_adoption_refuses_symlinked_session_dirs(tmp_path: Path) -> None:
    old, new = tmp_path / "oc" / "token-optimizer", tmp_path / "hh" / "token-optimizer"
    (old / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    (old / "checkpoints" / "h1").symlink_to(outside)
    assert hermes_home.adopt_legacy_state(old, new, {"h1"}) == 0
    assert (outside / "secret").exists() and not (new / "checkpoints" / "h1").exists()


def test_plugin_runtime_uses_the_hermes_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME")
    monkeypatch.setenv("HERMES_HOME", str(tmp_path / "hh"))
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "oc"))
    _legacy_root(tmp_path / "oc" / "token-optimizer", ["h1"])
    db = _state_db(tmp_path / "hh-state.db", ["h1"])
    plugin = HermesPlugin(state_db=StateDb(db), hermes_config=lambda: {})
    assert plugin.runtime.paths.root == tmp_path / "hh" / "token-optimizer"
    assert (tmp_path / "hh" / "token-optimizer" / "checkpoints" / "h1").is_dir()
    plugin.runtime.close()


def test_adopted_checkpoints_are_restorable(tmp_path: Path) -> None:
    """The manifest names each checkpoint by absolute path: after the move it must point at
    the new place, or nothing could be listed or restored."""
    from token_optimizer.runtime import TokenOptimizer

    old_root = tmp_path / "oc" / "token-optimizer"
    new_root = tmp_path / "hh" / "token-optimizer"
    rt_old = TokenOptimizer(old_root)
    assert rt_old.store.capture("h1", [Message("user", "Task: fix the lexer")],
                                trigger="compact") is not None
    rt_old.close()
    assert hermes_home.adopt_legacy_state(old_root, new_root, {"h1"}) == 1
    rt_new = TokenOptimizer(new_root)
    files = rt_new.policy.checkpoint_files("h1")
    assert [f.trigger for f in files] == ["compact"]
    assert Path(files[0].path).is_relative_to(new_root)
    text = rt_new.store.restore("h1")
    assert text is not None and "Task: fix the lexer" in text
    rt_new.close()


def test_session_ids_read_from_a_home_whose_path_has_uri_characters(tmp_path: Path) -> None:
    # "?", "#" and "%" in a directory name must not change which file SQLite opens.
    home = tmp_path / "we?ird#home%41"
    home.mkdir()
    db = home / "state.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY)")
    con.executemany("INSERT INTO sessions VALUES (?)", [("s-1",), ("s-2",)])
    con.commit()
    con.close()
    assert hermes_home.hermes_session_ids(db) == {"s-1", "s-2"}
