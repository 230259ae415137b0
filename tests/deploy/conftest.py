"""Fixtures of the deploy tests: parsed deploy files and rendered Kubernetes manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_support import ROOT, Dockerfile, find_tool, load_dockerfile

KUSTOMIZATIONS = ("base", "overlays/minikube", "overlays/production")


@pytest.fixture(scope="session")
def setting_names() -> set[str]:
    """Environment names the service reads: the upper-cased fields of Settings."""
    from payment_service.settings import Settings

    return {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return load_dockerfile()


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="session")
def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl", "make ci-tools")


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k8s/ copied aside, with each overlay's git-ignored secret.env filled with a dummy."""
    target = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "k8s", target, ignore=shutil.ignore_patterns("secret.env"))
    for example in target.glob("overlays/*/secret.env.example"):
        example.with_name("secret.env").write_text("DB_PASS=rendering-only-not-a-secret\n")
    return target


@pytest.fixture(scope="session")
def rendered(kubectl: str, k8s_copy: Path) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization rendered by `kubectl kustomize`, as lists of objects."""
    result = {}
    for name in KUSTOMIZATIONS:
        run = subprocess.run(
            [kubectl, "kustomize", str(k8s_copy / name)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 0, f"kubectl kustomize k8s/{name} failed:\n{run.stderr}"
        result[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return result
