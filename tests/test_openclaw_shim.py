"""The OpenClaw JS shim (dist/index.js) under a fake plugin api, with the real Python worker.

Needs a ``node`` binary (any of 18/20/24) but no OpenClaw install: a small driver
(tests/realhost/openclaw_shim_driver.mjs) imports the entry once per registration mode, like
the host does, and fires hooks at the recorded handlers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from realhost.oc_host import cache_dir, ensure_openclaw
from realhost.procs import pid_alive, wait_for

from token_optimizer.hooks import OPENCLAW_HOOKS

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "dist" / "index.js"
DRIVER = ROOT / "tests" / "realhost" / "openclaw_shim_driver.mjs"

EXPECTED_HOOKS = list(OPENCLAW_HOOKS)
OC_CACHE = cache_dir()  # resolved at import: the per-test fixtures redirect HOME afterwards


def _node() -> str:
    node = shutil.which("node")
    if node:
        return node
    # no node on PATH: the real-host cache's Node 24 (installed on first use)
    try:
        return str(ensure_openclaw(OC_CACHE).node)
    except Exception as exc:
        if os.environ.get("TOKEN_OPTIMIZER_REQUIRE_HOSTS") == "1":
            pytest.fail(f"no node binary for the shim driver: {exc}")
        pytest.skip(f"no node binary on PATH or in the real-host cache: {exc}")


def drive(scenario: str, config: dict[str, Any], *, extra_env: dict[str, str] | None = None,
          timeout: float = 60) -> dict[str, Any]:
    env = dict(os.environ)
    env["SHIM_CONFIG"] = json.dumps(config)
    env.update(extra_env or {})
    proc = subprocess.run([_node(), str(DRIVER), scenario, str(ENTRY)], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stderr
    out: dict[str, Any] = json.loads(lines[-1])
    assert "driverError" not in out, out["driverError"]
    return out


def test_registration_is_static_and_spawns_nothing() -> None:
    out = drive("registration", {"pythonPath": sys.executable})
    assert out["registerReturn"] == "undefined"  # synchronous register
    assert out["hooksFull"] == EXPECTED_HOOKS
    assert out["hooksDiscovery"] == EXPECTED_HOOKS
    assert out["exportedHooks"] == EXPECTED_HOOKS
    assert "before_agent_start" not in out["hooksFull"]
    assert out["sameBridge"] is True  # one bridge per process across module instances
    assert out["spawnedByRegister"] == 0  # lazily spawned on the first hook only
    assert out["pluginId"] == "token-optimizer-openclaw"
    assert {s["id"] for s in out["services"]} == {"token-optimizer"}
    assert all(s["hasStop"] for s in out["services"])
    # the chat command is registered in every registration, without starting the worker
    assert [(c["mode"], c["name"]) for c in out["commands"]] == [
        ("full", "token-optimizer"), ("discovery", "token-optimizer")]
    assert all(c["acceptsArgs"] is True and c["handler"] == "function" and c["description"].strip()
               for c in out["commands"])


def test_flow_with_real_worker_enqueues_through_full_api(home: Path) -> None:
    out = drive("flow", {"pythonPath": sys.executable, "timeoutMs": 3000})
    assert out["spawnedByRegister"] == 0
    assert out["readBefore"] is None  # nothing blocked
    # after_compaction arrived through the discovery api, yet the enqueue used the full api
    assert out["enqueues"], out["logs"]
    assert {e["mode"] for e in out["enqueues"]} == {"full"}
    inj = out["enqueues"][0]["input"]
    assert inj["sessionKey"] == "agent:main:explicit:drv-1"
    assert inj["placement"] == "prepend_context"
    assert inj["text"].strip()
    assert inj["idempotencyKey"]
    assert out["stats"]["enqueues"] >= 1
    # the restore is accepted and queued, so turn 2 does not duplicate it as prependContext
    turn2 = out["turn2"] or {}
    assert inj["text"] not in (turn2.get("prependContext") or "")
    # session_end released the session from every per-session collection
    before = out["statusBeforeEnd"]["tracked"]
    after = out["statusAfterEnd"]["tracked"]
    assert sum(before.values()) > 0
    assert sum(after.values()) == 0, after
    # gateway_stop stops the worker promptly
    assert out["aliveAfterStop"] is False
    assert out["pidExistsAfterStop"] is False
    assert out["stopMs"] < 3000
    # the ctx sent to Python was cleaned (a non-serialisable abortSignal/getCron would have broken it)
    assert out["statusBeforeEnd"]["errors"] == 0
    # state really landed under the state root
    root = home / ".openclaw" / "token-optimizer"
    assert (root / "checkpoints").is_dir()


FAKE_WORKER = """#!{python}
# Fake worker for the shim tests: behaviour chosen by the content of $FAKE_MODE_FILE.
import json, os, sys
mode = open(os.environ["FAKE_MODE_FILE"]).read().strip()
if mode == "real":
    os.execv(sys.executable, [sys.executable, "-m", "token_optimizer.hosts.openclaw"])
out = sys.stdout
out.write(json.dumps({{"id": None, "type": "ready", "pid": os.getpid(), "protocol": 1}}) + "\\n")
out.flush()
for line in sys.stdin:
    msg = json.loads(line)
    if mode == "garbage" and msg.get("id") is not None:
        out.write("this is not json\\n[1, 2, 3]\\n\\n")
        out.write(json.dumps({{"id": msg["id"], "result": {{"block": "yes", "prependContext": 5}}}}) + "\\n")
        out.write(json.dumps({{"id": 99999, "result": {{"block": True}}}}) + "\\n")
        out.flush()
    # "hang": never answer
"""


def test_fail_open_on_kill_timeout_garbage_and_respawn(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_WORKER.format(python=sys.executable))
    fake.chmod(0o755)
    mode = tmp_path / "mode"
    mode.write_text("hang")
    out = drive("crash", {"pythonPath": str(fake), "timeoutMs": 400, "startupTimeoutMs": 0},
                extra_env={"FAKE_MODE_FILE": str(mode)})
    # killed mid-hook: the host gets undefined at once, well within the timeout
    assert out["killedResult"] is None
    assert out["killedResolveMs"] < out["timeoutMs"]
    # a hanging worker: undefined at the timeout (not the host's 15 s)
    assert out["timeoutResult"] is None
    assert out["timeoutMs"] - 50 <= out["timeoutElapsedMs"] < out["timeoutMs"] + 1500
    # malformed replies are ignored; a non-boolean block never blocks a tool
    assert out["garbageResult"] is None
    assert out["garbageTurn"] is None
    assert out["badLines"] >= 2
    # the next hook respawned a real worker that answers
    assert out["respawned"] == 1
    assert out["respawnResult"] is None  # a read of a missing file is not blocked
    assert out["pingAfterRespawn"]["pong"] is True
    assert out["pidsDiffer"] is True
    assert not any("threw" in json.dumps(v) for v in out.values() if isinstance(v, dict))
    assert any("stopped" in m for _lvl, _mode, m in out["logs"])


def test_missing_python_fails_open() -> None:
    out = drive("nopython", {"pythonPath": "/nonexistent/bin/python3"})
    assert out["toolResult"] is None
    assert out["turnResult"] is None
    assert out["elapsedMs"] < 1000
    assert any("cannot start the Python worker" in m for _lvl, _mode, m in out["logs"])
    # the chat command still answers, at once, with a reply text
    assert out["commandResult"]["text"].startswith("[Token Optimizer] status unavailable")
    assert out["commandMs"] < 1000


def test_chat_command_answers_with_the_shared_report(home: Path) -> None:
    """``/token-optimizer`` on OpenClaw: the worker's ``command`` message, the Hermes report."""
    out = drive("command", {"pythonPath": sys.executable, "timeoutMs": 3000})
    assert out["spawnedByRegister"] == 0
    assert out["beforeAnyHook"] == {"text": "[Token Optimizer] No session seen yet in this chat."}
    text = out["inChat"]["text"]
    assert text.startswith("[Token Optimizer] session drv-1\n  chat: agent:main:explicit:drv-1\n")
    assert "context fill: 25.0% of 200,000 tokens" in text
    assert "quality: " in text and "checkpoints: " in text
    assert text == out["discHandler"]["text"]
    # no session id in the command ctx: the session index routes the chat's key
    assert out["keyOnly"]["text"] == text
    assert "/token-optimizer <id>" in out["help"]["text"]
    assert out["status"]["result"]["errors"] == 0


def test_cli_process_exits_by_itself_and_takes_the_worker_along() -> None:
    """The worker and its idle pipes are unref'd: a CLI-like process ends without a stop call,
    and the process-exit handler ends the worker."""
    t0 = time.monotonic()
    out = drive("idle", {"pythonPath": sys.executable, "timeoutMs": 3000}, timeout=30)
    assert time.monotonic() - t0 < 20
    pid = out["workerPid"]
    assert isinstance(pid, int)
    assert wait_for(lambda: not pid_alive(pid), 5, 0.05)


def test_two_live_registrations_handle_each_call_once(tmp_path: Path) -> None:
    """openclaw/openclaw#77822: register() twice, both handler sets live: one worker, and each
    call is handled once (no doubled tool counts, no doubled prependContext)."""
    trace = tmp_path / "trace.jsonl"
    env = {**os.environ, "SHIM_CONFIG": json.dumps({"pythonPath": sys.executable, "timeoutMs": 5000}),
           "TOKEN_OPTIMIZER_OPENCLAW_TRACE": str(trace),
           "TOKEN_OPTIMIZER_HOME": str(tmp_path / "state")}
    p = subprocess.run([_node(), str(ROOT / "tests" / "realhost" / "openclaw_double_register.mjs"),
                        str(ENTRY)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["handlers"] == 2  # both registrations' handlers are live ...
    assert sum(r is not None for r in out["turn"]) <= 1  # never two prependContext answers
    rows = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    hooks = [r["hook"] for r in rows]
    assert hooks.count("after_tool_call") == 3 and hooks.count("before_tool_call") == 3
    assert hooks.count("agent_turn_prepare") == 1
    assert len({r["pid"] for r in rows}) == 1  # ... and one worker
