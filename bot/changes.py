"""In-process change signals: wake long polls and the outbox worker right after a commit (``Changes`` port)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable


class LocalChanges:
    """Per-request ``asyncio.Event`` waiters plus subscribers called on every change.

    Only this process is told; other replicas notice by re-reading the database (long polls re-check every second).
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._subscribers: list[Callable[[str], None]] = []
        self.closing = False

    def shutdown(self) -> None:
        """Wake every waiter and make later waits return at once (the process is draining)."""
        self.closing = True
        for events in self._waiters.values():
            for event in events:
                event.set()

    def subscribe(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    def notify(self, request_id: str) -> None:
        for event in self._waiters.get(request_id, ()):
            event.set()
        for callback in self._subscribers:
            callback(request_id)

    def waiting(self, request_id: str) -> int:
        """How many long polls wait for a change of ``request_id`` now."""
        return len(self._waiters.get(request_id, ()))

    async def wait(self, request_id: str, timeout: float) -> None:
        if self.closing:
            return
        event = asyncio.Event()
        self._waiters[request_id].add(event)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as the
            # event is set (gh-86296), and a task that outlives its cancellation hangs the shutdown.
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters[request_id].discard(event)
            if not self._waiters[request_id]:
                del self._waiters[request_id]
