"""`payment-service sandbox`: the Trip, Notification and payment processor stand-ins alone.

The project's CLI registers it with `app.command("sandbox")(sandbox)`.
"""

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from payment_sandbox.errors import SandboxError
from payment_sandbox.faults import (
    DEFAULT_DELAY_SECONDS,
    DEFAULT_FAIL_STATUS,
    DEFAULT_FLAKY_COUNT,
    FaultMode,
)
from payment_sandbox.runner import SandboxConfig, run_sandbox


def sandbox(
    host: Annotated[str, typer.Option(help="Interface every sandbox server binds to.")] = (
        "127.0.0.1"
    ),
    trip_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Trip service port (0: any free port).")
    ] = 8081,
    notification_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Notification service port (0: any free port).")
    ] = 8084,
    processor_port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="Payment processor (Stripe API subset) port (0: any free port)."
        ),
    ] = 8087,
    control_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Fault control API port (0: any free port).")
    ] = 8085,
    trips_file: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="Trips CSV to serve (default: the project's seeds/rhfd_trips.csv).",
            show_default=False,
        ),
    ] = None,
    trip_mode: Annotated[
        FaultMode, typer.Option(case_sensitive=False, help="Fault of the Trip service at start.")
    ] = FaultMode.NORMAL,
    notification_mode: Annotated[
        FaultMode,
        typer.Option(case_sensitive=False, help="Fault of the Notification service at start."),
    ] = FaultMode.NORMAL,
    processor_mode: Annotated[
        FaultMode,
        typer.Option(
            case_sensitive=False,
            help="Fault of the processor at start (also decline, pending, timeout_after_capture).",
        ),
    ] = FaultMode.NORMAL,
    processor_api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SANDBOX_PROCESSOR_API_KEY",
            help="The one API key the processor accepts (default: any sk_test_ key).",
            show_default=False,
        ),
    ] = None,
    processor_webhook_url: Annotated[
        str | None,
        typer.Option(
            envvar="SANDBOX_PROCESSOR_WEBHOOK_URL",
            help="Where the processor POSTs its signed events, e.g. "
            "http://localhost:8082/v1/gateway/webhooks/stripe.",
            show_default=False,
        ),
    ] = None,
    processor_webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar="SANDBOX_PROCESSOR_WEBHOOK_SECRET",
            help="Signing secret (whsec_...) for Stripe-Signature; no webhooks without it.",
            show_default=False,
        ),
    ] = None,
    notification_signing_secret: Annotated[
        str | None,
        typer.Option(
            envvar="SANDBOX_NOTIFICATION_SIGNING_SECRET",
            help="Standard Webhooks secret (whsec_...) the Notification service verifies "
            "deliveries with (the API's NOTIFICATION_SIGNING_SECRET); unset, no check.",
            show_default=False,
        ),
    ] = None,
    delay: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a slow peer waits before answering (and a pending charge settles).",
        ),
    ] = DEFAULT_DELAY_SECONDS,
    fail_status: Annotated[
        int, typer.Option(min=400, max=599, help="Status a failing or flaky peer answers.")
    ] = DEFAULT_FAIL_STATUS,
    flaky_count: Annotated[
        int, typer.Option(min=1, help="Requests a flaky peer fails before it recovers.")
    ] = DEFAULT_FLAKY_COUNT,
    notifications_file: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Also keep received notifications in this JSONL file."),
    ] = None,
) -> None:
    """Run sandbox Trip, Notification and payment processor services until Ctrl+C.

    The Trip service serves the trips CSV (and synthesises COMPLETED trips for any
    id from 1000000 up); the Notification service records every delivery; the
    processor speaks the Stripe API subset the Stripe adapter uses (point
    STRIPE_API_BASE at it) and keeps a ledger (GET localhost:8085/processor/ledger).
    Change faults at runtime with the control API, e.g.
    curl -X PUT localhost:8085/trip/faults -d '{"mode": "down"}' (then "up");
    modes: normal, slow, fail, flaky, down; the processor also decline, pending,
    timeout_after_capture.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = SandboxConfig(
            host=host,
            trip_port=trip_port,
            notification_port=notification_port,
            control_port=control_port,
            processor_port=processor_port,
            processor_mode=processor_mode,
            processor_api_key=processor_api_key,
            processor_webhook_url=processor_webhook_url,
            processor_webhook_secret=processor_webhook_secret,
            notification_signing_secret=notification_signing_secret,
            notifications_file=notifications_file,
            trip_mode=trip_mode,
            notification_mode=notification_mode,
            delay_seconds=delay,
            fail_status=fail_status,
            flaky_count=flaky_count,
        )
        if trips_file is not None:
            config.trips_file = trips_file
        asyncio.run(run_sandbox(config))
    except SandboxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        pass
