"""``token-optimizer doctor [--host openclaw|hermes] [--json]``: is the plugin really working?

For each host found (its config file exists) or the one named, it checks:

* the plugin is enabled with the switches it needs (OpenClaw: the plugin entry,
  ``hooks.allowConversationAccess``; Hermes: ``plugins.enabled`` lists ``token-optimizer``);
* the interpreter the host will run and the package version there (OpenClaw: the
  ``pythonPath`` of the plugin config, else ``$TOKEN_OPTIMIZER_PYTHON``, else ``python3``;
  Hermes: the interpreter of the ``hermes`` command on PATH, else this one, and whether the
  ``hermes_agent.plugins`` entry point resolves there);
* the state root is writable (a real write, fsync and unlink of a temp file in it);
* hooks were seen recently (the runtime's ``heartbeat-<host>.json``, rewritten at most once
  a minute) and by this version;
* the settings are valid.

Then the checkpoint store's health (the former checkpoint-only doctor). Every check is
``ok``, ``info`` or ``attention``; any ``attention`` makes the exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from token_optimizer import __version__, heartbeat, jsutil
from token_optimizer import settings as st
from token_optimizer.commands import hostconfig
from token_optimizer.commands.config import effective, state_paths
from token_optimizer.fsutil import StatePaths, open_checked_dir
from token_optimizer.policy import CheckpointPolicy, PolicySettings

OK, INFO, ATTENTION = "ok", "info", "attention"
HEARTBEAT_STALE_S = 24 * 3600
SUBPROCESS_TIMEOUT_S = 30.0
TELEMETRY_HINT = (f"checkpoint telemetry is off: set {st.CHECKPOINT_TELEMETRY.env}=1 "
                  f"(or `{st.CHECKPOINT_TELEMETRY.key}: true` in the plugin config) and restart "
                  "the gateway to record checkpoint triggers")


@dataclass
class Check:
    section: str
    name: str
    status: str
    detail: str


# ---------------------------------------------------------------- pieces


def probe_writable(root: Path) -> tuple[str, str]:
    """Write, fsync and unlink a temp file in ``root`` (or, when it does not exist yet, in
    the nearest existing parent, where the runtime would create it)."""
    name = f".doctor-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    data = b"token-optimizer doctor write probe\n"
    if root.is_dir() and not root.is_symlink():
        try:
            with open_checked_dir(root, root) as d:
                fd = d.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                d.unlink(name)
        except OSError as exc:
            return ATTENTION, f"{root} is not writable ({exc.strerror or exc}); every hook would fail"
        return OK, f"{root} is writable"
    if os.path.lexists(root):
        return ATTENTION, f"{root} is not a real directory (a symlink or a file)"
    parent = root.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    probe = parent / name
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return ATTENTION, (f"{root} does not exist and cannot be created: {parent} is not "
                           f"writable ({exc.strerror or exc})")
    return OK, f"{root} does not exist yet; it will be created on the first hook ({parent} is writable)"


_VERSION_SCRIPT = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import token_optimizer
    out["version"] = token_optimizer.__version__
    out["path"] = token_optimizer.__file__
except Exception as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)
if "--entry-point" in sys.argv:
    try:
        from importlib.metadata import entry_points
        eps = [e for e in entry_points(group="hermes_agent.plugins") if e.name == "token-optimizer"]
        if not eps:
            out["entryPoint"] = "missing"
        else:
            mod = eps[0].load()
            out["entryPoint"] = "ok" if callable(getattr(mod, "register", None)) else "no register()"
    except Exception as exc:
        out["entryPoint"] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def probe_interpreter(python: str, *, entry_point: bool = False) -> dict[str, Any]:
    argv = [python, "-c", _VERSION_SCRIPT] + (["--entry-point"] if entry_point else [])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run {python}: {exc}"}
    for line in reversed(proc.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                return doc
    tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
    return {"error": f"{python} exited {proc.returncode}: {tail}"}


def _which(python: str) -> str | None:
    if os.path.sep in python:
        p = os.path.expanduser(python)
        return p if os.path.isfile(p) and os.access(p, os.X_OK) else None
    return shutil.which(python)


def hermes_interpreter() -> tuple[str, str]:
    """The Python the ``hermes`` command runs (its shebang), else this interpreter."""
    cmd = shutil.which("hermes")
    if cmd:
        try:
            with open(cmd, "rb") as f:
                first = f.readline(512).decode("utf-8", "replace").strip()
        except OSError:
            first = ""
        if first.startswith("#!"):
            parts = first[2:].split()
            if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
                found = shutil.which(parts[1])
                if found:
                    return found, f"`hermes` on PATH ({cmd})"
            elif parts:
                return parts[0], f"`hermes` on PATH ({cmd})"
    return sys.executable, "this interpreter (no `hermes` on PATH)"


def interpreter_checks(host: str, cfg: hostconfig.HostConfig | None) -> list[Check]:
    out: list[Check] = []
    if host == "openclaw":
        r = st.resolve(st.PYTHON, st.Sources.current(cfg.plugin_config() if cfg else None, host))
        python = str(r.value)
        resolved = _which(python)
        if resolved is None:
            return [Check(host, "interpreter", ATTENTION,
                          f"{python} (from {r.source}) not found or not executable; set "
                          "plugins.entries.token-optimizer-openclaw.config.pythonPath")]
        out.append(Check(host, "interpreter", OK, f"{resolved} (pythonPath from {r.source})"))
        info = probe_interpreter(resolved)
    else:
        python, why = hermes_interpreter()
        out.append(Check(host, "interpreter", OK, f"{python} ({why})"))
        info = probe_interpreter(python, entry_point=True)
    if "version" not in info:
        out.append(Check(host, "package", ATTENTION,
                         f"token_optimizer is not importable there: {info.get('error', 'unknown')}"))
        return out
    if info["version"] != __version__:
        out.append(Check(host, "package", ATTENTION,
                         f"the host runs token_optimizer {info['version']} ({info.get('path')}), "
                         f"this command is {__version__}: reinstall it into that interpreter"))
    else:
        out.append(Check(host, "package", OK,
                         f"token_optimizer {info['version']} on Python {info.get('python')}"))
    if host == "hermes":
        ep = info.get("entryPoint")
        out.append(Check(host, "entry point", OK if ep == "ok" else ATTENTION,
                         "hermes_agent.plugins: token-optimizer resolves" if ep == "ok" else
                         f"hermes_agent.plugins: token-optimizer {ep}"))
    return out


def switch_checks(host: str, cfg: hostconfig.HostConfig) -> list[Check]:
    if not cfg.found:
        return [Check(host, "config", ATTENTION, f"{cfg.path} not found")]
    if cfg.document is None:
        return [Check(host, "config", ATTENTION, f"{cfg.path}: {cfg.error or 'empty'}")]
    if host == "openclaw":
        from token_optimizer.hosts.openclaw_install import check_config

        status = {"ok": OK, "warn": INFO, "fail": ATTENTION}
        return [Check(host, c.name, status.get(c.status, ATTENTION), c.detail)
                for c in check_config(cfg.document, cfg.path)]
    plugins = cfg.plugins()
    enabled = plugins.get("enabled")
    disabled = plugins.get("disabled")
    out: list[Check] = []
    if isinstance(enabled, list) and hostconfig.HERMES_PLUGIN in enabled:
        out.append(Check(host, "plugin enabled", OK, f"plugins.enabled lists {hostconfig.HERMES_PLUGIN}"))
    else:
        out.append(Check(host, "plugin enabled", ATTENTION,
                         f"plugins.enabled in {cfg.path} does not list {hostconfig.HERMES_PLUGIN}: "
                         f"run `hermes plugins enable {hostconfig.HERMES_PLUGIN}`"))
    if isinstance(disabled, list) and hostconfig.HERMES_PLUGIN in disabled:
        out.append(Check(host, "plugin disabled", ATTENTION,
                         f"plugins.disabled lists {hostconfig.HERMES_PLUGIN}"))
    return out


def heartbeat_check(host: str, paths: StatePaths, now_ms: float | None = None) -> Check:
    beat = heartbeat.read(paths, host)
    if beat is None:
        return Check(host, "hooks seen", ATTENTION,
                     f"no hook seen yet ({paths.root / heartbeat.filename(host)} absent): is the "
                     "gateway running with the plugin loaded?")
    at = beat.get("lastHookAtMs")
    now = time.time() * 1000 if now_ms is None else now_ms
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        return Check(host, "hooks seen", ATTENTION, "heartbeat unreadable")
    age_s = max(0.0, (now - at) / 1000)
    when = f"last hook {beat.get('lastHookAt', '?')} ({_age(age_s)} ago, pid {beat.get('pid')})"
    if beat.get("version") != __version__:
        return Check(host, "hooks seen", ATTENTION,
                     f"{when} ran token_optimizer {beat.get('version')}, not {__version__}: "
                     "restart the gateway (and re-run the install if the plugin copy is stale)")
    if age_s > HEARTBEAT_STALE_S:
        return Check(host, "hooks seen", ATTENTION, f"{when}: no hook for over a day")
    return Check(host, "hooks seen", OK, when)


def _age(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def settings_checks(section: str, host: str | None, cfg: hostconfig.HostConfig | None,
                    paths: StatePaths) -> list[Check]:
    rows = effective(host, cfg.plugin_config() if cfg else None, paths)
    bad = [r for r in rows if not r.valid]
    if not bad:
        return [Check(section, "settings", OK, f"{len(rows)} settings valid")]
    return [Check(section, "settings", ATTENTION,
                  f"{r.setting.name} from {r.source} = {r.raw!r}: {r.problem}; using {r.value!r}")
            for r in bad]


# ---------------------------------------------------------------- the command


def run_doctor(args: argparse.Namespace) -> tuple[list[Check], dict[str, Any], list[str]]:
    checks: list[Check] = []
    named = getattr(args, "host", None)
    hosts: list[hostconfig.HostConfig] = (
        [hostconfig.host_config(named)] if named else hostconfig.detect())
    for cfg in hosts:
        host = cfg.host
        paths = state_paths(args, host)
        checks.extend(switch_checks(host, cfg))
        if getattr(args, "probe", True):
            checks.extend(interpreter_checks(host, cfg))
        status, detail = probe_writable(paths.root)
        checks.append(Check(host, "state root", status, detail))
        checks.append(heartbeat_check(host, paths))
        checks.extend(settings_checks(host, host, cfg, paths))
    if not hosts:
        paths = state_paths(args, None)
        oc, he = hostconfig.openclaw(), hostconfig.hermes()
        checks.append(Check("host", "host", INFO,
                            f"no host config found ({oc.path}, {he.path}); name one with --host"))
        status, detail = probe_writable(paths.root)
        checks.append(Check("state", "state root", status, detail))
        checks.extend(settings_checks("state", None, None, paths))
    # the checkpoint store of the first host checked (or the --home / default root)
    first = hosts[0].host if hosts else None
    cp_paths = state_paths(args, first)
    policy = CheckpointPolicy(cp_paths, PolicySettings.resolve(
        st.Sources.current(hosts[0].plugin_config() if hosts else None, first)))
    health = policy.health()
    hooks_seen = any(c.name == "hooks seen" and c.status == OK for c in checks)
    for issue in health["issues"]:
        # hooks run but nothing was captured yet: the runtime creates the directory then
        fresh = hooks_seen and not os.path.lexists(cp_paths.checkpoints)
        checks.append(Check("checkpoints", "checkpoint store", INFO if fresh else ATTENTION, issue))
    telemetry = policy.settings.telemetry
    if not telemetry:
        checks.append(Check("checkpoints", "telemetry", INFO, TELEMETRY_HINT))
    return checks, health, [c.host for c in hosts]


def _last_trigger(health: dict[str, Any], telemetry: bool) -> str:
    last = health.get("lastCheckpointTrigger")
    if last:
        return str(last)
    if not telemetry and health.get("checkpointCount", 0):
        return "unknown (" + TELEMETRY_HINT + ")"
    return "none"


def cmd_doctor(args: argparse.Namespace) -> int:
    checks, health, hosts = run_doctor(args)
    attention = [c for c in checks if c.status == ATTENTION]
    telemetry_off = any(c.name == "telemetry" for c in checks)
    if args.json:
        doc: dict[str, Any] = {"ok": not attention}
        doc.update({k: v for k, v in health.items() if k != "ok"})
        doc["checkpointsOk"] = health["ok"]
        doc["telemetryEnabled"] = not telemetry_off
        doc["hosts"] = hosts
        doc["version"] = __version__
        doc["checks"] = [asdict(c) for c in checks]
        print(jsutil.dumps_pretty(doc))
        return 1 if attention else 0
    lines = [
        "Token Optimizer doctor",
        "=" * 50,
        f"Status:              {'healthy' if not attention else 'needs attention'}",
        f"Version:             {__version__}",
        f"Hosts:               {', '.join(hosts) if hosts else 'none found'}",
    ]
    section = None
    for c in checks:
        if c.section == "checkpoints":
            continue
        if c.section != section:
            section = c.section
            lines.append(f"[{section}]")
        lines.append(f"  {c.status:>9}  {c.name}: {c.detail}")
    lines += [
        "[checkpoints]",
        f"Checkpoint root:     {health['checkpointRoot']}",
        f"Sessions:            {health['sessionCount']}",
        f"Checkpoint files:    {health['checkpointCount']}",
        f"Policy files:        {health['policyCount']}",
        f"Pending triggers:    {health['pendingCount']}",
        f"Stored bytes:        {health['checkpointBytes']}",
        f"Recent events (7d):  {health['recentCheckpointEvents']}",
        f"Last trigger:        {_last_trigger(health, not telemetry_off)}",
    ]
    if telemetry_off and not health.get("checkpointCount", 0):
        lines.append(f"Telemetry:           off ({TELEMETRY_HINT})")
    if health["issues"]:
        lines.append("Issues:")
        lines.extend(f"  - {issue}" for issue in health["issues"])
    else:
        lines.append("Issues: none")
    if attention:
        lines.append(f"{len(attention)} item(s) need attention")
    print("\n".join(lines))
    return 1 if attention else 0


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("doctor", help="check that the plugin works for the host(s) found")
    p.add_argument("--host", choices=hostconfig.HOSTS, default=None,
                   help="check this host (default: every host whose config file exists)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor)
