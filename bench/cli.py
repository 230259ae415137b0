"""`python -m bench` (`make bench`): the service under wrk against pgbench's ceiling, in one run.

Steps:
1. PostgreSQL (BENCH_DATABASE_URL, else embedded in a temp dir), a fresh database,
   `payment-service migrate` and `seed`;
2. `payment-service sandbox` (Trip and Notification stand-ins) and
   `payment-service serve --workers N` with production settings (outbox dispatcher on)
   minus the access log and the rate limit;
3. one charge whose key the replay scenario repeats, and (embedded server) one request
   of each scenario with `log_statement = 'all'`: the service's real SQL, checked against
   bench/pgbench/*.sql;
4. per scenario: a warm-up, a peak run (wrk as fast as the connections allow, worker RSS
   sampled), then a paced run at half that peak rate (p99 at half load);
5. the API is stopped; the `bare_get` reference (bench/reference_app.py: the same GET's
   statement and JSON on a bare ASGI app under the same uvicorn, checked to answer what
   the service answered) runs like a scenario, to show what any app on uvicorn reaches;
6. pgbench runs charge.sql and point_read.sql with the same client count and duration;
7. one Markdown table on stdout, the whole run in bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import ceiling, loadgen, report, sqllog, stack
from bench.stack import BenchError

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPLAY_TRIP_ID = 1_000_000
"""The first synthetic COMPLETED trip: charged once before the runs, the replay scenario's."""
TRIP_BLOCK = 1_000_000_000
"""Each wrk charge run gets trips [k * TRIP_BLOCK, (k+1) * TRIP_BLOCK); threads split it."""
PGBENCH_TRIP_BLOCK = 1_000_000_000_000
DRAIN_TIMEOUT_SECONDS = 60.0
REFERENCE_PATH = "/v1/payments/1"
"""The request whose answer the bare_get reference must share with the service."""


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    request: str
    ceiling: str
    service_env: tuple[tuple[str, str], ...] = ()
    """Settings of the service this scenario needs (a second `serve` runs it)."""
    reference: bool = False
    """Served by `bench/reference_app.py`, not the service: a yardstick for its row."""


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "charge",
            "charge",
            "POST /v1/payments/charge (new key, fresh trip), GATEWAY=simulator",
            "charge",
        ),
        Scenario(
            "charge_stripe",
            "charge",
            "POST /v1/payments/charge, GATEWAY=stripe against the sandbox processor",
            "charge",
            (("GATEWAY", "stripe"),),
        ),
        Scenario("replay", "replay", "POST /v1/payments/charge (same key: replay)", "point_read"),
        Scenario("get_payment", "get_payment", "GET /v1/payments/{id}", "point_read"),
        Scenario(
            "list_payments",
            "list_payments",
            "GET /v1/payments?status=SUCCESS&limit=10",
            "point_read",
        ),
        Scenario("health", "health", "GET /health", "point_read"),
        Scenario("floor", "health_live", "GET /health/live (framework floor)", "point_read"),
        Scenario(
            "bare_get",
            "get_payment",
            "GET /v1/payments/{id} from bench/reference_app.py: the same statement and JSON,"
            " no framework (a reference, not the service)",
            "point_read",
            reference=True,
        ),
    )
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Load-test the Payment Service (wrk) and measure the database's ceiling for the "
            "same SQL (pgbench) in one run. PostgreSQL: BENCH_DATABASE_URL, else embedded."
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds per scenario and per pgbench run (%(default)g)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="wrk connections = pgbench clients (%(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="wrk threads = pgbench threads (%(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="uvicorn worker processes (%(default)s)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of: " + ", ".join(SCENARIOS) + " (all)",
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unrecorded seconds before each run (%(default)g)"
    )
    parser.add_argument(
        "--paced-fraction",
        type=float,
        default=0.5,
        help="paced run at this fraction of each scenario's peak rate, 0: none (%(default)g)",
    )
    parser.add_argument(
        "--paced-duration",
        type=float,
        default=None,
        help="seconds per paced run (default: --duration)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON results file (default: bench/results/<timestamp>.json)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for `payment-service serve`, e.g. OUTBOX_ENABLED=false (repeatable; "
        "for experiments: the defaults are production's)",
    )
    parser.add_argument(
        "--show-sql", action="store_true", help="print the SQL captured from the service"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (logs, database) for inspection"
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SCENARIOS)}"
        )
    args.scenario_list = names
    service_env = {}
    for item in args.service_env:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--service-env wants NAME=VALUE, got {item!r}")
        service_env[name.strip().upper()] = value
    args.service_env = service_env
    if args.connections < 1 or args.threads < 1 or args.workers < 1 or args.duration < 1:
        parser.error("--connections, --threads, --workers must be >= 1 and --duration >= 1")
    if args.threads > args.connections:
        args.threads = args.connections
    if args.threads > 99:
        parser.error("--threads must be <= 99 (each wrk thread gets its own block of trip ids)")
    if args.paced_duration is None:
        args.paced_duration = args.duration
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        wrk = loadgen.find_wrk()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        pgbench = ceiling.find_pgbench()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"{stamp}.json"
    workdir = Path(tempfile.mkdtemp(prefix="payment-bench-"))
    bench = Bench(args, wrk=wrk, pgbench=pgbench, workdir=workdir, run_id=stamp.lower())
    try:
        result = bench.run(started)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.write_json(result, output)
    print(report.render(result))
    print(f"\nresults: {output}")
    return 0


class Bench:
    def __init__(
        self, args: argparse.Namespace, *, wrk: str, pgbench: str, workdir: Path, run_id: str
    ):
        self.args = args
        self.wrk = wrk
        self.pgbench = pgbench
        self.workdir = workdir
        self.run_id = run_id
        self.charge_runs = 0
        self.pgbench_runs = 0
        self.replay_body = ""
        self.replay_payment_id = 0
        self.primed_payment: bytes | None = None
        """GET /v1/payments/1 as the service answered it: the reference must answer alike."""
        self.api_key = ""
        self.auth: dict[str, str] = {}

    def log(self, message: str) -> None:
        print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    # -- the whole run --------------------------------------------------------------------

    def run(self, started: datetime) -> dict[str, Any]:
        args = self.args
        result: dict[str, Any] = {
            "started_at": started.isoformat(timespec="seconds"),
            "machine": report.machine(),
            "config": {
                "duration": args.duration,
                "connections": args.connections,
                "threads": args.threads,
                "workers": args.workers,
                "warmup": args.warmup,
                "paced_fraction": args.paced_fraction,
                "paced_duration": args.paced_duration,
                "scenarios": args.scenario_list,
                "service_env": args.service_env,
            },
            "tools": {
                "wrk": loadgen.wrk_version(self.wrk),
                "pgbench": ceiling.pgbench_version(self.pgbench),
            },
            "scenarios": {},
            "ceilings": {},
        }
        t0 = time.monotonic()
        result["load_average"] = {"before": [round(x, 2) for x in os.getloadavg()]}
        with stack.postgres(self.workdir) as server:
            result["postgres"] = {
                "version": server.version,
                "kind": "embedded" if server.embedded else "BENCH_DATABASE_URL",
            }
            self.log(f"PostgreSQL {server.version} ({result['postgres']['kind']})")
            with stack.fresh_database(server, f"bench_{self.run_id}", keep=args.keep) as db:
                self.db = db
                env = {"DATABASE_URL": db.render_as_string(hide_password=False)}
                stack.run_cli(["migrate"], env=env, cwd=self.workdir)
                self.log(
                    stack.run_cli(
                        ["seed", "--file", str(stack.SEED_FILE)], env=env, cwd=self.workdir
                    )
                )
                created = stack.run_cli(
                    [
                        "api-keys",
                        "create",
                        "--name",
                        "bench",
                        "--scope",
                        "read",
                        "--scope",
                        "charge",
                    ],
                    env=env,
                    cwd=self.workdir,
                )
                self.api_key = created.strip().splitlines()[-1].strip()
                self.auth = {"Authorization": f"Bearer {self.api_key}"}
                self.server = server
                groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
                references = [name for name in args.scenario_list if SCENARIOS[name].reference]
                for name in args.scenario_list:
                    if name not in references:
                        groups.setdefault(SCENARIOS[name].service_env, []).append(name)
                for extra_env, names in sorted(groups.items(), key=lambda item: len(item[0])):
                    # The simulator gateway (in-process) unless a scenario asks for stripe.
                    overrides = {"GATEWAY": "simulator", **args.service_env, **dict(extra_env)}
                    with stack.running_service(
                        db, self.workdir, args.workers, overrides
                    ) as service:
                        self.log(
                            f"API on {service.base_url}, {args.workers} worker(s): "
                            f"{service.worker_pids()}"
                            + (
                                f" ({', '.join(f'{k}={v}' for k, v in extra_env)})"
                                if extra_env
                                else ""
                            )
                        )
                        if not extra_env:
                            self._prime(service)
                            self._capture_sql(server, service, result)
                        for name in names:
                            result["scenarios"][name] = self._scenario(SCENARIOS[name], service)
                if references:
                    with stack.running_reference(
                        db, self.workdir, args.workers, self.api_key, args.connections
                    ) as reference:
                        self.log(f"reference app on {reference.base_url}, {args.workers} worker(s)")
                        self._check_reference(reference)
                        for name in references:
                            row = self._scenario(SCENARIOS[name], reference)
                            result["scenarios"][name] = {**row, "reference": True}
                result["scenarios"] = {
                    name: result["scenarios"][name] for name in args.scenario_list
                }
                self.log("API stopped; measuring the ceiling with pgbench")
                needed = {SCENARIOS[name].ceiling for name in args.scenario_list}
                for script in ("charge", "point_read"):
                    if script in needed:
                        result["ceilings"][script] = self._ceiling(script)
        for row in result["scenarios"].values():
            ceiling_row = result["ceilings"].get(row["ceiling"])
            if ceiling_row and ceiling_row["tps"]:
                row["ratio"] = round(row["peak"]["rps"] / ceiling_row["tps"], 4)
        result["verdicts"] = report.verdicts(result)
        result["load_average"]["after"] = [round(x, 2) for x in os.getloadavg()]
        result["elapsed_seconds"] = round(time.monotonic() - t0, 1)
        return result

    # -- before the runs ------------------------------------------------------------------

    def _prime(self, service: stack.Service) -> None:
        """The replay scenario's request body, and one request to each read endpoint."""
        body = {
            "idempotency_key": f"bench-{self.run_id}-replay",
            "trip_id": REPLAY_TRIP_ID,
            "method": "CARD",
        }
        self.replay_body = json.dumps(body, separators=(",", ":"))
        with httpx.Client(base_url=service.base_url, timeout=10, headers=self.auth) as http:
            for path in ("/health", "/v1/payments/1", "/v1/payments?status=SUCCESS&limit=10"):
                response = http.get(path)
                response.raise_for_status()
                if path == REFERENCE_PATH:
                    self.primed_payment = response.content

    def _check_reference(self, reference: stack.Service) -> None:
        """The reference must answer what the service answered (same statement, same JSON),
        else its row would measure something else."""
        with httpx.Client(base_url=reference.base_url, timeout=10, headers=self.auth) as http:
            answer = http.get(REFERENCE_PATH)
        expected = self.primed_payment
        if answer.status_code != 200 or (expected is not None and answer.content != expected):
            raise BenchError(
                f"bench/reference_app.py answered GET {REFERENCE_PATH} with "
                f"{answer.status_code} {answer.content[:200]!r}, the service with {expected!r}"
            )

    def _capture_sql(
        self, server: stack.Postgres, service: stack.Service, result: dict[str, Any]
    ) -> None:
        """One request of each kind with the statement log on; check the pgbench scripts."""
        http = httpx.Client(base_url=service.base_url, timeout=10, headers=self.auth)
        headers = {"Content-Type": "application/json"}

        def charge() -> None:
            response = http.post("/v1/payments/charge", content=self.replay_body, headers=headers)
            if response.status_code != 201:
                raise BenchError(
                    f"the priming charge answered {response.status_code}: {response.text[:300]}"
                )
            self.replay_payment_id = int(response.json()["payment_id"])

        def replay() -> None:
            response = http.post("/v1/payments/charge", content=self.replay_body, headers=headers)
            if response.headers.get("Idempotent-Replayed") != "true":
                raise BenchError(f"the replay was not replayed ({response.status_code})")

        actions = {
            "charge": charge,
            "replay": replay,
            "get_payment": lambda: http.get(
                f"/v1/payments/{self.replay_payment_id}"
            ).raise_for_status(),
            "list_payments": lambda: http.get(
                "/v1/payments?status=SUCCESS&limit=10"
            ).raise_for_status(),
            "health": lambda: http.get("/health").raise_for_status(),
        }
        try:
            if not server.embedded or server.log_file is None:
                result["sql_check_skipped"] = (
                    "BENCH_DATABASE_URL: the server's log is not readable from here; "
                    "run without it (embedded PostgreSQL) to check bench/pgbench/*.sql"
                )
                charge()
                return

            def admin(*statements: str) -> None:
                asyncio.run(stack.admin_execute(server.admin_url, *statements))

            captures: dict[str, sqllog.Capture] = {}
            with sqllog.StatementLog(server.log_file, admin) as statement_log:
                for name, action in actions.items():
                    captures[name] = statement_log.capture(name, action)
            result["sql"] = {name: capture.as_json() for name, capture in captures.items()}
            result["round_trips"] = {
                name: capture.round_trips for name, capture in captures.items()
            }
            checks = [
                sqllog.check_script(ceiling.PGBENCH_DIR / "charge.sql", captures["charge"]),
                sqllog.check_script(
                    ceiling.PGBENCH_DIR / "point_read.sql", captures["get_payment"]
                ),
            ]
            result["sql_checks"] = [check.as_json() for check in checks]
            for check in checks:
                self.log(
                    f"SQL check {check.script}: "
                    + (
                        "matches the service's log"
                        if check.matches
                        else "DIFFERS from the service's log"
                    )
                )
            if self.args.show_sql:
                for name, capture in captures.items():
                    print(f"-- {name}: {capture.round_trips} round trips", file=sys.stderr)
                    for statement in capture.statements:
                        print(" ".join(statement.sql.split()), file=sys.stderr)
                        if statement.parameters:
                            print(f"--   parameters: {statement.parameters}", file=sys.stderr)
        finally:
            http.close()

    # -- one scenario ---------------------------------------------------------------------

    def _scenario(self, scenario: Scenario, service: stack.Service) -> dict[str, Any]:
        args = self.args
        row: dict[str, Any] = {"request": scenario.request, "ceiling": scenario.ceiling}
        if args.warmup > 0:
            self.log(f"{scenario.name}: warm-up {args.warmup:g} s")
            self._wrk(scenario, service, args.warmup)
        self._checkpoint()
        self.log(f"{scenario.name}: peak run {args.duration:g} s, {args.connections} connections")
        charging = scenario.script == "charge"
        before = self._charge_block() if charging else None
        meter = loadgen.CpuMeter(
            {
                "api": lambda: [service.api.pid],
                "sandbox": lambda: [service.sandbox.pid] if service.sandbox else [],
                "postgres": self.server.postmaster_pids,
            }
        )
        with loadgen.RssSampler(service.worker_pids) as rss, meter:
            peak = self._wrk(scenario, service, args.duration)
        row["peak"] = peak.as_json()
        row["cpu_cores"] = meter.cores
        if peak.requests:
            for group in ("api", "sandbox", "postgres"):
                row[f"{group}_cpu_ms_per_request"] = round(
                    meter.cpu_seconds[group] * 1000 / peak.requests, 3
                )
        row["max_rss_mb"] = rss.max_mb
        row["rss_mb_per_worker"] = rss.per_worker_mb()
        self.log(
            f"{scenario.name}: {peak.rps:,.1f} req/s, p99 {peak.latency_ms['p99']:.2f} ms, "
            f"non-2xx {peak.non_2xx}{_statuses(peak)}, socket errors "
            f"{peak.socket_error_count}, max RSS {rss.max_mb} MB"
        )
        if charging and before is not None:
            row["check"], row["outbox"] = self._charge_aftermath(before, peak)
        if args.paced_fraction > 0 and peak.rps >= 2:
            rate = peak.rps * args.paced_fraction
            self._checkpoint()
            self.log(f"{scenario.name}: paced run {args.paced_duration:g} s at {rate:,.1f} req/s")
            with loadgen.RssSampler(service.worker_pids) as paced_rss:
                paced = self._wrk(scenario, service, args.paced_duration, rate=rate)
            row["paced"] = paced.as_json()
            row["max_rss_mb"] = max(
                filter(None, [row["max_rss_mb"], paced_rss.max_mb]), default=None
            )
            self.log(
                f"{scenario.name}: paced {paced.rps:,.1f} req/s, "
                f"p99 {paced.latency_ms['p99']:.2f} ms, non-2xx {paced.non_2xx}{_statuses(paced)}"
            )
            if charging:
                self._drain_outbox()
        return row

    def _wrk(
        self, scenario: Scenario, service: stack.Service, duration: float, rate: float | None = None
    ) -> loadgen.WrkResult:
        env = {"BENCH_RUN_ID": self.run_id, "BENCH_API_KEY": self.api_key}
        if scenario.script == "charge":
            self.charge_runs += 1
            env["BENCH_TRIP_BASE"] = str(self.charge_runs * TRIP_BLOCK)
        elif scenario.name == "replay":
            env["BENCH_REPLAY_BODY"] = self.replay_body
        elif scenario.script == "get_payment":
            env["BENCH_IDS_FILE"] = str(self._ids_file())
        return loadgen.run_wrk(
            wrk=self.wrk,
            url=service.base_url,
            script=scenario.script,
            duration=duration,
            connections=self.args.connections,
            threads=self.args.threads,
            env=env,
            rate=rate,
        )

    def _charge_block(self) -> tuple[int, int]:
        """The trip-id range the next charge run will use."""
        first = (self.charge_runs + 1) * TRIP_BLOCK
        return first, first + TRIP_BLOCK

    def _charge_aftermath(
        self, block: tuple[int, int], peak: loadgen.WrkResult
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the charge run recorded (payments by status) and the outbox it left behind."""
        rows = self._query(
            "SELECT status, count(*) FROM payments "
            "WHERE trip_id >= $1 AND trip_id < $2 GROUP BY status",
            *block,
        )
        statuses = {str(status): int(count) for status, count in rows}  # type: ignore[call-overload]
        outbox = self._query(
            "SELECT count(*) FILTER (WHERE o.status = 'PENDING'), count(*) "
            "FROM notification_outbox o JOIN payments p ON p.id = o.payment_id "
            "WHERE p.trip_id >= $1 AND p.trip_id < $2",
            *block,
        )[0]
        pending, created = int(outbox[0]), int(outbox[1])  # type: ignore[call-overload]
        check = {
            "payments_created": sum(statuses.values()),
            "statuses": statuses,
            "answered_requests": peak.requests,
        }
        outbox_row: dict[str, Any] = {"created": created, "pending_at_end": pending}
        if not self._dispatcher_on():
            outbox_row["dispatcher"] = "off"
            self.log(f"charge: {check['payments_created']} payments recorded, dispatcher off")
            return check, outbox_row
        drained, seconds = self._drain_outbox()
        outbox_row["drained"] = drained
        outbox_row["drain_seconds"] = round(seconds, 1)
        if pending and seconds > 0:
            outbox_row["drain_rate_per_s"] = round(pending / seconds, 1)
        self.log(
            f"charge: {check['payments_created']} payments recorded, "
            f"outbox {pending}/{created} pending "
            f"at the end, drained in {seconds:.1f} s"
        )
        return check, outbox_row

    def _dispatcher_on(self) -> bool:
        setting = self.args.service_env.get("OUTBOX_ENABLED", "true").strip().lower()
        return setting not in {"false", "0", "no", "off"}

    def _drain_outbox(self) -> tuple[bool, float]:
        """Wait for the dispatcher to deliver every message (so it doesn't load the next run)."""
        if not self._dispatcher_on():
            return False, 0.0  # nothing will drain
        start = time.monotonic()
        while time.monotonic() - start < DRAIN_TIMEOUT_SECONDS:
            pending = self._query(
                "SELECT count(*) FROM notification_outbox WHERE status = 'PENDING'"
            )[0][0]
            if not pending:
                return True, time.monotonic() - start
            time.sleep(0.25)
        return False, time.monotonic() - start

    def _ids_file(self) -> Path:
        path = self.workdir / "payment_ids.txt"
        if not path.exists():
            ids = [row[0] for row in self._query("SELECT id FROM payments ORDER BY id")]
            path.write_text("\n".join(str(i) for i in ids) + "\n")
        return path

    def _query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        return asyncio.run(stack.fetch(self.db, sql, *params))

    def _checkpoint(self) -> None:
        """Start each measured run without a pending checkpoint (needs superuser; else skipped)."""
        with contextlib.suppress(Exception):
            asyncio.run(stack.admin_execute(self.db, "CHECKPOINT"))

    # -- the ceiling ----------------------------------------------------------------------

    def _ceiling(self, script: str) -> dict[str, Any]:
        args = self.args
        env = stack.libpq_env(self.db)
        if args.warmup > 0:
            self.log(f"pgbench {script}.sql: warm-up {args.warmup:g} s")
            self._pgbench(script, env, args.warmup)
        self._checkpoint()
        self.log(f"pgbench {script}.sql: {args.duration:g} s, {args.connections} clients")
        with loadgen.CpuMeter({"postgres": self.server.postmaster_pids}) as meter:
            result = self._pgbench(script, env, args.duration)
        self.log(
            f"pgbench {script}.sql: {result.tps:,.1f} tps, p99 {result.latency_ms['p99']:.2f} ms"
        )
        row = {**result.as_json(), "cpu_cores": meter.cores}
        if result.transactions:
            row["postgres_cpu_ms_per_tx"] = round(
                meter.cpu_seconds["postgres"] * 1000 / result.transactions, 3
            )
        return row

    def _pgbench(self, script: str, env: dict[str, str], duration: float) -> ceiling.PgbenchResult:
        self.pgbench_runs += 1
        if script == "charge":
            defines = {"n": "0", "base": str(self.pgbench_runs * PGBENCH_TRIP_BLOCK)}
        else:
            low, high = self._query("SELECT min(id), max(id) FROM payments")[0]
            defines = {"min_id": str(low), "max_id": str(high)}
        return ceiling.run_pgbench(
            pgbench=self.pgbench,
            script=script,
            clients=self.args.connections,
            threads=self.args.threads,
            duration=duration,
            env=env,
            defines=defines,
            logdir=self.workdir / "pgbench",
            tag=f"{script}_{self.pgbench_runs}",
        )


def _statuses(run: loadgen.WrkResult) -> str:
    """` (503: 2, 409: 1)` after a non-2xx count, so a failure says what it was."""
    if not run.failed_statuses:
        return ""
    counts = ", ".join(f"{code}: {n}" for code, n in sorted(run.failed_statuses.items()))
    return f" ({counts})"
