"""OpenClaw worker: ``python -m token_optimizer.hosts.openclaw``.

The OpenClaw gateway is a Node process; the plugin shim in ``dist/index.js``
starts this module once per Node process and talks to it in JSON lines over
stdio. One line in, at most one line out:

JS -> worker
  ``{"type":"init","config":{...},"shimVersion":V}``   plugin config (camelCase,
                                       as in the manifest's configSchema) and the
                                       plugin files' version; optional, first. A
                                       version other than the package's turns the
                                       hooks off (answered with errors: the shim
                                       fails open) and logs why.
  ``{"id":7,"hook":H,"event":E,"ctx":C}``  awaited hook: answered with
                                       ``{"id":7,"result":R,"actions":[...]}``
  ``{"id":null,"hook":H,...}``         notification: no answer; if the hook
                                       produced actions they come back as
                                       ``{"id":null,"type":"actions","hook":H,"actions":[...]}``
  ``{"type":"enqueue_result","sessionKey":K,"idempotencyKey":I,"enqueued":B}``
                                       outcome of an enqueue action (no answer)
  ``{"id":8,"type":"ping"}``           -> ``{"id":8,"result":{"pong":true,...}}``
  ``{"id":9,"type":"status","sessionId":S?}``  -> runtime status + tracked counts
  ``{"id":10,"type":"command","args":A,"sessionKey":K?,"sessionId":S?}``
                                       ``/token-optimizer A`` typed in a chat ->
                                       ``{"id":10,"result":{"text":...}}`` (a text
                                       even when the report fails)

A line that cannot be understood is answered with ``{"id":<id or null>,
"error":"..."}`` and the worker keeps reading. The worker exits on EOF (the
shim closing stdin) or SIGTERM, flushing the runtime first.

stdout carries protocol lines only: the real stdout is duplicated for the
protocol and file descriptor 1 is pointed at stderr, so stray ``print`` calls
and child processes cannot corrupt the stream. Logging goes to stderr as
``LEVEL message``; the shim forwards those lines to the host logger.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

import orjson

from token_optimizer import __version__, settings
from token_optimizer.jsutil import dumps_compact

PROTOCOL_VERSION = 1
log = logging.getLogger("token_optimizer.hosts.openclaw")

# Shim-only settings: meaningful to the JS side, not to Config.
SHIM_KEYS = frozenset(s.key for s in settings.SETTINGS if s.scope == "shim" and s.key)


class Outcome(Protocol):
    result: dict[str, Any] | None

    def actions_json(self) -> list[dict[str, Any]]: ...


class Runtime(Protocol):
    def handle(self, hook: str, event: dict[str, Any] | None, ctx: dict[str, Any] | None) -> Outcome: ...
    def enqueue_result(self, session_key: str, idempotency_key: str, enqueued: bool) -> None: ...
    def gateway_stop(self) -> Outcome: ...


def core_config(config: dict[str, Any]) -> dict[str, Any]:
    """The plugin config minus the shim-only keys (``Config`` reads camelCase itself)."""
    return {k: v for k, v in config.items() if k not in SHIM_KEYS}


def build_runtime(config: dict[str, Any] | None) -> Runtime:
    """The real core, or the factory named by ``TOKEN_OPTIMIZER_OPENCLAW_RUNTIME``
    (``module:attr``; for debugging the bridge with a stand-in)."""
    spec = settings.env_value(settings.OPENCLAW_RUNTIME)
    cfg_obj: Any = None
    try:
        from token_optimizer.config import Config

        # plugin config first, TOKEN_OPTIMIZER_* environment variables on top
        cfg_obj = Config.merged(core_config(config or {}), host="openclaw")
    except Exception:
        log.warning("[token-optimizer] ignoring invalid plugin config", exc_info=True)
    if spec:
        mod_name, _, attr = spec.partition(":")
        factory: Callable[..., Runtime] = getattr(importlib.import_module(mod_name), attr or "TokenOptimizer")
        return factory(config=cfg_obj)
    from token_optimizer.hosts.openclaw_events import OpenClawEvents
    from token_optimizer.runtime import TokenOptimizer

    runtime: Runtime = OpenClawEvents(TokenOptimizer(config=cfg_obj))
    return runtime


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # UNDEFINED markers, sets, NaN: the JS-compatible (slower) path
        return dumps_compact(obj).encode("utf-8") + b"\n"


class Worker:
    """Reads requests, drives the runtime, writes replies. Single-threaded."""

    def __init__(self, out: IO[bytes], *, trace_path: str | None = None) -> None:
        self.out = out
        self.runtime: Runtime | None = None
        self.runtime_error: str | None = None
        self.config: dict[str, Any] = {}
        self.stopped = False
        self.handled = 0
        self.errors = 0
        self.started_at = time.time()
        self.trace_path = trace_path
        self.refused = False
        """The plugin files are of another version: hooks are answered with errors."""

    # ------------------------------------------------------------ output
    def send(self, obj: dict[str, Any]) -> None:
        self.out.write(_dumps(obj))
        self.out.flush()

    def error(self, req_id: Any, message: str) -> None:
        self.errors += 1
        log.warning("[token-optimizer] protocol error: %s", message)
        self.send({"id": req_id if isinstance(req_id, (int, str)) else None, "error": message})

    # ------------------------------------------------------------ runtime
    def get_runtime(self) -> Runtime:
        if self.runtime is None:
            if self.runtime_error is not None:  # failed once: do not retry per hook
                raise RuntimeError(self.runtime_error)
            try:
                self.runtime = build_runtime(self.config)
            except Exception as exc:
                self.runtime_error = f"runtime unavailable: {type(exc).__name__}: {exc}"
                raise
        return self.runtime

    def preload(self) -> None:
        """Import the core before announcing readiness (the first hook then pays no import)."""
        if settings.env_raw(settings.OPENCLAW_RUNTIME):
            return
        try:
            importlib.import_module("token_optimizer.runtime")
            importlib.import_module("token_optimizer.hosts.openclaw_events")
        except Exception:
            log.exception("[token-optimizer] cannot import the runtime")

    # ------------------------------------------------------------ dispatch
    def handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.error(None, f"malformed JSON: {exc}")
            return
        if not isinstance(msg, dict):
            self.error(None, "request must be a JSON object")
            return
        req_id = msg.get("id")
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, (int, str))):
            self.error(None, "id must be a number, a string or null")
            return
        kind = msg.get("type")
        if kind is None:
            self.on_hook(req_id, msg)
        elif kind == "init":
            self.on_init(req_id, msg)
        elif kind == "enqueue_result":
            self.on_enqueue_result(req_id, msg)
        elif kind == "ping":
            self.reply(req_id, {"pong": True, "pid": os.getpid(), "protocol": PROTOCOL_VERSION,
                                "python": sys.version.split()[0], "version": __version__})
        elif kind == "status":
            self.on_status(req_id, msg)
        elif kind == "command":
            self.on_command(req_id, msg)
        else:
            self.error(req_id, f"unknown message type: {kind!r}")

    def reply(self, req_id: Any, result: Any) -> None:
        if req_id is not None:
            self.send({"id": req_id, "result": result})

    def on_init(self, req_id: Any, msg: dict[str, Any]) -> None:
        config = msg.get("config")
        if config is not None and not isinstance(config, dict):
            self.error(req_id, "init.config must be an object")
            return
        self.config = config or {}
        if self.runtime is not None:
            log.warning("[token-optimizer] init after the first hook: config applies from the next start")
        shim = msg.get("shimVersion")
        if shim != __version__:
            # A copied plugin directory left behind by an upgrade (files from before the
            # version handshake send none): refuse rather than run hooks against a
            # protocol the files may not speak. Said once; later hooks fail open quietly.
            what = f"version {shim}" if isinstance(shim, str) else "from an older release"
            self.runtime_error = (
                f"the OpenClaw plugin files are {what} but the Python package is "
                f"{__version__}; run `token-optimizer openclaw install` again and restart "
                "the gateway (hooks stay off until then)")
            self.refused = True
            log.error("[token-optimizer] %s", self.runtime_error)
            self.reply(req_id, {"ok": False, "error": self.runtime_error})
            return
        self.reply(req_id, {"ok": True})

    def on_hook(self, req_id: Any, msg: dict[str, Any]) -> None:
        hook = msg.get("hook")
        event = msg.get("event")
        ctx = msg.get("ctx")
        if not isinstance(hook, str) or not hook:
            self.error(req_id, "missing hook name")
            return
        if event is not None and not isinstance(event, dict):
            self.error(req_id, "event must be an object or null")
            return
        if ctx is not None and not isinstance(ctx, dict):
            self.error(req_id, "ctx must be an object or null")
            return
        if self.refused:
            if req_id is not None:  # the shim fails open; the reason was logged once
                self.send({"id": req_id, "error": self.runtime_error})
            return
        try:
            rt = self.get_runtime()
            DUPLICATES.in_hook = True
            try:
                outcome = rt.handle(hook, event, ctx)
            finally:
                DUPLICATES.in_hook = False
            result = outcome.result
            actions = outcome.actions_json()
        except Exception as exc:  # the runtime never raises; a broken import might
            if self.errors == 0:
                log.exception("[token-optimizer] %s failed in the worker", hook)
            self.error(req_id, f"{hook} failed: {type(exc).__name__}: {exc}")
            return
        self.handled += 1
        if hook == "gateway_stop":
            self.stopped = True
        if req_id is not None:
            self.send({"id": req_id, "result": result, "actions": actions})
        elif actions:
            self.send({"id": None, "type": "actions", "hook": hook, "actions": actions})
        if hook == "session_end":
            sid = (ctx or {}).get("sessionId") or (event or {}).get("sessionId")
            log.debug("[token-optimizer] session released: %s", sid)
        if self.trace_path:
            self.trace(hook, event, ctx, result, actions)

    def on_enqueue_result(self, req_id: Any, msg: dict[str, Any]) -> None:
        key = msg.get("sessionKey")
        ikey = msg.get("idempotencyKey")
        if not isinstance(key, str) or not isinstance(ikey, str):
            self.error(req_id, "enqueue_result needs sessionKey and idempotencyKey strings")
            return
        try:
            self.get_runtime().enqueue_result(key, ikey, bool(msg.get("enqueued")))
        except Exception:
            log.exception("[token-optimizer] enqueue_result failed")
        self.reply(req_id, {"ok": True})
        if self.trace_path:
            self.trace("enqueue_result", msg, None, {"enqueued": bool(msg.get("enqueued"))}, [])

    def status(self, session_id: str | None) -> dict[str, Any]:
        rt = self.get_runtime()
        out: dict[str, Any] = {"pid": os.getpid(), "handled": self.handled, "errors": self.errors,
                               "uptimeS": round(time.time() - self.started_at, 3)}
        cfg = getattr(rt, "config", None)
        if cfg is not None and callable(getattr(cfg, "to_dict", None)):
            out["config"] = cfg.to_dict()
        tracked = getattr(rt, "tracked_counts", None)
        if callable(tracked):
            out["tracked"] = tracked()
        if session_id:
            # which collections still hold the session (status itself never re-tracks it)
            out["heldBy"] = self.held_by(session_id)
            st = getattr(rt, "status", None)
            if callable(st):
                out["session"] = st(session_id)
        return out

    def held_by(self, *ids: str | None) -> list[str]:
        """Names of the runtime's per-session collections with a key mentioning any of ``ids``."""
        colls = getattr(self.runtime, "collections", None)
        wanted = [i for i in ids if i]
        if not callable(colls) or not wanted:
            return []
        held: list[str] = []
        for name, coll in colls().items():
            keys = coll.keys() if callable(getattr(coll, "keys", None)) else []
            for k in keys:
                parts = k if isinstance(k, tuple) else (k,)
                if any(isinstance(p, str) and any(w == p or w in p for w in wanted) for p in parts):
                    held.append(name)
                    break
        return held

    def on_status(self, req_id: Any, msg: dict[str, Any]) -> None:
        sid = msg.get("sessionId")
        try:
            self.reply(req_id, self.status(sid if isinstance(sid, str) else None))
        except Exception as exc:
            self.error(req_id, f"status failed: {type(exc).__name__}")

    def on_command(self, req_id: Any, msg: dict[str, Any]) -> None:
        """The chat command: always answered with a text, never an error line."""
        def opt(name: str) -> str | None:
            v = msg.get(name)
            return v if isinstance(v, str) and v else None

        args = msg.get("args")
        try:
            render = getattr(self.get_runtime(), "command", None)
            if not callable(render):
                raise RuntimeError("this runtime has no chat command")
            text = str(render(args if isinstance(args, str) else "", opt("sessionId"),
                              opt("sessionKey")))
        except Exception as exc:
            log.warning("[token-optimizer] /token-optimizer failed: %s", exc)
            text = f"[Token Optimizer] status unavailable: {type(exc).__name__}"
        self.reply(req_id, {"text": text})

    def trace(self, hook: str, event: Any, ctx: Any, result: Any, actions: list[dict[str, Any]]) -> None:
        """Debug aid (``TOKEN_OPTIMIZER_OPENCLAW_TRACE=<file>``): one JSON line per message."""
        assert self.trace_path is not None
        ident: dict[str, str] = {}
        for src in (event, ctx):
            if isinstance(src, dict):
                for k in ("sessionId", "sessionKey"):
                    if isinstance(src.get(k), str):
                        ident.setdefault(k, src[k])
        row: dict[str, Any] = {"t": int(time.time() * 1000), "pid": os.getpid(), "hook": hook, **ident,
                               "result": result, "actions": actions}
        with contextlib.suppress(Exception):
            row["tracked"] = self.status(None).get("tracked")
            if hook == "session_end":
                row["heldBy"] = self.held_by(ident.get("sessionId"), ident.get("sessionKey"))
        # what a real-host test needs to compare with the model server's log (cheap, debug only)
        with contextlib.suppress(Exception):
            ev = event if isinstance(event, dict) else {}
            cx = ctx if isinstance(ctx, dict) else {}
            sid = ident.get("sessionId")
            if hook == "agent_turn_prepare":
                row["workspaceDir"] = cx.get("workspaceDir")
                row["trigger"] = cx.get("trigger")
                prompt = ev.get("prompt")
                row["prompt"] = prompt[:200] if isinstance(prompt, str) else None
                row["queuedInjections"] = len(ev.get("queuedInjections") or [])
                rt_status = getattr(self.runtime, "status", None)
                if sid and callable(rt_status):
                    st = rt_status(sid)
                    row["fillPct"] = st.get("fillPct")
                    row["contextWindow"] = st.get("contextWindow")
            elif hook in ("before_tool_call", "after_tool_call"):
                row["toolName"] = ev.get("toolName") or cx.get("toolName")
                params = ev.get("params")
                if isinstance(params, dict):
                    row["params"] = {k: (v[:200] if isinstance(v, str) else v) for k, v in params.items()
                                     if k in ("path", "file_path", "filePath", "file", "task", "label")}
                if hook == "after_tool_call":
                    row["error"] = ev.get("error")
            elif hook in ("llm_output", "model_call_ended"):
                row["usage"] = ev.get("usage")
                row["contextTokenBudget"] = ev.get("contextTokenBudget")
                last = ev.get("lastAssistant")
                if isinstance(last, dict):
                    row["lastAssistantUsage"] = last.get("usage")
            elif hook in ("before_compaction", "after_compaction"):
                row["event"] = {k: v for k, v in ev.items() if k != "messages"}
                row["eventMessages"] = len(ev.get("messages") or [])
            elif hook == "agent_end":
                msgs = ev.get("messages") or []
                row["messages"] = len(msgs)
                row["assistantUsages"] = [m.get("usage") for m in msgs
                                          if isinstance(m, dict) and m.get("role") == "assistant"][-8:]
        try:
            with open(self.trace_path, "ab") as fh:
                fh.write(_dumps(row))
        except OSError:
            log.debug("[token-optimizer] trace write failed", exc_info=True)

    # ------------------------------------------------------------ lifecycle
    def run(self, inp: IO[bytes]) -> None:
        try:
            for line in inp:
                try:
                    self.handle_line(line)
                except BrokenPipeError:
                    raise
                except Exception:
                    log.exception("[token-optimizer] worker loop error")
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self.runtime is not None and not self.stopped:
            self.stopped = True
            try:
                self.runtime.gateway_stop()
            except Exception:
                log.exception("[token-optimizer] flush at exit failed")
        close = getattr(self.runtime, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def claim_stdout() -> IO[bytes]:
    """Keep the real stdout for protocol lines; everything else writing to fd 1 lands on stderr."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "wb", buffering=1 << 16)


class _DuplicateFilter(logging.Filter):
    """Drop the runtime's own log lines while a hook runs: they also come back as ``log``
    actions, which the shim sends to the host logger (debug lines are never actions)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_hook = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.in_hook and record.levelno >= logging.INFO
                    and record.funcName == "_log" and record.module == "runtime")


DUPLICATES = _DuplicateFilter()


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(DUPLICATES)
    root = logging.getLogger("token_optimizer")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    level_name = str(settings.LOG_LEVEL.default)
    with contextlib.suppress(Exception):  # a bad value warns (through the handler above)
        level_name = str(settings.env_value(settings.LOG_LEVEL))
    level = getattr(logging, level_name, logging.INFO)
    root.setLevel(level if isinstance(level, int) else logging.INFO)


def main() -> int:
    out = claim_stdout()
    setup_logging()

    def _term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    worker = Worker(out, trace_path=settings.env_value(settings.OPENCLAW_TRACE))
    worker.preload()
    gc.freeze()  # long-lived process: keep the imported modules out of later collections
    worker.send({"id": None, "type": "ready", "pid": os.getpid(), "protocol": PROTOCOL_VERSION})
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        worker.run(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
