"""Sandbox stand-ins for the Trip, Notification and payment processor services, with faults.

Used by `payment-service dev`, `payment-service sandbox`, the end-to-end tests and
the benchmark. The HTTP control endpoints are listed in `faults`; the Python entry
points are `build_sandbox(SandboxConfig(...))` and the `Sandbox` it returns.
"""

from payment_sandbox.control import Peer, create_control_app
from payment_sandbox.errors import SandboxError, UnsupportedFaultError
from payment_sandbox.faults import FaultMode, FaultSwitch, FaultUpdate
from payment_sandbox.notifications import NotificationSink, create_notification_app
from payment_sandbox.processor import SandboxProcessor, create_processor_app
from payment_sandbox.runner import (
    PeerServer,
    Sandbox,
    SandboxConfig,
    build_sandbox,
    default_trips_file,
    run_sandbox,
)
from payment_sandbox.trips import (
    Trip,
    TripFileError,
    TripStore,
    create_trip_app,
    load_trips_csv,
    synthetic_trip,
)

__all__ = [
    "FaultMode",
    "FaultSwitch",
    "FaultUpdate",
    "NotificationSink",
    "Peer",
    "PeerServer",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxProcessor",
    "Trip",
    "TripFileError",
    "TripStore",
    "UnsupportedFaultError",
    "build_sandbox",
    "create_control_app",
    "create_notification_app",
    "create_processor_app",
    "create_trip_app",
    "default_trips_file",
    "load_trips_csv",
    "run_sandbox",
    "synthetic_trip",
]
