"""`payment-service settlement` and `payment-service reconcile` against the ledger."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.conftest import hermetic_env, plain_url, run_cli

CAPTURED = """
WITH p AS (
    INSERT INTO payments (trip_id, driver_id, amount, method, status, reference,
                          gateway_idempotency_key)
    VALUES (:trip, :driver, :amount, 'CARD', 'SUCCESS', :ref, :key) RETURNING id
), j AS (
    INSERT INTO ledger_journals (entry_type, payment_kind, payment_id, trip_id, driver_id,
                                 amount)
    SELECT 'CAPTURE', 'FARE', id, :trip, :driver, :amount FROM p RETURNING id
)
INSERT INTO ledger_lines (journal_id, account, amount)
SELECT id, 'processor:clearing', :amount FROM j
UNION ALL SELECT id, 'driver:' || :driver, -(:amount - :commission) FROM j
UNION ALL SELECT id, 'platform:commission', -:commission FROM j
"""


async def test_settlement_csv_and_reconcile_follow_the_ledger(
    e2e_database: URL, e2e_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with e2e_engine.begin() as connection:
        for trip, driver, amount, commission in (
            (9_100_001, 501, "10.00", "2.00"),
            (9_100_002, 501, "20.05", "4.01"),
            (9_100_003, 502, "7.50", "1.50"),
        ):
            await connection.execute(
                text(CAPTURED),
                {
                    "trip": trip,
                    "driver": driver,
                    "amount": amount,
                    "commission": commission,
                    "ref": f"E2E-{trip}",
                    "key": f"payment-e2e-{trip}",
                },
            )
    env = hermetic_env(
        DATABASE_URL=plain_url(e2e_database), LOG_LEVEL="WARNING", GATEWAY="simulator"
    )
    today = datetime.now(UTC).date().isoformat()
    out = tmp_path / "settlement.csv"
    result = await run_cli("settlement", "--date", today, "--out", str(out), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["driver_id"], r["gross_fares"], r["commission"], r["net"]) for r in rows] == [
        ("501", "30.05", "6.01", "24.04"),
        ("502", "7.50", "1.50", "6.00"),
        ("TOTAL", "37.55", "7.51", "30.04"),
    ]

    clean = await run_cli("reconcile", env=env, cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 differences" in clean.stdout

    async with e2e_engine.begin() as connection:  # captured, but no journal
        await connection.execute(
            text(
                "INSERT INTO payments (trip_id, amount, method, status, reference, "
                "gateway_idempotency_key) VALUES (9100004, 5, 'CARD', 'SUCCESS', 'E2E-4', 'k-4')"
            )
        )
    dirty = await run_cli("reconcile", env=env, cwd=tmp_path)
    assert dirty.returncode == 1
    assert "ledger: 0 capture journals" in dirty.stdout
    bad_date = await run_cli("settlement", "--date", "yesterday", env=env, cwd=tmp_path)
    assert bad_date.returncode != 0 and "YYYY-MM-DD" in bad_date.stderr
