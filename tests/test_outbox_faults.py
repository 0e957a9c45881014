"""The outbox worker against a misbehaving Slack: 200 cards into 10 channels while the sandbox answers 429s with
Retry-After, 500s, HTML 502s and nothing at all; then approvals update some of the cards.

What a user would see, counted in the sandbox: every card posted exactly once, no channel getting more than
about one message per second, and every update landing on its own request's card.
"""

from __future__ import annotations

import asyncio
import collections
import re

import pytest

from tests.conftest import POLICIES
from tests.support import buttons, cards, eventually, message_text

CHANNELS = [f"C0TEAM{i}" for i in range(10)]
PER_CHANNEL = 20
APPROVED_PER_CHANNEL = 5
WRITES = ("chat.postMessage", "chat.update")
REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def until(condition, clock, timeout: float = 180.0) -> None:
    """Wait for the worker until ``condition()`` holds.

    Retries wait for times the worker computes from the injected clock (Retry-After, backoff): this moves that
    clock 1 s for every 0.25 s of real time so they come due. The per-channel pacing is real time (it is Slack's
    wall-clock limit), which is what the real-time part of the wait is for.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.25)
        clock.advance(1)


def request_ids(message: dict) -> set[str]:
    return set(REQUEST_ID.findall(message_text(message)))


def writes_by_channel(sandbox) -> dict[str, list[float]]:
    """Arrival times (wall clock, s) of every chat.postMessage and chat.update per channel, whatever the answer:
    Slack counts refused calls against the limit too."""
    times = collections.defaultdict(list)
    for call in sandbox.calls:
        if call["method"] in WRITES:
            times[call["channel"]].append(call["at"])
    return {channel: sorted(at) for channel, at in times.items()}


def most_in_window(times: list[float], seconds: float) -> int:
    """The largest number of ``times`` within any window of ``seconds`` (closed at both ends)."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.mark.slow
async def test_cards_go_out_once_paced_per_channel_through_429s_500s_and_silence(start_grantbot, sandbox, clock):
    for channel in CHANNELS:
        sandbox.channels[channel] = channel.lower()
    # Slack's own limit, as the sandbox plays it (1/s per channel, bursts of 3): grantbot must never trip it.
    sandbox.post_rate_limit = (1.0, 3)
    # Posting: rate limits here and there, one channel rate-limited for a stretch, server errors, a proxy's HTML,
    # an empty answer and a call that never returns.
    sandbox.inject("chat.postMessage", "ratelimited", times=12, retry_after=2)
    sandbox.inject("chat.postMessage", "server_error", times=4, channel="C0TEAM1")
    sandbox.inject("chat.postMessage", "bad_gateway", times=3, channel="C0TEAM2")
    sandbox.inject("chat.postMessage", "empty", times=2, channel="C0TEAM4")
    sandbox.inject("chat.postMessage", "hang", times=1, channel="C0TEAM5")
    sandbox.inject("chat.postMessage", "server_error", times=6)
    grantbot = await start_grantbot(policy_file=POLICIES / "ten_channels.yaml", slack_posts_per_second=1)
    started = asyncio.get_running_loop().time()

    bodies = [{"environment": "production", "scopes": [f"svc{i % 10}:write"], "ttl_seconds": 600,
               "reason": f"deploy {i}"} for i in range(10 * PER_CHANNEL)]
    answers = []
    for start in range(0, len(bodies), 20):
        answers += await asyncio.gather(*(grantbot.api.request_access(b) for b in bodies[start:start + 20]))
    assert {status for status, _ in answers} == {202}
    channel_of = {answer["id"]: CHANNELS[i % 10] for i, (_, answer) in enumerate(answers)}
    # One channel rate-limited for a stretch, while the others post: from now on, when the clock moves (it stands
    # still while the requests come in, however long that takes on a busy machine, and so do paused channels).
    sandbox.inject("chat.postMessage", "ratelimited", times=None, seconds=10, channel="C0TEAM3", retry_after=3)

    def cards_of() -> dict[str, list[dict]]:
        found = collections.defaultdict(list)
        for card in cards(sandbox):
            for request_id in request_ids(card):
                found[request_id].append(card)
        return found

    await until(lambda: len(cards_of()) == len(channel_of), clock)
    posted_in = asyncio.get_running_loop().time() - started

    # Every card exactly once, in its rule's channel.
    by_request = cards_of()
    assert set(by_request) == set(channel_of)
    assert all(len(found) == 1 for found in by_request.values()), [r for r, f in by_request.items() if len(f) > 1]
    assert len(cards(sandbox)) == len(channel_of)
    assert all(found[0]["channel"] == channel_of[r] for r, found in by_request.items())
    statuses = collections.Counter(c["status"] for c in sandbox.calls if c["method"] == "chat.postMessage")
    assert statuses[429] >= 12 and statuses[500] == 10 and statuses[502] == 3 and statuses[503] == 2
    assert statuses[0] + statuses[504] == 1  # the hang

    # A channel rate-limited for a stretch held up no other: they kept posting meanwhile.
    limited = [c["at"] for c in sandbox.calls if c["channel"] == "C0TEAM3" and c["status"] == 429]
    others = [c["at"] for c in sandbox.calls
              if c["method"] == "chat.postMessage" and c["status"] == 200 and c["channel"] != "C0TEAM3"]
    assert len(limited) >= 3 and limited[-1] - limited[0] > 5, limited
    # Nine other channels at 1 post/s each could post nine a second; held up by C0TEAM3 they would post none. At
    # least one a second on average, so that a loaded machine (its outbox worker short of CPU) does not fail it.
    meanwhile = sum(limited[0] <= at <= limited[-1] for at in others)
    assert meanwhile >= limited[-1] - limited[0], (meanwhile, limited)

    # Approvals: five cards per channel, while chat.update is rate-limited and failing now and then.
    sandbox.inject("chat.update", "ratelimited", times=4, retry_after=1)
    sandbox.inject("chat.update", "server_error", times=3)
    sandbox.inject("chat.update", "bad_gateway", times=2)
    approved = [r for channel in CHANNELS for r in [r for r in channel_of if channel_of[r] == channel][:APPROVED_PER_CHANNEL]]
    for start in range(0, len(approved), 10):
        clicks = [grantbot.api.click(by_request[r][0], "approve", "U0APPROVER")
                  for r in approved[start:start + 10]]
        assert set(await asyncio.gather(*clicks)) == {200}
    await until(lambda: all(by_request[r][0]["updated_count"] > 0 for r in approved), clock)
    await asyncio.sleep(1.5)  # a few more worker rounds: nothing more may come
    elapsed = asyncio.get_running_loop().time() - started

    # Each update edited its own request's card, and only the approved cards were edited.
    for request_id, (card, *_) in by_request.items():
        if request_id in approved:
            assert card["updated_count"] == 1 and buttons(card) == ["revoke_grant"]
            assert "Approved" in message_text(card) and request_ids(card) == {request_id}
        else:
            assert card["updated_count"] == 0 and buttons(card) == ["approve", "approve_with_changes", "deny"]
    ts_of = {card["ts"]: request_id for request_id, (card, *_) in by_request.items()}
    updates = [c for c in sandbox.calls if c["method"] == "chat.update" and c["status"] == 200]
    assert len(updates) == len(approved)
    for call in updates:
        assert ts_of[call["args"]["ts"]] in request_ids({"text": call["args"]["text"], "blocks": call["args"]["blocks"]})
    assert len(cards(sandbox)) == len(channel_of)  # still one card each

    # Pacing: about one write per second per channel. 1/s exactly can put 4 writes in a closed 3 s window;
    # more than that would be a burst of our own making.
    writes = writes_by_channel(sandbox)
    assert set(writes) == set(CHANNELS)
    busiest = {channel: most_in_window(times, 3.0) for channel, times in writes.items()}
    per_second = max(most_in_window(times, 1.0) for times in writes.values())
    gaps = [b - a for times in writes.values() for a, b in zip(times, times[1:])]
    print(f"\n200 cards in {posted_in:.1f} s, all done in {elapsed:.1f} s; writes per channel "
          f"{sorted(len(t) for t in writes.values())}; most in any 1 s window {per_second}, in any 3 s window "
          f"{max(busiest.values())}; smallest gap {min(gaps):.3f} s; sandbox rate limiter tripped "
          f"{sandbox.rate_limited} times")
    assert max(busiest.values()) <= 4, busiest
    assert sandbox.rate_limited == 0


async def test_a_long_retry_after_holds_the_channel_until_it_has_passed_then_each_card_goes_out_once(
        start_grantbot, sandbox, clock):
    sandbox.channels["C0TEAM0"] = "team0"
    sandbox.channels["C0TEAM1"] = "team1"
    sandbox.inject("chat.postMessage", "ratelimited", channel="C0TEAM0", retry_after=120)
    grantbot = await start_grantbot(policy_file=POLICIES / "ten_channels.yaml", slack_posts_per_second=1)
    body = {"environment": "production", "ttl_seconds": 600}
    for i, scope in enumerate(("svc0:write", "svc0:write", "svc1:write")):
        status, _ = await grantbot.api.request_access({**body, "scopes": [scope], "reason": f"deploy {i}"})
        assert status == 202

    def posted(channel: str) -> list[dict]:
        return [m for m in cards(sandbox) if m["channel"] == channel]

    await eventually(lambda: posted("C0TEAM1"))  # the other channel is not held up
    assert len(posted("C0TEAM1")) == 1
    # Slack refused the first card for C0TEAM0, and the worker has put it back, due Retry-After from its clock's
    # now. Both must be seen before the clock moves: the sandbox records the 429 before the worker reads it, and a
    # worker that reads the clock after it moved holds the channel that much longer (on a busy machine it did).
    await eventually(lambda: [c["status"] for c in sandbox.calls if c["channel"] == "C0TEAM0"] == [429])

    async def put_back_after_429():
        return await grantbot.count("outbox WHERE last_error LIKE 'rate limited%' AND locked_until IS NULL") == 1
    await eventually(put_back_after_429)
    clock.advance(119)
    await asyncio.sleep(2.5)  # several worker rounds, at 1 post/s: C0TEAM0 must still be waiting
    assert posted("C0TEAM0") == []
    assert [c["status"] for c in sandbox.calls if c["channel"] == "C0TEAM0"] == [429]
    clock.advance(1)
    await eventually(lambda: len(posted("C0TEAM0")) == 2)
    await asyncio.sleep(1.5)
    assert len(cards(sandbox)) == 3
    # The refused post was tried again without a history search: Slack said no, so there was nothing to find.
    assert [c["method"] for c in sandbox.calls if c["channel"] == "C0TEAM0"] == ["chat.postMessage"] * 3


@pytest.mark.slow
async def test_an_item_that_outwaited_its_lease_in_a_slow_lane_is_posted_once(start_grantbot, sandbox, clock):
    """Replica A claims three cards for one channel and posts them paced (one per 5 s). Its lease (30 s on the
    clock) runs out while two still wait in its lane; replica B claims those and posts them, taking its turns in
    the channel's write slots after A's. When A's turn comes it must see that B holds them now, and not post them
    a second time."""
    slow = await start_grantbot(slack_posts_per_second=0.2)
    ids = []
    for n in range(3):
        status, created = await slow.api.request_access(
            {"environment": "production", "scopes": ["db:write"], "ttl_seconds": 60, "reason": f"hotfix {n}"})
        assert status == 202, created
        ids.append(created["id"])
    await eventually(lambda: len(cards(sandbox)) == 1)  # A posted the first; two wait in its lane

    async def a_holds_the_other_two():
        return await slow.count("outbox WHERE sent_at IS NULL AND locked_until IS NOT NULL") == 2
    await eventually(a_holds_the_other_two)
    clock.advance(31)  # A's lease on the other two runs out
    fast = await start_grantbot()  # replica B, on the same database, same Slack
    # The replicas share the channel's write slots: B's two posts come after the slot A took for its second card
    # (5 s after its first) and the next one A takes at its pace; A's turns for both come and go before.
    await eventually(lambda: len(cards(sandbox)) == 3, timeout=15)
    # Measured where Slack sees the posts: when the test noticed the first card can lag its arrival by a poll.
    # Without shared slots B would post well under a second after A's first card.
    arrivals = [at for times in writes_by_channel(sandbox).values() for at in times]
    assert max(arrivals) - min(arrivals) > 4.5, arrivals
    async def all_marked_sent() -> bool:  # (marked after Slack answered the post the test just saw)
        return await fast.count("outbox WHERE sent_at IS NULL") == 0
    await eventually(all_marked_sent)
    await asyncio.sleep(1)  # and nothing more is posted
    posted = collections.Counter(rid for card in cards(sandbox) for rid in request_ids(card))
    assert posted == {rid: 1 for rid in ids}, posted
