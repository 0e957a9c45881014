"""Socket Mode: with SLACK_APP_TOKEN set, clicks arrive over a WebSocket instead of HTTP, and a dropped
connection is replaced by itself."""

from __future__ import annotations

from tests.support import buttons, cards, eventually, message_text

APP_TOKEN = "xapp-1-test-app-token"


async def test_clicks_arrive_over_socket_mode_and_survive_a_dropped_connection(start_grantbot, sandbox):
    sandbox.app_token = APP_TOKEN
    grantbot = await start_grantbot(slack_app_token=APP_TOKEN, slack_signing_secret=None)
    sandbox.events_url = None  # nothing reaches grantbot over HTTP: only the socket
    await eventually(lambda: sandbox.socket_connected)

    async def approve_through_slack(scope: str) -> dict:
        _, created = await grantbot.api.request_access({"environment": "production", "scopes": [scope],
                                                        "ttl_seconds": 60})
        card = await eventually(lambda: next((c for c in cards(sandbox) if created["id"] in message_text(c)), None))
        assert await sandbox.click(channel=card["channel"], ts=card["ts"], action_id="approve",
                                   user_id="U0APPROVER") == 200
        _, decided = await grantbot.api.get_request(created["id"], wait=10)
        await eventually(lambda: buttons(card) == ["revoke_grant"])
        return decided

    assert (await approve_through_slack("db:write"))["status"] == "approved"

    await sandbox.drop_sockets()
    await eventually(lambda: sandbox.socket_connected, timeout=20)
    assert (await approve_through_slack("deploy:api"))["status"] == "approved"
    assert [c["method"] for c in sandbox.calls].count("apps.connections.open") >= 2
