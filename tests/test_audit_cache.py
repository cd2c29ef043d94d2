"""The audit cache refuses symlinks and never leaves a transaction open (audit/cache.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from token_optimizer.audit import cache as cmod
from token_optimizer.audit.cache import CACHE_FILE, AuditCache


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmod, "_warned", set(), raising=False)


def test_round_trip(tmp_path: Path) -> None:
    c = AuditCache(tmp_path / "state" / CACHE_FILE)
    c.put("a", {"x": 1})
    c.flush()
    c.close()
    assert AuditCache(tmp_path / "state" / CACHE_FILE).get("a") == {"x": 1}
    assert (tmp_path / "state" / CACHE_FILE).is_file()


@pytest.mark.parametrize("suffix", ["", "-wal", "-journal"])
def test_symlink_at_the_cache_path_is_refused(tmp_path: Path, suffix: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    (state / (CACHE_FILE + suffix)).symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        c = AuditCache(state / CACHE_FILE)
        c.put("a", {"x": 1})
        c.flush()
        c.close()
        AuditCache(state / CACHE_FILE).close()
    assert victim.read_bytes() == b""
    assert c.get("a") is None
    warned = [r for r in caplog.records if "not a regular file" in r.getMessage()]
    assert len(warned) == 1  # once per process


def test_symlinked_cache_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    state = tmp_path / "state"
    state.symlink_to(outside)
    c = AuditCache(state / CACHE_FILE)
    c.put("a", 1)
    c.flush()
    c.close()
    assert os.listdir(outside) == []


def test_unencodable_value_rolls_back_and_logs_once(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    c = AuditCache(tmp_path / CACHE_FILE)
    c.put("good", 1)
    c.flush()
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        for _ in range(2):
            c.put("good", 2)
            c.put("bad", object())
            c.flush()  # does not raise
            assert c._con is not None and not c._con.in_transaction
    assert len([r for r in caplog.records if "not written" in r.getMessage()]) == 1
    assert c.get("good") == 1 and c.get("bad") is None  # rolled back, nothing half-written
    c.put("good", 3)
    c.flush()
    c.close()
    assert AuditCache(tmp_path / CACHE_FILE).get("good") == 3


def test_large_raw_values_round_trip_in_pieces(tmp_path: Path) -> None:
    from token_optimizer.audit.cache import BLOB_CHUNK

    big = bytearray(os.urandom(3 * BLOB_CHUNK + 12345))
    c = AuditCache(tmp_path / CACHE_FILE)
    c.put_bytes("big", big)
    c.put_bytes("small", b"x")
    c.flush()
    c.put_bytes("big", big[:BLOB_CHUNK + 1])  # replaced by a shorter one
    c.flush()
    c.close()
    again = AuditCache(tmp_path / CACHE_FILE)
    assert again.get_bytes("big") == bytes(big[:BLOB_CHUNK + 1])
    assert again.get_bytes("small") == b"x"
    again.close()
