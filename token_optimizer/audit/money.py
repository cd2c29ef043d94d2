"""Money for the audit: the host's own figure first, then a price table, never a silent $0.

Order of precedence for one call (or one Hermes usage bucket):

1. **Recorded**: what the host says the call cost. OpenClaw writes
   ``usage.cost.total`` into each assistant message; as the host itself does,
   a total of 0 with every component 0 and no ``totalOrigin: provider-billed``
   is an adapter default, not a price, and is not taken as one. Hermes writes
   ``actual_cost_usd``.
2. **Estimated**: the host's own estimate (Hermes ``estimated_cost_usd`` when
   its ``cost_status``/``cost_source`` says it priced the bucket);
   ``cost_status = 'included'`` is a real, explained $0 (a plan covers it).
3. **Table**: this package's rate table (:mod:`token_optimizer.pricing`, the
   reference's cards plus the user's ``openclaw.json`` overrides), then, when
   the optional ``genai-prices`` package is installed (``pip install
   'token-optimizer[prices]'``), its offline data for models our table lacks.
4. **Unpriced**: none of the above. The tokens are counted as
   ``unpriced_tokens`` and the model listed in ``unpriced_models``; the dollar
   total then says "at least", it never pretends the tokens were free.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from token_optimizer.audit.model import CostBasis, ModelSplit, SessionRow
from token_optimizer.pricing import ModelPricing, cost_for, get_pricing, resolve_pricing_key

log = logging.getLogger("token_optimizer")

TABLE_SOURCE = "token-optimizer"
GENAI_SOURCE = "genai-prices"


def recorded_cost(usage: dict[str, Any]) -> float | None:
    """OpenClaw ``usage.cost.total`` when it is real price evidence, else ``None``."""
    cost = usage.get("cost")
    if not isinstance(cost, dict):
        return None
    total = cost.get("total")
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        return None
    total = float(total)
    if not math.isfinite(total) or total < 0:
        return None
    if total > 0 or cost.get("totalOrigin") == "provider-billed":
        return total
    for k in ("input", "output", "cacheRead", "cacheWrite"):
        v = cost.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0:
            return total
    return None


class _GenaiCard:
    """A genai-prices model reference (priced through the library on demand)."""

    __slots__ = ("model_ref", "provider")

    def __init__(self, model_ref: str, provider: str | None) -> None:
        self.model_ref = model_ref
        self.provider = provider


class Pricer:
    """Resolves a model id to a rate card once and prices token vectors with it."""

    def __init__(self, openclaw_dir: str | os.PathLike[str] | None = None, *,
                 use_genai_prices: bool = True) -> None:
        self._dir = os.fspath(openclaw_dir) if openclaw_dir else None
        self._pricing = get_pricing(openclaw_dir)
        self._cards: dict[str, tuple[str, ModelPricing | _GenaiCard] | None] = {}
        self._keys: dict[str, str] = {}
        self._use_genai = use_genai_prices
        self._genai_loaded = False
        self._genai_mod: Any = None

    @property
    def _genai(self) -> Any:
        """The optional ``genai_prices`` module, imported on first need (it is large)."""
        if not self._genai_loaded:
            self._genai_loaded = True
            if self._use_genai:
                try:
                    import genai_prices  # optional extra [prices]

                    self._genai_mod = genai_prices
                except ImportError:
                    self._genai_mod = None
        return self._genai_mod

    def fingerprint(self) -> list[Any]:
        """What this pricer's figures depend on, found cheaply (no import, no parse): the
        package version, the ``openclaw.json`` holding rate overrides (size, mtime) and
        whether ``genai_prices`` is installed. Figures cached under another fingerprint
        are computed again."""
        from importlib.util import find_spec

        from token_optimizer import __version__

        cfg: list[int] | None = None
        if self._dir:
            try:
                st = os.stat(os.path.join(self._dir, "openclaw.json"))
                cfg = [st.st_size, st.st_mtime_ns]
            except OSError:
                cfg = None
        genai = bool(self._use_genai and find_spec("genai_prices") is not None)
        return [__version__, self._dir, cfg, genai]

    @property
    def has_genai_prices(self) -> bool:
        return self._genai is not None

    def resolve(self, model: str) -> tuple[str, ModelPricing | _GenaiCard] | None:
        """(price source, card) for ``model``; ``None`` when nothing prices it."""
        if model in self._cards:
            return self._cards[model]
        found: tuple[str, ModelPricing | _GenaiCard] | None = None
        if model and model != "unknown" and not model.startswith("<"):
            key = resolve_pricing_key(model, self._pricing)
            card = self._pricing.get(key)
            if card is not None:
                found = (TABLE_SOURCE, card)
            elif self._genai is not None:
                found = self._genai_resolve(model)
        self._cards[model] = found
        return found

    def _genai_resolve(self, model: str) -> tuple[str, _GenaiCard] | None:
        provider: str | None = None
        ref = model
        if "/" in model:
            provider, _, ref = model.partition("/")
        for prov in ((provider, None) if provider else (None,)):
            try:
                self._genai.calc_price(self._genai.Usage(input_tokens=1, output_tokens=1),
                                       model_ref=ref, provider_id=prov)
            except Exception:  # LookupError and friends: the library does not know it
                continue
            return (GENAI_SOURCE, _GenaiCard(ref, prov))
        return None

    def price(self, model: str, inp: float, out: float, cache_read: float, cache_write: float,
              *, per_call: bool = True) -> float | None:
        """USD for one token vector on ``model``; ``None`` when unpriced.

        ``per_call`` marks the vector as one request, so the long-context
        surcharge threshold applies; aggregates (Hermes buckets) are priced at
        the base card.
        """
        found = self.resolve(model)
        if found is None:
            return None
        _, card = found
        if isinstance(card, _GenaiCard):
            try:
                calc = self._genai.calc_price(
                    self._genai.Usage(input_tokens=int(inp + cache_read + cache_write),
                                      output_tokens=int(out), cache_read_tokens=int(cache_read),
                                      cache_write_tokens=int(cache_write)),
                    model_ref=card.model_ref, provider_id=card.provider)
                return float(calc.total_price)
            except Exception:
                return None
        if per_call:
            # cost_for applies the long-context card when the request is large enough
            key = self._keys.get(model)
            if key is None:
                key = self._keys[model] = resolve_pricing_key(model, self._pricing)
            return cost_for(inp, out, cache_read, cache_write, key, self._pricing)
        return (inp * card.input + out * card.output + cache_read * card.cache_read
                + cache_write * card.cache_write)

    def source(self, model: str) -> str | None:
        found = self.resolve(model)
        return found[0] if found else None


_BASIS_ORDER: tuple[CostBasis, ...] = ("recorded", "estimated", "table", "included")


def split_basis(split: ModelSplit, priced_by: Iterable[CostBasis] = ()) -> CostBasis:
    """The basis of one model split: the source of most of its dollars.

    ``priced_by`` names the bases that priced some of its tokens (so a split
    whose only priced tokens cost $0, e.g. a zero-rate local model or a Hermes
    ``included`` bucket, still gets a basis that explains the $0).
    """
    if split.tokens.total == 0 and split.cost_usd == 0:
        return "included" if "included" in set(priced_by) else "none"
    if split.unpriced_tokens >= split.tokens.total and split.cost_usd == 0:
        return "unpriced"
    dollars = {"recorded": split.recorded_usd, "estimated": split.estimated_usd,
               "table": split.table_usd}
    best = max(dollars.items(), key=lambda kv: kv[1])
    if best[1] > 0:
        return best[0]  # type: ignore[return-value]
    used = set(priced_by)
    for b in _BASIS_ORDER:
        if b in used:
            return b
    return "unpriced" if split.unpriced_tokens else "table"


def finish_session(row: SessionRow, splits: Iterable[ModelSplit]) -> SessionRow:
    """Fill the session's money, token totals and dominant model from its model splits.

    The session's basis is the basis of most of its dollars; with no dollars,
    the basis of most of its tokens; ``unpriced`` when no token was priced.
    """
    ms = sorted(splits, key=lambda s: (-s.tokens.total, s.model))
    row.models = ms
    row.tokens.input = row.tokens.output = row.tokens.cache_read = row.tokens.cache_write = 0
    dollars: dict[CostBasis, float] = {}
    tokens: dict[CostBasis, int] = {}
    for s in ms:
        row.tokens.add(s.tokens)
        dollars[s.basis] = dollars.get(s.basis, 0.0) + s.cost_usd
        tokens[s.basis] = tokens.get(s.basis, 0) + s.tokens.total
    row.cost_usd = sum(s.cost_usd for s in ms)
    row.unpriced_tokens = sum(s.unpriced_tokens for s in ms)
    row.unpriced_models = sorted({s.model for s in ms if s.unpriced_tokens > 0})
    if ms and ms[0].tokens.total > 0:
        row.model = ms[0].model
    if row.tokens.total == 0:
        row.cost_basis = "included" if "included" in dollars else "none"
    elif row.unpriced_tokens >= row.tokens.total:
        row.cost_basis = "unpriced"
    else:
        paid = {b: v for b, v in dollars.items() if v > 0}
        pool = paid or {b: float(v) for b, v in tokens.items() if b not in ("unpriced", "none")}
        row.cost_basis = max(pool.items(), key=lambda kv: kv[1])[0] if pool else "unpriced"
    return row
