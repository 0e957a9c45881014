"""Use cases, one module each: what a caller, an approver or the scheduler can make grantbot do."""

from bot.domain.usecases.daily_summary import queue_due_summary
from bot.domain.usecases.decide import approve, deny
from bot.domain.usecases.deps import Deps
from bot.domain.usecases.expire import expire_due
from bot.domain.usecases.introspect import introspect
from bot.domain.usecases.read_request import RequestView, read_request
from bot.domain.usecases.request_access import request_access
from bot.domain.usecases.revoke import revoke_own_grant
from bot.domain.usecases.revoke_token import revoke_token

__all__ = [
    "Deps",
    "RequestView",
    "approve",
    "deny",
    "expire_due",
    "introspect",
    "queue_due_summary",
    "read_request",
    "request_access",
    "revoke_own_grant",
    "revoke_token",
]
