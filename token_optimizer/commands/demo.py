"""``token-optimizer demo``: drive a bundled sample session through the runtime.

The sample (``data/demo_session.json``) is a realistic coding session sent as
OpenClaw-shaped hook payloads: user turns with growing token usage, file
reads (one redundant), a batch of edits, a formatter run that changes a file
already read (its re-read gets a diff), a helper-agent spawn, a compaction
whose restore the host refuses to queue (as the real gateway's discovery-mode
API does), and a second session that starts by asking to continue the work.
Everything is written under a temporary state root (or ``--home``). The report
ends with a summary of what was captured, restored, flagged and saved (measured
vs estimated, as ``token-optimizer savings`` counts them).
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
from token_optimizer.jsutil import js_number, to_fixed


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


def _last_decision(decisions: Path) -> dict[str, Any] | None:
    """The read cache's latest decision row for the session (what it did with a read)."""
    try:
        lines = [ln for ln in decisions.read_text(encoding="utf-8").splitlines() if ln.strip()]
        row = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


def run_demo(home: Path, workspace: Path) -> dict[str, Any]:
    """Run the sample session; return a machine-readable report."""
    # Import lazily so `--help` works even if a runtime dependency is broken.
    from token_optimizer.checkpoints import list_checkpoints
    from token_optimizer.commands.state import savings_report
    from token_optimizer.hosts.openclaw_events import handle
    from token_optimizer.policy import PolicySettings
    from token_optimizer.runtime import RESTORE_HEADER, TokenOptimizer

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

    def new_checkpoints(sid: str, before: int, phase: str) -> list[dict[str, Any]]:
        """Checkpoints taken since ``before``, with the fill and quality each was taken at."""
        return [{"trigger": c.trigger, "file": c.filename, "phase": phase, "fillPct": c.fill_pct,
                 "qualityScore": c.quality_score}
                for c in list_checkpoints(rt.policy, sid)[before:]]

    def count(sid: str) -> int:
        return len(rt.policy.checkpoint_files(sid))

    def figures(sid: str) -> dict[str, Any]:
        st = rt.status(sid)
        return {"fillPct": st.get("fillPct"), "qualityScore": st.get("qualityScore")}

    hook("gateway_start", {"port": 0}, {})
    for sess in sample["sessions"]:
        sid, key, agent = sess["sessionId"], sess["sessionKey"], sess["agentId"]
        ctx = {"sessionId": sid, "sessionKey": key, "agentId": agent, "trigger": "user",
               "workspaceDir": str(workspace)}
        hook("session_start", {"sessionId": sid, "sessionKey": key}, ctx)
        history: list[dict[str, Any]] = []
        decisions = rt.paths.decisions / f"{sid}.jsonl"

        def turn(spec: Mapping[str, Any], sid: str = sid, ctx: dict[str, Any] = ctx,
                 history: list[dict[str, Any]] = history, decisions: Path = decisions) -> None:
            prompt = spec["prompt"]
            # What the turn starts from: the figures of the last model call.
            at_start = figures(sid)
            n0 = count(sid)
            out = hook("agent_turn_prepare", {"prompt": prompt, "messages": list(history),
                                              "queuedInjections": []}, ctx)
            history.append({"role": "user", "content": prompt})
            st = rec.add(sid, "user turn", prompt=prompt, atStart=at_start)
            if out.result and out.result.get("prependContext"):
                st["prependContext"] = out.result["prependContext"]
            checkpoints = new_checkpoints(sid, n0, "turn start")
            tools_done: list[dict[str, Any]] = []
            for tool in spec.get("tools", []):
                params = dict(tool["params"])
                if "path" in params:
                    params["path"] = str(workspace / params["path"])
                n1 = count(sid)
                before = hook("before_tool_call", {"toolName": tool["toolName"], "params": params}, ctx)
                blocked = bool(before.result and before.result.get("block"))
                entry: dict[str, Any] = {"tool": tool["toolName"], "blocked": blocked}
                if tool["toolName"] == "read":
                    row = _last_decision(decisions)
                    if row is not None:
                        entry["decision"] = row.get("decision")
                        entry["reason"] = row.get("reason")
                if not blocked and tool["toolName"] in ("edit", "write") and "path" in params:
                    with open(params["path"], "a", encoding="utf-8") as fh:
                        fh.write("# edited by the demo\n")
                touched = tool.get("touches")
                if not blocked and touched:
                    # a formatter run by a shell command: the file changes outside the write tools
                    tp = workspace / touched
                    with open(tp, "a", encoding="utf-8") as fh:
                        fh.write("\n__all__ = [\"PaymentClient\"]\n")
                    st_t = tp.stat()
                    os.utime(tp, ns=(st_t.st_atime_ns, st_t.st_mtime_ns + 2_000_000_000))
                hook("after_tool_call", {"toolName": tool["toolName"], "params": params,
                                         "error": "blocked" if blocked else None}, ctx)
                if "path" in tool["params"]:
                    entry["path"] = tool["params"]["path"]
                elif "command" in tool["params"]:
                    entry["command"] = tool["params"]["command"]
                if blocked and before.result:
                    entry["blockReason"] = before.result.get("blockReason")
                tools_done.append(entry)
                checkpoints += new_checkpoints(sid, n1, f"after {tool['toolName']}")
            if tools_done:
                st["tools"] = tools_done
            if "usage" in spec:
                n2 = count(sid)
                u = spec["usage"]
                hook("llm_output", {"sessionId": sid, "model": model, "contextTokenBudget": budget,
                                    "usage": {**u, "total": sum(u.values())}}, ctx)
                history.append({"role": "assistant", "content": spec["assistant"]})
                hook("agent_end", {"messages": list(history), "success": True}, ctx)
                checkpoints += new_checkpoints(sid, n2, "after the model call")
            st.update(figures(sid))
            st["checkpoints"] = checkpoints

        for t in sess["turns"]:
            turn(t)

        comp = sess.get("compaction")
        if comp:
            n0 = count(sid)
            hook("before_compaction", {"messageCount": len(history), "tokenCount": 120000}, ctx)
            after = hook("after_compaction", {"messageCount": len(history),
                                              "compactedCount": comp["compactedCount"],
                                              "sessionFile": f"sqlite:main:{sid}"}, ctx)
            enq = [a for a in after.actions_json() if a["type"] == "enqueue_next_turn_injection"]
            for a in enq:
                # Behave like OpenClaw 2026.9.6's discovery-mode api: nothing is queued.
                rt.enqueue_result(a["sessionKey"], a["idempotencyKey"], False)
            rec.add(sid, "compaction", checkpoints=new_checkpoints(sid, n0, "compaction"),
                    restoreRequested=[{"idempotencyKey": a["idempotencyKey"],
                                       "chars": len(a["text"])} for a in enq],
                    hostQueued=False)
            nxt = sess["after_compaction_turn"]
            turn(nxt if isinstance(nxt, Mapping) else {"prompt": nxt})

        n_end = count(sid)
        hook("session_end", {"sessionId": sid, "sessionKey": key, "reason": "deleted"}, ctx)
        rec.add(sid, "session end", tracked=dict(rt.tracked_counts()),
                checkpoints=new_checkpoints(sid, n_end, "session end"))
    hook("gateway_stop", {"reason": "demo finished"}, {})
    rt.close()

    files: list[dict[str, Any]] = []
    for root, _dirs, names in os.walk(rt.paths.root):
        for n in sorted(names):
            p = Path(root) / n
            files.append({"path": str(p.relative_to(rt.paths.root)), "bytes": p.stat().st_size})
    files.sort(key=lambda f: f["path"])
    summary = _summary(rec.steps, savings_report(rt.paths, 1), RESTORE_HEADER)
    return {"stateRoot": str(rt.paths.root), "workspace": str(workspace), "steps": rec.steps,
            "summary": summary, "files": files}


def _summary(steps: list[dict[str, Any]], savings: Mapping[str, Any], restore_header: str) -> dict[str, Any]:
    """What the run did: captured, restored, flagged, saved."""
    captured: dict[str, list[str]] = {}
    for st in steps:
        for c in st.get("checkpoints", []):
            captured.setdefault(st["session"], []).append(c["trigger"])
    restored = [{"session": st["session"], "chars": len(st["prependContext"])} for st in steps
                if st["step"] == "user turn" and restore_header in st.get("prependContext", "")]
    continued = [st["session"] for st in steps if st["step"] == "user turn"
                 and "Lean reconstruction" in st.get("prependContext", "")]
    flagged = [{"session": st["session"], "path": t.get("path"), "decision": t.get("decision"),
                "reason": t.get("reason")}
               for st in steps for t in st.get("tools", [])
               if t.get("decision") in ("warn", "block")]
    by_type: dict[str, dict[str, Any]] = {}
    for s in savings.get("sessions", []):
        for name, v in s["byType"].items():
            t = by_type.setdefault(name, {"count": 0, "basis": v["basis"], "tokens": 0})
            t["count"] += v["count"]
            t["tokens"] += v["tokens"]
    return {
        "checkpointsCaptured": {sid: {"count": len(t), "triggers": t} for sid, t in captured.items()},
        "restoresDelivered": restored,
        "resumedFromCheckpoint": continued,
        "readsFlagged": flagged,
        "savedMeasuredTokens": savings.get("measuredTokens", 0),
        "savedEstimatedTokens": savings.get("estimatedTokens", 0),
        "savingsByType": by_type,
    }


def _short(text: str, n: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n].rstrip() + " …"


def _figures(f: Mapping[str, Any] | None) -> str:
    if not f or f.get("fillPct") is None:
        return "no model call measured yet"
    return f"fill {to_fixed(f['fillPct'], 1)}%, quality {f.get('qualityScore')}"


def _checkpoint_line(c: Mapping[str, Any]) -> str:
    at = "" if c.get("fillPct") is None else f" at {_figures(c)}"
    return f"    checkpoint captured: {c['trigger']}{at}, {c.get('phase', '')} ({c['file']})"


def _tool_mark(t: Mapping[str, Any]) -> str:
    reason = str(t.get("reason") or "")
    if t["blocked"] and reason.startswith("delta_read"):
        first = (t.get("blockReason") or "").splitlines()[0].removeprefix("[Token Optimizer] ")
        return f"ANSWERED WITH A DIFF, not the whole file ({first})"
    if t["blocked"]:
        return f"BLOCKED: {_short(t.get('blockReason') or '', 120)}"
    if t.get("decision") == "warn" and reason.startswith("redundant_read_"):
        n = reason.removeprefix("redundant_read_")
        return (f"FLAGGED: redundant read #{n} (already in context, unchanged); warn mode lets it "
                "through, TOKEN_OPTIMIZER_READ_CACHE_MODE=block would block it")
    if reason == "first_read":
        return "ok (first read, remembered)"
    if reason == "file_modified_or_different_range":
        return "ok (changed since the last read)"
    return "ok"


def render(report: Mapping[str, Any]) -> str:
    note = " (temporary, removed on exit; pass --home DIR to keep it)" if report.get("temporary") else ""
    lines = [f"State root: {report['stateRoot']}{note}", ""]
    for st in report["steps"]:
        sid = st["session"]
        if st["step"] == "user turn":
            cps = st.get("checkpoints", [])
            lines.append(f"[{sid}] user: {_short(st['prompt'], 90)}")
            lines.append(f"    context at turn start: {_figures(st.get('atStart'))}")
            for c in cps:
                if c.get("phase") == "turn start":
                    lines.append(_checkpoint_line(c))
            if st.get("prependContext"):
                lines.append("    context injected into this turn:")
                for ln in _short(st["prependContext"], 700).splitlines():
                    lines.append(f"      | {ln}")
            for t in st.get("tools", []):
                what = t.get("path") or t.get("command") or ""
                lines.append(f"    tool {t['tool']} {what} -> {_tool_mark(t)}")
                for c in cps:
                    if c.get("phase") == f"after {t['tool']}":
                        lines.append(_checkpoint_line(c))
            if st.get("fillPct") != (st.get("atStart") or {}).get("fillPct") or any(
                    c.get("phase") == "after the model call" for c in cps):
                lines.append(f"    after the model call: {_figures(st)}")
            for c in cps:
                if c.get("phase") == "after the model call":
                    lines.append(_checkpoint_line(c))
        elif st["step"] == "compaction":
            lines.append(f"[{sid}] host compacts the context")
            for c in st.get("checkpoints", []):
                lines.append(_checkpoint_line(c))
            for r in st.get("restoreRequested", []):
                lines.append(f"    restore requested ({r['chars']} chars, key {r['idempotencyKey']});"
                             " the host did not queue it, so it rides on the next user turn")
        elif st["step"] == "session end":
            left = {k: v for k, v in st["tracked"].items() if v}
            lines.append(f"[{sid}] session end; per-session entries still tracked: "
                         f"{left or 'none for this session'}")
            for c in st.get("checkpoints", []):
                lines.append(_checkpoint_line(c))
        lines.append("")
    lines.extend(render_summary(report["summary"]))
    lines.append("")
    lines.append("Files written:")
    for f in report["files"]:
        lines.append(f"  {f['path']}  ({f['bytes']} bytes)")
    return "\n".join(lines)


def render_summary(s: Mapping[str, Any]) -> list[str]:
    lines = ["What the plugin did", "=" * 50]
    for sid, c in s["checkpointsCaptured"].items():
        lines.append(f"  captured:  {c['count']} checkpoint(s) in {sid} ({', '.join(c['triggers'])})")
    for r in s["restoresDelivered"]:
        lines.append(f"  restored:  the compaction's checkpoint into {r['session']}'s next turn "
                     f"({r['chars']} chars)")
    for sid in s["resumedFromCheckpoint"]:
        lines.append(f"  resumed:   {sid} started from the previous session's checkpoint")
    for f in s["readsFlagged"]:
        reason = str(f["reason"] or "")
        if reason.startswith("delta_read_"):
            lines.append(f"  diffed:    {f['path']} changed outside the write tools "
                         f"({reason.removeprefix('delta_read_')}): the re-read got a diff, not the file")
        elif f["decision"] == "block":
            lines.append(f"  blocked:   {f['path']} re-read unchanged ({reason})")
        else:
            lines.append(f"  flagged:   {f['path']} re-read unchanged (read "
                         f"#{reason.removeprefix('redundant_read_')}); warn mode let it through")
    measured = [f"{k} x{v['count']}" for k, v in s["savingsByType"].items() if v["basis"] == "measured"]
    estimated = [f"{k} x{v['count']}" for k, v in s["savingsByType"].items() if v["basis"] != "measured"]
    lines.append(f"  saved, measured:  {js_number(s['savedMeasuredTokens'])} tokens really not sent"
                 + (f" ({', '.join(measured)})" if measured else ""))
    lines.append(f"  saved, estimated: {js_number(s['savedEstimatedTokens'])} tokens, not a measurement"
                 + (f" ({', '.join(estimated)})" if estimated else ""))
    lines.append("  (see them again with: token-optimizer --home DIR savings, checkpoints list)")
    return lines


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
