"""Starting and stopping the sandbox, its configuration errors, and the `sandbox` command."""

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from payment_sandbox import SandboxConfig, SandboxError, build_sandbox
from payment_sandbox.cli import sandbox as sandbox_command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(trips_file: Path | None, **overrides: object) -> SandboxConfig:
    ports = {"trip_port": 0, "notification_port": 0, "processor_port": 0, "control_port": 0}
    return SandboxConfig(trips_file=trips_file, log_level=None, **{**ports, **overrides})  # type: ignore[arg-type]


async def test_stop_frees_every_port(trips_file: Path) -> None:
    """After stop() the same fixed ports can be bound again at once by a new sandbox."""
    ports = {
        "trip_port": _free_port(),
        "notification_port": _free_port(),
        "processor_port": _free_port(),
        "control_port": _free_port(),
    }
    first = build_sandbox(_config(trips_file, **ports))
    async with first, httpx.AsyncClient() as client:
        assert (await client.get(f"{first.trip_url}/v1/trips/1")).status_code == 200
        assert (await client.get(f"{first.control_url}/health")).status_code == 200

    second = build_sandbox(_config(trips_file, **ports))
    async with second, httpx.AsyncClient() as client:
        response = await client.get(f"{second.trip_url}/v1/trips/1")
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{second.trip_url}/health")

    assert response.status_code == 200
    assert second.trip_url == first.trip_url


async def test_busy_port_is_a_clear_error_and_leaves_nothing_listening(trips_file: Path) -> None:
    """A taken port fails start() with a one-line reason, and the servers already up stop."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        sandbox = build_sandbox(_config(trips_file, notification_port=busy))

        with pytest.raises(SandboxError, match=rf"notification service cannot listen on .*:{busy}"):
            await sandbox.start()

    assert not sandbox.control.listening
    assert not sandbox.servers["trip"].listening


async def test_peer_can_start_down_and_be_brought_up(trips_file: Path) -> None:
    """trip_mode=down starts with the Trip port closed; the control server opens it."""
    sandbox = build_sandbox(_config(trips_file, trip_port=_free_port(), trip_mode="down"))
    async with sandbox, httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{sandbox.trip_url}/v1/trips/1")
        assert "DOWN" in sandbox.describe()

        await client.put(f"{sandbox.control_url}/trip/faults", json={"mode": "up"})
        response = await client.get(f"{sandbox.trip_url}/v1/trips/1")

    assert response.status_code == 200


async def test_without_a_file_only_synthesised_and_runtime_trips_exist() -> None:
    """trips_file=None serves the load-test range and PUT trips, nothing else."""
    sandbox = build_sandbox(_config(None))
    async with sandbox, httpx.AsyncClient() as client:
        missing = await client.get(f"{sandbox.trip_url}/v1/trips/1")
        synthesised = await client.get(f"{sandbox.trip_url}/v1/trips/1000000")

    assert missing.status_code == 404
    assert synthesised.json()["status"] == "COMPLETED"
    assert "no file" in sandbox.describe()


def test_missing_trips_file_is_a_clear_error(tmp_path: Path) -> None:
    """A trips file that is not there is named in the error, with the way out."""
    with pytest.raises(SandboxError, match=r"trips file .*nope\.csv not found.*--trips-file"):
        build_sandbox(_config(tmp_path / "nope.csv"))


@pytest.mark.parametrize(
    "overrides",
    [{"trip_port": 70000}, {"fail_status": 302}, {"delay_seconds": -1}, {"flaky_count": 0}],
    ids=["port", "status", "delay", "count"],
)
def test_impossible_configuration_is_refused(overrides: dict[str, object]) -> None:
    """Bad values fail when the config is made, before anything binds."""
    with pytest.raises(SandboxError):
        _config(None, **overrides)


def test_default_config_serves_the_project_trips_file() -> None:
    """Without trips_file the project's seeds/rhfd_trips.csv is used, on the documented ports."""
    config = SandboxConfig()

    assert config.trips_file is not None
    assert config.trips_file.parts[-2:] == ("seeds", "rhfd_trips.csv")
    ports = (config.trip_port, config.notification_port, config.control_port)
    assert ports == (8081, 8084, 8085)
    assert config.processor_port == 8087


def test_command_help_lists_the_options() -> None:
    """Registered on a typer app, the command documents every option."""
    app = typer.Typer()
    app.command("sandbox")(sandbox_command)
    app.command("other")(lambda: None)

    result = CliRunner().invoke(app, ["sandbox", "--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    for option in (
        "--host",
        "--trip-port",
        "--notification-port",
        "--control-port",
        "--processor-port",
        "--processor-mode",
        "--processor-webhook-url",
        "--processor-webhook-secret",
        "--trips-file",
        "--trip-mode",
        "--notification-mode",
        "--delay",
        "--fail-status",
    ):
        assert option in result.output
    assert "Run sandbox Trip, Notification and payment processor services" in result.output


async def test_command_serves_until_sigint(trips_file: Path) -> None:
    """The command logs where each peer listens, serves, and exits 0 on Ctrl+C."""
    script = "import typer; from payment_sandbox.cli import sandbox; typer.run(sandbox)"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        "--trip-port=0",
        "--notification-port=0",
        "--control-port=0",
        "--processor-port=0",
        f"--trips-file={trips_file}",
        "--notification-mode=fail",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        line = ""
        async with asyncio.timeout(15):
            while "sandbox:" not in line:  # skip anything logged before the ready line
                line = (await process.stderr.readline()).decode()
        urls = dict(re.findall(r"(Trip|Notification|Processor) service (http://[\d.:]+)", line))
        async with httpx.AsyncClient() as client:
            trip = await client.get(f"{urls['Trip']}/v1/trips/1")
            delivery = await client.post(f"{urls['Notification']}/v1/notifications", json={})
            unauthenticated = await client.get(f"{urls['Processor']}/v1/payment_intents/pi_1")
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), timeout=10)

    assert "control http://127.0.0.1:" in line
    assert trip.json()["total_fare"] == 99.01
    assert delivery.status_code == 500
    assert unauthenticated.status_code == 401  # the processor wants a Bearer sk_test_ key
    assert code == 0


async def test_command_reports_a_busy_port_in_one_line(trips_file: Path) -> None:
    """A port in use ends the command with exit code 1 and a one-line error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import typer; from payment_sandbox.cli import sandbox; typer.run(sandbox)",
            f"--trip-port={taken.getsockname()[1]}",
            "--notification-port=0",
            "--control-port=0",
            "--processor-port=0",
            f"--trips-file={trips_file}",
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)

    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 1
    assert lines == [lines[0]]
    assert lines[0].startswith("error: sandbox trip service cannot listen on 127.0.0.1:")


@pytest.mark.parametrize(
    "overrides",
    [
        {"trip_mode": "decline"},
        {"notification_mode": "timeout_after_capture"},
        {"processor_webhook_url": "ftp://example.test/hooks"},
        {"processor_port": 70000},
    ],
)
def test_config_refuses_what_cannot_work(overrides: dict[str, object]) -> None:
    """Processor-only modes on other peers, a non-HTTP webhook URL, an impossible port."""
    with pytest.raises(SandboxError):
        SandboxConfig(trips_file=None, **overrides)  # type: ignore[arg-type]


def test_webhook_options_fall_back_to_the_environment() -> None:
    """--processor-webhook-url/-secret read SANDBOX_PROCESSOR_WEBHOOK_* when not given."""
    app = typer.Typer()
    seen: dict[str, object] = {}

    def fake_run(config: SandboxConfig) -> None:
        seen["config"] = config

    app.command("sandbox")(sandbox_command)
    app.command("other")(lambda: None)
    env = {
        "SANDBOX_PROCESSOR_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
        "SANDBOX_PROCESSOR_WEBHOOK_SECRET": "whsec_from_env",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("payment_sandbox.cli.run_sandbox", fake_run)
        patch.setattr("payment_sandbox.cli.asyncio.run", lambda value: value)
        result = CliRunner().invoke(app, ["sandbox", "--trips-file", __file__], env=env)

    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert isinstance(config, SandboxConfig)
    assert config.processor_webhook_url == "http://127.0.0.1:9/hooks"
    assert config.processor_webhook_secret == "whsec_from_env"


async def test_the_standalone_sandbox_keeps_its_servers_out_of_full_collections(
    trips_file: Path,
) -> None:
    """`payment-service sandbox` freezes what it built once serving (its full collections
    stopped every peer for 60-90 ms under `make bench`) and unfreezes when it stops."""
    import gc

    from payment_sandbox.runner import run_sandbox

    serving = asyncio.create_task(run_sandbox(_config(trips_file), handle_signals=False))
    try:
        for _ in range(500):
            if gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    assert gc.get_freeze_count() == 0
