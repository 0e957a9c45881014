"""manifests/slack-app.yaml declares what the code uses: a bot scope for every Web API method grantbot calls
(found in the source), the slash commands the listeners register (and the ``commands`` scope they need),
interactivity for the buttons, nothing it does not need."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from bot.slack.blocks import APPROVE_ACTION, DENY_ACTION
from bot.slack.command_blocks import REVOKE_ALL_ACTION
from tests.conftest import POLICIES
from tests.support import CHANNEL, buttons, cards, eventually, message_text

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
    assert {action for _, action in rendered_action_ids()} == {APPROVE_ACTION, DENY_ACTION}
    assert {case for case, _ in rendered_action_ids()} >= {"card_pending", "home_busy"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # listeners do not depend on the database
@pytest.mark.parametrize("case, action_id", rendered_action_ids())
async def test_each_rendered_action_id_is_answered_by_a_listener(grantbot, sandbox, case, action_id):
    """A click on each rendered button, signed as Slack signs it, is handled: Bolt answers 404 ("unhandled
    request") when no listener matches."""
    from tests.test_block_goldens import CASES

    output = CASES[case]()
    message = {"ts": "1700000000.000100", "text": "", "blocks": output["blocks"] if isinstance(output, dict) else output}
    assert await grantbot.api.click(message, action_id, "U0OTHER") == 200


async def test_every_rendered_action_id_has_a_listener(grantbot, sandbox):
    _, created = await grantbot.api.request_access({"environment": "production", "scopes": ["db:write"]})
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    rendered = buttons(card)
    assert rendered == [APPROVE_ACTION, DENY_ACTION]
    for number, action_id in enumerate(rendered, start=1):
        # Clicked by someone who may not decide: handled (200, a private refusal), and nothing changes.
        assert await grantbot.api.click(card, action_id, "U0OTHER") == 200
        await eventually(lambda: len(sandbox.ephemerals) == number)
    assert (await grantbot.api.get_request(created["id"]))[1]["status"] == "pending"


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
    # Bolt answers 404 for a command nobody listens to: Slack would show the person an error.
    assert await sandbox.slash_command("help", user_id="U0OTHER", channel=CHANNEL, command="/undeclared") == 404


async def test_the_revoke_all_button_has_a_listener(start_grantbot, sandbox):
    sandbox.users["U0ADMIN"] = "ari"
    grantbot = await start_grantbot(policy_file=POLICIES / "commands.yaml")
    await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    assert await sandbox.slash_command("revoke-all *", user_id="U0ADMIN", channel=CHANNEL) == 200
    confirmation = await eventually(lambda: sandbox.ephemerals and sandbox.ephemerals[-1])
    assert buttons(confirmation) == [REVOKE_ALL_ACTION]
    assert await sandbox.click_ephemeral(ts=confirmation["ts"], action_id=REVOKE_ALL_ACTION, user_id="U0ADMIN") == 200
    await eventually(lambda: "revoked 1 grant" in message_text(confirmation))
