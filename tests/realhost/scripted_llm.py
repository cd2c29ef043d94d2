"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 that plays scenario.json.

``ScriptedLLM(scenario).start()`` serves ``/v1/chat/completions`` (SSE streaming or plain
JSON) and ``/v1/models`` on an ephemeral loopback port in a background thread. The same
scenario replays on OpenClaw and on Hermes: the data names host-neutral tool concepts
(``read``/``edit``/``write``/``spawn``) and this server maps them onto the tool the host
offers in the request (``read``/``read_file``, ``edit``/``patch``, ``write``/``write_file``,
``sessions_spawn``/``delegate_task``), building the arguments from that tool's JSON schema.

How a request is answered:

* no tools offered (a compaction summary, a title): the scenario's ``summary`` text;
* the latest user message that carries a marker decides: ``[turn N]`` (the highest N in
  that message, because restores and hints quote earlier turns) plays turn N; a message
  with only the ``[helper]`` marker is a spawned helper agent and gets the helper text;
* the call index within the turn is the number of assistant messages after that user
  message; calls beyond the script (e.g. a run the host starts to announce a helper's
  result) get a short closing text with the turn's last ``prompt_tokens``;
* ``usage.prompt_tokens`` is the call's scripted figure (scaled by ``budget`` / the scenario's
  budget when the host needs another window, so every call keeps its fill).

Every request is recorded in ``requests`` (turn, call, kind, the prompt_tokens reported,
the tool calls answered, the full flattened prompt text), so a test can compare what the
plugin computed, and what reached the model, with what the model really saw.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCENARIO = Path(__file__).resolve().parent / "scenario.json"
TURN_RE = re.compile(r"\[turn (\d+)\]")

# host tool names per concept, in preference order
TOOL_NAMES: dict[str, tuple[str, ...]] = {
    "read": ("read", "read_file"),
    "edit": ("edit", "patch"),
    "write": ("write", "write_file"),
    "spawn": ("sessions_spawn", "delegate_task"),
}
PATH_KEYS = ("path", "file_path", "filePath", "file")


def load_scenario(path: Path = SCENARIO) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def scripted_turns(scenario: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {t["turn"]: t for s in scenario["sessions"] for t in s["turns"]}


def text_of(msg: Any) -> str:
    if not isinstance(msg, dict):
        return ""
    c = msg.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return ""


def flatten(msg: Any) -> str:
    """A message's text plus its tool calls' arguments (what the model 'sees')."""
    out = text_of(msg)
    if isinstance(msg, dict):
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {} if isinstance(tc, dict) else {}
            out += f"\n<tool_call {fn.get('name')}>{fn.get('arguments')}"
    return out


# OpenClaw's extractOpaqueIdentifiers (dist/builtin-openclaw-*.mjs): a faithful summary keeps these literally
_IDENT_RE = re.compile(
    r"(https?://\S+|(?<![A-Za-z0-9._-])/[\w.-]{2,}(?:/[\w.-]+)+|[A-Za-z]:\\[\w\\.-]+"
    r"|(?<![A-Za-z0-9._-])[A-Za-z0-9._-]+\.[A-Za-z0-9._/-]+:\d{1,5})"
    r"|(?:(?:(?:\d+\.\d+|\.\d+)(?:[eE][+-]?\d+)?|\d+\.[eE][+-]?\d+|\d+\.?[eE][+-]\d+"
    r"|(?![A-Fa-f0-9]{8,}(?![A-Fa-f0-9]))\d+\.?[eE]\d+)(?:(?=[A-Za-z]+(?![A-Za-z0-9]))(?=[A-Za-z]*[G-Zg-z])[A-Za-z]+)?"
    r"(?![A-Za-z0-9])|(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*(?:[A-Fa-f0-9]{8,}|\d{6,}))([A-Za-z0-9_-]+))")


REQUIRED_SECTIONS = ("Decisions", "Open TODOs", "Constraints/Rules", "Pending user asks", "Exact identifiers")
_HEADING_RE = re.compile(r"^## (.+?)\s*$", re.M)


def summary_text(gist: str, msgs: list[Any]) -> str:
    """A summary shaped the way the host's summariser asks for it (OpenClaw's safeguard audits
    it): the headings its template lists, the latest user ask, and every exact identifier."""
    convo = [m for m in msgs if isinstance(m, dict) and m.get("role") != "system"]
    text = "\n".join(flatten(m) for m in convo)
    template = text.rsplit("</conversation>", 1)[1] if "</conversation>" in text else ""
    headings = [h for h in _HEADING_RE.findall(template) if not h.startswith("[")] or list(REQUIRED_SECTIONS)
    idents: list[str] = []
    for m in _IDENT_RE.finditer(text):
        v = m.group(1) or m.group(2) or ""
        for cand in (v, v.rstrip(".,;:)]}>'\"`")):
            if len(cand) >= 4 and cand not in idents:
                idents.append(cand)
    asks = [TURN_RE.sub(lambda t: f"turn {t.group(1)}", line) for line in text.splitlines() if TURN_RE.search(line)]
    latest = asks[-1].strip() if asks else "none"
    body = {"Pending user asks": f"- {latest}", "Original Request": latest,
            "Exact identifiers": "\n".join(f"- {i}" for i in idents) or "- none",
            "Open TODOs": "- none", "Constraints/Rules": "- none"}
    return "\n\n".join(f"## {h}\n{body.get(h, '- ' + gist)}" for h in headings)


def _pick(props: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in props), None)


class ScriptedLLM:
    def __init__(self, scenario: dict[str, Any] | None = None, *, delay_ms: int | None = None,
                 budget: int | None = None) -> None:
        self.scenario = scenario if scenario is not None else load_scenario()
        # a host with another window gets the same fills: prompt_tokens scaled by budget / scenario budget
        self.budget = budget or int(self.scenario["budget"])
        self.scale = self.budget / self.scenario["budget"]
        self.turns = scripted_turns(self.scenario)
        self.delay_s = (self.scenario.get("call_delay_ms", 0) if delay_ms is None else delay_ms) / 1000
        self.requests: list[dict[str, Any]] = []
        self.tool_schemas: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.n = 0

    # ------------------------------------------------------------ tool arguments
    def host_tool(self, concept: str, offered: set[str]) -> str | None:
        return next((n for n in TOOL_NAMES[concept] if n in offered), None)

    def args_for(self, name: str, call: dict[str, Any]) -> dict[str, Any]:
        schema = self.tool_schemas.get(name) or {}
        props: dict[str, Any] = schema.get("properties") or {}
        concept = call["tool"]
        if concept == "spawn":
            args: dict[str, Any] = {}
            tkey = _pick(props, ("task", "goal", "prompt", "message", "instructions")) or "task"
            args[tkey] = call["task"]
            for key in schema.get("required") or []:
                if key not in args:
                    t = (props.get(key) or {}).get("type")
                    args[key] = "helper" if t in (None, "string") else {} if t == "object" else \
                        [] if t == "array" else 1
            return args
        pkey = _pick(props, PATH_KEYS) or "path"
        args = {pkey: call["path"]}
        if concept == "write":
            args[_pick(props, ("content", "text", "data")) or "content"] = call["content"]
        elif concept == "edit":
            if "edits" in props:
                args["edits"] = [{"oldText": call["old"], "newText": call["new"]}]
            else:
                if "mode" in props:
                    enum = (props["mode"] or {}).get("enum") or ["replace"]
                    args["mode"] = "replace" if "replace" in enum else enum[0]
                args[_pick(props, ("oldText", "old_string", "oldString", "old_str")) or "oldText"] = call["old"]
                args[_pick(props, ("newText", "new_string", "newString", "new_str")) or "newText"] = call["new"]
        return args

    # ------------------------------------------------------------ decisions
    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        """What to answer: {kind, turn, call, prompt_tokens, text | tool_calls}."""
        msgs = body.get("messages") or []
        tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
        for fn in tools:
            if fn.get("name"):
                self.tool_schemas[fn["name"]] = fn.get("parameters") or {}
        offered = {fn.get("name") for fn in tools if fn.get("name")}
        if not offered:
            s = self.scenario["summary"]
            return {"kind": "summary", "text": summary_text(s["text"], msgs), "prompt_tokens": s["prompt_tokens"]}
        helper = self.scenario["helper"]
        marked, turn_no, is_helper = -1, None, False
        # a helper agent's conversation has the helper marker and no turn marker at all (the
        # parent's later messages quote the helper's task in completion events and context)
        for i, m in enumerate(msgs):
            if m.get("role") != "user":
                continue
            t = text_of(m)
            turns = [int(x) for x in TURN_RE.findall(t)]
            if turns:
                marked, turn_no, is_helper = i, max(turns), False
            elif turn_no is None and helper["marker"] in t:
                marked, is_helper = i, True
        later = msgs[marked + 1:] if marked >= 0 else []
        idx = sum(1 for m in later if m.get("role") == "assistant")
        if is_helper:
            if idx == 0:
                return {"kind": "helper", "text": helper["text"], "prompt_tokens": helper["prompt_tokens"]}
            return {"kind": "helper-extra", "text": "OK.", "prompt_tokens": helper["prompt_tokens"]}
        turn = self.turns.get(turn_no) if turn_no is not None else None
        if turn is None:
            return {"kind": "unscripted", "text": "Hello from the scripted model.", "prompt_tokens": 1000}
        calls = turn["calls"]
        if idx >= len(calls):
            return {"kind": "extra", "turn": turn_no, "call": idx, "text": "Nothing more to do.",
                    "prompt_tokens": calls[-1]["prompt_tokens"]}
        call = calls[idx]
        out: dict[str, Any] = {"kind": "agent", "turn": turn_no, "call": idx,
                               "prompt_tokens": call["prompt_tokens"]}
        if "text" in call:
            out["text"] = call["text"]
            return out
        name = self.host_tool(call["tool"], offered)
        if name is None:
            out["kind"] = "missing-tool"
            out["text"] = f"(the host offers no {call['tool']} tool: {sorted(offered)})"
            return out
        out["tool_calls"] = [(name, self.args_for(name, call))]
        out["concept"] = call["tool"]
        return out

    # ------------------------------------------------------------ HTTP
    def handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        llm = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.endswith("/models"):
                    self._json(200, {"object": "list", "data": [{
                        "id": "scripted-1", "object": "model", "owned_by": "scripted",
                        "context_length": llm.budget}]})
                else:
                    self._json(404, {})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                if "chat/completions" not in self.path:
                    self._json(404, {})
                    return
                with llm.lock:
                    llm.n += 1
                    n = llm.n
                    d = llm.decide(body)
                    d["prompt_tokens"] = round(d["prompt_tokens"] * llm.scale)
                    msgs = body.get("messages") or []
                    llm.requests.append({
                        "n": n, "t": time.time(), "kind": d["kind"], "turn": d.get("turn"),
                        "call": d.get("call"), "prompt_tokens": d["prompt_tokens"],
                        "decision": [c[0] for c in d["tool_calls"]] if "tool_calls" in d
                        else d["text"][:60],
                        "tool_args": [c[1] for c in d.get("tool_calls", [])],
                        "roles": [m.get("role") for m in msgs],
                        "text": "\n".join(flatten(m) for m in msgs),
                        "tools": sorted(t.get("function", {}).get("name", "") for t in body.get("tools") or []),
                        "stream": bool(body.get("stream")),
                    })
                if llm.delay_s and d["kind"] == "agent":
                    time.sleep(llm.delay_s)
                model = body.get("model") or "scripted-1"
                pt = d["prompt_tokens"]
                usage = {"prompt_tokens": pt, "completion_tokens": 30, "total_tokens": pt + 30}
                base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk",
                        "created": int(time.time()), "model": model}
                if "tool_calls" in d:
                    calls = [{"index": i, "id": f"call_{n}_{i}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(args)}}
                             for i, (name, args) in enumerate(d["tool_calls"])]
                    delta: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
                    message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
                    finish = "tool_calls"
                else:
                    delta = {"role": "assistant", "content": d["text"]}
                    message = {"role": "assistant", "content": d["text"]}
                    finish = "stop"
                if not body.get("stream"):
                    self._json(200, {"id": base["id"], "object": "chat.completion", "created": base["created"],
                                     "model": model, "usage": usage,
                                     "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
                    return
                chunks = [
                    {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage},
                ]
                data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return H

    def start(self) -> int:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="scripted-llm", daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------ queries for the tests
    def agent_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["kind"] in ("agent", "extra", "missing-tool")]

    def first_request_of_turn(self, turn: int) -> dict[str, Any] | None:
        return next((r for r in self.requests if r["turn"] == turn and r["call"] == 0), None)

    def last_prompt_before(self, t: float, kinds: tuple[str, ...] = ("agent", "extra")) -> int | None:
        """prompt_tokens of the latest main-session call answered before time ``t``."""
        rows = [r for r in self.requests if r["kind"] in kinds and r["t"] < t]
        return rows[-1]["prompt_tokens"] if rows else None
