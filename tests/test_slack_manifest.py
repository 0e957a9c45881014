"""manifests/slack-app.yaml declares what the code uses: a bot scope for every Web API method grantbot calls
(found in the source), the slash commands the listeners register (and the ``commands`` scope they need),
interactivity for the buttons, nothing it does not need."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
import re
import urllib.parse
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.domain.models import AccessRequest, Decision, Grant, GrantStatus, RequestStatus
from bot.slack import blocks, modal_blocks
from bot.slack.blocks import APPROVE_ACTION, DENY_ACTION
from bot.slack.command_blocks import REVOKE_ALL_ACTION
from tests.conftest import POLICIES
from tests.support import (
    CHANNEL,
    FIXTURES,
    SIGNING_SECRET,
    buttons,
    cards,
    eventually,
    message_text,
    slack_signed,
)

ROOT = Path(__file__).parents[1]
# Slack's required bot scope per Web API method (api.slack.com/methods/<method>).
SCOPES = {
    "chat.postMessage": {"chat:write"},
    "chat.update": {"chat:write"},
    "chat.postEphemeral": {"chat:write"},
    "conversations.history": {"channels:history", "groups:history"},
    "conversations.replies": {"channels:history", "groups:history"},
    "usergroups.users.list": {"usergroups:read"},
    "views.publish": set(),  # api.slack.com/methods/views.publish: no scope beyond a bot token
    "views.open": set(),  # no scope: the trigger_id of the user's click is the permission
}


# Slash commands need this bot scope (api.slack.com/scopes/commands); their answers go to a response_url.
COMMANDS_SCOPE = "commands"


def called_methods() -> set[str]:
    source = "\n".join(p.read_text() for p in (ROOT / "bot").rglob("*.py") if "sandbox" not in p.name)
    calls = re.findall(r"client\.((?:chat|conversations|users|views|usergroups|reactions)_[A-Za-z_]+)\(", source)
    # slack-sdk names methods with "_" for every "." (usergroups_users_list -> usergroups.users.list)
    return {name.replace("_", ".") for name in calls}


def listened_events() -> set[str]:
    """Events API event types the code registers Bolt listeners for (``bolt.event("...")``)."""
    source = "\n".join(p.read_text() for p in (ROOT / "bot").rglob("*.py") if "sandbox" not in p.name)
    return set(re.findall(r"\.event\(\s*[\"']([a-z_.]+)[\"']", source))


def test_every_called_method_has_its_scope_and_no_scope_is_unused():
    manifest = yaml.safe_load((ROOT / "manifests" / "slack-app.yaml").read_text())
    methods = called_methods()
    assert methods == set(SCOPES), "a new Web API method needs its scope here and in the manifest"
    needed = set().union(*(SCOPES[m] for m in methods)) | ({COMMANDS_SCOPE} if declared_commands() else set())
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == needed


def test_interactivity_is_on_for_the_card_buttons():
    manifest = yaml.safe_load((ROOT / "manifests" / "slack-app.yaml").read_text())
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["interactivity"]["request_url"].endswith("/slack/events")


def test_the_manifest_subscribes_to_exactly_the_events_the_code_listens_to():
    manifest = yaml.safe_load((ROOT / "manifests" / "slack-app.yaml").read_text())
    events = manifest["settings"]["event_subscriptions"]
    assert set(events["bot_events"]) == listened_events() == {"app_home_opened"}
    assert events["request_url"].endswith("/slack/events")
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True  # app_home_opened needs the Home tab


async def test_every_subscribed_event_is_handled(grantbot, sandbox):
    """Delivered as Slack delivers it, each subscribed event is answered 200 (Bolt answers 404 to an event
    nobody listens to)."""
    manifest = yaml.safe_load((ROOT / "manifests" / "slack-app.yaml").read_text())
    assert await sandbox.verify_url()  # Slack checks the request URL before it sends any event
    for event_type in manifest["settings"]["event_subscriptions"]["bot_events"]:
        assert event_type == "app_home_opened", "a new event needs a way to send it here"
        assert await sandbox.open_home("U0APPROVER") == 200


def rendered_action_ids() -> list[tuple[str, str]]:
    """(builder case, action_id) for every button any Block Kit builder renders (the golden cases)."""
    from tests.test_block_goldens import CASES

    found = set()
    for name, build in CASES.items():
        output = build()
        blocks = output["blocks"] if isinstance(output, dict) else output if isinstance(output, list) else []
        for block in blocks:
            elements = block.get("elements", []) if block["type"] == "actions" else [block.get("accessory")]
            found |= {(name, e["action_id"]) for e in elements if isinstance(e, dict) and "action_id" in e}
    return sorted(found)


def test_the_builders_render_buttons_at_all():
    assert {action for _, action in rendered_action_ids()} >= {APPROVE_ACTION, DENY_ACTION, "approve_with_changes",
                                                                 "revoke_grant"}
    assert {case for case, _ in rendered_action_ids()} >= {"card_pending", "home_busy"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # listeners do not depend on the database
@pytest.mark.parametrize("case, action_id", rendered_action_ids())
async def test_each_rendered_action_id_is_answered_by_a_listener(grantbot, sandbox, case, action_id, caplog):
    """A click on each rendered button, signed as Slack signs it, reaches a listener: an unhandled one would be
    answered too (200, so Slack shows no error) but logged as having no listener."""
    from tests.test_block_goldens import CASES

    output = CASES[case]()
    message = {"ts": "1700000000.000100", "text": "", "blocks": output["blocks"] if isinstance(output, dict) else output}
    with caplog.at_level(logging.WARNING, logger="bot.slack.listeners"):
        assert await grantbot.api.click(message, action_id, "U0OTHER") == 200
    assert not [r for r in caplog.records if "no listener" in r.getMessage()], action_id


def rendered_ids() -> tuple[set[str], set[str]]:
    """Every button action_id the card builders render (in every state a card can be in) and every callback_id
    of the modal builders."""
    at = datetime(2026, 11, 29, tzinfo=UTC)
    pending = AccessRequest(
        id="3f2a0c1e-0000-4000-8000-000000000001", identity="deploy-bot", environment="production",
        scopes=("db:write",), ttl_seconds=900, audience="a", reason="r", context={"k": "v"},
        status=RequestStatus.PENDING, decision=Decision.REQUIRE_APPROVAL, rule="prod-write", decision_reason="x",
        approvers=("U0APPROVER",), channel="C0SANDBOX", created_at=at, expires_at=at + timedelta(hours=1))
    grant = Grant(id="g", request_id=pending.id, identity="deploy-bot", scopes=("db:write",), audience="a", jti="j",
                  issued_at=at, expires_at=at + timedelta(seconds=900))
    decided = replace(pending, decided_at=at, decided_by="U0APPROVER")
    states = [(pending, None), (replace(pending, min_approvals=2), None),
              (replace(decided, status=RequestStatus.APPROVED), grant),
              (replace(decided, status=RequestStatus.DENIED, denial_reason="no"), None),
              (replace(decided, status=RequestStatus.EXPIRED, decided_by="timeout"), None)]
    states += [(replace(decided, status=RequestStatus.APPROVED), replace(grant, status=s, ended_by="U0SECOND"))
               for s in (GrantStatus.EXPIRED, GrantStatus.REVOKED)]
    actions = {e["action_id"] for request, g in states for b in blocks.card_blocks(request, g)
               if b["type"] == "actions" for e in b["elements"]}
    callbacks = {build(pending, "C0SANDBOX", "1.0")["callback_id"]
                 for build in (modal_blocks.deny_modal, modal_blocks.approve_with_changes_modal)}
    return actions, callbacks


# What a listener visibly does with a click by someone who may not act: a private refusal.
ACTIONS = {"approve": "not one of them", "approve_with_changes": "not one of them", "deny": "not one of them",
           "revoke_grant": "or grantbot admins can revoke this grant"}
# What a listener visibly does with a form submitted empty: keeps the form open with an error on the field.
CALLBACKS = {"deny_reason": ({"reason": {"reason_input": {"type": "plain_text_input", "value": ""}}}, "reason"),
             "approve_with_changes": ({"ttl": {"ttl_minutes": {"type": "number_input", "value": ""}}}, "ttl")}


def test_the_listener_table_covers_every_rendered_id():
    actions, callbacks = rendered_ids()
    assert actions == set(ACTIONS), "a new button needs a listener and a row in ACTIONS"
    assert callbacks == set(CALLBACKS), "a new modal needs a view listener and a row in CALLBACKS"


def view_submission_body(callback_id: str, request_id: str, values: dict, user_id: str = "U0APPROVER") -> str:
    """A signed-ready Slack view_submission (fixture shape) for a modal with ``callback_id``."""
    payload = copy.deepcopy(json.loads((FIXTURES / "slack" / "view_submission.json").read_text()))
    payload["user"]["id"] = user_id
    payload["view"].update(callback_id=callback_id, state={"values": values},
                           private_metadata=json.dumps({"request_id": request_id, "channel": "C0SANDBOX",
                                                        "ts": "1.0"}))
    return "payload=" + urllib.parse.quote(json.dumps(payload))


async def post_slack(grantbot, body: str) -> tuple[int, str]:
    async with grantbot.api.http.post(grantbot.base_url + "/slack/events", data=body.encode(),
                                      headers=slack_signed(body, secret=SIGNING_SECRET)) as resp:
        return resp.status, await resp.text()


async def test_every_rendered_action_id_and_callback_id_has_a_listener(grantbot, sandbox):
    _, created = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"]})
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    _, approved = await grantbot.api.request_access({"environment": "production", "scopes": ["deploy:api"]})
    approved_card = await eventually(lambda: next((c for c in cards(sandbox) if approved["id"] in message_text(c)),
                                                  None))
    await grantbot.api.click(approved_card, "approve", "U0APPROVER")
    await eventually(lambda: buttons(approved_card) == ["revoke_grant"])
    for number, (action_id, answer) in enumerate(ACTIONS.items(), start=1):
        on = card if action_id in buttons(card) else approved_card
        # Clicked by someone who may not act: handled (200, a private refusal), and nothing changes.
        assert await sandbox.click(channel=on["channel"], ts=on["ts"], action_id=action_id, user_id="U0OTHER") == 200
        await eventually(lambda: len(sandbox.ephemerals) == number)
        assert answer in sandbox.ephemerals[-1]["text"], action_id
    for callback_id, (values, field) in CALLBACKS.items():
        status, answer = await post_slack(grantbot, view_submission_body(callback_id, created["id"], values))
        assert status == 200 and json.loads(answer)["response_action"] == "errors", callback_id
        assert list(json.loads(answer)["errors"]) == [field]
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
    assert sandbox.views == {}


def registered_commands() -> set[str]:
    """The slash commands the source registers with Bolt (``….command(<expression>)``), each expression evaluated
    in its module (a literal or a constant such as ``cb.ACCESS_COMMAND``)."""
    found = set()
    for path in (ROOT / "bot").rglob("*.py"):
        expressions = re.findall(r"\.command\(\s*([\w.]+|\"[^\"]*\"|'[^']*')\s*\)", path.read_text())
        if expressions:
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            found |= {eval(expression, vars(module)) for expression in expressions}  # noqa: S307 - our own source
    return found


def declared_commands() -> set[str]:
    manifest = yaml.safe_load((ROOT / "manifests" / "slack-app.yaml").read_text())
    return {c["command"] for c in manifest.get("features", {}).get("slash_commands", [])}


def test_the_manifest_declares_exactly_the_slash_commands_the_code_registers():
    assert registered_commands() == declared_commands() == {"/access"}
    manifest = yaml.safe_load((ROOT / "manifests" / "slack-app.yaml").read_text())
    for command in manifest["features"]["slash_commands"]:
        assert command["url"].endswith("/slack/events")
        assert command["description"] and command["usage_hint"]


async def test_every_declared_slash_command_is_answered_and_no_other(grantbot, sandbox):
    for command in declared_commands():
        before = len(sandbox.ephemerals)
        assert await sandbox.slash_command("help", user_id="U0OTHER", channel=CHANNEL, command=command) == 200
        await eventually(lambda: len(sandbox.ephemerals) > before)
    # A command nobody listens to is answered (200, nothing shown) and logged as having no listener.
    before = len(sandbox.ephemerals)
    assert await sandbox.slash_command("help", user_id="U0OTHER", channel=CHANNEL, command="/undeclared") == 200
    await asyncio.sleep(0.3)
    assert len(sandbox.ephemerals) == before


async def test_the_revoke_all_button_has_a_listener(start_grantbot, sandbox):
    sandbox.users["U0ADMIN"] = "ari"
    grantbot = await start_grantbot(policy_file=POLICIES / "commands.yaml")
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    assert await sandbox.slash_command("revoke-all *", user_id="U0ADMIN", channel=CHANNEL) == 200
    confirmation = await eventually(lambda: sandbox.ephemerals and sandbox.ephemerals[-1])
    assert buttons(confirmation) == [REVOKE_ALL_ACTION]
    assert await sandbox.click_ephemeral(ts=confirmation["ts"], action_id=REVOKE_ALL_ACTION, user_id="U0ADMIN") == 200
    await eventually(lambda: "revoked 1 grant" in message_text(confirmation))



async def test_an_unknown_action_or_callback_is_answered_and_logged_not_404(grantbot, sandbox, caplog):
    _, created = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"]})
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    # A button from an older (or newer) grantbot that this one no longer renders.
    old = copy.deepcopy(card)
    old["blocks"].append({"type": "actions", "block_id": "legacy", "elements": [
        {"type": "button", "action_id": "snooze", "value": created["id"], "text": {"type": "plain_text", "text": "Snooze"}}]})
    with caplog.at_level(logging.WARNING, logger="bot.slack.listeners"):
        assert await grantbot.api.click(old, "snooze", "U0APPROVER") == 200
        status, answer = await post_slack(grantbot, view_submission_body("rename_request", created["id"], {}))
        assert (status, answer) == (200, "")  # an empty answer closes the form
    logged = [r.getMessage() for r in caplog.records if r.name == "bot.slack.listeners"]
    assert any("no listener" in m and "snooze" in m for m in logged), logged
    assert any("no listener" in m and "rename_request" in m for m in logged), logged
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"
    assert card["updated_count"] == 0 and sandbox.ephemerals == []
