"""The daily summary: posted once at GRANTBOT_SUMMARY_CRON in GRANTBOT_TIMEZONE, also with three replicas and
across a DST change, with the day's counts, what expires soon and the busiest identities."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from bot.slack.summary_blocks import summary_blocks
from tests.support import CHANNEL, eventually, message_text

BERLIN = {"summary_cron": "0 9 * * *", "timezone": "Europe/Berlin"}


def summaries(sandbox) -> list[dict]:
    return [m for m in sandbox.messages if m["text"].startswith("grantbot daily summary")]


async def settle(seconds: float = 0.4) -> None:
    """Several sweeps and outbox rounds on every replica (sweep interval 0.05 s)."""
    await asyncio.sleep(seconds)


async def test_three_replicas_post_one_summary_with_the_days_numbers(start_grantbot, sandbox, clock):
    clock.set(datetime(2026, 3, 23, 7, 40, tzinfo=UTC))  # Mon 08:40 CET
    replicas = [await start_grantbot(**BERLIN) for _ in range(3)]
    api = replicas[0].api
    for n in range(3):
        await api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 1800,
                                  "reason": f"export {n}"})
    await api.request_access({"environment": "staging", "scopes": ["db:read"], "ttl_seconds": 60}, identity="other-bot")
    await api.request_access({"environment": "staging", "scopes": ["db:admin"]})
    await api.request_access({"environment": "production", "scopes": ["db:write"], "ttl_seconds": 600,
                              "reason": "OPS-1"})
    clock.advance(120)  # the other-bot grant expired

    async def swept() -> bool:  # ended at this time, not at the summary's (when a later sweep would end it)
        return await replicas[0].count("grants WHERE status = 'expired'") == 1
    await eventually(swept)
    await settle()
    clock.set(datetime(2026, 3, 23, 7, 59, 50, tzinfo=UTC))
    await settle()
    assert summaries(sandbox) == []  # not before 09:00 Berlin
    clock.set(datetime(2026, 3, 23, 8, 0, 5, tzinfo=UTC))
    await eventually(lambda: summaries(sandbox))
    await settle(0.8)  # every replica has swept several times since
    posted = summaries(sandbox)
    assert len(posted) == 1, [m["text"] for m in posted]
    summary = posted[0]
    assert summary["channel"] == CHANNEL
    text = message_text(summary)
    assert "Access summary for Mon 23 Mar 2026" in text
    assert "*Requests:* 6" in text and "*Auto-approved:* 4" in text and "*Denied:* 1" in text
    assert "*Grants expired:* 1" in text and "*Active now:* 3" in text
    assert "1. *deploy-bot*: 5 requests" in text and "2. *other-bot*: 1 requests" in text
    assert "*Expiring within the hour*\n• *deploy-bot* `db:read` until 09:10" in text
    await settle()
    assert len(summaries(sandbox)) == 1
    assert await replicas[0].count("audit_events WHERE kind = 'summary.posted'") == 1


async def test_the_summary_keeps_its_local_time_across_the_dst_change(start_grantbot, sandbox, clock):
    clock.set(datetime(2026, 3, 28, 7, 59, 0, tzinfo=UTC))  # Sat 08:59 CET
    await start_grantbot(**BERLIN)
    await start_grantbot(**BERLIN)
    await settle()
    assert summaries(sandbox) == []
    clock.set(datetime(2026, 3, 28, 8, 0, 5, tzinfo=UTC))  # Sat 09:00 CET
    await eventually(lambda: summaries(sandbox))
    await settle()
    assert len(summaries(sandbox)) == 1
    clock.set(datetime(2026, 3, 29, 6, 59, 55, tzinfo=UTC))  # Sun 08:59 CEST: 24 h minus an hour later
    await settle()
    assert len(summaries(sandbox)) == 1
    clock.set(datetime(2026, 3, 29, 7, 0, 5, tzinfo=UTC))  # Sun 09:00 CEST
    await eventually(lambda: len(summaries(sandbox)) == 2)
    await settle()
    posted = summaries(sandbox)
    assert len(posted) == 2 and "Access summary for Sun 29 Mar 2026" in message_text(posted[1])
    # the last 24 h: on the day clocks go forward that starts at 08:00 local time
    assert "2026-03-28 08:00 – 2026-03-29 09:00 Europe/Berlin" in message_text(posted[1])


async def test_a_summary_missed_while_down_is_posted_at_start_if_recent(start_grantbot, sandbox, clock):
    clock.set(datetime(2026, 6, 1, 5, 0, tzinfo=UTC))  # 07:00 CEST: grantbot in use before 09:00
    earlier = await start_grantbot(summary_cron="off")
    assert (await earlier.api.request_access({"environment": "staging", "scopes": ["db:read"]}))[0] == 201
    clock.set(datetime(2026, 6, 1, 9, 30, tzinfo=UTC))  # 11:30 CEST: 09:00 passed while no summary ran
    await start_grantbot(**BERLIN)
    await eventually(lambda: summaries(sandbox))
    await settle()
    assert len(summaries(sandbox)) == 1
    assert "1 request" in summaries(sandbox)[0]["text"], summaries(sandbox)[0]["text"]


async def test_a_first_start_does_not_post_a_summary_of_the_day_before_it(start_grantbot, sandbox, clock):
    clock.set(datetime(2026, 6, 1, 9, 30, tzinfo=UTC))  # 11:30 CEST, on a new database: nothing to catch up
    grantbot = await start_grantbot(**BERLIN)
    assert (await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]}))[0] == 201
    await settle()
    assert summaries(sandbox) == []
    clock.set(datetime(2026, 6, 2, 7, 0, 5, tzinfo=UTC))  # the next 09:00 CEST comes while it runs: posted
    await eventually(lambda: summaries(sandbox))
    assert "1 request" in summaries(sandbox)[0]["text"], summaries(sandbox)[0]["text"]


async def test_an_old_summary_is_not_posted_late(start_grantbot, sandbox, clock):
    clock.set(datetime(2026, 6, 1, 20, 0, tzinfo=UTC))  # 22:00 CEST: too late for today's
    await start_grantbot(**BERLIN)
    await settle()
    assert summaries(sandbox) == []


def test_the_summary_blocks_are_pinned():
    summary = {"since": "2026-03-22T08:00:00Z", "until": "2026-03-23T08:00:00Z", "requests": 6, "auto_approved": 4,
               "approved": 0, "denied": 1, "timed_out": 0, "grants_expired": 1, "grants_revoked": 0, "active_now": 3,
               "expiring_soon": [{"identity": "deploy-bot <!channel>", "scopes": ["db:read"],
                                  "expires_at": "2026-03-23T08:30:00Z"}],
               "busiest": [{"identity": "deploy-bot", "requests": 5}]}
    assert summary_blocks(summary, "Europe/Berlin") == [
        {"type": "header", "text": {"type": "plain_text", "text": "Access summary for Mon 23 Mar 2026"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "2026-03-22 09:00 – 2026-03-23 09:00 Europe/Berlin"}]},
        {"type": "section", "text": {"type": "mrkdwn", "text":
            "*Requests:* 6   *Auto-approved:* 4   *Approved by people:* 0   *Denied:* 1   *Timed out:* 0\n"
            "*Grants expired:* 1   *Revoked:* 0   *Active now:* 3"}},
        {"type": "section", "text": {"type": "mrkdwn", "text":
            "*Expiring within the hour*\n• *deploy-bot &lt;!channel&gt;* `db:read` until 09:30"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Busiest identities*\n1. *deploy-bot*: 5 requests"}},
    ]
