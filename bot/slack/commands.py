"""The ``/access`` slash command and its revoke-all confirmation button: thin Bolt listeners.

Slack posts a slash command form-encoded to ``/slack/events`` (Slack "Handling slash commands": ``command``,
``text``, ``user_id``, ``channel_id``, ``response_url``, ``trigger_id``, ``team_id`` …), signed like every other
request (Bolt verifies it). The listener acks at once (Slack's 3 s), then answers through the payload's
``response_url`` as an ephemeral message, so only the person who typed the command sees it.

Subcommands (``text``'s first word; anything else gets the help): ``list``, ``pending``, ``show <id>``,
``explain <id>``, ``help`` — open to anyone in the workspace (they show what the approval cards show, never a
token); ``revoke <id> [reason]`` — approvers of the request's rule and policy admins; ``revoke-all <identity glob>
[reason]`` — admins only, after a confirmation (a button with a Block Kit ``confirm`` dialog, action
``access_revoke_all``, permission checked again when clicked).
"""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.domain import usecases
from bot.domain.errors import DatabaseUnavailable, DomainError, InvalidRequest
from bot.domain.usecases.revoke import clean_reason
from bot.slack import command_blocks as cb

log = logging.getLogger(__name__)

REFUSED = ":no_entry_sign:"


def _one_id(subcommand: str, args: str) -> tuple[str, str]:
    """(id, rest of the text) from ``args``; raises InvalidRequest with a sentence for the person."""
    parts = args.split(None, 1)
    if not parts:
        raise InvalidRequest(f"{subcommand} needs an id: {cb.ACCESS_COMMAND} {subcommand} <request or grant id>.")
    # A full id or a prefix (as /access list prints them): find_access says what it names, or why not.
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


async def _list(deps: usecases.Deps, user: str, args: str) -> dict:
    found = await usecases.list_active_grants(deps, cb.LIST_LIMIT)
    return cb.grants_message([(f.request, f.grant) for f in found.items], found.total, deps.clock.now())


async def _pending(deps: usecases.Deps, user: str, args: str) -> dict:
    found = await usecases.list_pending(deps, cb.LIST_LIMIT)
    return cb.pending_message(found.items, found.total, deps.clock.now())


async def _show(deps: usecases.Deps, user: str, args: str) -> dict:
    some_id, _ = _one_id("show", args)
    found = await usecases.find_access(deps, some_id)
    return cb.show_message(found.request, found.grant, deps.clock.now(), found.credentials)


async def _explain(deps: usecases.Deps, user: str, args: str) -> dict:
    some_id, _ = _one_id("explain", args)
    return cb.explain_message((await usecases.find_access(deps, some_id)).request)


async def _revoke(deps: usecases.Deps, user: str, args: str) -> dict:
    some_id, reason = _one_id("revoke", args)
    request, grant = await usecases.revoke_by_person(deps, some_id, user, reason or None)
    return cb.revoked_message(request, grant, clean_reason(reason))


async def _revoke_all(deps: usecases.Deps, user: str, args: str) -> dict:
    parts = args.split(None, 1)
    if not parts:
        raise InvalidRequest(f"revoke-all needs an identity glob: {cb.ACCESS_COMMAND} revoke-all <identity glob> "
                             "[reason], e.g. deploy-* or github:repo:acme/*.")
    glob, reason = parts[0], (parts[1].strip() if len(parts) > 1 else "") or None
    preview = await usecases.preview_revoke_all(deps, glob, user)
    return cb.revoke_all_confirm_message(glob, preview.grants, reason, preview.as_of, deps.clock.now())


async def _help(deps: usecases.Deps, user: str, args: str) -> dict:
    return cb.help_message()


SUBCOMMANDS = {"list": _list, "pending": _pending, "show": _show, "explain": _explain, "revoke": _revoke,
               "revoke-all": _revoke_all, "help": _help}


async def answer(deps: usecases.Deps, user: str, text: str) -> dict:
    """The ephemeral answer to ``/access <text>`` typed by Slack user ``user`` (a response_url message dict)."""
    subcommand, _, args = text.strip().partition(" ")
    handler = SUBCOMMANDS.get(subcommand.lower())
    if handler is None:
        problem = f"Unknown subcommand {subcommand[:80]}." if subcommand else None
        return cb.help_message(problem)
    try:
        return await handler(deps, user, args.strip())
    except DatabaseUnavailable:
        raise  # not a refusal: the listener says grantbot cannot reach its database, and logs it
    except DomainError as exc:
        return cb.refusal_message(exc, REFUSED)


def register_commands(bolt: AsyncApp, deps: usecases.Deps) -> None:
    """Add the ``/access`` command and the revoke-all confirmation button's listener to ``bolt``."""

    async def on_access(ack: AsyncAck, command: dict, respond: AsyncRespond) -> None:
        """Slack slash command payload (form fields): ``user_id``, ``text``, ``response_url`` …"""
        await ack()
        user = command.get("user_id")
        if not isinstance(user, str) or not user:
            log.warning("ignored an /access command without a user_id")
            return
        try:
            message = await answer(deps, user, str(command.get("text") or ""))
        except Exception as exc:  # the person must hear something rather than see nothing happen
            if isinstance(exc, DatabaseUnavailable):
                log.warning("/access %r failed: the database is unavailable (%s)", command.get("text"), exc.cause)
                message = cb.notice_message("grantbot cannot reach its database right now; try again in a minute.",
                                            REFUSED)
            else:
                log.exception("/access %r failed", command.get("text"))
                message = cb.notice_message("grantbot could not answer because of an internal error; try again.",
                                            REFUSED)
        await respond(message)

    async def on_revoke_all(ack: AsyncAck, body: dict, respond: AsyncRespond) -> None:
        """Slack block_actions payload from the ephemeral confirmation: ``actions[0].value`` is
        :func:`~bot.slack.command_blocks.revoke_all_value`, ``user.id`` who clicked (after the confirm dialog)."""
        await ack()
        user = (body.get("user") or {}).get("id")
        parsed = cb.parse_revoke_all_value(((body.get("actions") or [{}])[0]).get("value"))
        if not isinstance(user, str) or parsed is None:
            log.warning("ignored a revoke-all click without a user or a readable value")
            return
        glob, reason, as_of = parsed
        try:
            ended = await usecases.revoke_all(deps, glob, user, reason, as_of)
        except DomainError as exc:
            await respond(cb.refusal_message(exc, REFUSED))
            return
        message = cb.revoke_all_done_message(glob, len(ended), user, reason)
        # The first click replaces the confirmation (its button goes); a repeat only adds a note.
        await respond({**message, "replace_original": True} if ended else message)

    bolt.command(cb.ACCESS_COMMAND)(on_access)
    bolt.action(cb.REVOKE_ALL_ACTION)(on_revoke_all)
