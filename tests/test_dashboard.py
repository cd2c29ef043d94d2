"""The dashboard file: self-contained, escaped, sized, and off the hook path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dash_fixture import FINDINGS, build_fixture

from token_optimizer.audit.model import SessionRow, Tokens
from token_optimizer.audit.timeutil import resolve_tz
from token_optimizer.cli import main
from token_optimizer.dashboard import build, build_data, default_findings, render_html


def _data(rows: list[SessionRow], **kw: Any) -> dict[str, Any]:
    return build_data(rows, state=None, audits=[], days=30, tz=resolve_tz("UTC"), **kw)


def _payload(html: str) -> Any:
    m = re.search(r'<script id="dash-data" type="application/json">(.*?)</script>', html, re.S)
    assert m
    return json.loads(m.group(1))


def test_cli_writes_one_file_with_every_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fx = build_fixture(tmp_path)
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(fx.state))
    assert main(["dashboard", "--no-open", *fx.argv()]) == 0
    path = fx.state / "dashboard.html"
    assert str(path) in capsys.readouterr().out
    assert path.stat().st_mode & 0o777 == 0o600
    html = path.read_text()
    for view in ("overview", "waste", "sessions", "models", "daily", "context", "quality", "checkpoints"):
        assert f'id="view-{view}"' in html
    data = _payload(html)
    assert data["overview"]["sessions"] == 20
    assert data["overview"]["checkpoints"] == 32 and data["overview"]["restores"] == 3
    assert data["checkpoints"]["triggers"] == {"progressive-20": 8, "progressive-35": 8, "quality-70": 8,
                                               "compact": 8}
    assert len(data["sessions"]["series"]) == 8  # fill/quality over the session where recorded
    assert [c["host"] for c in data["context"]] == ["openclaw", "hermes"]
    assert "The MIT License" in html and "Leon Sorokin" in html


def test_no_network_reference_in_the_file(tmp_path: Path) -> None:
    html = render_html(_data([], findings=FINDINGS))
    assert "default-src 'none'" in html and "connect-src 'none'" in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", html, re.I)
    assert not re.search(r"\b(?:fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon)\s*\(", html)
    assert "fonts.googleapis" not in html and "api.github.com" not in html


def test_hostile_strings_cannot_break_out_of_the_data_block() -> None:
    evil = '</script><script>alert(1)</script>\u2028'
    row = SessionRow("openclaw", "s1", evil, evil, 1_780_000_000_000, 1_780_000_060_000, "x",
                     tokens=Tokens(10, 5, 0, 0), model=evil)
    html = render_html(_data([row]))
    assert "<script>alert(1)" not in html
    assert _payload(html)["sessions"]["rows"][0][2] == evil


def test_findings_provider_is_optional_and_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.importlib.util, "find_spec", lambda name: None)
    assert default_findings([]) == ([], "the waste detectors are not installed in this version")
    data = _data([], findings=[])
    assert data["waste"]["findings"] == [] and data["overview"]["wasteMonthlyUsd"] == 0
    data = _data([], findings=FINDINGS)
    assert data["overview"]["wasteMonthlyUsd"] == pytest.approx(50.85)


def test_detector_objects_become_view_dicts() -> None:
    class F:
        def to_json(self) -> dict[str, Any]:
            return {"wasteType": "empty_runs", "severity": "medium", "monthlyWasteUsd": 3.5,
                    "fixSnippet": "# fix", "basis": "measured", "group": "idle", "evidence": {"n": 2}}

    d = build._finding_dict(F())
    assert d is not None
    assert (d["detector"], d["monthly_usd"], d["fix"], d["basis"]) == ("empty_runs", 3.5, "# fix", "measured")


def test_session_table_is_capped_totals_are_not() -> None:
    rows = [SessionRow("hermes", f"s{i}", "default", "p", 1_780_000_000_000 + i * 1000, None, "x",
                       tokens=Tokens(100, 10, 0, 0), cost_usd=0.01) for i in range(build.MAX_SESSION_ROWS + 50)]
    data = _data(rows)
    assert len(data["sessions"]["rows"]) == build.MAX_SESSION_ROWS
    assert data["sessions"]["total"] == len(rows) == data["overview"]["sessions"]
    assert data["overview"]["costUsd"] == pytest.approx(0.01 * len(rows))
    assert data["sessions"]["rows"][0][3] == f"s{len(rows) - 1}"  # newest first


def test_hook_path_never_imports_the_audit_half() -> None:
    code = ("import sys, token_optimizer.runtime, token_optimizer.hosts.hermes, token_optimizer.hooks\n"
            "bad = [m for m in sys.modules if m.startswith(('token_optimizer.dashboard', "
            "'token_optimizer.commands', 'token_optimizer.audit'))]\nprint(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
