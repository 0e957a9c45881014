"""Pure Block Kit builders for the ``/access`` slash command's answers (all ephemeral: only the person sees them).

Each builder returns a whole response_url message, ``{"response_type": "ephemeral", "text": ..., "blocks": [...]}``
(Slack "Handling slash commands": ``text`` is the notification/fallback, ``blocks`` what is shown). User-controlled
text (identities, environments, scopes, reasons, globs) is escaped with :func:`bot.slack.blocks.escape` and cut to
Slack's limits (section text 3,000 characters; confirm dialog title 100, text 300, buttons 30; button value 2,000).
Times are UTC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from bot.domain.credentials import CredentialState
from bot.domain.ids import short_id
from bot.domain.models import AccessRequest, Grant, GrantStatus, RequestStatus
from bot.slack.blocks import (
    FALLBACK_TEXT_LIMIT,
    SECTION_TEXT_LIMIT,
    by,
    clock_time,
    duration,
    escape,
    refusal_text,
    summary_line,
    truncate,
)
from bot.slack.credential_blocks import credentials_line

ACCESS_COMMAND = "/access"
REVOKE_ALL_ACTION = "access_revoke_all"
LIST_LIMIT = 20  # grants or requests shown by list / pending (one section each; Slack allows 50 blocks)
PREVIEW_LIMIT = 10  # grants named in a revoke-all confirmation
BUTTON_VALUE_LIMIT = 2000
CONFIRM_TITLE_LIMIT, CONFIRM_TEXT_LIMIT, CONFIRM_BUTTON_LIMIT = 100, 300, 30

HELP_LINES = (
    ("list", "active grants, soonest to expire first"),
    ("pending", "requests waiting for approvers"),
    ("show <id>", "one request and its grant"),
    ("explain <id>", "why the policy decided what it did, rule by rule"),
    ("revoke <id> [reason]", "end a grant now (approvers of its rule, or admins)"),
    ("revoke-all <identity glob> [reason]", "incident kill switch: end every active grant of matching "
                                            "identities, after a confirmation (admins only)"),
    ("help", "this text"),
)


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_TEXT_LIMIT)}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(text, SECTION_TEXT_LIMIT)}]}


def _plain(text: str, limit: int) -> dict:
    return {"type": "plain_text", "text": truncate(text, limit)}


def _message(text: str, blocks: list[dict]) -> dict:
    """``text`` is plain (the notification and fallback, which Slack also reads as mrkdwn): escaped here."""
    return {"response_type": "ephemeral", "text": truncate(escape(text), FALLBACK_TEXT_LIMIT), "blocks": blocks}


def _scopes(scopes: Sequence[str]) -> str:
    return ", ".join(f"`{escape(s)}`" for s in scopes)


def _who(decided_by: str | None) -> str:
    if decided_by in (None, "policy", "timeout"):
        return decided_by or "nobody"
    return by(decided_by)  # a person as a mention; an identity (a request its pipeline cancelled) as text


def refusal_message(error, emoji: str) -> dict:
    """A refusal (a ``DomainError``), worded as on a card's click (``refusal_text``)."""
    return _message(error.detail, [_section(f"{emoji} {refusal_text(error)}")])


def notice_message(text: str, emoji: str = "") -> dict:
    """A one-sentence answer (a refusal, a bad id); ``text`` is plain and gets escaped."""
    shown = f"{emoji} {escape(text)}" if emoji else escape(text)
    return _message(text, [_section(shown)])


def help_message(problem: str | None = None) -> dict:
    """The subcommands; ``problem`` (plain text, e.g. "Unknown subcommand `x`.") is said first."""
    # "<id>" must be escaped even inside code: Slack reads <…> as a link or mention anywhere in mrkdwn.
    lines = "\n".join(f"• `{ACCESS_COMMAND} {escape(usage)}`: {what}" for usage, what in HELP_LINES)
    blocks = [_section(f":warning: {escape(problem)}")] if problem else []
    blocks += [
        _section(f"*{ACCESS_COMMAND}*: see and end grantbot's access grants\n{lines}"),
        _context("Anyone in the workspace can use list, pending, show and explain: they show what the approval "
                 "cards show, never a token. An &lt;id&gt; is a request id (as on the cards) or a grant id, or its first "
                 "8 characters as lists show them."),
    ]
    return _message((problem + " " if problem else "") + f"{ACCESS_COMMAND} help", blocks)


def _grant_line(request: AccessRequest, grant: Grant, now: datetime) -> str:
    left = max(int((grant.expires_at - now).total_seconds()), 0)
    return (
        f"*{escape(grant.identity)}* · {_scopes(grant.scopes)} on *{escape(request.environment)}* · "
        f"expires in {duration(left)} ({clock_time(grant.expires_at)})\n"
        f"Grant `{short_id(grant.id)}` · request `{short_id(request.id)}` · "
        f"rule {escape(request.rule or 'default')} · "
        f"approved by {_who(request.decided_by)}"
    )


def grants_message(items: Sequence[tuple[AccessRequest, Grant]], total: int, now: datetime) -> dict:
    """``/access list``: active grants (``items``, soonest to expire first) of ``total`` active at ``now``."""
    if not items:
        return _message("No active grants.", [_section("No active grants.")])
    head = f"*{total} active grant{'' if total == 1 else 's'}*"
    blocks = [_section(head)] + [_section(_grant_line(r, g, now)) for r, g in items]
    if total > len(items):
        blocks.append(_context(f"Showing the {len(items)} that expire soonest of {total}."))
    return _message(f"{total} active grant{'' if total == 1 else 's'}", blocks)


def _pending_line(request: AccessRequest, now: datetime) -> str:
    waited = max(int((now - request.created_at).total_seconds()), 0)
    line = (f"{summary_line(request)}\nRequest `{short_id(request.id)}` · rule {escape(request.rule or 'default')}"
            f" · waiting {duration(waited)}")
    if request.expires_at is not None:
        line += f" · times out at {clock_time(request.expires_at)}"
    return line


def pending_message(requests: Sequence[AccessRequest], total: int, now: datetime) -> dict:
    """``/access pending``: pending requests (oldest first) of ``total`` pending at ``now``."""
    if not requests:
        return _message("No pending requests.", [_section("No pending requests.")])
    head = f"*{total} pending request{'' if total == 1 else 's'}*"
    blocks = [_section(head)] + [_section(_pending_line(r, now)) for r in requests]
    if total > len(requests):
        blocks.append(_context(f"Showing the {len(requests)} oldest of {total}."))
    return _message(f"{total} pending request{'' if total == 1 else 's'}", blocks)


def _grant_state(grant: Grant | None, now: datetime) -> str:
    if grant is None:
        return "No grant."
    if grant.status is GrantStatus.ACTIVE and grant.expires_at > now:
        left = int((grant.expires_at - now).total_seconds())
        return f"Grant `{grant.id}`: *active*, expires in {duration(left)} ({clock_time(grant.expires_at)})"
    if grant.status is GrantStatus.REVOKED:
        by = escape(grant.ended_by or "someone")
        return f"Grant `{grant.id}`: *revoked* by {by} at {clock_time(grant.ended_at or grant.expires_at)}"
    return f"Grant `{grant.id}`: *expired* at {clock_time(grant.expires_at)}"


def show_message(request: AccessRequest, grant: Grant | None, now: datetime,
                 credentials: Sequence[CredentialState] = ()) -> dict:
    """``/access show <id>``: the request, its decision and its grant at ``now``, and the grant's real credentials
    (which account on which provider, never a secret) with how their revocation stands."""
    decided = ""
    if request.status is not RequestStatus.PENDING:
        when = f" at {clock_time(request.decided_at)}" if request.decided_at else ""
        decided = f" by {_who(request.decided_by)}{when}"
    lines = [
        f"*Request* `{request.id}`",
        summary_line(request),
        f"*Status:* {request.status.value}{decided} · *rule:* {escape(request.rule or 'default')} · "
        f"*audience:* {escape(request.audience)}",
        f"*Asked at:* {clock_time(request.created_at)}",
    ]
    if request.reason:
        lines.append(f"*Reason:* {escape(request.reason)}")
    blocks = [_section("\n".join(lines)), _section(_grant_state(grant, now))]
    if (said := credentials_line(credentials)) is not None:
        blocks.append(_section(said))
    if request.context:
        items = ", ".join(f"{escape(k)}: {escape(v)}" for k, v in sorted(request.context.items()))
        blocks.append(_context(items))
    return _message(f"Request {request.id}: {request.status.value}", blocks)


def explain_message(request: AccessRequest) -> dict:
    """``/access explain <id>``: the policy's decision, its rule and the stored reasons, rule by rule."""
    head = (f"*Request* `{request.id}`: the policy said *{request.decision.value}* by rule "
            f"*{escape(request.rule or 'default')}*\n{escape(request.decision_reason)}")
    reasons = "\n".join("• " + escape(line) for line in request.decision_reasons) or "No explanation was stored."
    return _message(f"Request {request.id}: {request.decision.value} by rule {request.rule or 'default'}",
                    [_section(head), _section("*Rule by rule:*\n" + reasons)])


def revoked_message(request: AccessRequest, grant: Grant, reason: str | None) -> dict:
    """``/access revoke``: what was ended (the channel hears it in the card's thread)."""
    what = f"{_scopes(grant.scopes)} on *{escape(request.environment)}* for *{escape(grant.identity)}*"
    why = f"\n*Reason:* {escape(reason)}" if reason else ""
    return _message(f"Revoked grant {grant.id}",
                    [_section(f":no_entry: Revoked grant `{grant.id}`: {what}. Its token stops working now.{why}")])


def revoke_all_value(glob: str, reason: str | None, as_of: datetime) -> str:
    """The confirm button's ``value``: what the click needs, as JSON (at most 2,000 characters; the reason is cut
    first). ``as_of`` is the preview's moment, so the click ends what the person saw and a repeat ends nothing."""
    value = {"glob": glob, "reason": reason or "", "as_of": as_of.isoformat()}
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    while len(text) > BUTTON_VALUE_LIMIT and value["reason"]:
        value["reason"] = value["reason"][: max(len(value["reason"]) - (len(text) - BUTTON_VALUE_LIMIT) - 1, 0)]
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text


def parse_revoke_all_value(value: object) -> tuple[str, str | None, datetime] | None:
    """(glob, reason, as_of) from :func:`revoke_all_value`, or None for anything else."""
    try:
        data = json.loads(value) if isinstance(value, str) else None
        as_of = datetime.fromisoformat(data["as_of"])
        glob, reason = data["glob"], data.get("reason") or None
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(glob, str) or as_of.tzinfo is None or not (reason is None or isinstance(reason, str)):
        return None
    return glob, reason, as_of


def revoke_all_confirm_message(glob: str, grants: Sequence[Grant], reason: str | None, as_of: datetime,
                               now: datetime) -> dict:
    """``/access revoke-all``: the matching active grants and a "Revoke all N" button behind Slack's confirmation
    dialog (a Block Kit ``confirm`` object); none match: just say so."""
    shown = escape(glob)
    if not grants:
        return _message(f"No active grant matches {glob}.", [_section(f"No active grant of an identity matching "
                                                                       f"`{shown}`; nothing to revoke.")])
    n = len(grants)
    lines = "\n".join(
        f"• *{escape(g.identity)}* · {_scopes(g.scopes)} · grant `{short_id(g.id)}` · expires in "
        f"{duration(max(int((g.expires_at - now).total_seconds()), 0))}"
        for g in grants[:PREVIEW_LIMIT]
    )
    more = f"\n…and {n - PREVIEW_LIMIT} more" if n > PREVIEW_LIMIT else ""
    why = f"\n*Reason:* {escape(reason)}" if reason else ""
    label = f"Revoke all {n}"
    blocks = [
        _section(f":rotating_light: *{n} active grant{'' if n == 1 else 's'}* of identities matching `{shown}`:\n"
                 f"{lines}{more}{why}"),
        {
            "type": "actions",
            "block_id": "revoke_all",
            "elements": [{
                "type": "button",
                "action_id": REVOKE_ALL_ACTION,
                "style": "danger",
                "text": _plain(label, 75),
                "value": revoke_all_value(glob, reason, as_of),
                "confirm": {
                    "title": _plain(f"Revoke {n} grant{'' if n == 1 else 's'}?", CONFIRM_TITLE_LIMIT),
                    "text": _plain(f"Every active grant of identities matching {glob} issued until "
                                   f"{clock_time(as_of)} ends now; their tokens stop working.", CONFIRM_TEXT_LIMIT),
                    "confirm": _plain(label, CONFIRM_BUTTON_LIMIT),
                    "deny": _plain("Cancel", CONFIRM_BUTTON_LIMIT),
                    "style": "danger",
                },
            }],
        },
        _context("Grants issued after this list was made are not included; run revoke-all again for them."),
    ]
    return _message(f"{n} active grant{'' if n == 1 else 's'} match{'es' if n == 1 else ''} {glob}: confirm to "
                    "revoke", blocks)


def revoke_all_done_message(glob: str, ended: int, user: str, reason: str | None) -> dict:
    """What replaces the confirmation after the click: how many grants this click ended."""
    why = f"\n*Reason:* {escape(reason)}" if reason else ""
    if ended:
        text = (f":no_entry: <@{escape(user)}> revoked {ended} grant{'' if ended == 1 else 's'} of identities "
                f"matching `{escape(glob)}`.{why}")
    else:
        text = f"Nothing to revoke: no grant of identities matching `{escape(glob)}` from that list is still active."
    return _message(f"Revoked {ended} grants matching {glob}", [_section(text)])
