"""The local Slack sandbox: a development and test tool that stands in for Slack (its Web API, response URLs and
interactivity, and a browser page to click in), not part of grantbot's Slack adapter (``bot/slack/``)."""

from bot.sandbox.server import SlackSandbox

__all__ = ["SlackSandbox"]
