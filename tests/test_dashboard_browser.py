"""The generated dashboard in a real browser (headless Chromium over the DevTools protocol).

Asserts, in light and dark mode, at 1280 px and at a phone width: no request
other than the file itself (the network is also pointed at a dead proxy and
every other request is intercepted and failed), no console error, exception or
CSP violation, and every view renders its charts and tables from the fixture
store. A screenshot of each view is saved under ``$TOKEN_OPTIMIZER_ARTIFACTS``
(else the pytest tmp dir).

Chromium is Debian's ``chromium`` package: installed with apt-get when missing
and running as root (cached by the system), skipped where that is impossible,
and failing then under ``TOKEN_OPTIMIZER_REQUIRE_HOSTS=1`` (CI).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cdp import CHROMIUM, Browser
from dash_fixture import FINDINGS, build_fixture

from token_optimizer.audit.scan import Roots, scan
from token_optimizer.audit.statestore import read_state
from token_optimizer.audit.timeutil import resolve_tz
from token_optimizer.commands.insight import context_audits
from token_optimizer.dashboard import build_data, render_html, write_dashboard

pytestmark = [pytest.mark.browser]

VIEWS = ("overview", "waste", "sessions", "models", "daily", "context", "quality", "checkpoints")
MODES = (("desktop-light", 1280, 900, False, "light"), ("desktop-dark", 1280, 900, False, "dark"),
         ("phone-light", 390, 844, True, "light"), ("phone-dark", 390, 844, True, "dark"))


def _unavailable(why: str) -> None:
    if os.environ.get("TOKEN_OPTIMIZER_REQUIRE_HOSTS") == "1":
        pytest.fail(f"Chromium unavailable and TOKEN_OPTIMIZER_REQUIRE_HOSTS=1: {why}")
    pytest.skip(f"Chromium unavailable (set TOKEN_OPTIMIZER_REQUIRE_HOSTS=1 to fail instead): {why}")


def ensure_chromium() -> str:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        _unavailable("/usr/bin/chromium is missing and apt-get cannot run here (not root or not Debian)")
    lock_dir = Path(os.environ.get("TOKEN_OPTIMIZER_CACHE", "~/.cache/token-optimizer-tests")).expanduser()
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.access(CHROMIUM, os.X_OK):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
                if r.returncode != 0:
                    _unavailable(f"{' '.join(cmd)} failed: {r.stderr[-500:]}")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable("apt-get install chromium did not provide /usr/bin/chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def dashboard_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("dash")
    fx = build_fixture(tmp)
    res = scan(Roots(fx.openclaw, fx.hermes), fx.state, use_cache=False)
    ns: Any = type("NS", (), {"openclaw_root": str(fx.openclaw), "hermes_home": str(fx.hermes)})()
    data = build_data(res.rows, state=read_state(fx.state), audits=context_audits(ns), days=30,
                      tz=resolve_tz("UTC"), findings=FINDINGS, findings_source="fixture")
    return write_dashboard(tmp / "dashboard.html", render_html(data))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("TOKEN_OPTIMIZER_ARTIFACTS")
    d = Path(env) / "dashboard" if env else tmp_path_factory.mktemp("dashboard-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tok_value(text: str) -> float:
    mult = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1:], 1.0)
    return float(text[:-1] if mult != 1.0 else text) * mult


def _open(b: Browser, url: str, mode: tuple[str, int, int, bool, str]) -> None:
    _name, w, h, mobile, scheme = mode
    b.call("Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1,
                                                   "mobile": mobile})
    b.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
    b.call("Page.navigate", {"url": "about:blank"})  # a fresh document each time, not a hash change
    b.wait_for("Page.loadEventFired")
    b.call("Page.navigate", {"url": url})
    b.wait_for("Page.loadEventFired")
    assert b.evaluate("window.__dash && window.__dash.ready") is True


class Watch:
    """Every request, blocked request and console/log/exception problem of a page session."""

    def __init__(self, b: Browser, url: str) -> None:
        self.url = url
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.problems: list[str] = []
        b.handlers.update({"Network.requestWillBeSent": self.on_request,
                           "Fetch.requestPaused": self.on_paused,
                           "Runtime.consoleAPICalled": self.on_console,
                           "Runtime.exceptionThrown": self.on_exception, "Log.entryAdded": self.on_log})
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.call(f"{domain}.enable")
        b.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})

    def on_request(self, br: Browser, p: dict[str, Any]) -> None:
        self.requests.append(p["request"]["url"])

    def on_paused(self, br: Browser, p: dict[str, Any]) -> None:
        u = p["request"]["url"]
        if u.split("#")[0] == self.url:
            br.ws.send(json.dumps({"id": 0, "method": "Fetch.continueRequest",
                                   "params": {"requestId": p["requestId"]}}))
        else:
            self.blocked.append(u)
            br.ws.send(json.dumps({"id": 0, "method": "Fetch.failRequest",
                                   "params": {"requestId": p["requestId"], "errorReason": "BlockedByClient"}}))

    def on_console(self, br: Browser, p: dict[str, Any]) -> None:
        if p.get("type") in ("error", "assert"):
            self.problems.append(f"console.{p['type']}: {p.get('args')}")

    def on_exception(self, br: Browser, p: dict[str, Any]) -> None:
        self.problems.append(f"exception: {p.get('exceptionDetails')}")

    def on_log(self, br: Browser, p: dict[str, Any]) -> None:
        e = p.get("entry", {})
        if e.get("level") == "error":
            self.problems.append(f"log {e.get('source')}: {e.get('text')} {e.get('url', '')}")

    def outside(self) -> set[str]:
        return {u.split("#")[0] for u in self.requests} - {"about:blank", self.url}


def test_dashboard_in_headless_chromium(dashboard_file: Path, artifacts: Path, tmp_path: Path) -> None:
    exe = ensure_chromium()
    url = dashboard_file.as_uri()
    b = Browser(tmp_path / "profile", exe)
    w = Watch(b, url)
    try:
        shots: list[Path] = []
        for mode in MODES:
            _open(b, url + "#overview", mode)
            for view in VIEWS:
                stats = b.evaluate(f"window.__dash.render({view!r})")
                assert b.evaluate("document.body.getAttribute('data-view')") == view
                assert stats["canvases"] >= 1, (mode[0], view, stats)
                assert stats["charts"] >= 1, (mode[0], view, stats)
                if view == "waste":
                    assert b.evaluate("document.querySelectorAll('#view-waste .finding').length") == len(FINDINGS)
                    assert b.evaluate("document.querySelectorAll('#view-waste button').length") == 2
                else:
                    assert stats["tables"] >= 1 and stats["rows"] >= 1, (mode[0], view, stats)
                # charts fit the viewport (usable at phone width: no chart wider than the screen)
                widest = b.evaluate("Math.max.apply(null, Array.from(document.querySelectorAll("
                                    "'.view.active .uplot')).map(function(e){return e.getBoundingClientRect().right}))")
                assert widest <= mode[1] + 1, (mode[0], view, widest)
                shot = b.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
                p = artifacts / f"{mode[0]}-{view}.png"
                p.write_bytes(base64.b64decode(shot["data"]))
                shots.append(p)
            # sorting the sessions table by tokens really reorders it
            b.evaluate("window.__dash.render('sessions')")
            b.evaluate("document.querySelectorAll('#view-sessions .tablewrap th')[6].click()")
            toks = b.evaluate("Array.from(document.querySelectorAll('#view-sessions .tablewrap tbody tr'))"
                              ".map(function(r){return r.children[6].textContent})")
            values = [_tok_value(t) for t in toks]
            assert len(values) >= 10 and values == sorted(values, reverse=True), toks
        errors = b.evaluate("window.__dash.errors")
    finally:
        b.quit()
    assert errors == []
    assert w.problems == []
    assert w.blocked == []
    assert w.outside() == set(), w.requests
    assert url in {u.split("#")[0] for u in w.requests}  # the watch does see requests
    assert len(shots) == len(MODES) * len(VIEWS)
    assert all(p.stat().st_size > 5_000 for p in shots)


def test_the_watch_catches_a_page_that_reaches_out(tmp_path: Path) -> None:
    """Negative control: the same harness reports a request and a CSP/console error when a page makes one."""
    exe = ensure_chromium()
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                    '<script>fetch("https://api.example.invalid/stars").catch(function(e){'
                    'console.error("fetch failed", String(e))});</script></body></html>')
    b = Browser(tmp_path / "profile", exe)
    w = Watch(b, page.as_uri())
    try:
        b.call("Page.navigate", {"url": page.as_uri()})
        b.wait_for("Page.loadEventFired")
        for _ in range(50):
            if len(w.outside()) >= 2 and w.problems:
                break
            b.evaluate("new Promise(function(r){setTimeout(r, 50)})")
    finally:
        b.quit()
    assert {"http://example.invalid/x.png", "https://api.example.invalid/stars"} <= w.outside()
    assert w.blocked and w.problems
