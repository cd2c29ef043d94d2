"""``detect``, ``scan``, ``report``, ``audit`` and ``budget``: the audit commands over the hosts' real stores.

Common flags: ``--json``, ``--since/--until`` (``YYYY-MM-DD``, ``YYYYMMDD`` or
ISO) or ``--days N``, ``--agent`` (OpenClaw agent, repeatable), ``--profile``
(Hermes profile, repeatable), ``--timezone`` (IANA name; day/week/month
boundaries and date bounds), ``--openclaw-root``/``--hermes-home`` (default
``$OPENCLAW_STATE_DIR`` or ``~/.openclaw``, ``$HERMES_HOME`` or ``~/.hermes``)
and ``--no-cache``.

Money is never a silent $0: unpriced tokens and models are printed under every
table and carried in the JSON (``unpricedTokens``, ``unpricedModels``).

Exit codes: 0 ok; 1 no store found; ``audit --fail-on LEVEL`` exits
:data:`EXIT_FINDINGS` (3) when a finding of that severity or worse exists;
``budget --check`` exits :data:`EXIT_OVER_BUDGET` (4) when a limit is exceeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from token_optimizer.audit.model import SessionRow, Tokens
from token_optimizer.audit.money import Pricer
from token_optimizer.audit.scan import Roots, ScanResult, detect, has_store, scan
from token_optimizer.audit.timeutil import iso_ms, local_day, parse_bound, resolve_tz
from token_optimizer.commands import stateroot
from token_optimizer.commands.render import (
    ProgressReporter,
    fmt_bytes,
    fmt_tokens,
    fmt_usd,
    print_json,
    print_table,
)
from token_optimizer.fsutil import default_home

if TYPE_CHECKING:
    from token_optimizer.audit.budget import BudgetLimits

REPORT_KINDS = ("daily", "weekly", "monthly", "session", "model", "agent", "project")
SCAN_DEFAULT_DAYS = 30
EXIT_FINDINGS = 3
EXIT_OVER_BUDGET = 4
GROUP_ORDER = ("fix", "nudge", "keep")
GROUP_TITLES = {"fix": "Fix (a config or setup change removes it)",
                "nudge": "Nudge (habits: how sessions are run)",
                "keep": "Keep (worth knowing; no saving to take)"}
ICONS = {"critical": "!!!", "high": " !!", "medium": "  !", "low": "  ."}


# ---------------------------------------------------------------- shared




def _redact(obj: Any, home: str) -> Any:
    """Strings starting with the home directory get ``~`` instead (the reference's redaction)."""
    if not home:
        return obj
    if isinstance(obj, str):
        return "~" + obj[len(home):] if obj.startswith(home) else obj
    if isinstance(obj, list):
        return [_redact(v, home) for v in obj]
    if isinstance(obj, dict):
        return {k: _redact(v, home) for k, v in obj.items()}
    return obj


def redact_json_bytes(out: bytes, home: str) -> bytes:
    """:func:`_redact` applied to the indented JSON ``out``, without decoding it.

    orjson's indented output puts every string either after ``": "`` (a value) or first
    on its line (an array element or a key); a quote inside a string is escaped. So
    each place the encoded home follows an unescaped quote starts a string that begins
    with the home: it becomes ``"~…`` unless it is a key (``…":``).
    """
    if not home:
        return out
    needle = b'"' + orjson.dumps(home)[1:-1]
    values = b": " + needle
    done = out.replace(values, b': "~')
    if needle not in done:  # the usual case: every one was a value (or there were none)
        return done
    at = out.find(needle)
    parts: list[bytes] = []
    last = 0
    n = len(needle)
    while at >= 0:
        opens = at == 0 or (out[at - 1] != 0x5C and (
            (out[at - 1] == 0x20 and at > 1 and out[at - 2] == 0x3A) or _line_start(out, at)))
        if opens and not _is_key(out, at + 1):
            parts.append(out[last:at])
            parts.append(b'"~')
            last = at + n
        at = out.find(needle, at + n)
    parts.append(out[last:])
    return b"".join(parts)


def _line_start(buf: bytes, at: int) -> bool:
    i = at - 1
    while i >= 0 and buf[i] == 0x20:
        i -= 1
    return i < 0 or buf[i] == 0x0A or buf[i] == 0x5B  # "\n" or "[" (a top-level string)


def _is_key(buf: bytes, i: int) -> bool:
    """Whether the string whose content starts at ``i`` is followed by ``:``."""
    while True:
        j = buf.find(b'"', i)
        if j < 0:
            return False
        k = j - 1
        while buf[k] == 0x5C:
            k -= 1
        if (j - 1 - k) % 2 == 0:  # an even run of backslashes: the closing quote
            return buf[j + 1:j + 2] == b":"
        i = j + 1


def _roots(args: argparse.Namespace) -> Roots:
    d = Roots.default()
    oc = Path(args.openclaw_root).expanduser() if args.openclaw_root else d.openclaw
    hm = Path(args.hermes_home).expanduser() if args.hermes_home else d.hermes
    return Roots(oc, hm)


def _window(args: argparse.Namespace, default_days: int | None) -> tuple[float | None, float | None, dt.tzinfo]:
    tz = resolve_tz(args.timezone)
    since = parse_bound(args.since, tz, end=False) if args.since else None
    until = parse_bound(args.until, tz, end=True) if args.until else None
    days = args.days if args.days is not None else (None if (since or until) else default_days)
    if days is not None and since is None:
        since = time.time() * 1000 - max(1, min(days, 3650)) * 86_400_000
    return since, until, tz


def _scan_only(args: argparse.Namespace) -> ScanResult:
    state_root = stateroot.state_paths(args).root
    with ProgressReporter() as progress:
        return scan(_roots(args), state_root, agents=set(args.agent) if args.agent else None,
                    profiles=set(args.profile) if args.profile else None, progress=progress,
                    use_cache=not args.no_cache)


def _run_scan(args: argparse.Namespace, default_days: int | None) -> tuple[ScanResult, list[SessionRow], dt.tzinfo, dict[str, Any]]:
    since, until, tz = _window(args, default_days)
    res = _scan_only(args)
    rows = [r for r in res.rows
            if (since is None or (r.started_ms is not None and r.started_ms >= since))
            and (until is None or (r.started_ms is not None and r.started_ms <= until))]
    if args.agent and not args.profile:
        rows = [r for r in rows if r.host == "openclaw" or r.agent in args.agent]
    window = {"since": since, "until": until}
    return res, rows, tz, window


def _unpriced_summary(rows: list[SessionRow]) -> tuple[int, list[str]]:
    return (sum(r.unpriced_tokens for r in rows),
            sorted({m for r in rows for m in r.unpriced_models}))


def _print_unpriced(rows: list[SessionRow]) -> None:
    n, models = _unpriced_summary(rows)
    if n:
        print(f"Unpriced: {fmt_tokens(n)} tokens on {len(models)} model(s) with no price "
              f"({', '.join(models)}); the costs above leave them out.")


def _common(p: argparse.ArgumentParser, *, days_help: str) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--days", type=int, default=None, metavar="N", help=days_help)
    p.add_argument("--since", metavar="DATE", help="from this date (YYYY-MM-DD, YYYYMMDD or ISO)")
    p.add_argument("--until", metavar="DATE", help="up to and including this date")
    p.add_argument("--agent", action="append", metavar="ID", help="only this OpenClaw agent (repeatable)")
    p.add_argument("--profile", action="append", metavar="NAME",
                   help="only this Hermes profile ('default' is $HERMES_HOME itself; repeatable)")
    p.add_argument("--timezone", metavar="TZ", help="IANA time zone for dates (default: local)")
    p.add_argument("--openclaw-root", metavar="DIR",
                   help="OpenClaw state dir (default: $OPENCLAW_STATE_DIR or ~/.openclaw)")
    p.add_argument("--hermes-home", metavar="DIR", help="Hermes home (default: $HERMES_HOME or ~/.hermes)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the incremental cache")


# ---------------------------------------------------------------- detect


def _cmd_detect(args: argparse.Namespace) -> int:
    info = detect(_roots(args))
    oc = next((h for h in info["hosts"] if h["host"] == "openclaw"), None)
    if args.json:
        # ``found``/``path`` keep the reference's keys; ``hosts`` lists every store.
        print_json({"found": info["found"],
                     "path": oc["root"] if oc and oc["found"] else None,
                     "hosts": info["hosts"]}, compact=True)
        return 0
    for h in info["hosts"]:
        name = "OpenClaw" if h["host"] == "openclaw" else "Hermes"
        if not h["found"]:
            print(f"{name}: not found at {h['root']}")
            continue
        total = sum(int(s.get("bytes", 0)) for s in h["stores"])
        print(f"{name}: found at {h['root']} ({fmt_bytes(total)})")
        for s in h["stores"]:
            who = s.get("agent") or s.get("profile") or ""
            extra = f", {s['files']} files" if "files" in s else ""
            print(f"  {s['kind']:<17} {who:<12} {fmt_bytes(int(s['bytes'])):>9}{extra}  {s['path']}")
    return 0 if info["found"] else 1




# ---------------------------------------------------------------- scan


def _cmd_scan(args: argparse.Namespace) -> int:
    if not has_store(_roots(args)):
        print("No OpenClaw or Hermes store found (see `token-optimizer detect`).", file=sys.stderr)
        return 1
    if args.json:
        since, until, _tz = _window(args, SCAN_DEFAULT_DAYS)
        res = _scan_only(args)
        only = set(args.agent) if args.agent and not args.profile else None
        home = str(default_home())
        parts = [redact_json_bytes(p, home) for p in res.json_parts(since, until, only)]
        parts.append(b"\n")
        buf = getattr(sys.stdout, "buffer", None)
        if buf is not None:
            sys.stdout.flush()
            for p in parts:  # (tens of MB on a large store: written as they are, not joined)
                buf.write(p)
            buf.flush()
        else:  # a replaced stdout (tests' capsys): text only
            sys.stdout.write(b"".join(parts).decode())
        return 0
    _res, rows, _tz, _w = _run_scan(args, SCAN_DEFAULT_DAYS)
    span = f"the last {args.days or SCAN_DEFAULT_DAYS} days" if not (args.since or args.until) \
        else "the selected window"
    if not rows:
        print(f"No sessions found in {span}.")
        return 0
    print(f"{len(rows)} sessions scanned over {span}.")
    agents: dict[tuple[str, str], list[SessionRow]] = {}
    for r in rows:
        agents.setdefault((r.host, r.agent), []).append(r)
    table = [[f"{h}:{a}", str(len(rs)), fmt_usd(sum(r.cost_usd for r in rs)),
              fmt_tokens(sum(r.tokens.total for r in rs))] for (h, a), rs in agents.items()]
    footer = ["Total", str(len(rows)), fmt_usd(sum(r.cost_usd for r in rows)),
              fmt_tokens(sum(r.tokens.total for r in rows))]
    print_table(["Agent", "Sessions", "Cost", "Tokens"], table, right=[False, True, True, True],
                footer=footer)
    _print_unpriced(rows)
    return 0


# ---------------------------------------------------------------- report


class _Group:
    __slots__ = ("cost", "first", "last", "models", "sessions", "tokens", "unpriced",
                 "unpriced_models")

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.tokens = Tokens()
        self.cost = 0.0
        self.unpriced = 0
        self.unpriced_models: set[str] = set()
        self.models: dict[str, list[Any]] = {}
        self.first: float | None = None
        self.last: float | None = None

    def add(self, sid: str, model: str, tokens: Tokens, cost: float, unpriced: int,
            started: float | None) -> None:
        self.sessions.add(sid)
        self.tokens.add(tokens)
        self.cost += cost
        self.unpriced += unpriced
        if unpriced:
            self.unpriced_models.add(model)
        m = self.models.setdefault(model, [Tokens(), 0.0, 0])
        m[0].add(tokens)
        m[1] += cost
        m[2] += unpriced
        if started is not None:
            self.first = started if self.first is None else min(self.first, started)
            self.last = started if self.last is None else max(self.last, started)

    def to_json(self, key: str, breakdown: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "key": key, "sessions": len(self.sessions), "tokens": self.tokens.to_json(),
            "totalTokens": self.tokens.total, "costUsd": self.cost,
            "unpricedTokens": self.unpriced, "unpricedModels": sorted(self.unpriced_models),
            "models": sorted(self.models),
        }
        if breakdown:
            d["breakdown"] = [
                {"model": m, "tokens": v[0].to_json(), "totalTokens": v[0].total,
                 "costUsd": v[1], "unpricedTokens": v[2]}
                for m, v in sorted(self.models.items(), key=lambda kv: -kv[1][1])]
        return d


def _key_fn(kind: str, tz: dt.tzinfo) -> Callable[[SessionRow], str]:
    def day(r: SessionRow) -> dt.date | None:
        return local_day(r.started_ms, tz) if r.started_ms is not None else None

    if kind == "daily":
        return lambda r: (d.isoformat() if (d := day(r)) else "unknown")
    if kind == "weekly":
        return lambda r: ((d - dt.timedelta(days=d.weekday())).isoformat() if (d := day(r)) else "unknown")
    if kind == "monthly":
        return lambda r: (d.strftime("%Y-%m") if (d := day(r)) else "unknown")
    if kind == "session":
        return lambda r: f"{r.host}:{r.session_id}"
    if kind == "agent":
        return lambda r: f"{r.host}:{r.agent}"
    if kind == "project":
        return lambda r: r.project
    raise ValueError(kind)


def build_report(rows: list[SessionRow], kind: str, tz: dt.tzinfo, *, breakdown: bool) -> dict[str, Any]:
    groups: dict[str, _Group] = {}
    for r in rows:
        splits = r.models or []
        if kind == "model":
            for s in splits:
                groups.setdefault(s.model, _Group()).add(
                    f"{r.host}:{r.session_id}", s.model, s.tokens, s.cost_usd, s.unpriced_tokens,
                    r.started_ms)
            continue
        g = groups.setdefault(_key_fn(kind, tz)(r), _Group())
        for s in splits:
            g.add(f"{r.host}:{r.session_id}", s.model, s.tokens, s.cost_usd, s.unpriced_tokens,
                  r.started_ms)
        if not splits:
            g.add(f"{r.host}:{r.session_id}", r.model, Tokens(), 0.0, 0, r.started_ms)
    if kind in ("daily", "weekly", "monthly"):
        items = sorted(groups.items())
    else:
        items = sorted(groups.items(), key=lambda kv: (-kv[1].cost, -kv[1].tokens.total, kv[0]))
    total = _Group()
    for _k, g in items:
        for m, v in g.models.items():
            total.models.setdefault(m, [Tokens(), 0.0, 0])
            total.models[m][0].add(v[0])
            total.models[m][1] += v[1]
            total.models[m][2] += v[2]
        total.sessions |= g.sessions
        total.tokens.add(g.tokens)
        total.cost += g.cost
        total.unpriced += g.unpriced
        total.unpriced_models |= g.unpriced_models
    return {"type": kind, "rows": [g.to_json(k, breakdown) for k, g in items],
            "totals": total.to_json("total", breakdown)}


def _cmd_report(args: argparse.Namespace) -> int:
    _res, rows, tz, window = _run_scan(args, None)
    rep = build_report(rows, args.kind, tz, breakdown=args.breakdown)
    if args.json:
        rep["timezone"] = str(tz)
        rep["window"] = window
        print_json(_redact(rep, str(default_home())))
        return 0
    if not rep["rows"]:
        print("No sessions found.")
        return 0
    headers = [args.kind.capitalize() if args.kind not in ("daily", "weekly", "monthly") else
               {"daily": "Date", "weekly": "Week of", "monthly": "Month"}[args.kind],
               "Sessions", "Input", "Output", "Cache read", "Cache write", "Total", "Cost"]
    table: list[list[str]] = []

    def cells(key: str, d: dict[str, Any], sessions: str) -> list[str]:
        t = d["tokens"]
        if d["unpricedTokens"] and not d["costUsd"]:
            cost = "unpriced"
        else:
            cost = fmt_usd(d["costUsd"]) + ("+" if d["unpricedTokens"] else "")
        return [key, sessions, fmt_tokens(t["input"]), fmt_tokens(t["output"]),
                fmt_tokens(t["cacheRead"]), fmt_tokens(t["cacheWrite"]),
                fmt_tokens(d["totalTokens"]), cost]

    for d in rep["rows"]:
        table.append(cells(d["key"], d, str(d["sessions"])))
        if args.breakdown:
            for b in d["breakdown"]:
                table.append(cells(f"  └ {b['model']}", {**b}, ""))
    tot = rep["totals"]
    footer = cells("Total", tot, str(tot["sessions"]))
    print_table(headers, table, right=[False] + [True] * 7, footer=footer,
                title=f"Token usage, {args.kind} report ({tz})")
    _print_unpriced(rows)
    if any(r.unpriced_tokens for r in rows):
        print("A '+' after a cost means some of its tokens are unpriced.")
    return 0


# ---------------------------------------------------------------- audit


def build_audit(rows: list[SessionRow], roots: Roots, days: int | None) -> dict[str, Any]:
    from token_optimizer.audit.detectors import load_openclaw_config, run_detectors
    from token_optimizer.audit.openclaw import read_cron_commands

    res = run_detectors(rows, config=load_openclaw_config(roots.openclaw),
                        cron=read_cron_commands(roots.openclaw),
                        pricer=Pricer(roots.openclaw))
    agents: list[str] = []
    for r in sorted(rows, key=lambda r: r.started_ms or 0.0):
        if r.agent not in agents:
            agents.append(r.agent)
    by_group = {g: 0.0 for g in GROUP_ORDER}
    for f in res.findings:
        by_group[f.group] += f.counted_usd
    n_unpriced, unpriced_models = _unpriced_summary(rows)
    return {
        "scannedAt": iso_ms(time.time() * 1000),
        "daysScanned": days,
        "agentsFound": agents,
        "totalSessions": len(rows),
        "totalCostUsd": sum(r.cost_usd for r in rows),
        "totalTokens": sum(r.tokens.total for r in rows),
        "findings": [f.to_json() for f in res.findings],
        "monthlySavingsUsd": res.monthly_savings_usd,
        "grossMonthlyWasteUsd": res.gross_monthly_usd,
        "overlapUsd": max(0.0, res.gross_monthly_usd - res.monthly_savings_usd),
        "savingsByGroup": by_group,
        "spanDays": res.span_days,
        "unpricedTokens": n_unpriced,
        "unpricedModels": unpriced_models,
    }


def _cmd_audit(args: argparse.Namespace) -> int:
    info = detect(_roots(args))
    if not info["found"]:
        print("No OpenClaw or Hermes store found (see `token-optimizer detect`).", file=sys.stderr)
        return 1
    _res, rows, tz, window = _run_scan(args, SCAN_DEFAULT_DAYS)
    days = args.days if args.days is not None else (
        None if (args.since or args.until) else SCAN_DEFAULT_DAYS)
    rep = build_audit(rows, _roots(args), days)
    code = 0
    from token_optimizer.audit.detectors import SEVERITY_RANK

    if args.fail_on and any(SEVERITY_RANK[f["severity"]] >= SEVERITY_RANK[args.fail_on]
                            for f in rep["findings"]):
        code = EXIT_FINDINGS
    if args.json:
        rep["timezone"] = str(tz)
        rep["window"] = window
        print_json(_redact(rep, str(default_home())))
        return code
    span = f"last {days} days" if days else "selected window"
    print(f"Token Optimizer audit ({span})")
    print("=" * 50)
    print(f"Sessions scanned: {rep['totalSessions']}")
    print(f"Agents found:     {', '.join(rep['agentsFound']) or 'none'}")
    cost = rep["totalCostUsd"]
    print(f"Total cost:       {fmt_usd(cost) if cost else 'unknown (no priced usage)'}")
    print(f"Total tokens:     {fmt_tokens(rep['totalTokens'])}")
    _print_unpriced(rows)
    findings = rep["findings"]
    if not findings:
        print("\nNo waste patterns found; the setup looks clean.")
        return code
    print(f"\n{len(findings)} waste patterns found.")
    print(f"Potential savings: {fmt_usd(rep['monthlySavingsUsd'])}/month "
          f"(each session counted once; {fmt_usd(rep['overlapUsd'])} of overlap between "
          "findings left out)")
    for g in GROUP_ORDER:
        fs = [f for f in findings if f["group"] == g]
        if not fs:
            continue
        print(f"\n{GROUP_TITLES[g]}: {fmt_usd(rep['savingsByGroup'][g])}/month")
        print("-" * 50)
        for f in fs:
            print(f"{ICONS[f['severity']]} [{f['severity'].upper()}] {f['wasteType']}")
            print(f"   {f['description']}")
            if f["monthlyWasteUsd"] > 0:
                extra = "" if f["overlapUsd"] < 0.005 else \
                    f", {fmt_usd(f['countedUsd'])} not already counted above"
                print(f"   Waste: {fmt_usd(f['monthlyWasteUsd'])}/month ({f['basis']}{extra})")
            else:
                print(f"   Basis: {f['basis']}")
            print(f"   Do: {f['recommendation']}")
            for line in f["fixSnippet"].splitlines():
                print(f"      {line}")
            print()
    return code


# ---------------------------------------------------------------- budget


def _plugin_config(root: Path | None) -> dict[str, Any] | None:
    """Our entry's ``config`` in ``<openclaw root>/openclaw.json`` (``None`` when absent)."""
    if root is None:
        return None
    from token_optimizer.hosts.openclaw_install import PLUGIN_ID, load_json5ish

    try:
        cfg = load_json5ish((root / "openclaw.json").read_text())
    except (OSError, ValueError):
        return None
    entry = (((cfg or {}).get("plugins") or {}).get("entries") or {}).get(PLUGIN_ID) \
        if isinstance(cfg, dict) else None
    conf = entry.get("config") if isinstance(entry, dict) else None
    return conf if isinstance(conf, dict) else None


def build_budget(rows: list[SessionRow], limits: BudgetLimits, tz: dt.tzinfo,
                 now_ms: float | None = None) -> dict[str, Any]:
    """Spend of sessions started today / this month (in ``tz``) against the limits."""
    now = dt.datetime.fromtimestamp((now_ms if now_ms is not None else time.time() * 1000) / 1000,
                                    tz=tz)
    today = now.date()
    periods: list[dict[str, Any]] = []
    for kind, limit, source in (("daily", limits.daily_usd, limits.daily_source),
                                ("monthly", limits.monthly_usd, limits.monthly_source)):
        def inside(r: SessionRow, kind: str = kind) -> bool:
            if r.started_ms is None:
                return False
            d = local_day(r.started_ms, tz)
            return d == today if kind == "daily" else (d.year, d.month) == (today.year, today.month)

        sel = [r for r in rows if inside(r)]
        spent = sum(r.cost_usd for r in sel)
        n_unpriced, models = _unpriced_summary(sel)
        periods.append({
            "period": kind,
            "key": today.isoformat() if kind == "daily" else today.strftime("%Y-%m"),
            "spentUsd": spent, "limitUsd": limit, "limitSource": source,
            "remainingUsd": None if limit is None else limit - spent,
            "exceeded": limit is not None and spent > limit,
            "sessions": len(sel), "unpricedTokens": n_unpriced, "unpricedModels": models,
        })
    return {"timezone": str(tz), "limitsSet": limits.any, "periods": periods,
            "exceeded": any(p["exceeded"] for p in periods)}


def _cmd_budget(args: argparse.Namespace) -> int:
    roots = _roots(args)
    from token_optimizer.audit.budget import budget_limits

    limits = budget_limits(_plugin_config(roots.openclaw))
    args.days, args.since, args.until = None, None, None
    tz = resolve_tz(args.timezone)
    month_start = dt.datetime.now(tz).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    args.since = month_start.isoformat()
    _res, rows, tz, _w = _run_scan(args, None)
    rep = build_budget(rows, limits, tz)
    code = EXIT_OVER_BUDGET if (args.check and rep["exceeded"]) else 0
    if args.json:
        print_json(rep)
        return code
    if not limits.any:
        print("No budget set. Set TOKEN_OPTIMIZER_BUDGET_DAILY_USD and/or "
              "TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD (or budgetDailyUsd / budgetMonthlyUsd in the "
              "plugin config).")
    table = []
    for p in rep["periods"]:
        limit = "none" if p["limitUsd"] is None else fmt_usd(p["limitUsd"])
        state = "OVER" if p["exceeded"] else ("-" if p["limitUsd"] is None else "ok")
        spent = fmt_usd(p["spentUsd"]) + ("+" if p["unpricedTokens"] else "")
        table.append([p["period"], p["key"], str(p["sessions"]), spent, limit, state])
    print_table(["Period", "For", "Sessions", "Spent", "Limit", "Status"], table,
                right=[False, False, True, True, True, False], title=f"Budget ({tz})")
    _print_unpriced(rows)
    return code


# ---------------------------------------------------------------- registration


def register_cli(subparsers: Any) -> None:
    """Add ``detect``, ``scan``, ``report``, ``audit`` and ``budget`` to the command line."""
    p = subparsers.add_parser("detect", help="list the OpenClaw and Hermes stores found, with sizes",
                              description="Show which hosts and stores exist (nothing is opened).")
    _common(p, days_help="ignored (accepted for symmetry)")
    p.set_defaults(func=_cmd_detect)

    s = subparsers.add_parser(
        "scan", help="one row per session from the hosts' own stores (tokens, cost and its basis)",
        description="Read every OpenClaw and Hermes session (incrementally, read-only) and list "
        "one row per session. --json prints an array of session objects.")
    _common(s, days_help=f"sessions started in the last N days (default {SCAN_DEFAULT_DAYS})")
    s.set_defaults(func=_cmd_scan)

    r = subparsers.add_parser(
        "report", help="usage reports: daily, weekly, monthly, session, model, agent or project",
        description="Token and cost totals grouped like ccusage's reports.")
    r.add_argument("kind", choices=REPORT_KINDS)
    r.add_argument("--breakdown", action="store_true", help="per-model rows under each group")
    _common(r, days_help="sessions started in the last N days (default: all)")
    r.set_defaults(func=_cmd_report)

    a = subparsers.add_parser(
        "audit", help="waste findings sorted by $/month, each with evidence and a fix",
        description="Run the waste detectors over the sessions found. Savings are "
        "de-duplicated: a session claimed by several findings counts once, at its largest "
        f"claim. --fail-on exits {EXIT_FINDINGS} when a finding of that severity or worse exists.")
    a.add_argument("--fail-on", choices=("high", "medium"), default=None,
                   help=f"exit {EXIT_FINDINGS} when a finding is at least this severe (CI)")
    _common(a, days_help=f"sessions started in the last N days (default {SCAN_DEFAULT_DAYS})")
    a.set_defaults(func=_cmd_audit)

    b = subparsers.add_parser(
        "budget", help="spend today and this month against the daily/monthly limits",
        description="Compare spend with the limits set by TOKEN_OPTIMIZER_BUDGET_DAILY_USD / "
        "TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD (or budgetDailyUsd / budgetMonthlyUsd in the "
        f"plugin config). --check exits {EXIT_OVER_BUDGET} when one is exceeded.")
    b.add_argument("--check", action="store_true",
                   help=f"exit {EXIT_OVER_BUDGET} when a limit is exceeded")
    _common(b, days_help="ignored: the periods are today and this month")
    b.set_defaults(func=_cmd_budget)


__all__ = ["EXIT_FINDINGS", "EXIT_OVER_BUDGET", "build_audit", "build_budget", "build_report",
           "register_cli"]
