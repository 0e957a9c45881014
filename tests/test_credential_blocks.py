"""The messages about real credentials (pure builders): what they say, and that text from outside — a provider's
name, a database's error message quoting a role — cannot ping anyone or render a link in Slack."""

from __future__ import annotations

from bot.domain.credentials import CredentialState, RevocationStatus
from bot.slack.credential_blocks import (credentials_line, failed_revocations_text, revocation_failed_text,
                                         revoked_text, unavailable_text)

HOSTILE = "role <!channel> <https://evil.example|click> & more"


def test_a_verified_revocation_says_what_was_done():
    text = revoked_text({"provider": "orders-db", "summary": "role gb_1 dropped, 2 sessions ended, 1 table "
                                                              "reassigned to orders_owner"})
    assert text == (":lock: Access removed from *orders-db*: role gb_1 dropped, 2 sessions ended, 1 table reassigned "
                    "to orders_owner. Checked: the account is gone and none of its sessions is open.")


def test_the_failure_alert_names_grant_account_and_error_and_escapes_them():
    text = revocation_failed_text(None, None, "3f2a", {"provider": "orders-db", "username": "gb_1",
                                                       "error": HOSTILE, "attempts": 10})
    assert text.startswith(":rotating_light: *Revocation failed* after 10 attempts: account `gb_1` on *orders-db* "
                           "of grant `3f2a` may still work.")
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text and "<https://evil" not in text
    assert "grantbot credentials reconcile" in text


def test_an_unavailable_provider_at_approval_says_the_request_stays_pending():
    text = unavailable_text({"by_user": "U0APPROVER", "provider": "orders-db", "detail": HOSTILE})
    assert text.startswith(":warning: <@U0APPROVER> approved, but grantbot could not make this grant's credentials")
    assert "stays pending" in text and "<!channel>" not in text


def test_show_and_home_lines():
    states = [CredentialState("orders-db", "postgresql", "gb_1"),
              CredentialState("orders-db", "postgresql", "gb_2", RevocationStatus.VERIFIED, "role gb_2 dropped"),
              CredentialState("orders-db", "postgresql", "gb_3", RevocationStatus.FAILED, HOSTILE, 10)]
    shown = credentials_line(states)
    assert ":key: `gb_1` on *orders-db* (postgresql): active" in shown
    assert ":lock: `gb_2` on *orders-db* (postgresql): revoked and verified: role gb_2 dropped" in shown
    assert ":rotating_light: `gb_3` on *orders-db* (postgresql): *revocation failed*" in shown
    assert "<!channel>" not in shown and credentials_line([]) is None
    home = failed_revocations_text([("3f2a", states[2])])
    assert home.startswith(":rotating_light: *1 credential revocation failed*") and "<!channel>" not in home
    assert failed_revocations_text([]) is None
