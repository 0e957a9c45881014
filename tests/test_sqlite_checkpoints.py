"""On SQLite, what grantbot commits reaches the database file itself within moments, copied there by checkpoints
run beside the request path (``bot.store.wal_checkpoint``), not only when the WAL has grown to its fallback size
or when the last connection closes."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from tests.support import eventually

AUTO_APPROVED = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 600, "reason": "nightly job"}


def rows_in_the_database_file(path: str) -> int | None:
    """Access requests as the database file holds them, without the WAL (``immutable=1``: SQLite reads the file
    as it is); None while the file cannot be read (a checkpoint may be writing it)."""
    try:
        with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as reader:
            return reader.execute("SELECT COUNT(*) FROM access_requests").fetchone()[0]
    except sqlite3.DatabaseError:
        return None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_committed_requests_reach_the_database_file_while_grantbot_runs(grantbot):
    path = grantbot.engine.url.database
    for _ in range(20):
        status, answer = await grantbot.api.request_access(AUTO_APPROVED, nonce=uuid.uuid4().hex)
        assert status == 201, answer
    # Twenty requests write far fewer pages than the writer's own fallback checkpoint waits for (10,000): only the
    # checkpoints beside it copy them into the file while grantbot runs.
    await eventually(lambda: rows_in_the_database_file(path) == 20, timeout=5)
    status, answer = await grantbot.api.request_access(AUTO_APPROVED, nonce=uuid.uuid4().hex)
    assert status == 201, answer
    await eventually(lambda: rows_in_the_database_file(path) == 21, timeout=5)


async def test_a_checkpoint_that_fails_is_logged_once_and_tried_again(tmp_path, caplog):
    from bot.store.wal_checkpoint import WalCheckpointer

    not_a_database = tmp_path / "grantbot.db"
    not_a_database.write_bytes(b"this is not an SQLite file" * 200)
    checkpointer = WalCheckpointer(str(not_a_database))
    assert checkpointer.checkpoint() is None
    assert checkpointer.checkpoint() is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "bot.store.wal_checkpoint"]
    assert len(warnings) == 1 and "checkpoint failed" in warnings[0], warnings
    not_a_database.unlink()
    assert checkpointer.checkpoint() is not None  # a fresh file now: it works again, and says so
    assert any("work again" in r.getMessage() for r in caplog.records)
    await checkpointer.stop()
