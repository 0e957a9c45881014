"""Golden tests: the exact Block Kit of every ``/access`` answer (``bot.slack.command_blocks``), so a change in what
people see is a visible diff; plus the limits and escaping that keep user-controlled text from breaking out."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.domain.models import AccessRequest, Decision, Grant, GrantStatus, RequestStatus
from bot.slack import command_blocks as cb

NOW = datetime(2025, 11, 29, 12, 0, tzinfo=UTC)
REQUEST_ID = "11111111-1111-4111-8111-111111111111"
GRANT_ID = "22222222-2222-4222-8222-222222222222"
REQUEST = AccessRequest(
    id=REQUEST_ID, identity="deploy-bot", environment="production", scopes=("db:write",), ttl_seconds=900,
    audience="https://api.acme.example", reason="hotfix <!channel>", context={"run": "42"},
    status=RequestStatus.APPROVED, decision=Decision.REQUIRE_APPROVAL, rule="prod-write",
    decision_reason="rule prod-write requires approval", approvers=("U0APPROVER",), channel="C0SANDBOX",
    created_at=NOW - timedelta(minutes=5), expires_at=NOW + timedelta(minutes=25),
    decided_at=NOW - timedelta(minutes=2), decided_by="U0APPROVER",
    decision_reasons=("no-admin: scopes db:write do not match *:admin", "prod-write: matches"),
)
GRANT = Grant(id=GRANT_ID, request_id=REQUEST_ID, identity="deploy-bot", scopes=("db:write",),
              audience="https://api.acme.example", jti="jti-1", issued_at=NOW - timedelta(minutes=2),
              expires_at=NOW + timedelta(minutes=13))


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def plain(text: str) -> dict:
    return {"type": "plain_text", "text": text}


def test_help():
    assert cb.help_message("Unknown subcommand <x>.") == {
        "response_type": "ephemeral",
        "text": "Unknown subcommand &lt;x&gt;. /access help",
        "blocks": [
            section(":warning: Unknown subcommand &lt;x&gt;."),
            section("*/access*: see and end grantbot's access grants\n"
                    "• `/access list`: active grants, soonest to expire first\n"
                    "• `/access pending`: requests waiting for approvers\n"
                    "• `/access show &lt;id&gt;`: one request and its grant\n"
                    "• `/access explain &lt;id&gt;`: why the policy decided what it did, rule by rule\n"
                    "• `/access revoke &lt;id&gt; [reason]`: end a grant now (approvers of its rule, or admins)\n"
                    "• `/access revoke-all &lt;identity glob&gt; [reason]`: incident kill switch: end every active "
                    "grant of matching identities, after a confirmation (admins only)\n"
                    "• `/access help`: this text"),
            context("Anyone in the workspace can use list, pending, show and explain: they show what the approval "
                    "cards show, never a token. An &lt;id&gt; is a request id (as on the cards) or a grant id, or its "
                    "first 8 characters as lists show them."),
        ],
    }
    assert cb.help_message()["blocks"] == cb.help_message("x")["blocks"][1:]


def test_notice():
    assert cb.notice_message("Grant x was <already> revoked.", ":no_entry_sign:") == {
        "response_type": "ephemeral",
        "text": "Grant x was &lt;already&gt; revoked.",
        "blocks": [section(":no_entry_sign: Grant x was &lt;already&gt; revoked.")],
    }


def test_grants_list():
    assert cb.grants_message([(REQUEST, GRANT)], 3, NOW) == {
        "response_type": "ephemeral",
        "text": "3 active grants",
        "blocks": [
            section("*3 active grants*"),
            section(f"*deploy-bot* · `db:write` on *production* · expires in 13 min (2025-11-29 12:13:00 UTC)\n"
                    f"Grant `{GRANT_ID[:8]}` · request `{REQUEST_ID[:8]}` · rule prod-write · approved by <@U0APPROVER>"),
            context("Showing the 1 that expire soonest of 3."),
        ],
    }
    assert cb.grants_message([], 0, NOW) == {
        "response_type": "ephemeral", "text": "No active grants.", "blocks": [section("No active grants.")]}


def test_pending_list():
    pending = replace(REQUEST, status=RequestStatus.PENDING, decided_at=None, decided_by=None)
    assert cb.pending_message([pending], 1, NOW) == {
        "response_type": "ephemeral",
        "text": "1 pending request",
        "blocks": [
            section("*1 pending request*"),
            section(f"*deploy-bot* asks for `db:write` on *production* for 15 min\n"
                    f"Request `{REQUEST_ID[:8]}` · rule prod-write · waiting 5 min · times out at 2025-11-29 12:25:00 UTC"),
        ],
    }
    assert cb.pending_message([], 0, NOW)["blocks"] == [section("No pending requests.")]


def test_show():
    assert cb.show_message(REQUEST, GRANT, NOW) == {
        "response_type": "ephemeral",
        "text": f"Request {REQUEST_ID}: approved",
        "blocks": [
            section(f"*Request* `{REQUEST_ID}`\n"
                    "*deploy-bot* asks for `db:write` on *production* for 15 min\n"
                    "*Status:* approved by <@U0APPROVER> at 2025-11-29 11:58:00 UTC · *rule:* prod-write · "
                    "*audience:* https://api.acme.example\n"
                    "*Asked at:* 2025-11-29 11:55:00 UTC\n"
                    "*Reason:* hotfix &lt;!channel&gt;"),
            section(f"Grant `{GRANT_ID}`: *active*, expires in 13 min (2025-11-29 12:13:00 UTC)"),
            context("run: 42"),
        ],
    }


@pytest.mark.parametrize("grant, line", [
    (None, "No grant."),
    (replace(GRANT, status=GrantStatus.REVOKED, ended_by="U0ADMIN", ended_at=NOW),
     f"Grant `{GRANT_ID}`: *revoked* by U0ADMIN at 2025-11-29 12:00:00 UTC"),
    (replace(GRANT, status=GrantStatus.EXPIRED), f"Grant `{GRANT_ID}`: *expired* at 2025-11-29 12:13:00 UTC"),
    # Past expires_at but not yet swept: already expired for whoever looks.
    (replace(GRANT, expires_at=NOW), f"Grant `{GRANT_ID}`: *expired* at 2025-11-29 12:00:00 UTC"),
])
def test_show_says_how_the_grant_stands(grant, line):
    assert cb.show_message(REQUEST, grant, NOW)["blocks"][1] == section(line)


def test_explain():
    assert cb.explain_message(REQUEST) == {
        "response_type": "ephemeral",
        "text": f"Request {REQUEST_ID}: require_approval by rule prod-write",
        "blocks": [
            section(f"*Request* `{REQUEST_ID}`: the policy said *require_approval* by rule *prod-write*\n"
                    "rule prod-write requires approval"),
            section("*Rule by rule:*\n• no-admin: scopes db:write do not match *:admin\n• prod-write: matches"),
        ],
    }
    assert cb.explain_message(replace(REQUEST, decision_reasons=()))["blocks"][1] == section(
        "*Rule by rule:*\nNo explanation was stored.")


def test_revoked():
    assert cb.revoked_message(REQUEST, GRANT, "leak <@U1>") == {
        "response_type": "ephemeral",
        "text": f"Revoked grant {GRANT_ID}",
        "blocks": [section(f":no_entry: Revoked grant `{GRANT_ID}`: `db:write` on *production* for *deploy-bot*. "
                           "Its token stops working now.\n*Reason:* leak &lt;@U1&gt;")],
    }


def test_revoke_all_confirmation():
    assert cb.revoke_all_confirm_message("deploy-*", [GRANT], "incident", NOW, NOW) == {
        "response_type": "ephemeral",
        "text": "1 active grant matches deploy-*: confirm to revoke",
        "blocks": [
            section(":rotating_light: *1 active grant* of identities matching `deploy-*`:\n"
                    f"• *deploy-bot* · `db:write` · grant `{GRANT_ID[:8]}` · expires in 13 min\n"
                    "*Reason:* incident"),
            {"type": "actions", "block_id": "revoke_all", "elements": [{
                "type": "button",
                "action_id": "access_revoke_all",
                "style": "danger",
                "text": plain("Revoke all 1"),
                "value": '{"glob":"deploy-*","reason":"incident","as_of":"2025-11-29T12:00:00+00:00"}',
                "confirm": {
                    "title": plain("Revoke 1 grant?"),
                    "text": plain("Every active grant of identities matching deploy-* issued until 2025-11-29 "
                                  "12:00:00 UTC ends now; their tokens stop working."),
                    "confirm": plain("Revoke all 1"),
                    "deny": plain("Cancel"),
                    "style": "danger",
                },
            }]},
            context("Grants issued after this list was made are not included; run revoke-all again for them."),
        ],
    }


def test_revoke_all_confirmation_names_ten_grants_and_counts_the_rest():
    grants = [replace(GRANT, id=f"{i:08d}-2222-4222-8222-222222222222") for i in range(12)]
    message = cb.revoke_all_confirm_message("*", grants, None, NOW, NOW)
    listed = message["blocks"][0]["text"]["text"]
    assert listed.count("• ") == 10 and listed.endswith("\n…and 2 more")
    assert message["blocks"][1]["elements"][0]["text"] == plain("Revoke all 12")


def test_revoke_all_with_nothing_to_revoke_has_no_button():
    assert cb.revoke_all_confirm_message("ci-<*>", [], None, NOW, NOW) == {
        "response_type": "ephemeral",
        "text": "No active grant matches ci-&lt;*&gt;.",
        "blocks": [section("No active grant of an identity matching `ci-&lt;*&gt;`; nothing to revoke.")],
    }


def test_revoke_all_done():
    assert cb.revoke_all_done_message("deploy-*", 2, "U0ADMIN", "incident") == {
        "response_type": "ephemeral",
        "text": "Revoked 2 grants matching deploy-*",
        "blocks": [section(":no_entry: <@U0ADMIN> revoked 2 grants of identities matching `deploy-*`.\n"
                           "*Reason:* incident")],
    }
    assert cb.revoke_all_done_message("deploy-*", 0, "U0ADMIN", None)["blocks"] == [section(
        "Nothing to revoke: no grant of identities matching `deploy-*` from that list is still active.")]


def test_the_button_value_round_trips_and_fits_slack_s_limit():
    assert cb.parse_revoke_all_value(cb.revoke_all_value("deploy-*", "incident 42", NOW)) == (
        "deploy-*", "incident 42", NOW)
    assert cb.parse_revoke_all_value(cb.revoke_all_value("deploy-*", None, NOW)) == ("deploy-*", None, NOW)
    long = cb.revoke_all_value("x" * 200, "é" * 3000, NOW)
    assert len(long) <= 2000
    glob, reason, as_of = cb.parse_revoke_all_value(long)
    assert glob == "x" * 200 and reason and set(reason) == {"é"} and as_of == NOW


@pytest.mark.parametrize("value", [None, "", "nope", "[]", json.dumps({"glob": "a"}),
                                   json.dumps({"glob": 1, "as_of": NOW.isoformat()}),
                                   json.dumps({"glob": "a", "as_of": "2025-11-29T12:00:00"})])  # naive time
def test_a_value_grantbot_did_not_write_is_refused(value):
    assert cb.parse_revoke_all_value(value) is None


def test_long_user_text_is_cut_to_slack_s_limits():
    huge = replace(REQUEST, identity="i" * 5000, reason="r" * 5000, decision_reasons=("x" * 4000,))
    for message in (cb.show_message(huge, GRANT, NOW), cb.explain_message(huge),
                    cb.grants_message([(huge, replace(GRANT, identity="i" * 5000))], 1, NOW),
                    cb.revoke_all_confirm_message("*", [replace(GRANT, identity="i" * 5000)], "r" * 5000, NOW, NOW)):
        assert len(message["text"]) <= 3000
        for block in message["blocks"]:
            texts = [block["text"]["text"]] if "text" in block else [e["text"] for e in block.get("elements", [])
                                                                    if isinstance(e.get("text"), str)]
            assert all(len(t) <= 3000 for t in texts)
