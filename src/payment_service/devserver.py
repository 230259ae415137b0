"""`payment-service dev`: the API and the sandbox peers in one process, stopped together.

Ctrl-C (or SIGTERM) stops the API, the sandbox servers, and then the CLI stops
the embedded PostgreSQL it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from sqlalchemy import URL

from payment_service.settings import Settings
from payment_service.signals import stop_on_signals

log = logging.getLogger(__name__)


class DevServerError(RuntimeError):
    """The dev environment could not start."""


class _HostedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the dev runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_dev(
    settings: Settings,
    url: URL,
    *,
    port: int = 8082,
    trips_file: Path | None = None,
    peer_ports: tuple[int, int, int] = (8081, 8084, 8085),
) -> None:
    from payment_service.app import create_app
    from payment_service.sandbox.runner import SandboxConfig, build_sandbox, default_trips_file

    sandbox = build_sandbox(
        SandboxConfig(
            trip_port=peer_ports[0],
            notification_port=peer_ports[1],
            control_port=peer_ports[2],
            trips_file=trips_file or default_trips_file(),
            log_level=None,
        )
    )
    async with stop_on_signals() as stop, sandbox:
        app_settings = settings.model_copy(
            update={
                "database_url": SecretStr(url.render_as_string(hide_password=False)),
                "trip_service_url": sandbox.trip_url,
                "notification_service_url": sandbox.notification_url,
            }
        )
        host = "127.0.0.1" if settings.service_host == "0.0.0.0" else settings.service_host
        server = _HostedServer(
            uvicorn.Config(
                create_app(app_settings),
                host=host,
                port=port,
                log_config=None,
                access_log=settings.access_log,
                proxy_headers=settings.forwarded_allow_ips is not None,
                forwarded_allow_ips=settings.forwarded_allow_ips or "",
            )
        )
        api = asyncio.create_task(server.serve())
        log.info(
            "dev environment ready",
            extra={
                "api": f"http://{host}:{port}",
                "trip_service": sandbox.trip_url,
                "notification_service": sandbox.notification_url,
                "sandbox_control": sandbox.control_url,
            },
        )
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({api, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        server.should_exit = True
        with contextlib.suppress(SystemExit):
            await api
        if not server.started:
            raise DevServerError(f"the API could not start on port {port}; see the log above")
    log.info("dev environment stopped")
