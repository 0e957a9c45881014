"""Who may approve a request, and when enough of them have spoken (policy ``approvers`` and ``people``).

Rules, fixed when the request is made (:func:`who_may_approve`) and applied on every click (:func:`resolution`):

- An *approver* is a Slack user listed in ``approvers.users`` or a member of one of ``approvers.usergroups``
  (membership is looked up when they click, through the :class:`~bot.domain.ports.ApproverDirectory` port),
  and is not *excluded*.
- *Excluded*: the person who triggered the pipeline. Their CI login (the ``actor`` claim of a GitHub Actions
  token, ``user_login`` of a GitLab one, else the request's ``context.actor`` as the pipeline claims it) is mapped
  to Slack user IDs by the policy's ``people:`` map (logins compared case-insensitively, as GitHub and GitLab do).
- Each person's verdict counts once. The request is **approved** when ``min_approvals`` distinct people approved.
- It is **denied** by the first denial when ``deny_on_first_denial`` (the default). Otherwise it is denied as soon
  as approval has become impossible: when the approvers who have not denied are fewer than ``min_approvals``,
  i.e. ``eligible - denials < min_approvals``, where ``eligible`` counts the distinct approvers (listed users and
  current group members, minus the excluded) at the time of the denial. Until then a denial is recorded and shown.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.domain.models import AccessRequest, Caller, RequestStatus, Tally
from bot.domain.policy import Policy, Rule
from bot.domain.ports import ApproverDirectory

# CI token claims naming the person who triggered the run: GitHub Actions ``actor``, GitLab CI ``user_login``.
ACTOR_CLAIMS = ("actor", "user_login")


def actor_of(caller: Caller, context: Mapping[str, str]) -> str | None:
    """The CI login of who triggered the pipeline: from the caller's verified CI token claims first, else the
    request body's ``context.actor`` (claimed by the pipeline, not verified); None when neither names one."""
    for claim in ACTOR_CLAIMS:
        value = caller.claims.get(claim)
        if isinstance(value, str) and value:
            return value
    return context.get("actor") or None


def slack_ids_of(people: Mapping[str, str], login: str | None) -> tuple[str, ...]:
    """The Slack user IDs the policy's ``people:`` map gives for a CI login (case-insensitive); () for None."""
    if not login:
        return ()
    wanted = login.casefold()
    return tuple(sorted({slack for name, slack in people.items() if name.casefold() == wanted}))


def who_may_approve(policy: Policy, rule: Rule | None, caller: Caller, context: Mapping[str, str]) -> dict:
    """The approval fields of a new :class:`AccessRequest` for ``rule`` (None: the policy's ``default``):
    ``approvers``, ``approver_groups``, ``excluded_approvers``, ``min_approvals``, ``deny_on_first_denial`` and
    ``actor``, as keyword arguments."""
    approvers = policy.approvers_for(rule)
    actor = actor_of(caller, context)
    return {
        "approvers": tuple(dict.fromkeys(approvers.users)),
        "approver_groups": tuple(dict.fromkeys(approvers.usergroups)),
        "excluded_approvers": slack_ids_of(policy.people, actor),
        "min_approvals": approvers.min_approvals,
        "deny_on_first_denial": approvers.deny_on_first_denial,
        "actor": actor,
    }


async def is_approver(directory: ApproverDirectory | None, request: AccessRequest, user: str) -> bool:
    """True when ``user`` (a Slack user ID) is listed or in one of the request's groups; exclusion is separate."""
    if user in request.approvers:
        return True
    for group in request.approver_groups:
        if directory is not None and user in await directory.members(group):
            return True
    return False


async def eligible_count(directory: ApproverDirectory | None, request: AccessRequest) -> int:
    """How many distinct people may decide ``request`` now: listed users and group members, minus the excluded.

    Raises what the directory raises (``ApproverDirectoryUnavailable``)."""
    people = set(request.approvers)
    for group in request.approver_groups:
        if directory is not None:
            people |= await directory.members(group)
    return len(people - set(request.excluded_approvers))


def resolution(request: AccessRequest, eligible: int | None, tally: Tally) -> RequestStatus | None:
    """What ``tally`` (the verdicts so far, including the one just given) makes of ``request``: APPROVED, DENIED,
    or None (still pending). ``eligible`` is :func:`eligible_count`, needed only when ``deny_on_first_denial`` is
    false (None there means: deny only when no approval can come any more is unknowable, so never deny early)."""
    if tally.approvals >= request.min_approvals:
        return RequestStatus.APPROVED
    if tally.denials:
        if request.deny_on_first_denial:
            return RequestStatus.DENIED
        if eligible is not None and eligible - tally.denials < request.min_approvals:
            return RequestStatus.DENIED
    return None


def waiting_for(request: AccessRequest, tally: Tally) -> str:
    """``"1 more approval"`` / ``"2 more approvals"``: what a pending request still needs."""
    missing = max(request.min_approvals - tally.approvals, 0)
    return f"{missing} more approval{'' if missing == 1 else 's'}"
