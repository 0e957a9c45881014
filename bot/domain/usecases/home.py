"""Use case: what one person sees in grantbot's App Home — the requests they may decide now, the active grants
and the last decisions people made.

Who may decide follows ``bot.domain.approvals``: a listed approver or a member of one of the request's approver
groups, and not excluded (who triggered the pipeline). Read-only: nothing here changes state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.domain.approvals import is_approver
from bot.domain.credentials import CredentialState
from bot.domain.errors import ApproverDirectoryUnavailable
from bot.domain.models import AccessRequest, Approval, Grant, Verdict
from bot.domain.ports import HomeReads
from bot.domain.usecases.deps import Deps

# How many pending requests are looked at for one viewer, newest first: pending requests are few (each waits for
# people), and a bound keeps a flood of them from making every Home open scan the table.
PENDING_SCAN_LIMIT = 500
GRANTS_LIMIT = 20
RECENT_LIMIT = 10
FAILED_REVOCATIONS_LIMIT = 10


@dataclass(frozen=True)
class PendingItem:
    """A pending request the viewer may decide, the verdicts given so far, and the viewer's own (None: not yet)."""

    request: AccessRequest
    approvals: tuple[Approval, ...] = ()
    mine: Verdict | None = None


@dataclass(frozen=True)
class Decided:
    """A request people decided (or let time out), its grant if one was issued, and every verdict given on it."""

    request: AccessRequest
    grant: Grant | None = None
    approvals: tuple[Approval, ...] = ()


@dataclass(frozen=True)
class HomeView:
    """Everything the App Home shows ``user`` at ``now`` (aware UTC).

    ``pending``: requests the user may decide, newest first (of the newest ``PENDING_SCAN_LIMIT`` pending
    requests; ``pending_unscanned`` counts the older ones, not looked at); ``grants``: active grants with their
    environment, soonest to expire first (``grants_total`` counts all of them); ``recent``: the last decisions on
    requests that went to people, newest first; ``groups_unknown``: some approver groups could not be looked up, so
    requests the user may decide as a group member can be missing; ``notice``: a sentence for the top of the page
    (mrkdwn, already escaped), e.g. why the user's last click changed nothing.
    """

    user: str
    now: datetime
    pending: tuple[PendingItem, ...] = ()
    pending_unscanned: int = 0
    grants: tuple[tuple[Grant, str], ...] = ()
    grants_total: int = 0
    recent: tuple[Decided, ...] = ()
    groups_unknown: bool = False
    notice: str | None = None
    # Credential revocations that failed every retry (grant id, the account and its error), newest first: accounts
    # that may still work, for everyone to see until someone fixes them.
    failed_revocations: tuple[tuple[str, CredentialState], ...] = ()


async def home_view(deps: Deps, reads: HomeReads, user: str, notice: str | None = None) -> HomeView:
    """The App Home of ``user`` (a Slack user ID) now. Group membership comes from ``deps.directory``; when it
    cannot be known (``ApproverDirectoryUnavailable``) those requests are left out and ``groups_unknown`` is set,
    instead of failing the whole page. Raises what the store raises (database errors)."""
    now = deps.clock.now()
    mine: list[AccessRequest] = []
    groups_unknown = False
    scanned, pending_total = await reads.pending_requests_to_scan(now, PENDING_SCAN_LIMIT)
    for request in scanned:
        if user in request.excluded_approvers:
            continue
        try:
            if await is_approver(deps.directory, request, user):
                mine.append(request)
        except ApproverDirectoryUnavailable:
            groups_unknown = True
    recent = await reads.recent_decisions(RECENT_LIMIT)
    verdicts = await reads.approvals_of([r.id for r in mine] + [r.id for r, _ in recent])
    pending = tuple(
        PendingItem(r, tuple(verdicts[r.id]), next((a.verdict for a in verdicts[r.id] if a.approver == user), None))
        for r in mine
    )
    grants, grants_total = await reads.active_grants_with_environment(now, GRANTS_LIMIT)
    failed = await reads.failed_revocations(FAILED_REVOCATIONS_LIMIT)
    return HomeView(user=user, now=now, pending=pending, pending_unscanned=pending_total - len(scanned),
                    grants=tuple(grants), grants_total=grants_total,
                    recent=tuple(Decided(r, g, tuple(verdicts[r.id])) for r, g in recent),
                    groups_unknown=groups_unknown, notice=notice, failed_revocations=tuple(failed))
