"""The Slack sandbox, exercised over real HTTP with the real Slack clients."""

import asyncio
import json
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox import SlackSandbox
from tests.support import eventually

TOKEN = "xoxb-sandbox"
SECRET = "sandbox-signing-secret"
CHANNEL = "C0SANDBOX"
CARD = [
    {"type": "header", "text": {"type": "plain_text", "text": "Access request"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*deploy-bot* asks for `db:write`"}},
    {"type": "actions", "block_id": "decide", "elements": [
        {"type": "button", "action_id": "approve", "text": {"type": "plain_text", "text": "Approve"},
         "style": "primary", "value": "REQ1"},
        {"type": "button", "action_id": "deny", "text": {"type": "plain_text", "text": "Deny"},
         "style": "danger", "value": "REQ1"},
    ]},
]


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def sandbox():
    sandbox = SlackSandbox(bot_token=TOKEN, signing_secret=SECRET)
    await sandbox.start()
    yield sandbox
    await sandbox.stop()


@pytest.fixture
def client(sandbox):
    return AsyncWebClient(token=TOKEN, base_url=sandbox.api_url)


@pytest.fixture
async def receiver(sandbox):
    """A stand-in for grantbot's /slack/events: verifies Slack's signature, records payloads."""
    received: list[dict] = []
    verifier = SignatureVerifier(SECRET)

    async def events(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        if not verifier.is_valid(body=body, timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
                                 signature=request.headers.get("X-Slack-Signature", "")):
            return web.Response(status=401)
        assert request.content_type == "application/x-www-form-urlencoded"
        received.append(json.loads(parse_qs(body)["payload"][0]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner, url = await serve(app)
    sandbox.events_url = url + "/slack/events"
    yield received
    await runner.cleanup()


async def test_auth_test(sandbox, client):
    answer = await client.auth_test()
    assert answer["ok"] and answer["user_id"] == "U0GRANTBOT" and answer["team_id"] == "T0SANDBOX"
    assert answer["bot_id"] == "B0GRANTBOT"
    assert sandbox.calls[-1]["method"] == "auth.test"


async def test_post_update_and_thread(sandbox, client):
    posted = await client.chat_postMessage(channel=CHANNEL, text="Access request", blocks=CARD)
    assert posted["channel"] == CHANNEL and posted["message"]["blocks"][2]["block_id"] == "decide"
    stored = sandbox.messages[0]
    assert stored["ts"] == posted["ts"] and stored["text"] == "Access request" and stored["updated_count"] == 0
    assert all(block.get("block_id") for block in stored["blocks"])  # Slack fills in missing block_ids
    assert sandbox.calls[-1] == {"method": "chat.postMessage", "channel": CHANNEL, "at": sandbox.calls[-1]["at"],
                                 "status": 200,
                                 "args": {"channel": CHANNEL, "text": "Access request", "blocks": CARD}}

    reply = await client.chat_postMessage(channel=CHANNEL, text="audit note", thread_ts=posted["ts"])
    assert reply["ts"] > posted["ts"] and sandbox.messages[1]["thread_ts"] == posted["ts"]

    decided = [{"type": "section", "text": {"type": "mrkdwn", "text": "Approved by <@U0APPROVER>"}}]
    updated = await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="Approved", blocks=decided)
    assert updated["ts"] == posted["ts"] and updated["text"] == "Approved"
    assert stored["blocks"][0]["text"]["text"] == "Approved by <@U0APPROVER>" and stored["updated_count"] == 1

    await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="Approved (text only)")
    assert stored["blocks"][0]["type"] == "section", "text-only update keeps the blocks, as Slack does"

    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel=CHANNEL, ts="1.000000", text="x")
    assert e.value.response["error"] == "message_not_found"


async def test_post_ephemeral_and_users_info(sandbox, client):
    answer = await client.chat_postEphemeral(channel=CHANNEL, user="U0APPROVER", text="Only you")
    assert sandbox.ephemerals == [{"channel": CHANNEL, "user": "U0APPROVER", "text": "Only you",
                                   "blocks": [], "ts": answer["message_ts"]}]
    user = (await client.users_info(user="U0APPROVER"))["user"]
    assert user["name"] == "dana" and user["real_name"] == "dana (approver)" and user["tz"] == "UTC"
    with pytest.raises(SlackApiError) as e:
        await client.users_info(user="U0NOBODY")
    assert e.value.response["error"] == "user_not_found"


async def test_dm_by_user_id(sandbox, client):
    answer = await client.chat_postMessage(channel="U0OTHER", text="Your request was denied")
    assert answer["channel"] == "D0OTHER" and sandbox.channels["D0OTHER"] == "@sam"


@pytest.mark.parametrize("kwargs, error", [
    ({"blocks": [{"type": "divider"}] * 51, "text": "x"}, "invalid_blocks"),
    ({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "a" * 3001}}], "text": "x"}, "invalid_blocks"),
    ({"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}], "text": "x"},
     "invalid_blocks"),
    ({"text": "a" * 40_001}, "msg_too_long"),
    ({}, "no_text"),
])
@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_limits(client, kwargs, error):
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel=CHANNEL, **kwargs)
    assert e.value.response["error"] == error


async def test_errors(sandbox, client):
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel="C0NOWHERE", text="x")
    assert e.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as e:
        await AsyncWebClient(token="xoxb-wrong", base_url=sandbox.api_url).auth_test()
    assert e.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as e:
        await client.api_call("conversations.kick", json={"channel": CHANNEL})
    assert e.value.response["error"] == "unknown_method"


async def test_form_and_query_arguments(sandbox):
    async with aiohttp.ClientSession() as http:
        # blocks arrive as a JSON string when form-encoded; the token may be an argument
        async with http.post(sandbox.api_url + "chat.postMessage",
                             data={"token": TOKEN, "channel": CHANNEL, "blocks": json.dumps(CARD)}) as r:
            assert r.content_type == "application/json"
            answer = await r.json()
        assert answer["ok"] and sandbox.messages[0]["blocks"][2]["elements"][0]["action_id"] == "approve"
        async with http.get(sandbox.api_url + "users.info", params={"user": "U0OTHER"},
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert (await r.json())["user"]["name"] == "sam"
        async with http.post(sandbox.api_url + "auth.test") as r:
            assert r.status == 200 and await r.json() == {"ok": False, "error": "invalid_auth"}


async def test_click_delivers_a_signed_block_actions_payload(sandbox, client, receiver):
    posted = await client.chat_postMessage(channel=CHANNEL, text="Access request", blocks=CARD)
    assert await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="deny", user_id="U0APPROVER") == 200

    payload = receiver[0]
    assert payload["type"] == "block_actions"
    assert payload["user"] == {"id": "U0APPROVER", "username": "dana", "name": "dana", "team_id": "T0SANDBOX"}
    assert payload["container"] == {"type": "message", "message_ts": posted["ts"], "channel_id": CHANNEL,
                                    "is_ephemeral": False}
    assert payload["channel"] == {"id": CHANNEL, "name": "access-requests"}
    assert payload["message"]["ts"] == posted["ts"] and payload["message"]["blocks"] == posted["message"]["blocks"]
    action = payload["actions"][0]
    assert (action["action_id"], action["value"], action["block_id"], action["type"]) == \
        ("deny", "REQ1", "decide", "button")
    assert payload["response_url"].startswith(sandbox.base_url + "/response/")

    async with aiohttp.ClientSession() as http:
        async with http.post(payload["response_url"],
                             json={"replace_original": True, "text": "Denied by dana", "blocks": []}) as r:
            assert r.status == 200
        async with http.post(payload["response_url"], json={"text": "You denied it"}) as r:
            assert r.status == 200
    assert sandbox.messages[0]["text"] == "Denied by dana" and sandbox.messages[0]["blocks"] == []
    assert sandbox.messages[0]["updated_count"] == 1
    assert sandbox.ephemerals[0]["user"] == "U0APPROVER" and sandbox.ephemerals[0]["text"] == "You denied it"

    with pytest.raises(ValueError):  # the replaced message has no buttons any more
        await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="deny", user_id="U0APPROVER")
    with pytest.raises(KeyError):
        await sandbox.click(channel=CHANNEL, ts="1.000000", action_id="deny", user_id="U0APPROVER")


async def test_click_is_accepted_by_bolt(sandbox, client):
    """The payload, signature and auth.test answer are what Bolt expects from Slack."""
    bolt = AsyncApp(client=AsyncWebClient(token=TOKEN, base_url=sandbox.api_url), signing_secret=SECRET)

    @bolt.action("approve")
    async def approve(ack, body, respond, client):
        await ack()
        await client.chat_update(channel=body["channel"]["id"], ts=body["container"]["message_ts"],
                                 text=f"Approved by <@{body['user']['id']}>", blocks=[])
        await respond(text="Done", response_type="ephemeral")

    async def events(request):
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner, url = await serve(app)
    try:
        posted = await client.chat_postMessage(channel=CHANNEL, text="Access request", blocks=CARD)
        sandbox.events_url = url + "/slack/events"
        assert await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="approve", user_id="U0APPROVER") == 200
        await eventually(lambda: sandbox.ephemerals)  # Bolt acks first and finishes the listener afterwards
        assert sandbox.messages[0]["text"] == "Approved by <@U0APPROVER>"
        assert sandbox.ephemerals[0]["text"] == "Done"
        assert [c["method"] for c in sandbox.calls].count("auth.test") == 1
    finally:
        await runner.cleanup()


async def test_browser_page_and_state(sandbox, client, receiver):
    posted = await client.chat_postMessage(channel=CHANNEL, text="Access request", blocks=CARD)
    async with aiohttp.ClientSession(base_url=sandbox.base_url) as http:
        async with http.get("/") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
        assert "<select" in page and "/sandbox/state" in page and ".innerHTML" not in page
        async with http.get("/sandbox/state") as r:
            state = await r.json()
        assert state["channels"] == {CHANNEL: "access-requests"} and state["messages"][0]["ts"] == posted["ts"]
        assert set(state) == {"channels", "users", "messages", "ephemerals", "views"}

        click = {"channel": CHANNEL, "ts": posted["ts"], "action_id": "approve", "user_id": "U0APPROVER"}
        async with http.post("/sandbox/click", json=click) as r:
            assert r.status == 200 and await r.json() == {"status": 200}
        assert receiver[0]["actions"][0]["action_id"] == "approve"
        async with http.post("/sandbox/click", json={**click, "action_id": "nope"}) as r:
            assert r.status == 404 and "error" in await r.json()
        sandbox.events_url = None
        async with http.post("/sandbox/click", json=click) as r:
            assert r.status == 409


async def test_click_times_out_like_slack(sandbox, client):
    async def slow(request):
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_post("/slack/events", slow)
    runner, url = await serve(app)
    try:
        posted = await client.chat_postMessage(channel=CHANNEL, text="x", blocks=CARD)
        sandbox.events_url, sandbox.ack_timeout = url + "/slack/events", 0.1
        with pytest.raises(TimeoutError):
            await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="approve", user_id="U0APPROVER")
    finally:
        await runner.cleanup()


async def test_injected_faults_reach_the_client_as_slack_sdk_reports_them(sandbox, client):
    """What ``AsyncWebClient`` raises for each fault: the outbox worker's error handling is written against
    these (a 429's ``Retry-After``, 5xx statuses, an HTML 502 is a SlackApiError with empty data, a hang is a
    TimeoutError)."""
    sandbox.inject("chat.postMessage", "ratelimited", retry_after=7)
    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel=CHANNEL, text="one")
    assert raised.value.response.status_code == 429 and raised.value.response.headers["Retry-After"] == "7"
    assert raised.value.response["error"] == "ratelimited"

    sandbox.inject("chat.postMessage", "server_error")
    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel=CHANNEL, text="two")
    assert raised.value.response.status_code == 500 and raised.value.response["error"] == "internal_error"

    for kind, status in (("bad_gateway", 502), ("empty", 503)):
        sandbox.inject("chat.postMessage", kind)
        with pytest.raises(SlackApiError) as raised:
            await client.chat_postMessage(channel=CHANNEL, text=kind)
        assert raised.value.response.status_code == status and raised.value.response.data == {}

    sandbox.inject("chat.postMessage", "hang")
    impatient = AsyncWebClient(token=TOKEN, base_url=sandbox.api_url, timeout=1)
    with pytest.raises(TimeoutError):
        await impatient.chat_postMessage(channel=CHANNEL, text="hang")

    assert sandbox.messages == []  # no failed call posted anything
    answer = await client.chat_postMessage(channel=CHANNEL, text="fine again")
    assert answer["ok"]
    statuses = [c["status"] for c in sandbox.calls if c["method"] == "chat.postMessage"]
    assert statuses == [429, 500, 502, 503, 0, 200]
    assert all(c["channel"] == CHANNEL and c["at"] > 0 for c in sandbox.calls)


async def test_faults_for_one_channel_or_a_period(sandbox, client):
    sandbox.channels["C0OTHER"] = "other"
    sandbox.inject("chat.postMessage", "server_error", times=None, seconds=60, channel="C0OTHER")
    for _ in range(3):
        with pytest.raises(SlackApiError):
            await client.chat_postMessage(channel="C0OTHER", text="no")
        assert (await client.chat_postMessage(channel=CHANNEL, text="yes"))["ok"]
    sandbox.faults.clear()
    assert (await client.chat_postMessage(channel="C0OTHER", text="yes"))["ok"]
    with pytest.raises(ValueError):
        sandbox.inject("chat.postMessage", "teapot")


async def test_post_rate_limit_per_channel_like_slack(sandbox, client):
    sandbox.channels["C0OTHER"] = "other"
    sandbox.post_rate_limit = (1.0, 3)
    for _ in range(3):  # the burst
        assert (await client.chat_postMessage(channel=CHANNEL, text="burst"))["ok"]
    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel=CHANNEL, text="too many")
    assert raised.value.response.status_code == 429 and int(raised.value.response.headers["Retry-After"]) >= 1
    assert (await client.chat_postMessage(channel="C0OTHER", text="another channel"))["ok"]
    assert (await client.chat_update(channel=CHANNEL, ts=sandbox.messages[0]["ts"], text="edit"))["ok"]
    assert sandbox.rate_limited == 1
    await asyncio.sleep(1.05)  # the sandbox's bucket refills on the wall clock, as Slack's does
    assert (await client.chat_postMessage(channel=CHANNEL, text="one more"))["ok"]


# ----- App Home: views.publish, app_home_opened, clicks in the Home tab -----

HOME = {"type": "home", "callback_id": "home", "blocks": CARD}


async def test_views_publish_stores_the_home_per_user_and_checks_it(sandbox, client):
    answer = await client.views_publish(user_id="U0APPROVER", view=HOME)
    view = answer["view"]
    assert view["type"] == "home" and view["id"].startswith("V") and view["blocks"][2]["block_id"] == "decide"
    assert all(b.get("block_id") for b in view["blocks"]) and sandbox.home_views["U0APPROVER"] == view
    again = await client.views_publish(user_id="U0APPROVER", view={**HOME, "blocks": CARD[:1]}, hash=view["hash"])
    assert again["view"]["id"] == view["id"] and sandbox.home_publishes["U0APPROVER"] == 2
    with pytest.raises(SlackApiError) as e:
        await client.views_publish(user_id="U0APPROVER", view=HOME, hash="stale")
    assert e.value.response["error"] == "hash_conflict"

    for kwargs, message in [
        ({"user_id": "U0NOBODY", "view": HOME}, "invalid `user_id`"),
        ({"user_id": "U0OTHER", "view": {**HOME, "type": "modal"}}, "[json-pointer:/view/type]"),
        ({"user_id": "U0OTHER", "view": {**HOME, "blocks": [{"type": "divider"}] * 101}},
         "must be no more than 100 items [json-pointer:/blocks]"),
    ]:
        with pytest.raises(SlackApiError) as e:
            await client.views_publish(**kwargs)
        assert e.value.response["error"] == "invalid_arguments"
        assert message in e.value.response["response_metadata"]["messages"][0]
    # 100 blocks are fine in a view (a message stops at 50).
    await client.views_publish(user_id="U0OTHER", view={**HOME, "blocks": [{"type": "divider"}] * 100})


async def test_open_home_and_home_clicks_reach_bolt_as_slack_sends_them(sandbox, client):
    """Bolt accepts the signed event_callback and the Home's block_actions, and answers url_verification."""
    bolt = AsyncApp(client=AsyncWebClient(token=TOKEN, base_url=sandbox.api_url), signing_secret=SECRET)
    seen: list[dict] = []

    @bolt.event("app_home_opened")
    async def opened(event, client):
        seen.append(event)
        await client.views_publish(user_id=event["user"], view=HOME)

    @bolt.action("approve")
    async def approve(ack, body):
        await ack()
        seen.append(body)

    async def events(request):
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner, url = await serve(app)
    try:
        sandbox.events_url = url + "/slack/events"
        assert await sandbox.verify_url()
        assert await sandbox.open_home("U0APPROVER") == 200
        await eventually(lambda: "U0APPROVER" in sandbox.home_views)
        assert seen[0]["type"] == "app_home_opened" and seen[0]["tab"] == "home" and "view" not in seen[0]
        assert await sandbox.open_home("U0APPROVER") == 200  # a second open carries the view published before
        assert await sandbox.home_click(user_id="U0APPROVER", block_id="decide", action_id="approve") == 200
        await eventually(lambda: len(seen) == 3)
        assert seen[1]["view"]["id"] == sandbox.home_views["U0APPROVER"]["id"]
        click = seen[2]
        assert click["container"] == {"type": "view", "view_id": sandbox.home_views["U0APPROVER"]["id"]}
        assert click["view"]["type"] == "home" and "channel" not in click and "response_url" not in click
        assert click["actions"][0]["value"] == "REQ1" and click["user"]["id"] == "U0APPROVER"
        with pytest.raises(ValueError):
            await sandbox.home_click(user_id="U0APPROVER", block_id="nope", action_id="approve")
        with pytest.raises(KeyError):
            await sandbox.home_click(user_id="U0OTHER", block_id="decide", action_id="approve")
    finally:
        await runner.cleanup()


async def test_browser_routes_for_the_home(sandbox, client, receiver):
    await client.views_publish(user_id="U0APPROVER", view=HOME)
    async with aiohttp.ClientSession(base_url=sandbox.base_url) as http:
        async with http.get("/sandbox/home/U0APPROVER") as r:
            answer = await r.json()
        assert answer["user"] == "U0APPROVER" and answer["view"]["blocks"][0]["type"] == "header"
        async with http.get("/sandbox/home/U0OTHER") as r:
            assert (await r.json())["view"] is None
        async with http.post("/sandbox/home/U0APPROVER/click", json={"block_id": "decide", "action_id": "deny"}) as r:
            assert r.status == 200 and await r.json() == {"status": 200}
        assert receiver[-1]["actions"][0]["action_id"] == "deny" and receiver[-1]["container"]["type"] == "view"
        async with http.post("/sandbox/home/U0NOBODY/open") as r:
            assert r.status == 404
        async with http.get("/") as r:
            page = await r.text()
        assert 'id="tab-home"' in page and "/sandbox/home/" in page and ".innerHTML" not in page


# ----- modals: views.open and view_submission -----

MODAL = {"type": "modal", "callback_id": "deny_reason", "private_metadata": "REQ1",
         "title": {"type": "plain_text", "text": "Deny access request"},
         "submit": {"type": "plain_text", "text": "Deny"},
         "blocks": [{"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Why?"},
                     "element": {"type": "plain_text_input", "action_id": "reason_input", "multiline": True}},
                    {"type": "input", "block_id": "scopes", "label": {"type": "plain_text", "text": "Scopes"},
                     "element": {"type": "checkboxes", "action_id": "scopes_input", "options": [
                         {"text": {"type": "plain_text", "text": "db:write"}, "value": "0"},
                         {"text": {"type": "plain_text", "text": "db:read"}, "value": "1"}]}}]}


async def test_views_open_takes_a_trigger_id_it_issued_once_and_within_3_seconds(sandbox, client, receiver):
    posted = await client.chat_postMessage(channel=CHANNEL, text="Access request", blocks=CARD)
    await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="deny", user_id="U0APPROVER")
    trigger = receiver[-1]["trigger_id"]
    opened = await client.views_open(trigger_id=trigger, view=MODAL)
    view_id = opened["view"]["id"]
    assert opened["view"]["callback_id"] == "deny_reason" and opened["view"]["state"] == {"values": {}}
    assert sandbox.views[view_id]["user"] == "U0APPROVER" and sandbox.views[view_id]["errors"] == {}

    for trigger_id, error in ((trigger, "exchanged_trigger_id"), ("1764400000.1.abc", "invalid_trigger_id")):
        with pytest.raises(SlackApiError) as refused:
            await client.views_open(trigger_id=trigger_id, view=MODAL)
        assert refused.value.response["error"] == error

    sandbox.trigger_seconds = 0  # every trigger arrives expired
    await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="deny", user_id="U0APPROVER")
    with pytest.raises(SlackApiError) as refused:
        await client.views_open(trigger_id=receiver[-1]["trigger_id"], view=MODAL)
    assert refused.value.response["error"] == "expired_trigger_id"

    sandbox.trigger_seconds = 3
    await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="deny", user_id="U0APPROVER")
    with pytest.raises(SlackApiError) as refused:
        await client.views_open(trigger_id=receiver[-1]["trigger_id"],
                                view={**MODAL, "title": {"type": "plain_text", "text": "A title far too long to fit"}})
    assert refused.value.response["error"] == "invalid_arguments"
    assert refused.value.response["response_metadata"]["messages"] == [
        "must be less than 25 characters [json-pointer:/view/title/text]"]
    assert list(sandbox.views) == [view_id]


async def test_submit_view_is_routed_by_bolt_and_errors_keep_the_modal_open(sandbox, client):
    """The view_submission payload is what Bolt routes by callback_id; an errors answer keeps the view open."""
    bolt = AsyncApp(client=AsyncWebClient(token=TOKEN, base_url=sandbox.api_url), signing_secret=SECRET)
    seen: list[dict] = []

    @bolt.action("deny")
    async def open_form(ack, body, client):
        await ack()
        await client.views_open(trigger_id=body["trigger_id"], view=MODAL)

    @bolt.view("deny_reason")
    async def submitted(ack, body, view):
        seen.append(view["state"]["values"])
        reason = view["state"]["values"]["reason"]["reason_input"]["value"]
        if not reason:
            await ack(response_action="errors", errors={"reason": "Say why"})
        else:
            await ack()

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner, url = await serve(app)
    sandbox.events_url = url + "/slack/events"
    try:
        posted = await client.chat_postMessage(channel=CHANNEL, text="Access request", blocks=CARD)
        assert await sandbox.click(channel=CHANNEL, ts=posted["ts"], action_id="deny", user_id="U0APPROVER") == 200
        # Bolt acks first and runs the listener after: the form opens a moment after the click's answer.
        (view_id,) = await eventually(lambda: list(sandbox.views))
        answer = await sandbox.submit_view(view_id, {"reason": "", "scopes": ["1"]})
        assert answer == (200, {"response_action": "errors", "errors": {"reason": "Say why"}})
        assert seen[-1] == {"reason": {"reason_input": {"type": "plain_text_input", "value": ""}},
                            "scopes": {"scopes_input": {"type": "checkboxes", "selected_options": [
                                {"text": {"type": "plain_text", "text": "db:read"}, "value": "1"}]}}}
        assert sandbox.views[view_id]["errors"] == {"reason": "Say why"}

        async with aiohttp.ClientSession() as http:  # the browser page's routes
            async with http.get(sandbox.base_url + "/sandbox/state") as r:
                assert [v["id"] for v in (await r.json())["views"]] == [view_id]
            async with http.post(sandbox.base_url + "/sandbox/submit",
                                 json={"view_id": view_id, "values": {"reason": "freeze"}}) as r:
                assert await r.json() == {"status": 200, "answer": None}
        assert sandbox.views == {} and seen[-1]["reason"]["reason_input"]["value"] == "freeze"
    finally:
        await runner.cleanup()
