"""The Slack sandbox's slash commands and clicks on ephemeral messages, against a bare Bolt app over real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox import SlackSandbox

TOKEN, SECRET, CHANNEL = "xoxb-sandbox", "sandbox-signing-secret", "C0SANDBOX"
CONFIRM = {"type": "actions", "block_id": "go", "elements": [{
    "type": "button", "action_id": "go", "value": "v1", "text": {"type": "plain_text", "text": "Go"},
    "confirm": {"title": {"type": "plain_text", "text": "Sure?"}, "text": {"type": "plain_text", "text": "Really"},
                "confirm": {"type": "plain_text", "text": "Yes"}, "deny": {"type": "plain_text", "text": "No"}}}]}


async def until(check):
    for _ in range(200):
        if value := check():
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


@pytest.fixture
async def sandbox():
    box = SlackSandbox(bot_token=TOKEN, signing_secret=SECRET)
    await box.start()
    yield box
    await box.stop()


@pytest.fixture
async def bolt_app(sandbox):
    """A Bolt app: ``/echo`` answers through the response_url with a button; the button replaces that answer."""
    bolt = AsyncApp(client=AsyncWebClient(token=TOKEN, base_url=sandbox.api_url), signing_secret=SECRET)
    seen: list[dict] = []

    @bolt.command("/echo")
    async def echo(ack, command, respond):
        await ack()
        seen.append(command)
        await respond(text=f"you said {command['text']}", response_type="ephemeral",
                      blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "ok"}}, CONFIRM])

    @bolt.command("/inline")
    async def inline(ack):
        await ack(text="answered in the ack")

    @bolt.action("go")
    async def go(ack, body, respond):
        await ack()
        seen.append(body)
        await respond(text=f"went with {body['actions'][0]['value']}", replace_original=True)

    async def events(request):
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    sandbox.events_url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    yield seen
    await runner.cleanup()


async def test_a_slash_command_reaches_bolt_and_its_answers_are_ephemeral(sandbox, bolt_app):
    assert await sandbox.slash_command("hello <there>", user_id="U0APPROVER", channel=CHANNEL, command="/echo") == 200
    answer = await until(lambda: sandbox.ephemerals and sandbox.ephemerals[0])
    assert answer["user"] == "U0APPROVER" and answer["channel"] == CHANNEL
    assert answer["text"] == "you said hello <there>"
    command = bolt_app[0]
    assert command["command"] == "/echo" and command["user_id"] == "U0APPROVER" and command["channel_id"] == CHANNEL
    assert command["response_url"].startswith(sandbox.base_url + "/response/") and command["trigger_id"]
    assert sandbox.messages == []  # nothing in the channel: only the person sees the answer


async def test_an_answer_in_the_ack_is_shown_too(sandbox, bolt_app):
    assert await sandbox.slash_command("", user_id="U0OTHER", channel=CHANNEL, command="/inline") == 200
    assert sandbox.ephemerals[0]["text"] == "answered in the ack" and sandbox.ephemerals[0]["user"] == "U0OTHER"


async def test_a_command_nobody_handles_is_404_and_unknown_people_are_refused(sandbox, bolt_app):
    assert await sandbox.slash_command("x", user_id="U0APPROVER", channel=CHANNEL, command="/nope") == 404
    with pytest.raises(KeyError):
        await sandbox.slash_command("x", user_id="U0NOBODY", channel=CHANNEL, command="/echo")


async def test_a_click_on_an_ephemeral_button_replaces_that_ephemeral(sandbox, bolt_app):
    await sandbox.slash_command("hi", user_id="U0APPROVER", channel=CHANNEL, command="/echo")
    answer = await until(lambda: sandbox.ephemerals and sandbox.ephemerals[0])
    with pytest.raises(KeyError):  # only the person who sees it can click it
        await sandbox.click_ephemeral(ts=answer["ts"], action_id="go", user_id="U0OTHER")
    assert await sandbox.click_ephemeral(ts=answer["ts"], action_id="go", user_id="U0APPROVER") == 200
    await until(lambda: answer["text"] == "went with v1")
    click = bolt_app[1]
    assert click["container"]["is_ephemeral"] is True and "message" not in click
    assert click["actions"][0]["confirm"]["title"]["text"] == "Sure?"
    assert len(sandbox.ephemerals) == 1 and answer["blocks"] == []


async def test_the_page_types_commands_and_clicks_ephemeral_buttons(sandbox, bolt_app):
    async with aiohttp.ClientSession(base_url=sandbox.base_url) as http:
        async with http.get("/") as r:
            page = await r.text()
        assert 'id="command"' in page and "/sandbox/command" in page and "window.confirm" in page
        typed = {"command": "/echo", "text": "from the page", "user_id": "U0APPROVER", "channel": CHANNEL}
        async with http.post("/sandbox/command", json=typed) as r:
            assert r.status == 200 and await r.json() == {"status": 200}
        answer = await until(lambda: sandbox.ephemerals and sandbox.ephemerals[0])
        click = {"channel": CHANNEL, "ts": answer["ts"], "action_id": "go", "user_id": "U0APPROVER", "ephemeral": True}
        async with http.post("/sandbox/click", json=click) as r:
            assert r.status == 200 and await r.json() == {"status": 200}
        await until(lambda: answer["text"] == "went with v1")
        async with http.post("/sandbox/command", json={"text": "x"}) as r:
            assert r.status == 400


def test_the_payload_has_the_form_fields_slack_sends(sandbox):
    payload = sandbox.slash_command_payload("revoke x", user_id="U0APPROVER", channel=CHANNEL)
    fixture = parse_qs((Path(__file__).parent / "fixtures" / "slack" / "slash_command.form").read_text().strip())
    assert set(payload) == set(fixture)
    assert payload["command"] == "/access" and payload["text"] == "revoke x"
