"""Protocol tests for the OpenClaw worker (``python -m token_optimizer.hosts.openclaw``).

Each test spawns the real worker process with the real runtime and talks JSON lines to it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import __version__
from token_optimizer.hosts.openclaw import core_config


class WorkerProc:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "token_optimizer.hosts.openclaw"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.raw: list[bytes] = []
        self.stderr: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            self.lines.put(line)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send(self, obj: Any) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, timeout: float = 15.0) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def call(self, obj: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        self.send(obj)
        while True:
            msg = self.recv(timeout)
            if msg.get("type") not in ("ready", "actions"):
                return msg

    def no_more(self, wait: float = 0.3) -> bool:
        try:
            self.lines.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def worker() -> Any:
    w = WorkerProc()
    ready = w.recv()
    assert ready["type"] == "ready" and ready["id"] is None
    yield w
    w.close()


CTX = {"sessionKey": "agent:main:explicit:w1", "sessionId": "w1", "agentId": "main", "runId": "r1",
       "trigger": "user"}


def test_ready_and_ping(worker: WorkerProc) -> None:
    r = worker.call({"id": 1, "type": "ping"})
    assert r["id"] == 1
    assert r["result"]["pong"] is True
    assert r["result"]["pid"] == worker.proc.pid


def test_hook_round_trip_keeps_id(worker: WorkerProc) -> None:
    worker.send({"type": "init", "config": {"sessionStoreMaxAgeDays": 7, "pythonPath": "x"},
                 "shimVersion": __version__})
    r = worker.call({"id": 41, "hook": "before_tool_call",
                     "event": {"toolName": "read", "params": {"path": "/nonexistent/a.txt"}}, "ctx": CTX})
    assert r["id"] == 41
    assert "result" in r and r["result"] is None
    assert isinstance(r["actions"], list)
    r = worker.call({"id": "s-1", "hook": "agent_turn_prepare",
                     "event": {"prompt": "hi", "messages": [], "queuedInjections": []}, "ctx": CTX})
    assert r["id"] == "s-1"
    assert r["result"] is None or isinstance(r["result"], dict)
    st = worker.call({"id": 2, "type": "status"})
    assert st["result"]["config"]["session_store_max_age_days"] == 7  # init config reached Config
    assert st["result"]["errors"] == 0


def test_notifications_get_no_reply(worker: WorkerProc) -> None:
    for i in range(5):
        worker.send({"id": None, "hook": "after_tool_call",
                     "event": {"toolName": "edit", "params": {"path": f"/tmp/x{i}.py"}}, "ctx": CTX})
    worker.send({"hook": "model_call_ended", "event": {"outcome": "ok"}, "ctx": CTX})  # id omitted
    worker.send({"id": 7, "type": "ping"})
    while True:
        r = worker.recv()
        if r.get("id") == 7:
            break
        assert r.get("type") == "actions"  # notifications only ever produce action batches
    assert r["result"]["pong"] is True
    assert worker.call({"id": 9, "type": "status"})["result"]["handled"] == 6


@pytest.mark.parametrize("line,want_id", [
    (b"this is not json\n", None),
    (b"[1, 2, 3]\n", None),
    (b'{"id": 5}\n', 5),
    (b'{"id": 6, "type": "bogus"}\n', 6),
    (b'{"id": true, "hook": "before_tool_call"}\n', None),
    (b'{"id": 7, "hook": "before_tool_call", "event": "nope"}\n', 7),
    (b'{"id": 8, "hook": "before_tool_call", "event": {}, "ctx": [1]}\n', 8),
    (b'{"type": "enqueue_result", "id": 9}\n', 9),
    (b'{"type": "init", "id": 10, "config": 3}\n', 10),
    (b'\xff\xfe garbage bytes\n', None),
])
def test_malformed_line_gets_error_and_worker_survives(worker: WorkerProc, line: bytes,
                                                       want_id: Any) -> None:
    worker.send(line)
    r = worker.recv()
    assert r["id"] == want_id
    assert isinstance(r["error"], str) and r["error"]
    assert worker.call({"id": 100, "type": "ping"})["result"]["pong"] is True
    assert worker.proc.poll() is None


def test_blank_lines_are_ignored(worker: WorkerProc) -> None:
    worker.send(b"\n   \n")
    assert worker.call({"id": 1, "type": "ping"})["id"] == 1


def test_compaction_restore_round_trip(worker: WorkerProc) -> None:
    """after_compaction (a notification) sends back an enqueue action; a refused enqueue
    makes the restore come back as prependContext on the next turn, exactly once."""
    msgs = [
        {"role": "user", "content": "refactor the parser please", "timestamp": 1_700_000_000_000},
        {"role": "assistant", "content": [{"type": "text", "text": "Editing parser.py now"}],
         "timestamp": 1_700_000_001_000},
        {"role": "user", "content": "keep the public API", "timestamp": 1_700_000_002_000},
        {"role": "assistant", "content": "Done.", "timestamp": 1_700_000_003_000},
    ]
    worker.send({"id": None, "hook": "session_start", "event": {"sessionId": "w1", "sessionKey": CTX["sessionKey"]},
                 "ctx": CTX})
    worker.send({"id": None, "hook": "before_compaction", "event": {"messageCount": 4, "messages": msgs}, "ctx": CTX})
    worker.send({"id": None, "hook": "after_compaction",
                 "event": {"messageCount": 2, "compactedCount": 2, "sessionFile": "sqlite:main:w1"}, "ctx": CTX})
    while True:
        msg = worker.recv()
        assert msg["id"] is None and msg["type"] == "actions"
        if msg["hook"] == "after_compaction":
            break
    enq = [a for a in msg["actions"] if a["type"] == "enqueue_next_turn_injection"]
    assert len(enq) == 1
    a = enq[0]
    assert a["sessionKey"] == CTX["sessionKey"] and a["placement"] == "prepend_context"
    assert a["text"].strip() and a["idempotencyKey"]
    worker.send({"type": "enqueue_result", "sessionKey": a["sessionKey"],
                 "idempotencyKey": a["idempotencyKey"], "enqueued": False})
    turn = worker.call({"id": 3, "hook": "agent_turn_prepare",
                        "event": {"prompt": "continue", "messages": [], "queuedInjections": []}, "ctx": CTX})
    assert a["text"] in turn["result"]["prependContext"]
    again = worker.call({"id": 4, "hook": "agent_turn_prepare",
                         "event": {"prompt": "more", "messages": [], "queuedInjections": []}, "ctx": CTX})
    assert a["text"] not in ((again["result"] or {}).get("prependContext") or "")


def test_session_end_releases_session(worker: WorkerProc) -> None:
    worker.send({"id": None, "hook": "session_start", "event": {"sessionId": "w1", "sessionKey": CTX["sessionKey"]},
                 "ctx": CTX})
    for i in range(3):
        worker.send({"id": None, "hook": "after_tool_call",
                     "event": {"toolName": "edit", "params": {"path": f"/tmp/w/{i}.py"}}, "ctx": CTX})
    worker.call({"id": 1, "hook": "agent_turn_prepare", "event": {"prompt": "x", "messages": []}, "ctx": CTX})
    st = worker.call({"id": 2, "type": "status", "sessionId": "w1"})["result"]
    before = st["tracked"]
    assert sum(before.values()) > 0
    assert st["heldBy"], st
    worker.send({"id": None, "hook": "session_end",
                 "event": {"sessionId": "w1", "sessionKey": CTX["sessionKey"], "reason": "deleted"}, "ctx": CTX})
    st = worker.call({"id": 3, "type": "status", "sessionId": "w1"})["result"]
    assert sum(st["tracked"].values()) == 0, st["tracked"]
    assert st["heldBy"] == []


NOISY_RUNTIME = """
import os, sys
from token_optimizer.hosts.openclaw_events import OpenClawEvents
from token_optimizer.runtime import TokenOptimizer

class Noisy(OpenClawEvents):
    def handle(self, hook, event, ctx):
        print("stray print from", hook)
        sys.stdout.write("stray sys.stdout write\\n")
        os.write(1, b"raw fd1 write\\n")
        return super().handle(hook, event, ctx)

def make(config=None):
    print("stray print in the factory")
    return Noisy(TokenOptimizer(config=config))
"""


def test_stdout_carries_only_protocol_lines(tmp_path: Path) -> None:
    """Stray print()/sys.stdout/os.write(1) inside the core cannot reach the protocol stream."""
    (tmp_path / "noisy_rt.py").write_text(NOISY_RUNTIME)
    w = WorkerProc(env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "TOKEN_OPTIMIZER_OPENCLAW_RUNTIME": "noisy_rt:make"})
    try:
        assert w.recv()["type"] == "ready"
        r = w.call({"id": 1, "hook": "before_tool_call",
                    "event": {"toolName": "read", "params": {"path": "/nonexistent"}}, "ctx": CTX})
        assert r["id"] == 1 and "error" not in r
        for hook in ("session_start", "after_tool_call", "llm_output", "agent_end", "session_end", "gateway_stop"):
            w.send({"id": None, "hook": hook, "event": {"sessionId": "w1"}, "ctx": CTX})
        w.call({"id": 3, "type": "ping"})
    finally:
        assert w.close() == 0
    assert w.raw
    for raw in w.raw:
        json.loads(raw)  # every stdout line is a JSON protocol line
    err = b"".join(w.stderr)
    assert b"stray print from before_tool_call" in err and b"raw fd1 write" in err


def test_fd1_is_redirected_to_stderr() -> None:
    """Inside the worker, fd 1 and sys.stdout point at stderr (checked in-process)."""
    code = (
        "import os, sys, json\n"
        "from token_optimizer.hosts import openclaw as oc\n"
        "out = oc.claim_stdout()\n"
        "print('to stderr via print')\n"
        "os.write(1, b'to stderr via fd1\\n')\n"
        "out.write(b'{\"ok\":true}\\n'); out.flush()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=True)
    assert p.stdout == b'{"ok":true}\n'
    assert b"to stderr via print" in p.stderr and b"to stderr via fd1" in p.stderr


def test_eof_and_sigterm_end_the_worker() -> None:
    w = WorkerProc()
    assert w.recv()["type"] == "ready"
    w.call({"id": 1, "hook": "before_tool_call", "event": {"toolName": "read", "params": {}}, "ctx": CTX})
    t0 = time.monotonic()
    assert w.close() == 0
    assert time.monotonic() - t0 < 10
    w2 = WorkerProc()
    assert w2.recv()["type"] == "ready"
    w2.proc.send_signal(signal.SIGTERM)
    assert w2.proc.wait(timeout=10) != 0 or True  # exits (code 143 or 0), does not hang
    assert w2.proc.poll() is not None


def test_core_config_drops_shim_keys() -> None:
    cfg = {"pythonPath": "/x", "timeoutMs": 5, "startupTimeoutMs": 1, "maxMessages": 3,
           "sessionStoreMaxAgeDays": 30}
    assert core_config(cfg) == {"sessionStoreMaxAgeDays": 30}


def test_worker_refuses_plugin_files_of_another_version(caplog: pytest.LogCaptureFixture) -> None:
    """A stale copied plugin: hooks are answered with errors (the shim fails open), logged once."""
    import io
    import logging

    from token_optimizer.hosts.openclaw import Worker

    out = io.BytesIO()
    w = Worker(out)
    with caplog.at_level(logging.DEBUG, logger="token_optimizer"):
        w.handle_line(b'{"id":1,"type":"init","config":{},"shimVersion":"0.0.9"}')
        w.handle_line(b'{"id":2,"hook":"agent_turn_prepare","event":{"prompt":"hi"},'
                      b'"ctx":{"sessionId":"s"}}')
    w.handle_line(b'{"id":3,"hook":"before_tool_call","event":{"toolName":"read"},'
                  b'"ctx":{"sessionId":"s"}}')
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    assert replies[0]["result"]["ok"] is False and "0.0.9" in replies[0]["result"]["error"]
    assert replies[2]["id"] == 3 and "error" in replies[2]
    assert replies[1]["id"] == 2 and "error" in replies[1] and "install" in replies[1]["error"]
    assert w.runtime is None
    assert sum("0.0.9" in r.getMessage() for r in caplog.records) == 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING and "0.0.9" not in
            r.getMessage()] == []  # one line in all, not one per hook


def test_plugin_files_from_before_the_handshake_are_refused_too() -> None:
    import io

    from token_optimizer.hosts.openclaw import Worker

    out = io.BytesIO()
    w = Worker(out)
    w.handle_line(b'{"id":1,"type":"init","config":{}}')
    reply = json.loads(out.getvalue().splitlines()[0])
    assert reply["result"]["ok"] is False and "older release" in reply["result"]["error"]
