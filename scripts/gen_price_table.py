#!/usr/bin/env python3
"""Generate ``token_optimizer/data/genai_prices_table.json`` from genai-prices' own data.

    python scripts/gen_price_table.py [--out PATH] [--date YYYY-MM-DD]

Needs ``genai-prices`` installed (``pip install genai-prices``; MIT, by Pydantic). It reads
``genai_prices.data.providers`` (the package's bundled, offline data) and keeps, for each
provider and model, what token pricing needs: the model's id, name and match rule (a small
JSON tree, so a model name resolves as genai-prices resolves it) and the price in force on
the generation date per million tokens for input, output, cache read and cache write
(tiered prices keep their base and tiers). Everything else is dropped, and the header says
what. The output is deterministic for the same data and date.

The conversion below reads the data by attribute only, so it also runs on stand-in objects
(the tests feed it a small fake providers list).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "token_optimizer" / "data" / "genai_prices_table.json"
FORMAT = 1
PACKAGE = "genai-prices"

# genai-prices' price keys (per million tokens), in the order of a model's "prices" list
PRICE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")

NOTES = [
    "\"prices\" is [input, output, cache_read, cache_write] in USD per million tokens, the "
    "prices in force on the generation date; null where genai-prices has no such price.",
    "A tiered price is {\"base\": p, \"tiers\": [[threshold, p], ...]}: the tier applies to all "
    "tokens of a request whose input (cache read and write included) exceeds the threshold.",
    "A null cache_read or cache_write price means those tokens cost the input price, as in "
    "genai-prices; \"prices\": null means the model has no token price (kept so names still "
    "resolve to it as in genai-prices). \"match\" trees use genai-prices' clause names.",
    "Dropped: historical and future-dated prices, request-context price variants (service "
    "tiers, batch), 1-hour cache writes, and non-token prices (per request, web search, "
    "image, audio, video, document, character prices).",
    "Time-of-day prices (off-peak discounts): the price in force for most of the day.",
]


# ---------------------------------------------------------------- conversion


def num(d: Any) -> int | float:
    """A Decimal (or number) as a JSON number: an int when integral, else the shortest float."""
    x = Decimal(str(d)) if not isinstance(d, Decimal) else d
    if x == x.to_integral_value():
        return int(x)
    return float(x)


def clause(c: Any) -> dict[str, Any]:
    """A genai-prices match clause as a JSON tree, keyed like genai-prices' own data files."""
    for attr, key in (("or_", "or"), ("and_", "and")):
        subs = getattr(c, attr, None)
        if subs is not None:
            return {key: [clause(s) for s in subs]}
    for key in ("equals", "starts_with", "ends_with", "contains", "regex"):
        v = getattr(c, key, None)
        if isinstance(v, str):
            return {key: v}
    raise ValueError(f"unknown match clause: {c!r}")


def price_value(v: Any) -> int | float | dict[str, Any]:
    tiers = getattr(v, "tiers", None)
    if tiers is not None:
        return {"base": num(v.base),
                "tiers": [[int(t.start), num(t.price)] for t in sorted(tiers, key=lambda t: t.start)]}
    return num(v)


def token_prices(model_price: Any) -> list[Any] | None:
    """[input, output, cache_read, cache_write] of one ModelPrice (``null`` where missing);
    ``None`` when it has none of them."""
    attrs: Mapping[str, Any] = vars(model_price)
    out = [None if attrs.get(k) is None else price_value(attrs[k]) for k in PRICE_KEYS]
    return out if any(v is not None for v in out) else None


def _start_date_active(constraint: Any, day: date) -> bool:
    return bool(constraint.start_date <= day)


def _time_of_day_active(constraint: Any, minute: int) -> bool:
    """Whether a TimeOfDateConstraint holds at ``minute`` past UTC midnight (as genai-prices)."""
    t = time(minute // 60, minute % 60, tzinfo=UTC)

    def utc(v: time) -> time:
        if v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return datetime.combine(date(1970, 1, 1), v).astimezone(UTC).timetz()

    start, end = utc(constraint.start_time), utc(constraint.end_time)
    if end < start:
        return t >= start or t < end
    return start <= t < end


def prices_in_force(prices: Any, day: date) -> Any:
    """The ModelPrice genai-prices uses on ``day`` (for time-of-day prices: most of the day)."""
    if not isinstance(prices, list):
        return prices  # a single ModelPrice
    if not prices:
        return None

    def pick(minute: int | None) -> int:
        # the last active conditional price wins; none active: the first one
        for i in range(len(prices) - 1, -1, -1):
            c = prices[i].constraint
            if c is None:
                return i
            if hasattr(c, "start_date"):
                if _start_date_active(c, day):
                    return i
            elif minute is not None and _time_of_day_active(c, minute):
                return i
        return 0

    if not any(p.constraint is not None and not hasattr(p.constraint, "start_date")
               for p in prices):
        return prices[pick(None)].prices
    counts: dict[int, int] = {}
    for minute in range(24 * 60):
        i = pick(minute)
        counts[i] = counts.get(i, 0) + 1
    best = max(sorted(counts), key=lambda i: counts[i])
    return prices[best].prices


def model_entry(m: Any, day: date) -> dict[str, Any]:
    mp = prices_in_force(m.prices, day)
    entry: dict[str, Any] = {"id": m.id}
    if m.name:
        entry["name"] = m.name
    entry["match"] = clause(m.match)
    entry["prices"] = token_prices(mp) if mp is not None else None
    return entry


def provider_entry(p: Any, day: date) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": p.id, "name": p.name}
    if p.model_match is not None:
        entry["model_match"] = clause(p.model_match)
    if p.provider_match is not None:
        entry["provider_match"] = clause(p.provider_match)
    if p.fallback_model_providers:
        entry["fallback"] = list(p.fallback_model_providers)
    entry["models"] = [model_entry(m, day) for m in p.models]
    return entry


def build_table(providers: Sequence[Any], source: Mapping[str, str], day: date) -> dict[str, Any]:
    """The whole table as plain JSON data. ``source`` carries package/version/license/url."""
    provs = [provider_entry(p, day) for p in providers]
    models = sum(len(p["models"]) for p in provs)
    priced = sum(1 for p in provs for m in p["models"] if m["prices"])
    header = {
        "package": source.get("package", PACKAGE),
        "version": source["version"],
        "license": source["license"],
        "url": source["url"],
        "generated": day.isoformat(),
        "generator": "scripts/gen_price_table.py",
        "format": FORMAT,
        "providers": len(provs),
        "models": models,
        "models_with_token_prices": priced,
        "notes": NOTES,
    }
    return {"source": header, "providers": provs}


def dumps(table: Mapping[str, Any]) -> str:
    """JSON text with one model per line (small, valid, and diffs well)."""

    def j(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

    lines = ["{", f'"source":{j(table["source"])},', '"providers":[']
    provs = table["providers"]
    for pi, p in enumerate(provs):
        head = {k: v for k, v in p.items() if k != "models"}
        lines.append(j(head)[:-1] + ',"models":[')
        models = p["models"]
        for mi, m in enumerate(models):
            lines.append(j(m) + ("," if mi < len(models) - 1 else ""))
        lines.append("]}" + ("," if pi < len(provs) - 1 else ""))
    lines.append("]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the real package


def package_source() -> dict[str, str]:
    """Name, version, licence and project URL from genai-prices' installed metadata."""
    from importlib.metadata import metadata

    md = metadata(PACKAGE)

    def first(field: str) -> str:
        values = md.get_all(field) or []
        return str(values[0]) if values else ""

    lic = first("License-Expression") or first("License")
    if not lic:
        for c in md.get_all("Classifier") or ():
            if c.startswith("License :: OSI Approved :: "):
                lic = c.rsplit(" :: ", 1)[1].removesuffix(" License")
    urls: dict[str, str] = {}
    for entry in md.get_all("Project-URL") or ():
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    url = urls.get("homepage") or urls.get("source") or first("Home-page")
    return {"package": PACKAGE, "version": first("Version"), "license": lic, "url": url}


def load_providers() -> Iterable[Any]:
    # genai_prices.data needs only genai_prices.types (pydantic), not the HTTP client that
    # genai_prices/__init__ pulls in for live price updates.
    from genai_prices.data import providers

    found: Iterable[Any] = providers
    return found


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    ap.add_argument("--date", type=date.fromisoformat, default=None,
                    help="price date, YYYY-MM-DD (default: today, UTC)")
    args = ap.parse_args(argv)
    try:
        providers = list(load_providers())
        source = package_source()
    except ImportError as e:
        print(f"gen_price_table: genai-prices is not installed ({e}); "
              "pip install genai-prices", file=sys.stderr)
        return 2
    day = args.date or datetime.now(UTC).date()
    text = dumps(build_table(providers, source, day))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    hdr = json.loads(text)["source"]
    print(f"wrote {args.out} ({len(text.encode()):,} bytes): {hdr['providers']} providers, "
          f"{hdr['models']} models ({hdr['models_with_token_prices']} with token prices) "
          f"from {PACKAGE} {hdr['version']} ({hdr['license']}), prices of {hdr['generated']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
