"""compose.yaml: valid per the Compose specification and wired to the real service."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from tests.deploy.deploy_support import (
    ROOT,
    Dockerfile,
    InterpolationError,
    compose_variables,
    disagreements,
    find_tool,
    interpolate,
    service_environment,
)

PAYMENT_SERVICES = ("migrate", "api")


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """depends_on in its long form, whichever form the file uses."""
    value = service.get("depends_on") or {}
    if isinstance(value, list):
        return {name: {"condition": "service_started"} for name in value}
    return value


def test_interpolation_follows_compose_rules() -> None:
    """$$, ${VAR}, ${VAR:-default}, ${VAR-default} and ${VAR:?error} behave as in Compose."""
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("${SET}/${MISSING}", env) == "value/"
    assert interpolate("${EMPTY:-d} ${EMPTY-d} ${MISSING-d}", env) == "d  d"
    assert interpolate("$$HOME ${SET:?needed}", env) == "$HOME value"
    with pytest.raises(InterpolationError, match="EMPTY: set it"):
        interpolate("${EMPTY:?set it}", env)
    assert compose_variables("${A:?x} $B ${C:-d} $$D") == [("A", ":?"), ("B", None), ("C", ":-")]


def test_compose_file_matches_the_compose_specification() -> None:
    """check-jsonschema validates compose.yaml against the vendored Compose spec schema."""
    checker = find_tool("check-jsonschema", "make venv")
    run = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    """Every depends_on target is a service, and profile-less services need none with one."""
    services = compose["services"]
    for name, service in services.items():
        for target in depends_on(service):
            assert target in services, f"{name} depends on unknown service {target}"
            if not service.get("profiles"):
                assert not services[target].get("profiles"), (
                    f"{name} (always on) depends on {target}, which only runs in a profile"
                )


def test_payment_containers_get_only_real_settings(
    compose: dict[str, Any], setting_names: set[str]
) -> None:
    """Every variable compose passes to migrate/api is a field of payment_service Settings."""
    for name in PAYMENT_SERVICES:
        unknown = set(service_environment(compose["services"][name])) - setting_names
        assert not unknown, f"{name} passes variables the service ignores: {sorted(unknown)}"


def test_other_containers_get_only_their_own_variables(compose: dict[str, Any]) -> None:
    """The database gets POSTGRES_* only, Grafana GF_* only, Prometheus nothing."""
    prefixes = {"db": "POSTGRES_", "grafana": "GF_", "prometheus": "-"}
    for name, prefix in prefixes.items():
        env = service_environment(compose["services"][name])
        assert all(key.startswith(prefix) for key in env), f"{name}: {sorted(env)}"


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    """Secrets come from .env (${DB_PASS:?...} required; ${STRIPE_API_KEY:-} and the webhook
    secret empty unless set, so `serve` names what is missing), never literals."""
    for name, service in compose["services"].items():
        for key, value in service_environment(service).items():
            if re.search(r"PASS|SECRET|TOKEN|KEY", key) and not key.endswith("_ROLE"):
                variables = compose_variables(value)
                assert variables in ([("DB_PASS", ":?")], [(key, ":-")]), f"{name}.{key}={value}"
                assert value in (
                    "${DB_PASS:?set DB_PASS in .env (copy .env.example)}",
                    f"${{{key}:-}}",
                )


def test_required_variables_only_in_services_that_always_run(compose: dict[str, Any]) -> None:
    """${VAR:?} in a profile service would break plain `docker compose up` (interpolated first)."""
    for name, service in compose["services"].items():
        if service.get("profiles"):
            text = repr(service)
            assert all(op not in {":?", "?"} for _, op in compose_variables(text)), name


def test_database_is_postgres_15_healthy_persistent_and_on_host_5433(
    compose: dict[str, Any],
) -> None:
    """db: postgres:15, pg_isready healthcheck, named volume, container 5432 on host 5433."""
    db = compose["services"]["db"]
    assert db["image"].split(":")[1].split("-")[0] == "15"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volume = db["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "the data volume is not a named volume"
    (port,) = db["ports"]
    assert interpolate(port, {}).endswith(":5433:5432")


def test_migrate_runs_once_and_the_api_waits_for_it(compose: dict[str, Any]) -> None:
    """migrate runs `payment-service migrate && payment-service seed`; api starts after it."""
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"
    assert " ".join(migrate["entrypoint"] + migrate["command"]) == (
        "/bin/sh -c payment-service migrate && payment-service seed"
    )
    api = services["api"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["db"]["condition"] == "service_healthy"


def test_api_runs_the_image_command_on_8082(
    compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    """api keeps the image's ENTRYPOINT and CMD, listens on 8082 and publishes it."""
    api = compose["services"]["api"]
    assert "entrypoint" not in api
    assert api.get("command", dockerfile.exec_form("CMD")) == dockerfile.exec_form("CMD")
    env = service_environment(api)
    assert env["SERVICE_PORT"] == "8082" and env["SERVICE_HOST"] == "0.0.0.0"
    assert env["DB_HOST"] == "db" and env["DB_PORT"] == "5432"
    (port,) = api["ports"]
    assert interpolate(port, {}) == "8082:8082"
    assert [i.value for i in dockerfile.final("EXPOSE")] == ["8082"]


def test_service_healthy_conditions_have_a_healthcheck(
    compose: dict[str, Any], dockerfile: Dockerfile
) -> None:
    """Waiting on service_healthy needs a healthcheck: the service's own or the image's."""
    services = compose["services"]
    for service in services.values():
        for target, condition in depends_on(service).items():
            if condition["condition"] == "service_healthy":
                other = services[target]
                own = other.get("healthcheck", {})
                assert not own.get("disable"), f"{target} has its healthcheck disabled"
                assert own.get("test") or ("build" in other and dockerfile.final("HEALTHCHECK"))


def test_payment_image_is_the_project_version(
    compose: dict[str, Any], project_version: str
) -> None:
    """migrate and api build this repository into payment-service:<pyproject version>."""
    for name in PAYMENT_SERVICES:
        service = compose["services"][name]
        assert service["image"] == f"payment-service:{project_version}"
        assert service["build"]["context"] == "."


def test_api_joins_the_platform_network(compose: dict[str, Any]) -> None:
    """The API is on the network named ride-hailing-network that peers join."""
    assert compose["networks"]["ride-hailing-network"]["name"] == "ride-hailing-network"
    assert "ride-hailing-network" in compose["services"]["api"]["networks"]
    assert "ride-hailing-network" not in compose["services"]["db"]["networks"]


def test_monitoring_profile_mounts_existing_files(compose: dict[str, Any]) -> None:
    """Prometheus and Grafana run in the monitoring profile with the repository's configs."""
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    prometheus = compose["services"]["prometheus"]
    config = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mount = next(v for v in prometheus["volumes"] if v.startswith("./monitoring/prometheus:"))
    assert config.split("=")[1] == mount.split(":")[1] + "/prometheus.yml"


def test_defaults_agree_with_env_example(compose: dict[str, Any]) -> None:
    """${VAR:-default} in compose.yaml says what .env.example says (peer URLs: same port)."""
    defaults = {}
    for service in compose["services"].values():
        for value in service_environment(service).values():
            for match in re.finditer(r"\$\{(\w+):-([^}]*)\}", value):
                defaults[match[1]] = match[2]
    assert {"DB_NAME", "DB_USER", "TRIP_SERVICE_URL"} <= set(defaults)
    assert disagreements(defaults, "compose.yaml") == []
