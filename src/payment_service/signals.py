"""Graceful stop for the long-running commands (dev, worker; the sandbox keeps its own copy)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def stop_on_signals(enabled: bool = True) -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM while the block runs.

    Where handlers cannot be installed (not the main thread, or `enabled=False`)
    the event is never set and the caller relies on cancellation instead.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM) if enabled else ():
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)
    try:
        yield stop
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
