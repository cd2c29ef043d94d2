"""Replay tests/realhost/scenario.json in a real Hermes Agent 0.19.0 (run with the Hermes venv's python).

Usage: ``<hermes-venv>/bin/python hermes_session_driver.py <result.json> <context_length>``

The caller (tests/test_realhost_session_hermes.py) prepares the environment the way a user's
shell would be: ``HOME``, ``HERMES_HOME`` whose ``config.yaml`` enables ``token-optimizer`` and
sets ``model.context_length``, shortened cooldowns, loopback-only base URLs, and the process
started in the project's workspace with ``TERMINAL_CWD`` set to it (what ``cd <project> &&
hermes`` does: Hermes' cli.py exports the launch directory as ``TERMINAL_CWD``, and its file
tools resolve relative paths against it).

The scripted model (tests/realhost/scripted_llm.py) runs in this process on 127.0.0.1. The
real ``AIAgent.run_conversation`` plays each turn (several model calls, ``read_file``,
``patch``, ``write_file``, ``delegate_task``); Hermes' own compressor
(``agent._compress_context(..., force=True)``, what ``/compress`` runs) compacts the first
session; the session is finalized as on exit, and a second agent (a new session) starts in
the same workspace. Results go to the JSON file; the test asserts on them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scripted_llm import ScriptedLLM, load_scenario

RESULT = Path(sys.argv[1])
OUT: dict[str, Any] = {"errors": [], "turns": [], "calls": []}
CALLS: list[dict[str, Any]] = OUT["calls"]


def observe(mgr: Any) -> None:
    """Record our own callbacks as Hermes calls them (kwargs digest, result)."""
    def wrap(name: str, cb: Any) -> Any:
        def wrapper(**kw: Any) -> Any:
            res = cb(**kw)
            args = kw.get("args") if name in ("pre_tool_call", "post_tool_call") else None
            CALLS.append({"hook": name, "t": time.time(), "session_id": kw.get("session_id"),
                          "tool_name": kw.get("tool_name"), "status": kw.get("status"),
                          "args": {k: v for k, v in (args or {}).items() if k in ("path", "goal", "mode")},
                          "result": res})
            return res
        return wrapper

    for name, cbs in mgr._hooks.items():
        for i, cb in enumerate(cbs):
            mod = getattr(cb, "__module__", "") or getattr(getattr(cb, "__self__", None), "__module__", "")
            if mod == "token_optimizer.hosts.hermes":
                cbs[i] = wrap(name, cb)


def new_agent(base_url: str) -> Any:
    from hermes_state import SessionDB
    from run_agent import AIAgent

    return AIAgent(session_db=SessionDB(), base_url=base_url, api_key="sk-local-stub",
                   provider="custom", model="scripted-1", quiet_mode=True,
                   enabled_toolsets=["file", "delegation"], skip_context_files=True, skip_memory=True,
                   max_iterations=16, platform="cli")


def main() -> None:
    scenario = load_scenario()
    llm = ScriptedLLM(scenario, budget=int(sys.argv[2]))
    port = llm.start()
    base_url = f"http://127.0.0.1:{port}/v1"
    ws = Path.cwd()
    OUT["workspace"] = str(ws)
    try:
        import hermes_cli.plugins as hp

        hp.discover_plugins()
        mgr = hp.get_plugin_manager()
        loaded = mgr._plugins.get("token-optimizer")
        OUT["plugin_loaded"] = bool(loaded and loaded.enabled)
        observe(mgr)
        from token_optimizer.hosts import hermes as plugin_mod

        plugin = plugin_mod.get_plugin()
        state = plugin.runtime.paths.root
        OUT["state_root"] = str(state)
        for session in scenario["sessions"]:
            agent = new_agent(base_url)
            history: list[Any] | None = None
            task_id = f"task-{session['name']}"
            for turn in session["turns"]:
                start = len(llm.requests)
                t0 = time.time()
                r = agent.run_conversation(turn["user"], conversation_history=history, task_id=task_id)
                history = r["messages"]
                plugin.worker.drain(10)
                sid = agent.session_id
                OUT["turns"].append({
                    "turn": turn["turn"], "session": session["name"], "session_id": sid, "t0": t0,
                    "t1": time.time(), "requests": [q["n"] for q in llm.requests[start:]],
                    "status": plugin.runtime.status(sid), "final": str(r.get("final_response"))[:300],
                })
                if turn["turn"] == session.get("compact_after_turn"):
                    dec = state / "read-cache" / "decisions" / f"{sid}.jsonl"
                    OUT["decisions_before_compact"] = [json.loads(x) for x in dec.read_text().splitlines()
                                                       if x.strip()] if dec.exists() else []
                    OUT["decisions_file"] = str(dec)
                    agent.compression_in_place = True
                    before = agent.session_id
                    sys_prompt = getattr(agent, "_cached_system_prompt", None) or ""
                    n0 = len(llm.requests)
                    history, _ = agent._compress_context(history, sys_prompt, force=True, task_id=task_id)
                    OUT["compaction"] = {"before": before, "after": agent.session_id, "t": time.time(),
                                         "requests": [q["n"] for q in llm.requests[n0:]],
                                         "history_len": len(history)}
            sid = agent.session_id
            OUT.setdefault("session_ids", {})[session["name"]] = sid
            # the user quits the CLI: Hermes finalizes the session
            hp.invoke_hook("on_session_finalize", session_id=sid, platform="cli", reason="shutdown")
            plugin.worker.drain(10)
        OUT["files"] = {rel: (ws / rel).read_text() if (ws / rel).exists() else None
                        for rel in scenario["expected_files"]}
        ck = state / "checkpoints"
        OUT["checkpoint_dirs"] = sorted(p.name for p in ck.iterdir()) if ck.exists() else []
    except Exception:
        OUT["errors"].append(traceback.format_exc())
    finally:
        llm.stop()
        OUT["requests"] = llm.requests
        OUT["tool_schemas"] = {k: sorted(v.get("properties") or {}) for k, v in llm.tool_schemas.items()
                               if k in ("read_file", "write_file", "patch", "delegate_task")}
        OUT["threads"] = sorted(t.name for t in threading.enumerate())
        RESULT.write_text(json.dumps(OUT, default=str))


if __name__ == "__main__":
    main()
