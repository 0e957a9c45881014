"""Pure Block Kit builder for a digest: many ends of auto-approved grants told in one channel message.

The digest's shape is ``OutboxChannels.claim_notices``' (bot/store/outbox_channels.py): ``{"count", "expired",
"revoked", "since", "until", "grants": [{"identity", "scopes", "environment", "rule", "ended": "expired" |
"revoked", "at", "by"?, "reason"?}]}``, times ISO 8601 UTC, ``grants`` the first few of ``count``. Slack limits
(Block Kit reference): section text 3,000 characters, context 2,000; user-controlled text is escaped.
"""

from __future__ import annotations

from datetime import datetime

from bot.slack.blocks import (
    CONTEXT_TEXT_LIMIT,
    FALLBACK_TEXT_LIMIT,
    SECTION_TEXT_LIMIT,
    by,
    clock_time,
    escape,
    truncate,
)


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


def digest_text(digest: dict) -> str:
    """The fallback text (notifications, screen readers): ``42 auto-approved grants expired between …``."""
    return truncate(f"{_plural(digest['count'], 'auto-approved grant')} {_how(digest)} {_when(digest)}; access has "
                    "ended.", FALLBACK_TEXT_LIMIT)


def _line(grant: dict) -> str:
    what = (f"*{escape(grant['identity'])}* {', '.join(f'`{escape(s)}`' for s in grant['scopes'])} on "
            f"*{escape(grant['environment'])}* (rule {escape(grant['rule'] or 'default')})")
    at = f"{_time(grant['at']):%H:%M:%S}"
    if grant["ended"] == "revoked":
        why = f": {escape(grant['reason'])}" if grant.get("reason") else ""
        return f"• {what} revoked by {by(grant.get('by'))} at {at}{why}"
    return f"• {what} expired at {at}"


def digest_blocks(digest: dict) -> list[dict]:
    """A section saying how many grants ended and when, one listing the first few, and a context line counting the
    rest (where to find every one)."""
    emoji = ":hourglass:" if not digest["revoked"] else ":no_entry:"
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": truncate(
            f"{emoji} *{_plural(digest['count'], 'auto-approved grant')} {_how(digest)}* {_when(digest)}; access "
            "has ended.", SECTION_TEXT_LIMIT)}},
    ]
    lines = [_line(grant) for grant in digest["grants"]]
    if lines:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": truncate(
            "\n".join(lines), SECTION_TEXT_LIMIT)}})
    rest = digest["count"] - len(lines)
    if rest > 0:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(
            f"… and {rest} more. `grantbot audit export` has every one (`grant.expired`, `grant.revoked`).",
            CONTEXT_TEXT_LIMIT)}]})
    return blocks
