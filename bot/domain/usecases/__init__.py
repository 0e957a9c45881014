"""Use cases, one module each: what a caller, an approver or the scheduler can make grantbot do."""

from bot.domain.usecases.daily_summary import queue_due_summary
from bot.domain.usecases.decide import approve, check_changes, deny, may_decide
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.expire import expire_due
from bot.domain.usecases.introspect import introspect
from bot.domain.usecases.read_request import RequestView, read_request
from bot.domain.usecases.request_access import request_access
from bot.domain.usecases.revoke import revoke_as_approver, revoke_own_grant
from bot.domain.usecases.revoke_token import revoke_token

__all__ = [
    "Deps",
    "RequestView",
    "approve",
    "check_changes",
    "deny",
    "expire_due",
    "introspect",
    "may_decide",
    "queue_due_summary",
    "read_request",
    "request_access",
    "revoke_as_approver",
    "revoke_own_grant",
    "revoke_token",
]
