"""WEB_CONCURRENCY > 1: metrics are per process, so `serve` says so in one line (and starts)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from payment_service import cli
from payment_service.cli import app, several_workers_warning


def test_one_worker_needs_no_warning() -> None:
    assert several_workers_warning(1) is None


def test_several_workers_are_warned_that_metrics_are_partial() -> None:
    line = several_workers_warning(3)
    assert line is not None and "\n" not in line
    assert "3 workers" in line and "/metrics" in line and "one worker per container" in line


@pytest.mark.parametrize(("workers", "warned"), [("1", False), ("2", True)])
def test_serve_prints_the_warning_and_still_runs_uvicorn(
    monkeypatch: pytest.MonkeyPatch, workers: str, warned: bool
) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: started.update(kwargs))
    monkeypatch.setattr(cli, "_run", lambda coroutine: coroutine.close())
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # keep pytest's SIGTERM
    env = {
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
        "GATEWAY": "simulator",
        "WEB_CONCURRENCY": workers,
        "LOG_LEVEL": "WARNING",
    }
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    assert started["workers"] == int(workers)
    assert ("/metrics answers for the one worker" in result.output) is warned


def test_the_configured_protocol_pickles_for_spawned_workers() -> None:
    """uvicorn --workers N pickles its config (the protocol class included) for each worker."""
    from payment_service.edge import configure_protocol

    configured = configure_protocol(max_header_bytes=1234, header_timeout_seconds=7.0)
    assert pickle.loads(pickle.dumps(configured)) is configured
    # A fresh interpreter (a spawned worker) rebuilds it from the settings in its environment.
    code = (
        "import pickle, sys; cls = pickle.loads(sys.stdin.buffer.read()); "
        "print(cls.max_header_bytes, cls.header_timeout_seconds)"
    )
    env = {"MAX_HEADER_BYTES": "1234", "REQUEST_READ_TIMEOUT_SECONDS": "7"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(configured),
        capture_output=True,
        env={**os.environ, **env},
        check=True,
    ).stdout.decode()
    assert out.split() == ["1234", "7.0"]
