"""The dashboard's data and its single self-contained HTML file.

:func:`build_data` turns scanned :class:`SessionRow`s, the state root's
checkpoints and savings, the context audits and the waste findings into one
JSON-able dict; :func:`render_html` inlines it, the page script and styles, and
the vendored charting library (uPlot, MIT, see ``vendor/README.md``) into one
HTML file that loads nothing: a Content-Security-Policy with
``default-src 'none'`` forbids every fetch, font, image or frame, and nothing
in the page asks for one.

Nothing here runs on a hook's path; the runtime never imports it.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from token_optimizer import jsutil
from token_optimizer.audit.context import ContextAudit
from token_optimizer.audit.insight import quality_report, score_sessions
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.statestore import StateView
from token_optimizer.audit.timeutil import local_day
from token_optimizer.fsutil import sanitize_checkpoint_id

MAX_SESSION_ROWS = 2_000
"""Sessions listed in the Sessions view (newest first); every total covers all of them."""
MAX_SERIES_POINTS = 60
FindingsProvider = Callable[[Sequence[SessionRow]], list[dict[str, Any]]]

SESSION_COLUMNS = ("started", "host", "agent", "session", "model", "messages", "tokens", "cost",
                   "basis", "duration", "fill", "fillBasis", "quality", "grade", "compactions",
                   "toolErrors", "checkpoints")


# ---------------------------------------------------------------- findings


def _finding_dict(f: Any) -> dict[str, Any] | None:
    """A detector finding (object with ``to_json`` or a mapping) as the Waste view's dict."""
    d = f.to_json() if hasattr(f, "to_json") else f
    if not isinstance(d, dict):
        return None

    def pick(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in d and d[k] is not None:
                return d[k]
        return default

    usd = pick("monthly_usd", "monthlyWasteUsd", default=0.0)
    return {
        "detector": str(pick("detector", "wasteType", default="unknown")),
        "severity": str(pick("severity", default="low")),
        "group": str(pick("group", default="")),
        "basis": str(pick("basis", default="estimated")),
        "monthly_usd": float(usd) if isinstance(usd, (int, float)) else 0.0,
        "evidence": pick("evidence", default={}),
        "fix": str(pick("fix", "fixSnippet", default="")),
        "description": str(pick("description", default="")),
        "recommendation": str(pick("recommendation", default="")),
        "agent": str(pick("agent", "agentName", default="")),
        "sessions": pick("sessionCount", default=None),
    }


def default_findings(rows: Sequence[SessionRow]) -> tuple[list[dict[str, Any]], str]:
    """Findings from ``token_optimizer.audit.detectors`` when that module exists, else none."""
    name = "token_optimizer.audit.detectors"
    if importlib.util.find_spec(name) is None:
        return [], "the waste detectors are not installed in this version"
    try:
        mod = importlib.import_module(name)
        run = mod.run_detectors
        res = run(rows)
        items = getattr(res, "findings", res)
        out = [d for f in (items or []) if (d := _finding_dict(f)) is not None]
    except Exception as exc:  # a detector problem never breaks the dashboard
        return [], f"the waste detectors failed: {exc.__class__.__name__}: {exc}"
    return out, "token_optimizer.audit.detectors"


# ---------------------------------------------------------------- data


def _day(ms: float | None, tz: dt.tzinfo) -> str | None:
    return local_day(ms, tz).isoformat() if ms is not None else None


def _r(x: float, nd: int = 6) -> float:
    return round(x, nd)


def build_data(rows: Sequence[SessionRow], *, state: StateView | None, audits: Sequence[ContextAudit],
               days: int | None, tz: dt.tzinfo, findings: list[dict[str, Any]] | None = None,
               findings_source: str = "", now_ms: float | None = None) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: -(r.started_ms or 0.0))
    scores = score_sessions(rows, state)
    qrep, qextra = quality_report(rows, state, scores=scores)

    # totals, daily, models
    tok = {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}
    cost = 0.0
    unpriced = 0
    unpriced_models: set[str] = set()
    hosts: dict[str, int] = {}
    daily: dict[str, list[float]] = {}
    models: dict[str, list[Any]] = {}
    grades: dict[str, int] = {}
    for r, s in zip(rows, scores, strict=True):
        t = r.tokens
        tok["input"] += t.input
        tok["output"] += t.output
        tok["cacheRead"] += t.cache_read
        tok["cacheWrite"] += t.cache_write
        cost += r.cost_usd
        unpriced += r.unpriced_tokens
        unpriced_models.update(r.unpriced_models)
        hosts[r.host] = hosts.get(r.host, 0) + 1
        grades[s.grade] = grades.get(s.grade, 0) + 1
        d = _day(r.started_ms, tz) or "unknown"
        dd = daily.setdefault(d, [0.0, 0, 0, 0, 0, 0])
        dd[0] += r.cost_usd
        dd[1] += t.total
        dd[2] += 1
        dd[3] += t.cache_read
        dd[4] += t.input + t.cache_read + t.cache_write
        dd[5] += s.score
        for m in r.models or []:
            e = models.setdefault(m.model, [set(), 0, 0, 0.0, 0, 0, 0])
            e[0].add(id(r))
            e[1] += m.calls
            e[2] += m.tokens.total
            e[3] += m.cost_usd
            e[4] += m.unpriced_tokens
            e[5] += m.tokens.output
            e[6] += m.tokens.cache_read
    daily_rows = [[d, _r(v[0]), int(v[1]), int(v[2]),
                   _r(v[3] / v[4], 4) if v[4] else 0.0, _r(v[5] / v[2], 1) if v[2] else 0.0]
                  for d, v in sorted(daily.items())]
    ranked = sorted(models.items(), key=lambda kv: (-kv[1][3], -kv[1][2], kv[0]))
    model_rows = [{"model": k, "sessions": len(v[0]), "calls": int(v[1]), "tokens": int(v[2]),
                   "cost": _r(v[3]), "unpriced": int(v[4]), "output": int(v[5]),
                   "cacheRead": int(v[6])} for k, v in ranked]

    # checkpoints and restores
    ckpt = state.checkpoints if state is not None else {}
    restores = state.restores() if state is not None else []
    by_session_restores: dict[str, list[float]] = {}
    for s_ in restores:
        key = sanitize_checkpoint_id(s_.session_id or "unknown")
        e = by_session_restores.setdefault(key, [0, 0.0])
        e[0] += 1
        e[1] += s_.tokens_saved
    triggers: dict[str, int] = {}
    ck_daily: dict[str, list[int]] = {}
    ck_sessions: list[dict[str, Any]] = []
    for sid, crow in ckpt.items():
        trig: dict[str, int] = {}
        for c in crow:
            trig[c.trigger] = trig.get(c.trigger, 0) + 1
            triggers[c.trigger] = triggers.get(c.trigger, 0) + 1
            ck_daily.setdefault(_day(c.created_ms, tz) or "unknown", [0, 0])[0] += 1
        rs = by_session_restores.get(sid, [0, 0.0])
        last = crow[-1]
        ck_sessions.append({"session": sid, "captures": len(crow), "triggers": trig,
                            "first": jsutil.iso_from_ms(crow[0].created_ms),
                            "last": jsutil.iso_from_ms(last.created_ms),
                            "lastTrigger": last.trigger, "lastFill": last.fill_pct,
                            "lastQuality": last.quality_score, "restores": int(rs[0]),
                            "restoredTokens": int(rs[1])})
    for s_ in restores:
        ck_daily.setdefault(_day(s_.ts_ms, tz) or "unknown", [0, 0])[1] += 1
    for sid, rs in by_session_restores.items():
        if sid not in ckpt:
            ck_sessions.append({"session": sid, "captures": 0, "triggers": {}, "first": None,
                                "last": None, "lastTrigger": None, "lastFill": None,
                                "lastQuality": None, "restores": int(rs[0]),
                                "restoredTokens": int(rs[1])})
    ck_sessions.sort(key=lambda c: c["last"] or "", reverse=True)
    savings_types: dict[str, list[float]] = {}
    for sv in state.savings if state is not None else []:
        e2 = savings_types.setdefault(sv.event_type, [0, 0.0])
        e2[0] += 1
        e2[1] += sv.tokens_saved

    # sessions table and per-session series
    shown = rows[:MAX_SESSION_ROWS]
    table: list[list[Any]] = []
    series: dict[str, list[list[float | None]]] = {}
    for r, s in zip(shown, scores, strict=False):
        key = sanitize_checkpoint_id(r.session_id)
        crow = ckpt.get(key, [])
        table.append([r.started_ms, r.host, r.agent, r.session_id, r.model, r.message_count,
                      r.tokens.total, _r(r.cost_usd), r.cost_basis, round(r.duration_seconds),
                      round(s.fill * 100, 1), s.fill_basis, s.score, s.grade, r.compactions,
                      r.tool_errors, len(crow)])
        if crow:
            step = max(1, len(crow) // MAX_SERIES_POINTS)
            series[r.session_id] = [[c.created_ms, c.fill_pct, c.quality_score]
                                    for c in crow[::step]]

    findings = findings or []
    return {
        "version": 1,
        "generatedAt": jsutil.iso_from_ms(jsutil.now_ms() if now_ms is None else now_ms),
        "days": days, "timezone": str(tz),
        "overview": {
            "sessions": len(rows), "costUsd": _r(cost), "tokens": {**tok, "total": sum(tok.values())},
            "unpricedTokens": unpriced, "unpricedModels": sorted(unpriced_models),
            "activeDays": sum(1 for d in daily if d != "unknown"), "hosts": hosts,
            "wasteMonthlyUsd": _r(sum(f["monthly_usd"] for f in findings)),
            "findings": len(findings),
            "quality": {"score": qrep.score, "grade": qrep.grade, "band": qrep.band},
            "checkpoints": sum(len(v) for v in ckpt.values()), "restores": len(restores),
        },
        "daily": {"cols": ["date", "cost", "tokens", "sessions", "cacheHit", "quality"],
                  "rows": daily_rows},
        "models": model_rows,
        "sessions": {"total": len(rows), "cols": list(SESSION_COLUMNS), "rows": table,
                     "series": series},
        "waste": {"findings": findings, "source": findings_source},
        "context": [a.to_json() for a in audits if a.found],
        "quality": {**qrep.to_dict(), **qextra, "grades": grades},
        "checkpoints": {"sessions": ck_sessions[:MAX_SESSION_ROWS], "triggers": triggers,
                        "daily": [[d, v[0], v[1]] for d, v in sorted(ck_daily.items())],
                        "savings": {k: {"count": int(v[0]), "tokens": int(v[1])}
                                    for k, v in sorted(savings_types.items())}},
    }


# ---------------------------------------------------------------- HTML

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:; font-src 'none'; connect-src 'none'; frame-src 'none'; "
       "form-action 'none'; base-uri 'none'")


def _asset(name: str) -> str:
    return resources.files("token_optimizer.dashboard").joinpath(name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    """Text that cannot close the ``<script>``/``<style>`` element it is placed in."""
    return text.replace("</", "<\\/")


def render_html(data: dict[str, Any]) -> str:
    payload = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()
    payload = payload.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    lib = _asset("vendor/uPlot.iife.min.js")
    lic = _asset("vendor/LICENSE")
    title = html.escape(f"Token Optimizer dashboard, {data.get('generatedAt', '')[:10]}")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta name=\"color-scheme\" content=\"light dark\">\n",
        f"<title>{title}</title>\n",
        "<style>\n", _script_safe(_asset("vendor/uPlot.min.css")), "\n", _script_safe(_asset("app.css")),
        "\n</style>\n</head>\n<body>\n", _asset("body.html"),
        "\n<script id=\"dash-data\" type=\"application/json\">", payload, "</script>\n",
        "<script>\n/*! uPlot, bundled unmodified. Its licence follows.\n",
        lic.replace("*/", "* /"), "*/\n", _script_safe(lib), "\n</script>\n",
        "<script>\n", _script_safe(_asset("app.js")), "\n</script>\n</body>\n</html>\n",
    ])


def write_dashboard(path: Path, text: str) -> Path:
    """Write atomically with mode 0600 (temp file in the same directory, then rename)."""
    path = path.expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = ["MAX_SESSION_ROWS", "build_data", "default_findings", "render_html", "write_dashboard"]
