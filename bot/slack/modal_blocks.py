"""Pure Block Kit builders for the card's modals: the deny reason and "Approve with changes".

Shape: Slack ``view`` objects for ``views.open`` (type ``modal``). Each carries its ``callback_id`` (which
``view_submission`` listener gets it, ``bot.slack.modals``) and ``private_metadata`` = JSON
``{"request_id", "channel", "ts"}`` (the card's place, to answer the approver privately next to it: a
``view_submission`` payload has no channel). The summary is mrkdwn built by ``bot.slack.blocks`` (escaped);
labels and options are ``plain_text`` (shown literally by Slack), cut to Slack's limits with a visible "…".
Slack limits (Block Kit reference): modal title, submit and close 24 characters; option text 75, option value
150; 10 checkboxes; 100 options in a multi-select; ``private_metadata`` 3,000; ``plain_text_input`` up to 3,000.
"""

from __future__ import annotations

import json

from bot.domain.models import AccessRequest
from bot.slack.blocks import SECTION_TEXT_LIMIT, duration, summary_line, truncate

DENY_CALLBACK = "deny_reason"
APPROVE_CHANGES_CALLBACK = "approve_with_changes"
REASON_BLOCK, REASON_INPUT = "reason", "reason_input"
TTL_BLOCK, TTL_INPUT = "ttl", "ttl_minutes"
SCOPES_BLOCK, SCOPES_INPUT = "scopes", "scopes_input"
REASON_MAX_LENGTH = 1000  # characters; Slack enforces it in the form, the listener checks again
TITLE_LIMIT = 24
OPTION_TEXT_LIMIT = 75
MAX_CHECKBOXES = 10
MAX_SELECT_OPTIONS = 100


def _plain(text: str, limit: int | None = None) -> dict:
    return {"type": "plain_text", "text": truncate(text, limit) if limit else text}


def metadata(request_id: str, channel: str | None, ts: str | None) -> str:
    """The modal's ``private_metadata``: where the card is, and which request it decides."""
    return json.dumps({"request_id": request_id, "channel": channel, "ts": ts}, separators=(",", ":"))


def read_metadata(text: object) -> dict | None:
    """``{"request_id", "channel", "ts"}`` from a submitted view's ``private_metadata``; None if it is not ours."""
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("request_id"), str) else None


def _summary(request: AccessRequest) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(summary_line(request), SECTION_TEXT_LIMIT)}}


def deny_modal(request: AccessRequest, channel: str | None, ts: str | None) -> dict:
    """Deny with a reason: one required multiline input (``reason`` / ``reason_input``, at most
    ``REASON_MAX_LENGTH`` characters). The reason goes on the card, in its thread, in the audit trail and in the
    pipeline's answer (``denial_reason``)."""
    return {
        "type": "modal",
        "callback_id": DENY_CALLBACK,
        "private_metadata": metadata(request.id, channel, ts),
        "title": _plain("Deny access request", TITLE_LIMIT),
        "submit": _plain("Deny"),
        "close": _plain("Cancel"),
        "blocks": [
            _summary(request),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": _plain("Why is it denied?"),
                "hint": _plain("The pipeline and the channel see this."),
                "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                            "max_length": REASON_MAX_LENGTH,
                            "placeholder": _plain("e.g. Not during the release freeze")},
            },
        ],
    }


def minutes(seconds: int) -> str:
    """``900`` -> ``"15"``, ``90`` -> ``"1.5"``, ``100`` -> ``"1.67"``: a TTL as the form shows it (minutes, at most
    two decimals, so that ``round(float(text) * 60)`` gives the seconds back)."""
    return f"{seconds / 60:.2f}".rstrip("0").rstrip(".")


def _option(request: AccessRequest, index: int) -> dict:
    # The value is the scope's position in the request, not the scope: a scope can be longer than an option's
    # 150-character value, and a position can only name a scope that was asked for.
    return {"text": _plain(request.scopes[index], OPTION_TEXT_LIMIT), "value": str(index)}


def approve_with_changes_modal(request: AccessRequest, channel: str | None, ts: str | None) -> dict:
    """Approve a narrower grant: the TTL in minutes (``ttl`` / ``ttl_minutes``, a ``number_input`` up to the asked
    TTL) and the scopes to keep (``scopes`` / ``scopes_input``: checkboxes, or a multi-select above 10 scopes; all
    asked scopes selected at first; option values are the scopes' positions in the request)."""
    options = [_option(request, i) for i in range(min(len(request.scopes), MAX_SELECT_OPTIONS))]
    if len(options) <= MAX_CHECKBOXES:
        scopes_element = {"type": "checkboxes", "action_id": SCOPES_INPUT, "options": options,
                          "initial_options": options}
    else:
        scopes_element = {"type": "multi_static_select", "action_id": SCOPES_INPUT, "options": options,
                          "initial_options": options, "placeholder": _plain("Scopes to grant")}
    asked = minutes(request.ttl_seconds)
    return {
        "type": "modal",
        "callback_id": APPROVE_CHANGES_CALLBACK,
        "private_metadata": metadata(request.id, channel, ts),
        "title": _plain("Approve with changes", TITLE_LIMIT),
        "submit": _plain("Approve"),
        "close": _plain("Cancel"),
        "blocks": [
            _summary(request),
            {
                "type": "input",
                "block_id": TTL_BLOCK,
                "label": _plain("Access for how many minutes?"),
                "hint": _plain(f"At most the {duration(request.ttl_seconds)} asked for; counted from now."),
                "element": {"type": "number_input", "action_id": TTL_INPUT, "is_decimal_allowed": True,
                            "initial_value": asked, "max_value": asked},
            },
            {
                "type": "input",
                "block_id": SCOPES_BLOCK,
                "label": _plain("Scopes to grant"),
                "hint": _plain("Keep at least one."),
                "element": scopes_element,
            },
        ],
    }
