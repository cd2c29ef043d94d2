"""Per-session accumulation of OpenClaw transcript events (SQLite rows or JSONL lines).

One :class:`SessionAcc` per session, fed one decoded event at a time. Its
state is small (counters, a per-model table, a capped tool-name set) and
round-trips through JSON, so the incremental cache can resume it.

Event shapes (OpenClaw 2026.9.x, ``src/config/sessions/session-entry-codec.ts``
in the host's dist): ``{"type":"message","id","parentId","timestamp",
"message":{role,…}}`` with roles ``user``, ``assistant`` (``content`` blocks of
type ``text``/``thinking``/``toolCall``, ``model``, ``provider``, ``usage``
``{input, output, cacheRead, cacheWrite, totalTokens, cost:{…, total}}``,
``stopReason``, ``errorMessage``, ``timestamp`` in ms) and ``toolResult``
(``toolName``, ``isError``); and entries of type ``compaction``, ``reset``,
``model_change``, ``session`` (the header), … Older transcripts (the
reference's fixtures, Claude-Code-style lines) carry ``inputTokens``/
``input_tokens`` usage and ``tool_use`` blocks; those are read with the
reference parser's usage chain (:func:`token_optimizer.transcripts.extract_usage`),
including its de-duplication of streamed repeats by ``requestId``.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from token_optimizer.audit.model import ModelSplit, Tokens
from token_optimizer.audit.money import Pricer, recorded_cost, split_basis
from token_optimizer.transcripts import extract_topic, extract_usage, first_user_text
from token_optimizer.transcripts import timestamp_ms as _timestamp_ms

MAX_TOOLS = 64
MAX_STOP_REASONS = 16
MAX_REQUEST_IDS = 4096

# per-model slots
_CALLS, _IN, _OUT, _CR, _CW, _REC, _TAB, _UNP, _RECCALLS, _TABCALLS = range(10)


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                return 0.0
            return f if math.isfinite(f) and f > 0 else 0.0
        return 0.0
    f = float(v)
    return f if math.isfinite(f) and f > 0 else 0.0


_PLAIN_USAGE_KEYS = frozenset({"input_tokens", "output_tokens", "cache_read_input_tokens",
                               "cache_creation_input_tokens"})


_fromiso = _dt.datetime.fromisoformat


def timestamp_ms(v: object) -> float | None:
    """:func:`token_optimizer.transcripts.timestamp_ms`, with a fast path for the common
    ``YYYY-MM-DDTHH:MM:SS.mmmZ`` form: the C ``fromisoformat`` (which takes the ``Z`` as
    UTC from Python 3.11) reads it; whatever it refuses -- a field out of range, a digit
    that is not ASCII -- goes to the full parser, so the result is always the full
    parser's."""
    if isinstance(v, str) and len(v) == 24 and v[10] == "T" and v[19] == "." and v[23] == "Z" \
            and v[4] == "-" and v[7] == "-" and v[13] == ":" and v[16] == ":":
        try:
            d = _fromiso(v)
        except ValueError:
            return _timestamp_ms(v)
        # whole milliseconds: rounding undoes the float seconds' representation error
        return float(round(d.timestamp() * 1000))
    return _timestamp_ms(v)


def _plain_usage(usage: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """Claude-style usage holding only the four plain integer keys (the usual case):
    the reference chain's result without walking it (fresh input = input, cache write
    = ``cache_creation_input_tokens``, absent keys 0)."""
    if not usage.keys() <= _PLAIN_USAGE_KEYS:
        return None
    get = usage.get
    i, o, r, w = (get("input_tokens", 0), get("output_tokens", 0),
                  get("cache_read_input_tokens", 0), get("cache_creation_input_tokens", 0))
    if type(i) is not int or type(o) is not int or type(r) is not int or type(w) is not int:
        return None
    return (float(i) if i > 0 else 0.0, float(o) if o > 0 else 0.0,
            float(r) if r > 0 else 0.0, float(w) if w > 0 else 0.0)


def usage_tokens(usage: dict[str, Any]) -> tuple[float, float, float, float]:
    """(fresh input, output, cache read, cache write) of one usage object.

    OpenClaw's own keys first (``input``/``output``/``cacheRead``/``cacheWrite``);
    otherwise the reference parser's chain for older shapes.
    """
    if "input" in usage or "output" in usage or "cacheRead" in usage:
        return (_num(usage.get("input")), _num(usage.get("output")),
                _num(usage.get("cacheRead")), _num(usage.get("cacheWrite")))
    plain = _plain_usage(usage)
    if plain is not None:
        return plain
    f = extract_usage(usage)
    return (f.input, f.output, f.cache_read, f.cache_write)


class SessionAcc:
    """Running figures of one session."""

    __slots__ = ("assistant", "compactions", "count", "error_turns", "first_ms", "last_ms",
                 "last_seq", "models", "reqs", "resets", "stop", "tool_calls", "tool_errors",
                 "tool_results", "tools", "topic", "user")

    def __init__(self) -> None:
        self.first_ms: float | None = None
        self.last_ms: float | None = None
        self.user = 0
        self.assistant = 0
        self.tool_results = 0
        self.tool_errors = 0
        self.tool_calls = 0
        self.error_turns = 0
        self.compactions = 0
        self.resets = 0
        self.stop: dict[str, int] = {}
        self.tools: list[str] = []
        self.models: dict[str, list[float]] = {}
        self.topic: str | None = None
        self.last_seq = -1
        self.count = 0
        self.reqs: dict[str, list[Any]] = {}

    # ------------------------------------------------------------ state

    def to_state(self) -> list[Any]:
        return [self.first_ms, self.last_ms, self.user, self.assistant, self.tool_results,
                self.tool_errors, self.tool_calls, self.error_turns, self.compactions,
                self.resets, self.stop, self.tools, self.models, self.topic, self.last_seq,
                self.count, self.reqs]

    @classmethod
    def from_state(cls, st: list[Any]) -> SessionAcc:
        a = cls()
        (a.first_ms, a.last_ms, a.user, a.assistant, a.tool_results, a.tool_errors,
         a.tool_calls, a.error_turns, a.compactions, a.resets, a.stop, a.tools, a.models,
         a.topic, a.last_seq, a.count, a.reqs) = st
        return a

    # ------------------------------------------------------------ feeding

    def _ts(self, ms: float | None) -> None:
        if ms is None:
            return
        if self.first_ms is None or ms < self.first_ms:
            self.first_ms = ms
        if self.last_ms is None or ms > self.last_ms:
            self.last_ms = ms

    def _tool(self, name: object) -> None:
        self.tool_calls += 1
        if isinstance(name, str) and name not in self.tools and len(self.tools) < MAX_TOOLS:
            self.tools.append(name)

    def feed(self, ev: object, pricer: Pricer, created_ms: float | None = None) -> None:
        """Apply one decoded event; ``created_ms`` is the row's ``created_at`` (SQLite)."""
        if not isinstance(ev, dict):
            return
        self.count += 1
        get = ev.get
        etype = get("type")
        msg = get("message")
        if etype != "message" and etype is not None:
            if etype == "compaction":
                self.compactions += 1
            elif etype == "reset":
                self.resets += 1
            if etype == "user" or etype == "assistant":  # Claude-Code style lines
                if not isinstance(msg, dict):
                    msg = ev
                role: object = etype
            else:
                self._ts(created_ms if created_ms is not None else timestamp_ms(get("timestamp")))
                return
        else:
            if not isinstance(msg, dict):
                return
            role = msg.get("role")
        mts = msg.get("timestamp")
        if isinstance(mts, (int, float)) and not isinstance(mts, bool) and mts > 0:
            ms: float | None = float(mts)
        elif created_ms is not None:
            ms = created_ms
        else:
            ms = timestamp_ms(get("timestamp"))
        if ms is not None:
            if self.first_ms is None or ms < self.first_ms:
                self.first_ms = ms
            if self.last_ms is None or ms > self.last_ms:
                self.last_ms = ms
        if role == "assistant":
            self.assistant += 1
            self._assistant(ev, msg, pricer)
        elif role == "user":
            self.user += 1
            if self.topic is None:
                text = first_user_text(ev) if etype == "message" else first_user_text(
                    {"type": "message", "message": msg})
                if text:
                    self.topic = extract_topic(text) or None
            content = msg.get("content")
            if isinstance(content, list):  # Claude-Code style tool results ride in user turns
                for b in content:
                    if isinstance(b, dict) and b.get("type") == "tool_result":
                        self.tool_results += 1
                        if b.get("is_error") is True:
                            self.tool_errors += 1
        elif role == "toolResult" or role == "tool":
            self.tool_results += 1
            if msg.get("isError") is True or msg.get("is_error") is True:
                self.tool_errors += 1

    def _assistant(self, ev: dict[str, Any], msg: dict[str, Any], pricer: Pricer) -> None:
        mget = msg.get
        sr = mget("stopReason")
        if sr is not None:
            if isinstance(sr, str) and (sr in self.stop or len(self.stop) < MAX_STOP_REASONS):
                self.stop[sr] = self.stop.get(sr, 0) + 1
            if sr == "error":
                self.error_turns += 1
            else:
                em = mget("errorMessage")
                if isinstance(em, str) and em:
                    self.error_turns += 1
        else:
            em = mget("errorMessage")
            if isinstance(em, str) and em:
                self.error_turns += 1
        content = mget("content")
        if isinstance(content, list):
            for b in content:
                if isinstance(b, dict):
                    bt = b.get("type")
                    if bt == "toolCall" or bt == "tool_use" or bt == "toolUse":
                        self._tool(b.get("name"))
        usage = mget("usage")
        if not isinstance(usage, dict):
            usage = ev.get("usage")
        if not isinstance(usage, dict) or not usage:
            return
        model_raw = mget("model") or ev.get("model")
        model = model_raw if isinstance(model_raw, str) and model_raw else "unknown"
        if "input" in usage or "output" in usage or "cacheRead" in usage:
            inp, out, cr, cw = usage_tokens(usage)
        else:
            plain = _plain_usage(usage)
            inp, out, cr, cw = plain if plain is not None else usage_tokens(usage)
        rec = recorded_cost(usage) if "cost" in usage else None
        rid = ev.get("requestId")
        if isinstance(rid, str) and rid:
            old = self.reqs.get(rid)
            if old is not None:
                self._merge_repeat(old, model, inp, out, cr, cw, rec, pricer)
                return
            if len(self.reqs) < MAX_REQUEST_IDS:
                self.reqs[rid] = [model, inp, out, cr, cw, rec]
        self._add_call(model, inp, out, cr, cw, rec, pricer, 1)

    def _add_call(self, model: str, inp: float, out: float, cr: float, cw: float,
                  rec: float | None, pricer: Pricer, calls: int) -> None:
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = [0.0] * 10
        m[_CALLS] += calls
        m[_IN] += inp
        m[_OUT] += out
        m[_CR] += cr
        m[_CW] += cw
        if rec is not None:
            m[_REC] += rec
            m[_RECCALLS] += calls
            return
        price = pricer.price(model, inp, out, cr, cw)
        if price is None:
            m[_UNP] += inp + out + cr + cw
        else:
            m[_TAB] += price
            m[_TABCALLS] += calls

    def _merge_repeat(self, old: list[Any], model: str, inp: float, out: float, cr: float,
                      cw: float, rec: float | None, pricer: Pricer) -> None:
        """A streamed repeat of a request: keep the per-field maximum (the reference's rule)."""
        omodel = old[0]
        new = [max(old[1], inp), max(old[2], out), max(old[3], cr), max(old[4], cw)]
        orec = old[5]
        nrec = rec if orec is None else (orec if rec is None else max(orec, rec))
        # take the old figures back out, then add the merged ones as the same call
        self._add_call(omodel, -old[1], -old[2], -old[3], -old[4],
                       None if orec is None else -orec, pricer, 0)
        self._add_call(model if model != "unknown" else omodel, new[0], new[1], new[2], new[3],
                       nrec, pricer, 0)
        old[:] = [model if model != "unknown" else omodel, *new, nrec]

    # ------------------------------------------------------------ results

    def splits(self, pricer: Pricer) -> list[ModelSplit]:
        out: list[ModelSplit] = []
        for model, m in self.models.items():
            toks = Tokens(round(m[_IN]), round(m[_OUT]), round(m[_CR]),
                          round(m[_CW]))
            s = ModelSplit(model=model, calls=int(m[_CALLS]), tokens=toks,
                           recorded_usd=max(0.0, m[_REC]), table_usd=max(0.0, m[_TAB]),
                           unpriced_tokens=max(0, round(m[_UNP])))
            s.cost_usd = s.recorded_usd + s.table_usd
            priced_by: list[Any] = []
            if m[_RECCALLS]:
                priced_by.append("recorded")
            if m[_TABCALLS]:
                priced_by.append("table")
            s.basis = split_basis(s, priced_by)
            s.price_source = pricer.source(model) if m[_TABCALLS] else None
            out.append(s)
        return out
