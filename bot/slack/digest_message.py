"""Pure builder of a digest message: many ends of auto-approved grants told in one channel message.

A plain mrkdwn message, like the one-by-one notices it stands for (``blocks.grant_ended_text``). The digest's
shape is ``OutboxChannels.claim_notices``' (bot/store/outbox_channels.py): ``{"count", "expired", "revoked",
"since", "until", "grants": [{"identity", "scopes", "environment", "rule", "ended": "expired" | "revoked", "at",
"by"?, "reason"?}]}``, times ISO 8601 UTC, ``grants`` the first few of ``count``. The message stays within a
section's 3,000 characters (Slack Block Kit reference; the text of a plain message is cut there too): lines are
listed while they fit, the rest counted. User-controlled text is escaped.
"""

from __future__ import annotations

from datetime import datetime

from bot.slack.blocks import SECTION_TEXT_LIMIT, by, clock_time, escape, truncate

LINE_LIMIT = 300  # one grant's line; a hostile identity or reason must not crowd out the others


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _when(digest: dict) -> str:
    since, until = _time(digest["since"]), _time(digest["until"])
    if (until - since).total_seconds() < 1:
        return f"at {clock_time(since)}"
    if since.date() == until.date():
        return f"between {clock_time(since)[:-4]} and {until:%H:%M:%S} UTC"
    return f"between {clock_time(since)} and {clock_time(until)}"


def _how(digest: dict) -> str:
    if not digest["revoked"]:
        return "expired"
    if not digest["expired"]:
        return "were revoked"
    return f"ended ({digest['expired']} expired, {digest['revoked']} revoked)"


def _line(grant: dict) -> str:
    what = (f"*{escape(grant['identity'])}* {', '.join(f'`{escape(s)}`' for s in grant['scopes'])} on "
            f"*{escape(grant['environment'])}* (rule {escape(grant['rule'] or 'default')})")
    at = f"{_time(grant['at']):%H:%M:%S}"
    if grant["ended"] == "revoked":
        why = f": {escape(grant['reason'])}" if grant.get("reason") else ""
        return truncate(f"• {what} revoked by {by(grant.get('by'))} at {at}{why}", LINE_LIMIT)
    return truncate(f"• {what} expired at {at}", LINE_LIMIT)


def digest_text(digest: dict) -> str:
    """``:hourglass: *42 auto-approved grants expired* between …; access has ended.``, a line per listed grant,
    and ``… and N more`` for those not listed (where to find every one); at most 3,000 characters."""
    emoji = ":hourglass:" if not digest["revoked"] else ":no_entry:"
    head = (f"{emoji} *{_plural(digest['count'], 'auto-approved grant')} {_how(digest)}* {_when(digest)}; access "
            "has ended.")
    tail = "\n… and {} more: `grantbot audit export` has every one."
    room = SECTION_TEXT_LIMIT - len(head) - len(tail.format(digest["count"]))
    lines: list[str] = []
    for grant in digest["grants"]:
        line = _line(grant)
        if len(line) + 1 > room:
            break
        lines.append(line)
        room -= len(line) + 1
    text = "\n".join([head, *lines])
    if digest["count"] > len(lines):
        text += tail.format(digest["count"] - len(lines))
    return text
