"""Ports: what the use cases need from the outside world, as Protocols (implemented in store/, tokens/, app.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from bot.domain.models import (
    AccessRequest,
    Approval,
    AutoApproveQuota,
    Grant,
    OutboxEvent,
    RequestStatus,
    Tally,
    Verdict,
    Vote,
)
from bot.domain.policy import Usage


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC now."""


class TokenMinter(Protocol):
    def mint(self, grant: Grant) -> str:
        """Sign an RFC 9068 access token for ``grant`` (iat = ``issued_at``, exp = ``expires_at``)."""

    def verify(self, token: str) -> dict[str, object] | None:
        """Claims of a token this issuer signed with a valid signature, else None (expiry is not checked)."""

    def token_hash(self, token: str) -> str:
        """A one-way hash of a token for storage and comparison."""


class Changes(Protocol):
    """In-process notification that a request changed, so long polls wake without hammering the database.

    ``closing`` turns true when the process drains: long polls then answer with what they have.
    """

    closing: bool

    def notify(self, request_id: str) -> None: ...

    async def wait(self, request_id: str, timeout: float) -> None:
        """Return when ``notify(request_id)`` is called or ``timeout`` seconds pass."""


class Store(Protocol):
    """Persistence. Every method is one transaction; every state change is a conditional UPDATE."""

    async def find_by_idempotency_key(self, identity: str, key: str) -> tuple[AccessRequest, str] | None:
        """The request made earlier with this key, with the hash of the body it was made with."""

    async def insert_request(
        self,
        request: AccessRequest,
        grant: Grant | None,
        events: list[OutboxEvent],
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        quota: AutoApproveQuota | None = None,
    ) -> bool:
        """Insert a new request (and its grant when auto-approved). False when the idempotency key is taken.
        With ``quota``, raises :class:`AutoApproveLimitReached` (and stores nothing) when the rule's automatic
        approvals are used up, counted inside the same transaction."""

    async def usage(self, identity: str, rule: str, since: datetime) -> Usage:
        """What the policy's guard rails need: automatic approvals of ``identity`` under ``rule`` after ``since``
        and the scopes ``identity`` was ever granted."""

    async def get_request(self, request_id: str) -> AccessRequest | None: ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...

    async def grant_for_request(self, request_id: str) -> Grant | None: ...

    async def grant_by_jti(self, jti: str) -> Grant | None: ...

    async def decide(
        self,
        request_id: str,
        approver: str,
        verdict: Verdict,
        now: datetime,
        resolve: Callable[[Tally], RequestStatus | None],
        grant: Grant | None,
        events: list[OutboxEvent],
        *,
        reason: str | None = None,
        details: dict | None = None,
        resolved_events: list[OutboxEvent] = (),
    ) -> Vote:
        """Record ``approver``'s verdict on a pending request, once per person, in one transaction.

        With the verdict counted, ``resolve(tally)`` says whether the request is now APPROVED (``grant`` is
        inserted) or DENIED, or None (still pending); ``events`` are queued whenever the verdict was recorded,
        ``resolved_events`` only when it resolved the request. ``reason`` (the approver's words) is audited and
        becomes the request's ``denial_reason`` when this verdict denies it; ``details`` join the audit data.
        Counting and resolving are serialised per request, so concurrent verdicts resolve it exactly once.
        """

    async def approvals(self, request_id: str) -> list[Approval]:
        """Every verdict given on a request, oldest first."""

    async def mark_handed_over(self, grant_id: str, token_hash: str, now: datetime,
                               events: list[OutboxEvent] = ()) -> bool:
        """Record that the token was handed over, queueing ``events`` with it; False if it already was (a token
        is handed over once)."""

    async def expire_due_grants(self, now: datetime, limit: int) -> list[Grant]:
        """End active grants whose ``expires_at <= now``, each with a ``grant.expired`` event; returns them."""

    async def expire_pending_requests(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Mark pending requests past their deadline ``expired``, each with a ``card.update`` event."""

    async def remind_pending_requests(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Clear ``remind_at`` of pending requests it has come for, each with a ``request.reminder`` event."""

    async def forget_stale_signatures(self, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` replay records (used signatures and CI tokens) stale at ``now``; returns how many."""

    async def revoke_grant(self, grant_id: str, by: str, now: datetime, events: list[OutboxEvent],
                           **audit) -> bool:
        """End an active grant early; False if it was not active. ``audit``: extra data of its audit event."""

    async def active_grants(self, now: datetime, *, identities: list[str] | None = None,
                            issued_at_or_before: datetime | None = None, limit: int | None = None) -> list[Grant]:
        """Active grants at ``now`` (status active, not yet past ``expires_at``), soonest to expire first."""

    async def count_active_grants(self, now: datetime) -> int: ...

    async def active_identities(self, now: datetime) -> list[str]:
        """Distinct identities holding an active grant at ``now``."""

    async def pending_requests(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests within their deadline, oldest first, at most ``limit``; and their total count."""

    async def requests_by_id(self, request_ids: list[str]) -> dict[str, AccessRequest]: ...

    async def add_notice(self, key: str, channel: str | None, text: str, now: datetime, audit_kind: str,
                         payload_extra: dict | None = None, **audit) -> bool:
        """Queue a message not about one request, once per ``key`` across replicas; False if queued before."""

    async def activity(self, since: datetime, until: datetime, now: datetime, top: int = 5) -> dict:
        """Counts of what happened in ``[since, until)`` and what is active at ``now`` (the daily summary)."""


class ApproverDirectory(Protocol):
    """Who is in a Slack user group (implemented in ``bot.slack.directory`` with ``usergroups.users.list``)."""

    async def members(self, group_id: str) -> frozenset[str]:
        """Slack user IDs of the group's members; empty for an unknown group.

        Raises :class:`~bot.domain.errors.ApproverDirectoryUnavailable` when membership cannot be known now.
        """


class HomeReads(Protocol):
    """Read-only queries behind the Slack App Home (implemented by ``bot.store.repository.SqlStore``)."""

    async def pending_requests_to_scan(self, now: datetime, limit: int) -> tuple[list[AccessRequest], int]:
        """Pending requests inside their deadline at ``now``, newest first, at most ``limit``; and how many there
        are in all."""

    async def approvals_of(self, request_ids: list[str]) -> dict[str, list[Approval]]:
        """Every verdict on each request, oldest first."""

    async def active_grants_with_environment(self, now: datetime, limit: int) -> tuple[list[tuple[Grant, str]], int]:
        """Active grants, soonest to expire first, with their environment, at most ``limit``; and the total."""

    async def recent_decisions(self, limit: int) -> list[tuple[AccessRequest, Grant | None]]:
        """The last decided requests that went to people, newest first, with their grants."""
