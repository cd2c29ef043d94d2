"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 for driving OpenClaw headlessly.

``FakeLLM().start()`` serves ``/v1/chat/completions`` (SSE streaming or plain JSON) and
``/v1/models`` on an ephemeral loopback port in a background thread. Behaviour per request:

* not an agent turn (no ``openclaw:attempt`` marker in the system prompt; e.g. compaction):
  a short summary;
* the current user message contains ``EDIT_FILES``: first N ``edit`` tool calls in one
  assistant message (arguments built from the offered tool schema), then one ``sessions_spawn``
  call when that tool is offered, then a closing text;
* anything else: a short text.

Every request is recorded (``requests``) with the flattened text of all its messages, so a
test can check what reached the model's prompt. Usage reports a large prompt so fill-based
policies see a busy context.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def text_of(msg: Any) -> str:
    if not isinstance(msg, dict):
        return ""
    c = msg.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return ""


def _pick(props: dict[str, Any], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in props:
            return n
    return None


class FakeLLM:
    def __init__(self, *, edit_files: list[str] | None = None, prompt_tokens: int = 20000,
                 old_text: str = "OLD", new_text: str = "NEW") -> None:
        self.edit_files = edit_files or []
        self.prompt_tokens = prompt_tokens
        self.old_text = old_text
        self.new_text = new_text
        self.requests: list[dict[str, Any]] = []
        self.tool_schemas: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.n = 0

    # ------------------------------------------------------------ tool arguments
    def edit_args(self, path: str) -> dict[str, Any]:
        props = (self.tool_schemas.get("edit") or {}).get("properties") or {}
        pkey = _pick(props, ("path", "file_path", "filePath", "file")) or "path"
        if "edits" in props:
            return {pkey: path, "edits": [{"oldText": self.old_text, "newText": self.new_text}]}
        okey = _pick(props, ("oldText", "old_string", "oldString", "old_str")) or "oldText"
        nkey = _pick(props, ("newText", "new_string", "newString", "new_str")) or "newText"
        return {pkey: path, okey: self.old_text, nkey: self.new_text}

    def spawn_args(self) -> dict[str, Any]:
        schema = self.tool_schemas.get("sessions_spawn") or {}
        props = schema.get("properties") or {}
        args: dict[str, Any] = {}
        for key in schema.get("required") or []:
            t = (props.get(key) or {}).get("type")
            args[key] = "Reply with the single word OK." if t in (None, "string") else {} if t == "object" else 1
        tkey = _pick(props, ("task", "prompt", "message", "instructions"))
        if tkey and tkey not in args:
            args[tkey] = "Reply with the single word OK."
        return args

    # ------------------------------------------------------------ decisions
    def decide(self, body: dict[str, Any]) -> tuple[str, Any]:
        msgs = body.get("messages") or []
        tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
        for fn in tools:
            if fn.get("name") and fn["name"] not in self.tool_schemas:
                self.tool_schemas[fn["name"]] = fn.get("parameters") or {}
        names = {fn.get("name") for fn in tools}
        sys0 = text_of(msgs[0]) if msgs and msgs[0].get("role") == "system" else ""
        if "openclaw:attempt" not in sys0 and not names:
            return "text", "SUMMARY: the user asked for edits across several files; they were made."
        # the host adds its own user-role context messages: find the marked request, and treat
        # the turn as finished once a plain assistant answer follows it
        marked = max((i for i, m in enumerate(msgs) if m.get("role") == "user" and "EDIT_FILES" in text_of(m)),
                     default=-1)
        later = [m for m in msgs[marked + 1:] if m.get("role") == "assistant"] if marked >= 0 else []
        finished = any(not m.get("tool_calls") for m in later)
        rounds = sum(1 for m in later if m.get("tool_calls"))
        if marked >= 0 and not finished and "edit" in names:
            if rounds == 0 and self.edit_files:
                return "tools", [("edit", self.edit_args(p)) for p in self.edit_files]
            if rounds == 1 and "sessions_spawn" in names:
                return "tools", [("sessions_spawn", self.spawn_args())]
            return "text", "All edits are done."
        return "text", "Hello from the fake model."

    # ------------------------------------------------------------ HTTP
    def handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        fake = self

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
                    self._json(200, {"object": "list", "data": [{"id": "fake-1", "object": "model", "owned_by": "fake"}]})
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
                with fake.lock:
                    fake.n += 1
                    n = fake.n
                    kind, payload = fake.decide(body)
                    fake.requests.append({
                        "n": n, "t": time.time(), "kind": kind,
                        "decision": [c[0] for c in payload] if kind == "tools" else payload[:40],
                        "roles": [m.get("role") for m in body.get("messages") or []],
                        "text": "\n".join(text_of(m) for m in body.get("messages") or []),
                        "tools": sorted(fake.tool_schemas),
                    })
                model = body.get("model") or "fake-1"
                usage = {"prompt_tokens": fake.prompt_tokens, "completion_tokens": 20,
                         "total_tokens": fake.prompt_tokens + 20}
                base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk",
                        "created": int(time.time()), "model": model}
                if kind == "tools":
                    calls = [{"index": i, "id": f"call_{n}_{i}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(args)}}
                             for i, (name, args) in enumerate(payload)]
                    chunks = [
                        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                                     "tool_calls": calls}, "finish_reason": None}]},
                        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": usage},
                    ]
                    message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
                    finish = "tool_calls"
                else:
                    chunks = [
                        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": payload},
                                              "finish_reason": None}]},
                        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
                    ]
                    message = {"role": "assistant", "content": payload}
                    finish = "stop"
                if body.get("stream") is False:
                    self._json(200, {"id": base["id"], "object": "chat.completion", "created": base["created"],
                                     "model": model, "usage": usage,
                                     "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
                    return
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
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
