"""Every install line of the README, run verbatim on a fresh home (issue "Operator truth").

The shell blocks are taken from README.md itself, so the README cannot drift from what
works. Each runs with ``bash -e`` in a copy of this checkout (the tracked files), with HOME
in a temp dir. The hosts come from the real-host cache (OpenClaw) or a throwaway venv
(Hermes, installed from PyPI like a user would: the README's line then installs our package
into it). Only the sandbox is ours: HOME, the host's offline flags, a state dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost.oc_host import HostUnavailable, ensure_openclaw

from token_optimizer.hooks import OPENCLAW_HOOKS

pytestmark = pytest.mark.realhost

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REQUIRE = os.environ.get("TOKEN_OPTIMIZER_REQUIRE_HOSTS") == "1"
HERMES_VERSION = "0.19.0"


def sh_blocks(heading: str) -> list[str]:
    """The ```sh blocks of one README section (up to the next heading of any level)."""
    start = README.index(heading)
    m = re.search(r"^#{1,6} ", README[start + len(heading):], re.M)
    section = README[start: start + len(heading) + (m.start() if m else len(README))]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def commands(block: str) -> list[str]:
    return [ln.split("  #")[0].strip() for ln in block.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def checkout(tmp: Path) -> Path:
    """A copy of the tracked files of this checkout (what a user's clone holds)."""
    dest = tmp / "token-optimizer"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in files:
        if not f:
            continue
        src = ROOT / f
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, target)
    return dest


def run(cmd: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    p = subprocess.run(["bash", "-e", "-c", cmd], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"README line failed ({p.returncode}): {cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def fresh_env(home: Path, extra_path: list[Path] | None = None) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TOKEN_OPTIMIZER_", "OPENCLAW_", "HERMES_", "VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([*(str(p) for p in extra_path or []), env.get("PATH", "")])
    return env


def test_quickstart_demo_line_runs(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    env = fresh_env(tmp_path / "home")
    (demo,) = [b for b in sh_blocks("## Quickstart") if "demo" in b]
    out = "".join(run(c, repo, env) for c in commands(demo))
    assert "What the plugin did" in out and "checkpoint captured: compact" in out, out[-2000:]


def test_wheel_line_builds_the_named_wheel_with_the_plugin(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    env = fresh_env(tmp_path / "home")
    (block,) = sh_blocks("## Installing")
    for c in commands(block):
        run(c, repo, env)
    named = re.search(r"build/artifacts/(token_optimizer_gateway-[^ ]+\.whl)", README)
    assert named is not None
    wheel = repo / "build" / "artifacts" / named.group(1)
    assert wheel.is_file(), sorted(p.name for p in (repo / "build" / "artifacts").iterdir())
    listing = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)],
                             capture_output=True, text=True, check=True).stdout
    for f in ("token_optimizer/openclaw_plugin/index.js", "openclaw_plugin/openclaw.plugin.json",
              "token_optimizer/py.typed"):
        assert f in listing, f


def test_openclaw_lines_install_a_plugin_the_gateway_loads(tmp_path: Path) -> None:
    try:
        host = ensure_openclaw()
    except (HostUnavailable, OSError, subprocess.SubprocessError) as exc:
        if REQUIRE:
            pytest.fail(f"OpenClaw host unavailable and TOKEN_OPTIMIZER_REQUIRE_HOSTS=1: {exc}")
        pytest.skip(f"OpenClaw host unavailable: {exc}")
    repo = checkout(tmp_path)
    home = tmp_path / "home"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "openclaw"  # what `npm install -g openclaw` puts on a user's PATH
    wrapper.write_text(f'#!/bin/sh\nexec "{host.node}" "{host.openclaw_mjs}" "$@"\n')
    wrapper.chmod(0o755)
    env = fresh_env(home, [bindir, host.node.parent])
    env.update({"OPENCLAW_DISABLE_BONJOUR": "1", "OPENCLAW_NO_AUTO_UPDATE": "1",
                "OPENCLAW_OFFLINE": "1", "OPENCLAW_SKIP_CHANNELS": "1", "TMPDIR": str(tmp_path)})
    (block,) = sh_blocks("### With OpenClaw")
    for c in commands(block):
        run(c, repo, env)
    p = subprocess.run(["openclaw", "plugins", "inspect", "token-optimizer-openclaw", "--runtime",
                        "--json"], cwd=home, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    data = json.loads(p.stdout[p.stdout.index("{"):])
    plugin = data["plugin"]
    venv = home / ".token-optimizer-venv"
    assert plugin["status"] == "loaded", plugin
    # the installed package's own plugin files, not the checkout's dist/
    assert Path(plugin["rootDir"]).resolve().is_relative_to(venv.resolve()), plugin["rootDir"]
    assert {h["name"] for h in data["typedHooks"]} == set(OPENCLAW_HOOKS)
    assert data["policy"]["allowConversationAccess"] is True
    cfg = json.loads((home / ".openclaw" / "openclaw.json").read_text())
    py = cfg["plugins"]["entries"]["token-optimizer-openclaw"]["config"]["pythonPath"]
    assert Path(py).parent == venv / "bin"
    doctor = subprocess.run([str(venv / "bin" / "token-optimizer"), "openclaw", "doctor", "--json"],
                            cwd=home, env=env, capture_output=True, text=True, timeout=180)
    report = json.loads(doctor.stdout)
    bad = [c for c in report["checks"] if c["status"] == "fail"]
    assert not bad, bad


def test_hermes_lines_install_and_enable_without_a_prompt(tmp_path: Path) -> None:
    if not (3, 11) <= sys.version_info[:2] < (3, 14):
        pytest.skip("hermes-agent needs Python >=3.11,<3.14")
    hv = tmp_path / "hermes-venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(hv)], capture_output=True, text=True)
    inst = subprocess.run([str(hv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                           f"hermes-agent=={HERMES_VERSION}"], capture_output=True, text=True,
                          timeout=900) if made.returncode == 0 else made
    if inst.returncode != 0:
        if REQUIRE:
            pytest.fail(f"could not install hermes-agent: {inst.stderr[-1500:]}")
        pytest.skip(f"could not install hermes-agent: {inst.stderr[-300:]}")
    repo = checkout(tmp_path)
    home = tmp_path / "home"
    env = fresh_env(home, [hv / "bin"])
    env["HERMES_HOME"] = str(tmp_path / "hermes-home")
    (block,) = sh_blocks("### With Hermes Agent")
    for c in commands(block):
        run(c, repo, env, timeout=900)
    where = subprocess.run([str(hv / "bin" / "python"), "-c",
                            "import token_optimizer; print(token_optimizer.__file__)"],
                           cwd=home, env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).resolve().is_relative_to(hv.resolve())
    cfg = (tmp_path / "hermes-home" / "config.yaml").read_text()
    assert "token-optimizer" in cfg
    listing = subprocess.run([str(hv / "bin" / "hermes"), "plugins", "list"], cwd=home, env=env,
                             capture_output=True, text=True, timeout=300)
    assert "token-optimizer" in listing.stdout, listing.stdout[-2000:] + listing.stderr[-1000:]
