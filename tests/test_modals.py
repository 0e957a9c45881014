"""The card's modals and Revoke button, as an approver meets them in Slack: signed clicks and view submissions from
the sandbox (a real server that issues trigger ids and fakes views.open) to the running app, on both databases."""

from __future__ import annotations

import asyncio
import json

import jwt
from sqlalchemy import text

from tests.conftest import POLICIES
from tests.support import buttons, cards, eventually, message_text, open_modal

PROD_WRITE = {"environment": "production", "scopes": ["db:write", "deploy:api"], "ttl_seconds": 900,
              "reason": "migration 12"}


async def pending_card(grantbot, sandbox, body=PROD_WRITE):
    status, created = await grantbot.api.request_access(body)
    assert status == 202, created
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    return created, card


def thread(sandbox, card) -> list[str]:
    return [m["text"] for m in sandbox.messages if m["thread_ts"] == card["ts"]]


def ephemerals_for(sandbox, user: str) -> list[str]:
    return [e["text"] for e in sandbox.ephemerals if e["user"] == user]


async def audit_trail(grantbot, request_id: str) -> list[tuple[str, str, dict]]:
    async with grantbot.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT kind, actor, data FROM audit_events WHERE request_id = :id ORDER BY id"),
                                   {"id": request_id})).all()
    return [(r.kind, r.actor, r.data if isinstance(r.data, dict) else json.loads(r.data)) for r in rows]


async def test_deny_with_a_reason_shows_it_everywhere(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    poll = asyncio.create_task(grantbot.api.get_request(created["id"], wait=30))
    form = await open_modal(sandbox, card, "deny", "U0SECOND")
    assert form["user"] == "U0SECOND" and form["view"]["callback_id"] == "deny_reason"
    assert "migration 12" not in json.dumps(form["view"])  # the form asks; it does not repeat the whole card
    assert "*deploy-bot* asks for `db:write`, `deploy:api` on *production*" in message_text({"blocks": form["view"]["blocks"]})
    assert card["updated_count"] == 0 and not poll.done()  # opening the form changes nothing

    reason = "Not during the <!channel> freeze & not without a ticket"
    assert await sandbox.submit_view(form["id"], {"reason": reason}) == (200, None)  # closes the form
    assert sandbox.views == {}

    status, decided = await poll
    assert status == 200 and decided["status"] == "denied" and decided["decided_by"] == "U0SECOND"
    assert decided["denial_reason"] == reason and "grant" not in decided

    await eventually(lambda: card["updated_count"] == 1)
    shown = message_text(card)
    assert buttons(card) == [] and "Denied* by <@U0SECOND>" in shown
    assert "Not during the &lt;!channel&gt; freeze &amp; not without a ticket" in shown and "<!channel>" not in shown

    replies = await eventually(lambda: thread(sandbox, card))
    assert replies == [":x: Denied by <@U0SECOND>.\n*Reason for denial*\n"
                       "Not during the &lt;!channel&gt; freeze &amp; not without a ticket"]

    trail = await audit_trail(grantbot, created["id"])
    assert [(k, a) for k, a, _ in trail[2:]] == [("request.denial_recorded", "U0SECOND"), ("request.denied", "U0SECOND")]
    assert trail[2][2]["reason"] == reason and trail[3][2]["reason"] == reason

    await asyncio.sleep(0.3)  # the outbox delivered everything once
    assert len(thread(sandbox, card)) == 1 and card["updated_count"] == 1


async def test_a_deny_form_without_a_reason_stays_open_with_an_error(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    form = await open_modal(sandbox, card, "deny", "U0APPROVER")
    status, answer = await sandbox.submit_view(form["id"], {"reason": "   "})
    assert status == 200 and answer == {"response_action": "errors",
                                         "errors": {"reason": "Say why, for the pipeline and the channel."}}
    assert form["id"] in sandbox.views and sandbox.views[form["id"]]["errors"] == answer["errors"]
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
    assert await grantbot.count("approvals") == 0

    assert await sandbox.submit_view(form["id"], {"reason": "fine, no"}) == (200, None)
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "denied" and decided["denial_reason"] == "fine, no"


async def test_an_expired_trigger_changes_nothing_and_says_to_click_again(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    sandbox.trigger_seconds = 0  # every trigger_id arrives too late, as after a slow moment on Slack's side
    for button, label in (("deny", "Deny"), ("approve_with_changes", "Approve with changes")):
        assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id=button, user_id="U0APPROVER") == 200
        said = await eventually(lambda: ephemerals_for(sandbox, "U0APPROVER")[-1:] if
                                f"click {label} again" in " ".join(ephemerals_for(sandbox, "U0APPROVER")) else None)
        assert said == [f"That took too long; click {label} again."]
    assert sandbox.views == {}
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
    assert card["updated_count"] == 0 and await grantbot.count("approvals") == 0

    sandbox.trigger_seconds = 3  # clicking again works
    form = await open_modal(sandbox, card, "deny", "U0APPROVER")
    assert form["view"]["callback_id"] == "deny_reason"


async def test_approve_with_changes_issues_a_narrower_token(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    form = await open_modal(sandbox, card, "approve_with_changes", "U0APPROVER")
    element = {b["block_id"]: b.get("element") for b in form["view"]["blocks"]}
    assert element["ttl"]["initial_value"] == "15" and element["ttl"]["max_value"] == "15"
    assert [o["text"]["text"] for o in element["scopes"]["initial_options"]] == ["db:write", "deploy:api"]

    clock.advance(30)  # the TTL counts from the approval
    assert await sandbox.submit_view(form["id"], {"ttl": "5", "scopes": ["1"]}) == (200, None)

    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "approved" and decided["decided_by"] == "U0APPROVER"
    assert decided["scopes"] == ["db:write", "deploy:api"]  # what was asked stays on the request
    grant = decided["grant"]
    assert grant["scope"] == "deploy:api" and grant["expires_in"] == 300
    claims = jwt.decode(grant["access_token"], options={"verify_signature": False})
    assert claims["scope"] == "deploy:api" and claims["exp"] - claims["iat"] == 300
    _, introspected = await grantbot.api.introspect(grant["access_token"])
    assert introspected["active"] is True and introspected["scope"] == "deploy:api"

    await eventually(lambda: card["updated_count"] == 1)
    assert "Granted with changes: `deploy:api` for 5 min (asked: `db:write`, `deploy:api` for 15 min)" in message_text(card)
    assert buttons(card) == ["revoke_grant"]
    replies = await eventually(lambda: len(thread(sandbox, card)) == 2 and thread(sandbox, card))
    assert replies[0].startswith(":white_check_mark: Approved by <@U0APPROVER>. Grant issued: `deploy:api` on "
                                 "*production* for *deploy-bot* for 5 min, until ")
    assert "Granted with changes" in replies[0]
    assert replies[1].startswith(":key: *deploy-bot* collected its token for `deploy:api`")
    trail = await audit_trail(grantbot, created["id"])
    approved = next(data for kind, _, data in trail if kind == "request.approved")
    assert approved["changes"] == {"scopes": ["deploy:api"], "ttl_seconds": 300}
    issued = next(data for kind, _, data in trail if kind == "grant.issued")
    assert issued["scope"] == "deploy:api" and issued["ttl_seconds"] == 300


async def test_changes_beyond_the_request_are_refused_in_the_form(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    form = await open_modal(sandbox, card, "approve_with_changes", "U0APPROVER")
    refusals = [
        ({"ttl": "16", "scopes": ["0"]}, "ttl", "Between 0 and 15 minutes, the time the pipeline asked for."),
        ({"ttl": "0", "scopes": ["0"]}, "ttl", "Between 0 and 15 minutes, the time the pipeline asked for."),
        ({"ttl": "0.001", "scopes": ["0"]}, "ttl", "Between 0 and 15 minutes, the time the pipeline asked for."),
        ({"ttl": "soon", "scopes": ["0"]}, "ttl", "Enter a number of minutes, e.g. 15 or 2.5."),
        ({"ttl": {"type": "number_input", "value": "1e308"}, "scopes": ["0"]}, "ttl",
         "Enter a number of minutes, e.g. 15 or 2.5."),
        ({"ttl": "5", "scopes": {"type": "checkboxes", "selected_options": [{"value": "\u00b2"}]}}, "scopes",
         "Only scopes the pipeline asked for."),
        ({"ttl": "5", "scopes": []}, "scopes", "Keep at least one scope (or deny the request)."),
        # A tampered client naming a scope that was not offered (position 7, or the scope's text as a value).
        ({"ttl": "5", "scopes": {"type": "checkboxes", "selected_options": [{"value": "7"}]}}, "scopes",
         "Only scopes the pipeline asked for."),
        ({"ttl": "5", "scopes": {"type": "checkboxes", "selected_options": [{"value": "db:admin"}]}}, "scopes",
         "Only scopes the pipeline asked for."),
    ]
    for values, block, error in refusals:
        assert await sandbox.submit_view(form["id"], values) == (
            200, {"response_action": "errors", "errors": {block: error}}), values
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
    assert await grantbot.count("approvals") == 0 and await grantbot.count("grants") == 0
    # Unchanged values are a plain approval.
    assert await sandbox.submit_view(form["id"], {"ttl": "15", "scopes": ["0", "1"]}) == (200, None)
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["grant"]["scope"] == "db:write deploy:api" and decided["grant"]["expires_in"] == 900


async def test_a_click_on_a_decided_card_is_answered_already_and_opens_nothing(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    stale = json.loads(json.dumps(card))  # the card as a slow client still shows it
    form = await open_modal(sandbox, card, "deny", "U0SECOND")  # opened before the approval, submitted after
    assert await grantbot.api.click(card, "approve", "U0APPROVER") == 200
    await eventually(lambda: card["updated_count"] == 1)
    sandbox.messages.append({**stale, "ts": "1.000001"})  # keep the stale buttons clickable in the sandbox

    for button in ("deny", "approve_with_changes"):
        assert await sandbox.click(channel=card["channel"], ts="1.000001", action_id=button, user_id="U0SECOND") == 200
    said = await eventually(lambda: len(ephemerals_for(sandbox, "U0SECOND")) == 2 and ephemerals_for(sandbox, "U0SECOND"))
    assert said == ["This request was already approved by <@U0APPROVER>."] * 2
    assert list(sandbox.views) == [form["id"]]  # no new form opened

    assert await sandbox.submit_view(form["id"], {"reason": "too late"}) == (200, None)  # closes; told privately
    said = await eventually(lambda: len(ephemerals_for(sandbox, "U0SECOND")) == 3 and ephemerals_for(sandbox, "U0SECOND"))
    assert said[-1] == "This request was already approved by <@U0APPROVER>."
    _, decided = await grantbot.api.get_request(created["id"])
    assert decided["status"] == "approved" and "denial_reason" not in decided
    assert await grantbot.count("approvals") == 1


async def test_a_click_on_a_timed_out_card_is_answered_already_expired(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    stale = json.loads(json.dumps(card))
    clock.advance(1800)
    await eventually(lambda: card["updated_count"] == 1)
    sandbox.messages.append({**stale, "ts": "1.000002"})
    assert await sandbox.click(channel=card["channel"], ts="1.000002", action_id="deny", user_id="U0APPROVER") == 200
    said = await eventually(lambda: ephemerals_for(sandbox, "U0APPROVER"))
    assert said == ["This request was already expired."] and sandbox.views == {}


async def test_someone_who_is_not_an_approver_gets_no_form(grantbot, sandbox):
    created, card = await pending_card(grantbot, sandbox)
    for button in ("deny", "approve_with_changes"):
        assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id=button, user_id="U0OTHER") == 200
    said = await eventually(lambda: len(ephemerals_for(sandbox, "U0OTHER")) == 2 and ephemerals_for(sandbox, "U0OTHER"))
    assert all("you are not one of them" in s for s in said) and sandbox.views == {}


async def test_the_revoke_button_works_for_approvers_only(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox)
    await grantbot.api.click(card, "approve", "U0APPROVER")
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    token = decided["grant"]["access_token"]
    await eventually(lambda: buttons(card) == ["revoke_grant"])
    revoke = next(e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"])
    assert revoke["confirm"]["title"]["text"] == "Revoke this grant?"

    assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id="revoke_grant", user_id="U0OTHER") == 200
    said = await eventually(lambda: ephemerals_for(sandbox, "U0OTHER"))
    # The same refusal as /access revoke gives (one use case for every way a person revokes).
    assert said == ["Only approvers of rule prod-write or grantbot admins can revoke this grant; you are neither, so "
                    "nothing changed."]
    assert (await grantbot.api.introspect(token))[1]["active"] is True

    clock.advance(60)
    assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id="revoke_grant", user_id="U0SECOND") == 200
    await eventually(lambda: buttons(card) == [] and "Grant revoked by <@U0SECOND>" in message_text(card))
    assert await grantbot.api.introspect(token) == (200, {"active": False})
    _, after = await grantbot.api.get_request(created["id"])
    assert after["grant"]["status"] == "revoked"
    replies = await eventually(lambda: len(thread(sandbox, card)) == 3 and thread(sandbox, card))
    assert replies[2] == ":no_entry: Grant `db:write`, `deploy:api` on *production* for *deploy-bot* was revoked by <@U0SECOND>."
    trail = await audit_trail(grantbot, created["id"])
    assert trail[-1][:2] == ("grant.revoked", "U0SECOND")

    # The same click again (a double click, a redelivery): nothing more happens; the clicker is told.
    assert await grantbot.api.introspect(token) == (200, {"active": False})
    stale_ts = "1.000003"
    sandbox.messages.append({**json.loads(json.dumps(card)), "ts": stale_ts,
                             "blocks": [{"type": "actions", "block_id": "grant", "elements": [revoke]}]})
    assert await sandbox.click(channel=card["channel"], ts=stale_ts, action_id="revoke_grant", user_id="U0APPROVER") == 200
    said = await eventually(lambda: ephemerals_for(sandbox, "U0APPROVER"))
    assert said == ["This grant was already revoked by <@U0SECOND>; nothing changed."]
    await asyncio.sleep(0.3)
    assert len(thread(sandbox, card)) == 3 and [t for t, *_ in await audit_trail(grantbot, created["id"])].count(
        "grant.revoked") == 1


async def test_every_step_gets_exactly_one_thread_reply(grantbot, sandbox, clock):
    created, card = await pending_card(grantbot, sandbox, {**PROD_WRITE, "ttl_seconds": 60})
    form = await open_modal(sandbox, card, "approve_with_changes", "U0APPROVER")
    await sandbox.submit_view(form["id"], {"ttl": "0.5", "scopes": ["0"]})
    _, decided = await grantbot.api.get_request(created["id"], wait=10)  # hand-over
    assert decided["grant"]["expires_in"] == 30
    await grantbot.api.get_request(created["id"])  # a second read hands nothing over
    clock.advance(30)
    await eventually(lambda: len(thread(sandbox, card)) == 3)
    await asyncio.sleep(0.3)
    assert [t.split()[0] for t in thread(sandbox, card)] == [":white_check_mark:", ":key:", ":hourglass:"]
    assert "expired" in thread(sandbox, card)[2]


async def test_changes_are_for_one_approver_requests_only(start_grantbot, sandbox):
    from tests.conftest import POLICIES
    from tests.test_slack_manifest import post_slack, view_submission_body

    sandbox.users["U0THIRD"] = "kim"
    grantbot = await start_grantbot(policy_file=POLICIES / "quorum.yaml")
    created, card = await pending_card(grantbot, sandbox, {**PROD_WRITE, "scopes": ["db:write"]})
    assert buttons(card) == ["approve", "deny"]  # two approvals needed: no "Approve with changes"
    # A forged (or very stale) form for it: closed, the approver told privately, nothing recorded.
    values = {"ttl": {"ttl_minutes": {"type": "number_input", "value": "5"}},
              "scopes": {"scopes_input": {"type": "checkboxes", "selected_options": [{"value": "0"}]}}}
    assert await post_slack(grantbot, view_submission_body("approve_with_changes", created["id"], values,
                                                           "U0SECOND")) == (200, "")
    said = await eventually(lambda: ephemerals_for(sandbox, "U0SECOND"))
    assert said == ["This request needs 2 approvals; it can only be approved as asked or denied."]
    assert await grantbot.count("approvals") == 0


async def test_an_admin_who_is_not_an_approver_can_use_the_revoke_button(start_grantbot, sandbox):
    sandbox.users["U0ADMIN"] = "ari"
    grantbot = await start_grantbot(policy_file=POLICIES / "commands.yaml")
    created, card = await pending_card(grantbot, sandbox)
    await grantbot.api.click(card, "approve", "U0APPROVER")
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    await eventually(lambda: buttons(card) == ["revoke_grant"])
    assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id="revoke_grant", user_id="U0ADMIN") == 200
    await eventually(lambda: "Grant revoked by <@U0ADMIN>" in message_text(card))
    assert await grantbot.api.introspect(decided["grant"]["access_token"]) == (200, {"active": False})
