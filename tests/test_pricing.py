"""Pricing: normalisation, rate cards, long context, Sonnet window, overrides, tiers, cost."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from token_optimizer import pricing
from token_optimizer.jsutil import parse_iso_ms
from token_optimizer.models import TokenBreakdown
from token_optimizer.pricing import (
    DEFAULT_PRICING,
    EXPENSIVE_MODELS,
    calculate_cost,
    get_pricing,
    js_to_number,
    load_pricing_tier,
    normalize_model_name,
    reset_pricing_cache,
    simulate_model_switch,
)


@pytest.fixture(autouse=True)
def _fresh_pricing() -> Iterator[None]:
    reset_pricing_cache()
    yield
    pricing.apply_sonnet_intro_pricing()
    reset_pricing_cache()


def tb(i: int, o: int, cr: int, cw: int) -> TokenBreakdown:
    return TokenBreakdown(input=i, output=o, cache_read=cr, cache_write=cw)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("claude-opus-4-8", "opus"),
        ("anthropic/claude-sonnet-4-6", "sonnet"),
        ("openrouter/openai/gpt-5.6-sol-2026-07-09", "gpt-5.6-sol"),
        ("GPT-5.6 Sol Pro", "gpt-5.6-sol"),
        ("openai:gpt-5.6-terra-2026-07-09", "gpt-5.6-terra"),
        ("gpt-5.6_luna", "gpt-5.6-luna"),
        ("gpt-5.6", "gpt-5.6-sol"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("o3-2025", "o3"),
        ("o1", "o1"),
        ("grok-3", "grok-4"),
        ("mistral-medium", "mistral-large"),
        ("Qwen2.5-Coder", "qwen-coder"),
        ("deepseek-chat", "deepseek-v3"),
        ("llama3", "llama3"),
        ("ollama:llama3", "local"),
        ("gemini-1.5-pro", "gemini-1.5-pro"),
        ("codex-mini-latest", "codex-mini-latest"),
        ("unknown", "unknown"),
        # prefix-strip edge cases
        ("x/123", "x/123"),
        ("foo:bar", "foo:bar"),
        ("  Vertex:Claude-Haiku-4  ", "haiku"),
        ("bedrock/anthropic.claude-fable-5", "fable"),
        ("My Custom__Model", "my-custom-model"),
        # rule order
        ("gpt-5.5-pro-2026", "gpt-5.5-pro"),
        ("gpt-5.4-nano", "gpt-5.4-nano"),
        ("gpt-5.3", "gpt-5"),
        ("gpt-5.3-codex", "gpt-5.3-codex"),
        ("gpt-5.1-codex-mini", "gpt-5.1-codex-mini"),
        ("gpt-5-codex-mini", "gpt-5-codex"),
        ("gpt-4.1-mini", "gpt-4.1-mini"),
        ("o3-pro", "o3-pro"),
        ("o3-mini-high", "o3-mini"),
        ("gemini-3.1-flash", "gemini-3-flash"),
        ("gemini-3.1-pro-preview", "gemini-3.1-pro-preview"),
        ("gemini-2.0-flash-lite-001", "gemini-2.0-flash-lite"),
        ("vertex/2.0-flash", "gemini-2.0-flash"),
        ("some-flash-lite", "gemini-flash-lite"),
        ("deepseek-reasoner", "deepseek-r1"),
        ("qwen3-mini", "qwen3-mini"),
        ("qwen-3-max", "qwen3"),
        ("moonshot-v1", "kimi-k2.5"),
        ("glm-4.7-flash", "glm-4.7-flash"),
        ("mistral-small-3", "mistral-small"),
        ("lmstudio-community/whatever", "whatever"),
        ("my-local-model", "local"),
    ],
)
def test_normalize_model_name(raw: str, expected: str) -> None:
    assert normalize_model_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "<synthetic>", "<anything"])
def test_normalize_rejects_empty_and_synthetic(raw: str) -> None:
    assert normalize_model_name(raw) is None


# ---------------------------------------------------------------- rate table


def test_default_pricing_table_shape() -> None:
    assert len(DEFAULT_PRICING) == 57
    keys = list(DEFAULT_PRICING)
    assert keys[:4] == ["fable", "opus", "sonnet", "haiku"]
    assert keys[-1] == "local"
    assert DEFAULT_PRICING["opus"].cache_write_1h == 10.0 / 1e6
    assert DEFAULT_PRICING["gpt-5.4"].cache_write_1h is None
    assert len(EXPENSIVE_MODELS) == 15 and "haiku" not in EXPENSIVE_MODELS


@pytest.mark.parametrize(
    ("key", "inp", "cached", "cw", "out"),
    [("gpt-5.6-sol", 5.0, 0.50, 6.25, 30.0), ("gpt-5.6-terra", 2.0, 0.20, 2.50, 12.0),
     ("gpt-5.6-luna", 0.20, 0.02, 0.25, 1.20)],
)
def test_gpt56_rates(key: str, inp: float, cached: float, cw: float, out: float) -> None:
    card = DEFAULT_PRICING[key]
    assert card.input * 1e6 == pytest.approx(inp)
    assert card.cache_read * 1e6 == pytest.approx(cached)
    assert card.cache_write * 1e6 == pytest.approx(cw)
    assert card.output * 1e6 == pytest.approx(out)
    # stored exactly as the reference computes them (X / 1e6)
    assert card.input == inp / 1e6


@pytest.mark.parametrize(
    ("model", "n", "expected"),
    [("gpt-5.6-sol", 50_000, 2.0875), ("gpt-5.6-terra", 50_000, 0.8350),
     ("gpt-5.6-luna", 50_000, 0.0835), ("gpt-5.6-sol", 1_000_000, 68.50),
     ("gpt-5.6-terra", 1_000_000, 27.40), ("gpt-5.6-luna", 1_000_000, 2.74)],
)
def test_gpt56_costs_incl_long_context(tmp_path: Path, model: str, n: int, expected: float) -> None:
    oc = tmp_path / "token-optimizer-gpt56-no-config"
    assert calculate_cost(tb(n, n, n, n), model, oc) == pytest.approx(expected, abs=1e-9)


def test_long_context_threshold_is_strict(tmp_path: Path) -> None:
    sol = DEFAULT_PRICING["gpt-5.6-sol"]
    at = calculate_cost(tb(272_000, 0, 0, 0), "gpt-5.6-sol")
    assert at == 272_000 * sol.input
    above = calculate_cost(tb(272_001, 0, 0, 0), "gpt-5.6-sol")
    assert above == 272_001 * (10.0 / 1e6)
    # the threshold counts input + cache read + cache write, not output
    assert calculate_cost(tb(100_000, 500_000, 100_000, 72_001), "gpt-5.6-sol") == pytest.approx(
        100_000 * 10e-6 + 500_000 * 45e-6 + 100_000 * 1e-6 + 72_001 * 12.5e-6)
    assert calculate_cost(tb(100_000, 500_000, 100_000, 72_000), "gpt-5.6-sol") == pytest.approx(
        100_000 * 5e-6 + 500_000 * 30e-6 + 100_000 * 0.5e-6 + 72_000 * 6.25e-6)


def test_opus_cost_vectors() -> None:
    t = tb(100_000, 10_000, 200_000, 50_000)
    assert calculate_cost(t, "opus") == pytest.approx(1.1625)
    assert calculate_cost(t, "opus", split=(30_000, 10_000)) == pytest.approx(1.275)
    # a split larger than the write total is scaled down to it
    assert calculate_cost(t, "opus", split=(100_000, 0)) == pytest.approx(1.35)
    assert calculate_cost(t, "llama3") == 0
    assert calculate_cost(t, "claude-opus-4-8") == calculate_cost(t, "opus")


def test_split_uses_5m_rate_without_1h_card() -> None:
    t = tb(0, 0, 0, 100_000)
    assert calculate_cost(t, "gpt-5.6-sol", split=(40_000, 0)) == pytest.approx(0.625)


def test_simulate_model_switch() -> None:
    out = simulate_model_switch(tb(100_000, 10_000, 200_000, 50_000), "opus", "haiku")
    assert out == {"currentCost": 1.1625, "targetCost": 0.2325, "savingsUsd": 0.93, "savingsPct": 80}


# ---------------------------------------------------------------- Sonnet window


def test_sonnet_intro_window_boundaries() -> None:
    assert pricing.apply_sonnet_intro_pricing(parse_iso_ms("2026-08-31T23:59:59Z")) is True
    assert DEFAULT_PRICING["sonnet"].input == 2.0 / 1e6
    assert DEFAULT_PRICING["sonnet"].cache_write_1h == 4.0 / 1e6
    assert calculate_cost(tb(1_000_000, 0, 0, 0), "sonnet") == pytest.approx(2.0)
    assert pricing.apply_sonnet_intro_pricing(parse_iso_ms("2026-09-01T00:00:00Z")) is False
    assert DEFAULT_PRICING["sonnet"].input == 3.0 / 1e6
    assert calculate_cost(tb(1_000_000, 0, 0, 0), "sonnet") == pytest.approx(3.0)


def test_sonnet_window_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_PRICING_AS_OF", "2026-08-15")
    assert pricing.apply_sonnet_intro_pricing() is True
    monkeypatch.setenv("TOKEN_OPTIMIZER_PRICING_AS_OF", "not-a-date")
    assert pricing.apply_sonnet_intro_pricing() is False
    monkeypatch.delenv("TOKEN_OPTIMIZER_PRICING_AS_OF")
    # the wall clock of this test suite is after the window; still standard then
    now_intro = pricing.apply_sonnet_intro_pricing()
    assert now_intro == (pricing.now_ms() < pricing.SONNET_INTRO_END_MS)


# ---------------------------------------------------------------- overrides


def write_openclaw_json(oc: Path, models: list[dict[str, object]]) -> None:
    oc.mkdir(parents=True, exist_ok=True)
    cfg = {"models": {"providers": {"p1": {"models": models}}}}
    (oc / "openclaw.json").write_text(json.dumps(cfg))


def test_user_overrides(tmp_path: Path) -> None:
    oc = tmp_path / "oc"
    write_openclaw_json(oc, [
        {"name": "My Llama 3", "id": "ignored", "cost": {"input": 1, "output": 2}},
        {"name": "claude-opus-4-8", "cost": {"cacheWrite": 10}},
        {"name": "gpt-5.6-sol", "cost": {"output": 40}},
        {"name": "haiku", "cost": {"cacheWrite1h": None, "input": -1}},
        {"id": "no-name", "cost": {"input": 9}},
        {"name": "sonnet-ish sonnet", "cost": {"input": "4"}},
        {"name": "claude-sonnet", "cost": {"input": 5}},  # last definition wins
    ])
    p = get_pricing(oc)
    llama = p["my-llama-3"]
    assert (llama.input, llama.output, llama.cache_read, llama.cache_write) == (1 / 1e6, 2 / 1e6, 0, 0)
    assert llama.cache_write_1h == 2 * (1 / 1e6)  # input x 2
    opus = p["opus"]
    assert opus.input == DEFAULT_PRICING["opus"].input
    assert opus.cache_write == 10 / 1e6
    assert opus.cache_write_1h == pytest.approx(10 / 1e6 * 1.6)  # cacheWrite x 1.6
    haiku = p["haiku"]
    assert haiku.input == DEFAULT_PRICING["haiku"].input  # negative falls back
    assert haiku.cache_write_1h == DEFAULT_PRICING["haiku"].cache_write_1h  # null -> base
    assert p["sonnet"].input == 5 / 1e6
    assert "no-name" not in p
    # an overridden card is no longer the default object: no long-context swap
    sol = p["gpt-5.6-sol"]
    assert calculate_cost(tb(1_000_000, 1_000_000, 0, 0), "gpt-5.6-sol", oc) == pytest.approx(
        1_000_000 * sol.input + 1_000_000 * 40 / 1e6)
    assert calculate_cost(tb(1_000_000, 0, 0, 0), "My Llama 3", oc) == pytest.approx(1.0)


def test_broken_openclaw_json_means_no_overrides(tmp_path: Path) -> None:
    oc = tmp_path / "oc"
    oc.mkdir()
    (oc / "openclaw.json").write_text("{not json")
    assert get_pricing(oc)["opus"] is DEFAULT_PRICING["opus"]


def test_pricing_memo_is_per_openclaw_dir(tmp_path: Path) -> None:
    """Deliberate difference: the reference lets the first caller's directory win."""
    oc = tmp_path / "oc"
    write_openclaw_json(oc, [{"name": "opus", "cost": {"input": 100}}])
    assert get_pricing()["opus"].input == 5 / 1e6
    assert get_pricing(oc)["opus"].input == 100 / 1e6
    assert get_pricing()["opus"].input == 5 / 1e6


# ---------------------------------------------------------------- tiers


def test_pricing_tier_regional_surcharge(tmp_path: Path) -> None:
    oc = tmp_path / "oc"
    cfg = oc / "token-optimizer" / "config.json"
    cfg.parent.mkdir(parents=True)
    t = tb(1_000_000, 0, 0, 0)
    assert load_pricing_tier(oc) == "anthropic"
    cfg.write_text(json.dumps({"pricingTier": "vertex-regional"}))
    assert load_pricing_tier(oc) == "vertex-regional"
    assert calculate_cost(t, "opus", oc) == pytest.approx(5.0 * 1.1)
    assert calculate_cost(t, "gpt-5.4", oc) == pytest.approx(2.5)
    cfg.write_text(json.dumps({"pricingTier": "moon-base"}))
    os.utime(cfg, ns=(1, 1))  # a different mtime: the cached tier must be re-read
    assert load_pricing_tier(oc) == "anthropic"
    assert calculate_cost(t, "opus", oc) == pytest.approx(5.0)


def test_pricing_tier_default_location_is_state_root(home: Path) -> None:
    root = Path(os.environ["TOKEN_OPTIMIZER_HOME"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"pricingTier": "bedrock"}))
    assert load_pricing_tier() == "bedrock"


# ---------------------------------------------------------------- JS numbers


@pytest.mark.parametrize(
    ("v", "expected"),
    [("500", 500.0), (" 12 ", 12.0), ("", 0.0), ("0x10", 16.0), ("1e3", 1000.0), (".5", 0.5),
     (True, 1.0), (None, 0.0), ([], 0.0), ([7], 7.0), (["8"], 8.0), (-3, -3.0)],
)
def test_js_to_number(v: object, expected: float) -> None:
    assert js_to_number(v) == expected


@pytest.mark.parametrize("v", ["abc", "1_000", "-0x10", [1, 2], {"a": 1}, "12px"])
def test_js_to_number_nan(v: object) -> None:
    assert math.isnan(js_to_number(v))
