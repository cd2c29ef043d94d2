"""``token-optimizer demo``: drive a bundled sample session through the runtime.

The sample (``data/demo_session.json``) is a realistic coding session sent as
OpenClaw-shaped hook payloads: user turns with growing token usage, file
reads (one redundant), a batch of edits, a helper-agent spawn, a compaction
whose restore the host refuses to queue (as the real gateway's discovery-mode
API does), and a second session that starts by asking to continue the work.
Everything is written under a temporary state root (or ``--home``).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from token_optimizer.events import HookOutcome
from token_optimizer.jsutil import to_fixed


def load_sample() -> dict[str, Any]:
    data = importlib.resources.files("token_optimizer").joinpath("data/demo_session.json")
    sample: dict[str, Any] = json.loads(data.read_text(encoding="utf-8"))
    return sample


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, session: str, what: str, **details: Any) -> dict[str, Any]:
        step = {"session": session, "step": what, **details}
        self.steps.append(step)
        return step


def run_demo(home: Path, workspace: Path) -> dict[str, Any]:
    """Run the sample session; return a machine-readable report."""
    # Import lazily so `--help` works even if a runtime dependency is broken.
    from token_optimizer.hosts.openclaw_events import handle
    from token_optimizer.policy import PolicySettings
    from token_optimizer.runtime import TokenOptimizer

    sample = load_sample()
    for rel, text in sample["files"].items():
        p = workspace / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")

    # A real gateway spaces events over minutes; the demo replays them in
    # milliseconds, so the cooldowns are switched off for it.
    settings = PolicySettings.from_env({
        "TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS": "0",
        "TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS": "0",
    })
    rt = TokenOptimizer(home, settings=settings, cwd=str(workspace))
    rec = _Recorder()
    model = sample["model"]
    budget = sample["contextTokenBudget"]

    def hook(name: str, event: Mapping[str, Any], ctx: Mapping[str, Any]) -> HookOutcome:
        return handle(rt, name, dict(event), dict(ctx))

    def new_checkpoints(sid: str, before: int) -> list[dict[str, str]]:
        files = rt.policy.checkpoint_files(sid)
        return [{"trigger": f.trigger, "file": f.path.name} for f in files[before:]]

    hook("gateway_start", {"port": 0}, {})
    for sess in sample["sessions"]:
        sid, key, agent = sess["sessionId"], sess["sessionKey"], sess["agentId"]
        ctx = {"sessionId": sid, "sessionKey": key, "agentId": agent, "trigger": "user",
               "workspaceDir": str(workspace)}
        hook("session_start", {"sessionId": sid, "sessionKey": key}, ctx)
        history: list[dict[str, Any]] = []

        def turn(prompt: str, spec: Mapping[str, Any] | None, sid: str = sid,
                 ctx: dict[str, Any] = ctx, history: list[dict[str, Any]] = history) -> None:
            n0 = len(rt.policy.checkpoint_files(sid))
            out = hook("agent_turn_prepare", {"prompt": prompt, "messages": list(history),
                                              "queuedInjections": []}, ctx)
            history.append({"role": "user", "content": prompt})
            st = rec.add(sid, "user turn", prompt=prompt)
            if out.result and out.result.get("prependContext"):
                st["prependContext"] = out.result["prependContext"]
            tools_done: list[dict[str, Any]] = []
            for tool in (spec or {}).get("tools", []):
                params = dict(tool["params"])
                if "path" in params:
                    params["path"] = str(workspace / params["path"])
                before = hook("before_tool_call", {"toolName": tool["toolName"], "params": params}, ctx)
                blocked = bool(before.result and before.result.get("block"))
                if not blocked and tool["toolName"] in ("edit", "write") and "path" in params:
                    with open(params["path"], "a", encoding="utf-8") as fh:
                        fh.write("# edited by the demo\n")
                hook("after_tool_call", {"toolName": tool["toolName"], "params": params,
                                         "error": "blocked" if blocked else None}, ctx)
                entry = {"tool": tool["toolName"], "blocked": blocked}
                if "path" in tool["params"]:
                    entry["path"] = tool["params"]["path"]
                if blocked and before.result:
                    entry["blockReason"] = before.result.get("blockReason")
                tools_done.append(entry)
            if spec:
                u = spec["usage"]
                hook("llm_output", {"sessionId": sid, "model": model, "contextTokenBudget": budget,
                                    "usage": {**u, "total": sum(u.values())}}, ctx)
                history.append({"role": "assistant", "content": spec["assistant"]})
                hook("agent_end", {"messages": list(history), "success": True}, ctx)
            if tools_done:
                st["tools"] = tools_done
            status = rt.status(sid)
            st["fillPct"] = status.get("fillPct")
            st["qualityScore"] = status.get("qualityScore")
            st["checkpoints"] = new_checkpoints(sid, n0)

        for t in sess["turns"]:
            turn(t["prompt"], t)

        comp = sess.get("compaction")
        if comp:
            n0 = len(rt.policy.checkpoint_files(sid))
            hook("before_compaction", {"messageCount": len(history), "tokenCount": 120000}, ctx)
            after = hook("after_compaction", {"messageCount": len(history),
                                              "compactedCount": comp["compactedCount"],
                                              "sessionFile": f"sqlite:main:{sid}"}, ctx)
            enq = [a for a in after.actions_json() if a["type"] == "enqueue_next_turn_injection"]
            for a in enq:
                # Behave like OpenClaw 2026.9.6's discovery-mode api: nothing is queued.
                rt.enqueue_result(a["sessionKey"], a["idempotencyKey"], False)
            rec.add(sid, "compaction", checkpoints=new_checkpoints(sid, n0),
                    restoreRequested=[{"idempotencyKey": a["idempotencyKey"],
                                       "chars": len(a["text"])} for a in enq],
                    hostQueued=False)
            turn(sess["after_compaction_turn"], None)

        hook("session_end", {"sessionId": sid, "sessionKey": key, "reason": "deleted"}, ctx)
        rec.add(sid, "session end", tracked=dict(rt.tracked_counts()))
    hook("gateway_stop", {"reason": "demo finished"}, {})
    rt.close()

    files: list[dict[str, Any]] = []
    for root, _dirs, names in os.walk(rt.paths.root):
        for n in sorted(names):
            p = Path(root) / n
            files.append({"path": str(p.relative_to(rt.paths.root)), "bytes": p.stat().st_size})
    files.sort(key=lambda f: f["path"])
    return {"stateRoot": str(rt.paths.root), "workspace": str(workspace), "steps": rec.steps,
            "files": files}


def _short(text: str, n: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n].rstrip() + " …"


def render(report: Mapping[str, Any]) -> str:
    note = " (temporary, removed on exit; pass --home DIR to keep it)" if report.get("temporary") else ""
    lines = [f"State root: {report['stateRoot']}{note}", ""]
    for st in report["steps"]:
        sid = st["session"]
        if st["step"] == "user turn":
            fill = st.get("fillPct")
            q = st.get("qualityScore")
            figures = "no usage yet" if fill is None else f"fill {to_fixed(fill, 1)}%, quality {q}"
            lines.append(f"[{sid}] user: {_short(st['prompt'], 90)}")
            lines.append(f"    {figures}")
            for t in st.get("tools", []):
                mark = f"BLOCKED: {_short(t.get('blockReason') or '', 120)}" if t["blocked"] else "ok"
                lines.append(f"    tool {t['tool']} {t.get('path', '')} -> {mark}")
            for c in st.get("checkpoints", []):
                lines.append(f"    checkpoint captured: {c['trigger']} ({c['file']})")
            if st.get("prependContext"):
                lines.append("    context injected into this turn:")
                for ln in _short(st["prependContext"], 700).splitlines():
                    lines.append(f"      | {ln}")
        elif st["step"] == "compaction":
            lines.append(f"[{sid}] host compacts the context")
            for c in st.get("checkpoints", []):
                lines.append(f"    checkpoint captured: {c['trigger']} ({c['file']})")
            for r in st.get("restoreRequested", []):
                lines.append(f"    restore requested ({r['chars']} chars, key {r['idempotencyKey']});"
                             " the host did not queue it, so it rides on the next user turn")
        elif st["step"] == "session end":
            left = {k: v for k, v in st["tracked"].items() if v}
            lines.append(f"[{sid}] session end; per-session entries still tracked: "
                         f"{left or 'none for this session'}")
        lines.append("")
    lines.append("Files written:")
    for f in report["files"]:
        lines.append(f"  {f['path']}  ({f['bytes']} bytes)")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.home:
        home = Path(args.home)
        home.mkdir(parents=True, exist_ok=True)
        workspace = Path(tempfile.mkdtemp(prefix="token-optimizer-demo-")) / "payments-service"
        report = run_demo(home, workspace)
    else:
        with tempfile.TemporaryDirectory(prefix="token-optimizer-demo-") as tmp:
            report = run_demo(Path(tmp) / "state", Path(tmp) / "payments-service")
            report["temporary"] = True
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(render(report) + "\n")
    return 0


def register_cli(sub: Any) -> None:
    p = sub.add_parser("demo", help="drive a bundled sample session through the runtime and show what happened")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.set_defaults(func=cmd_demo)
