"""Exit codes of ``grantbot request / release / status / verify`` (DESIGN.md "The pipeline client", contract)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    APPROVED = 0  # approved: the token (and credentials) were printed; for verify: the token is valid
    DENIED = 1  # denied (by the policy or a person), an approval narrowed under --require-exact; verify: not valid
    USAGE = 2  # bad usage, bad input, or authentication refused (401): retrying cannot help
    NOT_GRANTED = 3  # still pending when the wait ended, or the request expired or was cancelled
    UNREACHABLE = 4  # grantbot did not answer usefully within --retry-for


EXIT_CODES_HELP = """exit codes:
  0  approved: the token (and any credentials) were written to the chosen output
  1  denied, or narrowed by an approver while --require-exact was given
  2  bad usage, bad input, or authentication refused (a wrong secret or CI token): not retried
  3  still pending when the wait ended (it is then cancelled, unless --leave-pending),
     or the request expired or was cancelled
  4  grantbot unreachable, or answering 502/503/504, for longer than --retry-for
  130, 143  stopped by Ctrl-C or SIGTERM (a pending request is cancelled first)"""


RELEASE_EXIT_CODES_HELP = """exit codes:
  0  the grant is revoked now, or had already ended (revoked or expired): safe to run again
  2  bad usage (no grant named), no such grant for this identity, or authentication refused: not retried
  4  grantbot unreachable, or answering 502/503/504, for longer than --retry-for"""


class Stop(Exception):
    """End the command with ``code`` after printing ``sentence`` (to stderr; it never holds a secret)."""

    def __init__(self, code: ExitCode, sentence: str, view: dict | None = None) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence
        self.view = view  # the request as last seen, for --output json


class Transient(Exception):
    """A failure worth retrying within ``--retry-for`` (e.g. the CI runner's token endpoint answered 503)."""
