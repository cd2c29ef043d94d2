"""``token-optimizer openclaw install`` and ``token-optimizer openclaw doctor``.

The OpenClaw plugin directory (``package.json``, ``openclaw.plugin.json``, ``index.js``) ships
inside the wheel as ``token_optimizer/openclaw_plugin/``; in a source checkout it is the
repository's ``dist/`` directory. ``install`` copies it to a stable place (or links it in place
with ``--link``) and prints — or, with ``--run``, runs — the ``openclaw`` commands that register
it and set the config it needs. ``doctor`` checks the pieces: manifests, the OpenClaw config
switches, the Python interpreter and a live worker ping.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from token_optimizer import __version__, settings
from token_optimizer.fsutil import default_home

PLUGIN_ID = "token-optimizer-openclaw"
WORKER_MODULE = "token_optimizer.hosts.openclaw"
PLUGIN_FILES = ("package.json", "openclaw.plugin.json", "index.js", "index.d.ts", "README.md")


# ------------------------------------------------------------------ locations


def plugin_source_dir() -> Path | None:
    """The plugin directory shipped with this installation (wheel), else the checkout's dist/."""
    pkg = Path(__file__).resolve().parents[1]
    candidates = [pkg / "openclaw_plugin", pkg.parent / "dist"]
    for c in candidates:
        if (c / "openclaw.plugin.json").is_file() and (c / "index.js").is_file():
            return c.resolve()  # in a checkout openclaw_plugin is a symlink to dist/
    return None


def default_dest() -> Path:
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data) if data else default_home() / ".local" / "share"
    return base / "token-optimizer" / "openclaw-plugin"


def openclaw_state_dir() -> Path:
    env = os.environ.get("OPENCLAW_STATE_DIR")
    return Path(env).expanduser() if env else default_home() / ".openclaw"


def openclaw_config_path() -> Path:
    env = os.environ.get("OPENCLAW_CONFIG_PATH")
    return Path(env).expanduser() if env else openclaw_state_dir() / "openclaw.json"


def openclaw_command(explicit: str | None) -> list[str] | None:
    raw = explicit or os.environ.get("OPENCLAW_BIN")
    if raw:
        return shlex.split(raw)
    found = shutil.which("openclaw")
    return [found] if found else None


# ------------------------------------------------------------------ install


def copy_plugin(src: Path, dest: Path) -> Path:
    """Copy the plugin files into ``dest`` (created 0755, files 0644; never world-writable)."""
    if dest.exists() and not dest.is_dir():
        raise SystemExit(f"error: {dest} exists and is not a directory")
    if dest.is_symlink():
        raise SystemExit(f"error: refusing to write through the symlink {dest}")
    manifest = dest / "openclaw.plugin.json"
    if dest.is_dir() and any(dest.iterdir()) and not manifest.is_file():
        raise SystemExit(f"error: {dest} is not empty and holds no plugin; choose another --dest")
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("id") != PLUGIN_ID:
                raise SystemExit(f"error: {dest} holds another plugin; choose another --dest")
        except ValueError:
            raise SystemExit(f"error: {manifest} is unreadable; choose another --dest") from None
    dest.mkdir(parents=True, exist_ok=True, mode=0o755)
    dest.chmod(0o755)
    for name in PLUGIN_FILES:
        f = src / name
        if f.is_file():
            target = dest / name
            tmp = dest / (name + ".tmp")
            shutil.copyfile(f, tmp)
            tmp.chmod(0o644)
            os.replace(tmp, target)
    return dest


def setup_commands(plugin_dir: Path, python: str) -> list[list[str]]:
    entry = f"plugins.entries.{PLUGIN_ID}"
    return [
        ["plugins", "install", "--link", str(plugin_dir), "--force", "--accept-capabilities"],
        ["config", "set", f"{entry}.hooks.allowConversationAccess", "true", "--strict-json"],
        ["config", "set", f"{entry}.config", json.dumps({"pythonPath": python}), "--strict-json", "--merge"],
    ]


def config_snippet(plugin_dir: Path, python: str) -> str:
    snippet = {
        "plugins": {
            "load": {"paths": [str(plugin_dir)]},
            "entries": {
                PLUGIN_ID: {
                    "enabled": True,
                    "hooks": {"allowConversationAccess": True},
                    "config": {"pythonPath": python},
                }
            },
        }
    }
    return json.dumps(snippet, indent=2)


def cmd_install(args: argparse.Namespace) -> int:
    src = plugin_source_dir()
    if src is None:
        print("error: the OpenClaw plugin files are missing from this installation", file=sys.stderr)
        return 1
    python = args.python or sys.executable
    copy = bool(getattr(args, "copy", False) or args.dest)
    if copy and getattr(args, "link", False):
        print("error: --link uses the installed plugin files in place; drop --copy/--dest",
              file=sys.stderr)
        return 2
    if copy:
        # A copy goes stale on upgrade: doctor reports it and the worker refuses to run
        # for another version, until this is run again.
        plugin_dir = copy_plugin(src, Path(args.dest).expanduser().absolute() if args.dest else default_dest())
    else:
        # Default: the installed package's own copy, so an upgrade updates the plugin too.
        plugin_dir = src
    cmds = setup_commands(plugin_dir, python)
    oc = openclaw_command(args.openclaw)
    shown = oc or ["openclaw"]
    print(f"plugin directory: {plugin_dir}")
    if not args.run:
        print("run these to register it with OpenClaw:")
        for c in cmds:
            print("  " + shlex.join(shown + c))
        print(f"or merge this into {openclaw_config_path()}:")
        print(config_snippet(plugin_dir, python))
        print("then restart the gateway and check with: token-optimizer openclaw doctor")
        return 0
    if oc is None:
        print("error: `openclaw` not found on PATH; pass --openclaw CMD or set OPENCLAW_BIN", file=sys.stderr)
        return 1
    for c in cmds:
        print("$ " + shlex.join(oc + c), flush=True)
        rc = subprocess.run(oc + c, check=False).returncode
        if rc != 0:
            print(f"error: command failed with exit code {rc}", file=sys.stderr)
            return rc
    print("installed; restart the gateway, then: token-optimizer openclaw doctor")
    return 0


# ------------------------------------------------------------------ doctor


@dataclass
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str


def load_json5ish(text: str) -> Any:
    """JSON, or the common JSON5 extras (comments, trailing commas) stripped."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    out: list[str] = []
    i, n = 0, len(text)
    in_str: str | None = None
    while i < n:
        ch = text[i]
        if in_str:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == in_str:
                in_str = None
            i += 1
            continue
        if ch in "\"'":
            in_str = ch
            out.append(ch)
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        else:
            out.append(ch)
        i += 1
    cleaned = re.sub(r",(\s*[}\]])", r"\1", "".join(out))
    return json.loads(cleaned)


def check_manifests(plugin_dir: Path) -> list[Check]:
    checks: list[Check] = []
    try:
        pkg = json.loads((plugin_dir / "package.json").read_text())
        man = json.loads((plugin_dir / "openclaw.plugin.json").read_text())
    except (OSError, ValueError) as exc:
        return [Check("manifests", "fail", f"{plugin_dir}: {exc}")]
    problems: list[str] = []
    oc = pkg.get("openclaw") or {}
    exts = oc.get("extensions") or []
    if not exts:
        problems.append("package.json has no openclaw.extensions")
    for e in exts:
        p = (plugin_dir / e).resolve()
        if not p.is_file() or not p.is_relative_to(plugin_dir.resolve()):
            problems.append(f"entry {e} missing or outside the plugin root")
    if man.get("id") != PLUGIN_ID:
        problems.append(f"manifest id is {man.get('id')!r}, expected {PLUGIN_ID!r}")
    if not isinstance(man.get("configSchema"), dict):
        problems.append("manifest has no configSchema")
    if (man.get("activation") or {}).get("onStartup") is not True:
        problems.append("activation.onStartup is not true (the gateway would not load it at startup)")
    mode = plugin_dir.stat().st_mode
    if mode & 0o002:
        problems.append("plugin directory is world-writable (OpenClaw refuses it)")
    if problems:
        checks.append(Check("manifests", "fail", "; ".join(problems)))
    else:
        api = (oc.get("compat") or {}).get("pluginApi", "?")
        checks.append(Check("manifests", "ok", f"{plugin_dir} (id {PLUGIN_ID}, pluginApi {api})"))
    version = pkg.get("version")
    if version != __version__:
        checks.append(Check("plugin version", "fail",
                            f"the plugin files in {plugin_dir} are version {version}, the Python "
                            f"package is {__version__}: a stale copy; run `token-optimizer "
                            "openclaw install` again (it links the package's own files)"))
    else:
        checks.append(Check("plugin version", "ok", f"{version}, same as the Python package"))
    return checks


def find_linked_dir(config: dict[str, Any]) -> Path | None:
    paths = ((config.get("plugins") or {}).get("load") or {}).get("paths") or []
    for p in paths:
        if not isinstance(p, str):
            continue
        d = Path(p).expanduser()
        try:
            if json.loads((d / "openclaw.plugin.json").read_text()).get("id") == PLUGIN_ID:
                return d
        except (OSError, ValueError):
            continue
    return None


def check_config(config: dict[str, Any] | None, path: Path) -> list[Check]:
    if config is None:
        return [Check("openclaw config", "fail", f"{path} not found or unreadable; run `token-optimizer openclaw install`")]
    plugins = config.get("plugins") or {}
    entry = (plugins.get("entries") or {}).get(PLUGIN_ID)
    out: list[Check] = []
    if plugins.get("enabled") is False:
        out.append(Check("plugins enabled", "fail", "plugins.enabled is false"))
    if not isinstance(entry, dict):
        return [*out, Check("plugin entry", "fail", f"plugins.entries.{PLUGIN_ID} missing in {path}")]
    out.append(Check("plugin entry", "ok" if entry.get("enabled", True) is not False else "fail",
                     f"plugins.entries.{PLUGIN_ID}.enabled = {entry.get('enabled', True)}"))
    hooks = entry.get("hooks") or {}
    if hooks.get("allowConversationAccess") is True:
        out.append(Check("conversation access", "ok", "hooks.allowConversationAccess = true"))
    else:
        out.append(Check("conversation access", "fail",
                         f"set plugins.entries.{PLUGIN_ID}.hooks.allowConversationAccess: true "
                         "(agent_turn_prepare and agent_end are blocked without it)"))
    if hooks.get("allowPromptInjection") is False:
        out.append(Check("prompt injection", "fail",
                         "hooks.allowPromptInjection is false: restores and hints cannot be injected"))
    allow = plugins.get("allow")
    if isinstance(allow, list) and PLUGIN_ID not in allow:
        out.append(Check("plugins.allow", "fail", f"plugins.allow does not list {PLUGIN_ID}"))
    deny = plugins.get("deny")
    if isinstance(deny, list) and PLUGIN_ID in deny:
        out.append(Check("plugins.deny", "fail", f"plugins.deny lists {PLUGIN_ID}"))
    linked = find_linked_dir(config)
    out.append(Check("linked", "ok" if linked else "warn",
                     f"plugins.load.paths has {linked}" if linked else
                     "no plugins.load.paths entry holds this plugin (installed another way?)"))
    return out


def ping_worker(python: str, timeout: float = 30.0, shim_version: str | None = None) -> Check:
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([python, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        return Check("worker", "fail", f"cannot start {python}: {exc}")
    try:
        init = {"id": 0, "type": "init", "config": {}, "shimVersion": shim_version or __version__}
        out, err = proc.communicate((json.dumps(init) + '\n{"id":1,"type":"ping"}\n').encode(),
                                    timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return Check("worker", "fail", f"no answer within {timeout:.0f} s")
    ms = (time.monotonic() - t0) * 1000
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            return Check("worker", "fail", f"non-protocol line on stdout: {line[:80]!r}")
        if msg.get("id") == 0 and isinstance(msg.get("result"), dict) and \
                msg["result"].get("ok") is False:
            return Check("worker", "fail", str(msg["result"].get("error")))
        if msg.get("id") == 1 and isinstance(msg.get("result"), dict) and msg["result"].get("pong"):
            r = msg["result"]
            return Check("worker", "ok", f"answered a ping (token-optimizer {r.get('version')}, "
                                         f"Python {r.get('python')}, protocol "
                                         f"{r.get('protocol')}, start+ping {ms:.0f} ms)")
    tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
    return Check("worker", "fail", "no ping reply; stderr: " + " | ".join(tail))


def check_node() -> Check:
    node = shutil.which("node")
    if not node:
        return Check("node", "warn", "no node on PATH (OpenClaw needs Node >= 24.16 or >= 26.1)")
    try:
        v = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return Check("node", "warn", "node --version failed")
    m = re.match(r"v(\d+)\.(\d+)", v)
    ok = bool(m) and ((int(m.group(1)) == 24 and int(m.group(2)) >= 16) or (int(m.group(1)), int(m.group(2))) >= (26, 1)) if m else False
    return Check("node", "ok" if ok else "warn",
                 f"{v}" + ("" if ok else " (OpenClaw 2026.9.6 needs >= 24.16 or >= 26.1)"))


def run_doctor(args: argparse.Namespace) -> list[Check]:
    checks: list[Check] = []
    cfg_path = openclaw_config_path()
    config: dict[str, Any] | None = None
    try:
        loaded = load_json5ish(cfg_path.read_text())
        config = loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError):
        config = None
    plugin_dir: Path | None = Path(args.plugin_dir).expanduser() if args.plugin_dir else None
    if plugin_dir is None and config is not None:
        plugin_dir = find_linked_dir(config)
    if plugin_dir is None:
        plugin_dir = plugin_source_dir()
    if plugin_dir is None:
        checks.append(Check("manifests", "fail", "plugin directory not found"))
    else:
        checks.extend(check_manifests(plugin_dir))
    checks.extend(check_config(config, cfg_path))
    entry_cfg = (((config or {}).get("plugins") or {}).get("entries") or {}).get(PLUGIN_ID) or {}
    configured = (entry_cfg.get("config") or {}).get("pythonPath") if isinstance(entry_cfg, dict) else None
    env_python = settings.env_raw(settings.PYTHON)
    python = args.python or configured or (env_python.strip() if env_python else None) or "python3"
    resolved = shutil.which(python) if os.path.sep not in python else (python if os.access(python, os.X_OK) else None)
    if not resolved:
        checks.append(Check("python", "fail", f"{python} not found or not executable (set config.pythonPath)"))
    else:
        src = "--python" if args.python else "config.pythonPath" if configured else \
            settings.PYTHON.env if env_python else "default"
        checks.append(Check("python", "ok", f"{resolved} (from {src})"))
        checks.append(ping_worker(resolved, shim_version=_files_version(plugin_dir)))
    checks.append(check_node())
    from token_optimizer.commands.doctor import ATTENTION, probe_writable
    from token_optimizer.fsutil import resolve_paths

    status, detail = probe_writable(resolve_paths().root)  # a read-only root fails every hook
    checks.append(Check("state root", "fail" if status == ATTENTION else "ok", detail))
    return checks


def _files_version(plugin_dir: Path | None) -> str | None:
    """The version in a plugin directory's package.json (what its shim announces)."""
    if plugin_dir is None:
        return None
    try:
        v = json.loads((plugin_dir / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) else None


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_doctor(args)
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "pluginId": PLUGIN_ID, "config": str(openclaw_config_path()),
                          "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{c.status:>4}] {c.name}: {c.detail}")
        print("all good" if not failed else "problems found")
    return 1 if failed else 0


def cmd_path(args: argparse.Namespace) -> int:
    src = plugin_source_dir()
    if src is None:
        return 1
    print(src)
    return 0
