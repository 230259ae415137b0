"""The run's results: one Markdown table, the verdicts against the targets, a JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

TARGETS = {
    "charge_ratio": 0.30,
    "point_read_ratio": 0.10,
    "paced_p99_ms": 25.0,
    "rss_mb": 150.0,
}
CPU_TARGETS_MS = {
    "floor": 0.15,
    "health": 0.3,
    "get_payment": 0.5,
    "list_payments": 1.0,
    "charge": 3.0,
}
"""Issue 10: API CPU per request (ms) by scenario."""
RATIO_TARGETS = {"charge": TARGETS["charge_ratio"], "get_payment": TARGETS["point_read_ratio"]}


def scenario_targets(name: str, row: dict[str, Any]) -> list[tuple[str, bool]]:
    """Each target that applies to one scenario's row: (short label, met)."""
    out: list[tuple[str, bool]] = []
    cpu = row.get("api_cpu_ms_per_request")
    if name in CPU_TARGETS_MS and cpu is not None:
        out.append((f"cpu≤{CPU_TARGETS_MS[name]:g}", cpu <= CPU_TARGETS_MS[name]))
    if name in RATIO_TARGETS and row.get("ratio") is not None:
        out.append((f"≥{RATIO_TARGETS[name] * 100:.0f}%", row["ratio"] >= RATIO_TARGETS[name]))
    paced = row.get("paced")
    if paced:
        out.append(("p99<25", paced["latency_ms"]["p99"] < TARGETS["paced_p99_ms"]))
    out.append(("0 err", run_errors(row) == 0))
    if row.get("max_rss_mb"):
        out.append(("RSS≤150", row["max_rss_mb"] <= TARGETS["rss_mb"]))
    return out


def _runs(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [row["peak"], *([row["paced"]] if row.get("paced") else [])]


def run_non_2xx(row: dict[str, Any]) -> int:
    """Non-2xx answers of a scenario, its peak and paced runs together."""
    return sum(int(run["non_2xx"]) for run in _runs(row))


def run_errors(row: dict[str, Any]) -> int:
    """Non-2xx answers and socket errors of a scenario, its peak and paced runs together."""
    return run_non_2xx(row) + sum(sum(run["socket_errors"].values()) for run in _runs(row))


def failed_statuses(row: dict[str, Any]) -> dict[str, int]:
    """Each non-2xx status and how often it came, over the scenario's runs."""
    total: dict[str, int] = {}
    for run in _runs(row):
        for code, count in (run.get("failed_statuses") or {}).items():
            total[code] = total.get(code, 0) + int(count)
    return total


def _marks(targets: list[tuple[str, bool]]) -> str:
    return " ".join(f"{label} {'✓' if met else '✗'}" for label, met in targets) or "—"


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, kernel: what the figures were measured on."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu_model = platform.processor()
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu_model": cpu_model,
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


HEADER = (
    "| scenario | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors "
    "| max RSS/worker MB | API CPU ms/req | sandbox ms/req | PG ms/req "
    "| ceiling (pgbench) | ceiling tps | service/ceiling "
    "| ½-peak req/s | ½-peak p99 ms | targets |"
)


def markdown_table(result: dict[str, Any]) -> str:
    lines = [HEADER, _separator()]
    ceilings = result.get("ceilings", {})
    for name, row in result["scenarios"].items():
        peak = row["peak"]
        paced = row.get("paced")
        ceiling_name = row.get("ceiling")
        ceiling = ceilings.get(ceiling_name) if ceiling_name else None
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{name} (reference)" if row.get("reference") else name,
                    _fmt(peak["rps"]),
                    _fmt(peak["latency_ms"]["p50"], 2),
                    _fmt(peak["latency_ms"]["p90"], 2),
                    _fmt(peak["latency_ms"]["p99"], 2),
                    _fmt(run_non_2xx(row)),
                    _fmt(run_errors(row) - run_non_2xx(row)),
                    _fmt(row.get("max_rss_mb")),
                    _fmt(row.get("api_cpu_ms_per_request"), 2),
                    _fmt(row.get("sandbox_cpu_ms_per_request"), 2),
                    _fmt(row.get("postgres_cpu_ms_per_request"), 2),
                    f"{ceiling_name}.sql" if ceiling else "—",
                    _fmt(ceiling["tps"]) if ceiling else "—",
                    _pct(row.get("ratio")),
                    _fmt(paced["rps"]) if paced else "—",
                    _fmt(paced["latency_ms"]["p99"], 2) if paced else "—",
                    _marks(scenario_targets(name, row)),
                ]
            )
            + " |"
        )
    for ceiling in ceilings.values():
        latency = ceiling["latency_ms"]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"pgbench {ceiling['script']}",
                    _fmt(ceiling["tps"]),
                    _fmt(latency["p50"], 2),
                    _fmt(latency["p90"], 2),
                    _fmt(latency["p99"], 2),
                    f"{ceiling['failed']} failed tx",
                    "—",
                    "—",
                    "—",
                    "—",
                    _fmt(ceiling.get("postgres_cpu_ms_per_tx"), 2),
                    "(the ceiling)",
                    _fmt(ceiling["tps"]),
                    "100%",
                    "—",
                    "—",
                    "—",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _separator() -> str:
    columns = HEADER.count("|") - 1
    return "|" + "|".join(["---"] + ["---:"] * (columns - 1)) + "|"


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the run stands against the targets (issues 5 and 10)."""
    scenarios = result["scenarios"]
    out: list[dict[str, Any]] = []

    charge = scenarios.get("charge")
    if charge and charge.get("ratio") is not None:
        errors = run_errors(charge)
        out.append(
            {
                "target": "charge >= 30% of its pgbench ceiling, zero errors",
                "measured": f"{_pct(charge['ratio'])}, {errors} errors",
                "met": charge["ratio"] >= TARGETS["charge_ratio"] and errors == 0,
            }
        )
    failing = {name: run_errors(row) for name, row in scenarios.items() if run_errors(row)}
    out.append(
        {
            "target": "zero non-2xx and socket errors in every run (peak and paced)",
            "measured": ", ".join(
                f"{name} {count} ({failed_statuses(scenarios[name]) or 'socket errors'})"
                for name, count in failing.items()
            )
            or "none",
            "met": not failing,
        }
    )
    read = scenarios.get("get_payment")
    if read and read.get("ratio") is not None:
        out.append(
            {
                "target": "point reads >= 10% of the read ceiling",
                "measured": _pct(read["ratio"]),
                "met": read["ratio"] >= TARGETS["point_read_ratio"],
            }
        )
    paced = {name: row["paced"] for name, row in scenarios.items() if row.get("paced")}
    if paced:
        worst = max(paced.items(), key=lambda item: item[1]["latency_ms"]["p99"])
        detail = ", ".join(f"{name} {row['latency_ms']['p99']:.1f}" for name, row in paced.items())
        out.append(
            {
                "target": "p99 < 25 ms at half the peak rate",
                "measured": f"p99 ms: {detail} (worst: {worst[0]})",
                "met": worst[1]["latency_ms"]["p99"] < TARGETS["paced_p99_ms"],
            }
        )
    for name, limit in CPU_TARGETS_MS.items():
        row = scenarios.get(name)
        if row and row.get("api_cpu_ms_per_request") is not None:
            out.append(
                {
                    "target": f"{name}: API CPU <= {limit:g} ms per request",
                    "measured": f"{row['api_cpu_ms_per_request']:.2f} ms",
                    "met": row["api_cpu_ms_per_request"] <= limit,
                }
            )
    rss = [row["max_rss_mb"] for row in scenarios.values() if row.get("max_rss_mb")]
    if rss:
        out.append(
            {
                "target": "<= 150 MB RSS per worker",
                "measured": f"max {max(rss):.1f} MB",
                "met": max(rss) <= TARGETS["rss_mb"],
            }
        )
    return out


def render(result: dict[str, Any]) -> str:
    """The table plus the lines that say what it was measured with and against."""
    config = result["config"]
    host = result["machine"]
    lines = [
        f"## Benchmark {result['started_at']} — {host['nproc']} × {host['cpu_model']}, "
        f"{host['memory_mb']} MB RAM",
        "",
        f"{config['workers']} uvicorn workers, "
        f"wrk -t{config['threads']} -c{config['connections']}, "
        f"{config['duration']:g} s per scenario (warm-up {config['warmup']:g} s), "
        f"pgbench -M prepared "
        f"-c{config['connections']} -j{config['threads']} -T{config['duration']:g}; "
        f"PostgreSQL {result['postgres']['version']} ({result['postgres']['kind']})."
        + (
            " Service settings changed for this run: "
            + ", ".join(f"{k}={v}" for k, v in config["service_env"].items())
            if config.get("service_env")
            else ""
        ),
        "",
        markdown_table(result),
        "",
    ]
    load = result.get("load_average")
    if load:
        lines.append(
            f"- load average (1/5/15 min) before {load['before']}, after {load.get('after')}: "
            "wrk, pgbench, the API and PostgreSQL share these cores (so do other processes)"
        )
    charge = result["scenarios"].get("charge")
    if charge:
        check = charge.get("check", {})
        lines.append(
            f"- charge: zero non-2xx: {'yes' if run_non_2xx(charge) == 0 else 'NO'}; "
            f"payments recorded {check.get('payments_created', '?')} for "
            f"{charge['peak']['requests']} answered requests "
            f"(statuses {check.get('statuses', {})})"
        )
        outbox = charge.get("outbox")
        if outbox and outbox.get("dispatcher") == "off":
            lines.append(f"- outbox: {outbox['created']} messages written, dispatcher off")
        elif outbox:
            lines.append(
                f"- outbox: {outbox['pending_at_end']} of {outbox['created']} messages still "
                f"pending when the charge run ended; drained in "
                f"{_fmt(outbox.get('drain_seconds'))} s"
                + ("" if outbox.get("drained", True) else " (NOT drained in time)")
            )
    for check in result.get("sql_checks", []):
        state = "matches" if check["matches"] else "DIFFERS from"
        lines.append(
            f"- SQL check: {check['script']} {state} the service's SQL log for {check['scenario']} "
            f"({check['service_statements']} statements = round trips)"
        )
        for diff in check["differences"][:12]:
            lines.append(f"    {diff}")
    if result.get("sql_check_skipped"):
        lines.append(f"- SQL check skipped: {result['sql_check_skipped']}")
    ncpu = host.get("nproc")
    cpu_rows = [
        (name, row["cpu_cores"])
        for name, row in [*result["scenarios"].items(), *result.get("ceilings", {}).items()]
        if row.get("cpu_cores")
    ]
    if cpu_rows:
        lines.append(
            f"- CPU busy during the measured runs (cores, of {ncpu}): "
            + "; ".join(
                f"{name}: " + ", ".join(f"{group} {cores:.2f}" for group, cores in cores_by.items())
                for name, cores_by in cpu_rows
            )
        )
    per_request = {
        name: row["api_cpu_ms_per_request"]
        for name, row in result["scenarios"].items()
        if row.get("api_cpu_ms_per_request") is not None
    }
    if per_request:
        lines.append(
            "- API CPU per request (ms, workers + dispatcher): "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in per_request.items())
        )
    bare, read = result["scenarios"].get("bare_get"), result["scenarios"].get("get_payment")
    if bare and read and bare["peak"]["rps"]:
        lines.append(
            f"- get_payment answered {read['peak']['rps'] / bare['peak']['rps']:.0%} of the bare "
            f"reference's rate ({_fmt(read['peak']['rps'])} against "
            f"{_fmt(bare['peak']['rps'])} req/s; the reference reaches "
            f"{_pct(bare.get('ratio'))} of the point-read ceiling)"
        )
    round_trips = result.get("round_trips")
    if round_trips:
        lines.append(
            "- database round trips per request: "
            + ", ".join(f"{name} {count}" for name, count in round_trips.items())
        )
    lines.append("")
    lines.append("Targets (issues 5 and 10):")
    for verdict in result.get("verdicts", []):
        mark = "✓ met" if verdict["met"] else "✗ NOT met"
        lines.append(f"- {verdict['target']}: {verdict['measured']} — {mark}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
