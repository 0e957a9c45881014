"""SQLite's WAL checkpoints, moved off the request path.

In WAL mode a commit appends the pages it changed to the ``-wal`` file; a checkpoint copies them back into the
database file. By default the connection that commits runs the checkpoint itself, inside that commit, each time the
WAL passes 1,000 pages (SQLite's ``wal_autocheckpoint``). On grantbot's request path that is the one connection the
grouped writes share (``bot.store.group_commit``), so every caller of that group waited for the copy, and a page
written by every group (an index's last leaf) was copied back once per thousand pages of WAL instead of once per
checkpoint. Measured with ``benchmarks/compare.py``'s load (SQLite, 16 connections, one core): no checkpoints on the
writer raised the auto-approved request path from about 1,410 to 1,600-1,720 requests/s; with this task
checkpointing beside it, 1,640-1,660 requests/s.

So the writer's connection checkpoints only as a fallback (``FALLBACK_PAGES``, should this task stop), and this task
runs a PASSIVE checkpoint every ``interval_seconds`` on a connection of its own, in a thread: PASSIVE waits for no
reader or writer and blocks none (https://www.sqlite.org/c3ref/wal_checkpoint_v2.html), and SQLite copies each page
once per checkpoint, its latest version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

log = logging.getLogger(__name__)

FALLBACK_PAGES = 10_000  # the writer's own wal_autocheckpoint: 40 MB of WAL with 4 KiB pages
# Often, so that each checkpoint is short: it shares the CPU with the loop (on one core, a second's worth of pages
# copied at once held requests up: p99 42-47 ms every 1 s, 23-25 ms every 0.2 s, 20-23 ms every 0.1 s).
INTERVAL_SECONDS = 0.1


class WalCheckpointer:
    """PASSIVE checkpoints of the SQLite database file at ``path`` every ``interval_seconds`` (seconds), until
    :meth:`stop`. A checkpoint that fails (the file locked past the busy timeout, a disk error) is logged at warning
    and the next one tries again; the fallback keeps the WAL bounded meanwhile."""

    def __init__(self, path: str, interval_seconds: float = INTERVAL_SECONDS) -> None:
        self._path = path
        self._interval = interval_seconds
        self._connection: sqlite3.Connection | None = None
        self._task: asyncio.Task | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-wal-checkpoint")

    async def stop(self) -> None:
        """Stop the loop, let a checkpoint under way finish (SQLite cannot be interrupted mid-copy from here), and
        close the connection. The last connection to close checkpoints what is left (SQLite does that itself)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            await asyncio.to_thread(self._connection.close)
            self._connection = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            work = asyncio.ensure_future(asyncio.to_thread(self.checkpoint))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                # A thread cannot be stopped: wait for it, so that stop() does not close the connection under it.
                await work
                raise

    def checkpoint(self) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint (synchronous: run on a thread). Returns SQLite's ``(busy, log, checkpointed)``
        (``PRAGMA wal_checkpoint``: busy is 1 when another checkpoint held the lock; log and checkpointed are frame
        counts), or None when it failed."""
        try:
            if self._connection is None:
                # check_same_thread off: the calls come from the executor's threads, one at a time.
                self._connection = sqlite3.connect(self._path, timeout=1.0, isolation_level=None,
                                                   check_same_thread=False)
            row = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if self._connection is not None:  # the next try opens the file afresh (it may have been replaced)
                self._connection.close()
                self._connection = None
            if not self._failing:  # once per stretch of failures, not once a second
                log.warning("SQLite WAL checkpoint failed (the writer's own checkpoints take over): %s", exc)
            self._failing = True
            return None
        if self._failing:
            log.info("SQLite WAL checkpoints work again")
            self._failing = False
        return tuple(row) if row else None
