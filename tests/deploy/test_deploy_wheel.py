"""The wheel is self-contained: installed into a fresh virtual environment, run from an
empty directory, `payment-service` migrates (Alembic scripts in the package), seeds
(seed CSV in the package) and serves a healthy API. No alembic.ini, no checkout.
The sandbox is not in it (its own distribution, the `sandbox` extra): there
`payment-service sandbox` and `dev` print the one-line install hint.

The wheel is built (`uv build`: sdist, then the wheel from the sdist) from a copy of
the tracked files, so a file left out of git or out of the package data fails here.
Dependencies are installed at uv.lock's versions (`uv export` as constraints), from
uv's cache when it has them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from payment_service.cli import SANDBOX_MISSING
from tests.conftest import admin_sql
from tests.deploy.deploy_support import ROOT

pytestmark = pytest.mark.e2e

UV = Path(sys.executable).with_name("uv")
SEED_ROWS = sum(1 for _ in (ROOT / "seeds" / "rhfd_payments.csv").open()) - 1


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def tracked_files() -> list[str]:
    listed = run(["git", "ls-files", "-z"], cwd=ROOT).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).exists()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """payment-service's wheel, built from the tracked files (the root project only)."""
    assert UV.exists(), "uv is missing from the dev environment: make venv"
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)  # symlinks (seeds/*.csv) as their content
    dist = base / "dist"
    run([str(UV), "build", "--quiet", "--out-dir", str(dist), str(source)], timeout=300)
    (built,) = dist.glob("payment_service-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtual environment holding only the wheel and its dependencies."""
    base = tmp_path_factory.mktemp("venv")
    constraints = base / "constraints.txt"
    run(
        [str(UV), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes",
         "--quiet", "--output-file", str(constraints)],
        cwd=ROOT, timeout=60,
    )  # fmt: skip
    venv = base / "venv"
    run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], timeout=60)
    run(
        [str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "--constraints", str(constraints), str(wheel)],
        timeout=600,
    )  # fmt: skip
    return venv / "bin"


@pytest.fixture
async def empty_database(server_url: URL) -> AsyncIterator[URL]:
    name = f"payment_wheel_{uuid.uuid4().hex[:10]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield server_url.set(database=name)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory with an empty HOME: nothing to find but the package."""
    workdir = tmp_path / "elsewhere"
    (workdir / "home").mkdir(parents=True)
    yield workdir


def wheel_env(bin_dir: Path, database: URL, workdir: Path, **extra: str) -> dict[str, str]:
    """PATH with the venv first, the database, no setting of the developer's shell."""
    keep = {"LANG", "LC_ALL", "TZ", "SYSTEMROOT"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env.update(
        PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        HOME=str(workdir / "home"),
        DATABASE_URL=database.set(drivername="postgresql").render_as_string(hide_password=False),
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_installed_wheel_migrates_seeds_and_serves_from_an_empty_directory(
    installed: Path, empty_database: URL, elsewhere: Path, tmp_path: Path
) -> None:
    """migrate and seed exit 0 without alembic.ini or seeds/ around; serve answers
    /health 200 with the database UP and lists the seeded payments."""
    cli = str(installed / "payment-service")
    env = wheel_env(installed, empty_database, elsewhere)
    assert not (installed.parent / "bin" / "pytest").exists(), "dev extras in the venv"

    migrate = run([cli, "migrate"], cwd=elsewhere, env=env, timeout=180)
    seed = run([cli, "seed"], cwd=elsewhere, env=env, timeout=180)
    assert f"{SEED_ROWS} rows" in seed.stdout + seed.stderr, seed.stdout + seed.stderr

    port = free_port()
    serve_env = {
        **env,
        "GATEWAY": "simulator",
        "AUTH_REQUIRED": "false",
        "RATE_LIMIT_ENABLED": "false",
        "SERVICE_HOST": "127.0.0.1",
        "SERVICE_PORT": str(port),
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [cli, "serve"], cwd=elsewhere, env=serve_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            health = wait_for_health(f"http://127.0.0.1:{port}/health", process, log_path)
            assert health.status_code == 200, health.text
            assert health.json()["database_status"] == "UP", health.json()
            payments = httpx.get(
                f"http://127.0.0.1:{port}/v1/payments", params={"limit": 1}, timeout=5
            )
            assert payments.status_code == 200, payments.text
            assert payments.json()["total"] == SEED_ROWS
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["home"], migrate.stdout


def test_wheel_leaves_the_sandbox_to_its_extra(wheel: Path) -> None:
    """No payment_sandbox file (nor the trips CSV it serves) in the wheel; its metadata
    names the `sandbox` extra that brings payment-service-sandbox."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    strays = [n for n in names if "sandbox" in n or n.endswith("rhfd_trips.csv")]
    assert not strays, f"the sandbox is in the wheel: {strays}"
    assert "payment_service/seeds/rhfd_payments.csv" in names
    sandbox = [r for r in requires if r.startswith("payment-service-sandbox")]
    assert sandbox == ['payment-service-sandbox; extra == "sandbox"'], requires


def test_installed_wheel_without_the_extra_names_it_in_one_line(
    installed: Path, elsewhere: Path
) -> None:
    """`payment-service sandbox` and `dev` exit 2 with the install hint, no traceback."""
    env = {key: value for key, value in os.environ.items() if key in {"LANG", "LC_ALL", "TZ"}}
    env.update(PATH=f"{installed}:/usr/local/bin:/usr/bin:/bin", HOME=str(elsewhere / "home"))
    python = str(installed / "python")
    spec = run([python, "-c", "import importlib.util as u; print(u.find_spec('payment_sandbox'))"])
    assert spec.stdout.strip() == "None", "payment_sandbox is installed without the extra"
    for command in ("sandbox", "dev"):
        result = subprocess.run(
            [str(installed / "payment-service"), command],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2, f"{command}: {result.stdout}{result.stderr}"
        assert result.stderr.splitlines() == [f"error: {SANDBOX_MISSING}"], result.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["home"]


def wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=3)
        except httpx.TransportError:
            time.sleep(0.25)
    pytest.fail(f"no answer on {url} within 60 s:\n{log.read_text()[-3000:]}")


def test_migrations_have_one_home() -> None:
    """Every migration lives in src/payment_service/migrations/versions/ (shipped in the
    wheel), and the checkout's alembic.ini points there too: a script under a top-level
    alembic/ (where they lived before 1.0.0's packaging) would never reach an image."""
    from payment_service.migrations import MIGRATIONS, alembic_config

    strays = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "alembic").rglob("*.py"))
    assert not strays, f"move {strays} to src/payment_service/migrations/versions/"
    ini = (ROOT / "alembic.ini").read_text()
    assert "script_location = %(here)s/src/payment_service/migrations\n" in ini
    assert alembic_config().get_main_option("script_location") == str(MIGRATIONS)
    assert sorted(MIGRATIONS.glob("versions/*.py")), "no migrations in the package"
