"""Model-name normalisation, rate cards and cost calculation (analysis.md section 4).

Rates are stored per token (the published USD-per-million figure divided by
``1e6``, exactly as the reference computes them), so a cost is a plain dot
product of a token vector with a rate card. The numbers produced here are part
of the compatibility contract: session costs written by this package and by
the TypeScript plugin must agree.

Differences from the reference (see COMPAT.md):

* :func:`get_pricing` memoises per OpenClaw directory instead of letting the
  first caller's directory decide for the whole process.
* :func:`load_pricing_tier` re-reads the tier file only when its size or
  modification time changed (the reference reads it on every cost).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from token_optimizer import settings
from token_optimizer.jsutil import js_round, js_trim, loads, now_ms, parse_iso_ms

log = logging.getLogger("token_optimizer")

# ---------------------------------------------------------------- rate cards


@dataclass(frozen=True)
class ModelPricing:
    """Per-token USD rates of one model. ``cache_write`` is the 5-minute TTL write."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    cache_write_1h: float | None = None


def _card(i: float, o: float, cr: float, cw: float, cw1h: float | None = None) -> ModelPricing:
    # Divide exactly like the reference (X / 1e6) so the stored floats are identical.
    return ModelPricing(i / 1e6, o / 1e6, cr / 1e6, cw / 1e6, None if cw1h is None else cw1h / 1e6)


SONNET_STANDARD = _card(3.0, 15.0, 0.3, 3.75, 6.0)
SONNET_INTRO = _card(2.0, 10.0, 0.2, 2.5, 4.0)

DEFAULT_PRICING: dict[str, ModelPricing] = {
    "fable": _card(10.0, 50.0, 1.0, 12.5, 20.0),
    "opus": _card(5.0, 25.0, 0.5, 6.25, 10.0),
    "sonnet": SONNET_STANDARD,
    "haiku": _card(1.0, 5.0, 0.1, 1.25, 2.0),
    "gpt-5.6-sol": _card(5.0, 30.0, 0.50, 6.25),
    "gpt-5.6-terra": _card(2.0, 12.0, 0.20, 2.50),
    "gpt-5.6-luna": _card(0.20, 1.20, 0.02, 0.25),
    "gpt-5.5-pro": _card(30.0, 180.0, 30.0, 0),
    "gpt-5.5": _card(5.0, 30.0, 0.50, 0),
    "gpt-5.4": _card(2.5, 15.0, 0.25, 0),
    "gpt-5.4-mini": _card(0.75, 4.5, 0.075, 0),
    "gpt-5.4-nano": _card(0.20, 1.25, 0.02, 0),
    "gpt-5.3-codex": _card(1.75, 14.0, 0.175, 0),
    "gpt-5.2-codex": _card(1.75, 14.0, 0.175, 0),
    "gpt-5.2": _card(1.75, 14.0, 0.175, 0),
    "gpt-5.1-codex-mini": _card(0.25, 2.0, 0.025, 0),
    "gpt-5.1-codex": _card(1.25, 10.0, 0.125, 0),
    "gpt-5.1": _card(1.25, 10.0, 0.125, 0),
    "gpt-5-codex": _card(1.25, 10.0, 0.125, 0),
    "gpt-5": _card(1.25, 10.0, 0.125, 0),
    "gpt-5-mini": _card(0.25, 2.0, 0.025, 0),
    "gpt-5-nano": _card(0.05, 0.4, 0.005, 0),
    "gpt-4.1": _card(2.0, 8.0, 0.5, 0),
    "gpt-4.1-mini": _card(0.4, 1.6, 0.1, 0),
    "gpt-4.1-nano": _card(0.1, 0.4, 0.025, 0),
    "gpt-4o": _card(2.5, 10.0, 1.25, 0),
    "gpt-4o-mini": _card(0.15, 0.6, 0.075, 0),
    "o3": _card(2.0, 8.0, 0.5, 0),
    "o3-pro": _card(20.0, 80.0, 5.0, 0),
    "o3-mini": _card(1.1, 4.4, 0.55, 0),
    "o4-mini": _card(1.10, 4.40, 0.275, 0),
    "gemini-3.5-flash": _card(1.5, 9.0, 0.15, 0),
    "gemini-3.1-pro-preview": _card(2.0, 12.0, 0.20, 0),
    "gemini-3.1-flash-lite": _card(0.25, 1.5, 0.025, 0),
    "gemini-3-pro": _card(2.0, 12.0, 0.20, 0),
    "gemini-3-flash": _card(0.5, 3.0, 0.05, 0),
    "gemini-3.1-pro": _card(2.0, 12.0, 0.20, 0),
    "gemini-2.5-pro": _card(1.25, 10.0, 0.125, 0),
    "gemini-2.5-flash": _card(0.3, 2.5, 0.03, 0),
    "gemini-2.5-flash-lite": _card(0.1, 0.4, 0.01, 0),
    "gemini-2.0-flash": _card(0.1, 0.4, 0, 0),
    "gemini-2.0-flash-lite": _card(0.075, 0.3, 0, 0),
    "gemini-flash-lite": _card(0.1, 0.4, 0, 0),
    "deepseek-v3": _card(0.28, 0.42, 0.028, 0),
    "deepseek-r1": _card(0.55, 2.19, 0, 0),
    "qwen3": _card(0.30, 1.20, 0, 0),
    "qwen3-mini": _card(0.08, 0.32, 0, 0),
    "qwen-coder": _card(0.15, 0.60, 0, 0),
    "kimi-k2.5": _card(0.50, 2.00, 0, 0),
    "minimax-2": _card(0.30, 1.10, 0, 0),
    "glm-4.7": _card(0.48, 0.96, 0, 0),
    "glm-4.7-flash": _card(0.04, 0.04, 0, 0),
    "mimo-flash": _card(0.20, 0.40, 0, 0),
    "mistral-large": _card(0.5, 1.5, 0, 0),
    "mistral-small": _card(0.10, 0.30, 0, 0),
    "grok-4": _card(3.0, 15.0, 0, 0),
    "local": _card(0, 0, 0, 0),
}
"""USD per token by normalised model name (insertion order as in the reference)."""

OPENAI_LONG_CONTEXT_INPUT_THRESHOLD = 272_000

LONG_CONTEXT_PRICING: dict[str, ModelPricing] = {
    "gpt-5.6-sol": _card(10.0, 45.0, 1.0, 12.50),
    "gpt-5.6-terra": _card(4.0, 18.0, 0.40, 5.0),
    "gpt-5.6-luna": _card(0.40, 1.80, 0.04, 0.50),
}
"""Whole rate cards that replace the defaults when one request's prompt exceeds the threshold."""

EXPENSIVE_MODELS = frozenset({
    "fable", "opus", "sonnet", "gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.4", "gpt-5.2", "gpt-5",
    "gpt-4.1", "gpt-4o", "o3", "o3-pro", "gemini-3-pro", "gemini-2.5-pro", "grok-4",
})

PRICING_TIER_LABELS: dict[str, str] = {
    "anthropic": "Anthropic API (direct)",
    "vertex-global": "Google Vertex AI (global)",
    "vertex-regional": "Google Vertex AI (regional, +10%)",
    "bedrock": "AWS Bedrock",
}
DEFAULT_TIER = "anthropic"
_REGIONAL_SURCHARGED = frozenset({"fable", "opus", "sonnet", "haiku"})

SONNET_INTRO_END_MS = parse_iso_ms("2026-09-01T00:00:00Z")
PRICING_AS_OF_ENV: str = settings.PRICING_AS_OF.env or ""

# ---------------------------------------------------------------- normalisation

_NORMALIZE_CACHE_SIZE = 4096
_GATEWAY_PREFIXES = frozenset({
    "anthropic", "openai", "google", "gemini", "vertex", "bedrock", "openrouter", "gateway",
    "litellm", "azure", "aws",
})
_HAS_LETTER = re.compile(r"[a-z]")
_JS_SPACE_CLASS = "[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff_]+"
_DASHABLE = re.compile(_JS_SPACE_CLASS)


def _strip_provider(v: str) -> str:
    """Peel routing prefixes such as ``openrouter/openai/`` or ``openai:``."""
    while True:
        slash = v.find("/")
        colon = v.find(":")
        if slash < 0 and colon < 0:
            return v
        if slash < 0:
            cut = colon
        elif colon < 0:
            cut = slash
        else:
            cut = min(slash, colon)
        prefix, rest = v[:cut], v[cut + 1:]
        if not rest or not _HAS_LETTER.search(rest):
            return v
        if v[cut] == "/" or prefix in _GATEWAY_PREFIXES:
            v = rest
            continue
        return v


def _classify(m: str) -> str:
    """The ordered substring rules of analysis.md section 4.1 (first match wins)."""
    has = m.__contains__
    if has("fable"):
        return "fable"
    if has("opus"):
        return "opus"
    if has("sonnet"):
        return "sonnet"
    if has("haiku"):
        return "haiku"
    if has("gpt-5.6"):
        if has("terra"):
            return "gpt-5.6-terra"
        if has("luna"):
            return "gpt-5.6-luna"
        return "gpt-5.6-sol"
    if has("gpt-5.5-pro"):
        return "gpt-5.5-pro"
    if has("gpt-5.5"):
        return "gpt-5.5"
    if has("gpt-5.4"):
        if has("nano"):
            return "gpt-5.4-nano"
        if has("mini"):
            return "gpt-5.4-mini"
        return "gpt-5.4"
    if has("gpt-5.3") and has("codex"):
        return "gpt-5.3-codex"
    if has("gpt-5.2"):
        return "gpt-5.2-codex" if has("codex") else "gpt-5.2"
    if has("gpt-5.1"):
        if has("codex"):
            return "gpt-5.1-codex-mini" if has("mini") else "gpt-5.1-codex"
        return "gpt-5.1"
    if has("gpt-5"):
        if has("codex"):
            return "gpt-5-codex"
        if has("nano"):
            return "gpt-5-nano"
        if has("mini"):
            return "gpt-5-mini"
        return "gpt-5"
    if has("gpt-4.1"):
        if has("nano"):
            return "gpt-4.1-nano"
        if has("mini"):
            return "gpt-4.1-mini"
        return "gpt-4.1"
    if has("gpt-4o-mini"):
        return "gpt-4o-mini"
    if has("gpt-4o"):
        return "gpt-4o"
    if has("o4-mini"):
        return "o4-mini"
    if has("o3-mini"):
        return "o3-mini"
    if has("o3-pro"):
        return "o3-pro"
    if m == "o3" or m.startswith("o3-"):
        return "o3"
    gem = has("gemini")
    if gem and has("3.5") and has("flash"):
        return "gemini-3.5-flash"
    if gem and has("3.1"):
        if has("pro") and has("preview"):
            return "gemini-3.1-pro-preview"
        if has("flash") and has("lite"):
            return "gemini-3.1-flash-lite"
        if has("pro"):
            return "gemini-3.1-pro"
    if gem and has("2.5"):
        if has("flash") and has("lite"):
            return "gemini-2.5-flash-lite"
        if has("flash"):
            return "gemini-2.5-flash"
        if has("pro"):
            return "gemini-2.5-pro"
    if has("2.0") and has("flash"):
        return "gemini-2.0-flash-lite" if has("lite") else "gemini-2.0-flash"
    if has("gemini-3"):
        if has("flash"):
            return "gemini-3-flash"
        if has("pro"):
            return "gemini-3-pro"
    if has("flash-lite") or has("flash_lite"):
        return "gemini-flash-lite"
    if has("deepseek"):
        if has("r1") or has("reasoner"):
            return "deepseek-r1"
        return "deepseek-v3"
    if has("qwen"):
        if has("coder"):
            return "qwen-coder"
        if has("qwen3") and has("mini"):
            return "qwen3-mini"
        return "qwen3"
    if has("kimi") or has("moonshot"):
        return "kimi-k2.5"
    if has("minimax"):
        return "minimax-2"
    if has("glm"):
        return "glm-4.7-flash" if has("flash") else "glm-4.7"
    if has("mimo"):
        return "mimo-flash"
    if has("mistral"):
        if has("large") or has("123"):
            return "mistral-large"
        if has("small"):
            return "mistral-small"
        return "mistral-large"
    if has("grok"):
        return "grok-4"
    if has("ollama") or has("local") or has("lmstudio"):
        return "local"
    return m


@lru_cache(maxsize=_NORMALIZE_CACHE_SIZE)
def _normalize_cached(model_id: str) -> str | None:
    if not model_id or model_id.startswith("<"):
        return None
    v = _strip_provider(js_trim(model_id).lower())
    return _classify(_DASHABLE.sub("-", v))


def normalize_model_name(model_id: str) -> str | None:
    """Map a raw model id onto a pricing key; ``None`` for empty or ``<synthetic>`` ids.

    Unknown ids come back lowercased, prefix-stripped and dashed (and unpriced).
    """
    if not isinstance(model_id, str):
        return None
    return _normalize_cached(model_id)


# ---------------------------------------------------------------- JS numbers


_DEC_LITERAL = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\Z")
_RADIX_LITERAL = re.compile(r"0([xXoObB])([0-9a-fA-F]+)\Z")


def js_to_number(v: object) -> float:
    """JavaScript ``Number(v)`` for JSON-shaped values (``nan`` when not numeric)."""
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, float):
        return v
    if isinstance(v, str):
        s = js_trim(v)
        if not s:
            return 0.0
        if _DEC_LITERAL.match(s):
            if s.endswith("Infinity"):
                return -math.inf if s.startswith("-") else math.inf
            return float(s)
        m = _RADIX_LITERAL.match(s)
        if m:
            base = {"x": 16, "o": 8, "b": 2}[m.group(1).lower()]
            try:
                return float(int(m.group(2), base))
            except ValueError:
                return math.nan
        return math.nan
    if isinstance(v, list):
        # Number([]) is 0, Number([x]) is Number(String(x)), longer arrays are NaN.
        if not v:
            return 0.0
        if len(v) == 1:
            inner = v[0]
            if inner is None:
                return 0.0
            if isinstance(inner, (list, str, int, float)) and not isinstance(inner, bool):
                return js_to_number(inner)
            return math.nan
        return math.nan
    return math.nan


# ---------------------------------------------------------------- Sonnet window

_pricing_lock = threading.Lock()


def apply_sonnet_intro_pricing(as_of: float | None = None) -> bool:
    """Choose the Sonnet card for the clock in force; True when the intro card applies.

    ``as_of`` (epoch ms) wins, then ``TOKEN_OPTIMIZER_PRICING_AS_OF``
    (``YYYY-MM-DD``, read as UTC midnight), then the wall clock. Idempotent.
    """
    if as_of is not None:
        now = float(as_of)
    else:
        day = settings.env_value(settings.PRICING_AS_OF)  # a bad date warns: the clock decides
        now = parse_iso_ms(day + "T00:00:00Z") if day is not None else float(now_ms())
    intro = math.isfinite(now) and now < SONNET_INTRO_END_MS
    with _pricing_lock:
        DEFAULT_PRICING["sonnet"] = replace(SONNET_INTRO if intro else SONNET_STANDARD)
        _merged.clear()
    return intro


# ---------------------------------------------------------------- user overrides

_merged: dict[str, dict[str, ModelPricing]] = {}
_MERGED_CAP = 16
_SKIPPED_KEYS = frozenset({"__proto__", "constructor", "prototype"})


def _parse_cost(v: object, fallback: float | None) -> float | None:
    if v is None:
        return fallback
    n = js_to_number(v)
    if math.isfinite(n) and n >= 0:
        return n / 1e6
    return fallback


def _js_values(v: object) -> list[Any]:
    if isinstance(v, dict):
        return list(v.values())
    if isinstance(v, list):
        return list(v)
    return []


def load_user_pricing(openclaw_dir: str | os.PathLike[str]) -> dict[str, ModelPricing]:
    """Rate overrides from ``<openclaw_dir>/openclaw.json`` (``models.providers.*.models[]``).

    Config costs are USD per million tokens; ``name`` (not ``id``) is normalised
    to find the key. Any error yields no overrides.
    """
    path = Path(openclaw_dir) / "openclaw.json"
    out: dict[str, ModelPricing] = {}
    try:
        if not path.is_file():
            return out
        config = loads(path.read_bytes())
        models = config.get("models") if isinstance(config, dict) else None
        providers = models.get("providers") if isinstance(models, dict) else None
        if not isinstance(providers, (dict, list)):
            return out
        for provider in _js_values(providers):
            entries = provider.get("models") if isinstance(provider, dict) else None
            if not isinstance(entries, list):
                continue
            for model in entries:
                if not isinstance(model, dict):
                    continue
                name = model.get("name")
                cost = model.get("cost")
                if not isinstance(name, str) or not isinstance(cost, (dict, list)):
                    continue
                key = normalize_model_name(name)
                if key is None or key in _SKIPPED_KEYS:
                    continue
                c: Mapping[str, Any] = cost if isinstance(cost, dict) else {}
                base = DEFAULT_PRICING.get(key) or ModelPricing(0.0, 0.0, 0.0, 0.0)
                inp = _parse_cost(c.get("input"), base.input)
                outp = _parse_cost(c.get("output"), base.output)
                cr = _parse_cost(c.get("cacheRead"), base.cache_read)
                cw = _parse_cost(c.get("cacheWrite"), base.cache_write)
                assert inp is not None and outp is not None and cr is not None and cw is not None
                cw1h: float | None
                if "cacheWrite1h" in c:
                    fb = base.cache_write_1h if base.cache_write_1h is not None else cw
                    cw1h = _parse_cost(c.get("cacheWrite1h"), fb)
                elif "input" in c:
                    cw1h = inp * 2
                elif "cacheWrite" in c:
                    cw1h = cw * 1.6
                else:
                    cw1h = base.cache_write_1h
                out[key] = ModelPricing(inp, outp, cr, cw, cw1h)
    except Exception as exc:
        log.debug("[token-optimizer] pricing overrides ignored (%s): %s", path, exc)
        return {}
    return out


def get_pricing(openclaw_dir: str | os.PathLike[str] | None = None) -> dict[str, ModelPricing]:
    """Default cards with ``openclaw.json`` overrides on top (memoised per directory)."""
    key = os.fspath(openclaw_dir) if openclaw_dir else ""
    cached = _merged.get(key)
    if cached is not None:
        return cached
    merged = dict(DEFAULT_PRICING)
    if key:
        merged.update(load_user_pricing(key))
    with _pricing_lock:
        if len(_merged) >= _MERGED_CAP:
            _merged.pop(next(iter(_merged)))
        _merged[key] = merged
    return merged


def reset_pricing_cache() -> None:
    """Forget merged pricing, the tier cache and the normalisation memo."""
    with _pricing_lock:
        _merged.clear()
        _tier_cache.clear()
    _normalize_cached.cache_clear()


# ---------------------------------------------------------------- tiers

_tier_cache: dict[str, tuple[tuple[int, int, int], str]] = {}


_root_memo: list[tuple[tuple[str | None, ...], str]] = []


def _tier_path(openclaw_dir: str | os.PathLike[str] | None) -> str:
    if openclaw_dir:
        return os.path.join(os.fspath(openclaw_dir), "token-optimizer", "config.json")
    # The state root depends only on these variables; resolve it once per combination.
    env = os.environ
    key = (settings.env_raw(settings.HOME, env), env.get("HOME"), env.get("USERPROFILE"))
    if _root_memo and _root_memo[0][0] == key:
        return _root_memo[0][1]
    from token_optimizer.fsutil import resolve_paths

    path = str(resolve_paths().root / "config.json")
    _root_memo[:] = [(key, path)]
    return path


def load_pricing_tier(openclaw_dir: str | os.PathLike[str] | None = None) -> str:
    """``pricingTier`` from the token-optimizer config, else ``"anthropic"``.

    Without ``openclaw_dir`` the file is ``<state root>/config.json`` (by default
    ``~/.openclaw/token-optimizer/config.json``, as in the reference).
    """
    key = _tier_path(openclaw_dir)
    try:
        st = os.stat(key)
    except OSError:
        _tier_cache.pop(key, None)
        return DEFAULT_TIER
    sig = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _tier_cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    tier = DEFAULT_TIER
    try:
        with open(key, "rb") as fh:
            data = loads(fh.read())
        value = data.get("pricingTier") if isinstance(data, dict) else None
        if isinstance(value, str) and value in PRICING_TIER_LABELS:
            tier = value
    except Exception:
        tier = DEFAULT_TIER
    if len(_tier_cache) >= _MERGED_CAP:
        _tier_cache.pop(next(iter(_tier_cache)))
    _tier_cache[key] = (sig, tier)
    return tier


def tier_multiplier(tier: str, key: str) -> float:
    """1.1 for Claude models on Vertex regional endpoints, else 1."""
    return 1.1 if tier == "vertex-regional" and key in _REGIONAL_SURCHARGED else 1.0


# ---------------------------------------------------------------- cost


class TokenVector(Protocol):
    input: int
    output: int
    cache_read: int
    cache_write: int


def resolve_pricing_key(model: str, pricing: Mapping[str, ModelPricing]) -> str:
    """The rate-table key for ``model``: itself if present, else its normalised name."""
    if model in pricing:
        return model
    n = normalize_model_name(model)
    return n if n is not None else model


def cost_for(
    inp: float,
    out: float,
    cache_read: float,
    cache_write: float,
    key: str,
    pricing: Mapping[str, ModelPricing],
    cw1h: float = 0.0,
    cw5m: float = 0.0,
    mult: float = 1.0,
) -> float:
    """Cost of one token vector under an already-resolved key (the core of :func:`calculate_cost`)."""
    base = pricing.get(key)
    if base is None:
        return 0.0
    rates = base
    if base is DEFAULT_PRICING.get(key) and inp + cache_read + cache_write > OPENAI_LONG_CONTEXT_INPUT_THRESHOLD:
        long_card = LONG_CONTEXT_PRICING.get(key)
        if long_card is not None:
            rates = long_card
    s1 = max(0.0, cw1h)
    s5 = max(0.0, cw5m)
    if s1 != 0 or s5 != 0:
        cw = max(0.0, cache_write)
        if s1 + s5 > cw:
            ratio = cw / (s1 + s5)
            s1 = s1 * ratio
            s5 = s5 * ratio
        rate1h = rates.cache_write_1h if rates.cache_write_1h is not None else rates.cache_write
        unsplit = max(0.0, cw - s1 - s5)
        cw_cost = s1 * rate1h + (s5 + unsplit) * rates.cache_write
    else:
        cw_cost = cache_write * rates.cache_write
    total = inp * rates.input + out * rates.output + cache_read * rates.cache_read + cw_cost
    return total * mult if mult != 1.0 else total


def calculate_cost(
    tokens: TokenVector,
    model: str,
    openclaw_dir: str | os.PathLike[str] | None = None,
    split: tuple[float, float] | None = None,
    *,
    tier: str | None = None,
) -> float:
    """USD for ``tokens`` on ``model`` (0 for unpriced models).

    ``split`` is ``(cache_write_1h_tokens, cache_write_5m_tokens)``; ``tier``
    skips reading the tier file when the caller already knows it.
    """
    pricing = get_pricing(openclaw_dir)
    key = resolve_pricing_key(model, pricing)
    if key not in pricing:
        return 0.0
    mult = tier_multiplier(tier if tier is not None else load_pricing_tier(openclaw_dir), key)
    s1, s5 = split if split is not None else (0.0, 0.0)
    return cost_for(tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, key,
                    pricing, s1, s5, mult)


def simulate_model_switch(
    tokens: TokenVector, current: str, target: str,
    openclaw_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """What the same tokens would cost on ``target`` (rounded like the reference)."""
    cur = calculate_cost(tokens, current, openclaw_dir)
    tgt = calculate_cost(tokens, target, openclaw_dir)
    savings = max(0.0, cur - tgt)
    pct = savings / cur * 100 if cur > 0 else 0.0
    return {
        "currentCost": js_round(cur * 1e4) / 1e4,
        "targetCost": js_round(tgt * 1e4) / 1e4,
        "savingsUsd": js_round(savings * 1e4) / 1e4,
        "savingsPct": js_round(pct * 10) / 10,
    }


apply_sonnet_intro_pricing()
