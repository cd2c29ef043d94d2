"""The bundled price table generated from genai-prices' data, its generator and its use."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from audit_stores import OpenClawStore, assistant_event, user_event

from token_optimizer.audit.money import BUNDLED_SOURCE, GENAI_SOURCE, TABLE_SOURCE, Pricer
from token_optimizer.audit.price_table import PriceTable, candidates, load_table
from token_optimizer.audit.scan import Roots, scan
from token_optimizer.pricing import get_pricing, resolve_pricing_key

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "token_optimizer" / "data" / "genai_prices_table.json"
BUNDLED_ONLY = "command-r-plus"  # Cohere: not in token_optimizer.pricing, in genai-prices


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_price_table",
                                                  ROOT / "scripts" / "gen_price_table.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_price_table"] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- a fake genai-prices data set
# Stand-ins with genai-prices' attribute names (the generator reads attributes only).


@dataclass
class Eq:
    equals: str


@dataclass
class Starts:
    starts_with: str


@dataclass
class Rx:
    regex: str


@dataclass
class Or:
    or_: list[Any]


@dataclass
class Tier:
    start: int
    price: Decimal


@dataclass
class Tiered:
    base: Decimal
    tiers: list[Tier]


def price(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**kw)  # a ModelPrice: price keys as attributes


@dataclass
class Cond:
    constraint: Any
    prices: Any


@dataclass
class Model:
    id: str
    match: Any
    name: str | None = None
    prices: Any = None
    description: str = "dropped"


@dataclass
class Prov:
    id: str
    name: str
    model_match: Any = None
    provider_match: Any = None
    fallback_model_providers: list[str] | None = None
    models: list[Model] = field(default_factory=list)
    api_pattern: str = "https://dropped"


DAY = date(2026, 6, 1)
SOURCE = {"package": "genai-prices", "version": "9.9.9", "license": "MIT",
          "url": "https://github.com/pydantic/genai-prices"}


def fake_providers() -> list[Prov]:
    d = Decimal
    return [
        Prov("acme", "Acme AI", model_match=Starts("acme-"), provider_match=Eq("acme-cloud"), models=[
            Model("acme-large", Or([Eq("acme-large"), Rx(r"^acme-large-\d{4}-\d{2}-\d{2}$")]),
                  "Acme Large", [
                      Cond(None, price(input_mtok=d("4"), output_mtok=d("20"))),
                      Cond(SimpleNamespace(start_date=date(2026, 1, 1)),
                           price(input_mtok=d("2"), output_mtok=d("10"),
                                 cache_read_mtok=d("0.2"), web_searches_kcount=d("10"))),
                      Cond(SimpleNamespace(start_date=date(2027, 1, 1)),  # future: not yet
                           price(input_mtok=d("1"), output_mtok=d("5"))),
                  ]),
            Model("acme-long", Starts("acme-long"), "Acme Long", price(
                input_mtok=Tiered(d("1.25"), [Tier(200_000, d("2.5"))]),
                output_mtok=Tiered(d("10"), [Tier(200_000, d("15"))]),
                cache_write_mtok=d("1.5"))),
            Model("acme-voice", Eq("acme-voice"), None, price(input_audio_mtok=d("3"))),
            Model("acme-cheap", Eq("acme-cheap"), "Acme Cheap", [
                Cond(None, price(input_mtok=d("0.1"), output_mtok=d("0.4"))),  # off-peak
                Cond(SimpleNamespace(start_time=time(0, 30, tzinfo=UTC),
                                     end_time=time(16, 30, tzinfo=UTC)),
                     price(input_mtok=d("0.2"), output_mtok=d("0.8"))),
            ]),
        ]),
        Prov("resell", "Reseller", provider_match=Starts("resell"),
             fallback_model_providers=["acme"],
             models=[Model("other/model", Eq("other/model"), None,
                           price(input_mtok=d("0.5"), output_mtok=d("1")))]),
    ]


def test_generator_output_is_deterministic_and_keeps_only_token_prices() -> None:
    gen = _generator()
    a = gen.dumps(gen.build_table(fake_providers(), SOURCE, DAY))
    b = gen.dumps(gen.build_table(fake_providers(), dict(SOURCE), DAY))
    assert a == b
    data = json.loads(a)
    hdr = data["source"]
    assert (hdr["package"], hdr["version"], hdr["license"]) == ("genai-prices", "9.9.9", "MIT")
    assert hdr["url"] == SOURCE["url"] and hdr["generated"] == "2026-06-01"
    assert hdr["providers"] == 2 and hdr["models"] == 5 and hdr["models_with_token_prices"] == 4
    assert any("Dropped" in n for n in hdr["notes"])
    acme, resell = data["providers"]
    assert acme["model_match"] == {"starts_with": "acme-"}
    assert acme["provider_match"] == {"equals": "acme-cloud"}
    assert resell["fallback"] == ["acme"] and "api_pattern" not in resell
    models = {m["id"]: m for m in acme["models"]}
    assert models["acme-large"]["match"] == {
        "or": [{"equals": "acme-large"}, {"regex": r"^acme-large-\d{4}-\d{2}-\d{2}$"}]}
    assert models["acme-large"]["prices"] == [2, 10, 0.2, None]  # today's, not the future one
    assert models["acme-long"]["prices"] == [{"base": 1.25, "tiers": [[200000, 2.5]]},
                                             {"base": 10, "tiers": [[200000, 15]]}, None, 1.5]
    assert models["acme-voice"]["prices"] is None and "name" not in models["acme-voice"]
    assert models["acme-cheap"]["prices"] == [0.2, 0.8, None, None]  # 16 of 24 hours
    assert "description" not in models["acme-large"]
    # a different day is a different (still deterministic) table
    old = json.loads(gen.dumps(gen.build_table(fake_providers(), SOURCE, date(2025, 6, 1))))
    assert old["providers"][0]["models"][0]["prices"] == [4, 20, None, None]
    assert a.count("\n") == 2 + 2 + 5 + 2 + 2  # one model per line


def test_generated_table_resolves_and_prices_like_genai_prices() -> None:
    gen = _generator()
    t = PriceTable(json.loads(gen.dumps(gen.build_table(fake_providers(), SOURCE, DAY))))
    large = t.lookup("acme-large-2026-01-15")
    assert large is not None and large.id == "acme-large" and large.name == "Acme Large"
    assert t.lookup("acme-large-20260115") is large  # compact date rewritten, as genai-prices
    assert t.lookup("ACME-cloud/acme-large") is large  # provider by provider_match
    assert t.lookup("resell/acme-long") is not None  # through the fallback provider
    assert t.find("acme-long", "resell") is t.find("acme-long")
    assert t.lookup("resell/other/model") is not None and t.lookup("other/model") is None
    assert t.find("acme-large", "no-such-provider") is None
    voice = t.lookup("acme-voice")
    assert voice is not None and not voice.priced
    # cache read at its own price; no cache-write price: the input price
    assert large.cost(1e6, 1e6, 1e6, 1e6) == pytest.approx(2 + 10 + 0.2 + 2)
    long = t.lookup("acme-long-preview")
    assert long is not None and long.tiered
    assert long.cost(100_000, 1000, 0, 0) == pytest.approx((100_000 * 1.25 + 1000 * 10) / 1e6)
    # over the threshold (cache included) every token pays the tier price
    assert long.cost(150_000, 1000, 0, 60_000) == pytest.approx(
        (150_000 * 2.5 + 1000 * 15 + 60_000 * 1.5) / 1e6)
    assert long.cost(150_000, 1000, 0, 60_000, per_call=False) == pytest.approx(
        (150_000 * 1.25 + 1000 * 10 + 60_000 * 1.5) / 1e6)


def test_candidates_for_host_model_names() -> None:
    assert candidates("gpt-4o") == [("gpt-4o", None)]
    assert candidates("anthropic/claude-sonnet-4-5") == [
        ("claude-sonnet-4-5", "anthropic"), ("claude-sonnet-4-5", None),
        ("anthropic/claude-sonnet-4-5", None)]


# ---------------------------------------------------------------- the shipped table


def test_shipped_table_loads_and_credits_genai_prices() -> None:
    assert TABLE.stat().st_size < 500_000  # compact: a few hundred KB
    t = load_table()
    assert t is not None and t is load_table()
    src = t.source
    assert src["package"] == "genai-prices" and src["license"] == "MIT"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", src["version"])
    assert src["url"] == "https://github.com/pydantic/genai-prices"
    assert date.fromisoformat(src["generated"]) >= date(2025, 1, 1)
    assert src["generator"] == "scripts/gen_price_table.py"
    assert "genai-prices" in t.credit() and src["version"] in t.credit()
    assert len(t) == src["models"] > 1000
    assert {"anthropic", "openai", "google", "aws", "openrouter"} <= set(t.provider_ids)


@pytest.mark.parametrize(("model", "provider", "inp", "out"), [
    ("anthropic/claude-sonnet-4-5-20250929", "anthropic", (1, 10), (5, 40)),
    ("gpt-4o-2024-08-06", "openai", (1, 10), (5, 40)),
    ("gemini-2.5-pro", "google", (0.5, 5), (4, 30)),
])
def test_shipped_table_prices_well_known_models(model: str, provider: str,
                                                inp: tuple[float, float],
                                                out: tuple[float, float]) -> None:
    t = load_table()
    assert t is not None
    m = t.lookup(model)
    assert m is not None and m.provider == provider and m.priced
    per_m_in = m.cost(1e6 / 10, 0, 0, 0, per_call=False) * 10
    per_m_out = m.cost(0, 1e6, 0, 0)
    assert inp[0] <= per_m_in <= inp[1] and out[0] <= per_m_out <= out[1]
    assert m.cost(0, 0, 1e6, 0, per_call=False) < per_m_in  # cache reads are cheaper


def test_shipped_table_prices_long_context_requests_at_the_tier() -> None:
    t = load_table()
    assert t is not None
    m = t.lookup("gemini-2.5-pro")
    assert m is not None and m.tiered
    short, long = m.cost(100_000, 0, 0, 0), m.cost(250_000, 0, 0, 0)
    assert long > 2.5 * short  # 2.5x the tokens at a higher rate


# ---------------------------------------------------------------- in the Pricer


def test_model_only_the_bundled_table_knows_is_priced_from_it(tmp_path: Path) -> None:
    pricing = get_pricing(tmp_path)
    assert pricing.get(resolve_pricing_key(BUNDLED_ONLY, pricing)) is None
    pricer = Pricer(tmp_path, use_genai_prices=False)
    assert pricer.source(BUNDLED_ONLY) == BUNDLED_SOURCE
    t = load_table()
    assert t is not None and (m := t.lookup(BUNDLED_ONLY)) is not None
    assert pricer.price(BUNDLED_ONLY, 1000, 200, 0, 0) == pytest.approx(m.cost(1000, 200, 0, 0))
    assert pricer.price(BUNDLED_ONLY, 1000, 200, 0, 0) > 0
    # our own table still comes first for the models it knows
    assert pricer.source("claude-sonnet-4-5") == TABLE_SOURCE
    # without the bundled table (and without the library) the model is unpriced
    assert Pricer(tmp_path, use_genai_prices=False, use_bundled_table=False).source(
        BUNDLED_ONLY) is None


def test_scan_records_the_bundled_table_as_the_price_source(tmp_path: Path) -> None:
    oc = OpenClawStore(tmp_path / "openclaw")
    try:
        oc.add_session("c")
        oc.add_events("c", [user_event("hello", 1_780_000_000_000),
                            assistant_event(1_780_000_000_001, model=BUNDLED_ONLY,
                                            inp=1000, out=200)])
        res = scan(Roots(oc.root, None), tmp_path / "state",
                   pricer=Pricer(oc.root, use_genai_prices=False))
    finally:
        oc.close()
    (row,) = res.rows
    assert row.cost_basis == "table" and row.unpriced_tokens == 0 and row.cost_usd > 0
    (split,) = row.models
    assert split.price_source == BUNDLED_SOURCE
    assert split.to_json()["priceSource"] == BUNDLED_SOURCE


@pytest.mark.parametrize("use_genai", [False, True])
def test_unknown_and_non_token_models_stay_unpriced(tmp_path: Path, use_genai: bool) -> None:
    pricer = Pricer(tmp_path, use_genai_prices=use_genai)
    for model in ("totally-new-model-x", "weird/unknown-llm", "whisper-1", "unknown", ""):
        assert pricer.resolve(model) is None, model
        assert pricer.price(model, 500, 100, 0, 0) is None, model


def test_library_prices_what_the_bundled_table_does_not(tmp_path: Path) -> None:
    pytest.importorskip("genai_prices")
    pricer = Pricer(tmp_path, use_bundled_table=False)
    assert pricer.source(BUNDLED_ONLY) == GENAI_SOURCE
    assert pricer.price(BUNDLED_ONLY, 1000, 200, 0, 0) == pytest.approx(
        Pricer(tmp_path, use_genai_prices=False).price(BUNDLED_ONLY, 1000, 200, 0, 0))


def test_table_matcher_agrees_with_genai_prices_calc_price() -> None:
    """On a sample of names (every model's id, with and without its provider, dated variants
    and a few host-style names), the table resolves the same model and the same price as
    genai-prices' own ``calc_price`` on the table's generation date."""
    genai_prices = pytest.importorskip("genai_prices")
    from genai_prices.data import providers

    t = load_table()
    assert t is not None
    if genai_prices.__version__ != t.version:
        pytest.skip(f"table from genai-prices {t.version}, {genai_prices.__version__} installed")
    when = datetime.combine(date.fromisoformat(t.generated), time(12, tzinfo=UTC))
    sample: list[tuple[str, str | None]] = [
        ("claude-sonnet-4-5-20250929", "anthropic"), ("gpt-4o-2024-08-06", None),
        ("gpt-5.2-20251211", "openai"), ("gemini-2.5-flash", "google-gemini-cli"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "amazon-bedrock"),
        ("anthropic/claude-3.5-sonnet", "openrouter"), ("deepseek-chat", None),
        ("claude-3-5-haiku-20241022", "azure"), ("openai/gpt-4o", "litellm"),
    ]
    for p in providers:
        for m in p.models[::7]:
            sample += [(m.id, p.id), (m.id, None), (m.id.upper() + "-20250101", p.id)]
    checked = 0
    for ref, prov in sample:
        inp, out, cr, cw = 250_000, 800, 30_000, 2_000  # over most long-context thresholds
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                calc = genai_prices.calc_price(
                    genai_prices.Usage(input_tokens=inp + cr + cw, output_tokens=out,
                                       cache_read_tokens=cr, cache_write_tokens=cw),
                    model_ref=ref, provider_id=prov, genai_request_timestamp=when)
            except (LookupError, ValueError):
                calc = None
        mine = t.find(ref, prov)
        if calc is None:
            assert mine is None or not mine.priced, (ref, prov)
            continue
        assert mine is not None, (ref, prov)
        assert mine.id == calc.model.id, (ref, prov)
        if getattr(calc.model_price, "requests_kcount", None) is not None:
            continue  # a per-request fee: dropped from the table by design
        if not mine.priced:
            assert calc.total_price == 0, (ref, prov)
            continue
        assert mine.cost(inp, out, cr, cw) == pytest.approx(float(calc.total_price),
                                                             rel=1e-9, abs=1e-12), (ref, prov)
        checked += 1
    assert checked > 300
