"""Use case: a refused click or command leaves an audit event (``bot.domain.refusals``), rate-limited by the
:class:`~bot.domain.ports.RefusalLog`."""

from __future__ import annotations

from bot.domain.errors import DomainError
from bot.domain.refusals import Refusal
from bot.domain.usecases.deps import Deps


async def record_refusal(deps: Deps, kind: str, who: str, error: DomainError, request_id: str | None = None) -> None:
    """Audit that ``who`` (a Slack user ID) was refused with ``error`` (its sentence is the reason, its code goes
    with it); a no-op when no refusal log is wired."""
    if deps.refusals is not None:
        await deps.refusals.record(Refusal(kind, who, error.detail, request_id, {"code": error.code}),
                                   deps.clock.now())
