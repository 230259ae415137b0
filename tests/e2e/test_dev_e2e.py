"""`payment-service dev` (what `make run` runs): embedded PostgreSQL, seed, peers and API, stopped
together on Ctrl-C, and able to start again after a crash left PostgreSQL running."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from payment_service.devserver import DEV_STRIPE_API_KEY
from tests.conftest import ROOT
from tests.e2e.conftest import (
    ServiceProcess,
    StartProcess,
    free_port,
    hermetic_env,
    run_cli,
    run_smoke_script,
    wait_until,
)

DEV_STARTUP_SECONDS = 90.0
"""initdb on the first start, then migrate and seed, on a busy 2-core machine."""
DEV_STOP_SECONDS = 20.0


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Every PostgreSQL process (postmaster and backends) serving `data_dir`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.info["cmdline"] or ())
            is_postgres = process.info["name"] == "postgres" or "bin/postgres" in cmdline
            if is_postgres and str(data_dir) in cmdline:
                found.append(process)
    return found


def stop_postgres(data_dir: Path) -> None:
    """Stop whatever PostgreSQL still serves `data_dir`: fast shutdown, then SIGKILL."""
    processes = postgres_processes(data_dir)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGINT)  # the postmaster's "fast" shutdown
    _, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def dev_data_dir() -> Iterator[Path]:
    """EMBEDDED_PG_DIR shared by this module's runs; no PostgreSQL is left on it afterwards.

    Not under pytest's basetemp: every pytest session chmods /tmp/pytest-of-<user> to 0700,
    which locks out the unprivileged user the embedded server runs as when we are root.
    """
    parent = Path(tempfile.mkdtemp(prefix="payment-e2e-dev-")).resolve()
    data_dir = parent / "postgres"
    try:
        yield data_dir
    finally:
        stop_postgres(data_dir)
        shutil.rmtree(parent, ignore_errors=True)


async def start_dev(
    start_process: StartProcess, data_dir: Path, name: str, processor_port: int | None = None
) -> ServiceProcess:
    """`payment-service dev` on free ports, with no DATABASE_URL or DB_* in its environment."""
    port = free_port()
    env = hermetic_env(EMBEDDED_PG_DIR=str(data_dir), LOG_LEVEL="INFO", ACCESS_LOG="false")
    assert not any(name.startswith(("DATABASE_URL", "DB_")) for name in env)
    dev = await start_process(
        "dev",
        "--port",
        str(port),
        "--trip-port",
        str(free_port()),
        "--notification-port",
        str(free_port()),
        "--control-port",
        str(free_port()),
        "--processor-port",
        str(processor_port or free_port()),
        env=env,
        name=name,
        port=port,
    )
    await dev.wait_healthy(DEV_STARTUP_SECONDS)
    return dev


async def charge(dev: ServiceProcess, trip_id: int) -> httpx.Response:
    async with httpx.AsyncClient(base_url=dev.base_url, timeout=15) as client:
        return await client.post(
            "/v1/payments/charge",
            json={"idempotency_key": f"e2e-dev-{trip_id}", "trip_id": trip_id, "method": "CARD"},
        )


# The seed document's examples, verbatim and in order (README "The seed document's examples").
SEED_DOC_CHARGE = {
    "idempotency_key": "seed-charge-trip-1",
    "trip_id": 1,
    "rider_id": 101,
    "driver_id": 201,
    "method": "CARD",
}
SEED_DOC_REFUND = {
    "idempotency_key": "seed-refund-1",
    "amount": 50.00,
    "reason": "Customer complaint",
}


def readme_curl_lines() -> list[str]:
    """The curl lines of README's API section, in order (continuation lines joined)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    api = readme.split("\n## API", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", api, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("curl "):
                lines.append(" ".join(line.split()))
    return lines


async def run_readme_curl_lines(dev: ServiceProcess, cwd: Path) -> None:
    """Each README curl line, verbatim but for the address, answers 2xx (`curl -f`) in order."""
    lines = readme_curl_lines()
    assert any('"trip_id": 1, "rider_id": 101, "driver_id": 201' in line for line in lines)
    assert any("/v1/payments/1/refund" in line and "50.00" in line for line in lines)
    for line in lines:
        command = line.replace("curl ", "curl -fsS ", 1).replace("localhost:8082", dev.base_url)
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", command, cwd=cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, f"{line}\n{output.decode()}"


async def check_seed_document_outcome(client: httpx.AsyncClient) -> None:
    """After README's lines: the seed document's charge paid trip 1 for rider 101 / driver 201,
    its refund took 50.00 from payment 1; the OpenAPI request examples are those two bodies;
    a rider that is not the trip's is still a 422."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert schemas["ChargeRequest"]["examples"] == [SEED_DOC_CHARGE]
    assert schemas["RefundRequest"]["examples"] == [SEED_DOC_REFUND]
    charged = await client.post("/v1/payments/charge", json=SEED_DOC_CHARGE)  # a replay
    assert charged.status_code == 201 and charged.headers["Idempotent-Replayed"] == "true"
    assert charged.json()["payment_id"] == 351
    assert (charged.json()["trip_id"], charged.json()["rider_id"]) == (1, 101)
    assert charged.json()["driver_id"] == 201
    first = (await client.get("/v1/payments/1")).json()
    assert (first["status"], first["refunded_amount"]) == ("PARTIALLY_REFUNDED", 50)
    receipt = await client.get("/v1/payments/1/receipt")
    assert receipt.status_code == 200 and len(receipt.json()["refunds"]) == 1
    wrong_rider = dict(SEED_DOC_CHARGE, idempotency_key="seed-wrong-rider", trip_id=1003)
    mismatch = await client.post("/v1/payments/charge", json=wrong_rider)
    assert mismatch.status_code == 422 and "rider_id 101" in mismatch.json()["detail"]


async def check_signed_notifications(dev: ServiceProcess, payment_id: int) -> None:
    """dev's per-run secret is on both sides: the charge's notification arrives signed and
    verified by the sandbox sink, which has counted no bad signature."""
    found = re.search(r'"notification_service": "(http://[^"]+)"', dev.log_text())
    assert found, "dev did not log the Notification service's URL"
    async with httpx.AsyncClient(base_url=found.group(1), timeout=5) as sink:

        async def delivered() -> bool:
            stats = (await sink.get("/v1/notifications")).json()
            return any(
                entry["body"].get("payment_id") == payment_id for entry in stats["notifications"]
            )

        await wait_until(delivered, 15, "the charge's notification never reached the sink")
        stats = (await sink.get("/v1/notifications")).json()
    assert stats["bad_signatures"] == 0 and stats["signatures_checked"] >= 1
    [entry] = [e for e in stats["notifications"] if e["body"].get("payment_id") == payment_id]
    assert entry["headers"]["webhook-signature"].startswith("v1,")
    assert entry["headers"]["webhook-id"] == entry["body"]["event_id"]


async def stop_with_sigint(dev: ServiceProcess, data_dir: Path) -> None:
    """Ctrl-C: the process exits 0 and takes its PostgreSQL down with it."""
    dev.send_signal(signal.SIGINT)
    code = await dev.wait_exit(DEV_STOP_SECONDS)
    assert code == 0, f"dev exited with {code} after SIGINT:\n{dev.log_tail()}"
    await wait_until(
        lambda: not postgres_processes(data_dir), 5, "PostgreSQL still runs after Ctrl-C"
    )
    assert not (data_dir / "postmaster.pid").exists()


async def test_dev_serves_the_seed_api_and_stops_postgres_on_sigint(
    start_process: StartProcess, dev_data_dir: Path
) -> None:
    """dev with nothing configured: README's curl lines (the seed document's first) succeed in
    order, health UP, seeded payments, a charge, the smoke script passes; Ctrl-C stops
    everything, PostgreSQL included."""
    processor_port = free_port()
    dev = await start_dev(start_process, dev_data_dir, "dev", processor_port)
    assert "embedded PostgreSQL" in dev.log_text()
    assert postgres_processes(dev_data_dir), "no PostgreSQL on the data dir while dev runs"

    await run_readme_curl_lines(dev, dev.cwd)
    async with httpx.AsyncClient(base_url=dev.base_url, timeout=15) as client:
        await check_seed_document_outcome(client)
        health = (await client.get("/health")).json()
        assert health["status"] == "UP" and health["database_status"] == "UP"
        page = await client.get("/v1/payments?status=SUCCESS&limit=10")
        assert page.status_code == 200
        assert len(page.json()["payments"]) == 10
        assert {row["status"] for row in page.json()["payments"]} == {"SUCCESS"}
    charged = await charge(dev, 1101)
    assert charged.status_code == 201, charged.text
    await check_signed_notifications(dev, charged.json()["payment_id"])
    await run_smoke_script(dev)  # `make test-api` against `make run`

    # Everything went through the Stripe adapter to the sandbox processor, and its ledger
    # agrees with ours (README: "payment-service reconcile" against `make run`).
    reconcile_env = hermetic_env(
        EMBEDDED_PG_DIR=str(dev_data_dir),
        STRIPE_API_KEY=DEV_STRIPE_API_KEY,
        STRIPE_API_BASE=f"http://127.0.0.1:{processor_port}",
        LOG_LEVEL="WARNING",
    )
    reconciled = await run_cli("reconcile", env=reconcile_env, cwd=dev.cwd)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "0 differences" in reconciled.stdout
    compared = int(reconciled.stdout.split("compared ")[1].split()[0])
    assert compared >= 2, reconciled.stdout  # the seed document's charge and ours at least

    await stop_with_sigint(dev, dev_data_dir)


async def test_dev_starts_after_a_crash_left_postgres_running(
    start_process: StartProcess, dev_data_dir: Path
) -> None:
    """SIGKILL orphans the embedded PostgreSQL; the next dev on that data dir comes up healthy."""
    crashed = await start_dev(start_process, dev_data_dir, "dev-crashed")
    crashed.kill()
    assert postgres_processes(dev_data_dir), "the crash should leave PostgreSQL running"

    dev = await start_dev(start_process, dev_data_dir, "dev-after-crash")
    charged = await charge(dev, 1102)
    assert charged.status_code == 201, charged.text
    await stop_with_sigint(dev, dev_data_dir)
