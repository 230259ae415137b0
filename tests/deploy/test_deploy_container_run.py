"""The container, simulated without Docker: what `docker compose up` would run, run here.

The build stage's `uv sync --frozen` lines run on exactly the files it copies out of
the .dockerignore'd context, installing uv.lock's pins and the project (no dev
extras, no pip) into a fresh virtual environment; the runtime stage's files are laid out in a
working directory like the image's /app, and then compose's `migrate` and `api`
commands run with the image's ENV plus compose's environment against a real
PostgreSQL. A broken entrypoint, a missing runtime dependency, a file the image
forgets or a settings name compose gets wrong fails here, not at a user's
`docker compose up`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.deploy.deploy_support import (
    ROOT,
    Dockerfile,
    interpolate,
    load_dockerignore,
    service_environment,
)

pytestmark = pytest.mark.e2e

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SEED_ROWS = sum(1 for _ in (ROOT / "seeds" / "rhfd_payments.csv").open()) - 1


@dataclass
class Image:
    """The simulated image: its virtual environment and its working directory."""

    venv: Path
    workdir: Path
    env: dict[str, str]


def docker_copy(context: Path, sources: list[str], dest: str, workdir: Path) -> None:
    """COPY semantics for relative destinations: folders copy their contents."""
    assert not dest.startswith("/"), f"COPY to absolute {dest}: extend this simulation"
    target = workdir / dest
    into_folder = dest.endswith("/") or dest in {".", "./"} or len(sources) > 1
    for source in sources:
        path = context / source
        assert path.exists(), f"COPY {source}: not in the build context"
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            destination = target / path.name if into_folder else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def lay_out_stage(dockerfile: Dockerfile, stage: int, context: Path, root: Path) -> Path:
    """The stage's WORKDIR under root, holding what its COPYs from the context bring."""
    workdir = root / dockerfile.workdir(stage).lstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    for flags, sources, dest in dockerfile.copies(stage):
        if "from" not in flags:
            docker_copy(context, sources, dest, workdir)
    return workdir


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def image_env(dockerfile: Dockerfile, venv: Path) -> dict[str, str]:
    """The runtime stage's ENV, its /opt/venv being our virtual environment."""
    env = {}
    for key, value in dockerfile.env(dockerfile.final_stage).items():
        value = value.replace("/opt/venv", str(venv))
        env[key] = value.replace("${PATH}", SYSTEM_PATH).replace("$PATH", SYSTEM_PATH)
    return env


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory, dockerfile: Dockerfile) -> Image:
    """Build stage → wheel → fresh venv; runtime stage → working directory."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    for rel in load_dockerignore().context_files(ROOT):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)

    build_dir = lay_out_stage(dockerfile, 0, context, base / "build-stage")
    venv = base / "venv"
    # The build stage's `uv sync` lines, run as written with the stage's UV_* ENV: the
    # dev environment's uv (the version uv.lock pins) stands in for the one the stage
    # pip-installs, and the developer's uv cache for the network (UV_NO_CACHE is left out).
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), "uv is missing from the dev environment: make venv"
    build_env = {
        key: value.replace("/opt/venv", str(venv))
        for key, value in dockerfile.env(0).items()
        if key.startswith("UV_") and key != "UV_NO_CACHE"
    }
    syncs = [i.value for i in dockerfile.in_stage(0, "RUN") if i.value.startswith("uv sync")]
    assert syncs, "the build stage does not install from uv.lock"
    for line in syncs:
        env = {**os.environ, **build_env, "UV_PYTHON": sys.executable}
        run([str(uv), *shlex.split(line)[1:]], cwd=build_dir, env=env, timeout=600)
    assert not (venv / "bin" / "pip").exists(), "the image's environment carries pip"

    workdir = lay_out_stage(dockerfile, dockerfile.final_stage, context, base / "runtime")
    return Image(venv=venv, workdir=workdir, env=image_env(dockerfile, venv))


@pytest.fixture
async def deploy_database(database_url: str) -> AsyncIterator[URL]:
    """An empty database of its own on the test server (the migrate service fills it)."""
    url = make_url(database_url)
    name = f"payment_deploy_{uuid.uuid4().hex[:10]}"
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name)
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_env(compose: dict[str, Any], service: str, database: URL, port: int) -> dict[str, str]:
    """What compose gives the service, with `.env` naming the test database.

    Only the container-network address differs: DB_HOST/DB_PORT ("db":5432 inside
    compose) point at the test server, or DATABASE_URL does for a unix-socket server.
    """
    dotenv = {
        "DB_NAME": database.database or "",
        "DB_USER": database.username or "postgres",
        "DB_PASS": database.password or "unused-with-trust-auth",
        "STRIPE_API_KEY": "sk_test_made_up_for_the_compose_test",
    }
    declared = service_environment(compose["services"][service])
    env = {key: interpolate(value, dotenv) for key, value in declared.items()}
    if database.host:
        env["DB_HOST"], env["DB_PORT"] = database.host, str(database.port or 5432)
    else:
        env["DATABASE_URL"] = database.render_as_string(hide_password=False)
    if "SERVICE_PORT" in env:
        env["SERVICE_PORT"] = str(port)
    return env


def container_command(compose: dict[str, Any], service: str, dockerfile: Dockerfile) -> list[str]:
    """The process compose starts: its entrypoint/command, else the image's."""
    spec = compose["services"][service]
    entrypoint = spec.get("entrypoint", dockerfile.exec_form("ENTRYPOINT"))
    command = spec.get("command", dockerfile.exec_form("CMD"))
    return [*entrypoint, *command]


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def workdir_untouched(image: Image) -> Iterator[None]:
    """The image's /app is read-only in Kubernetes: nothing may be written there."""
    before = snapshot(image.workdir)
    yield
    assert snapshot(image.workdir) == before, "the service wrote into its working directory"


def test_compose_migrate_then_api_serve_healthy(
    image: Image,
    compose: dict[str, Any],
    dockerfile: Dockerfile,
    deploy_database: URL,
    workdir_untouched: None,
    tmp_path: Path,
) -> None:
    """migrate+seed exits 0; the API answers /health 200 with the DB UP, passes the
    image HEALTHCHECK, serves the seed, logs JSON lines, writes nothing to disk and
    stops cleanly on SIGTERM."""
    port = free_port()
    # The image's user has no home it can write to (read-only root filesystem).
    (tmp_path / "home").mkdir()
    home = {"HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}

    migrate_env = {**home, **image.env, **compose_env(compose, "migrate", deploy_database, port)}
    migrate = subprocess.run(
        container_command(compose, "migrate", dockerfile),
        cwd=image.workdir, env=migrate_env, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert migrate.returncode == 0, f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}"
    assert f"{SEED_ROWS} rows" in migrate.stdout + migrate.stderr
    # AUTH_REQUIRED defaults to true: the operator's first key, made with the image's CLI.
    created = subprocess.run(
        ["/bin/sh", "-c", "payment-service api-keys create --name deploy-check --scope read"],
        cwd=image.workdir, env=migrate_env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert created.returncode == 0, f"api-keys create failed:\n{created.stderr}"
    api_key = created.stdout.splitlines()[-1]

    api_env = {**home, **image.env, **compose_env(compose, "api", deploy_database, port)}
    log_path = tmp_path / "api.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            container_command(compose, "api", dockerfile),
            cwd=image.workdir, env=api_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            health = wait_for_health(f"{base}/health", process, log_path)
            assert health.status_code == 200, health.text
            body = health.json()
            assert body["status"] == "UP" and body["database_status"] == "UP", body

            with httpx.Client(base_url=base, timeout=5) as http:
                assert http.get("/health/live").status_code == 200
                assert http.get("/health/ready").status_code == 200
                assert http.get("/metrics").status_code == 200
                anonymous = http.get("/v1/payments", params={"limit": 1})
                assert anonymous.status_code == 401
                payments = http.get(
                    "/v1/payments",
                    params={"limit": 1},
                    headers={"Authorization": f"Bearer {api_key}"},
                )
                assert payments.status_code == 200
                assert payments.json()["total"] == SEED_ROWS

            _, probe = dockerfile.healthcheck()
            check = subprocess.run(
                probe, env=api_env, cwd=image.workdir, capture_output=True, text=True,
                timeout=10, check=False,
            )  # fmt: skip
            assert check.returncode == 0, f"HEALTHCHECK failed: {check.stderr}"

            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    # uvicorn re-raises the signal once shut down, so a clean stop may end "by SIGTERM"
    # (Docker reports 143, which it treats as a normal stop).
    assert code in {0, -signal.SIGTERM}, f"exit code {code} after SIGTERM:\n{output[-3000:]}"
    assert "Application shutdown complete" in output, "no graceful shutdown on SIGTERM"
    for line in filter(None, output.splitlines()):
        assert isinstance(json.loads(line), dict), f"not a JSON log line: {line!r}"
    assert not any((tmp_path / "home").iterdir()), "the service wrote into HOME"


def wait_for_health(url: str, process: subprocess.Popen[str], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the API exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=3)
        except httpx.TransportError:
            time.sleep(0.25)
    pytest.fail(f"no answer on {url} within 60 s:\n{log.read_text()[-3000:]}")


def test_image_environment_has_no_developer_leaks(image: Image) -> None:
    """The run above sees only the image's ENV and compose's variables, like a container."""
    assert not (image.workdir / ".env").exists()
    assert not {"DATABASE_URL", "DB_PASS"} & set(image.env)
    assert os.path.exists(image.venv / "bin" / "payment-service")
    assert not (image.venv / "bin" / "pytest").exists(), "dev extras leaked into the image"


def test_image_environment_has_no_sandbox(image: Image) -> None:
    """The sandbox extra (payment-service-sandbox) is for development and tests only."""
    installed = {p.name for p in image.venv.glob("lib/python*/site-packages/*")}
    strays = sorted(name for name in installed if "sandbox" in name)
    assert not strays, f"the sandbox is in the image: {strays}"
    assert "payment_service" in installed
