"""``token-optimizer openclaw install|doctor|path`` and the shipped plugin manifests."""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import pytest

from token_optimizer.cli import main
from token_optimizer.hosts import openclaw_install as oi

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"


def test_manifests_are_complete() -> None:
    pkg = json.loads((DIST / "package.json").read_text())
    man = json.loads((DIST / "openclaw.plugin.json").read_text())
    assert pkg["openclaw"]["extensions"] == ["./index.js"]
    assert pkg["openclaw"]["compat"]["pluginApi"] == ">=2026.9.6"
    assert pkg["openclaw"]["install"]["minHostVersion"].startswith(">=")
    assert man["id"] == oi.PLUGIN_ID == "token-optimizer-openclaw"
    assert man["activation"]["onStartup"] is True
    schema = man["configSchema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    for key in ("pythonPath", "timeoutMs", "sessionStoreMaxAgeDays"):
        assert key in schema["properties"]
    assert schema["properties"]["sessionStoreMaxAgeDays"]["minimum"] == 0
    assert (DIST / "index.js").is_file() and (DIST / "index.d.ts").is_file()
    assert "require(" not in (DIST / "index.js").read_text()  # dependency-free ESM
    checks = oi.check_manifests(DIST)
    assert [(c.name, c.status) for c in checks] == [("manifests", "ok"),
                                                   ("plugin version", "ok")], checks


def test_plugin_source_dir_is_the_shipped_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    src = oi.plugin_source_dir()
    assert src is not None and (src / "openclaw.plugin.json").is_file()
    assert main(["openclaw", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(src)


def test_install_copies_and_prints_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "plug"
    assert main(["openclaw", "install", "--dest", str(dest), "--python", "/opt/py/bin/python"]) == 0
    out = capsys.readouterr().out
    for name in ("package.json", "openclaw.plugin.json", "index.js", "index.d.ts"):
        f = dest / name
        assert f.read_bytes() == (DIST / name).read_bytes()
        assert not f.stat().st_mode & stat.S_IWOTH
    assert not dest.stat().st_mode & stat.S_IWOTH
    assert f"plugins install --link {dest} --force --accept-capabilities" in out
    assert "plugins.entries.token-optimizer-openclaw.hooks.allowConversationAccess true" in out
    assert '"pythonPath": "/opt/py/bin/python"' in out
    # re-install over our own copy is fine; over someone else's directory it is refused
    assert main(["openclaw", "install", "--dest", str(dest)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        main(["openclaw", "install", "--dest", str(other)])


def test_install_link_uses_the_shipped_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["openclaw", "install", "--link"]) == 0
    out = capsys.readouterr().out
    assert f"--link {oi.plugin_source_dir()} --force" in out


def test_install_run_invokes_openclaw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "fake-openclaw"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    rc = main(["openclaw", "install", "--link", "--run", "--openclaw", str(fake), "--python", "/py"])
    assert rc == 0
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls[0][:3] == ["plugins", "install", "--link"]
    assert "--accept-capabilities" in calls[0]
    assert calls[1][:3] == ["config", "set", "plugins.entries.token-optimizer-openclaw.hooks.allowConversationAccess"]
    assert calls[2][2] == "plugins.entries.token-optimizer-openclaw.config"
    assert json.loads(calls[2][3]) == {"pythonPath": "/py"}


def _write_config(state: Path, entry: dict[str, object], extra: str = "") -> None:
    state.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"plugins": {"load": {"paths": [str(DIST)]}, "entries": {oi.PLUGIN_ID: entry}}}, indent=2)
    # JSON5 extras the host accepts: comments and trailing commas
    body = "// written by the test\n" + body.replace('"entries"', '/* ours */ "entries"', 1)
    body = body.rstrip()[:-1] + "," + extra + "\n}"
    (state / "openclaw.json").write_text(body)


def test_doctor_all_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "oc"
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(state))
    _write_config(state, {"enabled": True, "hooks": {"allowConversationAccess": True},
                          "config": {"pythonPath": sys.executable}})
    assert main(["openclaw", "doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert by["manifests"]["status"] == "ok"
    assert by["conversation access"]["status"] == "ok"
    assert by["linked"]["status"] == "ok"
    assert by["python"]["detail"].startswith(sys.executable)
    assert by["worker"]["status"] == "ok" and "ping" in by["worker"]["detail"]


def test_doctor_flags_missing_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "oc"
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(state))
    _write_config(state, {"enabled": True, "config": {"pythonPath": "/nonexistent/python"}})
    assert main(["openclaw", "doctor"]) == 1
    out = capsys.readouterr().out
    assert "[fail] conversation access" in out
    assert "[fail] python" in out
    # no config at all
    monkeypatch.setenv("OPENCLAW_STATE_DIR", str(tmp_path / "missing"))
    assert main(["openclaw", "doctor", "--python", sys.executable]) == 1
    assert "[fail] openclaw config" in capsys.readouterr().out


def test_doctor_default_state_dir_is_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCLAW_STATE_DIR", raising=False)
    monkeypatch.delenv("OPENCLAW_CONFIG_PATH", raising=False)
    assert oi.openclaw_config_path() == home / ".openclaw" / "openclaw.json"


def test_json5ish_parser() -> None:
    text = '{\n // c\n "a": "x // not a comment", /* b */ "b": [1, 2,],\n}'
    assert oi.load_json5ish(text) == {"a": "x // not a comment", "b": [1, 2]}


def test_default_install_links_the_packages_own_files(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13: a copy goes stale on upgrade; by default the package's own files are linked."""
    assert main(["openclaw", "install"]) == 0
    assert f"--link {oi.plugin_source_dir()} --force" in capsys.readouterr().out


def test_versions_agree_everywhere() -> None:
    import tomllib

    from token_optimizer import __version__

    pkg = json.loads((DIST / "package.json").read_text())["version"]
    man = json.loads((DIST / "openclaw.plugin.json").read_text())["version"]
    shim = re.search(r'SHIM_VERSION = "([^"]+)"', (DIST / "index.js").read_text())
    proj = tomllib.loads((DIST.parent / "pyproject.toml").read_text())["project"]["version"]
    assert shim is not None
    assert {pkg, man, shim.group(1), proj} == {__version__}


def test_stale_copy_is_reported_and_the_worker_refuses_it(tmp_path: Path) -> None:
    dest = tmp_path / "plug"
    assert main(["openclaw", "install", "--copy", "--dest", str(dest)]) == 0
    pkg = json.loads((dest / "package.json").read_text())
    pkg["version"] = "0.0.9"  # what an upgrade of the package leaves behind in a copy
    (dest / "package.json").write_text(json.dumps(pkg))
    checks = {c.name: c for c in oi.check_manifests(dest)}
    assert checks["plugin version"].status == "fail"
    assert "stale copy" in checks["plugin version"].detail
    w = oi.ping_worker(sys.executable, shim_version="0.0.9")
    assert w.status == "fail" and "0.0.9" in w.detail and "install" in w.detail
    assert oi.ping_worker(sys.executable).status == "ok"
