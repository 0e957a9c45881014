"""The Kubernetes manifests validate against the Kubernetes schemas, and carry what running grantbot needs."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from bot.policy_file import parse_policy

MANIFESTS = sorted((Path(__file__).parents[1] / "manifests" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.31"


def documents():
    return {path.name: doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc}


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_each_manifest_is_valid_kubernetes(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, desired_version=KUBERNETES_VERSION, strict=True)


def test_the_deployment_runs_two_hardened_replicas_with_probes_and_secret_references():
    deployment = documents()["deployment.yaml"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    for secret in ("GRANTBOT_DATABASE_URL", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "GRANTBOT_INTROSPECTION_CLIENTS"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "grantbot"
        assert "value" not in env[secret]
    keys = next(v for v in spec["volumes"] if v["name"] == "keys")
    assert keys["secret"]["secretName"] == "grantbot"


def test_the_configmap_holds_a_valid_policy_whose_identities_get_their_secrets():
    docs = documents()
    policy = parse_policy(docs["configmap-policy.yaml"]["data"]["policy.yaml"], "configmap-policy.yaml")
    env = {e["name"] for e in docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {identity.secret_env for identity in policy.identities} <= env


def test_the_migration_job_runs_grantbot_migrate():
    job = documents()["migration-job.yaml"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_the_service_reaches_the_deployments_pods_on_their_http_port():
    docs = documents()
    service, deployment = docs["service.yaml"], docs["deployment.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] and service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()
    # The job migrates the same database the pods use, with the same image.
    job = docs["migration-job.yaml"]["spec"]["template"]["spec"]["containers"][0]
    pod = deployment["spec"]["template"]["spec"]["containers"][0]
    assert job["image"] == pod["image"]
    database = {e["name"]: e for e in job["env"]}["GRANTBOT_DATABASE_URL"]
    assert database == {e["name"]: e for e in pod["env"]}["GRANTBOT_DATABASE_URL"]
