"""Pure Block Kit builders: an access request's card and the messages around it.

Every piece of user-controlled text (reason, context, identity, scopes) is escaped so that ``<!channel>``,
``<@U…>`` or links never ping or unfurl, and texts are cut to Slack's limits with a visible "…"
(Slack Block Kit reference: section text 3,000 chars, 10 fields of 2,000, header 150).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from bot.domain.errors import GrantNotActive
from bot.domain.ids import short_id
from bot.domain.models import AccessRequest, Approval, Decision, Grant, GrantStatus, RequestStatus, Verdict

SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
HEADER_LIMIT = 150
CONTEXT_TEXT_LIMIT = 2000
FALLBACK_TEXT_LIMIT = 3000
APPROVE_ACTION = "approve"
DENY_ACTION = "deny"  # opens the deny-reason modal (bot.slack.modals)
APPROVE_WITH_CHANGES_ACTION = "approve_with_changes"  # opens the narrower-grant modal (bot.slack.modals)
REVOKE_ACTION = "revoke_grant"  # on an approved card while its grant is active
# A Slack user or enterprise user ID, as recorded when a person (not a pipeline) ended a grant.
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,}")


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: the three control characters ``& < >`` (Slack "Formatting text" docs)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def duration(seconds: int) -> str:
    """``90`` -> ``1 min 30 s``; ``3600`` -> ``1 h``."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p) or "0 s"


def clock_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _scopes(scopes: tuple[str, ...]) -> str:
    return ", ".join(f"`{escape(s)}`" for s in scopes)


def _field(label: str, value: str) -> dict:
    return {"type": "mrkdwn", "text": truncate(f"*{label}*\n{value}", FIELD_TEXT_LIMIT)}


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_TEXT_LIMIT)}}


def summary_line(request: AccessRequest) -> str:
    return (
        f"*{escape(request.identity)}* asks for {_scopes(request.scopes)} on *{escape(request.environment)}* "
        f"for {duration(request.ttl_seconds)}"
    )


def card_text(request: AccessRequest, grant: Grant | None = None) -> str:
    """Fallback text of the card (notifications, screen readers): the request and where it stands, the grant's
    end included once it has ended (``(approved, grant expired)``), as the card's blocks say. Slack reads a
    message's ``text`` as mrkdwn, so the pipeline's words are escaped here too: a scope like
    ``deploy:<!channel>`` must not ping anyone."""
    status = request.status.value
    if grant is not None and grant.status is not GrantStatus.ACTIVE:
        status += f", grant {grant.status.value}"
    return truncate(
        f"Access request from {escape(request.identity)}: {escape(' '.join(request.scopes))} on "
        f"{escape(request.environment)} ({status})",
        FALLBACK_TEXT_LIMIT,
    )


def _mentions(users: Sequence[str]) -> str:
    return ", ".join(f"<@{escape(user)}>" for user in users)


def by(actor: str | None) -> str:
    """Who did something, for a message: a Slack user ID becomes a mention, anything else (an identity, "expiry")
    is shown escaped."""
    if actor and _SLACK_USER.fullmatch(actor):
        return f"<@{actor}>"
    return escape(actor or "someone")


def changes_line(request: AccessRequest, grant: Grant) -> str | None:
    """``Granted with changes: `db:read` for 5 min (asked: `db:read`, `db:write` for 15 min)``, or None when the
    grant is what was asked."""
    if tuple(grant.scopes) == tuple(request.scopes) and grant.ttl_seconds == request.ttl_seconds:
        return None
    return (f":scissors: Granted with changes: {_scopes(grant.scopes)} for {duration(grant.ttl_seconds)} "
            f"(asked: {_scopes(request.scopes)} for {duration(request.ttl_seconds)})")


def _reason_block(reason: str) -> str:
    return "*Reason for denial*\n" + escape(reason)


def _who(approvals: Sequence[Approval], verdict: Verdict) -> list[str]:
    return [a.approver for a in approvals if a.verdict is verdict]


def progress_line(request: AccessRequest, approvals: Sequence[Approval]) -> str | None:
    """``1 of 2 approvals: <@U1>`` (and denials so far) on a pending card; None when one approval decides."""
    approved, denied = _who(approvals, Verdict.APPROVE), _who(approvals, Verdict.DENY)
    if request.min_approvals <= 1 and not denied:
        return None
    line = f":ballot_box_with_check: *{len(approved)} of {request.min_approvals} approvals*"
    if approved:
        line += f" so far: {_mentions(approved)}"
    if denied:
        line += (f"\n:x: Denied so far by {_mentions(denied)} (denied once {request.min_approvals} approvals "
                 "can no longer be reached)")
    return line


def outcome_line(request: AccessRequest, grant: Grant | None, approvals: Sequence[Approval] = ()) -> str:
    """What happened to the request, and who decided, for the card's last section."""
    who = f"<@{request.decided_by}>" if request.decided_by not in (None, "policy", "timeout") else "policy"
    when = clock_time(request.decided_at) if request.decided_at else ""
    approved = _who(approvals, Verdict.APPROVE)
    if request.status is RequestStatus.APPROVED:
        line = f":white_check_mark: *Approved* by {_mentions(approved) if len(approved) > 1 else who} at {when}"
        if grant is not None:
            if changed := changes_line(request, grant):
                line += "\n" + changed
            if grant.status is GrantStatus.ACTIVE:
                line += f"\nGrant active until {clock_time(grant.expires_at)}"
            elif grant.status is GrantStatus.EXPIRED:
                line += f"\n:hourglass: Grant expired at {clock_time(grant.expires_at)}"
            else:
                line += (f"\n:no_entry: Grant revoked by {by(grant.ended_by)} at "
                         f"{clock_time(grant.ended_at or grant.expires_at)}")
        return line
    if request.status is RequestStatus.DENIED:
        denied = _who(approvals, Verdict.DENY)
        line = f":x: *Denied* by {_mentions(denied) if len(denied) > 1 else who} at {when}"
        return line + "\n" + _reason_block(request.denial_reason) if request.denial_reason else line
    if request.status is RequestStatus.CANCELLED:
        return f":leftwards_arrow_with_hook: *Cancelled* by {by(request.decided_by or request.identity)} at {when}"
    if request.status is RequestStatus.EXPIRED:
        # The deadline, not when the sweep noticed (later, after a restart).
        deadline = clock_time(request.expires_at) if request.expires_at else when
        return f":hourglass: *Expired*: nobody decided before {deadline}"
    return f"*{request.status.value.capitalize()}*"


def decision_buttons(request_id: str) -> list[dict]:
    """The Approve and Deny buttons (``action_id`` ``approve`` / ``deny``, the request id as ``value``), the same
    on the card and in the App Home so that one pair of listeners decides both."""
    return [
        {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": request_id,
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": DENY_ACTION, "style": "danger", "value": request_id,
         "text": {"type": "plain_text", "text": "Deny"}},
    ]


# A line of the policy's explanation about one rule ("prod-write (require_approval): matches", "… no: …").
_RULE_LINE = re.compile(r".+ \((auto_approve|require_approval|deny)\): (matches|no: )")


def why_text(request: AccessRequest) -> str:
    """The card's "Why": the deciding rule's line and what the policy added (a guard rail, a missing reason, the
    default), with the rules that did not match collapsed to a count and the command that lists them all."""
    deciding = f"{request.rule} (" if request.rule else None
    shown, others = [], 0
    for line in request.decision_reasons:
        if _RULE_LINE.match(line) and not (deciding and line.startswith(deciding)):
            others += 1
        else:
            shown.append("• " + escape(line))
    if others:
        rules = "rule" if others == 1 else "rules"
        shown.append(f"_{others} other {rules} did not decide it: `/access explain {short_id(request.id)}` "
                     "lists them all_")
    return truncate("*Why:*\n" + "\n".join(shown), CONTEXT_TEXT_LIMIT)


def card_blocks(
    request: AccessRequest, grant: Grant | None = None, approvals: Sequence[Approval] = (),
    hands_out: Sequence[str] = (),
) -> list[dict]:
    """The approval card: what is asked, by whom, why, the pipeline's context, and buttons while pending.

    Shape: Slack Block Kit ``blocks`` for ``chat.postMessage`` / ``chat.update``. Buttons carry the request id as
    ``value`` with ``action_id`` ``approve`` / ``approve_with_changes`` (only when one approval decides) /
    ``deny``; once decided they are replaced by the outcome (who decided, the denial's reason, a narrower grant)
    and, while the grant is active, a ``revoke_grant`` button (with a confirmation dialog).
    ``approvals`` are the verdicts given so far (``Store.approvals``): with ``min_approvals`` above 1 a pending
    card shows the progress ("1 of 2 approvals") and who approved; a decided one names everyone who approved.
    ``hands_out``: what the rule's grants get besides the token, one line per credential (``shop-db (mysql): a
    MySQL/MariaDB user … with role shop_read …``), so approvers see what they approve.
    """
    blocks: list[dict] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(f"Access request: {request.environment}", HEADER_LIMIT)},
        },
        _section(summary_line(request)),
        {
            "type": "section",
            "fields": [
                _field("Identity", escape(request.identity)),
                _field("Environment", escape(request.environment)),
                _field("Scopes", _scopes(request.scopes)),
                _field("TTL", f"{duration(request.ttl_seconds)} from approval"),
                _field("Audience", escape(request.audience)),
                _field("Rule", escape(request.rule or "default")),
            ],
        },
    ]
    if hands_out:
        blocks.append(_section(truncate("*Hands out*\n" + "\n".join("• " + escape(line) for line in hands_out),
                                        SECTION_TEXT_LIMIT)))
    if request.reason:
        blocks.append(_section("*Reason*\n" + escape(request.reason)))
    if request.context:
        items = [f"*{escape(k)}:* {escape(v)}" for k, v in sorted(request.context.items())[:10]]
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(i, 2000)} for i in items]})
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Request `{request.id}` · {escape(request.decision_reason)}"}]}
    )
    if request.decision_reasons:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": why_text(request)}]})
    if request.status is RequestStatus.PENDING:
        if request.excluded_approvers:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(
                f"{_mentions(request.excluded_approvers)} triggered this pipeline and can't approve it", 2000)}]})
        if progress := progress_line(request, approvals):
            blocks.append(_section(progress))
        elements = decision_buttons(request.id)
        if request.min_approvals <= 1:  # changes are for one-approver requests (bot.domain.usecases.decide)
            elements.insert(1, {"type": "button", "action_id": APPROVE_WITH_CHANGES_ACTION, "value": request.id,
                                "text": {"type": "plain_text", "text": "Approve with changes"}})
        blocks.append({"type": "actions", "block_id": "decide", "elements": elements})
    else:
        blocks.append({"type": "divider"})
        blocks.append(_section(outcome_line(request, grant, approvals)))
        if request.status is RequestStatus.APPROVED and grant is not None and grant.status is GrantStatus.ACTIVE:
            blocks.append({"type": "actions", "block_id": "grant", "elements": [{
                "type": "button", "action_id": REVOKE_ACTION, "style": "danger", "value": request.id,
                "text": {"type": "plain_text", "text": "Revoke"},
                "confirm": {"title": {"type": "plain_text", "text": "Revoke this grant?"},
                            "text": {"type": "plain_text", "text": truncate(
                                f"{grant.identity} loses {' '.join(grant.scopes)} on {request.environment} now.",
                                300)},
                            "confirm": {"type": "plain_text", "text": "Revoke"},
                            "deny": {"type": "plain_text", "text": "Cancel"}, "style": "danger"},
            }]})
    return blocks


def reminder_text(request: AccessRequest, approvals: Sequence[Approval]) -> str:
    """A thread reply nudging the approvers of a pending request: mentions the listed approvers (not the person
    who triggered the pipeline, nor those who already voted) and the user groups (``<!subteam^ID>``)."""
    voted = {a.approver for a in approvals}
    people = [u for u in request.approvers if u not in request.excluded_approvers and u not in voted]
    groups = [f"<!subteam^{escape(g)}>" for g in request.approver_groups]
    who = ", ".join([*(f"<@{escape(u)}>" for u in people), *groups]) or "Approvers"
    approved = len(_who(approvals, Verdict.APPROVE))
    waiting = (f"{approved} of {request.min_approvals} approvals so far" if request.min_approvals > 1
               else "nobody has decided yet")
    deadline = f"; it expires at {clock_time(request.expires_at)}" if request.expires_at else ""
    return truncate(
        f":bell: {who}: *{escape(request.identity)}* is still waiting for {_scopes(request.scopes)} on "
        f"*{escape(request.environment)}* ({waiting}){deadline}.",
        SECTION_TEXT_LIMIT,
    )


def grant_ended_text(request: AccessRequest, grant: Grant, by_user: str | None = None,
                     reason: str | None = None) -> str:
    """A thread reply (or, without a card, a channel message) saying a grant ended. ``by_user`` (a Slack user ID)
    and ``reason`` come with a revocation made in Slack (``/access revoke``): the person is mentioned."""
    what = f"{_scopes(grant.scopes)} on *{escape(request.environment)}* for *{escape(grant.identity)}*"
    origin = " (auto-approved by rule " + escape(request.rule or "default") + ")" if (
        request.decision is Decision.AUTO_APPROVE
    ) else ""
    if grant.status is GrantStatus.REVOKED:
        who = f"<@{escape(by_user)}>" if by_user else by(grant.ended_by)
        why = f": {escape(reason)}" if reason else ""
        return truncate(f":no_entry: Grant {what}{origin} was revoked by {who}{why}.", SECTION_TEXT_LIMIT)
    return truncate(
        f":hourglass: Grant {what}{origin} expired at {clock_time(grant.expires_at)}; access has ended.",
        SECTION_TEXT_LIMIT,
    )


def decision_text(request: AccessRequest, grant: Grant | None, approvals: Sequence[Approval] = ()) -> str:
    """The thread reply under the card when people decided: who approved (and the grant it issued: scopes, TTL,
    until when, any narrowing) or who denied and why."""
    if request.status is RequestStatus.APPROVED:
        approved = _who(approvals, Verdict.APPROVE) or [request.decided_by or "someone"]
        text = f":white_check_mark: Approved by {_mentions(approved)}."
        if grant is not None:
            text += (f" Grant issued: {_scopes(grant.scopes)} on *{escape(request.environment)}* for "
                     f"*{escape(grant.identity)}* for {duration(grant.ttl_seconds)}, until {clock_time(grant.expires_at)}.")
            if changed := changes_line(request, grant):
                text += "\n" + changed
        return truncate(text, SECTION_TEXT_LIMIT)
    if request.status is RequestStatus.DENIED:
        text = f":x: Denied by {by(request.decided_by)}."
        if request.denial_reason:
            text += "\n" + _reason_block(request.denial_reason)
        return truncate(text, SECTION_TEXT_LIMIT)
    return truncate(outcome_line(request, grant), SECTION_TEXT_LIMIT)


def handed_over_text(request: AccessRequest, grant: Grant) -> str:
    """The thread reply when the pipeline collected its token (``token.handed_over``)."""
    return truncate(f":key: *{escape(grant.identity)}* collected its token for {_scopes(grant.scopes)} on "
                    f"*{escape(request.environment)}* (valid until {clock_time(grant.expires_at)}).", SECTION_TEXT_LIMIT)


def refusal_text(error) -> str:
    """What a person is told privately when a click or a command changes nothing (a ``DomainError``), the same
    whichever way they asked: a decision or revocation someone else made names them (a mention), anything else
    is the error's sentence."""
    if isinstance(error, GrantNotActive) and error.outcome == "revoked" and error.ended_by:
        return f"This grant was already revoked by {by(error.ended_by)}; nothing changed."
    outcome, decided_by = getattr(error, "outcome", None), getattr(error, "decided_by", None)
    if outcome and decided_by and decided_by not in ("policy", "timeout", "expiry"):
        return f"This request was already {escape(outcome)} by {by(decided_by)}."  # a person, or an identity
    return escape(error.detail)
