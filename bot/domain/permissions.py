"""Who may revoke what, from Slack (``/access revoke``, ``/access revoke-all``).

- A policy *admin* (``admins.users``, or a member of one of ``admins.usergroups``) may revoke any grant, and is the
  only one who may use ``revoke-all`` (an incident kill switch: one person, one decision, many grants).
- An *approver of the request's rule* may revoke that request's grant: the approvers stored with the request when it
  was made (``AccessRequest.approvers`` / ``approver_groups``), as for approving it. The person who triggered the
  pipeline may revoke too: ending access early only takes power away.

Group membership is looked up when the person acts, through the
:class:`~bot.domain.ports.ApproverDirectory` port; it raises ``ApproverDirectoryUnavailable`` when Slack can't say.
"""

from __future__ import annotations

from bot.domain.approvals import is_approver
from bot.domain.models import AccessRequest
from bot.domain.policy import Policy
from bot.domain.ports import ApproverDirectory


async def is_admin(policy: Policy, directory: ApproverDirectory | None, user: str) -> bool:
    """True when ``user`` (a Slack user ID) is listed in the policy's ``admins.users`` or in one of its groups."""
    if user in policy.admins.users:
        return True
    for group in policy.admins.usergroups:
        if directory is not None and user in await directory.members(group):
            return True
    return False


async def may_revoke(policy: Policy, directory: ApproverDirectory | None, request: AccessRequest, user: str) -> bool:
    """True when ``user`` may revoke the grant of ``request``: an approver of its rule, or an admin."""
    return await is_approver(directory, request, user) or await is_admin(policy, directory, user)
