"""The ``/access`` slash command, end to end: real signed slash-command payloads from the Slack sandbox to the
running grantbot, answers read where the person sees them (ephemeral messages, the card's thread, the channel),
and the effect checked from outside (token introspection, the pipeline's view of its request, the audit trail)."""

from __future__ import annotations

import asyncio
import copy
import uuid

import pytest

from bot.slack.command_blocks import REVOKE_ALL_ACTION
from bot.web.keys import STORE
from tests.conftest import POLICIES
from tests.support import CHANNEL, buttons, cards, eventually, message_text

ADMIN, OPS = "U0ADMIN", "U0OPS"  # an admin by name, and one through the admins user group S0ADMINS
APPROVER, OTHER = "U0APPROVER", "U0OTHER"
PROD_WRITE = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 1800, "reason": "hotfix"}
STAGING_READ = {"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 1800}


@pytest.fixture
async def grantbot(start_grantbot, sandbox):
    sandbox.users.update({ADMIN: "ari", OPS: "kim"})
    sandbox.set_usergroup("S0ADMINS", [OPS])
    return await start_grantbot(policy_file=POLICIES / "commands.yaml")


async def access(sandbox, text: str, user: str) -> dict:
    """Type ``/access text`` as ``user``; returns the ephemeral answer only they see."""
    before = len(sandbox.ephemerals)
    assert await sandbox.slash_command(text, user_id=user, channel=CHANNEL) == 200
    return await eventually(lambda: next((e for e in sandbox.ephemerals[before:] if e["user"] == user), None))


async def approved(grantbot, sandbox, body=PROD_WRITE) -> tuple[str, dict, dict]:
    """A request approved by U0APPROVER on its card: (request id, grant as the pipeline got it, card)."""
    status, created = await grantbot.api.request_access(body)
    assert status == 202, created
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", APPROVER) == 200
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    return created["id"], decided["grant"], card


async def auto_approved(grantbot, identity="deploy-bot", body=STAGING_READ) -> tuple[str, dict]:
    status, created = await grantbot.api.request_access(body, identity=identity)
    assert status == 201, created
    return created["id"], created["grant"]


async def active(grantbot, token: str) -> bool:
    return (await grantbot.api.introspect(token))[1]["active"]


def thread_of(sandbox, card) -> list[dict]:
    """The replies under ``card`` that say a grant ended (the thread also tells of decisions and hand-overs)."""
    return [m for m in sandbox.messages if m["thread_ts"] == card["ts"] and m["text"].startswith(":no_entry:")]


async def audit(grantbot, kind: str) -> list[dict]:
    return [e for e in await grantbot.app[STORE].audit_events() if e["kind"] == kind]


# ----- help and bad input -----

@pytest.mark.parametrize("text, first_line", [
    ("help", None),
    ("", None),
    ("HELP", None),
    ("frobnicate now", "Unknown subcommand frobnicate."),
])
async def test_help_lists_every_subcommand(grantbot, sandbox, text, first_line):
    shown = message_text(await access(sandbox, text, OTHER))
    for usage in ("list", "pending", "show &lt;id&gt;", "explain &lt;id&gt;", "revoke &lt;id&gt; [reason]",
                  "revoke-all &lt;identity glob&gt; [reason]", "help"):  # as Slack shows "<id>": escaped
        assert f"/access {usage}" in shown
    assert "Anyone in the workspace can use list, pending, show and explain" in shown
    assert (first_line in shown) if first_line else "Unknown" not in shown


@pytest.mark.parametrize("text, says", [
    ("show", "show needs an id"),
    ("explain", "explain needs an id"),
    ("revoke", "revoke needs an id"),
    ("show 12345", "12345 is not a request or grant id"),
    ("revoke not-an-id because", "not-an-id is not a request or grant id"),
    ("explain <!channel>", "&lt;!channel&gt; is not a request or grant id"),
    (f"show {uuid.UUID(int=1)}", f"There is no access request or grant {uuid.UUID(int=1)}."),
    (f"explain {uuid.UUID(int=2)}", f"There is no access request or grant {uuid.UUID(int=2)}."),
    (f"revoke {uuid.UUID(int=3)} oops", f"There is no access request or grant {uuid.UUID(int=3)}."),
    ("revoke-all", "revoke-all needs an identity glob"),
])
async def test_bad_input_gets_a_clear_sentence(grantbot, sandbox, text, says):
    answer = await access(sandbox, text, ADMIN)
    assert says in message_text(answer)
    assert "<!channel>" not in message_text(answer)


# ----- list, pending, show, explain -----

async def test_list_shows_active_grants_only(grantbot, sandbox, clock):
    assert "No active grants." in message_text(await access(sandbox, "list", OTHER))
    request_id, grant, _ = await approved(grantbot, sandbox)
    _, auto = await auto_approved(grantbot, "other-bot", {**STAGING_READ, "ttl_seconds": 60})
    shown = message_text(await access(sandbox, "list", OTHER))
    assert "2 active grants" in shown
    # Ids are shown by their first 8 characters, which /access show and revoke take.
    assert grant["id"][:8] in shown and request_id[:8] in shown and "deploy-bot" in shown and "db:write" in shown
    assert grant["id"] not in shown
    assert auto["id"][:8] in shown and "other-bot" in shown
    assert shown.index(auto["id"][:8]) < shown.index(grant["id"][:8])  # soonest to expire first
    assert "<@U0APPROVER>" in shown
    clock.advance(61)  # the auto-approved one expires
    shown = message_text(await access(sandbox, "list", OTHER))
    assert "1 active grant" in shown and auto["id"][:8] not in shown and grant["id"][:8] in shown


async def test_pending_lists_requests_waiting_for_people(grantbot, sandbox):
    assert "No pending requests." in message_text(await access(sandbox, "pending", OTHER))
    status, waiting = await grantbot.api.request_access(PROD_WRITE)
    await auto_approved(grantbot)
    shown = message_text(await access(sandbox, "pending", OTHER))
    assert "1 pending request" in shown and waiting["id"][:8] in shown and "prod-write" in shown
    assert "db:write" in shown and "production" in shown


async def test_show_and_revoke_take_a_unique_prefix_as_lists_print_it(grantbot, sandbox):
    request_id, grant, _ = await approved(grantbot, sandbox)
    by_prefix = message_text(await access(sandbox, f"show {grant['id'][:8]}", OTHER))
    assert by_prefix == message_text(await access(sandbox, f"show {request_id}", OTHER))
    too_short = message_text(await access(sandbox, f"show {grant['id'][:5]}", OTHER))
    assert "is not a request or grant id" in too_short and "first 8 characters" in too_short
    unknown = message_text(await access(sandbox, "show 00000000", OTHER))
    assert "no access request or grant whose id starts with 00000000" in unknown
    revoked = message_text(await access(sandbox, f"revoke {request_id[:8]} done", APPROVER))
    assert f"Revoked grant `{grant['id']}`" in revoked
    assert not await active(grantbot, grant["access_token"])


async def test_show_by_request_id_or_grant_id(grantbot, sandbox):
    request_id, grant, _ = await approved(grantbot, sandbox, {**PROD_WRITE, "reason": "fix <!here> now"})
    by_request = message_text(await access(sandbox, f"show {request_id}", OTHER))
    by_grant = message_text(await access(sandbox, f"show {grant['id']}", OTHER))
    assert by_request == by_grant
    for shown in (request_id, grant["id"], "approved", "<@U0APPROVER>", "prod-write", "active", "db:write",
                  "fix &lt;!here&gt; now"):
        assert shown in by_request
    assert "<!here>" not in by_request and grant["access_token"] not in by_request


async def test_explain_gives_the_policy_reasons_rule_by_rule(grantbot, sandbox):
    status, created = await grantbot.api.request_access(PROD_WRITE)
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    # The card's "Why" shows the deciding rule and collapses the others into the command that lists them all;
    # explain gives every line the card shows, and the collapsed ones too.
    why = message_text(card).split("*Why:*\n", 1)[1].split("\n")
    reasons = [line for line in why if line.startswith("• ")]
    assert reasons == ["• prod-write (require_approval): matches"]
    assert f"_2 other rules did not decide it: `/access explain {created['id'][:8]}` lists them all_" in why
    shown = message_text(await access(sandbox, f"explain {created['id'][:8]}", OTHER))
    assert "require_approval" in shown and "prod-write" in shown
    for line in reasons + ["• no-admin (deny): no: no requested scope matches ['*:admin']"]:
        assert line in shown


# ----- revoke -----

async def test_an_approver_revokes_a_grant_with_a_reason(grantbot, sandbox):
    request_id, grant, card = await approved(grantbot, sandbox)
    assert await active(grantbot, grant["access_token"])
    answer = message_text(await access(sandbox, f"revoke {grant['id']} leaked in a log <!channel>", APPROVER))
    assert f"Revoked grant `{grant['id']}`" in answer and "leaked in a log &lt;!channel&gt;" in answer
    assert not await active(grantbot, grant["access_token"])
    reply = await eventually(lambda: thread_of(sandbox, card) and thread_of(sandbox, card)[0])
    assert "revoked by <@U0APPROVER>: leaked in a log &lt;!channel&gt;" in reply["text"]
    _, seen = await grantbot.api.get_request(request_id)
    assert seen["grant"]["status"] == "revoked"
    [event] = await audit(grantbot, "grant.revoked")
    assert event["actor"] == APPROVER and event["grant_id"] == grant["id"]
    assert event["data"]["reason"] == "leaked in a log <!channel>"
    await eventually(lambda: "revoked" in message_text(card))  # the card shows it too


async def test_someone_who_is_not_an_approver_or_admin_is_refused(grantbot, sandbox):
    _, grant, card = await approved(grantbot, sandbox)
    answer = message_text(await access(sandbox, f"revoke {grant['id']}", OTHER))
    assert "Only approvers of rule prod-write or grantbot admins can revoke this grant" in answer
    assert await active(grantbot, grant["access_token"])
    assert await audit(grantbot, "grant.revoked") == []
    await asyncio.sleep(0.2)
    assert thread_of(sandbox, card) == []


@pytest.mark.parametrize("admin", [ADMIN, OPS], ids=["listed admin", "admin through a user group"])
async def test_an_admin_revokes_any_grant(grantbot, sandbox, admin):
    # Auto-approved under staging-read, a rule without approvers: only admins can revoke it from Slack.
    request_id, grant = await auto_approved(grantbot)
    answer = message_text(await access(sandbox, f"revoke {request_id}", admin))
    assert f"Revoked grant `{grant['id']}`" in answer
    assert not await active(grantbot, grant["access_token"])
    notice = await eventually(lambda: next((m for m in sandbox.messages if "revoked" in m["text"]), None))
    assert notice["channel"] == CHANNEL and f"<@{admin}>" in notice["text"] and "auto-approved" in notice["text"]


async def test_an_approver_of_another_rule_cannot_revoke(grantbot, sandbox):
    request_id, grant = await auto_approved(grantbot)
    answer = message_text(await access(sandbox, f"revoke {request_id}", APPROVER))
    assert "Only approvers of rule staging-read or grantbot admins" in answer
    assert await active(grantbot, grant["access_token"])


async def test_revoking_twice_or_after_expiry_changes_nothing(grantbot, sandbox, clock):
    _, grant, card = await approved(grantbot, sandbox)
    await access(sandbox, f"revoke {grant['id']}", APPROVER)
    again = message_text(await access(sandbox, f"revoke {grant['id']}", ADMIN))
    assert f"This grant was already revoked by <@{APPROVER}>; nothing changed." in again  # as on the card's button
    _, other, _ = await approved(grantbot, sandbox, {**PROD_WRITE, "ttl_seconds": 60})
    clock.advance(60)
    late = message_text(await access(sandbox, f"revoke {other['id']}", APPROVER))
    assert f"Grant {other['id']} has already expired; nothing changed." in late
    assert len(await audit(grantbot, "grant.revoked")) == 1
    await eventually(lambda: thread_of(sandbox, card))  # the outbox paces posts at one per second per channel
    await asyncio.sleep(1.5)
    assert len(thread_of(sandbox, card)) == 1


async def test_a_pending_request_has_nothing_to_revoke(grantbot, sandbox):
    _, waiting = await grantbot.api.request_access(PROD_WRITE)
    answer = message_text(await access(sandbox, f"revoke {waiting['id']}", ADMIN))
    assert f"Request {waiting['id']} has no grant to revoke (it is pending)." in answer


# ----- revoke-all -----

def confirm_button(ephemeral: dict) -> dict:
    return next(e for b in ephemeral["blocks"] if b["type"] == "actions" for e in b["elements"])


async def test_revoke_all_asks_then_revokes_matching_identities_once(grantbot, sandbox, clock):
    _, prod, card = await approved(grantbot, sandbox)
    _, staging = await auto_approved(grantbot)
    _, bystander = await auto_approved(grantbot, "other-bot")
    confirmation = await access(sandbox, "revoke-all deploy-* incident 42", ADMIN)
    shown = message_text(confirmation)
    assert "2 active grants" in shown and prod["id"][:8] in shown and staging["id"][:8] in shown
    assert bystander["id"][:8] not in shown and "incident 42" in shown
    button = confirm_button(confirmation)
    assert button["action_id"] == REVOKE_ALL_ACTION and button["text"]["text"] == "Revoke all 2"
    assert button["style"] == "danger"
    dialog = button["confirm"]
    assert dialog["title"]["text"] == "Revoke 2 grants?" and dialog["confirm"]["text"] == "Revoke all 2"
    assert dialog["deny"]["text"] == "Cancel" and "deploy-*" in dialog["text"]["text"]
    # Nothing happens before the click.
    assert await active(grantbot, prod["access_token"]) and await active(grantbot, staging["access_token"])

    clock.advance(1)
    _, later = await auto_approved(grantbot)  # issued after the list was shown: not part of this confirmation
    stale = copy.deepcopy(confirmation)
    # Two clicks at once (a double click, a redelivered payload): each grant is revoked once.
    statuses = await asyncio.gather(*[sandbox.click_ephemeral(ts=confirmation["ts"], action_id=REVOKE_ALL_ACTION,
                                                             user_id=ADMIN) for _ in range(2)])
    assert statuses == [200, 200]
    await eventually(lambda: "revoked" in message_text(confirmation) and not buttons(confirmation))
    assert not await active(grantbot, prod["access_token"]) and not await active(grantbot, staging["access_token"])
    assert await active(grantbot, bystander["access_token"]) and await active(grantbot, later["access_token"])
    events = await audit(grantbot, "grant.revoked")
    assert sorted(e["grant_id"] for e in events) == sorted([prod["id"], staging["id"]])
    assert all(e["actor"] == ADMIN and e["data"]["reason"] == "incident 42" and e["data"]["identity_glob"] == "deploy-*"
               for e in events)
    reply = await eventually(lambda: thread_of(sandbox, card) and thread_of(sandbox, card)[0])
    assert "revoked by <@U0ADMIN>: incident 42" in reply["text"]

    # A stale copy of the confirmation clicked again later ends nothing more.
    stale["ts"] += "9"
    sandbox.ephemerals.append(stale)
    assert await sandbox.click_ephemeral(ts=stale["ts"], action_id=REVOKE_ALL_ACTION, user_id=ADMIN) == 200
    note = await eventually(lambda: next((e for e in sandbox.ephemerals if "Nothing to revoke" in message_text(e)),
                                         None))
    assert note["user"] == ADMIN
    assert len(await audit(grantbot, "grant.revoked")) == 2
    assert await active(grantbot, later["access_token"])


async def test_revoke_all_that_matches_nothing_offers_no_button(grantbot, sandbox):
    await auto_approved(grantbot)
    answer = await access(sandbox, "revoke-all ci-*", ADMIN)
    assert "No active grant of an identity matching `ci-*`; nothing to revoke." in message_text(answer)
    assert buttons(answer) == []


async def test_revoke_all_is_for_admins_only(grantbot, sandbox):
    _, grant, _ = await approved(grantbot, sandbox)
    answer = await access(sandbox, "revoke-all *", APPROVER)
    assert "Only grantbot admins (the policy's admins:) can use revoke-all; nothing changed." in message_text(answer)
    assert buttons(answer) == []
    assert await active(grantbot, grant["access_token"])


async def test_revoke_all_checks_the_permission_again_when_clicked(grantbot, sandbox, clock):
    _, grant = await auto_approved(grantbot)
    confirmation = await access(sandbox, "revoke-all deploy-bot", OPS)
    assert buttons(confirmation) == [REVOKE_ALL_ACTION]
    sandbox.set_usergroup("S0ADMINS", [])  # OPS leaves the admins group before clicking
    clock.advance(301)  # past the directory's membership cache
    assert await sandbox.click_ephemeral(ts=confirmation["ts"], action_id=REVOKE_ALL_ACTION, user_id=OPS) == 200
    refusal = await eventually(lambda: next((e for e in sandbox.ephemerals if "Only grantbot admins" in e["text"]),
                                            None))
    assert refusal["user"] == OPS
    assert await active(grantbot, grant["access_token"])
    assert await audit(grantbot, "grant.revoked") == []
