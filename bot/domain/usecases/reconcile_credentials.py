"""Use case: reconciliation — every account a provider holds that grantbot made is accounted for.

Run at start, periodically, and by hand (``grantbot credentials reconcile``). For each provider of the policy in
force it lists the accounts with the provider's prefix that carry grantbot's marker, and for each whose grant is not
active:

- recorded, and its revocation verified: it came back (a hand-over raced the revocation) — revoked again;
- recorded, revocation pending or failed: the worker (or a person) has it;
- not recorded: an orphan — made by a process that died before recording it (``kill -9`` between making a role and
  committing the grant), or for an approval that lost a race — its revocation is queued like any other. An
  account younger than ``ORPHAN_GRACE`` whose grant does not exist yet is left alone: its grant may be committing.

By hand it also queues again every failed revocation (and pending ones waiting for their next retry), for after
the cause was fixed. Accounts of providers no longer in the policy are not listed (their recorded revocations still
run, from the spec each kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from bot.domain.credentials import Account, RevocationStatus
from bot.domain.errors import CredentialsUnavailable
from bot.domain.models import GrantStatus
from bot.domain.usecases.deps import Deps

# Above the longest time between making an account and committing its grant (provider and database time limits).
ORPHAN_GRACE = timedelta(minutes=2)


@dataclass(frozen=True)
class Reconciliation:
    """What reconciliation found: accounts looked at, revocations queued (orphans and accounts that came back),
    failed revocations queued again by hand, and providers that could not be asked (sentences)."""

    checked: int = 0
    queued: int = 0
    requeued_failed: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)


async def reconcile_credentials(deps: Deps, *, retry_failed: bool = False) -> Reconciliation:
    """Queue the revocation of every account grantbot made whose grant is not active; with ``retry_failed`` (by
    hand), also queue again the revocations that failed. Raises what the store raises."""
    now = deps.clock.now()
    requeued = await deps.store.requeue_revocations(now, failed=True) if retry_failed else 0
    checked = queued = 0
    problems: list[str] = []
    if deps.credentials is None:
        return Reconciliation(requeued_failed=requeued)
    for spec in deps.policy.providers:
        provider = deps.credentials.provider(spec)
        try:
            made = await provider.accounts()
        except CredentialsUnavailable as exc:
            problems.append(exc.detail)
            continue
        for account in made:
            checked += 1
            grant = await deps.store.get_grant(account.grant_id)
            if grant is not None and grant.status is GrantStatus.ACTIVE:
                continue  # active, or past its expiry and about to be swept (which queues its revocation)
            found = Account(account.grant_id, spec.name, spec.kind, account.username, now, {}, spec.target(),
                            grant.request_id if grant is not None else None)
            state = await deps.store.credential_by_username(spec.name, account.username)
            if state is not None:
                # Verified since the listing (a revocation finishing meanwhile), or really back? Look again.
                if state.revocation is RevocationStatus.VERIFIED and not await _gone(provider, found):
                    queued += await deps.store.requeue_revocations(now, provider=state.provider,
                                                                   username=account.username)
                continue
            if grant is None and account.created_at is not None and now - account.created_at < ORPHAN_GRACE:
                continue
            queued += await deps.store.record_orphan(found, now)
    return Reconciliation(checked, queued, requeued, tuple(problems))


async def _gone(provider, account: Account) -> bool:
    try:
        return (await provider.verify_revoked(account)).gone
    except CredentialsUnavailable:
        return True  # cannot tell now: the next reconciliation looks again
