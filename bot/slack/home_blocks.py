"""Pure Block Kit builder for grantbot's App Home tab (``views.publish`` with a ``home`` view).

Shape: ``{"type": "home", "callback_id": "grantbot_home", "blocks": [...]}``. Three parts, each under a header:
the requests the viewer may decide (each with the card's own Approve / Deny buttons, so the card's listeners
decide them), the active grants, and the last decisions people made. Slack limits (Block Kit reference): a view
holds at most 100 blocks, a section text 3,000 characters, a header 150: lists are cut with an "… and N more"
line and texts with "…". User-controlled text is escaped (``bot.slack.blocks.escape``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bot.domain.approvals import waiting_for
from bot.domain.models import AccessRequest, Approval, GrantStatus, RequestStatus, Tally, Verdict
from bot.domain.usecases.home import Decided, HomeView, PendingItem
from bot.slack.credential_blocks import failed_revocations_text
from bot.slack.blocks import (
    CONTEXT_TEXT_LIMIT,
    HEADER_LIMIT,
    SECTION_TEXT_LIMIT,
    clock_time,
    decision_buttons,
    duration,
    escape,
    truncate,
)

VIEW_MAX_BLOCKS = 100  # Slack: "a view can hold up to 100 blocks"
PENDING_SHOWN = 25  # three blocks each; the rest of the page needs at most a dozen
REASON_SHOWN = 300  # the card has the whole reason; the Home shows the start of it
HOME_CALLBACK_ID = "grantbot_home"


def _header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": truncate(text, HEADER_LIMIT)}}


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_TEXT_LIMIT)}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(text, CONTEXT_TEXT_LIMIT)}]}


def _scopes(scopes: Sequence[str]) -> str:
    return ", ".join(f"`{escape(s)}`" for s in scopes)


def _mentions(users: Sequence[str]) -> str:
    return ", ".join(f"<@{escape(u)}>" for u in users)


def _ago(moment: datetime, now: datetime) -> str:
    """``5 min ago``; ``just now`` under a second (and for a moment in the future: clocks differ)."""
    seconds = int((now - moment).total_seconds())
    return f"{duration(seconds)} ago" if seconds >= 1 else "just now"


def _what(request: AccessRequest) -> str:
    return f"*{escape(request.identity)}* {_scopes(request.scopes)} on *{escape(request.environment)}*"


def pending_blocks(item: PendingItem, now: datetime) -> list[dict]:
    """Three blocks for one request the viewer may decide: what is asked (and the start of the reason), where it
    stands, and the Approve / Deny buttons — or, when the viewer already gave their verdict, what it waits for."""
    request = item.request
    text = f"{_what(request)} for {duration(request.ttl_seconds)}"
    if request.reason:
        text += "\n*Reason:* " + escape(truncate(request.reason, REASON_SHOWN))
    facts = [f"Request `{request.id}`", f"rule *{escape(request.rule or 'default')}*",
             f"asked {_ago(request.created_at, now)}"]
    if request.expires_at is not None:
        facts.append(f"times out in {duration(max(int((request.expires_at - now).total_seconds()), 0))}")
    tally = Tally(approvals=sum(a.verdict is Verdict.APPROVE for a in item.approvals),
                  denials=sum(a.verdict is Verdict.DENY for a in item.approvals))
    if request.min_approvals > 1 or tally.denials:
        facts.append(f"{tally.approvals} of {request.min_approvals} approvals")
    blocks = [_section(text), _context(" · ".join(facts))]
    if item.mine is None:
        blocks.append({"type": "actions", "block_id": f"home-decide:{request.id}",
                       "elements": decision_buttons(request.id)})
    else:
        said = "approved" if item.mine is Verdict.APPROVE else "denied"
        blocks.append(_context(f"You {said} this; it is waiting for {waiting_for(request, tally)}."))
    return blocks


def grant_line(grant, environment: str, now: datetime) -> str:
    """``• *deploy-bot* `db:write` on *production*, expires in 14 min (12:00:00 UTC)``."""
    left = max(int((grant.expires_at - now).total_seconds()), 0)
    return (f"• *{escape(grant.identity)}* {_scopes(grant.scopes)} on *{escape(environment)}*, expires in "
            f"{duration(left)} ({grant.expires_at:%H:%M:%S} UTC)")


def _approvers(approvals: Sequence[Approval], verdict: Verdict, fallback: str | None) -> str:
    people = [a.approver for a in approvals if a.verdict is verdict]
    if people:
        return _mentions(people)
    return f"<@{escape(fallback)}>" if fallback and fallback not in ("policy", "timeout") else "policy"


def decision_line(decided: Decided, now: datetime) -> str:
    """One past decision: what was asked, the outcome and who, and when; an approval also says how its grant is."""
    request, grant = decided.request, decided.grant
    when = _ago(request.decided_at, now) if request.decided_at else ""
    if request.status is RequestStatus.APPROVED:
        outcome = f":white_check_mark: approved by {_approvers(decided.approvals, Verdict.APPROVE, request.decided_by)}"
        if grant is not None and grant.status is GrantStatus.ACTIVE and grant.expires_at > now:
            outcome += ", grant active"
        elif grant is not None and grant.status is GrantStatus.REVOKED:
            outcome += f", grant revoked by {escape(grant.ended_by or 'someone')}"
        elif grant is not None:
            outcome += ", grant expired"
    elif request.status is RequestStatus.DENIED:
        outcome = f":x: denied by {_approvers(decided.approvals, Verdict.DENY, request.decided_by)}"
    elif request.status is RequestStatus.EXPIRED:
        outcome = ":hourglass: timed out: nobody decided"
    else:
        outcome = escape(request.status.value)
    return f"• {_what(request)}: {outcome} · {when}"


def _listing(title: str, lines: Sequence[str], total: int, empty: str) -> list[dict]:
    """A header, the lines in one section (cut at Slack's 3,000 characters), and "… and N more" when ``total``
    is more than the lines shown."""
    blocks = [_header(title), _section("\n".join(lines) if lines else empty)]
    if total > len(lines):
        blocks.append(_context(f"… and {total - len(lines)} more"))
    return blocks


def home_view(home: HomeView) -> dict:
    """The App Home view for ``home.user`` (a ``views.publish`` ``view``), at most 100 blocks."""
    now = home.now
    top: list[dict] = []
    if home.notice:
        top.append(_section(f":warning: {home.notice}"))
    if (failed := failed_revocations_text(home.failed_revocations)) is not None:
        top.append(_section(failed))
    top.append(_header(f"Waiting for your decision ({len(home.pending)})"))
    if home.groups_unknown:
        top.append(_context("Slack user groups could not be checked just now: requests you may decide as a group "
                            "member are missing here. Open this tab again in a minute."))
    rest = [{"type": "divider"}]
    rest += _listing(f"Active grants ({home.grants_total})", [grant_line(g, env, now) for g, env in home.grants],
                     home.grants_total, "No grant is active.")
    rest.append({"type": "divider"})
    rest += _listing("Recent decisions", [decision_line(d, now) for d in home.recent], len(home.recent),
                     "Nobody has decided a request yet.")
    rest.append(_context(f"Updated {clock_time(now)}. This tab is refreshed each time you open it and after you "
                         "click Approve or Deny here."))

    middle: list[dict] = []
    if not home.pending:
        middle.append(_section("Nothing is waiting for you."))
    # Room left for requests, keeping two blocks for the "… and N more" lines.
    room = (VIEW_MAX_BLOCKS - len(top) - len(rest) - 2) // 3
    shown = home.pending[: min(PENDING_SHOWN, room)]
    for item in shown:
        middle += pending_blocks(item, now)
    if len(home.pending) > len(shown):
        middle.append(_context(f"… and {len(home.pending) - len(shown)} more waiting for you (newest shown first); "
                               "older ones appear here as these are decided."))
    if home.pending_unscanned:
        middle.append(_context(f"{home.pending_unscanned} older pending requests were not checked here "
                               "(`/access pending` lists the oldest)."))
    return {"type": "home", "callback_id": HOME_CALLBACK_ID, "blocks": top + middle + rest}
