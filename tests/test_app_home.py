"""The App Home tab, end to end: the sandbox sends Slack's signed ``app_home_opened`` event to the running
grantbot, which publishes the viewer's Home with ``views.publish``; clicks in the Home go back as Slack's
``block_actions`` from a view. Policy: tests/policies/quorum.yaml (two of three, a user group, a people: map)."""

from __future__ import annotations

import pytest

from tests.conftest import POLICIES
from tests.support import cards, deny_with_reason, eventually, message_text

QUORUM = POLICIES / "quorum.yaml"
PROD_DB = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 900,
           "reason": "migration 12 <!channel>"}
PROD_DEPLOY = {"environment": "production", "scopes": ["deploy:api"], "ttl_seconds": 600, "reason": "release 7"}


@pytest.fixture
async def grantbot(start_grantbot, sandbox):
    sandbox.users["U0THIRD"] = "kim"
    sandbox.set_usergroup("S0ONCALL", ["U0THIRD"])
    return await start_grantbot(policy_file=QUORUM)


async def open_home(sandbox, user: str) -> dict:
    """Open ``user``'s Home tab in the sandbox and return the view grantbot published in answer."""
    before = sandbox.home_publishes.get(user, 0)
    assert await sandbox.open_home(user) == 200
    await eventually(lambda: sandbox.home_publishes.get(user, 0) > before)
    return sandbox.home_views[user]


async def next_home(sandbox, user: str, before: int) -> dict:
    await eventually(lambda: sandbox.home_publishes.get(user, 0) > before)
    return sandbox.home_views[user]


def text_of(view: dict) -> str:
    return message_text({"blocks": view["blocks"]})


def home_buttons(view: dict) -> list[tuple[str, str, str]]:
    """(block_id, action_id, value) of every button in the Home, top to bottom."""
    return [(b["block_id"], e["action_id"], e["value"]) for b in view["blocks"] if b["type"] == "actions"
            for e in b["elements"]]


async def request(grantbot, body: dict, **kw) -> dict:
    status, created = await grantbot.api.request_access(body, **kw)
    assert status in (201, 202), created
    return created


async def test_slack_verifies_the_events_url(grantbot, sandbox):
    assert await sandbox.verify_url()


async def test_the_home_lists_what_the_viewer_may_decide_with_the_cards_buttons(grantbot, sandbox):
    db = await request(grantbot, PROD_DB)  # U0APPROVER, U0SECOND, U0THIRD; two of them
    deploy = await request(grantbot, PROD_DEPLOY)  # members of S0ONCALL: U0THIRD
    mine = await request(grantbot, {**PROD_DB, "context": {"actor": "octocat"}})  # octocat is U0APPROVER

    dana = await open_home(sandbox, "U0APPROVER")
    assert dana["type"] == "home" and len(dana["blocks"]) <= 100
    # The request dana triggered herself and the group's request are not hers to decide.
    assert [(action, value) for _, action, value in home_buttons(dana)] == [("approve", db["id"]), ("deny", db["id"])]
    text = text_of(dana)
    assert "Waiting for your decision (1)" in text and "deploy-bot" in text and "`db:write`" in text
    assert "0 of 2 approvals" in text and "migration 12 &lt;!channel&gt;" in text and "<!channel>" not in text
    assert deploy["id"] not in text and mine["id"] not in text

    kim = await open_home(sandbox, "U0THIRD")  # a listed approver and the on-call group's member
    assert {value for _, _, value in home_buttons(kim)} == {db["id"], deploy["id"], mine["id"]}

    sam = await open_home(sandbox, "U0OTHER")
    assert home_buttons(sam) == [] and "Nothing is waiting for you." in text_of(sam)


async def test_approving_from_the_home_decides_updates_the_card_and_refreshes_the_home(grantbot, sandbox):
    created = await request(grantbot, PROD_DEPLOY)
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    kim = await open_home(sandbox, "U0THIRD")
    block_id = next(b for b, action, value in home_buttons(kim) if action == "approve" and value == created["id"])

    published = sandbox.home_publishes["U0THIRD"]
    assert await sandbox.home_click(user_id="U0THIRD", block_id=block_id, action_id="approve") == 200
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "approved" and decided["decided_by"] == "U0THIRD"

    # The card in the channel says so (the card.update outbox event), without buttons.
    await eventually(lambda: card["updated_count"] > 0)
    assert "Approved" in message_text(card) and "<@U0THIRD>" in message_text(card)
    # And the clicker's Home is published again: nothing waiting, the grant active, the decision listed.
    home = await next_home(sandbox, "U0THIRD", published)
    text = text_of(home)
    assert home_buttons(home) == [] and "Waiting for your decision (0)" in text
    assert "Active grants (1)" in text and "*deploy-bot* `deploy:api` on *production*, expires in 10 min" in text
    assert "approved by <@U0THIRD>, grant active" in text
    assert not [e for e in sandbox.ephemerals if e["user"] == "U0THIRD"]


async def test_a_vote_towards_a_quorum_stays_listed_without_buttons(grantbot, sandbox):
    created = await request(grantbot, PROD_DB)
    dana = await open_home(sandbox, "U0APPROVER")
    block_id = next(b for b, action, _ in home_buttons(dana) if action == "approve")
    published = sandbox.home_publishes["U0APPROVER"]
    assert await sandbox.home_click(user_id="U0APPROVER", block_id=block_id, action_id="approve") == 200
    home = await next_home(sandbox, "U0APPROVER", published)
    assert home_buttons(home) == []
    assert "You approved this; it is waiting for 1 more approval." in text_of(home)
    assert "1 of 2 approvals" in text_of(home) and created["id"] in text_of(home)
    # The second approver still sees the buttons, and the progress.
    lee = await open_home(sandbox, "U0SECOND")
    assert [a for _, a, _ in home_buttons(lee)] == ["approve", "deny"] and "1 of 2 approvals" in text_of(lee)


async def test_a_click_that_changes_nothing_is_explained_on_the_home_not_in_a_channel(grantbot, sandbox):
    created = await request(grantbot, PROD_DEPLOY)
    kim = await open_home(sandbox, "U0THIRD")
    block_id = next(b for b, action, _ in home_buttons(kim) if action == "deny")
    sandbox.set_usergroup("S0ONCALL", [])  # kim leaves on-call before clicking (the directory caches 5 min)...
    # The card goes out through the outbox, maybe after the Home was published.
    card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
    assert await grantbot.api.click(card, "approve", "U0THIRD") == 200  # ...so approve from the card first
    await eventually(lambda: card["updated_count"] > 0)

    published = sandbox.home_publishes["U0THIRD"]
    assert await sandbox.home_click(user_id="U0THIRD", block_id=block_id, action_id="deny") == 200
    home = await next_home(sandbox, "U0THIRD", published)
    assert home["blocks"][0]["text"]["text"] == ":warning: This request was already approved by <@U0THIRD>."
    assert sandbox.ephemerals == []


async def test_recent_decisions_show_denials_and_timeouts_newest_first(grantbot, sandbox, clock):
    slow = await request(grantbot, PROD_DB)
    slow_card = await eventually(lambda: next((c for c in cards(sandbox) if slow["id"] in message_text(c)), None))
    denied = await request(grantbot, PROD_DEPLOY)
    card = await eventually(lambda: next((c for c in cards(sandbox) if denied["id"] in message_text(c)), None))
    assert (await deny_with_reason(sandbox, card, "U0THIRD", "not during the freeze"))[0] == 200
    await eventually(lambda: card["updated_count"] > 0)
    clock.advance(1801)  # past the pending timeout: the sweep marks the other one expired
    await eventually(lambda: "Expired" in message_text(slow_card))

    text = text_of(await open_home(sandbox, "U0OTHER"))
    first = text.index("*deploy-bot* `db:write` on *production*: :hourglass: timed out: nobody decided")
    second = text.index("*deploy-bot* `deploy:api` on *production*: :x: denied by <@U0THIRD> · 30 min 1 s ago")
    assert first < second and "Active grants (0)" in text and "No grant is active." in text


async def test_a_long_queue_is_cut_to_slacks_100_blocks(grantbot, sandbox):
    for n in range(40):
        await request(grantbot, {**PROD_DB, "reason": f"batch {n}"})
    kim = await open_home(sandbox, "U0THIRD")
    assert len(kim["blocks"]) <= 100
    assert len(home_buttons(kim)) == 2 * 25
    assert "… and 15 more waiting for you" in text_of(kim) and "Waiting for your decision (40)" in text_of(kim)


async def test_the_newest_requests_are_listed_first_with_a_count_of_the_older_ones(grantbot, sandbox, clock):
    asked = []
    for n in range(30):
        asked.append((await request(grantbot, {**PROD_DB, "reason": f"batch {n}"}))["id"])
        clock.advance(1)
    dana = await open_home(sandbox, "U0APPROVER")
    shown = [value for _, action, value in home_buttons(dana) if action == "approve"]
    assert shown == asked[::-1][:25]
    text = text_of(dana)
    assert "Waiting for your decision (30)" in text and "… and 5 more waiting for you (newest shown first)" in text


async def test_denying_from_the_home_through_the_reason_form_refreshes_the_home(grantbot, sandbox):
    created = await request(grantbot, PROD_DEPLOY)
    kim = await open_home(sandbox, "U0THIRD")
    block_id = next(b for b, action, value in home_buttons(kim) if action == "deny" and value == created["id"])
    assert await sandbox.home_click(user_id="U0THIRD", block_id=block_id, action_id="deny") == 200
    form = await eventually(lambda: next(iter(sandbox.views.values()), None))
    published = sandbox.home_publishes["U0THIRD"]
    assert await sandbox.submit_view(form["id"], {"reason": "not during the freeze"}) == (200, None)
    _, decided = await grantbot.api.get_request(created["id"], wait=10)
    assert decided["status"] == "denied" and decided["denial_reason"] == "not during the freeze"
    home = await next_home(sandbox, "U0THIRD", published)
    assert home_buttons(home) == [] and "Waiting for your decision (0)" in text_of(home)
    assert "denied by <@U0THIRD>" in text_of(home)
