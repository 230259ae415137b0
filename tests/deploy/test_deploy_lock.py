"""uv.lock: committed, current with pyproject.toml, and `make test` says so when not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.deploy_support import ROOT

VENV = Path(sys.executable).parent.parent


def make_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    return subprocess.run(
        [shutil.which("make") or "/usr/bin/make", "--no-print-directory", *args, f"VENV={VENV}"],
        cwd=folder, env={**env, "UV_OFFLINE": "1"}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def copy_project(tmp_path: Path) -> Path:
    """What `uv lock` reads: the root project and the workspace member sandbox/."""
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md", "sandbox/pyproject.toml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def test_lock_is_current_and_pins_the_bootstrapped_uv(tmp_path: Path) -> None:
    """`make check-lock` passes offline; the lock names PyPI only and pins uv (what
    `make venv` pip-installs before syncing)."""
    checked = make_in(copy_project(tmp_path), "check-lock")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    registries = {p["source"].get("registry") for p in lock["package"] if "registry" in p["source"]}
    assert registries == {"https://pypi.org/simple"}, registries
    assert any(p["name"] == "uv" for p in lock["package"])


def test_an_unlocked_dependency_stops_make_test_with_one_line(tmp_path: Path) -> None:
    """A dependency added to pyproject.toml without `make lock` fails `make test` first."""
    folder = copy_project(tmp_path)
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text()
    # A package the project does not depend on (orjson, the earlier choice, now is one).
    pyproject.write_text(text.replace('"stripe>=12",', '"stripe>=12",\n    "msgspec>=0.18",', 1))
    result = make_in(folder, "test")
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        "error: uv.lock is out of date with pyproject.toml: run 'make lock' and commit uv.lock"
    )
    assert "pytest" not in result.stdout


def test_dockerfile_installs_the_uv_the_lock_pins() -> None:
    """The image's build stage pip-installs uv at the version uv.lock pins, as make venv does."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (pinned,) = [p["version"] for p in lock["package"] if p["name"] == "uv"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG UV_VERSION={pinned}\n" in dockerfile, f"set ARG UV_VERSION={pinned}"
