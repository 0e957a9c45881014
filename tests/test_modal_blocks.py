"""Golden tests: the modals' views, the card's decision and Revoke buttons, and the thread replies, exactly as
they are sent to Slack (pure builders, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.domain.models import AccessRequest, Decision, Grant, GrantStatus, RequestStatus
from bot.slack.blocks import card_blocks, decision_text, handed_over_text, refusal_text
from bot.slack.modal_blocks import approve_with_changes_modal, deny_modal, minutes, read_metadata

AT = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
ID = "3f2a0c1e-0000-4000-8000-000000000001"
SUMMARY = {"type": "section", "text": {"type": "mrkdwn",
                                       "text": "*deploy-bot* asks for `db:write`, `deploy:&lt;api&gt;` on *production* for 15 min"}}
METADATA = '{"request_id":"3f2a0c1e-0000-4000-8000-000000000001","channel":"C0SANDBOX","ts":"1764400000.000100"}'


def request(**changes) -> AccessRequest:
    base = AccessRequest(
        id=ID, identity="deploy-bot", environment="production", scopes=("db:write", "deploy:<api>"), ttl_seconds=900,
        audience="https://api.acme.example", reason="hotfix", context={}, status=RequestStatus.PENDING,
        decision=Decision.REQUIRE_APPROVAL, rule="prod-write", decision_reason="rule 'prod-write' asks people",
        approvers=("U0APPROVER",), channel="C0SANDBOX", created_at=AT, expires_at=AT + timedelta(hours=1))
    return replace(base, **changes)


def grant(**changes) -> Grant:
    base = Grant(id="9e1f", request_id=ID, identity="deploy-bot", scopes=("db:write", "deploy:<api>"),
                 audience="https://api.acme.example", jti="j", issued_at=AT, expires_at=AT + timedelta(seconds=900))
    return replace(base, **changes)


def test_the_deny_modal():
    assert deny_modal(request(), "C0SANDBOX", "1764400000.000100") == {
        "type": "modal",
        "callback_id": "deny_reason",
        "private_metadata": METADATA,
        "title": {"type": "plain_text", "text": "Deny access request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            SUMMARY,
            {"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Why is it denied?"},
             "hint": {"type": "plain_text", "text": "The pipeline and the channel see this."},
             "element": {"type": "plain_text_input", "action_id": "reason_input", "multiline": True, "max_length": 1000,
                         "placeholder": {"type": "plain_text", "text": "e.g. Not during the release freeze"}}},
        ],
    }
    assert read_metadata(METADATA) == {"request_id": ID, "channel": "C0SANDBOX", "ts": "1764400000.000100"}
    assert read_metadata("not json") is None and read_metadata('{"channel": "C1"}') is None


def test_the_approve_with_changes_modal():
    options = [{"text": {"type": "plain_text", "text": "db:write"}, "value": "0"},
               {"text": {"type": "plain_text", "text": "deploy:<api>"}, "value": "1"}]  # plain text: shown literally
    assert approve_with_changes_modal(request(), "C0SANDBOX", "1764400000.000100") == {
        "type": "modal",
        "callback_id": "approve_with_changes",
        "private_metadata": METADATA,
        "title": {"type": "plain_text", "text": "Approve with changes"},
        "submit": {"type": "plain_text", "text": "Approve"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            SUMMARY,
            {"type": "input", "block_id": "ttl", "label": {"type": "plain_text", "text": "Access for how many minutes?"},
             "hint": {"type": "plain_text", "text": "At most the 15 min asked for; counted from now."},
             "element": {"type": "number_input", "action_id": "ttl_minutes", "is_decimal_allowed": True,
                         "initial_value": "15", "max_value": "15"}},
            {"type": "input", "block_id": "scopes", "label": {"type": "plain_text", "text": "Scopes to grant"},
             "hint": {"type": "plain_text", "text": "Keep at least one."},
             "element": {"type": "checkboxes", "action_id": "scopes_input", "options": options,
                         "initial_options": options}},
        ],
    }


def test_many_or_long_scopes_use_a_multi_select_with_cut_texts():
    scopes = tuple(f"scope{i}:" + "x" * 100 for i in range(12))
    element = approve_with_changes_modal(request(scopes=scopes), None, None)["blocks"][2]["element"]
    assert element["type"] == "multi_static_select" and len(element["options"]) == 12
    first = element["options"][0]
    assert first == {"text": {"type": "plain_text", "text": ("scope0:" + "x" * 100)[:74] + "…"}, "value": "0"}
    assert element["initial_options"] == element["options"]


def test_a_ttl_in_minutes_converts_back_to_the_same_seconds():
    for seconds in (1, 30, 59, 90, 100, 599, 900, 3600, 86399):
        assert round(float(minutes(seconds)) * 60) == seconds


def _actions(blocks):
    return [b for b in blocks if b["type"] == "actions"]


def test_a_pending_cards_buttons():
    button = {"type": "button", "value": ID}
    assert _actions(card_blocks(request())) == [{"type": "actions", "block_id": "decide", "elements": [
        {**button, "action_id": "approve", "style": "primary", "text": {"type": "plain_text", "text": "Approve"}},
        {**button, "action_id": "approve_with_changes", "text": {"type": "plain_text", "text": "Approve with changes"}},
        {**button, "action_id": "deny", "style": "danger", "text": {"type": "plain_text", "text": "Deny"}},
    ]}]
    # Several approvals needed: no changes (see bot.domain.usecases.decide.check_changes).
    assert [e["action_id"] for e in _actions(card_blocks(request(min_approvals=2)))[0]["elements"]] == ["approve", "deny"]


def test_an_approved_cards_revoke_button_while_the_grant_is_active():
    approved = request(status=RequestStatus.APPROVED, decided_at=AT, decided_by="U0APPROVER")
    assert _actions(card_blocks(approved, grant())) == [{"type": "actions", "block_id": "grant", "elements": [{
        "type": "button", "action_id": "revoke_grant", "style": "danger", "value": ID,
        "text": {"type": "plain_text", "text": "Revoke"},
        "confirm": {"title": {"type": "plain_text", "text": "Revoke this grant?"},
                    "text": {"type": "plain_text", "text": "deploy-bot loses db:write deploy:<api> on production now."},
                    "confirm": {"type": "plain_text", "text": "Revoke"},
                    "deny": {"type": "plain_text", "text": "Cancel"}, "style": "danger"},
    }]}]
    for ended in (GrantStatus.EXPIRED, GrantStatus.REVOKED):
        assert _actions(card_blocks(approved, grant(status=ended, ended_at=AT, ended_by="U0SECOND"))) == []


def test_a_denied_card_shows_who_and_why_escaped():
    denied = request(status=RequestStatus.DENIED, decided_at=AT, decided_by="U0SECOND",
                     denial_reason="no <!channel> & " + "y" * 4000)
    last = card_blocks(denied)[-1]["text"]["text"]
    assert last.startswith(":x: *Denied* by <@U0SECOND> at 2026-11-29 09:00:00 UTC\n*Reason for denial*\n"
                           "no &lt;!channel&gt; &amp; yyy")
    assert len(last) == 3000 and last.endswith("y…")


def test_thread_replies():
    approved = request(status=RequestStatus.APPROVED, decided_at=AT, decided_by="U0APPROVER")
    narrower = grant(scopes=("db:write",), expires_at=AT + timedelta(seconds=300))
    assert decision_text(approved, narrower) == (
        ":white_check_mark: Approved by <@U0APPROVER>. Grant issued: `db:write` on *production* for *deploy-bot* for "
        "5 min, until 2026-11-29 09:05:00 UTC.\n:scissors: Granted with changes: `db:write` for 5 min (asked: "
        "`db:write`, `deploy:&lt;api&gt;` for 15 min)")
    denied = request(status=RequestStatus.DENIED, decided_at=AT, decided_by="U0SECOND", denial_reason="<b>no</b>")
    assert decision_text(denied, None) == ":x: Denied by <@U0SECOND>.\n*Reason for denial*\n&lt;b&gt;no&lt;/b&gt;"
    assert handed_over_text(approved, narrower) == (
        ":key: *deploy-bot* collected its token for `db:write` on *production* (valid until 2026-11-29 09:05:00 UTC).")


def test_refusals_name_who_ended_a_grant():
    from bot.domain.errors import AlreadyDecided, GrantNotActive

    assert refusal_text(GrantNotActive("x", "revoked", "U0SECOND")) == (
        "This grant was already revoked by <@U0SECOND>; nothing changed.")
    assert refusal_text(GrantNotActive("x", "revoked", "deploy-bot")) == (
        "This grant was already revoked by deploy-bot; nothing changed.")
    assert refusal_text(GrantNotActive("Grant 1 has already expired; nothing changed.", "expired", "expiry")) == (
        "Grant 1 has already expired; nothing changed.")
    assert refusal_text(AlreadyDecided("x", "approved", "U0SECOND")) == "This request was already approved by <@U0SECOND>."
