"""`python -m bench` (make bench) keeps working: a couple of seconds per scenario, no timings.

It starts its own PostgreSQL database (on TEST_DATABASE_URL's server when given, else
embedded), sandbox and `payment-service serve`, drives every scenario with wrk (the bare
reference app's included) and runs both pgbench ceilings. Asserted: every scenario
produced a row with requests, the GET scenarios had no socket errors and no non-2xx,
both ceilings ran without failed transactions, and (embedded server) the pgbench scripts
still match the SQL the service sends. Throughput and latency are never asserted.

wrk is a system package (`apt-get install -y wrk`): without it the test is skipped
locally and fails under CI (`CI=true`), where it must be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

GET_SCENARIOS = ("get_payment", "list_payments", "health", "floor", "bare_get")
ALL_SCENARIOS = ("charge", "charge_stripe", "replay", *GET_SCENARIOS)
BENCH_TIMEOUT_SECONDS = 280


@pytest.fixture
def wrk_available() -> None:
    if shutil.which("wrk") is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("wrk is not installed but CI=true: install it (apt-get install -y wrk)")
    pytest.skip("wrk is not installed (apt-get install -y wrk): the bench smoke test needs it")


def test_bench_runs_every_scenario_and_both_ceilings(wrk_available: None, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    env = {**os.environ}
    env.pop("BENCH_DATABASE_URL", None)
    if test_url := os.environ.get("TEST_DATABASE_URL"):
        env["BENCH_DATABASE_URL"] = test_url
    command = [
        sys.executable, "-m", "bench",
        "--duration", "2", "--warmup", "0", "--paced-duration", "1",
        "--connections", "4", "--threads", "1", "--workers", "1",
        "--output", str(output),
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, (
        f"python -m bench exited {completed.returncode}\n"
        f"stderr (tail):\n{_tail(completed.stderr)}\nstdout (tail):\n{_tail(completed.stdout)}"
    )
    result = json.loads(output.read_text())

    assert sorted(result["scenarios"]) == sorted(ALL_SCENARIOS)
    for name, row in result["scenarios"].items():
        assert row["peak"]["requests"] > 0, f"{name}: no requests answered"
        for run in filter(None, (row["peak"], row.get("paced"))):
            # wrk's non-2xx count and the Lua's per-status count of the same answers agree.
            assert sum(run["failed_statuses"].values()) == run["non_2xx"], (name, run)
        label = f"{name} (reference)" if name == "bare_get" else name
        assert f"| {label} |" in completed.stdout, f"{name}: no row in the printed table"
    for name in GET_SCENARIOS:
        runs = [result["scenarios"][name]["peak"]]
        if paced := result["scenarios"][name].get("paced"):
            runs.append(paced)
        for run in runs:
            assert run["non_2xx"] == 0, f"{name}: {run['non_2xx']} non-2xx answers"
            assert sum(run["socket_errors"].values()) == 0, f"{name}: {run['socket_errors']}"

    assert "of the bare reference's rate" in completed.stdout

    for script in ("charge", "point_read"):
        ceiling = result["ceilings"][script]
        assert ceiling["transactions"] > 0, f"pgbench {script}.sql ran no transaction"
        assert ceiling["failed"] == 0, f"pgbench {script}.sql: {ceiling['failed']} failed"
        assert result["scenarios"]["charge" if script == "charge" else "get_payment"]["ratio"]

    for check in result.get("sql_checks", []):  # only with the embedded server
        assert check["matches"], (
            f"bench/pgbench/{check['script']} no longer matches the SQL the service sends for "
            f"{check['scenario']}; update it from `python -m bench --show-sql`:\n"
            + "\n".join(check["differences"])
        )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
