"""token_optimizer inside a real Hermes Agent (``hermes-agent==0.19.0``).

Hermes is installed into its own venv outside the repository,
``${TOKEN_OPTIMIZER_CACHE:-~/.cache/token-optimizer-tests}/hermes-venv``,
together with this checkout (editable, so the entry point
``hermes_agent.plugins: token-optimizer`` is registered there). The venv is
reused when present; a file lock serialises installs between concurrent runs.

``tests/hermes_realhost_driver.py`` then runs in that venv with a temporary
``HERMES_HOME``/``HOME`` whose ``config.yaml`` enables ``token-optimizer``: the
real plugin manager loads us, the real ``AIAgent.run_conversation`` talks to a
loopback stub model whose ``usage`` numbers push the context fill across the
20/35/50 % bands, Hermes' own ``/compress`` path compacts (in place and with
id rotation), and ten gateway-style sessions run at once on a
``hermes-gateway`` pool with the session-key contextvars bound.

The venv is installed on first use. If that is impossible (no registry, no suitable
Python) the tests skip with the reason, unless ``TOKEN_OPTIMIZER_REQUIRE_HOSTS=1``:
then they fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.realhost

HERMES_VERSION = "0.19.0"
ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "hermes_realhost_driver.py"
# Resolved at import time: the per-test fixtures redirect HOME afterwards.
CACHE = Path(os.environ.get("TOKEN_OPTIMIZER_CACHE")
             or Path("~/.cache/token-optimizer-tests").expanduser())
VENV = CACHE / "hermes-venv"
DIST_NAME = "token-optimizer-gateway"
MARKER = VENV / ".token-optimizer-ready.json"
REQUIRE = os.environ.get("TOKEN_OPTIMIZER_REQUIRE_HOSTS") == "1"
NUDGE = "[Token Optimizer] This session is getting long"
RESTORE = "# Session Checkpoint"


class HostUnavailable(Exception):
    pass


def _vpy() -> Path:
    return VENV / "bin" / "python"


def _run(cmd: list[str], timeout: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise HostUnavailable(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {tail}")


def _base_python() -> str:
    if (3, 11) <= sys.version_info[:2] < (3, 14):
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11"):
        found = shutil.which(name)
        if found:
            return found
    raise HostUnavailable("hermes-agent needs Python >=3.11,<3.14; none found")


def _marker_ok() -> bool:
    try:
        m = json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return False
    return bool(m.get("hermes") == HERMES_VERSION and m.get("root") == str(ROOT)
                and m.get("dist") == DIST_NAME and _vpy().exists())


def _install() -> None:
    """Create or repair the venv (caller holds the exclusive lock)."""
    if not _vpy().exists():
        _run([_base_python(), "-m", "venv", str(VENV)], 300)
    check = ("import importlib.metadata as m; import run_agent; "
             "print(m.version('hermes-agent'))")
    proc = subprocess.run([str(_vpy()), "-c", check], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0 or proc.stdout.strip() != HERMES_VERSION:
        _run([str(_vpy()), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              f"hermes-agent=={HERMES_VERSION}"], 900)
    # Earlier installs of this project (also under its former distribution name)
    # would register the entry point twice.
    subprocess.run([str(_vpy()), "-m", "pip", "uninstall", "-y", "-q", "token-optimizer",
                    DIST_NAME], capture_output=True, timeout=300)
    # This checkout, editable: the entry point is registered in the venv and the
    # code under test is the working tree.
    _run([str(_vpy()), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "-e", str(ROOT)], 600)
    where = subprocess.run(
        [str(_vpy()), "-c", "import token_optimizer, sys; sys.stdout.write(token_optimizer.__file__)"],
        capture_output=True, text=True, timeout=120)
    if where.returncode != 0 or not Path(where.stdout).resolve().is_relative_to(ROOT):
        raise HostUnavailable(f"token_optimizer in the Hermes venv is not this checkout: "
                              f"{where.stdout or where.stderr}")
    MARKER.write_text(json.dumps({"hermes": HERMES_VERSION, "root": str(ROOT), "dist": DIST_NAME,
                                  "at": time.time()}))


@contextlib.contextmanager
def hermes_venv() -> Iterator[Path]:
    """Yield the venv python, installing if required; held under a shared lock."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "hermes-venv.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _marker_ok():
            _install()
        fcntl.flock(lock, fcntl.LOCK_SH)  # others may use it, nobody reinstalls meanwhile
        yield _vpy()


@contextlib.contextmanager
def hermes_or_skip() -> Iterator[Path]:
    """:func:`hermes_venv`; a host that cannot be had (here or in the body) skips the test,
    or fails it with TOKEN_OPTIMIZER_REQUIRE_HOSTS=1."""
    try:
        with hermes_venv() as py:
            yield py
    except HostUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"real Hermes host required but unavailable: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("hermes-realhost")
    try:
        with hermes_venv() as py:
            return _drive(py, work)
    except HostUnavailable as exc:
        if REQUIRE:
            pytest.fail(f"real Hermes host required but unavailable: {exc}")
        pytest.skip(str(exc))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Hermes driver timed out: {exc}")
    raise AssertionError("unreachable")


def _drive(py: Path, work: Path) -> dict[str, Any]:
    home, hermes_home, state = work / "home", work / "hermes-home", work / "to-state"
    for d in (home, hermes_home):
        d.mkdir()
    (hermes_home / "config.yaml").write_text(
        "plugins:\n  enabled:\n    - token-optimizer\n"
        "model:\n  default: stub-model\n  context_length: 200000\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TOKEN_OPTIMIZER_", "HERMES_", "OPENAI_", "OPENROUTER_",
                                "ANTHROPIC_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "HOME": str(home), "HERMES_HOME": str(hermes_home), "TOKEN_OPTIMIZER_HOME": str(state),
        "TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS": "0",
        "TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS": "0",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    result = work / "result.json"
    t0 = time.time()
    proc = subprocess.run([str(py), str(DRIVER), str(result)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=240)
    if not result.exists():
        raise AssertionError(f"driver produced no result (rc={proc.returncode}):\n"
                             f"{proc.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(result.read_text())
    data["_seconds"] = time.time() - t0
    data["_state"] = str(state)
    data["_stderr"] = proc.stderr[-4000:]
    assert data["errors"] == [], data["errors"]
    return data


def _manifest(state: str, sid: str) -> list[dict[str, Any]]:
    path = Path(state) / "checkpoints" / sid / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _calls(run: dict[str, Any], hook: str) -> list[dict[str, Any]]:
    return [c for c in run["calls"] if c["hook"] == hook]


# ---------------------------------------------------------------- tests


def test_loaded_by_hermes_from_the_entry_point(run: dict[str, Any]) -> None:
    p = run["plugin"]
    assert p["loaded"] and p["enabled"] and p["error"] in (None, "None"), p
    assert p["source"] == "entrypoint" and p["kind"] == "standalone"
    assert p["module"] == "token_optimizer.hosts.hermes"
    assert "on_session_end" not in p["hooks"]
    assert {"pre_llm_call", "post_api_request", "pre_tool_call", "post_tool_call",
            "on_session_finalize", "on_session_reset"} <= set(p["hooks"])
    # Hermes' own hermes_state is what `import hermes_state` means in-process
    assert str(VENV) in run["hermes_state_file"] or "site-packages" in run["hermes_state_file"]
    assert str(ROOT) not in run["hermes_state_file"]
    assert run["_seconds"] < 180


def test_fill_band_checkpoints_from_real_usage(run: dict[str, Any]) -> None:
    cli = run["cli"]
    rows = _manifest(run["_state"], cli["session_id"])
    progressive = [(r["trigger"], r["fillPct"]) for r in rows
                   if r["trigger"].startswith("progressive-")]
    assert progressive == [("progressive-20", 20.5), ("progressive-35", 35.5),
                           ("progressive-50", 50.5)]
    st = cli["status"]
    # fill = the last call's prompt_tokens / model.context_length
    assert st["fillPct"] == 50.5 and st["contextWindow"] == 200000


def test_nudge_reaches_the_user_message_exactly_once(run: dict[str, Any]) -> None:
    turns = run["cli"]["turns"]
    firsts = [t["requests"][0] for t in turns]
    carrying = [i for i, r in enumerate(firsts) if NUDGE in r["users"][-1]]
    assert carrying == [3]  # turn 4: fill 50.5 %, quality < 70, a prior score exists
    for t in turns:
        for r in t["requests"]:
            assert sum(NUDGE in u for u in r["users"]) <= 1
    # Hermes replays it from api_content, but it is never added again
    later = turns[4]["requests"][0]["users"]
    assert sum(NUDGE in u for u in later) == 1 and NUDGE not in later[-1]


def test_tool_call_is_seen(run: dict[str, Any]) -> None:
    pre = [c for c in _calls(run, "pre_tool_call") if c["tool_name"] == "read_file"]
    post = [c for c in _calls(run, "post_tool_call") if c["tool_name"] == "read_file"]
    assert pre and post
    assert pre[0]["args"]["path"].endswith("notes.txt")
    assert pre[0]["session_id"] == run["cli"]["session_id"]


def test_compaction_capture_and_restore(run: dict[str, Any]) -> None:
    cli_sid = run["cli"]["session_id"]
    inplace, rotation = run["compact_in_place"], run["compact_rotation"]
    assert inplace["before"] == inplace["after"] == cli_sid  # in place: same id
    assert rotation["after"] != rotation["before"]           # rotation: child id
    compacts = [r for r in _manifest(run["_state"], cli_sid) if r["trigger"] == "compact"]
    assert len(compacts) == 2
    for c in (inplace, rotation):
        first = c["requests"][0]["users"][-1]
        assert RESTORE in first, first[:300]
    # the rotated child is still addressed by the chain's key
    assert rotation["key"] == cli_sid


def test_finalize_releases_the_session(run: dict[str, Any]) -> None:
    after = run["cli"]["after_finalize"]
    assert after["key_of"] is None and after["ledger_has"] is False
    tracked = after["tracked"]
    assert tracked["ledger_sessions"] == 0 and tracked["policy_states"] == 0


def test_slash_command_reports_this_chat(run: dict[str, Any]) -> None:
    out = run["cli"]["command"]
    assert run["cli"]["session_id"] in out
    assert "50.5%" in out and "quality" in out and "progressive-50" in out


def test_gateway_ten_sessions_at_once(run: dict[str, Any]) -> None:
    gw = run["gateway"]
    assert len(gw["threads"]) >= 2 and all(t.startswith("hermes-gateway") for t in gw["threads"])
    for i in range(10):
        assert gw["keys"][str(i)] == f"agent:main:telegram:dm:{i}"
        st = gw["status"][str(i)]
        assert st["fillPct"] == pytest.approx((75000 + i * 100) / 2000, abs=0.05)
        triggers = [c["trigger"] for c in st["checkpoints"]]
        assert "progressive-20" in triggers
    hooks_threads = {c["thread"] for c in _calls(run, "pre_llm_call")}
    assert any(t.startswith("hermes-gateway") for t in hooks_threads)
