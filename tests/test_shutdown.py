"""Shutdown: a task cancelled at the moment it is woken still ends.

Python 3.11's ``asyncio.wait_for`` returns normally when the cancellation arrives in the same loop step as the
event it waits for (gh-86296): a loop built on it runs on after its cancel, and whatever awaits it (aiohttp's
cleanup, the test runner closing its loop) waits for ever. Seen once in CI as a test's teardown hanging for 300 s.
"""

from __future__ import annotations

import asyncio

from bot.changes import LocalChanges
from bot.policy_reload import PolicyReloader, digest
from tests.conftest import POLICIES


async def test_the_policy_reloader_cancelled_as_it_is_woken_ends(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text((POLICIES / "basic.yaml").read_text())
    async def refuse(reason: str, sha256: str) -> None:
        raise AssertionError(reason)

    reloader = PolicyReloader(policy, digest(policy.read_text()), lambda *_: None, refuse, interval=60)
    task = asyncio.create_task(reloader.run())
    await asyncio.sleep(0.05)  # waiting for its next round
    reloader.request()  # a SIGHUP and the shutdown in the same step
    task.cancel()
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()


async def test_a_long_poll_cancelled_as_its_change_arrives_ends_cancelled():
    changes = LocalChanges()
    poll = asyncio.create_task(changes.wait("request-1", timeout=60))
    await asyncio.sleep(0.05)
    changes.notify("request-1")
    poll.cancel()
    await asyncio.wait([poll], timeout=2)
    assert poll.cancelled()
    assert changes.waiting("request-1") == 0
