"""Fixtures for the sandbox tests: one sandbox on free loopback ports, reset for every test."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from payment_sandbox import Sandbox, SandboxConfig, build_sandbox

TRIPS_CSV = """\
trip_id,rider_id,driver_id,status,distance_km,base_fare,surge_multiplier,total_fare
1,53,58,COMPLETED,37.6,5.00,1.0,99.01
2,22,7,COMPLETED,8.8,5.00,1.5,
3,,,ONGOING,,,,
4,10,11,CANCELLED,2.0,5.00,1.0,
"""
SLOW_SECONDS = 0.3


@pytest.fixture(scope="session")
def trips_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trips CSV with a fare, an empty fare and empty ids."""
    path = tmp_path_factory.mktemp("sandbox") / "trips.csv"
    path.write_text(TRIPS_CSV, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
async def running_sandbox(trips_file: Path) -> AsyncIterator[Sandbox]:
    """One sandbox for the whole session, on ports the OS picks."""
    config = SandboxConfig(
        trip_port=0,
        notification_port=0,
        processor_port=0,
        control_port=0,
        trips_file=trips_file,
        delay_seconds=SLOW_SECONDS,
        log_level=None,
    )
    async with build_sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
async def sandbox(running_sandbox: Sandbox) -> Sandbox:
    """The session's sandbox, every peer up and normal with nothing recorded."""
    await running_sandbox.reset()
    return running_sandbox


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A real HTTP client with a timeout that no healthy sandbox call comes near."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield http
