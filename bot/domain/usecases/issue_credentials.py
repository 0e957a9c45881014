"""Use cases: a grant's real credentials — made when the grant is issued, their secrets set when the token is handed
over (and again on reissue), never stored (DESIGN.md "Real credentials").

When: an auto-approved grant's accounts are made with their secrets before the request is stored, so a provider
that cannot be reached answers 503 and nothing is stored; an approval makes them, without a secret, before the
vote is recorded, so the approval stays pending (with a thread reply) when a provider fails; the first long poll
sets a fresh secret (:func:`hand_over_credentials`) and hands it over once with the token. An account made but never
recorded (a crash in between, a vote that lost a race) is removed right away, or found by reconciliation.

Secrets are set under the grant's hand-over lease (``Store.claim_hand_over``): two long polls (or a poll and a
reissue) never set two passwords of which only one reaches its caller, and a revocation never runs while a secret
is being set.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from bot.domain.credentials import Account, Credential, ProviderSpec
from bot.domain.errors import CredentialsRefused, CredentialsUnavailable
from bot.domain.models import AccessRequest, Grant, Verdict
from bot.domain.usecases.deps import Deps

log = logging.getLogger(__name__)

# How long one caller may hold a grant's hand-over lease; setting secrets takes milliseconds, a provider that stops
# answering at most its time limits, and a crashed holder delays the next hand-over (or a revocation) this long.
HAND_OVER_LEASE_SECONDS = 30


def accounts_for(deps: Deps, request: AccessRequest, grant: Grant) -> tuple[Account, ...]:
    """The accounts a grant under the request's rule gets, per the policy in force (empty without
    ``credentials:``), knowing the grant (who, where, what, from when until when) and the public key the request
    carried. Raises :class:`CredentialsUnavailable` when a provider cannot be built (its variable is unset, or
    credentials are not wired in)."""
    rule = deps.policy.rule_named(request.rule)
    if rule is None or not rule.credentials:
        return ()
    if deps.credentials is None:
        raise CredentialsUnavailable("This grant needs real credentials, but none can be made by this grantbot.")
    accounts = []
    for entry in rule.credentials:
        spec = deps.policy.provider_named(entry.provider)
        if spec is None:  # pragma: no cover - the policy refuses an unknown provider when it loads
            raise CredentialsUnavailable(f"rule {rule.name} names an unknown provider {entry.provider!r}.")
        provider = deps.credentials.provider(spec)
        accounts.append(Account(grant.id, spec.name, spec.kind, provider.username(grant.id), grant.expires_at,
                                entry.params(), spec.target(), grant.request_id, grant.identity,
                                grant.environment or request.environment, grant.scopes, grant.issued_at,
                                request.ssh_public_key))
    return tuple(accounts)


def _provider(deps: Deps, account: Account):
    if deps.credentials is None:
        raise CredentialsUnavailable("Credentials cannot be made or removed by this grantbot.")
    return deps.credentials.provider(ProviderSpec.model_validate(account.target))


def _refused(exc: CredentialsRefused, account: Account) -> CredentialsUnavailable:
    return CredentialsUnavailable(str(exc), account.provider)


async def create_credentials(deps: Deps, accounts: tuple[Account, ...]) -> None:
    """Make ``accounts`` without secrets (an approval's grant, before the vote is recorded). All or nothing: when one
    fails the ones made are removed again, and :class:`CredentialsUnavailable` says which provider and why."""
    made: list[Account] = []
    try:
        for account in accounts:
            try:
                await _provider(deps, account).create(account, deps.clock.now())
            except CredentialsRefused as exc:
                raise _refused(exc, account) from None
            made.append(account)
    except BaseException:
        await discard_credentials(deps, tuple(made))
        raise


async def issue_credentials(deps: Deps, accounts: tuple[Account, ...], *, fresh: bool = False) -> tuple[Credential, ...]:
    """Set a fresh secret on each of ``accounts`` (making any that is missing) and return what the pipeline
    receives. ``fresh``: the accounts are new (an auto-approval), so a failure removes the ones made; otherwise
    they stay for the next try. Raises :class:`CredentialsUnavailable`."""
    issued: list[Credential] = []
    try:
        for account in accounts:
            try:
                issued.append(await _provider(deps, account).issue(account, deps.clock.now()))
            except CredentialsRefused as exc:
                raise _refused(exc, account) from None
    except BaseException:
        if fresh:
            await discard_credentials(deps, accounts[:len(issued) + 1])
        raise
    return tuple(issued)


async def discard_credentials(deps: Deps, accounts: tuple[Account, ...]) -> None:
    """Remove accounts made for a grant that was never recorded (a failed insert, a vote that did not resolve the
    request). Best effort: what cannot be removed now is an orphan that reconciliation removes later."""
    for account in accounts:
        try:
            await _provider(deps, account).revoke(account)
        except (CredentialsUnavailable, CredentialsRefused) as exc:
            log.warning("could not remove %s account %s made for an unrecorded grant (reconciliation will): %s",
                        account.provider, account.username, exc)


async def may_resolve(deps: Deps, request: AccessRequest) -> bool:
    """Whether one more approval could approve ``request`` (so its credentials are worth making now)."""
    if request.min_approvals <= 1:
        return True
    approvals = await deps.store.approvals(request.id)
    return sum(a.verdict is Verdict.APPROVE for a in approvals) + 1 >= request.min_approvals


async def hand_over_credentials(deps: Deps, grant: Grant) -> tuple[Credential, ...] | None:
    """Take the grant's hand-over lease and set fresh secrets on its accounts, for the first hand-over of its token.

    Returns the credentials (empty when the grant has none), or None when another caller holds the lease or the
    grant is no longer active or already handed over (then this caller gets no token either). The caller records
    the hand-over (``Store.mark_handed_over``, which releases the lease) or calls ``release_hand_over``. Raises
    :class:`CredentialsUnavailable` (the lease is released: the next poll tries again).
    """
    accounts = tuple(await deps.store.credential_accounts(grant.id))
    if not accounts:
        return ()
    now = deps.clock.now()
    if not await deps.store.claim_hand_over(grant.id, now, now + timedelta(seconds=HAND_OVER_LEASE_SECONDS),
                                            undelivered=True):
        return None
    try:
        return await issue_credentials(deps, accounts)
    except BaseException:
        await deps.store.release_hand_over(grant.id)
        raise


async def reset_credentials(deps: Deps, grant: Grant) -> tuple[Credential, ...]:
    """Reset credentials on reissue (``POST /v1/grants/{id}/reissue``): fresh secrets on every account of an active
    grant whose token was already handed over, so what the lost answer carried stops working. Returns the new
    credentials (empty when the grant has none).

    Raises :class:`CredentialsUnavailable` when a provider fails, or when another hand-over or reissue of the
    grant holds its lease or the grant has ended (nothing was changed then; retrying is safe).
    """
    accounts = tuple(await deps.store.credential_accounts(grant.id))
    if not accounts:
        return ()
    now = deps.clock.now()
    if not await deps.store.claim_hand_over(grant.id, now, now + timedelta(seconds=HAND_OVER_LEASE_SECONDS),
                                            undelivered=False):
        raise CredentialsUnavailable("This grant's credentials are being handed over or reset right now, or the "
                                     "grant has ended; retry in a few seconds.")
    try:
        return await issue_credentials(deps, accounts)
    finally:
        await deps.store.release_hand_over(grant.id)
