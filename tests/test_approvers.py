"""Who may approve, in parts: the policy's approvers and people keys, who triggered a pipeline, and Slack user
group membership (the sandbox's usergroups.users.list and grantbot's cached directory over it)."""

from __future__ import annotations

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.approvals import resolution, who_may_approve
from bot.domain.clock import FakeClock
from bot.domain.errors import ApproverDirectoryUnavailable, PolicyError
from bot.domain.models import Caller, RequestStatus, Tally
from bot.policy_file import parse_policy
from bot.slack.directory import SlackApproverDirectory
from bot.sandbox import SlackSandbox

POLICY = parse_policy("""
people: {octocat: U0OCTO, gitlab-gil: U0GIL}
rules:
  - name: two-of-three
    match: {environment: production}
    decision: require_approval
    approvers: {users: [U0A, U0B, U0OCTO], min_approvals: 2}
  - name: oncall
    match: {environment: staging}
    decision: require_approval
    approvers: {usergroups: [S0ONCALL], min_approvals: 3, deny_on_first_denial: false}
""", "p.yaml")


@pytest.mark.parametrize("text,message", [
    ("rules: [{name: r, decision: require_approval, approvers: {min_approvals: 1}}]",
     "rules[0] (r): decision require_approval needs approvers.users or approvers.usergroups"),
    ("rules: [{name: r, decision: require_approval, approvers: {users: [U1, U2, U1], min_approvals: 3}}]",
     "rules[0] (r): decision require_approval approvers.min_approvals is 3, more than the 2 people in "
     "approvers.users"),
    ("defaults: {approvers: {users: [U1], min_approvals: 2}}\ndefault: require_approval",
     "default: require_approval defaults.approvers.min_approvals is 2, more than the 1 people"),
    ("rules: [{name: r, decision: require_approval, approvers: {users: [U1], min_approvals: 0}}]",
     "rules[0].approvers.min_approvals: Input should be greater than or equal to 1"),
    ("people: [octocat]", "p.yaml:1: people: Input should be a valid dictionary"),
])
def test_approvers_that_could_never_approve_are_refused_with_the_key(text, message):
    with pytest.raises(PolicyError) as refused:
        parse_policy(text, "p.yaml")
    assert message in str(refused.value)


def test_with_usergroups_a_quorum_cannot_be_checked_statically_and_is_accepted():
    approvers = POLICY.approvers_for(POLICY.rules[1])
    assert approvers.usergroups == ["S0ONCALL"] and approvers.min_approvals == 3
    assert approvers.deny_on_first_denial is False


@pytest.mark.parametrize("claims,context,actor,excluded", [
    ({"actor": "octocat"}, {}, "octocat", ("U0OCTO",)),  # GitHub Actions token
    ({"user_login": "gitlab-gil"}, {}, "gitlab-gil", ("U0GIL",)),  # GitLab CI token
    ({}, {"actor": "OctoCat"}, "OctoCat", ("U0OCTO",)),  # claimed by the pipeline; logins ignore case
    ({"actor": "octocat"}, {"actor": "someone-else"}, "octocat", ("U0OCTO",)),  # the verified claim wins
    ({}, {"actor": "stranger"}, "stranger", ()),  # not in people: nobody is excluded
    ({}, {}, None, ()),
])
def test_who_triggered_the_pipeline_is_excluded(claims, context, actor, excluded):
    fields = who_may_approve(POLICY, POLICY.rules[0], Caller("ci", claims), context)
    assert fields["actor"] == actor and fields["excluded_approvers"] == excluded
    assert fields["approvers"] == ("U0A", "U0B", "U0OCTO") and fields["min_approvals"] == 2
    assert fields["approver_groups"] == () and fields["deny_on_first_denial"] is True


class _Request:
    def __init__(self, min_approvals: int, deny_on_first_denial: bool) -> None:
        self.min_approvals, self.deny_on_first_denial = min_approvals, deny_on_first_denial


@pytest.mark.parametrize("min_approvals,first,eligible,approvals,denials,status", [
    (2, True, None, 1, 0, None),
    (2, True, None, 2, 0, RequestStatus.APPROVED),
    (2, True, None, 1, 1, RequestStatus.DENIED),
    (2, False, 3, 0, 1, None),  # two could still approve
    (2, False, 3, 1, 2, RequestStatus.DENIED),  # one could: out of reach
    (2, False, None, 0, 5, None),  # eligible unknown: never denied early
])
def test_resolution(min_approvals, first, eligible, approvals, denials, status):
    request = _Request(min_approvals, first)
    assert resolution(request, eligible, Tally(approvals, denials)) is status


@pytest.fixture
async def slack():
    box = SlackSandbox(bot_token="xoxb-t", signing_secret="s", usergroups={"S0ONCALL": ["U0A", "U0B"]})
    await box.start()
    yield box
    await box.stop()


async def test_the_sandbox_answers_usergroups_users_list_in_slacks_format(slack):
    client = AsyncWebClient(token="xoxb-t", base_url=slack.api_url)
    answer = await client.usergroups_users_list(usergroup="S0ONCALL")
    assert answer.data == {"ok": True, "users": ["U0A", "U0B"]}
    assert {k: slack.calls[-1][k] for k in ("method", "args")} == {"method": "usergroups.users.list", "args": {"usergroup": "S0ONCALL"}}
    with pytest.raises(SlackApiError) as unknown:
        await client.usergroups_users_list(usergroup="S0NOPE")
    assert unknown.value.response["error"] == "no_such_subteam"
    slack.set_usergroup("S0OLD", ["U0C"], disabled=True)
    assert (await client.usergroups_users_list(usergroup="S0OLD"))["users"] == []
    assert (await client.usergroups_users_list(usergroup="S0OLD", include_disabled=True))["users"] == ["U0C"]


async def test_group_membership_is_cached_for_five_minutes_and_kept_through_a_slack_outage(slack):
    clock = FakeClock()
    directory = SlackApproverDirectory(AsyncWebClient(token="xoxb-t", base_url=slack.api_url), clock)
    assert await directory.members("S0ONCALL") == {"U0A", "U0B"}
    slack.set_usergroup("S0ONCALL", ["U0C"])
    clock.advance(299)
    assert await directory.members("S0ONCALL") == {"U0A", "U0B"}
    clock.advance(1)
    assert await directory.members("S0ONCALL") == {"U0C"}
    assert await directory.members("S0NOPE") == frozenset()
    assert len([c for c in slack.calls if c["method"] == "usergroups.users.list"]) == 3

    await slack.stop()  # Slack is unreachable: the last known members still count; an unknown group can't
    clock.advance(300)
    assert await directory.members("S0ONCALL") == {"U0C"}
    with pytest.raises(ApproverDirectoryUnavailable):
        await directory.members("S0OTHER")
