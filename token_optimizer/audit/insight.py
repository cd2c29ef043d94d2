"""Quality, drift and validate over the audit's :class:`SessionRow`s.

* **Quality**: the reference's seven-signal score (``token_optimizer.quality``)
  fed with the *corrected* fill (COMPAT.md D1): per session, the newest
  ``fillPct`` a checkpoint recorded for it (the runtime's measured latest
  prompt ÷ window), else the mean prompt of its model calls ÷ window (fresh
  input + cache read + cache write, divided by the number of calls). Never the
  cumulative input.
* **Drift**: a snapshot of what every request carries (skills, MCP servers,
  toolsets, bootstrap files, agents, model config) under
  ``<state root>/snapshots/``, and the difference from the newest one.
* **Validate**: split sessions at a date, at a change the tool recorded, or
  (like the reference) at the largest time gap / the midpoint, and compare
  per-session metrics with sample sizes. Rule (documented in the command's
  help): each side needs at least :data:`MIN_SAMPLES` sessions; a metric
  "improved" or "regressed" only when a two-sided Mann-Whitney U test (normal
  approximation with tie correction) gives p < :data:`ALPHA`; otherwise it is
  "no change". Rank-based because tokens and cost per session are heavily
  skewed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from token_optimizer import fsutil, jsutil
from token_optimizer.audit.context import ContextAudit, load_json_config, load_yaml_config
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.statestore import StateView
from token_optimizer.models import AgentRun, TokenBreakdown
from token_optimizer.pricing import normalize_model_name
from token_optimizer.quality import (
    QualityReport,
    context_window_for_model,
    score_quality,
    score_session_quality,
)

MIN_SAMPLES = 5
ALPHA = 0.05
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_KEEP = 50
"""Snapshots kept: writing a new one deletes all but the newest this many (by name)."""
SIZE_CHANGE_MIN = 100
"""Bytes a bootstrap file must grow or shrink by to count as drift (the reference's threshold)."""

# ---------------------------------------------------------------- quality


def _outcome(row: SessionRow) -> str:
    """The reference parser's outcome rule (``failure`` is never produced there either)."""
    if row.message_count <= 2 and row.tokens.output < 200:
        return "abandoned"
    if row.tokens.output < 100 and row.tokens.input > 50_000:
        return "empty"
    return "success"


def to_agent_run(row: SessionRow) -> AgentRun:
    model = normalize_model_name(row.model) or row.model
    return AgentRun(
        session_id=row.session_id, agent_name=f"{row.host}:{row.agent}",
        timestamp_ms=row.started_ms or 0.0, duration_seconds=row.duration_seconds,
        tokens=TokenBreakdown(row.tokens.input, row.tokens.output, row.tokens.cache_read,
                              row.tokens.cache_write),
        cost_usd=row.cost_usd, model=model, run_type=row.run_type,
        outcome=_outcome(row),  # type: ignore[arg-type]
        message_count=row.message_count, tools_used=sorted(row.tools), source_path=row.source,
        topic=row.topic, system=row.host)


def session_fill(row: SessionRow, state: StateView | None) -> tuple[float, str]:
    """(fill ratio 0..1, basis) of one session: ``checkpoint``, ``mean-call`` or ``none``."""
    if state is not None:
        pct = state.latest_fill(row.session_id)
        if pct is not None:
            return max(0.0, min(1.0, pct / 100)), "checkpoint"
    t = row.tokens
    prompt = t.input + t.cache_read + t.cache_write
    calls = sum(s.calls for s in row.models) or row.api_calls or row.assistant_messages
    if prompt <= 0 or calls <= 0:
        return 0.0, "none"
    window = context_window_for_model(row.model)
    return min(1.0, prompt / calls / window), "mean-call"


@dataclass
class SessionScore:
    fill: float
    fill_basis: str
    score: int
    grade: str
    band: str


def score_sessions(rows: Sequence[SessionRow], state: StateView | None) -> list[SessionScore]:
    out: list[SessionScore] = []
    for r in rows:
        fill, basis = session_fill(r, state)
        q = score_session_quality(to_agent_run(r), fill_ratio=fill)
        out.append(SessionScore(fill, basis, q.score, q.grade, q.band))
    return out


def quality_report(rows: Sequence[SessionRow], state: StateView | None,
                   overhead: int | None = None,
                   scores: list[SessionScore] | None = None) -> tuple[QualityReport, dict[str, Any]]:
    """The seven-signal report plus a ``fill`` block saying where each fill came from."""
    runs = [to_agent_run(r) for r in rows]
    fills = [session_fill(r, state) for r in rows] if scores is None else \
        [(s.fill, s.fill_basis) for s in scores]
    rep = score_quality(runs, overhead, fill_ratios=[f for f, _ in fills])
    basis: dict[str, int] = {}
    for _f, b in fills:
        basis[b] = basis.get(b, 0) + 1
    extra = {"sessions": len(rows),
             "fill": {"averagePct": round(sum(f for f, _ in fills) / len(fills) * 100, 1) if fills else 0.0,
                      "basis": basis,
                      "rule": "newest checkpoint fillPct, else mean prompt per model call / window"}}
    return rep, extra


# ---------------------------------------------------------------- drift


def _model_config(host: str, root: Path) -> str:
    if host == "openclaw":
        cfg, _ = load_json_config(root / "openclaw.json")
        agents = cfg.get("agents")
        v = agents.get("defaults", {}).get("model") if isinstance(agents, dict) and \
            isinstance(agents.get("defaults"), dict) else None
        if v is None:
            v = cfg.get("models") or cfg.get("model")
    else:
        cfg, _ = load_yaml_config(root / "config.yaml")
        v = cfg.get("model")
    if v is None:
        return ""
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS, default=str).decode()


def _file_sizes(a: ContextAudit) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in a.components:
        if c.path and c.path.endswith(".md"):
            with contextlib.suppress(OSError):
                out[c.name] = Path(c.path).stat().st_size
    return out


def build_snapshot(audits: Sequence[ContextAudit], now_ms: float | None = None) -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for a in audits:
        if not a.found:
            continue
        agents: list[str] = []
        if a.host == "openclaw":
            with contextlib.suppress(OSError):
                agents = sorted(d.name for d in (Path(a.root) / "agents").iterdir() if d.is_dir())
        hosts[a.host] = {
            "root": a.root,
            "totalOverhead": a.total_overhead,
            "skills": sorted(s.name for s in a.skills if not s.archived),
            "archivedSkills": sorted(s.name for s in a.skills if s.archived),
            "mcpServers": sorted(m.name for m in a.mcp_servers if not m.disabled),
            "disabledMcpServers": sorted(m.name for m in a.mcp_servers if m.disabled),
            "toolsets": sorted(t["name"] for t in a.toolsets),
            "agents": agents,
            "files": _file_sizes(a),
            "modelConfig": _model_config(a.host, Path(a.root)),
        }
    ms = jsutil.now_ms() if now_ms is None else now_ms
    return {"version": 1, "capturedAt": jsutil.iso_from_ms(ms), "hosts": hosts}


def _snapshot_dir(state_root: Path, *, create: bool) -> fsutil.CheckedDir:
    return fsutil.open_checked_dir(state_root, state_root / SNAPSHOT_DIR, create=create)


def _is_snapshot(name: str) -> bool:
    return name.startswith("snapshot-") and name.endswith(".json")


def save_snapshot(state_root: Path, snap: dict[str, Any]) -> Path:
    """Write ``snapshots/snapshot-<UTC stamp>.json`` (0600, atomic); a second one the same day is kept.

    Then only the newest :data:`SNAPSHOT_KEEP` snapshots (by name, i.e. by stamp) are kept;
    older ones are deleted (best effort: a file that cannot be removed stays).
    """
    ms = jsutil.parse_iso_ms(snap["capturedAt"])
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    name = f"snapshot-{stamp}.json"
    with _snapshot_dir(state_root, create=True) as d:
        d.atomic_write(name, orjson.dumps(snap, option=orjson.OPT_INDENT_2))
        with contextlib.suppress(OSError):
            names = sorted((n for n in d.listdir() if _is_snapshot(n)), reverse=True)
            for old in names[max(1, SNAPSHOT_KEEP):]:
                if old == name:
                    continue
                with contextlib.suppress(OSError):
                    d.unlink(old)
        return d.path / name


def latest_snapshot(state_root: Path) -> tuple[str, dict[str, Any]] | None:
    """(file name, content) of the newest readable snapshot, by name (the reference's order)."""
    try:
        with _snapshot_dir(state_root, create=False) as d:
            names = sorted((n for n in d.listdir() if _is_snapshot(n)), reverse=True)
            for n in names:
                try:
                    v = orjson.loads(d.read_bytes(n, 5_000_000))
                except (OSError, orjson.JSONDecodeError):
                    continue
                if isinstance(v, dict):
                    return n, v
    except (OSError, ValueError):
        return None
    return None


def _host_view(snap: dict[str, Any], host: str) -> dict[str, Any]:
    hosts = snap.get("hosts")
    if isinstance(hosts, dict) and isinstance(hosts.get(host), dict):
        return dict(hosts[host])
    if host == "openclaw" and "skills" in snap:  # a reference-shaped snapshot
        files = {n: int(snap.get(k) or 0) for n, k in (("SOUL.md", "soulMdSize"),
                 ("MEMORY.md", "memoryMdSize"), ("AGENTS.md", "agentsMdSize"), ("TOOLS.md", "toolsMdSize"))}
        return {"skills": snap.get("skills") or [], "agents": snap.get("agents") or [],
                "files": files, "modelConfig": snap.get("modelConfig") or ""}
    return {}


def diff_snapshots(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    hosts = sorted(set((old.get("hosts") or {}) if isinstance(old.get("hosts"), dict) else {"openclaw": 1})
                   | set(new.get("hosts") or {}))
    for host in hosts:
        o, n = _host_view(old, host), _host_view(new, host)
        if not o and not n:
            continue

        def add(component: str, kind: str, details: str, _h: str = host) -> None:
            changes.append({"host": _h, "component": component, "type": kind, "details": details})

        if o and not n:
            add("host", "removed", f"{host} is no longer found")
            continue
        if n and not o:
            add("host", "added", f"{host} found")
            continue
        for key, label in (("skills", "skill"), ("mcpServers", "MCP server"), ("toolsets", "toolset"),
                           ("agents", "agent")):
            before, after = set(o.get(key) or []), set(n.get(key) or [])
            for x in sorted(after - before):
                add(label, "added", x)
            for x in sorted(before - after):
                add(label, "removed", x)
        of, nf = o.get("files") or {}, n.get("files") or {}
        for name in sorted(set(of) | set(nf)):
            a, b = int(of.get(name) or 0), int(nf.get(name) or 0)
            if abs(b - a) >= SIZE_CHANGE_MIN:
                add(name, "changed", f"{'grew' if b > a else 'shrank'} by {abs(b - a):,} bytes ({a:,} -> {b:,})")
        if (o.get("modelConfig") or "") != (n.get("modelConfig") or ""):
            add("model config", "changed", "the model configuration differs from the snapshot")
        ot, nt = o.get("totalOverhead"), n.get("totalOverhead")
        if isinstance(ot, int) and isinstance(nt, int) and ot != nt:
            add("overhead", "changed", f"per-message overhead {ot:,} -> {nt:,} tokens ({nt - ot:+,})")
    return changes


def snapshot_date(name: str) -> str:
    return name[len("snapshot-"):len("snapshot-") + 10]


# ---------------------------------------------------------------- validate


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(z, two-sided p) of the Mann-Whitney U test, normal approximation with tie correction."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    allv = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(allv)
    ties = 0.0
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        r = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = r
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_v, g) in zip(ranks, allv, strict=True) if g == 0)
    u1 = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 0.0, 1.0
    z = (u1 - n1 * n2 / 2) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2))


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    lower_is_better: bool
    value: Callable[[SessionRow, SessionScore], float | None]


def _cache_hit(r: SessionRow, _s: SessionScore) -> float | None:
    total = r.tokens.total
    return r.tokens.cache_read / total if total else None


METRICS = (
    Metric("tokens", "tokens per session", True, lambda r, _s: float(r.tokens.total)),
    Metric("cost", "cost per session (USD)", True, lambda r, _s: r.cost_usd),
    Metric("messages", "messages per session", True, lambda r, _s: float(r.message_count)),
    Metric("cacheHit", "cache hit rate", False, _cache_hit),
    Metric("quality", "session quality score", False, lambda _r, s: float(s.score)),
    Metric("toolErrors", "tool errors per session", True, lambda r, _s: float(r.tool_errors)),
)


def _median(v: list[float]) -> float:
    s = sorted(v)
    n = len(s)
    return 0.0 if not n else s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _summary(rows: list[SessionRow]) -> dict[str, Any]:
    """The reference's per-window summary."""
    n = len(rows)
    if not n:
        return {"count": 0, "avgTokens": 0, "avgCost": 0, "avgMessages": 0, "avgCacheHitRate": 0}
    hits = [r.tokens.cache_read / r.tokens.total if r.tokens.total else 0.0 for r in rows]
    return {"count": n,
            "avgTokens": jsutil.js_round(sum(r.tokens.total for r in rows) / n),
            "avgCost": round(sum(r.cost_usd for r in rows) / n, 4),
            "avgMessages": jsutil.js_round(sum(r.message_count for r in rows) / n),
            "avgCacheHitRate": round(sum(hits) / n, 3)}


def _delta(before: float, after: float, flip: bool) -> float:
    if before == 0:
        return 0.0
    pct = (after - before) / abs(before) * 100
    return round(-pct if flip else pct, 1)


def split_rows(rows: Sequence[SessionRow], *, at_ms: float | None, at_label: str | None,
               strategy: str) -> tuple[list[SessionRow], list[SessionRow], str]:
    ordered = sorted((r for r in rows if r.started_ms is not None), key=lambda r: r.started_ms or 0)
    if at_ms is not None:
        before = [r for r in ordered if (r.started_ms or 0) < at_ms]
        after = [r for r in ordered if (r.started_ms or 0) >= at_ms]
        return before, after, f"at {at_label or jsutil.iso_from_ms(at_ms)}"
    n = len(ordered)
    mid = n // 2
    if strategy == "halves" or n < 4:
        return ordered[:mid], ordered[mid:], f"chronological midpoint ({mid} sessions each side)"
    gaps = [((ordered[i].started_ms or 0) - (ordered[i - 1].started_ms or 0), i) for i in range(1, n)]
    gap, idx = max(gaps, key=lambda g: (g[0], -g[1]))
    if idx < 2 or n - idx < 2:
        return ordered[:mid], ordered[mid:], \
            f"chronological midpoint (auto fallback, {mid} sessions each side)"
    return ordered[:idx], ordered[idx:], f"{jsutil.js_round(gap / 3_600_000)}h gap at session {idx}"


def validate(rows: Sequence[SessionRow], state: StateView | None, *, at_ms: float | None = None,
             at_label: str | None = None, strategy: str = "auto") -> dict[str, Any]:
    before, after, label = split_rows(rows, at_ms=at_ms, at_label=at_label, strategy=strategy)
    sb = {id(r): s for r, s in zip(before, score_sessions(before, state), strict=True)}
    sa = {id(r): s for r, s in zip(after, score_sessions(after, state), strict=True)}
    enough = len(before) >= MIN_SAMPLES and len(after) >= MIN_SAMPLES
    metrics: list[dict[str, Any]] = []
    for m in METRICS:
        vb = [v for r in before if (v := m.value(r, sb[id(r)])) is not None]
        va = [v for r in after if (v := m.value(r, sa[id(r)])) is not None]
        mb = sum(vb) / len(vb) if vb else 0.0
        ma = sum(va) / len(va) if va else 0.0
        z, p = mann_whitney(vb, va)
        if len(vb) < MIN_SAMPLES or len(va) < MIN_SAMPLES:
            verdict = "too_few_sessions"
        elif p >= ALPHA:
            verdict = "no_change"
        else:
            went_down = _median(va) < _median(vb) if _median(va) != _median(vb) else ma < mb
            verdict = "improved" if went_down == m.lower_is_better else "regressed"
        metrics.append({
            "metric": m.key, "label": m.label, "lowerIsBetter": m.lower_is_better,
            "before": {"n": len(vb), "mean": mb, "median": _median(vb)},
            "after": {"n": len(va), "mean": ma, "median": _median(va)},
            "changePct": _delta(mb, ma, m.lower_is_better), "z": round(z, 3), "p": round(p, 4),
            "verdict": verdict})
    verdicts = {x["verdict"] for x in metrics}
    if not enough:
        overall = "insufficient_data"
    elif "improved" in verdicts and "regressed" in verdicts:
        overall = "mixed"
    elif "improved" in verdicts:
        overall = "improved"
    elif "regressed" in verdicts:
        overall = "regressed"
    else:
        overall = "no_change"
    b, a = _summary(before), _summary(after)
    return {
        "strategy": "date" if at_ms is not None else strategy,
        "splitLabel": label if enough or at_ms is not None else
        f"{label}; insufficient data ({len(before)} + {len(after)} sessions)",
        "splitAt": jsutil.iso_from_ms(at_ms) if at_ms is not None else
        (jsutil.iso_from_ms(after[0].started_ms or 0) if after and before else None),
        "before": b, "after": a,
        "deltas": {"tokensPct": _delta(b["avgTokens"], a["avgTokens"], True),
                   "costPct": _delta(b["avgCost"], a["avgCost"], True),
                   "messagesPct": _delta(b["avgMessages"], a["avgMessages"], True),
                   "cacheHitPct": _delta(b["avgCacheHitRate"], a["avgCacheHitRate"], False)},
        "metrics": metrics, "verdict": overall,
        "rule": {"minSamplesPerSide": MIN_SAMPLES, "test": "Mann-Whitney U, two-sided",
                 "alpha": ALPHA},
    }


__all__ = ["METRICS", "MIN_SAMPLES", "build_snapshot", "diff_snapshots", "latest_snapshot",
           "mann_whitney", "quality_report", "save_snapshot", "score_sessions", "session_fill",
           "to_agent_run", "validate"]
