"""Recently read active grants by ``jti``, for introspection (RFC 7662), which a resource server may call on every
request it serves.

An entry answers only while it is younger than ``FRESH_SECONDS`` on the caller's clock and only for a grant that
was active and handed over when read; anything else goes to the database. So a revocation made by another replica
is seen here within ``FRESH_SECONDS`` (introspection must answer inactive within a second of a revocation on any
replica), and one made through this process's store is seen at once: the store forgets the grant in the same
call (``forget``). Expiry needs no forgetting: the caller compares ``expires_at`` with its clock.

Concurrent misses of one ``jti`` share one database read.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from bot.domain.models import Grant, GrantStatus

FRESH_SECONDS = 0.5
SIZE = 10_000


class RecentGrants:
    """A bounded map ``jti -> (grant, read at)`` in front of ``read(jti)`` (the database), least recently used
    dropped first."""

    def __init__(self, read: Callable[[str], Awaitable[Grant | None]], fresh_seconds: float = FRESH_SECONDS,
                 size: int = SIZE) -> None:
        self._read = read
        self._fresh = timedelta(seconds=fresh_seconds)
        self._size = size
        self._entries: OrderedDict[str, tuple[Grant, datetime]] = OrderedDict()
        self._jti_of: dict[str, str] = {}  # grant id -> jti, to forget by grant
        self._reading: dict[str, asyncio.Future] = {}
        self._stale_reads: set[asyncio.Future] = set()  # reads in flight when something was forgotten

    async def get(self, jti: str, now: datetime) -> Grant | None:
        """The grant with ``jti`` as read from the database at most ``FRESH_SECONDS`` before ``now`` when it was
        active and handed over then, else as read now; None when there is none."""
        entry = self._entries.get(jti)
        if entry is not None:
            grant, read_at = entry
            if read_at <= now < read_at + self._fresh:
                self._entries.move_to_end(jti)
                return grant
            self._drop(jti)
        pending = self._reading.get(jti)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._reading[jti] = future
        try:
            grant = await self._read(jti)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failure with no other waiter is not "never retrieved"
            raise
        else:
            future.set_result(grant)
            # Kept only if nothing was forgotten while it was read (a revocation that committed meanwhile).
            if (grant is not None and grant.status is GrantStatus.ACTIVE and grant.token_hash is not None
                    and future not in self._stale_reads):
                self._put(jti, grant, now)
            return grant
        finally:
            self._reading.pop(jti, None)
            self._stale_reads.discard(future)

    def forget(self, grant_id: str) -> None:
        """The grant ended or changed ``jti`` through this process: answer from the database from now on."""
        jti = self._jti_of.pop(grant_id, None)
        if jti is not None:
            self._entries.pop(jti, None)
        # A read in flight may have started before the change committed: its answer must not be kept.
        self._stale_reads.update(self._reading.values())

    def _put(self, jti: str, grant: Grant, now: datetime) -> None:
        self._entries[jti] = (grant, now)
        self._entries.move_to_end(jti)
        self._jti_of[grant.id] = jti
        while len(self._entries) > self._size:
            _, (dropped, _) = self._entries.popitem(last=False)
            self._jti_of.pop(dropped.id, None)

    def _drop(self, jti: str) -> None:
        entry = self._entries.pop(jti, None)
        if entry is not None:
            self._jti_of.pop(entry[0].id, None)
