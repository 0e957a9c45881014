"""The alert rules and the Grafana dashboard in manifests/monitoring/ name only metrics grantbot exports: after one
request, every one of them is in /metrics (a renamed metric would leave an alert that never fires)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).parents[1] / "manifests" / "monitoring"
METRIC = re.compile(r"\bgrantbot_[a-z0-9_]+")
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum")}


def readme_metrics() -> set[str]:
    """The metrics the README's ``GET /metrics`` row names (operators build their own alerts from it)."""
    readme = (MONITORING.parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `GET /metrics` |"))
    return set(METRIC.findall(row))


def alert_rules() -> list[dict]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exported(text: str) -> set[str]:
    """Every series name the exposition can carry: from each ``# TYPE name kind`` (a counter's name ends in
    ``_total``), the name, and a histogram's with its suffixes (a labelled metric has no sample before its first
    observation, but its TYPE line is there)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def test_the_alert_rules_are_well_formed_and_cover_what_on_call_needs():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {"GrantbotDatabaseDown", "GrantbotSweepLagging",
                                                 "GrantbotRevocationsFailing", "GrantbotOutboxStuck"}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("page", "warning") and rule["annotations"]["summary"]
        assert METRIC.search(rule["expr"]), rule


async def test_every_metric_the_alerts_and_the_dashboard_name_exists_after_one_request(grantbot):
    status, _ = await grantbot.api.request_access({"environment": "staging", "scopes": ["db:read"]})
    assert status == 201
    async with grantbot.api.http.get(grantbot.base_url + "/metrics") as resp:
        assert resp.status == 200
        names = exported(await resp.text())
    named = {name for expr in [r["expr"] for r in alert_rules()] + dashboard_expressions()
             for name in METRIC.findall(expr)}
    assert named and named <= names, sorted(named - names)
    documented = readme_metrics()
    missing = {name for name in documented if name not in names and name + "_count" not in names}  # histograms
    assert len(documented) > 15 and not missing, sorted(missing)
