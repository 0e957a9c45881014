"""Use case: a machine asks for access (``POST /v1/access-requests``); the policy decides what happens."""

from __future__ import annotations


import hashlib
import json
import logging
import re
import uuid
from dataclasses import replace
from datetime import timedelta

from bot.domain.approvals import actor_of, who_may_approve
from bot.domain.errors import (
    AutoApproveLimitReached,
    DomainError,
    IdempotencyConflict,
    InvalidRequest,
    SignatureReplayed,
    UnknownEnvironment,
)
from bot.domain.models import (
    MAX_IDENTITY,
    AccessRequest,
    AccessRequestInput,
    AutoApproveQuota,
    Caller,
    Decision,
    EventKind,
    Grant,
    OutboxEvent,
    RequestStatus,
)
from bot.domain.policy import PolicyDecision, apply_guard_rails, decide, granted_ttl, unknown_environment
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.issue_credentials import accounts_for, discard_credentials, issue_credentials
from bot.domain.usecases.read_request import RequestView, hand_over

log = logging.getLogger(__name__)
_SCOPE = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")  # RFC 6749 §3.3 scope-token: no spaces, quotes or backslashes


def new_grant(request: AccessRequest, now, scopes: tuple[str, ...] | None = None,
              ttl_seconds: int | None = None) -> Grant:
    """A grant for ``request`` whose TTL counts from ``now`` (the approval), not from the request; ``scopes`` and
    ``ttl_seconds`` narrow it when an approver approved with changes (checked by the caller)."""
    return Grant(
        id=str(uuid.uuid4()),
        request_id=request.id,
        identity=request.identity,
        scopes=scopes if scopes is not None else request.scopes,
        audience=request.audience,
        environment=request.environment,
        jti=str(uuid.uuid4()),
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds if ttl_seconds is not None else request.ttl_seconds),
    )


def _validate(deps: Deps, body: AccessRequestInput) -> None:
    if not body.scopes:
        raise InvalidRequest("Ask for at least one scope, e.g. \"scopes\": [\"db:read\"].")
    for scope in body.scopes:
        if not _SCOPE.match(scope):
            raise InvalidRequest(
                f"Scope {scope!r} is not valid: a scope is one word without spaces, quotes or backslashes "
                "(RFC 6749 §3.3); send several scopes as separate list items."
            )
    if (unknown := unknown_environment(deps.policy, body.environment)) is not None:
        raise UnknownEnvironment(unknown)
    if body.ttl_seconds is not None and body.ttl_seconds <= 0:
        raise InvalidRequest("ttl_seconds must be a positive number of seconds.")


def _body_hash(body: AccessRequestInput) -> str:
    # The fields by hand, not dataclasses.asdict (a deep copy on every request); the same JSON as asdict gave.
    fields = {"environment": body.environment, "scopes": body.scopes, "ttl_seconds": body.ttl_seconds,
              "reason": body.reason, "audience": body.audience, "context": body.context}
    if body.ssh_public_key is not None:  # left out when absent, as before the field existed: a retry after an
        fields["ssh_public_key"] = body.ssh_public_key  # upgrade still matches
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


async def request_access(
    deps: Deps, caller: Caller, body: AccessRequestInput, idempotency_key: str | None = None,
    refuse_unless_replay: DomainError | None = None,
) -> RequestView:
    """Create an access request and apply the policy.

    Returns the view of the request: ``approved`` with a grant and its token (auto-approve), ``pending`` (an
    approval card is queued in the outbox) or ``denied``. A retry with the same ``idempotency_key`` returns the
    first request's current state instead of creating another. ``refuse_unless_replay``: the caller may only
    replay (its CI token already created a request); raised when ``idempotency_key`` names no earlier request.
    Raises :class:`InvalidRequest` (bad scopes, unknown environment, TTL above the cap), :class:`IdempotencyConflict`
    and ``CredentialsUnavailable`` (an auto-approved grant's credentials could not be made: nothing is stored,
    nothing is left in the provider).

    A signature the caller's authentication left unrecorded (``Caller.signature``) is written with the request's
    rows, or on its own before an Idempotency-Key replay or before credentials are made;
    :class:`SignatureReplayed` (nothing stored) when it was used before. When this raises anything else the
    signature may still be unrecorded: the caller records it (:func:`record_signature`), since a refused request
    uses its signature up too.
    """
    _validate(deps, body)
    if (actor := actor_of(caller, body.context)) is not None and len(actor) > MAX_IDENTITY:
        raise InvalidRequest(
            f"The actor (the CI token's actor or user_login claim, else context.actor) is {len(actor)} characters "
            f"long; grantbot keeps at most {MAX_IDENTITY}, which every CI login fits in.")
    body_hash = _body_hash(body)
    if idempotency_key:
        earlier = await deps.store.find_by_idempotency_key(caller.identity, idempotency_key)
        if earlier is not None:
            await record_signature(deps, caller)
            return await _replay(deps, earlier, body_hash)
    if refuse_unless_replay is not None:
        raise refuse_unless_replay

    policy = deps.policy
    now = deps.clock.now()
    # Rules see the audience the token will carry, so match.audiences also holds for requests that name none.
    audience = body.audience or policy.audience_for(body.environment) or deps.issuer
    outcome = decide(policy, caller, body.environment, body.scopes, audience, reason=body.reason, at=now)
    quota = None
    rule = outcome.rule
    if outcome.decision is Decision.AUTO_APPROVE and rule is not None and policy.sends_to_people(rule):
        limit = rule.auto_approve_limit
        since = now - timedelta(seconds=limit.per_seconds if limit else 0)
        usage = await deps.store.usage(caller.identity, rule.name, since)
        outcome = apply_guard_rails(policy, outcome, caller.identity, body.scopes, usage)
        if outcome.decision is Decision.AUTO_APPROVE and limit is not None:
            quota = AutoApproveQuota(limit.count, since)

    ttl = body.ttl_seconds
    if outcome.decision is not Decision.DENY:
        ttl = granted_ttl(policy, rule, ttl)  # raises TTLTooLong: nothing is stored

    request = _new_request(deps, caller, body, audience, outcome, ttl or policy.default_ttl(rule), now)
    try:
        return await _store(deps, caller, request, idempotency_key, body_hash, quota)
    except AutoApproveLimitReached as exc:
        # Another request took the last automatic approval while this one was being decided: people decide it.
        why = (f"auto-approve limit reached: {exc.count} automatic approvals of {caller.identity} under rule "
               f"{rule.name!r} in the last {rule.auto_approve_limit.per_seconds} s; people decide this one")
        outcome = PolicyDecision(Decision.REQUIRE_APPROVAL, rule, why, outcome.reasons + (why,), "auto_approve_limit")
        request = _new_request(deps, caller, body, audience, outcome, request.ttl_seconds, now)
        return await _store(deps, caller, request, idempotency_key, body_hash, None)


async def record_signature(deps: Deps, caller: Caller) -> None:
    """Write the replay record of the caller's signature if it is still unwritten (``Caller.signature``).
    Raises :class:`SignatureReplayed` when the signature was used before."""
    signature = caller.signature
    if signature is None or signature.recorded:
        return
    signature.recorded = True
    if not await deps.store.remember_signature(signature.digest, signature.expires_at, signature.now):
        raise SignatureReplayed(caller.identity)


def _new_request(
    deps: Deps, caller: Caller, body: AccessRequestInput, audience: str, outcome: PolicyDecision, ttl: int, now
) -> AccessRequest:
    policy = deps.policy
    rule = outcome.rule
    request = AccessRequest(
        id=str(uuid.uuid4()),
        identity=caller.identity,
        environment=body.environment,
        scopes=body.scopes,
        ttl_seconds=ttl,
        audience=audience,
        reason=body.reason,
        context=dict(body.context),
        ssh_public_key=body.ssh_public_key,
        status=RequestStatus.PENDING,
        decision=outcome.decision,
        rule=rule.name if rule else None,
        decision_reason=outcome.reason,
        decision_reasons=outcome.reasons,
        **who_may_approve(policy, rule, caller, body.context),
        channel=(rule.channel if rule else None) or deps.default_channel or policy.defaults.channel,
        created_at=now,
        expires_at=None,
    )
    if outcome.decision is Decision.DENY:
        request.status, request.decided_at, request.decided_by = RequestStatus.DENIED, now, "policy"
    elif outcome.decision is Decision.AUTO_APPROVE:
        request.status, request.decided_at, request.decided_by = RequestStatus.APPROVED, now, "policy"
    else:
        request.expires_at = now + timedelta(seconds=policy.pending_timeout(rule))
        if (after := policy.remind_after(rule)) is not None:
            request.remind_at = now + timedelta(seconds=after)
    return request


async def _store(
    deps: Deps,
    caller: Caller,
    request: AccessRequest,
    idempotency_key: str | None,
    body_hash: str,
    quota: AutoApproveQuota | None,
) -> RequestView:
    grant = None
    token = None
    events: list[OutboxEvent] = []
    accounts = ()
    credentials = ()
    if request.status is RequestStatus.APPROVED:
        grant = new_grant(request, request.created_at)
        # The accounts are made, with their secrets, before anything is stored: a provider that fails fails the
        # request (503) with nothing stored; one made and then not recorded is removed again below.
        accounts = accounts_for(deps, request, grant)
        if accounts:
            await record_signature(deps, caller)  # a replay must not make accounts, even for a moment
        credentials = await issue_credentials(deps, accounts, fresh=True) if accounts else ()
        token = deps.tokens.mint(grant)
        grant.token_hash, grant.delivered_at = deps.tokens.token_hash(token), request.created_at
    elif request.status is RequestStatus.PENDING:
        events.append(OutboxEvent(EventKind.CARD_POST, request.id))

    signature = caller.signature if caller.signature is not None and not caller.signature.recorded else None
    try:
        inserted = await deps.store.insert_request(request, grant, events, idempotency_key, body_hash, quota=quota,
                                                   accounts=accounts, signature=signature)
    except (AutoApproveLimitReached, SignatureReplayed):
        if signature is not None:
            signature.recorded = True  # written (or found used) in that transaction
        await discard_credentials(deps, accounts)
        raise
    except BaseException:
        await discard_credentials(deps, accounts)
        raise
    if signature is not None and inserted:
        signature.recorded = True
    if not inserted:
        await discard_credentials(deps, accounts)
        await record_signature(deps, caller)
        # Lost a race with a concurrent retry carrying the same key: answer as that one did.
        earlier = await deps.store.find_by_idempotency_key(request.identity, idempotency_key or "")
        if earlier is None:  # pragma: no cover - the unique key that refused us must exist
            raise InvalidRequest("The Idempotency-Key conflicted with a request that no longer exists; retry.")
        return await _replay(deps, earlier, body_hash)
    deps.changes.notify(request.id)
    if request.status is not RequestStatus.PENDING:
        deps.observer.request_decided(request, "policy")
    if grant is not None:
        deps.observer.grant_issued(grant)
    if log.isEnabledFor(logging.INFO):  # its fields are not built for nothing at WARNING
        log.info("access request %s of %s for %s in %s: %s (%s)", request.id, request.identity,
                 " ".join(request.scopes), request.environment, request.status.value, request.decision_reason,
                 extra={"access_request": request.id, "identity": request.identity,
                        "decision": request.decision.value, "status": request.status.value, "rule": request.rule})
    return RequestView(request, grant, token, credentials=credentials)


async def _replay(deps: Deps, earlier: tuple[AccessRequest, str], body_hash: str) -> RequestView:
    request, earlier_hash = earlier
    if earlier_hash != body_hash:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used for a different request body; use a new key for a new request."
        )
    return replace(await hand_over(deps, request), replayed=True)
