"""Pure Block Kit builder for the daily summary (Slack Block Kit: header 150 chars, section text 3,000)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.slack.blocks import HEADER_LIMIT, SECTION_TEXT_LIMIT, escape, truncate


def _local(iso: str, zone: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(zone))


def summary_text(summary: dict, zone: str = "UTC") -> str:
    """The plain fallback text (notifications, screen readers)."""
    day = _local(summary["until"], zone).strftime("%a %d %b")
    return (f"grantbot daily summary ({day}): {summary['requests']} requests, {summary['auto_approved']} "
            f"auto-approved, {summary['approved']} approved, {summary['denied']} denied, {summary['active_now']} "
            "grants active")


def summary_blocks(summary: dict, zone: str = "UTC") -> list[dict]:
    """The summary of the 24 h before ``summary["until"]`` (the shape of ``SqlStore.activity``), times shown in
    ``zone`` (IANA)."""
    since, until = _local(summary["since"], zone), _local(summary["until"], zone)
    counts = (
        f"*Requests:* {summary['requests']}   *Auto-approved:* {summary['auto_approved']}   "
        f"*Approved by people:* {summary['approved']}   *Denied:* {summary['denied']}   "
        f"*Timed out:* {summary['timed_out']}\n"
        f"*Grants expired:* {summary['grants_expired']}   *Revoked:* {summary['grants_revoked']}   "
        f"*Active now:* {summary['active_now']}"
    )
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": truncate(
            f"Access summary for {until:%a %d %b %Y}", HEADER_LIMIT)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"{since:%Y-%m-%d %H:%M} – {until:%Y-%m-%d %H:%M} {zone}")}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": counts}},
    ]
    if summary["expiring_soon"]:
        lines = [f"• *{escape(g['identity'])}* {', '.join(f'`{escape(s)}`' for s in g['scopes'])} until "
                 f"{_local(g['expires_at'], zone):%H:%M}" for g in summary["expiring_soon"]]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": truncate(
            "*Expiring within the hour*\n" + "\n".join(lines), SECTION_TEXT_LIMIT)}})
    if summary["busiest"]:
        lines = [f"{n}. *{escape(b['identity'])}*: {b['requests']} requests"
                 for n, b in enumerate(summary["busiest"], 1)]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": truncate(
            "*Busiest identities*\n" + "\n".join(lines), SECTION_TEXT_LIMIT)}})
    if not summary["requests"] and not summary["active_now"]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "A quiet day: nobody asked for access."}})
    return blocks
