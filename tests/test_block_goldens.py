"""Golden tests: the exact output of every Block Kit builder (bot/slack/blocks.py, summary_blocks.py,
home_blocks.py, digest_message.py) for representative requests, built directly from domain objects at a fixed time.

The expected outputs are the JSON files in tests/goldens/, one per case, read by people in review. After a
deliberate change of a builder, rewrite them with ``GRANTBOT_UPDATE_GOLDENS=1 pytest tests/test_block_goldens.py``
and read the diff. Beside the files, a few assertions say in words what a reader should find in them.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.domain.errors import AlreadyDecided, NotAnApprover
from bot.domain.models import (
    AccessRequest,
    Approval,
    Decision,
    Grant,
    GrantStatus,
    RequestStatus,
    Verdict,
)
from bot.domain.usecases.home import Decided, HomeView, PendingItem
from bot.slack import blocks, digest_message, home_blocks, summary_blocks

GOLDENS = Path(__file__).parent / "goldens"
T0 = datetime(2025, 6, 2, 10, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)
HOSTILE = "<!channel> & <@U0BOSS> <https://evil.example|click me>"
LONG_REASON = "hotfix " + "x" * 4993  # 5,000 characters: past a section's 3,000


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def req(n: int = 1, **changes) -> AccessRequest:
    """A pending request for production db:write asked at T0 (id ends with ``n``), with ``changes``."""
    values = dict(
        id=f"00000000-0000-4000-8000-{n:012d}", identity="deploy-bot", environment="production",
        scopes=("db:write", "deploy:api"), ttl_seconds=900, audience="https://api.acme.example",
        reason="migration 12", context={"commit": "4f1c9e2", "run_url": "https://ci.acme.example/runs/42"},
        status=RequestStatus.PENDING, decision=Decision.REQUIRE_APPROVAL, rule="prod-write",
        decision_reason="rule 'prod-write' requires approval", approvers=("U0APPROVER", "U0SECOND"),
        channel="C0SANDBOX", created_at=T0, expires_at=at(30),
        # As bot.domain.policy.decide words them: a line per rule in file order.
        decision_reasons=("no-admin (deny): no: no requested scope matches ['*:admin']",
                          "staging-read (auto_approve): no: environment 'production' is not one of ['staging']",
                          "prod-write (require_approval): matches"),
    )
    values.update(changes)
    return AccessRequest(**values)


def decided(request: AccessRequest, status: RequestStatus, by: str, minutes: float = 2) -> AccessRequest:
    request.status, request.decided_by, request.decided_at = status, by, at(minutes)
    return request


def grant(request: AccessRequest, status: GrantStatus = GrantStatus.ACTIVE, **changes) -> Grant:
    values = dict(id=f"11111111-0000-4000-8000-{request.id[-12:]}", request_id=request.id,
                  identity=request.identity, scopes=request.scopes, audience=request.audience,
                  jti="jti-" + request.id[-4:], issued_at=request.decided_at or T0,
                  expires_at=(request.decided_at or T0) + timedelta(seconds=request.ttl_seconds), status=status)
    values.update(changes)
    return Grant(**values)


def vote(user: str, verdict: Verdict = Verdict.APPROVE, minutes: float = 1) -> Approval:
    return Approval(user, verdict, at(minutes))


def _approved_active():
    r = decided(req(), RequestStatus.APPROVED, "U0APPROVER")
    return blocks.card_blocks(r, grant(r), [vote("U0APPROVER", minutes=2)])


def _approved_by_two_grant_expired():
    r = decided(req(min_approvals=2), RequestStatus.APPROVED, "U0SECOND")
    return blocks.card_blocks(r, grant(r, GrantStatus.EXPIRED, ended_at=at(17), ended_by="expiry"),
                              [vote("U0APPROVER"), vote("U0SECOND", minutes=2)])


def _approved_grant_revoked():
    r = decided(req(), RequestStatus.APPROVED, "U0APPROVER")
    return blocks.card_blocks(r, grant(r, GrantStatus.REVOKED, ended_at=at(4), ended_by="deploy-bot"),
                              [vote("U0APPROVER", minutes=2)])


def _hostile():
    return req(identity="bot<!here>", environment="prod <!channel>", scopes=("db:write", "<!everyone>"),
               reason=LONG_REASON + HOSTILE, context={"actor": HOSTILE, "k&y": "<b>"}, rule="r<1>")


def _busy_home() -> HomeView:
    quorum = req(2, min_approvals=2, excluded_approvers=("U0OCTO",), reason=HOSTILE, created_at=at(-10))
    voted = req(3, min_approvals=2, scopes=("deploy:api",), reason=None, context={})
    active = decided(req(4), RequestStatus.APPROVED, "U0APPROVER", minutes=1)
    auto = decided(req(5, decision=Decision.AUTO_APPROVE, environment="staging", scopes=("db:read",)),
                   RequestStatus.APPROVED, "policy", minutes=0)
    denied = decided(req(6), RequestStatus.DENIED, "U0SECOND", minutes=3)
    timed_out = decided(req(7), RequestStatus.EXPIRED, "timeout", minutes=4)
    revoked = decided(req(8), RequestStatus.APPROVED, "U0SECOND", minutes=0.5)
    return HomeView(
        user="U0APPROVER", now=NOW,
        pending=(PendingItem(quorum, (vote("U0SECOND"),)),
                 PendingItem(voted, (vote("U0APPROVER"),), Verdict.APPROVE)),
        grants=((grant(active), "production"), (grant(auto), "staging")), grants_total=2,
        recent=(Decided(timed_out), Decided(denied, None, (vote("U0SECOND", Verdict.DENY, 3),)),
                Decided(active, grant(active), (vote("U0APPROVER"),)),
                Decided(revoked, grant(revoked, GrantStatus.REVOKED, ended_by="deploy-bot"), ())),
        notice=blocks.refusal_text(AlreadyDecided("already", "approved", "U0SECOND")),
    )


def _overflowing_home() -> HomeView:
    pending = tuple(PendingItem(req(100 + n, reason=f"batch {n}")) for n in range(40))
    active = decided(req(200), RequestStatus.APPROVED, "U0APPROVER", minutes=1)
    return HomeView(user="U0SECOND", now=NOW, pending=pending, pending_unscanned=460,
                    grants=((grant(active), "production"),) * 20, grants_total=31, groups_unknown=True)


BUSY_DAY = {
    "since": "2025-06-01T07:00:00Z", "until": "2025-06-02T07:00:00Z", "requests": 42, "auto_approved": 30,
    "approved": 7, "denied": 3, "timed_out": 2, "grants_expired": 35, "grants_revoked": 1, "active_now": 4,
    "expiring_soon": [{"identity": "deploy-bot", "scopes": ["db:write", "<!channel>"],
                       "expires_at": "2025-06-02T07:40:00Z"}],
    "busiest": [{"identity": "deploy-bot", "requests": 30}, {"identity": "github:repo:acme/<api>", "requests": 12}],
}
QUIET_DAY = {**BUSY_DAY, "requests": 0, "auto_approved": 0, "approved": 0, "denied": 0, "timed_out": 0,
             "grants_expired": 0, "grants_revoked": 0, "active_now": 0, "expiring_soon": [], "busiest": []}

def _ended(n: int, **changes) -> dict:
    """One grant of a digest (the shape ``OutboxChannels.claim_notices`` writes), ended ``n`` seconds after T0."""
    return {"identity": "deploy-bot", "scopes": ["db:read"], "environment": "staging", "rule": "staging-read",
            "ended": "expired", "at": (T0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"), **changes}


FEW_EXPIRED = {"count": 3, "expired": 3, "revoked": 0, "since": "2025-06-02T10:00:00Z",
               "until": "2025-06-02T10:00:02Z", "grants": [_ended(0), _ended(1), _ended(2)]}
MANY_ENDED = {"count": 2411, "expired": 2409, "revoked": 2, "since": "2025-06-02T10:00:00Z",
              "until": "2025-06-02T10:00:59.5Z",
              "grants": [_ended(0, identity=HOSTILE, scopes=["db:read", "<!channel>"]),
                         _ended(1, ended="revoked", by="U0SECOND", reason=HOSTILE),
                         _ended(2, ended="revoked", by="deploy-bot"),
                         *(_ended(3 + n) for n in range(17))]}

# Every builder's output for each representative case: name -> a function producing it.
CASES = {
    "card_pending": lambda: blocks.card_blocks(req()),
    "card_pending_1_of_2_with_excluded": lambda: blocks.card_blocks(
        req(min_approvals=2, excluded_approvers=("U0OCTO",), actor="octocat"), None, [vote("U0SECOND")]),
    "card_pending_denials_below_quorum": lambda: blocks.card_blocks(
        req(min_approvals=2, deny_on_first_denial=False, approvers=("U0A", "U0B", "U0C")), None,
        [vote("U0A"), vote("U0B", Verdict.DENY, 2)]),
    "card_approved_grant_active": _approved_active,
    "card_approved_by_two_grant_expired": _approved_by_two_grant_expired,
    "card_approved_grant_revoked": _approved_grant_revoked,
    "card_denied": lambda: blocks.card_blocks(decided(req(), RequestStatus.DENIED, "U0SECOND"), None,
                                              [vote("U0SECOND", Verdict.DENY, 2)]),
    "card_expired": lambda: blocks.card_blocks(decided(req(), RequestStatus.EXPIRED, "timeout", 30)),
    "card_hostile_and_long": lambda: blocks.card_blocks(_hostile()),
    "card_text_pending": lambda: blocks.card_text(req()),
    "card_text_hostile": lambda: blocks.card_text(_hostile()),
    "card_text_grant_active": lambda: blocks.card_text(
        (r := decided(req(), RequestStatus.APPROVED, "U0APPROVER")), grant(r)),
    "card_text_grant_expired": lambda: blocks.card_text(
        (r := decided(req(), RequestStatus.APPROVED, "U0APPROVER")), grant(r, GrantStatus.EXPIRED)),
    "card_text_grant_revoked": lambda: blocks.card_text(
        (r := decided(req(), RequestStatus.APPROVED, "U0APPROVER")), grant(r, GrantStatus.REVOKED)),
    "grant_ended_expired": lambda: blocks.grant_ended_text(
        (r := decided(req(), RequestStatus.APPROVED, "U0APPROVER")), grant(r, GrantStatus.EXPIRED)),
    "grant_ended_revoked_hostile": lambda: blocks.grant_ended_text(
        (r := decided(_hostile(), RequestStatus.APPROVED, "U0APPROVER")),
        grant(r, GrantStatus.REVOKED, ended_by=HOSTILE)),
    "grant_ended_auto_approved": lambda: blocks.grant_ended_text(
        (r := decided(req(decision=Decision.AUTO_APPROVE, rule="staging-read"), RequestStatus.APPROVED, "policy")),
        grant(r, GrantStatus.EXPIRED)),
    "refusal_already_decided": lambda: blocks.refusal_text(
        AlreadyDecided("This request was already approved by U0SECOND.", "approved", "U0SECOND")),
    "refusal_not_an_approver": lambda: blocks.refusal_text(
        NotAnApprover("Only the approvers of rule 'prod<1>' can decide this request; you are not one of them.")),
    "reminder_first": lambda: blocks.reminder_text(req(), ()),
    "reminder_2_of_3_with_group_and_excluded": lambda: blocks.reminder_text(
        req(min_approvals=3, approvers=("U0APPROVER", "U0SECOND", "U0OCTO"), approver_groups=("S0ONCALL",),
            excluded_approvers=("U0OCTO",)), [vote("U0SECOND")]),
    "reminder_hostile": lambda: blocks.reminder_text(_hostile(), ()),
    "decision_approved": lambda: blocks.decision_text(
        (r := decided(req(), RequestStatus.APPROVED, "U0APPROVER")), grant(r), [vote("U0APPROVER")]),
    "decision_denied": lambda: blocks.decision_text(
        decided(req(), RequestStatus.DENIED, "U0SECOND"), None, [vote("U0SECOND", Verdict.DENY)]),
    "handed_over": lambda: blocks.handed_over_text(
        (r := decided(req(), RequestStatus.APPROVED, "U0APPROVER")), grant(r)),
    "summary_busy_day": lambda: summary_blocks.summary_blocks(BUSY_DAY, "Europe/Berlin"),
    "summary_quiet_day": lambda: summary_blocks.summary_blocks(QUIET_DAY),
    "summary_text": lambda: summary_blocks.summary_text(BUSY_DAY, "Europe/Berlin"),
    "home_empty": lambda: home_blocks.home_view(HomeView(user="U0OTHER", now=NOW)),
    "home_busy": lambda: home_blocks.home_view(_busy_home()),
    "home_overflowing": lambda: home_blocks.home_view(_overflowing_home()),
    "digest_few_expired": lambda: digest_message.digest_text(FEW_EXPIRED),
    "digest_many_ended_hostile": lambda: digest_message.digest_text(MANY_ENDED),
    "digest_many_long_lines": lambda: digest_message.digest_text(
        {**MANY_ENDED, "grants": [_ended(n, identity="deploy-" + "x" * 400) for n in range(20)]}),
}


def golden(name: str):
    path = GOLDENS / f"{name}.json"
    output = CASES[name]()
    if os.environ.get("GRANTBOT_UPDATE_GOLDENS"):
        GOLDENS.mkdir(exist_ok=True)
        path.write_text(json.dumps(output, indent=1, ensure_ascii=False) + "\n")
    return output, json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_builder_output_matches_its_golden(name):
    output, expected = golden(name)
    assert output == expected


def test_no_golden_is_left_without_a_case():
    assert {p.stem for p in GOLDENS.glob("*.json")} == set(CASES)


def texts(node) -> list[str]:
    """Every ``text`` string in a Block Kit structure."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "text" and isinstance(v, str)] + \
            [t for k, v in node.items() if not (k == "text" and isinstance(v, str)) for t in texts(v)]
    if isinstance(node, list):
        return [t for item in node for t in texts(item)]
    return []


def mrkdwn_texts(node) -> list[str]:
    """The texts Slack parses for mentions and links (``mrkdwn``; ``plain_text`` is shown as typed)."""
    if isinstance(node, dict):
        own = [node["text"]] if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str) else []
        return own + [t for v in node.values() for t in mrkdwn_texts(v)]
    if isinstance(node, list):
        return [t for item in node for t in mrkdwn_texts(item)]
    return []


def test_what_the_goldens_show_hostile_text_is_escaped_and_long_text_cut_with_an_ellipsis():
    card = CASES["card_hostile_and_long"]()
    everything = "\n".join(mrkdwn_texts(card) + [CASES["card_text_hostile"](), CASES["grant_ended_revoked_hostile"]()])
    assert "<!" not in everything and "<@U0BOSS>" not in everything and "<https://evil" not in everything
    assert "&lt;!channel&gt;" in everything and "&lt;!everyone&gt;" in everything
    assert "<!" not in "\n".join(mrkdwn_texts(CASES["home_busy"]()))
    reason = next(t for t in texts(card) if t.startswith("*Reason*"))
    assert len(reason) == blocks.SECTION_TEXT_LIMIT and reason.endswith("…")
    assert all(len(t) <= blocks.SECTION_TEXT_LIMIT for t in texts(card))


def test_what_the_goldens_show_the_home_stays_within_100_blocks_and_says_what_is_left_out():
    view = CASES["home_overflowing"]()
    assert view["type"] == "home" and len(view["blocks"]) <= home_blocks.VIEW_MAX_BLOCKS
    everything = "\n".join(texts(view))
    assert "… and 15 more waiting for you (newest shown first)" in everything and "… and 11 more" in everything
    assert "460 older pending requests were not checked here" in everything
    assert "Waiting for your decision (40)" in everything and "Active grants (31)" in everything
    block_ids = [b["block_id"] for b in view["blocks"] if "block_id" in b]
    assert len(block_ids) == len(set(block_ids)) == 25  # one actions block per request shown, unique ids


def test_what_the_goldens_show_a_digest_counts_every_grant_lists_a_few_and_escapes_them():
    many = CASES["digest_many_ended_hostile"]()
    assert many.startswith(":no_entry: *2411 auto-approved grants ended (2409 expired, 2 revoked)* between "
                           "2025-06-02 10:00:00 and 10:00:59 UTC; access has ended.\n")
    assert many.count("\n• ") == 20 and many.endswith("\n… and 2391 more: `grantbot audit export` has every one.")
    assert "<!" not in many and "<@U0BOSS>" not in many and "revoked by <@U0SECOND>" in many
    few = CASES["digest_few_expired"]()
    assert few.startswith(":hourglass: *3 auto-approved grants expired* between 2025-06-02 10:00:00 and 10:00:02 UTC")
    assert few.count("\n• ") == 3 and "more" not in few
    # Long lines are cut, and fewer listed so that the message stays within 3,000 characters, the rest counted.
    long = CASES["digest_many_long_lines"]()
    assert len(long) <= blocks.SECTION_TEXT_LIMIT and all(len(line) <= 300 for line in long.splitlines())
    listed = long.count("\n• ")
    assert 5 < listed < 20 and long.endswith(f"… and {2411 - listed} more: `grantbot audit export` has every one.")


def test_why_shows_the_deciding_rule_and_what_the_policy_added_and_collapses_the_rest():
    from dataclasses import replace

    from bot.slack.blocks import why_text

    base = req()
    guarded = replace(base, rule="staging-read", decision_reasons=(
        "no-admin (deny): no: no requested scope matches ['*:admin']",
        "staging-read (auto_approve): matches",
        "first use: deploy-bot has never been granted 'db:read'; people decide the first time"))
    assert why_text(guarded) == (
        "*Why:*\n• staging-read (auto_approve): matches\n• first use: deploy-bot has never been granted 'db:read'; "
        "people decide the first time\n_1 other rule did not decide it: `/access explain 00000000` lists them all_")
    nothing = replace(base, rule=None, decision_reasons=(
        "no-admin (deny): no: no requested scope matches ['*:admin']",
        "prod-write (require_approval): no: environment 'dev' is not one of ['production']", "default: deny"))
    assert why_text(nothing) == ("*Why:*\n• default: deny\n_2 other rules did not decide it: `/access explain "
                                 "00000000` lists them all_")
