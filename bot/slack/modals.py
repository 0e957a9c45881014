"""Bolt listeners for the card's modals and its Revoke button (thin: parse, call the use case, answer).

- ``deny`` (button) → ``views.open`` with the deny-reason modal; ``deny_reason`` (view_submission) → deny.
- ``approve_with_changes`` (button) → ``views.open`` with the narrower-grant modal; ``approve_with_changes``
  (view_submission) → approve with that TTL and those scopes.
- ``revoke_grant`` (button on an approved card) → an approver ends the grant.

A click first checks that the person may decide the request (``usecases.may_decide``, nothing recorded), so a
click on a decided, expired or revoked card, or by a non-approver, is answered privately and opens nothing.
Slack's ``trigger_id`` is good for 3 s: if ``views.open`` says it expired, the person is told to click again and
nothing changes. Form problems (no reason, a longer TTL, a scope not asked for) are shown in the form
(``response_action: errors``); refusals (already decided, not an approver) close the form and are answered
privately next to the card, as a click would be. The submission's decision runs before the ack so that its
errors can still reach the form; if it takes longer than ``SUBMIT_ACK_BUDGET`` the form is closed and the
outcome is reported privately (Slack would otherwise show the approver a timeout).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain import usecases
from bot.domain.errors import DomainError, InvalidChanges
from bot.domain.ids import is_uuid
from bot.domain.models import AccessRequest
from bot.slack.blocks import APPROVE_WITH_CHANGES_ACTION, DENY_ACTION, REVOKE_ACTION, refusal_text, truncate
from bot.slack.home import publish_home
from bot.slack.modal_blocks import (
    APPROVE_CHANGES_CALLBACK,
    DENY_CALLBACK,
    REASON_BLOCK,
    REASON_INPUT,
    REASON_MAX_LENGTH,
    SCOPES_BLOCK,
    SCOPES_INPUT,
    TTL_BLOCK,
    TTL_INPUT,
    approve_with_changes_modal,
    deny_modal,
    minutes,
    read_metadata,
)

log = logging.getLogger(__name__)

# views.open answers for a trigger_id that is too old, already used or unknown (Slack Web API docs).
EXPIRED_TRIGGER_ERRORS = {"expired_trigger_id", "exchanged_trigger_id", "invalid_trigger_id", "invalid_trigger"}
SUBMIT_ACK_BUDGET = 2.0  # seconds of Slack's 3 s for a view_submission, leaving room for the network
ERROR_TEXT_LIMIT = 300  # a form error is a short plain sentence


def _click(body: dict) -> tuple[str | None, str | None, str | None, str | None]:
    """(user, request id, channel, card ts) of a Slack block_actions payload; None where missing or malformed."""
    user = (body.get("user") or {}).get("id")
    action = (body.get("actions") or [{}])[0]
    container = body.get("container") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
    ts = container.get("message_ts") or (body.get("message") or {}).get("ts")
    request_id = action.get("value")
    return (user if isinstance(user, str) else None, request_id if is_uuid(request_id) else None,
            channel if isinstance(channel, str) else None, ts if isinstance(ts, str) else None)


def _state(view: dict, block: str, action: str) -> dict:
    """One input's entry in a view_submission's ``view.state.values`` ({} if absent)."""
    return ((view.get("state") or {}).get("values") or {}).get(block, {}).get(action) or {}


def _form_error(exc: DomainError) -> str:
    return truncate(exc.detail, ERROR_TEXT_LIMIT)


def register_modals(bolt: AsyncApp, deps: usecases.Deps) -> None:
    """Add the modal and Revoke listeners to ``bolt``."""

    async def tell(client: AsyncWebClient, channel: str | None, user: str, text: str) -> None:
        """Answer ``user`` privately next to the card (``chat.postEphemeral``); without a channel (a click in the
        App Home) the answer goes on top of their Home instead."""
        if channel is None:
            await publish_home(deps, client, user, notice=text)
            return
        try:
            await client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as exc:
            log.warning("could not tell %s privately: Slack said %s", user, exc.response.get("error"))

    def opener(build: Callable[[AccessRequest, str | None, str | None], dict], button: str,
               check: Callable[[AccessRequest], None] | None = None):
        async def open_modal(ack: AsyncAck, body: dict, client: AsyncWebClient) -> None:
            """Slack block_actions payload (a card button) → ``views.open`` with ``trigger_id``."""
            await ack()
            user, request_id, channel, ts = _click(body)
            if user is None or request_id is None:
                log.warning("ignored a %s click without a user or a request id", button)
                return
            try:
                request = await usecases.may_decide(deps, request_id, user)
                if check is not None:
                    check(request)
            except DomainError as exc:
                await tell(client, channel, user, refusal_text(exc))  # no channel: a Home click, told on the Home
                return
            try:
                await client.views_open(trigger_id=body.get("trigger_id") or "", view=build(request, channel, ts))
            except SlackApiError as exc:
                error = exc.response.get("error")
                messages = " ".join((exc.response.get("response_metadata") or {}).get("messages") or [])
                if error in EXPIRED_TRIGGER_ERRORS or (error == "invalid_arguments" and "trigger_id" in messages):
                    await tell(client, channel, user, f"That took too long; click {button} again.")
                else:
                    log.error("views.open failed for request %s: %s %s", request_id, error, messages)
                    await tell(client, channel, user, f"Slack could not open the form ({error}); click {button} again.")

        return open_modal

    def only_one_approval(request: AccessRequest) -> None:
        usecases.check_changes(request, request.scopes, request.ttl_seconds)  # raises for N-of-M requests

    bolt.action(DENY_ACTION)(opener(deny_modal, "Deny"))
    bolt.action(APPROVE_WITH_CHANGES_ACTION)(opener(approve_with_changes_modal, "Approve with changes",
                                                    only_one_approval))

    async def submit(ack: AsyncAck, client: AsyncWebClient, user: str, meta: dict, decision,
                     field_of: Callable[[DomainError], str | None]) -> None:
        """Run ``decision`` (a use case coroutine) and answer the view_submission: ``errors`` on the field a
        problem belongs to, else close the form (and tell the approver privately when it changed nothing)."""
        task = asyncio.ensure_future(decision)
        try:
            async with asyncio.timeout(SUBMIT_ACK_BUDGET):  # not wait_for: see bot/changes.py
                await asyncio.shield(task)
        except TimeoutError:
            await ack()  # too slow for the form: close it, report below
        except DomainError as exc:
            if (field := field_of(exc)) is not None:
                await ack(response_action="errors", errors={field: _form_error(exc)})
                return
            await ack()
        else:
            await ack()
            if meta.get("channel") is None:  # opened from the App Home: show it without the decided request
                await publish_home(deps, client, user)
            return
        try:
            await task
        except DomainError as exc:
            await tell(client, meta.get("channel"), user, refusal_text(exc))
        else:
            if meta.get("channel") is None:
                await publish_home(deps, client, user)

    async def on_deny_reason(ack: AsyncAck, body: dict, view: dict, client: AsyncWebClient) -> None:
        """Slack view_submission payload of the deny modal: ``view.private_metadata`` names the request,
        ``view.state.values.reason.reason_input.value`` is the reason."""
        user, meta = (body.get("user") or {}).get("id"), read_metadata(view.get("private_metadata"))
        if not isinstance(user, str) or meta is None or not is_uuid(meta["request_id"]):
            log.warning("ignored a deny_reason submission without a user or a request id")
            await ack()
            return
        # NUL cannot be stored in a PostgreSQL text column; nobody types it.
        reason = str(_state(view, REASON_BLOCK, REASON_INPUT).get("value") or "").replace("\x00", "").strip()
        if not reason:
            await ack(response_action="errors", errors={REASON_BLOCK: "Say why, for the pipeline and the channel."})
            return
        if len(reason) > REASON_MAX_LENGTH:
            await ack(response_action="errors",
                      errors={REASON_BLOCK: f"At most {REASON_MAX_LENGTH} characters, please."})
            return
        await submit(ack, client, user, meta, usecases.deny(deps, meta["request_id"], user, reason), lambda _: None)

    async def on_approve_with_changes(ack: AsyncAck, body: dict, view: dict, client: AsyncWebClient) -> None:
        """Slack view_submission payload of the approve-with-changes modal: ``ttl.ttl_minutes.value`` (minutes,
        decimals allowed) and ``scopes.scopes_input.selected_options[].value`` (positions in the request)."""
        user, meta = (body.get("user") or {}).get("id"), read_metadata(view.get("private_metadata"))
        if not isinstance(user, str) or meta is None or not is_uuid(meta["request_id"]):
            log.warning("ignored an approve_with_changes submission without a user or a request id")
            await ack()
            return
        request = await deps.store.get_request(meta["request_id"])
        if request is None:
            await ack()
            return
        raw_ttl = str(_state(view, TTL_BLOCK, TTL_INPUT).get("value") or "")
        try:
            ttl_minutes = float(raw_ttl)
        except ValueError:
            ttl_minutes = math.nan
        # Finite and at most 1e9 minutes (~1,900 years, far above any TTL): round(1e308 * 60) would overflow.
        if not math.isfinite(ttl_minutes) or abs(ttl_minutes) > 1e9:
            await ack(response_action="errors", errors={TTL_BLOCK: "Enter a number of minutes, e.g. 15 or 2.5."})
            return
        if not 0 < round(ttl_minutes * 60) <= request.ttl_seconds:  # the use case checks it too, in seconds
            await ack(response_action="errors", errors={
                TTL_BLOCK: f"Between 0 and {minutes(request.ttl_seconds)} minutes, the time the pipeline asked for."})
            return
        positions = [o.get("value") for o in _state(view, SCOPES_BLOCK, SCOPES_INPUT).get("selected_options") or []]
        scopes = []
        for position in positions:
            # isdecimal + isascii: "²" and "٣" pass isdigit() but are not positions int() reads as we mean
            if not (isinstance(position, str) and position.isascii() and position.isdecimal()
                    and int(position) < len(request.scopes)):
                await ack(response_action="errors", errors={SCOPES_BLOCK: "Only scopes the pipeline asked for."})
                return
            scopes.append(request.scopes[int(position)])
        decision = usecases.approve(deps, request.id, user, scopes=tuple(scopes), ttl_seconds=round(ttl_minutes * 60))
        fields = {"ttl": TTL_BLOCK, "scopes": SCOPES_BLOCK}
        await submit(ack, client, user, meta, decision,
                     lambda exc: fields.get(exc.field) if isinstance(exc, InvalidChanges) else None)

    bolt.view(DENY_CALLBACK)(on_deny_reason)
    bolt.view(APPROVE_CHANGES_CALLBACK)(on_approve_with_changes)

    async def on_revoke(ack: AsyncAck, body: dict, client: AsyncWebClient) -> None:
        """Slack block_actions payload of an approved card's Revoke button (``actions[0].value``: request id)."""
        await ack()
        user, request_id, channel, _ = _click(body)
        if user is None or request_id is None:
            log.warning("ignored a revoke click without a user or a request id")
            return
        try:
            await usecases.revoke_by_person(deps, request_id, user, via="slack:card")
        except DomainError as exc:
            await tell(client, channel, user, refusal_text(exc))

    bolt.action(REVOKE_ACTION)(on_revoke)
