"""Issue 13: one settings module, validated values, `config`, `doctor`, global options."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import __version__, heartbeat, hooks
from token_optimizer import settings as st
from token_optimizer.cli import main
from token_optimizer.commands import hostconfig
from token_optimizer.config import Config
from token_optimizer.fsutil import CheckedDir, resolve_paths
from token_optimizer.hosts.openclaw_install import PLUGIN_ID
from token_optimizer.policy import PolicySettings
from token_optimizer.read_cache import ReadCache
from token_optimizer.runtime import TokenOptimizer

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "token_optimizer"


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    st.reset_warnings()


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


# ---------------------------------------------------------------- documentation


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Configuration")
    return text[start:text.index("\n## ", start + 1)]


def test_every_setting_and_every_hook_is_documented() -> None:
    """A setting read in code without a README row fails; so does a hook without a section."""
    table = _readme_table()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    for s in st.user_facing():
        token = f"`{s.env}`" if s.env else f"`{s.key}`"
        row = [r for r in rows if r.startswith(f"| {token} |") or (s.env is None and f"| {token} |" in r)]
        assert row, f"{s.name} has no row in the README configuration table"
        if s.key:
            assert f"`{s.key}`" in row[0], f"{s.name}: the row does not name its key {s.key}"
    for r in rows[2:]:
        names = re.findall(r"`(TOKEN_OPTIMIZER_[A-Z_]+)`", r.split("|")[1])
        for n in names:
            assert n in st.BY_ENV, f"README documents {n}, which no code declares"
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for hook_row in hooks.HOOK_TABLE:
        name = hook_row.entry or (hook_row.openclaw + hook_row.hermes)[0]
        assert re.search(rf"^### `{re.escape(name)}`", doc, re.M), f"hook {name} is undocumented"


def test_every_token_optimizer_name_in_the_source_is_declared() -> None:
    names: dict[str, str] = {}
    for f in [*PKG.rglob("*.py"), ROOT / "dist" / "index.js"]:
        for n in re.findall(r"TOKEN_OPTIMIZER_[A-Z0-9_]*[A-Z0-9]", f.read_text()):
            names.setdefault(n, str(f.relative_to(ROOT)))
    missing = {n: f for n, f in names.items() if n not in st.BY_ENV}
    assert not missing, f"undeclared settings: {missing}"


def test_no_environment_read_of_a_setting_escapes_the_module() -> None:
    # os.environ["TOKEN_OPTIMIZER_X"], os.environ.get("..."), os.getenv("..."), env.get("...")
    pattern = re.compile(r"""(\[|\.get\(|getenv\()\s*["']TOKEN_OPTIMIZER_""")
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.name == "settings.py":
            continue
        offenders += [f"{f.relative_to(ROOT)}:{i}" for i, line in enumerate(f.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders


def test_the_openclaw_manifest_accepts_every_declared_key() -> None:
    """OpenClaw validates plugin config with additionalProperties: false."""
    manifest = json.loads((ROOT / "dist" / "openclaw.plugin.json").read_text())
    props = set(manifest["configSchema"]["properties"])
    declared = {s.key for s in st.SETTINGS if s.key and not s.internal}
    assert props == declared


# ---------------------------------------------------------------- parse rules


@pytest.mark.parametrize(("raw", "value", "valid"), [
    ("90000", 90_000, True), (" 42 ", 42, True), ("0", 0, True),
    ("90s", 90_000, False), ("1e3", 90_000, False), ("abc", 90_000, False), ("-7", 90_000, False),
    ("90000ms", 90_000, False),
])
def test_integer_rule(raw: str, value: int, valid: bool) -> None:
    r = st.resolve(st.CHECKPOINT_COOLDOWN_MS, st.Sources({st.CHECKPOINT_COOLDOWN_MS.env or "": raw}))
    assert (r.value, r.valid, r.source) == (value, valid, st.SOURCE_ENV)


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), (" yes", True), ("On", True),
                                             ("0", False), ("false", False), ("OFF", False), ("no", False)])
def test_switch_spellings(raw: str, value: bool) -> None:
    assert st.parse_switch(raw) is value


def test_bad_cooldown_warns_once_and_uses_the_default(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS", "90s")
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        for _ in range(3):
            assert PolicySettings.resolve().checkpoint_cooldown_ms == 90_000
    lines = _warnings(caplog, "TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS")
    assert len(lines) == 1 and "'90s'" in lines[0] and "using 90000" in lines[0]
    # the reference's own reading is kept (spec runtime.md §4.2): the runtime does not use it
    assert PolicySettings.from_env({"TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS": "90s"}).checkpoint_cooldown_ms == 90


def test_read_cache_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    paths = resolve_paths(tmp_path / "state")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("x")
    rc = ReadCache(paths, cwd=lambda: str(ws))
    for off in ("off", "false", "0"):
        monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE", off)
        assert rc.enabled() is False
    monkeypatch.delenv("TOKEN_OPTIMIZER_READ_CACHE")
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "blok")
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert rc.before_read("a.txt", None, None, "main", "s") is None
        assert rc.before_read("a.txt", None, None, "main", "s") is None  # not blocked: warn
        assert rc.before_read("a.txt", None, None, "main", "s") is None
    lines = _warnings(caplog, "TOKEN_OPTIMIZER_READ_CACHE_MODE")
    assert len(lines) == 1 and "'blok'" in lines[0] and "using 'warn'" in lines[0]
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE", "maybe")
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert rc.enabled() is True
    assert any("'maybe'" in m and "using True" in m for m in _warnings(caplog, "READ_CACHE "))


# ---------------------------------------------------------------- precedence


def test_env_over_plugin_config_over_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin = {"checkpointCooldownMs": 5, "readCacheMode": "block", "pythonPath": "/opt/py"}
    src = st.Sources({}, plugin, "openclaw")
    assert st.resolve(st.CHECKPOINT_COOLDOWN_MS, src).source == st.SOURCE_OPENCLAW
    assert st.resolve(st.EVALUATION_COOLDOWN_MS, src).source == st.SOURCE_DEFAULT
    env = {"TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS": "7", "TOKEN_OPTIMIZER_PYTHON": "/usr/bin/python3"}
    src = st.Sources(env, plugin, "hermes")
    r = st.resolve(st.CHECKPOINT_COOLDOWN_MS, src)
    assert (r.value, r.source) == (7, st.SOURCE_ENV)
    r = st.resolve(st.PYTHON, src)  # the shim reads pythonPath first
    assert (r.value, r.source) == ("/opt/py", st.SOURCE_HERMES)
    # the plugin config reaches the runtime's decisions (OpenClaw worker and Hermes plugin)
    rt = TokenOptimizer(tmp_path / "s", config=Config.merged(plugin, host="openclaw"))
    assert rt.settings.checkpoint_cooldown_ms == 5
    assert rt.read_cache.mode() == "block"
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "warn")
    assert rt.read_cache.mode() == "warn"


def test_a_bad_setting_never_stops_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS", "TOKEN_OPTIMIZER_RELEVANCE_THRESHOLD",
                 "TOKEN_OPTIMIZER_CONTINUITY_MAX_AGE_DAYS", "TOKEN_OPTIMIZER_READ_CACHE",
                 "TOKEN_OPTIMIZER_PRICING_AS_OF"):
        monkeypatch.setenv(name, "??")
    rt = TokenOptimizer(tmp_path / "s", config=Config.merged({"checkpointCooldownMs": [1]}, host="hermes"))
    assert rt.settings.checkpoint_cooldown_ms == 90_000
    assert rt.continuity.relevance_threshold == 0.3 and rt.continuity.max_age_days == 7
    from token_optimizer.events import Identity

    rt.session_start(Identity(session_id="s1"))


# ---------------------------------------------------------------- heartbeat


def test_heartbeat_is_throttled_and_names_the_host(tmp_path: Path) -> None:
    paths = resolve_paths(tmp_path / "s")
    clock = [100.0]
    hb = heartbeat.Heartbeat(paths, "openclaw", monotonic=lambda: clock[0])
    assert hb.beat() is True
    first = heartbeat.read(paths, "openclaw")
    assert first is not None and first["host"] == "openclaw" and first["pid"] == os.getpid()
    assert first["version"] == __version__ and isinstance(first["lastHookAtMs"], int)
    clock[0] += 59
    assert hb.beat() is False
    clock[0] += 2
    assert hb.beat() is True
    assert heartbeat.Heartbeat(paths, None).beat() is False  # no host: nothing written


def test_runtime_hooks_beat_for_their_host_and_never_raise(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from token_optimizer.events import Identity

    rt = TokenOptimizer(tmp_path / "s", config=Config.merged({}, host="hermes"))
    rt.session_start(Identity(session_id="s1"))
    assert (tmp_path / "s" / "heartbeat-hermes.json").is_file()

    def refuse(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(CheckedDir, "atomic_write", refuse)
    rt2 = TokenOptimizer(tmp_path / "t", config=Config.merged({}, host="openclaw"))
    rt2.session_start(Identity(session_id="s1"))  # no exception reaches the host
    assert rt2.heartbeat.failures == 1


# ---------------------------------------------------------------- CLI


def test_global_options_after_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--json", "--home", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out)["stateRoot"] == str(tmp_path / "b")
    assert main(["--home", str(tmp_path / "a"), "config", "--json", "--home", str(tmp_path / "b"), "-v"]) == 0
    assert json.loads(capsys.readouterr().out)["stateRoot"] == str(tmp_path / "b")  # subcommand wins
    assert main(["--home", str(tmp_path / "a"), "config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stateRoot"] == str(tmp_path / "a")
    assert main(["sessions", "--home", str(tmp_path / "a")]) == 0  # any subcommand


def _openclaw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any]) -> Path:
    state = tmp_path / "oc"
    state.mkdir()
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(state))
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME")
    (state / "openclaw.json").write_text(json.dumps({"plugins": {"entries": {PLUGIN_ID: entry}}}))
    return state / "token-optimizer"


def test_config_command_names_sources_and_flags_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _openclaw(tmp_path, monkeypatch, {"enabled": True, "config": {"checkpointCooldownMs": 1000}})
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "blok")
    assert main(["config", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    by = {s["name"]: s for s in doc["settings"]}
    assert doc["host"] == "openclaw"
    assert by["TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS"]["source"] == "OpenClaw plugin config"
    assert by["TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS"]["value"] == 1000
    assert by["TOKEN_OPTIMIZER_RELEVANCE_THRESHOLD"]["source"] == "default"
    bad = by["TOKEN_OPTIMIZER_READ_CACHE_MODE"]
    assert (bad["source"], bad["given"], bad["value"], bad["valid"]) == ("env", "blok", "warn", False)
    assert "TOKEN_OPTIMIZER_REQUIRE_HOSTS" not in by
    monkeypatch.delenv("TOKEN_OPTIMIZER_READ_CACHE_MODE")
    assert main(["config"]) == 0
    assert "all settings valid" in capsys.readouterr().out


def _by_name(doc: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"] if c["section"] == section}


def test_doctor_openclaw_healthy_then_read_only_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = _openclaw(tmp_path, monkeypatch, {"enabled": True, "hooks": {"allowConversationAccess": True},
                                             "config": {"pythonPath": sys.executable}})
    heartbeat.Heartbeat(resolve_paths(root), "openclaw").beat()
    assert main(["doctor", "--json"]) == 0, capsys.readouterr().out
    doc = json.loads(capsys.readouterr().out)
    checks = _by_name(doc, "openclaw")
    assert doc["ok"] is True and doc["hosts"] == ["openclaw"]
    assert checks["conversation access"]["status"] == "ok"
    assert checks["package"]["status"] == "ok" and __version__ in checks["package"]["detail"]
    assert checks["interpreter"]["detail"].startswith(sys.executable)
    assert checks["state root"]["status"] == "ok" and checks["hooks seen"]["status"] == "ok"
    assert not list(root.glob(".doctor-probe-*"))

    def refuse(*_a: Any, **_k: Any) -> int:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(CheckedDir, "open", refuse)  # tests run as root: chmod cannot do it
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "needs attention" in out and "Read-only file system" in out and "not writable" in out


def test_doctor_openclaw_missing_switch_and_no_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _openclaw(tmp_path, monkeypatch, {"enabled": True, "config": {"pythonPath": sys.executable}})
    assert main(["doctor", "--json"]) == 1
    checks = _by_name(json.loads(capsys.readouterr().out), "openclaw")
    assert checks["conversation access"]["status"] == "attention"
    assert checks["hooks seen"]["status"] == "attention"


def test_doctor_hermes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    hh = tmp_path / "hermes"
    hh.mkdir()
    monkeypatch.setenv("HERMES_HOME", str(hh))
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no `hermes`: this interpreter
    (hh / "config.yaml").write_text("model: x\nplugins:\n  enabled:\n    - other\n")
    assert main(["doctor", "--host", "hermes", "--json"]) == 1
    checks = _by_name(json.loads(capsys.readouterr().out), "hermes")
    assert checks["plugin enabled"]["status"] == "attention"
    assert checks["entry point"]["status"] == "ok"
    (hh / "config.yaml").write_text(
        "plugins:\n  enabled: [token-optimizer]  # ours\n  entries:\n    token-optimizer:\n"
        "      checkpointCooldownMs: 90s\n")
    heartbeat.Heartbeat(resolve_paths(hh / "token-optimizer"), "hermes").beat()
    assert main(["doctor", "--json"]) == 1  # found by its config file
    doc = json.loads(capsys.readouterr().out)
    checks = _by_name(doc, "hermes")
    assert doc["hosts"] == ["hermes"]
    assert checks["plugin enabled"]["status"] == "ok" and checks["hooks seen"]["status"] == "ok"
    assert "90s" in checks["settings"]["detail"] and checks["settings"]["status"] == "attention"


def test_doctor_says_telemetry_is_off_instead_of_no_trigger(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "s"
    cp = root / "checkpoints" / "sess"
    cp.mkdir(parents=True)
    (cp / "20260101T000000-progressive-20.md").write_text("# Session Checkpoint\n")
    main(["doctor", "--home", str(root)])
    out = capsys.readouterr().out
    assert "Last trigger:        unknown (checkpoint telemetry is off" in out
    assert "TOKEN_OPTIMIZER_CHECKPOINT_TELEMETRY=1" in out
    assert main(["checkpoint-stats", "--home", str(root)]) == 0
    assert "TOKEN_OPTIMIZER_CHECKPOINT_TELEMETRY=1" in capsys.readouterr().out


def test_mini_yaml_reads_the_hermes_keys() -> None:
    text = ("# hermes\nmodel:\n  default: 'x'\nplugins:\n  enabled:\n  - a\n  - token-optimizer\n"
            "  entries:\n    token-optimizer:\n      readCache: false\n      relevanceThreshold: 0.5\n"
            "      pythonPath: \"/opt/py\"\n")
    doc = hostconfig._mini_yaml(text)
    assert doc["plugins"]["enabled"] == ["a", "token-optimizer"]
    assert doc["plugins"]["entries"]["token-optimizer"] == {
        "readCache": False, "relevanceThreshold": 0.5, "pythonPath": "/opt/py"}
    assert doc["model"] == {"default": "x"}
