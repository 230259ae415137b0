"""Run the sandbox peers (Trip, Notification, processor) as uvicorn servers in the current loop.

`payment-service sandbox` runs them alone (`run_sandbox`); `payment-service dev`
and the end-to-end tests start them beside the API in one process:

    sandbox = build_sandbox(
        SandboxConfig(trip_port=0, notification_port=0, processor_port=0, control_port=0)
    )
    async with sandbox:                      # or: await sandbox.start() ... await sandbox.stop()
        settings.trip_service_url = sandbox.trip_url
        settings.stripe_api_base = sandbox.processor_url
        await sandbox.set_fault("processor", "decline")
        await sandbox.set_fault("trip", "down")   # port closed: connection refused
        await sandbox.set_fault("trip", "up")     # listening again on the same port

Port 0 picks a free port; the chosen one is kept across down/up. The servers
never install signal handlers, so they share the loop with another uvicorn.
"""

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from payment_sandbox._signals import stop_on_signals
from payment_sandbox.control import Peer, create_control_app
from payment_sandbox.errors import SandboxError, UnsupportedFaultError
from payment_sandbox.faults import (
    COMMON_MODES,
    DEFAULT_DELAY_SECONDS,
    DEFAULT_FAIL_STATUS,
    DEFAULT_FLAKY_COUNT,
    PROCESSOR_MODES,
    FaultMode,
    FaultSwitch,
)
from payment_sandbox.notifications import NotificationSink, create_notification_app
from payment_sandbox.processor import SandboxProcessor, create_processor_app
from payment_sandbox.trips import TripFileError, TripStore, create_trip_app

logger = logging.getLogger("payment_sandbox")

TRIPS_FILE = Path("seeds") / "rhfd_trips.csv"
_START_POLL_SECONDS = 0.005
_GRACEFUL_SHUTDOWN_SECONDS = 2


def default_trips_file() -> Path:
    """`seeds/rhfd_trips.csv` under the working directory, else the one in the package."""
    candidate = Path.cwd() / TRIPS_FILE
    if candidate.is_file():
        return candidate
    return Path(__file__).resolve().parent / "seeds" / TRIPS_FILE.name


@dataclass
class SandboxConfig:
    """Where the peers listen, what they serve and how they misbehave at start.

    `trips_file=None` serves no file (only synthesised and PUT trips). `log_level`
    is handed to uvicorn, which applies it to the process-wide `uvicorn.*` loggers;
    pass None to leave logging exactly as the host process configured it.

    The processor accepts any `sk_test_` key unless `processor_api_key` names the one
    key it takes; it signs webhooks to `processor_webhook_url` only when
    `processor_webhook_secret` is set too. Its pending charges and refunds settle
    after `delay_seconds` (the fault's own delay when set over the control API).
    The Notification service verifies Standard Webhooks signatures with
    `notification_signing_secret` (`whsec_...`) when it is set.
    """

    host: str = "127.0.0.1"
    trip_port: int = 8081
    notification_port: int = 8084
    control_port: int = 8085
    processor_port: int = 8087
    trips_file: Path | None = field(default_factory=default_trips_file)
    notifications_file: Path | None = None
    trip_mode: FaultMode = FaultMode.NORMAL
    notification_mode: FaultMode = FaultMode.NORMAL
    processor_mode: FaultMode = FaultMode.NORMAL
    processor_api_key: str | None = None
    processor_webhook_url: str | None = None
    processor_webhook_secret: str | None = None
    notification_signing_secret: str | None = None
    delay_seconds: float = DEFAULT_DELAY_SECONDS
    fail_status: int = DEFAULT_FAIL_STATUS
    flaky_count: int = DEFAULT_FLAKY_COUNT
    log_level: str | None = "warning"

    def __post_init__(self) -> None:
        """Coerce CLI-ish values and reject impossible ones before anything binds."""
        self.trip_mode = FaultMode(self.trip_mode)
        self.notification_mode = FaultMode(self.notification_mode)
        self.processor_mode = FaultMode(self.processor_mode)
        for name in ("trip_mode", "notification_mode"):
            if getattr(self, name) in PROCESSOR_MODES:
                raise SandboxError(
                    f"{name} {getattr(self, name).value!r} is for the sandbox processor only"
                )
        if self.processor_webhook_url is not None and not self.processor_webhook_url.startswith(
            ("http://", "https://")
        ):
            raise SandboxError(
                f"processor webhook URL must be http(s), got {self.processor_webhook_url!r}"
            )
        if self.trips_file is not None:
            self.trips_file = Path(self.trips_file)
        if self.notifications_file is not None:
            self.notifications_file = Path(self.notifications_file)
        for name in ("trip_port", "notification_port", "processor_port", "control_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SandboxError(f"{name} must be 0..65535, got {port}")
        if self.delay_seconds < 0:
            raise SandboxError(f"delay must be >= 0 seconds, got {self.delay_seconds}")
        if not 400 <= self.fail_status <= 599:
            raise SandboxError(f"fail status must be 400..599, got {self.fail_status}")
        if self.flaky_count < 1:
            raise SandboxError(f"flaky count must be >= 1, got {self.flaky_count}")


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host, so several can share one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: `run_sandbox` or the host process owns SIGINT/SIGTERM."""
        yield


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: errors become exceptions, not uvicorn's sys.exit."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Lets "up" rebind at once although the "down" connections linger in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class PeerServer:
    """One sandbox HTTP server that can stop listening and listen again on the same port."""

    def __init__(
        self,
        name: str,
        app: FastAPI,
        host: str,
        port: int,
        *,
        faults: FaultSwitch | None = None,
        log_level: str | None = "warning",
    ) -> None:
        self.name = name
        self.app = app
        self.host = host
        self.port = port
        self.faults = faults
        self.log_level = log_level
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        """Whether the port accepts connections."""
        return self._task is not None

    @property
    def url(self) -> str:
        """Base URL of this server (the bound port once started, even when configured as 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen and serve; a no-op when already listening."""
        async with self._lock:
            if self._task is not None:
                return
            try:
                sock = _bind(self.host, self.port)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise SandboxError(
                    f"sandbox {self.name} service cannot listen on {self.host}:{self.port}: "
                    f"{reason}"
                ) from exc
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_level=self.log_level,
                log_config=None,
                lifespan="on",
                ws="none",
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
            )
            server = _EmbeddedServer(config)
            task = asyncio.create_task(self._serve(server, sock), name=f"sandbox-{self.name}")
            while not server.started:
                if task.done():
                    sock.close()
                    await task
                    raise SandboxError(f"sandbox {self.name} service stopped while starting")
                await asyncio.sleep(_START_POLL_SECONDS)
            self._server, self._task = server, task

    async def _serve(self, server: _EmbeddedServer, sock: socket.socket) -> None:
        """Run uvicorn on our socket, turning its startup `sys.exit` into an exception."""
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            raise SandboxError(f"sandbox {self.name} service failed to start") from exc

    async def stop(self, *, abrupt: bool = False) -> None:
        """Stop serving and free the port; `abrupt` drops open connections now, like a crash."""
        async with self._lock:
            server, task = self._server, self._task
            if server is None or task is None:
                return
            self._server = self._task = None
            server.should_exit = True
            if self.faults is not None:
                self.faults.interrupt()
            if abrupt:
                self._close_now(server)
            try:
                await asyncio.wait_for(asyncio.shield(task), _GRACEFUL_SHUTDOWN_SECONDS + 1)
            except TimeoutError:
                server.force_exit = True
                self._close_now(server)
                await task

    @staticmethod
    def _close_now(server: _EmbeddedServer) -> None:
        """Refuse new connections and cut the open ones without waiting for uvicorn's tick."""
        for listener in getattr(server, "servers", ()):
            listener.close()
        for connection in list(server.server_state.connections):
            connection.transport.close()


class Sandbox:
    """The Trip, Notification and processor stand-ins and their control server, in one loop."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        trips: TripStore,
        notifications: NotificationSink,
        trip_faults: FaultSwitch,
        notification_faults: FaultSwitch,
        processor: SandboxProcessor,
    ) -> None:
        self.config = config
        self.trips = trips
        self.notifications = notifications
        self.trip_faults = trip_faults
        self.notification_faults = notification_faults
        self.processor = processor
        self.faults: dict[Peer, FaultSwitch] = {
            Peer.TRIP: trip_faults,
            Peer.NOTIFICATION: notification_faults,
            Peer.PROCESSOR: processor.faults,
        }
        self.servers: dict[Peer, PeerServer] = {
            Peer.TRIP: PeerServer(
                "trip",
                create_trip_app(trips, trip_faults),
                config.host,
                config.trip_port,
                faults=trip_faults,
                log_level=config.log_level,
            ),
            Peer.NOTIFICATION: PeerServer(
                "notification",
                create_notification_app(notifications, notification_faults),
                config.host,
                config.notification_port,
                faults=notification_faults,
                log_level=config.log_level,
            ),
            Peer.PROCESSOR: PeerServer(
                "processor",
                create_processor_app(processor),
                config.host,
                config.processor_port,
                faults=processor.faults,
                log_level=config.log_level,
            ),
        }
        self.control = PeerServer(
            "control",
            create_control_app(self),
            config.host,
            config.control_port,
            log_level=config.log_level,
        )

    @property
    def trip_url(self) -> str:
        """Value for TRIP_SERVICE_URL."""
        return self.servers[Peer.TRIP].url

    @property
    def notification_url(self) -> str:
        """Value for NOTIFICATION_SERVICE_URL."""
        return self.servers[Peer.NOTIFICATION].url

    @property
    def processor_url(self) -> str:
        """Value for STRIPE_API_BASE."""
        return self.servers[Peer.PROCESSOR].url

    @property
    def control_url(self) -> str:
        """Base URL of the control API."""
        return self.control.url

    async def start(self) -> None:
        """Listen on every port (a peer whose mode is `down` stays closed), then log where."""
        try:
            await self.control.start()
            for peer, server in self.servers.items():
                if self.faults[peer].mode is not FaultMode.DOWN:
                    await server.start()
        except BaseException:
            await self.stop()
            raise
        logger.info("%s", self.describe())

    async def stop(self) -> None:
        """Stop every server; when this returns, all ports are free."""
        servers = (*self.servers.values(), self.control)
        await asyncio.gather(*(server.stop() for server in servers))
        await self.processor.aclose()

    async def __aenter__(self) -> "Sandbox":
        """Start on entry."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop on exit, whatever happened."""
        await self.stop()

    async def set_fault(
        self,
        peer: Peer | str,
        mode: FaultMode | str,
        *,
        delay_seconds: float | None = None,
        status_code: int | None = None,
        count: int | None = None,
    ) -> dict[str, Any]:
        """Give a peer a fault; `down` closes its port, `up` (or any other mode) opens it again."""
        peer = Peer(peer)
        switch, server = self.faults[peer], self.servers[peer]
        mode = FaultMode.NORMAL if mode == "up" else FaultMode(mode)
        if mode not in switch.modes:
            raise UnsupportedFaultError(f"mode {mode.value!r} is for the sandbox processor only")
        if mode == FaultMode.DOWN:
            await server.stop(abrupt=True)
            switch.set(FaultMode.DOWN, delay_seconds=delay_seconds, status_code=status_code)
        else:
            switch.set(mode, delay_seconds=delay_seconds, status_code=status_code, count=count)
            await server.start()
        return self.peer_status(peer)

    async def down(self, peer: Peer | str) -> None:
        """Close a peer's port: its clients get connection refused."""
        await self.set_fault(peer, FaultMode.DOWN)

    async def up(self, peer: Peer | str) -> None:
        """Open a peer's port again, in normal mode."""
        await self.set_fault(peer, "up")

    async def reset(self) -> None:
        """Every peer up and normal; runtime trips, counters, notifications, ledger cleared."""
        for peer, switch in self.faults.items():
            switch.reset()
            await self.servers[peer].start()
        self.trips.reset()
        self.notifications.clear()
        self.processor.reset()

    def peer_status(self, peer: Peer | str) -> dict[str, Any]:
        """One peer's URL, whether it listens, and its fault."""
        peer = Peer(peer)
        server = self.servers[peer]
        return {
            "url": server.url,
            "listening": server.listening,
            "fault": self.faults[peer].snapshot(),
        }

    def status(self) -> dict[str, Any]:
        """Every peer's state plus where the control API is."""
        answer: dict[str, Any] = {peer.value: self.peer_status(peer) for peer in Peer}
        answer["control"] = {"url": self.control_url, "listening": self.control.listening}
        return answer

    def describe(self) -> str:
        """One line saying where each peer listens, for the log."""
        parts = []
        labels = (
            (Peer.TRIP, "Trip"),
            (Peer.NOTIFICATION, "Notification"),
            (Peer.PROCESSOR, "Processor"),
        )
        for peer, label in labels:
            server = self.servers[peer]
            where = server.url if server.listening else f"DOWN (port {server.port})"
            mode = self.faults[peer].mode
            suffix = "" if mode is FaultMode.NORMAL else f" [{mode}]"
            parts.append(f"{label} service {where}{suffix}")
        source = self.trips.source or "no file"
        return (
            f"sandbox: {parts[0]} ({len(self.trips)} trips from {source}), {parts[1]}, "
            f"{parts[2]}, control {self.control_url}"
        )


def build_sandbox(config: SandboxConfig) -> Sandbox:
    """Load the trips and wire the peers; nothing listens until `start()`."""
    trips_file = config.trips_file
    if trips_file is not None and not trips_file.is_file():
        raise SandboxError(
            f"trips file {trips_file} not found (run from the project directory or pass "
            "--trips-file)"
        )
    try:
        trips = TripStore.from_csv(trips_file) if trips_file is not None else TripStore()
        notifications = NotificationSink(
            config.notifications_file, secret=config.notification_signing_secret
        )
    except (TripFileError, OSError, ValueError) as exc:
        raise SandboxError(str(exc)) from exc
    except Exception as exc:  # the library rejects a secret that is not base64
        raise SandboxError(
            f"notification signing secret is not usable: {type(exc).__name__}"
        ) from exc

    def switch(mode: FaultMode, modes: frozenset[FaultMode] = COMMON_MODES) -> FaultSwitch:
        """A fault switch with the configured defaults."""
        return FaultSwitch(
            mode,
            delay_seconds=config.delay_seconds,
            status_code=config.fail_status,
            count=config.flaky_count,
            modes=modes,
        )

    processor = SandboxProcessor(
        switch(config.processor_mode, frozenset(FaultMode)),
        api_key=config.processor_api_key,
        webhook_url=config.processor_webhook_url,
        webhook_secret=config.processor_webhook_secret,
    )

    return Sandbox(
        config,
        trips=trips,
        notifications=notifications,
        trip_faults=switch(config.trip_mode),
        notification_faults=switch(config.notification_mode),
        processor=processor,
    )


async def run_sandbox(config: SandboxConfig, *, handle_signals: bool = True) -> None:
    """Serve until cancelled, SIGINT or SIGTERM, then free every port."""
    sandbox = build_sandbox(config)
    async with stop_on_signals(handle_signals) as stopping, sandbox:
        # What serving needs is built: out of the collector's full passes, which otherwise
        # walk it (~120k objects, 60-90 ms with every peer stopped) and showed up as the
        # p99 of the service's charges under `make bench`.
        gc.freeze()
        try:
            await stopping.wait()
        finally:
            gc.unfreeze()
    logger.info("sandbox stopped")
