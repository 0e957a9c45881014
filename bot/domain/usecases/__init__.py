"""Use cases, one module each: what a caller, an approver or the scheduler can make grantbot do."""

from bot.domain.usecases.cancel import cancel_request
from bot.domain.usecases.daily_summary import queue_due_summary
from bot.domain.usecases.decide import approve, check_changes, deny, may_decide
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.expire import expire_due
from bot.domain.usecases.introspect import introspect
from bot.domain.usecases.issue_credentials import reset_credentials
from bot.domain.usecases.look_up import find_access, list_active_grants, list_pending
from bot.domain.usecases.read_request import RequestView, read_request
from bot.domain.usecases.reissue import ReissueView, reissue
from bot.domain.usecases.reconcile_credentials import reconcile_credentials
from bot.domain.usecases.request_access import record_signature, request_access
from bot.domain.usecases.revoke import revoke_by_person, revoke_own_grant, revoke_token
from bot.domain.usecases.revoke_all import preview_revoke_all, revoke_all
from bot.domain.usecases.revoke_credentials import revoke_due_credentials
from bot.domain.usecases.ssh_authority import ssh_ca_public_key, ssh_revocation_list

__all__ = [
    "Deps",
    "ReissueView",
    "RequestView",
    "approve",
    "cancel_request",
    "check_changes",
    "deny",
    "expire_due",
    "find_access",
    "introspect",
    "list_active_grants",
    "list_pending",
    "may_decide",
    "preview_revoke_all",
    "queue_due_summary",
    "read_request",
    "reissue",
    "reconcile_credentials",
    "record_signature",
    "request_access",
    "reset_credentials",
    "revoke_all",
    "ssh_ca_public_key",
    "ssh_revocation_list",
    "revoke_by_person",
    "revoke_due_credentials",
    "revoke_own_grant",
    "revoke_token",
]
