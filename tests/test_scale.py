"""Scale: threads and many sessions through one runtime (issue 11, item 8)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from token_optimizer.events import Identity, TurnPrepare, Usage
from token_optimizer.fsutil import resolve_paths
from token_optimizer.policy import CheckpointPolicy, PolicySettings
from token_optimizer.runtime import TokenOptimizer


def test_threads_many_sessions_stay_bounded_and_lose_no_decision(
    tmp_path: Path, small_cap: int
) -> None:
    """Item 8 with small numbers (bench/bench_threads.py prints the full figure)."""
    root = tmp_path / "state"
    rt = TokenOptimizer(root, settings=PolicySettings(checkpoint_cooldown_ms=0,
                                                      evaluation_cooldown_ms=0), cwd=str(tmp_path))
    errors: list[BaseException] = []

    def drive(t: int) -> None:
        try:
            for i in range(15):
                ident = Identity(f"t{t}-{i}", f"agent:main:web:t{t}-{i}", "main", "web")
                rt.session_start(ident)
                rt.usage(Usage(ident, model="claude-sonnet-4", input_tokens=2_000,
                               output_tokens=400, cache_read_tokens=118_000,
                               context_budget=200_000))
                rt.turn_prepare(TurnPrepare(ident, f"continue the parser work {i}",
                                            cwd=str(tmp_path)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert all(len(c) <= c.cap for c in rt.collections().values())
    assert len(rt.continuity_injected) == small_cap  # 90 sessions went through a cap of 10
    fresh = CheckpointPolicy(resolve_paths(root), PolicySettings())
    dirs = sorted((root / "checkpoints").iterdir())
    assert len(dirs) == 90
    total = 0
    for d in dirs:
        bands = fresh.peek_state(d.name).captured_fill_bands
        triggers = [json.loads(x)["trigger"] for x in (d / "manifest.jsonl").read_text().splitlines()]
        total += len(triggers)
        assert triggers, d.name
        for trig in triggers:
            if trig.startswith("progressive-"):
                assert float(trig.split("-")[1]) in bands, (d.name, trig)
    # every checkpoint is in the continuity index, none twice
    listed = rt.continuity.list_all_checkpoints()
    assert len(listed) == total and len({e.path for e in listed}) == total
    assert len(rt.index) == 90
    rt.close()
