"""Use case: the daily summary in the channel (DESIGN.md: ``GRANTBOT_SUMMARY_CRON`` in ``GRANTBOT_TIMEZONE``).

Every replica asks, on each sweep, which scheduled time has come last; the summary of that time is queued in the
outbox under a key made of the time, so it is posted once however many replicas ask, and a restart does not
post it again. The schedule's wall-clock time follows the time zone's DST rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from bot.domain.usecases.deps import Deps

WINDOW = timedelta(hours=24)
# A summary whose time passed while every replica was down is still posted if at most this late.
GRACE = timedelta(hours=6)


class Schedule(Protocol):
    def latest(self, now: datetime) -> datetime | None:
        """The last scheduled time at or before ``now`` (aware), within the last day; None if there is none."""


async def queue_due_summary(deps: Deps, schedule: Schedule, started_at: datetime | None = None) -> datetime | None:
    """Queue the summary of the last scheduled time if it is due and not yet queued; returns that time if this
    call queued it, else None. The summary covers the 24 h before the scheduled time.

    ``started_at``: when this process started. A time that passed before it (a summary missed while every replica
    was down) is caught up only if grantbot has a history before that time: a first start at 10:00 does not post
    a summary of the day before grantbot existed."""
    now = deps.clock.now()
    due = schedule.latest(now)
    if due is None or now - due > GRACE:
        return None
    if started_at is not None and due < started_at and not await deps.store.has_history_before(due):
        return None
    activity = await deps.store.activity(due - WINDOW, due, now)
    queued = await deps.store.add_notice(
        f"summary:{due.isoformat()}", None, "", now, "summary.posted",
        payload_extra={"summary": activity}, scheduled_for=due.isoformat(),
    )
    if queued:
        deps.changes.notify(f"summary:{due.isoformat()}")  # wakes the outbox worker
    return due if queued else None
