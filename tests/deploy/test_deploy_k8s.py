"""k8s/: renders with kustomize, every object is valid Kubernetes, and the parts fit."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import KUSTOMIZATIONS
from tests.deploy.deploy_support import ROOT, Dockerfile, disagreements

# The oldest Kubernetes we claim (CronJob timeZone is GA since 1.27) and the newest
# kubernetes-validate knows.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
Rendered = dict[str, list[dict[str, Any]]]
# Secrets an overlay leaves to `make k8s-deploy` (created from its git-ignored secret.env).
EXTERNAL_SECRETS = {"overlays/minikube": {"payment-service-db"}}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, pod spec) of every Deployment, StatefulSet, Job and CronJob."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            yield f"CronJob/{doc['metadata']['name']}", template["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def payment_pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for owner, spec in pod_specs(docs):
        if any(
            c["image"].rsplit(":", 1)[0].endswith("payment-service") for c in spec["containers"]
        ):
            yield owner, spec


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(
    rendered: Rendered, name: str, version: str
) -> None:
    """kubernetes-validate --strict accepts every object (unknown fields are errors)."""
    assert rendered[name], f"k8s/{name} rendered nothing"
    problems = []
    for doc in rendered[name]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.absolute_path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")
    assert not problems, f"k8s/{name} invalid for Kubernetes {version}:\n" + "\n".join(problems)


def test_base_has_every_object_the_service_needs(rendered: Rendered) -> None:
    """Namespace, config, secret, workload, service, jobs, HPA, PDB, policy, account."""
    kinds = sorted(doc["kind"] for doc in rendered["base"])
    assert kinds == sorted([
        "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "Job",
        "CronJob", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
    ])  # fmt: skip
    namespaces = {doc["metadata"].get("namespace") for doc in rendered["base"]} - {None}
    assert namespaces == {one(rendered["base"], "Namespace")["metadata"]["name"]}


def test_secret_template_carries_no_value(rendered: Rendered) -> None:
    """The base Secret has no data; overlays' secret.env.example files hold no password."""
    secret = one(rendered["base"], "Secret")
    assert not secret.get("data") and not secret.get("stringData")
    for example in (ROOT / "k8s").glob("overlays/*/secret.env.example"):
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                assert value == "", f"{example.relative_to(ROOT)}: {key} has a value"


def test_deployment_rolls_out_without_losing_capacity(rendered: Rendered) -> None:
    """At least 2 replicas, maxUnavailable 0, spread across zones and nodes."""
    deployment = one(rendered["base"], "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    keys = {c["topologyKey"] for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_probes_hit_the_health_endpoints_on_the_service_port(
    rendered: Rendered, dockerfile: Dockerfile
) -> None:
    """startup/liveness probe /health/live, readiness /health/ready, on the exposed 8082."""
    pod = one(rendered["base"], "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(dockerfile.final("EXPOSE")[0].value)}
    paths = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/health/live", "http"),
        "livenessProbe": ("/health/live", "http"),
        "readinessProbe": ("/health/ready", "http"),
    }
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_containers_run_the_image_cli(rendered: Rendered, dockerfile: Dockerfile) -> None:
    """API runs the image CMD; the Job migrates, adds the first API key, seeds; the CronJob
    purges keys."""
    from payment_service.cli import app

    base = rendered["base"]
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    commands |= {group.name for group in app.registered_groups}
    for _, spec in payment_pod_specs(base):
        for container in containers(spec):
            assert "command" not in container, "keep the image ENTRYPOINT (payment-service)"
            assert container["args"][0] in commands, container["args"]
    api = one(base, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert api["args"] == dockerfile.exec_form("CMD")
    job = one(base, "Job")["spec"]["template"]["spec"]
    assert [c["args"][:2] for c in containers(job)] == [
        ["migrate"],
        ["api-keys", "create"],
        ["seed"],
    ]
    assert job["initContainers"][1]["args"][-3:] == [
        "--key-from-env",
        "BOOTSTRAP_API_KEY",
        "--skip-if-unset",
    ]
    cron = one(base, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["containers"][0]["args"] == ["purge-idempotency-keys"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_pod_is_locked_down(rendered: Rendered, name: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, no token,
    and requests/limits on every container (the namespace enforces "restricted")."""
    for owner, spec in pod_specs(rendered[name]):
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert spec["automountServiceAccountToken"] is False, owner
        for container in containers(spec):
            where = f"{owner} {container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where


def test_pods_run_as_the_image_user(rendered: Rendered, dockerfile: Dockerfile) -> None:
    """runAsUser of payment-service pods is the Dockerfile's USER uid."""
    uid = int(dockerfile.final("USER")[-1].value.split(":")[0])
    for owner, spec in payment_pod_specs(rendered["base"]):
        assert spec["securityContext"]["runAsUser"] == uid, owner
        assert spec["serviceAccountName"] == "payment-service", owner
    account = one(rendered["base"], "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_env_names_are_real_settings_and_references_resolve(
    rendered: Rendered, name: str, setting_names: set[str]
) -> None:
    """Payment pods get only Settings names; every ConfigMap/Secret key they use exists."""
    docs = rendered[name]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
    secrets |= EXTERNAL_SECRETS.get(name, set())
    payment_owners = {owner for owner, _ in payment_pod_specs(docs)}
    for owner, spec in pod_specs(docs):
        payment = owner in payment_owners
        for container in containers(spec):
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in configmaps, f"{owner}: no ConfigMap {ref}"
                names |= set(configmaps[ref])
            if payment:
                assert names <= setting_names, f"{owner}: not settings {names - setting_names}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    cm = ref["configMapKeyRef"]
                    assert cm["key"] in configmaps[cm["name"]], f"{owner}: {cm}"
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets, f"{owner}: {ref}"


def test_config_points_at_the_service_port_and_peers(rendered: Rendered) -> None:
    """The ConfigMap's port is the container port; peers use the ports the policy opens."""
    data = one(rendered["base"], "ConfigMap")["data"]
    assert data["SERVICE_PORT"] == "8082" and data["SERVICE_HOST"] == "0.0.0.0"
    assert data["DB_PORT"] == "5432"
    assert data["TRIP_SERVICE_URL"].endswith(":8081")
    assert data["NOTIFICATION_SERVICE_URL"].endswith(":8084")


def test_service_hpa_and_pdb_select_the_api_pods(rendered: Rendered) -> None:
    """Service → port http; HPA scales the Deployment from 2; PDB keeps one pod."""
    base = rendered["base"]
    deployment = one(base, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(base, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8082, "targetPort": "http", "protocol": "TCP"}
    ]
    hpa = one(base, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    pdb = one(base, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] == 1


def test_network_policy_allows_only_what_the_service_uses(rendered: Rendered) -> None:
    """Ingress TCP 8082; egress DNS 53, PostgreSQL 5432, Trip 8081, Notification 8084, and
    HTTPS to the payment processor outside the cluster (public addresses only)."""
    policy = one(rendered["base"], "NetworkPolicy", "payment-service")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = [(p["protocol"], p["port"]) for r in policy["ingress"] for p in r["ports"]]
    assert ingress_ports == [("TCP", 8082)]
    egress_ports = sorted((p["protocol"], p["port"]) for r in policy["egress"] for p in r["ports"])
    assert egress_ports == sorted(
        [("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 8081), ("TCP", 8084), ("TCP", 443)]
    )
    processor = policy["egress"][4]["to"][0]["ipBlock"]
    assert processor["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(processor["except"])
    assert all(rule.get("to") for rule in policy["egress"]), "an egress rule allows anywhere"
    pods = one(rendered["base"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pods.items()


def test_minikube_database_matches_the_policy_and_the_config(rendered: Rendered) -> None:
    """The in-cluster PostgreSQL is named DB_HOST, listens on DB_PORT, and is the DB rule."""
    docs = rendered["overlays/minikube"]
    data = one(docs, "ConfigMap")["data"]
    service = one(docs, "Service", data["DB_HOST"])
    assert service["spec"]["ports"][0]["port"] == int(data["DB_PORT"])
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:15"
    db_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    policy = one(docs, "NetworkPolicy", "payment-service")["spec"]
    (db_rule,) = [r for r in policy["egress"] if r["ports"][0]["port"] == 5432]
    assert db_rule["to"][0]["podSelector"]["matchLabels"].items() <= db_labels.items()
    assert not by_kind(docs, "Secret"), "make k8s-deploy creates the Secret from secret.env"
    refs = [
        env["valueFrom"]["secretKeyRef"]
        for env in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert refs == [{"name": "payment-service-db", "key": "DB_PASS"}]


def test_minikube_overlay_renders_on_a_fresh_clone(kubectl: str, tmp_path: Path) -> None:
    """`kubectl kustomize k8s/overlays/minikube` works with no secret.env anywhere."""
    fresh = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", fresh, ignore=shutil.ignore_patterns("secret.env"))
    assert not list(fresh.rglob("secret.env"))

    run = subprocess.run(
        [kubectl, "kustomize", str(fresh / "overlays" / "minikube")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(run.stdout) if doc}
    assert {"Deployment", "StatefulSet", "Job"} <= kinds and "Secret" not in kinds


def test_k8s_deploy_writes_secret_env_and_creates_the_secret_first(tmp_path: Path) -> None:
    """On a fresh clone, `make k8s-deploy` writes a random git-ignored secret.env, says so,
    and creates the Secret from it before `kubectl apply -k` (kubectl faked, calls logged)."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("secret.env"))
    log = tmp_path / "kubectl.log"
    fake = tmp_path / "kubectl"
    fake.write_text(f'#!/bin/sh\necho "kubectl $*" >> {log}\n')
    fake.chmod(0o755)

    run = subprocess.run(
        ["make", "--no-print-directory", "k8s-deploy", f"KUBECTL={fake}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    secret_env = tmp_path / "k8s" / "overlays" / "minikube" / "secret.env"
    assert "wrote k8s/overlays/minikube/secret.env with a random DB_PASS" in run.stdout
    assert oct(secret_env.stat().st_mode & 0o777) == "0o600"
    key, _, value = secret_env.read_text().strip().partition("=")
    assert key == "DB_PASS" and len(value) >= 24
    calls = log.read_text().splitlines()
    create = next(i for i, c in enumerate(calls) if "create secret generic payment-service-db" in c)
    assert "--from-env-file=k8s/overlays/minikube/secret.env" in calls[create]
    assert create < calls.index("kubectl apply -k k8s/overlays/minikube")


def test_production_overlay_points_at_a_managed_database(rendered: Rendered) -> None:
    """production: external DB_HOST, an ipBlock for the database, a registry image."""
    docs = rendered["overlays/production"]
    assert not by_kind(docs, "StatefulSet")
    data = one(docs, "ConfigMap")["data"]
    assert data["DB_HOST"] != "postgres"
    policy = one(docs, "NetworkPolicy", "payment-service")["spec"]
    (db_rule,) = [r for r in policy["egress"] if r["ports"][0]["port"] == 5432]
    assert "ipBlock" in db_rule["to"][0]
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "/" in image.split(":")[0]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_images_are_the_project_version(
    rendered: Rendered, name: str, project_version: str
) -> None:
    """Every payment-service container runs the tag of the pyproject version."""
    found = 0
    for _, spec in payment_pod_specs(rendered[name]):
        for container in containers(spec):
            assert container["image"].endswith(f"payment-service:{project_version}")
            found += 1
    assert found >= 4


def test_config_agrees_with_env_example(rendered: Rendered) -> None:
    """The base ConfigMap says what .env.example says (peer URLs: same port)."""
    data = one(rendered["base"], "ConfigMap")["data"]
    assert disagreements(data, "k8s/base/config.env") == []
