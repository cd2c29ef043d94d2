"""Session transcripts: the reference parser, an incremental reader and a message loader.

Spec: analysis.md section 3 (parser), runtime.md section 5.2 (message loader).

All three readers share :class:`RunAccumulator`, which holds a session's
running figures and is fed one record at a time. A full parse feeds every line
of the file once; :class:`IncrementalTranscript` keeps the accumulator and the
byte offset between calls and feeds only lines appended since; the event-fed
:class:`~token_optimizer.ledger.Ledger` feeds it host events. The arithmetic
(de-duplication by request id, per-request pricing, dominant model, outcome)
therefore exists once.

Exactness: costs are summed in request order exactly as the reference does
(a left fold over the de-duplicated requests), so a full parse and an
incremental read of the same bytes produce bit-identical figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from token_optimizer.jsutil import js_trim, now_ms, parse_iso_ms, utf16_slice
from token_optimizer.models import AgentRun, Message, Outcome, TokenBreakdown
from token_optimizer.pricing import (
    ModelPricing,
    calculate_cost,
    cost_for,
    get_pricing,
    js_to_number,
    load_pricing_tier,
    normalize_model_name,
    resolve_pricing_key,
    tier_multiplier,
)

log = logging.getLogger("token_optimizer")

SESSION_FILE_SIZE_LIMIT = 50 * 1024 * 1024
"""Transcripts larger than this are skipped (the parser returns ``None``)."""

TOPIC_MAX_LEN = 120
_MAX_DATE_MS = 8.64e15
_REGIONAL_TIER = "vertex-regional"

# ---------------------------------------------------------------- JS-ish access


class _Missing:
    """``undefined``: a key that is absent (as opposed to JSON ``null``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


MISSING: Any = _Missing()


def _prop(obj: object, key: str) -> Any:
    """``obj[key]`` with JS semantics: anything but an object yields undefined."""
    if isinstance(obj, dict):
        return obj.get(key, MISSING)
    return MISSING


def _nullish(v: object) -> bool:
    return v is None or v is MISSING


def _coalesce(obj: object, *keys: str) -> Any:
    """``obj.k1 ?? obj.k2 ?? ...``: the first non-nullish value, else the last raw one."""
    v: Any = MISSING
    for k in keys:
        v = _prop(obj, k)
        if not _nullish(v):
            return v
    return v


def _or(v: Any, fallback: Any) -> Any:
    """``v ?? fallback``."""
    return fallback if _nullish(v) else v


def non_neg(v: object) -> float:
    """The reference's ``nonNeg``: ``Number(v)``, then 0 unless finite and positive."""
    n = v if isinstance(v, float) else js_to_number(v)
    return n if math.isfinite(n) and n > 0 else 0.0


def _js_truthy(v: object) -> bool:
    if _nullish(v) or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0 and not (isinstance(v, float) and math.isnan(v))
    if isinstance(v, str):
        return v != ""
    return True


def _num_out(x: float) -> int:
    """Token totals are integral in practice; keep a fractional value as it is."""
    return int(x) if x.is_integer() else cast(int, x)


def timestamp_ms(v: object) -> float | None:
    """``new Date(v)`` for a truthy record timestamp; ``None`` when invalid."""
    if not _js_truthy(v):
        return None
    if isinstance(v, str):
        ms = parse_iso_ms(v)
    elif isinstance(v, bool):
        ms = 1.0  # new Date(true) is 1 ms after the epoch
    elif isinstance(v, (int, float)):
        ms = float(math.trunc(v)) if math.isfinite(v) else math.nan
    else:
        return None
    if math.isnan(ms) or abs(ms) > _MAX_DATE_MS:
        return None
    return ms


def loads_record(text: str) -> Any:
    """``JSON.parse`` of one line; raises ``ValueError`` when invalid."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses a few things JSON.parse accepts (lone surrogate escapes,
        # integers beyond 64 bits); json accepts those but also NaN/Infinity,
        # which JSON.parse rejects.
        return json.loads(text, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def role_of(record: dict[str, Any]) -> object:
    """The effective role: ``message.role`` for ``type: "message"`` records, else ``type``."""
    t = record.get("type")
    if t == "message":
        return _prop(record.get("message"), "role")
    return t


def _content_of(record: dict[str, Any]) -> Any:
    return _or(_prop(record.get("message"), "content"), record.get("content", MISSING))


def first_user_text(record: dict[str, Any]) -> str:
    """Text of a user record as the topic extractor sees it (strings untrimmed)."""
    content = _content_of(record)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for item in content:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                parts.append(item["text"])
        return js_trim(" ".join(parts))
    return ""


# ---------------------------------------------------------------- topic

_TOPIC_PREFIXES = (
    "implement the following plan:",
    "implement the following:",
    "implement this plan:",
    "you are implementing unit",
    "you are implementing",
    "complete the following:",
    "please implement:",
    "task:",
    "goal:",
)
_JS_WS = ("\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
          + "\u2028\u2029\u202f\u205f\u3000\ufeff")
_JS_NL = "\n\r\u2028\u2029"
_HEADING = re.compile(rf"(?:^|(?<=[{_JS_NL}]))#{{1,2}}[{re.escape(_JS_WS)}]+([^{_JS_NL}]+)")
_FIRST_SENTENCE = re.compile(r"[^.\n]+")


def extract_topic(text: str) -> str:
    """A short label for a session from its first user message (analysis.md section 3.7)."""
    s = js_trim(text)
    if not s:
        return ""
    low = s.lower()
    for prefix in _TOPIC_PREFIXES:
        if low.startswith(prefix):
            s = s[len(prefix):].lstrip(_JS_WS)
            break
    if not s:
        return ""
    m = _HEADING.search(s)
    if m:
        return utf16_slice(js_trim(m.group(1)), TOPIC_MAX_LEN)
    m = _FIRST_SENTENCE.match(s)
    if m:
        return utf16_slice(js_trim(m.group(0)), TOPIC_MAX_LEN)
    return utf16_slice(s, TOPIC_MAX_LEN)


# ---------------------------------------------------------------- usage


@dataclass(frozen=True)
class UsageFields:
    """One request's de-duplicable token figures (fresh input excludes cache reads)."""

    input: float = 0.0
    output: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0
    cw1h: float = 0.0
    cw5m: float = 0.0

    @property
    def prompt(self) -> float:
        """Size of the prompt the model saw: fresh input + cache read + cache write."""
        return self.input + self.cache_read + self.cache_write


_EMPTY_USAGE = UsageFields()


def extract_usage(usage: object) -> UsageFields:
    """Token figures of one usage object (analysis.md section 3.4)."""
    if not isinstance(usage, dict):
        return _EMPTY_USAGE
    inp = non_neg(_or(_coalesce(usage, "inputTokens", "input_tokens"), 0))
    out = non_neg(_or(_coalesce(usage, "outputTokens", "output_tokens"), 0))
    details = _or(_coalesce(usage, "promptTokensDetails", "prompt_tokens_details"), {})
    prompt_cached = _coalesce(details, "cachedTokens", "cached_tokens")
    explicit = _coalesce(usage, "cacheReadInputTokens", "cache_read_input_tokens")
    cache_read = non_neg(_or(explicit, _or(prompt_cached, 0)))
    if explicit is MISSING and prompt_cached is not MISSING:
        fresh = max(0.0, inp - cache_read)  # OpenAI style: input includes cached tokens
    else:
        fresh = inp
    creation = _or(_coalesce(usage, "cacheCreation", "cache_creation"), {})
    cw1h = non_neg(_or(_or(_prop(creation, "ephemeral_1h_input_tokens"),
                           usage.get("ephemeral_1h_input_tokens", MISSING)), 0))
    cw5m = non_neg(_or(_or(_prop(creation, "ephemeral_5m_input_tokens"),
                           usage.get("ephemeral_5m_input_tokens", MISSING)), 0))
    cache_write = non_neg(_or(_coalesce(usage, "cacheCreationInputTokens", "cache_creation_input_tokens"),
                              cw1h + cw5m))
    return UsageFields(fresh, out, cache_read, cache_write, cw1h, cw5m)


def _max_fields(a: UsageFields, b: UsageFields) -> UsageFields:
    return UsageFields(max(a.input, b.input), max(a.output, b.output), max(a.cache_read, b.cache_read),
                       max(a.cache_write, b.cache_write), max(a.cw1h, b.cw1h), max(a.cw5m, b.cw5m))


# ---------------------------------------------------------------- accumulator


class _Bucket:
    """One de-duplicated request: its figures, raw model and two cost views."""

    __slots__ = ("cost", "cost_regional", "fields", "model")

    def __init__(self, fields: UsageFields, model: str, cost: float, cost_regional: float) -> None:
        self.fields = fields
        self.model = model
        self.cost = cost
        self.cost_regional = cost_regional


def _request_key(rid: object) -> object | None:
    """Map key for a truthy request id (JS ``Map`` keys: strings and numbers differ)."""
    if not _js_truthy(rid):
        return None
    if isinstance(rid, str):
        return ("s", rid)
    if isinstance(rid, bool):
        return ("b", rid)
    if isinstance(rid, (int, float)):
        return ("n", float(rid))
    return ("o", object())  # objects are keyed by identity: never a duplicate


class RunAccumulator:
    """A session's running figures, fed one record (or host event) at a time.

    ``max_requests=None`` remembers every request id (exact de-duplication, as
    the reference); a number bounds that memory to the most recent requests
    (a repeat of an older, forgotten id then counts as a new request).
    """

    __slots__ = (
        "_bucket_count",
        "_buckets",
        "_cost_dirty",
        "_latest",
        "_latest_cost",
        "_latest_cost_r",
        "_max_requests",
        "_max_tools",
        "_model_dirty",
        "_prefix",
        "_prefix_r",
        "_pricing",
        "_sorted_tools",
        "_topic",
        "first_ts",
        "first_user_text",
        "last_model",
        "last_prompt",
        "last_ts",
        "message_count",
        "model_usage",
        "openclaw_dir",
        "priced_count",
        "tools",
        "totals",
    )

    def __init__(self, openclaw_dir: str | os.PathLike[str] | None = None, *,
                 max_requests: int | None = None, max_tools: int | None = None) -> None:
        self.openclaw_dir = openclaw_dir
        self._pricing: dict[str, ModelPricing] = get_pricing(openclaw_dir)
        self._max_requests = max_requests
        self._max_tools = max_tools
        self._buckets: dict[object, _Bucket] = OrderedDict() if max_requests else {}
        self._bucket_count = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.message_count = 0
        self.first_user_text: str | None = None
        self._topic: str | None = None
        self.tools: set[str] = set()
        self._sorted_tools: list[str] | None = []
        # totals: input, output, cache read, cache write, 1h write, 5m write
        self.totals = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        self.model_usage: dict[str, float] = {}
        self.priced_count = 0
        self._prefix = 0.0
        self._prefix_r = 0.0
        self._latest: object | None = None
        self._latest_cost = 0.0
        self._latest_cost_r = 0.0
        self._cost_dirty = False
        self._model_dirty = False
        self.last_prompt = 0.0
        self.last_model: str | None = None

    # ------------------------------------------------------------ feeding

    def note_timestamp(self, ms: float | None) -> None:
        if ms is None:
            return
        if self.first_ts is None:
            self.first_ts = ms
        self.last_ts = ms

    def note_message(self, role: object, text: str | None = None) -> bool:
        """Count a user/assistant message; the first non-empty user text gives the topic."""
        if role != "user" and role != "assistant":
            return False
        self.message_count += 1
        if role == "user" and self.first_user_text is None and text:
            self.first_user_text = text
        return True

    def note_tool(self, name: object) -> None:
        if not isinstance(name, str) or name in self.tools:
            return
        if self._max_tools is not None and len(self.tools) >= self._max_tools:
            return
        self.tools.add(name)
        self._sorted_tools = None

    def _price(self, f: UsageFields, model: str) -> tuple[float, float]:
        norm = normalize_model_name(model)
        key = resolve_pricing_key(norm if norm is not None else model, self._pricing)
        c = cost_for(f.input, f.output, f.cache_read, f.cache_write, key, self._pricing, f.cw1h, f.cw5m)
        mult = tier_multiplier(_REGIONAL_TIER, key)
        cr = c if mult == 1.0 else cost_for(f.input, f.output, f.cache_read, f.cache_write, key,
                                            self._pricing, f.cw1h, f.cw5m, mult)
        return c, cr

    def add_usage(self, request_id: object, fields: UsageFields, model: str) -> bool:
        """Record one request's usage; repeats of a request id keep the per-field maximum.

        Returns True when this usage belongs to the most recent request (a new
        one, or a repeat of the latest), i.e. it describes the current prompt.
        """
        key = _request_key(request_id)
        if key is None:
            key = ("s", f"__noreq__{self._bucket_count}")
        buckets = self._buckets
        old = buckets.get(key)
        t = self.totals
        if old is None:
            cost, cost_r = self._price(fields, model)
            b = _Bucket(fields, model, cost, cost_r)
            buckets[key] = b
            self._bucket_count += 1
            if self._max_requests is not None and len(buckets) > self._max_requests:
                buckets.pop(next(iter(buckets)))
            t[0] += fields.input
            t[1] += fields.output
            t[2] += fields.cache_read
            t[3] += fields.cache_write
            t[4] += fields.cw1h
            t[5] += fields.cw5m
            self.model_usage[model] = self.model_usage.get(model, 0.0) + (
                fields.input + fields.output + fields.cache_read + fields.cache_write)
            if cost > 0:
                self.priced_count += 1
            if self._latest is not None:
                self._prefix += self._latest_cost
                self._prefix_r += self._latest_cost_r
            self._latest = key
            self._latest_cost, self._latest_cost_r = cost, cost_r
            self.last_prompt = fields.prompt
            self.last_model = model
            return True
        merged = _max_fields(old.fields, fields)
        new_model = model if (model and model != "unknown") else old.model
        cost, cost_r = self._price(merged, new_model)
        of = old.fields
        t[0] += merged.input - of.input
        t[1] += merged.output - of.output
        t[2] += merged.cache_read - of.cache_read
        t[3] += merged.cache_write - of.cache_write
        t[4] += merged.cw1h - of.cw1h
        t[5] += merged.cw5m - of.cw5m
        old_total = of.input + of.output + of.cache_read + of.cache_write
        new_total = merged.input + merged.output + merged.cache_read + merged.cache_write
        if new_model == old.model:
            self.model_usage[new_model] = self.model_usage.get(new_model, 0.0) + (new_total - old_total)
        else:
            self.model_usage[old.model] = self.model_usage.get(old.model, 0.0) - old_total
            self.model_usage[new_model] = self.model_usage.get(new_model, 0.0) + new_total
            self._model_dirty = True
        self.priced_count += (cost > 0) - (old.cost > 0)
        buckets[key] = _Bucket(merged, new_model, cost, cost_r)
        if key == self._latest:
            self._latest_cost, self._latest_cost_r = cost, cost_r
            self.last_prompt = merged.prompt
            self.last_model = new_model
            return True
        if self._max_requests is None:
            self._cost_dirty = True  # refold in request order when the run is built
        else:
            self._prefix += cost - old.cost
            self._prefix_r += cost_r - old.cost_regional
        return False

    def feed(self, record: object, *, message_sink: Callable[[Message], None] | None = None) -> None:
        """Apply one transcript record (analysis.md section 3.5, per-record loop)."""
        if not isinstance(record, dict):
            return
        self.note_timestamp(timestamp_ms(record.get("timestamp")))
        role = role_of(record)
        if role != "user" and role != "assistant":
            return
        text = first_user_text(record) if role == "user" and self.first_user_text is None else None
        self.note_message(role, text)
        if message_sink is not None:
            message_sink(message_from_record(record, role))
        if role != "assistant":
            return
        msg = record.get("message")
        usage = _or(_prop(msg, "usage"), record.get("usage", MISSING))
        if _js_truthy(usage):
            model_raw = _or(_prop(msg, "model"), _or(record.get("model", MISSING), "unknown"))
            model = model_raw if isinstance(model_raw, str) else "unknown"
            self.add_usage(record.get("requestId"), extract_usage(usage), model)
        content = _prop(msg, "content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    self.note_tool(block.get("name"))

    def feed_line(self, raw: bytes | str, *, message_sink: Callable[[Message], None] | None = None) -> None:
        """Parse and apply one line; blank and invalid lines are skipped silently."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        text = js_trim(text)
        if not text:
            return
        try:
            record = loads_record(text)
        except (ValueError, RecursionError):
            return
        self.feed(record, message_sink=message_sink)

    # ------------------------------------------------------------ results

    @property
    def request_count(self) -> int:
        return self._bucket_count

    def _refold(self) -> None:
        """Recompute order-sensitive aggregates from the remembered requests (exact mode)."""
        if self._cost_dirty:
            prefix = prefix_r = 0.0
            items = list(self._buckets.values())
            for b in items[:-1]:
                prefix += b.cost
                prefix_r += b.cost_regional
            self._prefix, self._prefix_r = prefix, prefix_r
            if items:
                self._latest_cost, self._latest_cost_r = items[-1].cost, items[-1].cost_regional
            self._cost_dirty = False
        if self._model_dirty and self._max_requests is None:
            usage: dict[str, float] = {}
            for b in self._buckets.values():
                f = b.fields
                usage[b.model] = usage.get(b.model, 0.0) + (f.input + f.output + f.cache_read + f.cache_write)
            self.model_usage = usage
            self._model_dirty = False

    def dominant_model(self) -> str:
        """Normalised model with the most tokens (first strict maximum in insertion order)."""
        self._refold()
        best, best_usage = "unknown", 0.0
        for m, u in self.model_usage.items():
            if u > best_usage:
                best, best_usage = m, u
        n = normalize_model_name(best)
        return n if n is not None else best

    def sorted_tools(self) -> list[str]:
        if self._sorted_tools is None:
            self._sorted_tools = sorted(self.tools, key=lambda s: s.encode("utf-16-be"))
        return list(self._sorted_tools)

    def cost(self, tier: str | None = None) -> float:
        """Session cost under ``tier`` (read from the config when not given)."""
        self._refold()
        if tier is None:
            tier = load_pricing_tier(self.openclaw_dir)
        if self.priced_count > 0:
            if tier == _REGIONAL_TIER:
                return self._prefix_r + self._latest_cost_r if self._latest is not None else 0.0
            return self._prefix + self._latest_cost if self._latest is not None else 0.0
        t = self.totals
        tokens = TokenBreakdown(_num_out(t[0]), _num_out(t[1]), _num_out(t[2]), _num_out(t[3]))
        return calculate_cost(tokens, self.dominant_model(), self.openclaw_dir, (t[4], t[5]), tier=tier)

    def build_run(self, session_id: str, agent_name: str, source_path: str = "", *,
                  allow_empty: bool = False) -> AgentRun | None:
        """The :class:`AgentRun` of everything fed so far (``None`` with no messages)."""
        if self.message_count == 0 and not allow_empty:
            return None
        t = self.totals
        model = self.dominant_model()
        tokens = TokenBreakdown(_num_out(t[0]), _num_out(t[1]), _num_out(t[2]), _num_out(t[3]))
        outcome: Outcome
        if self.message_count <= 2 and t[1] < 200:
            outcome = "abandoned"
        elif t[1] < 100 and t[0] > 50_000:
            outcome = "empty"
        else:
            outcome = "success"
        duration = 0.0
        if self.first_ts is not None and self.last_ts is not None:
            duration = max(0.0, (self.last_ts - self.first_ts) / 1000)
        if self._topic is None and self.first_user_text:
            self._topic = extract_topic(self.first_user_text)
        topic = self._topic or ""
        return AgentRun(
            session_id=session_id,
            agent_name=agent_name,
            timestamp_ms=self.first_ts if self.first_ts is not None else float(now_ms()),
            duration_seconds=duration,
            tokens=tokens,
            cost_usd=self.cost(),
            model=model,
            run_type="manual",
            outcome=outcome,
            message_count=self.message_count,
            tools_used=self.sorted_tools(),
            source_path=source_path,
            cache_write_1h_tokens=_num_out(t[4]),
            cache_write_5m_tokens=_num_out(t[5]),
            topic=topic or None,
        )

    def clone(self) -> RunAccumulator:
        """An independent copy (used to try a not-yet-terminated last line)."""
        c = RunAccumulator.__new__(RunAccumulator)
        for name in RunAccumulator.__slots__:
            setattr(c, name, getattr(self, name))
        c._buckets = OrderedDict(self._buckets) if self._max_requests else dict(self._buckets)
        c.tools = set(self.tools)
        c.totals = list(self.totals)
        c.model_usage = dict(self.model_usage)
        return c


# ---------------------------------------------------------------- full parse


def session_id_from_path(path: str | os.PathLike[str]) -> str:
    """``path.basename(file, ".jsonl")``."""
    name = os.path.basename(os.fspath(path))
    if name.endswith(".jsonl") and name != ".jsonl":
        return name[: -len(".jsonl")]
    return name


def parse_session(path: str | os.PathLike[str], agent_name: str,
                  openclaw_dir: str | os.PathLike[str] | None = None) -> AgentRun | None:
    """Parse a whole ``.jsonl`` transcript into an :class:`AgentRun` (reference parser).

    ``None`` when the file is missing, unreadable, larger than 50 MiB or has no
    user/assistant record.
    """
    try:
        if os.stat(path).st_size > SESSION_FILE_SIZE_LIMIT:
            return None
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    acc = RunAccumulator(openclaw_dir)
    for line in data.split(b"\n"):
        acc.feed_line(line)
    return acc.build_run(session_id_from_path(path), agent_name, os.fspath(path))


# ---------------------------------------------------------------- incremental


_HEAD_BYTES = 64


class IncrementalTranscript:
    """Reads a growing transcript one appended tail at a time.

    Each :meth:`update` reads only bytes past the remembered offset and feeds
    complete lines to the accumulator. A last line without its newline is not
    consumed (it is re-read when more bytes arrive) but is tried on a copy, so
    the figures always equal a full :func:`parse_session` of the file as it is.
    A file that shrank, was replaced (new inode) or whose first bytes or bytes
    just before the offset changed is read again from the start.
    """

    def __init__(self, path: str | os.PathLike[str], agent_name: str,
                 openclaw_dir: str | os.PathLike[str] | None = None, *,
                 ring_size: int = 0) -> None:
        self.path = Path(path)
        self.agent_name = agent_name
        self.openclaw_dir = openclaw_dir
        self.ring_size = max(0, int(ring_size))
        self.resets = 0
        self._init_state()

    def _init_state(self) -> None:
        self.acc = RunAccumulator(self.openclaw_dir)
        self.recent: deque[Message] = deque(maxlen=self.ring_size or 1)
        """The last ``ring_size`` user/assistant messages of consumed lines."""
        self._sink: Callable[[Message], None] | None = self.recent.append if self.ring_size else None
        self.view: RunAccumulator = self.acc
        """The accumulator behind the latest figures (a copy when a partial line was tried)."""
        self.offset = 0
        self._ident: tuple[int, int] | None = None
        self._head = b""
        self._edge = b""
        self._available = False

    def reset(self) -> None:
        self._init_state()
        self.resets += 1

    def update(self) -> AgentRun | None:
        """Read what was appended since the last call and return the current figures."""
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                ident = (st.st_dev, st.st_ino)
                size = st.st_size
                if self._ident is not None and (ident != self._ident or size < self.offset
                                                or not self._head_matches(fh)):
                    self.reset()
                self._ident = ident
                if size > SESSION_FILE_SIZE_LIMIT:
                    self._available = False
                    return None
                fh.seek(self.offset)
                data = fh.read(max(0, size - self.offset))
        except OSError:
            if self._ident is not None:
                self.reset()
            self._available = False
            return None
        self._consume(data)
        self._available = True
        return self.current()

    @property
    def available(self) -> bool:
        """True when the last :meth:`update` could read the file."""
        return self._available

    def _head_matches(self, fh: Any) -> bool:
        """The first bytes and the bytes just before the offset are still what was read."""
        fd = fh.fileno()
        if self._head and os.pread(fd, len(self._head), 0) != self._head:
            return False
        edge = self._edge
        return not edge or os.pread(fd, len(edge), self.offset - len(edge)) == edge

    def _consume(self, data: bytes) -> None:
        nl = data.rfind(b"\n")
        if nl >= 0:
            complete = data[: nl + 1]
            for line in complete.split(b"\n")[:-1]:
                self.acc.feed_line(line, message_sink=self._sink)
            if len(self._head) < _HEAD_BYTES:
                self._head = (self._head + complete)[:_HEAD_BYTES]
            self._edge = (self._edge + complete)[-_HEAD_BYTES:]
            self.offset += len(complete)
            tail = data[nl + 1:]
        else:
            tail = data
        self.view = self.acc
        if tail.strip():
            try:
                record = loads_record(js_trim(tail.decode("utf-8", errors="replace")))
            except (ValueError, RecursionError):
                return
            if isinstance(record, dict):
                self.view = self.acc.clone()
                self.view.feed(record)

    def current(self) -> AgentRun | None:
        """Figures as of the last :meth:`update` (``None`` when unavailable or empty)."""
        if not self._available:
            return None
        return self.view.build_run(session_id_from_path(self.path), self.agent_name, os.fspath(self.path))


# ---------------------------------------------------------------- messages


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [b["text"] for b in content
                 if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                 and b["text"]]
        return "\n".join(texts)
    return ""


def message_from_record(record: dict[str, Any], role: str) -> Message:
    ts = record.get("timestamp")
    return Message(role=role, content=_message_text(_content_of(record)),
                   timestamp=ts if isinstance(ts, str) else None)


def iter_messages(lines: Iterable[bytes | str]) -> Iterator[Message]:
    """User/assistant messages of transcript lines, in either record style."""
    for raw in lines:
        text = js_trim(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw)
        if not text:
            continue
        try:
            record = loads_record(text)
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        role = role_of(record)
        if role == "user" or role == "assistant":
            yield message_from_record(record, role)


def load_messages_from_session_file(path: str | os.PathLike[str],
                                    limit: int | None = None) -> list[Message] | None:
    """Messages of a transcript for checkpoint capture (runtime.md section 5.2).

    Unlike the reference, OpenClaw-native ``type: "message"`` records are
    understood as well as legacy top-level ``type: "user"/"assistant"``
    (fixes runtime.md section 13.4 A). ``limit`` keeps only the last N.
    ``None`` when the file cannot be read or holds no message.
    """
    try:
        with open(path, "rb") as fh:
            if limit is not None and limit > 0:
                msgs: list[Message] = list(deque(iter_messages(fh), maxlen=limit))
            else:
                msgs = list(iter_messages(fh))
    except OSError:
        return None
    return msgs or None


__all__ = [
    "SESSION_FILE_SIZE_LIMIT",
    "IncrementalTranscript",
    "RunAccumulator",
    "UsageFields",
    "extract_topic",
    "extract_usage",
    "load_messages_from_session_file",
    "parse_session",
]
