"""The README's walkthrough in a real browser: Debian's headless Chromium opens the Slack sandbox's page, picks
the approver, clicks Approve on the card and then in the Home tab, and grantbot's API says approved.

Driven over the Chrome DevTools Protocol (tests/cdp.py); no browser is downloaded. Chromium must be installed
(``.ci/run`` installs it): this test does not skip without it.
"""

from __future__ import annotations

import json

import pytest

from tests.cdp import Chromium
from tests.support import cards, eventually, message_text

PROD_WRITE = {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60, "reason": "hotfix 42"}


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: this test is about the page; the database paths are tested on both databases elsewhere."""
    return f"sqlite+aiosqlite:///{tmp_path / 'grantbot.db'}"


def button(scope: str, action: str, request_id: str) -> str:
    return f'{scope} button[data-action-id="{action}"][data-value="{request_id}"]'


async def approved(grantbot, request_id: str) -> dict:
    status, answer = await grantbot.api.get_request(request_id, wait=10)
    assert status == 200, answer
    return answer


async def test_an_approver_approves_in_the_sandbox_page_on_the_card_and_in_the_home(grantbot, sandbox, tmp_path):
    status, first = await grantbot.api.request_access(PROD_WRITE)
    assert status == 202, first
    card = await eventually(lambda: next((c for c in cards(sandbox) if first["id"] in message_text(c)), None))

    async with Chromium(tmp_path) as browser:
        page = await browser.new_page(sandbox.base_url + "/")
        await page.choose("#user", "U0APPROVER")
        await page.click(button(f'.msg[data-ts="{card["ts"]}"]', "approve", first["id"]))

        answer = await approved(grantbot, first["id"])
        assert answer["status"] == "approved" and answer["decided_by"] == "U0APPROVER", answer
        # The page shows the updated card: who approved, and only the Revoke button left.
        shown = f'document.querySelector(".msg[data-ts=\\"{card["ts"]}\\"]")'
        await page.wait_for(f'{shown} && {shown}.innerText.includes("Approved by @dana") '
                            f'&& [...{shown}.querySelectorAll("button")].map(b => b.innerText).join() === "Revoke"')

        # The Home tab, as the second approver: the next request waits there with the same buttons.
        status, second = await grantbot.api.request_access({**PROD_WRITE, "reason": "hotfix 43"})
        assert status == 202, second
        await page.choose("#user", "U0SECOND")
        await page.click("#tab-home")
        assert await page.wait_for('document.getElementById("tab-home").innerText') == "Home (as lee)"
        await page.click(button("#home", "approve", second["id"]))

        answer = await approved(grantbot, second["id"])
        assert answer["status"] == "approved" and answer["decided_by"] == "U0SECOND", answer
        # grantbot re-publishes the clicker's Home: nothing waits any more, the decision is listed.
        await page.wait_for('document.getElementById("home").innerText.includes("Waiting for your decision (0)")')
        home = await page.text("#home")
        assert "approved by @lee" in home and "Active grants (2)" in home, home
        assert await page.evaluate('document.getElementById("click-status").innerText') == ""
        assert page.errors == [], json.dumps(page.errors)
