"""``audit`` and ``budget`` through the CLI, and the budget settings / nudge line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from audit_stores import HermesStore, OpenClawStore, assistant_event, user_event

from token_optimizer import settings
from token_optimizer.audit.budget import BudgetLimits, budget_limits, budget_line
from token_optimizer.cli import main
from token_optimizer.commands.audit import EXIT_FINDINGS, EXIT_OVER_BUDGET

T0 = 1_780_000_000_000
ENV_DAILY = "TOKEN_OPTIMIZER_BUDGET_DAILY_USD"
ENV_MONTHLY = "TOKEN_OPTIMIZER_BUDGET_MONTHLY_USD"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_DAILY, raising=False)
    monkeypatch.delenv(ENV_MONTHLY, raising=False)
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(tmp_path / "state"))
    settings.reset_warnings()


@pytest.fixture
def wasteful(tmp_path: Path) -> list[str]:
    oc = OpenClawStore(tmp_path / "oc")
    now = int(time.time() * 1000) - 3_600_000
    for i in range(3):  # short cron runs on Sonnet: heartbeat_model_waste + overpowered_model
        oc.add_session(f"c{i}", key=f"agent:main:cron:j:run:c{i}", created_via="cron",
                       created_ms=now + i * 60_000)
        oc.add_events(f"c{i}", [user_event("check the queue", now + i * 60_000),
                                assistant_event(now + i * 60_000 + 500, inp=1000, out=100,
                                                cost=1.0)])
    oc.close()
    return ["--openclaw-root", str(tmp_path / "oc"), "--hermes-home", str(tmp_path / "none")]


def run(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> str:
    assert main(argv) == code
    return capsys.readouterr().out


def test_audit_json_sorted_with_basis_group_fix_and_dedup(
        wasteful: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rep = json.loads(run(capsys, ["audit", "--json", *wasteful]))
    assert rep["totalSessions"] == 3 and rep["daysScanned"] == 30
    fs = rep["findings"]
    kinds = [f["wasteType"] for f in fs]
    assert {"heartbeat_model_waste", "overpowered_model"} <= set(kinds)
    usd = [f["monthlyWasteUsd"] for f in fs]
    assert usd == sorted(usd, reverse=True)
    for f in fs:
        assert f["basis"] in ("measured", "estimated") and f["group"] in ("fix", "nudge", "keep")
        assert f["fixSnippet"] and isinstance(f["evidence"], dict)
    # the same three sessions are claimed twice; the total counts them once
    assert rep["monthlySavingsUsd"] == pytest.approx(
        rep["grossMonthlyWasteUsd"] - rep["overlapUsd"])
    assert rep["overlapUsd"] > 0
    assert sum(f["countedUsd"] for f in fs) == pytest.approx(rep["monthlySavingsUsd"])
    assert sum(rep["savingsByGroup"].values()) == pytest.approx(rep["monthlySavingsUsd"])


def test_audit_fail_on_sets_the_exit_code(wasteful: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rep = json.loads(run(capsys, ["audit", "--json", *wasteful]))
    worst = max(f["severity"] for f in rep["findings"]
                if f["severity"] in ("high", "critical", "medium"))
    assert worst in ("high", "medium")
    run(capsys, ["audit", "--fail-on", "medium", *wasteful], EXIT_FINDINGS)
    highs = [f for f in rep["findings"] if f["severity"] in ("high", "critical")]
    run(capsys, ["audit", "--fail-on", "high", "--json", *wasteful],
        EXIT_FINDINGS if highs else 0)


def test_audit_clean_store_passes_fail_on(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    oc = OpenClawStore(tmp_path / "oc")
    oc.add_session("s")
    oc.add_events("s", [user_event("hello there", T0), assistant_event(T0 + 1, out=300)])
    oc.close()
    out = run(capsys, ["audit", "--fail-on", "medium", "--since", "2020-01-01",
                       "--openclaw-root", str(tmp_path / "oc")])
    assert "No waste patterns" in out


def test_audit_text_groups_findings_and_prints_fixes(wasteful: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, ["audit", *wasteful])
    assert "Fix (" in out and "heartbeat_model_waste" in out
    assert '"model": "haiku"' in out  # the copyable fix
    assert "\x1b[" not in out  # plain off a TTY


def test_audit_without_store_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--openclaw-root", str(tmp_path / "x"),
                 "--hermes-home", str(tmp_path / "y")]) == 1


# ---------------------------------------------------------------- settings


def test_limits_from_env_and_plugin_config() -> None:
    lim = budget_limits({"budgetDailyUsd": 5, "budget_monthly_usd": "100"}, env={})
    assert lim == BudgetLimits(5.0, 100.0, "budgetDailyUsd", "budget_monthly_usd")
    lim = budget_limits({"budgetDailyUsd": 5}, env={ENV_DAILY: "2.5"})
    assert lim.daily_usd == 2.5 and lim.daily_source == ENV_DAILY
    assert budget_limits(None, env={ENV_DAILY: " "}).daily_usd is None


@pytest.mark.parametrize("bad", ["abc", "-1", "nan", "inf", "5$"])
def test_bad_env_value_warns_once_and_means_no_limit(bad: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Like every setting (token_optimizer.settings): a rejected value gives the default."""
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        for _ in range(3):
            lim = budget_limits({"budgetDailyUsd": 7}, env={ENV_DAILY: bad})
    assert lim.daily_usd is None
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1
    assert ENV_DAILY in msgs[0] and repr(bad) in msgs[0] and "using None" in msgs[0]


def test_a_zero_limit_is_a_limit() -> None:
    assert budget_limits(None, env={ENV_DAILY: "0"}).daily_usd == 0.0


def test_bad_config_value_warns_and_means_no_limit(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        lim = budget_limits({"budgetMonthlyUsd": [1]}, env={})
    assert lim.monthly_usd is None
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "budgetMonthlyUsd" in msg and "[1]" in msg and "using None" in msg


def test_budget_line() -> None:
    lim = BudgetLimits(2.0, 50.0, ENV_DAILY, ENV_MONTHLY)
    assert budget_line(1.5, limits=lim) is None
    line = budget_line(2.5, limits=lim)
    assert line is not None and "$2.50" in line and "$2.00" in line and ENV_DAILY in line
    assert "\n" not in line
    over_month = budget_line(1.0, limits=lim, day_spent_usd=0.5, month_spent_usd=49.5)
    assert over_month is not None and "monthly" in over_month and "$50.50" in over_month
    assert budget_line(None, limits=lim) is None
    assert budget_line(float("nan"), limits=lim) is None
    assert budget_line(100.0, limits=BudgetLimits()) is None


def test_budget_line_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DAILY, "1")
    assert budget_line(1.01) is not None
    assert budget_line(0.99) is None


def test_budget_module_imports_no_reader() -> None:
    code = ("import sys, token_optimizer.audit.budget as b; b.budget_line(1.0); "
            "bad = [m for m in sys.modules if m.startswith('token_optimizer.audit.') "
            "and m != 'token_optimizer.audit.budget'] + [m for m in ('sqlite3', 'orjson') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# ---------------------------------------------------------------- budget command


@pytest.fixture
def spent_today(tmp_path: Path) -> list[str]:
    now = time.time()
    h = HermesStore(tmp_path / "hm")
    h.add_session("today", inp=1000, out=100, actual=3.0, started=now - 60, ended=now - 30)
    h.add_session("old", inp=1000, out=100, actual=9.0, started=now - 400 * 86400,
                  ended=now - 400 * 86400 + 60)
    h.close()
    return ["--hermes-home", str(tmp_path / "hm"), "--openclaw-root", str(tmp_path / "none")]


def test_budget_check_exits_non_zero_when_exceeded(
        spent_today: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(ENV_DAILY, "2")
    rep = json.loads(run(capsys, ["budget", "--check", "--json", *spent_today], EXIT_OVER_BUDGET))
    daily = rep["periods"][0]
    assert daily["period"] == "daily" and daily["spentUsd"] == pytest.approx(3.0)
    assert daily["exceeded"] and daily["limitSource"] == ENV_DAILY
    assert rep["periods"][1]["limitUsd"] is None and rep["exceeded"]
    run(capsys, ["budget", *spent_today])  # without --check: informational, exit 0
    monkeypatch.setenv(ENV_DAILY, "5")
    run(capsys, ["budget", "--check", *spent_today])


def test_budget_limits_from_the_openclaw_plugin_config(
        tmp_path: Path, spent_today: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    oc = tmp_path / "oc"
    oc.mkdir()
    (oc / "openclaw.json").write_bytes(orjson.dumps({"plugins": {"entries": {
        "token-optimizer-openclaw": {"config": {"budgetMonthlyUsd": 1}}}}}))
    argv = ["budget", "--check", "--json", "--hermes-home", spent_today[1],
            "--openclaw-root", str(oc)]
    rep = json.loads(run(capsys, argv, EXIT_OVER_BUDGET))
    monthly = rep["periods"][1]
    assert monthly["limitUsd"] == 1.0 and monthly["limitSource"] == "budgetMonthlyUsd"
    assert monthly["spentUsd"] == pytest.approx(3.0)  # the 400-day-old session is not this month


def test_budget_without_limits_says_so(spent_today: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, ["budget", "--check", *spent_today])
    assert "No budget set" in out and ENV_DAILY in out
