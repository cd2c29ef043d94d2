"""The bundled price table generated from genai-prices' data (``data/genai_prices_table.json``).

``scripts/gen_price_table.py`` writes the table from the ``genai-prices`` package (MIT,
https://github.com/pydantic/genai-prices); its ``source`` header credits the package,
version and licence and says what was left out. This module loads it on first use (the
audit only; never the hook path), resolves a model name the way genai-prices'
``calc_price`` does, and prices a token vector with the prices in force on the table's
generation date.

Resolution, as genai-prices (``DataSnapshot.find_provider_model``):

* the name is lower-cased; a ``provider/`` prefix names the provider, by id or by the
  provider's ``provider_match`` rule (``amazon-bedrock`` -> ``aws``, ``vertex`` ->
  ``google``);
* without a provider, the first provider whose ``model_match`` accepts the name;
* within a provider, the first model whose ``match`` accepts it, then the models of its
  ``fallback`` providers (one step), then the same with a compact date suffix rewritten
  (``-20250929`` -> ``-2025-09-29``).

Pricing, as genai-prices: uncached input at the input price; cache reads and writes at
their own prices, or at the input price when the model has none; a tiered price switches
all tokens of a request to the tier once its whole input (cache included) exceeds the
threshold.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

TABLE_FILE = "genai_prices_table.json"

Matcher = Callable[[str], bool]


def compile_match(tree: Any) -> Matcher:
    """A match rule (genai-prices' clause names, as a JSON tree) as a predicate on a
    lower-cased name."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise ValueError(f"bad match rule: {tree!r}")
    ((op, arg),) = tree.items()
    if op in ("or", "and"):
        subs = [compile_match(t) for t in arg]
        if op == "or":
            return lambda s: any(m(s) for m in subs)
        return lambda s: all(m(s) for m in subs)
    if not isinstance(arg, str):
        raise ValueError(f"bad match rule: {tree!r}")
    if op == "regex":
        rx = re.compile(arg)  # genai-prices: re.search on the lower-cased name, case as written
        return lambda s: rx.search(s) is not None
    v = arg.lower()
    if op == "equals":
        return lambda s: s == v
    if op == "starts_with":
        return lambda s: s.startswith(v)
    if op == "ends_with":
        return lambda s: s.endswith(v)
    if op == "contains":
        return lambda s: v in s
    raise ValueError(f"unknown match clause {op!r}")


@dataclass(frozen=True, slots=True)
class Rate:
    """One per-million-token price, possibly tiered by the request's total input."""

    base: float
    tiers: tuple[tuple[int, float], ...] = ()

    @classmethod
    def parse(cls, v: Any) -> Rate | None:
        if v is None:
            return None
        if isinstance(v, dict):
            tiers = tuple(sorted((int(s), float(p)) for s, p in v.get("tiers", ())))
            return cls(float(v["base"]), tiers)
        return cls(float(v))

    def at(self, total_input: float) -> float:
        for start, price in reversed(self.tiers):
            if total_input > start:
                return price
        return self.base


@dataclass(frozen=True, slots=True)
class TableModel:
    """One model of the table: who sells it, its names, and its token prices (per MTok)."""

    provider: str
    id: str
    name: str | None
    input: Rate | None
    output: Rate | None
    cache_read: Rate | None
    cache_write: Rate | None

    @property
    def priced(self) -> bool:
        """Whether the table has any token price for it."""
        return any(r is not None for r in (self.input, self.output, self.cache_read,
                                           self.cache_write))

    @property
    def tiered(self) -> bool:
        return any(r is not None and r.tiers for r in (self.input, self.output,
                                                       self.cache_read, self.cache_write))

    def cost(self, inp: float, out: float, cache_read: float, cache_write: float, *,
             per_call: bool = True) -> float:
        """USD for one token vector (``inp`` excludes cache tokens, as everywhere here).

        ``per_call`` marks the vector as one request, so a tier threshold applies;
        aggregates are priced at the base prices.
        """
        total_in = inp + cache_read + cache_write if per_call else 0.0

        def rate(r: Rate | None) -> float:
            return 0.0 if r is None else r.at(total_in)

        r_in = rate(self.input)
        r_cr = r_in if self.cache_read is None else rate(self.cache_read)
        r_cw = r_in if self.cache_write is None else rate(self.cache_write)
        return (inp * r_in + out * rate(self.output) + cache_read * r_cr
                + cache_write * r_cw) / 1e6


@dataclass(slots=True)
class _Entry:
    match: Matcher
    model: TableModel


@dataclass(slots=True)
class _Provider:
    id: str
    name: str
    model_match: Matcher | None
    provider_match: Matcher | None
    fallback: tuple[str, ...]
    models: list[_Entry]

    def match_model(self, ref: str) -> TableModel | None:
        for e in self.models:
            if e.match(ref):
                return e.model
        return None


_COMPACT_DATE_RE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


def _dashed_date(ref: str) -> str:
    """``gpt-5.2-20251211`` -> ``gpt-5.2-2025-12-11`` (real dates only), as genai-prices."""

    def repl(m: re.Match[str]) -> str:
        y, mo, d = int(m.group(2)), int(m.group(3)), int(m.group(4))
        try:
            date(y, mo, d)
        except ValueError:
            return m.group(0)
        return f"-{y:04d}-{mo:02d}-{d:02d}"

    return _COMPACT_DATE_RE.sub(repl, ref)


class PriceTable:
    """The parsed table: its ``source`` header and a genai-prices-compatible resolver."""

    def __init__(self, data: dict[str, Any]) -> None:
        src = data.get("source")
        self.source: dict[str, Any] = dict(src) if isinstance(src, dict) else {}
        self._providers: list[_Provider] = []
        for p in data.get("providers", ()):
            pid = str(p["id"])
            models = []
            for m in p.get("models", ()):
                prices: Sequence[Any] = m.get("prices") or (None, None, None, None)
                rates = [Rate.parse(v) for v in list(prices)[:4]]
                rates += [None] * (4 - len(rates))
                models.append(_Entry(compile_match(m["match"]), TableModel(
                    pid, str(m["id"]), m.get("name"), *rates)))
            self._providers.append(_Provider(
                pid, str(p.get("name", pid)),
                compile_match(p["model_match"]) if p.get("model_match") else None,
                compile_match(p["provider_match"]) if p.get("provider_match") else None,
                tuple(p.get("fallback", ())), models))
        self._by_id = {p.id: p for p in self._providers}
        self._memo: dict[tuple[str, str | None], TableModel | None] = {}

    @property
    def version(self) -> str:
        return str(self.source.get("version", "?"))

    @property
    def generated(self) -> str:
        return str(self.source.get("generated", "?"))

    def credit(self) -> str:
        """One line naming where the prices come from."""
        s = self.source
        return (f"{s.get('package', 'genai-prices')} {self.version} ({s.get('license', '?')}, "
                f"{s.get('url', '')}), prices of {self.generated}")

    def __len__(self) -> int:
        return sum(len(p.models) for p in self._providers)

    @property
    def provider_ids(self) -> list[str]:
        return [p.id for p in self._providers]

    def find_provider(self, provider_id: str) -> _Provider | None:
        pid = provider_id.lower().strip()
        if pid in self._by_id:
            return self._by_id[pid]
        for p in self._providers:
            if p.provider_match is not None and p.provider_match(pid):
                return p
        return None

    def find(self, model_ref: str, provider_id: str | None = None) -> TableModel | None:
        """The model genai-prices' ``calc_price(model_ref=..., provider_id=...)`` would use."""
        key = (model_ref, provider_id)
        if key in self._memo:
            return self._memo[key]
        found = self._find(model_ref.lower(), provider_id)
        self._memo[key] = found
        return found

    def _find(self, ref: str, provider_id: str | None) -> TableModel | None:
        if provider_id and provider_id.lower() == "litellm" and "/" in ref:
            actual, rest = ref.split("/", 1)
            if actual and self.find_provider(actual) is not None:
                provider_id, ref = actual, rest
        prov: _Provider | None = None
        if provider_id is not None:
            prov = self.find_provider(provider_id)
            if prov is None and provider_id.lower() != "litellm":
                return None
        if prov is None:
            prov = next((p for p in self._providers
                         if p.model_match is not None and p.model_match(ref)), None)
        if prov is None:
            return None
        found = self._in_provider(prov, ref)
        if found is None:
            dashed = _dashed_date(ref)
            if dashed != ref:
                found = self._in_provider(prov, dashed)
        return found

    def _in_provider(self, prov: _Provider, ref: str) -> TableModel | None:
        found = prov.match_model(ref)
        if found is None:
            for fid in prov.fallback:
                fb = self._by_id.get(fid)
                if fb is not None and (found := fb.match_model(ref)) is not None:
                    break
        return found

    def lookup(self, model: str) -> TableModel | None:
        """A host's model name (``provider/model`` or bare) to a table model, or ``None``."""
        for ref, prov in candidates(model):
            found = self.find(ref, prov)
            if found is not None:
                return found
        return None


def candidates(model: str) -> list[tuple[str, str | None]]:
    """(model_ref, provider_id) pairs to try for a host's model name, in order.

    ``anthropic/claude-sonnet-4-5`` -> the ``anthropic`` provider, then any provider;
    the whole name is tried last (ids such as ``accounts/fireworks/models/...``).
    """
    if "/" not in model:
        return [(model, None)]
    provider, _, ref = model.partition("/")
    out: list[tuple[str, str | None]] = [(ref, provider), (ref, None), (model, None)]
    return [c for i, c in enumerate(out) if c[0] and c not in out[:i]]


_lock = threading.Lock()
_table: PriceTable | None = None
_load_failed = False


def load_table() -> PriceTable | None:
    """The bundled table, parsed on first call; ``None`` when it is missing or unreadable."""
    global _table, _load_failed
    if _table is not None or _load_failed:
        return _table
    with _lock:
        if _table is None and not _load_failed:
            try:
                from importlib import resources  # (only when the table is first needed)

                raw = (resources.files("token_optimizer") / "data" / TABLE_FILE).read_bytes()
                _table = PriceTable(orjson.loads(raw))
            except (OSError, ValueError, KeyError, TypeError):
                import logging

                logging.getLogger("token_optimizer").warning(
                    "bundled price table %s unreadable; skipping it", TABLE_FILE, exc_info=True)
                _load_failed = True
    return _table
