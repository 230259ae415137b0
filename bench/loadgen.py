"""Load with wrk (one Lua script per scenario) while sampling the workers' memory."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import BenchError

LUA_DIR = Path(__file__).resolve().parent / "lua"
WRK_INSTALL_HINT = "wrk is not installed: apt-get install -y wrk (Debian/Ubuntu), brew install wrk"
WRK_TIMEOUT = "2s"
"""wrk's own default: a request unanswered after 2 s counts as a timeout (a socket error)."""
RSS_SAMPLE_SECONDS = 0.25


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(WRK_INSTALL_HINT)
    return path


def wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (
        (result.stdout or result.stderr).splitlines()[0].strip()
        if (result.stdout or result.stderr)
        else ""
    )


@dataclass
class WrkResult:
    """What wrk's done() reported, in the units the report uses."""

    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]
    target_rate: float | None = None
    failed_statuses: dict[str, int] = field(default_factory=dict)
    """How many answers had each status outside 2xx (wrk's Lua `response` counts them)."""
    raw: dict[str, object] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "latency_ms": self.latency_ms,
            "target_rate": self.target_rate,
            "failed_statuses": self.failed_statuses,
        }


def parse_wrk_output(stdout: str) -> dict[str, object]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise BenchError(
        "wrk printed no BENCH_JSON line (did the Lua script fail?):\n" + stdout[-2000:]
    )


def run_wrk(
    *,
    wrk: str,
    url: str,
    script: str,
    duration: float,
    connections: int,
    threads: int,
    env: Mapping[str, str],
    rate: float | None = None,
) -> WrkResult:
    """One wrk run of `bench/lua/<script>.lua` against `url`."""
    threads = max(1, min(threads, connections))
    run_env = {
        **os.environ,
        **env,
        "BENCH_LUA_DIR": str(LUA_DIR),
        "BENCH_THREADS": str(threads),
        "BENCH_RATE": f"{rate:.3f}" if rate else "0",
    }
    args = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        str(LUA_DIR / f"{script}.lua"),
        url,
    ]
    result = subprocess.run(
        args, capture_output=True, text=True, env=run_env, timeout=duration + 60, check=False
    )
    if result.returncode != 0:
        raise BenchError(
            f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout[-500:]}"
        )
    data = parse_wrk_output(result.stdout)
    errors = dict(data["errors"])  # type: ignore[arg-type]
    latency_us = dict(data["latency_us"])  # type: ignore[arg-type]
    return WrkResult(
        requests=int(data["requests"]),  # type: ignore[arg-type]
        duration_s=int(data["duration_us"]) / 1e6,  # type: ignore[arg-type]
        # wrk counts a response with status >= 400 as a "status" error: the non-2xx here
        # (the service sends no 1xx/3xx on these routes).
        non_2xx=int(errors.pop("status")),
        socket_errors={name: int(value) for name, value in errors.items()},
        latency_ms={name: round(float(value) / 1000, 3) for name, value in latency_us.items()},
        target_rate=rate,
        failed_statuses={str(code): int(n) for code, n in dict(data.get("statuses") or {}).items()},  # type: ignore[call-overload]
        raw=data,
    )


class RssSampler:
    """Max resident memory of each worker process while the `with` block runs."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self.max_rss: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        import psutil

        for pid in self._pids():
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
            self.max_rss[pid] = max(rss, self.max_rss.get(pid, 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(RSS_SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def max_mb(self) -> float | None:
        return round(max(self.max_rss.values()) / 2**20, 1) if self.max_rss else None

    def per_worker_mb(self) -> dict[str, float]:
        return {str(pid): round(rss / 2**20, 1) for pid, rss in sorted(self.max_rss.items())}


class CpuMeter:
    """CPU time each group of processes used while the `with` block ran, in cores busy.

    Groups map a name to a function returning the group's root pids (their children
    count too: uvicorn workers, PostgreSQL backends, also those that exited meanwhile).
    "load generator" is the CPU of the processes this one waited for (wrk, pgbench).
    """

    def __init__(self, groups: Mapping[str, Callable[[], list[int]]]) -> None:
        self._groups = groups
        self._before: dict[str, float] = {}
        self._children_before = 0.0
        self._start = 0.0
        self.cores: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @staticmethod
    def _total(roots: list[int]) -> float:
        """CPU seconds of the roots (with their reaped children) and their live descendants."""
        import psutil

        total = 0.0
        for root in roots:
            try:
                process = psutil.Process(root)
                cpu = process.cpu_times()
                total += cpu.user + cpu.system + cpu.children_user + cpu.children_system
                descendants = process.children(recursive=True)
            except psutil.Error:
                continue
            for member in descendants:
                try:
                    cpu = member.cpu_times()
                except psutil.Error:
                    continue
                total += cpu.user + cpu.system
        return total

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CpuMeter:
        self._before = {name: self._total(pids()) for name, pids in self._groups.items()}
        self._children_before = self._children()
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        for name, pids in self._groups.items():
            used = max(0.0, self._total(pids()) - self._before.get(name, 0.0))
            self.cpu_seconds[name] = round(used, 3)
            self.cores[name] = round(used / elapsed, 2)
        used = self._children() - self._children_before
        self.cpu_seconds["load generator"] = round(used, 3)
        self.cores["load generator"] = round(used / elapsed, 2)
