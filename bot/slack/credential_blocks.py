"""Pure text builders for the messages about a grant's real credentials (outbox kinds ``credentials.*``).

Every piece of text that came from outside (identities, scopes, provider names, a database's error message) is
escaped (``bot.slack.blocks.escape``): an error quoting a role name like ``<!channel>`` must not ping anyone. No
message ever carries a secret: payloads hold the provider, the account name, what was done and the error.
"""

from __future__ import annotations

from bot.domain.credentials import CredentialState, RevocationStatus
from bot.domain.models import AccessRequest, Grant
from bot.slack.blocks import SECTION_TEXT_LIMIT, by, clock_time, escape, truncate

RECONCILE_COMMAND = "grantbot credentials reconcile"


def _grant(request: AccessRequest | None, grant: Grant | None, grant_id: str | None) -> str:
    if request is None or grant is None:
        return f"grant `{escape(grant_id or '?')}`"
    scopes = ", ".join(f"`{escape(s)}`" for s in grant.scopes)
    return f"grant `{grant.id}` ({scopes} on *{escape(request.environment)}* for *{escape(grant.identity)}*)"


def revoked_text(payload: dict) -> str:
    """A verified revocation, under the card (or in the channel for an auto-approved grant):
    ``:lock: Access removed from orders-db: role gb_… dropped, 2 sessions ended, 1 table reassigned to orders_owner.
    Checked: the role is gone and none of its sessions is open.`` (what was checked is the provider's to say)."""
    checked = payload.get("checked") or "the account is gone and none of its sessions is open"
    return truncate(
        f":lock: Access removed from *{escape(payload.get('provider') or '?')}*: "
        f"{escape(payload.get('summary') or 'done')}. Checked: {escape(checked)}.",
        SECTION_TEXT_LIMIT)


def revocation_failed_text(request: AccessRequest | None, grant: Grant | None, grant_id: str | None,
                           payload: dict) -> str:
    """The alert in the channel when a revocation failed every retry: which grant, which account, the error, what
    still protects (``VALID UNTIL``) and what to do."""
    attempts = payload.get("attempts")
    tries = f" after {attempts} attempt{'' if attempts == 1 else 's'}" if attempts else ""
    lines = [f":rotating_light: *Revocation failed*{tries}: account `{escape(payload.get('username') or '?')}` on "
             f"*{escape(payload.get('provider') or '?')}* of {_grant(request, grant, grant_id)} may still work.",
             f"Last error: {escape(payload.get('error') or 'unknown')}"]
    if grant is not None:
        lines.append(f"Its password stops working at {clock_time(grant.expires_at)} (VALID UNTIL), but sessions it "
                     "already has stay open.")
    lines.append(f"Fix the cause, then run `{RECONCILE_COMMAND}` to retry.")
    return truncate("\n".join(lines), SECTION_TEXT_LIMIT)


def unavailable_text(payload: dict) -> str:
    """An approval that could not make its grant's credentials (it was not recorded; the request stays pending)."""
    who = by(payload.get("by_user"))
    return truncate(
        f":warning: {who} approved, but grantbot could not make this grant's credentials on "
        f"*{escape(payload.get('provider') or '?')}*: {escape(payload.get('detail') or 'unknown error')}\n"
        "The approval was not recorded and the request stays pending; approve again once it is fixed.",
        SECTION_TEXT_LIMIT)


def credentials_line(states: list[CredentialState] | tuple[CredentialState, ...]) -> str | None:
    """``/access show``: each account of the grant and how its revocation stands; None without credentials."""
    if not states:
        return None
    icons = {None: ":key:", RevocationStatus.PENDING: ":hourglass_flowing_sand:", RevocationStatus.VERIFIED: ":lock:",
             RevocationStatus.FAILED: ":rotating_light:"}
    lines = []
    for state in states:
        where = f"`{escape(state.username)}` on *{escape(state.provider)}* ({escape(state.kind)})"
        if state.revocation is None:
            said = "active"
        elif state.revocation is RevocationStatus.PENDING:
            said = "revocation pending" + (f": {escape(state.detail)}" if state.detail else "")
        elif state.revocation is RevocationStatus.VERIFIED:
            said = "revoked and verified" + (f": {escape(state.detail)}" if state.detail else "")
        else:
            said = (f"*revocation failed*: {escape(state.detail or 'unknown error')}; run `{RECONCILE_COMMAND}` "
                    "after fixing it")
        lines.append(f"{icons[state.revocation]} {where}: {said}")
    return truncate("*Credentials*\n" + "\n".join(lines), SECTION_TEXT_LIMIT)


def failed_revocations_text(failed: list[tuple[str, CredentialState]] | tuple) -> str | None:
    """The App Home's warning: revocations that failed every retry (None when there is none)."""
    if not failed:
        return None
    lines = [f"• `{escape(state.username)}` on *{escape(state.provider)}* (grant `{escape(grant_id)}`): "
             f"{escape(state.detail or 'unknown error')}" for grant_id, state in failed]
    return truncate(f":rotating_light: *{len(failed)} credential revocation{'' if len(failed) == 1 else 's'} "
                    f"failed*: the accounts may still work.\n" + "\n".join(lines) +
                    f"\nFix the cause, then run `{RECONCILE_COMMAND}`.", SECTION_TEXT_LIMIT)
