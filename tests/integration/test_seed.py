"""The seed loader: the project's file, the upstream fixture, re-runs, malformed files, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from payment_service.services.seed import SeedFileError, SeedReport, load_seed, parse_seed_file
from tests.conftest import ROOT, SEED_FILE, SHARED_FIXTURE

CLI = Path(sys.executable).parent / "payment-service"
HEADER = "payment_id,trip_id,amount,method,status,reference,created_at"
GOOD_ROWS = [
    "1,101,99.01,CARD,FAILED,RHP-T-0001,2024-12-02 21:01:06",
    "2,101,53.09,CARD,SUCCESS,RHP-T-0002,2024-12-02 21:05:00",
    "3,103,65.4,UPI,PENDING,RHP-T-0003,2025-02-02T19:21:05",
]
needs_shared_fixture = pytest.mark.skipif(
    not SHARED_FIXTURE.is_file(), reason=f"{SHARED_FIXTURE} is not present"
)


async def _load(engine: AsyncEngine, path: Path) -> SeedReport:
    async with AsyncSession(engine) as session, session.begin():
        return await load_seed(session, path)


async def _count(engine: AsyncEngine, table: str = "payments") -> int:
    async with engine.connect() as connection:
        return await connection.scalar(text(f"SELECT count(*) FROM {table}"))  # type: ignore[return-value]


def _csv(tmp_path: Path, *lines: str, name: str = "payments.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_project_seed_file_loads_350_rows(empty_db: AsyncEngine) -> None:
    """seeds/rhfd_payments.csv loads 350 payments with one SEEDED event each."""
    report = await _load(empty_db, SEED_FILE)

    assert (report.rows, report.loaded, report.skipped, report.max_payment_id) == (
        350,
        350,
        0,
        350,
    )
    assert await _count(empty_db) == 350
    assert await _count(empty_db, "payment_events") == 350


@needs_shared_fixture
async def test_shared_fixture_loads_with_the_upstream_status_mix(empty_db: AsyncEngine) -> None:
    """The upstream file loads 350 rows: 71 SUCCESS, 145 FAILED, 134 PENDING."""
    report = await _load(empty_db, SHARED_FIXTURE)

    assert (report.loaded, report.skipped) == (350, 0)
    async with empty_db.connect() as connection:
        by_status = dict(
            (
                await connection.execute(
                    text("SELECT status, count(*) FROM payments GROUP BY status")
                )
            ).all()
        )
    assert by_status == {"SUCCESS": 71, "FAILED": 145, "PENDING": 134}


@needs_shared_fixture
async def test_shared_fixture_payment_1_is_99_01_card_failed(empty_db: AsyncEngine) -> None:
    """Payment 1 of the upstream file is 99.01, CARD, FAILED, with its created_at in UTC."""
    await _load(empty_db, SHARED_FIXTURE)

    async with empty_db.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT trip_id, amount, method, status, "
                    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS created "
                    "FROM payments WHERE id = 1"
                )
            )
        ).one()
    assert row.amount == Decimal("99.01")
    assert (row.trip_id, row.method, row.status, row.created) == (
        1,
        "CARD",
        "FAILED",
        "2023-10-18 22:02:52",
    )


async def test_loading_twice_skips_everything_and_duplicates_nothing(
    empty_db: AsyncEngine,
) -> None:
    """A second run reports 0 loaded / 350 skipped and adds no payments or events."""
    await _load(empty_db, SEED_FILE)

    report = await _load(empty_db, SEED_FILE)

    assert (report.rows, report.loaded, report.skipped) == (350, 0, 350)
    assert await _count(empty_db) == 350
    assert await _count(empty_db, "payment_events") == 350


async def test_id_sequence_continues_past_the_largest_seeded_id(empty_db: AsyncEngine) -> None:
    """After seeding, a payment inserted without an id gets max(id) + 1 = 351."""
    await _load(empty_db, SEED_FILE)

    async with empty_db.begin() as connection:
        new_id = await connection.scalar(
            text(
                "INSERT INTO payments (trip_id, amount, method, status, reference) "
                "VALUES (9000001, 10.00, 'CASH', 'SUCCESS', 'SEQ-CHECK-1') RETURNING id"
            )
        )
    assert new_id == 351


async def test_id_sequence_follows_the_largest_id_of_a_sparse_file(
    empty_db: AsyncEngine, tmp_path: Path
) -> None:
    """A file whose ids jump to 7000 moves the sequence past 7000, not past the row count."""
    path = _csv(
        tmp_path,
        HEADER,
        "5,201,10.00,CARD,SUCCESS,SPARSE-1,2024-01-01 00:00:00",
        "7000,202,11.00,UPI,SUCCESS,SPARSE-2,2024-01-02 00:00:00",
    )
    await _load(empty_db, path)

    async with empty_db.begin() as connection:
        new_id = await connection.scalar(
            text(
                "INSERT INTO payments (trip_id, amount, method, status, reference) "
                "VALUES (9000002, 1.00, 'CASH', 'SUCCESS', 'SEQ-CHECK-2') RETURNING id"
            )
        )
    assert new_id == 7001


async def test_header_only_file_on_empty_table_keeps_ids_starting_at_1(
    empty_db: AsyncEngine, tmp_path: Path
) -> None:
    """Seeding a file with no rows into an empty table reports 0 loaded; the next id is still 1."""
    report = await _load(empty_db, _csv(tmp_path, HEADER))

    assert (report.rows, report.loaded, report.max_payment_id) == (0, 0, None)
    async with empty_db.begin() as connection:
        new_id = await connection.scalar(
            text(
                "INSERT INTO payments (trip_id, amount, method, status, reference) "
                "VALUES (9000003, 1.00, 'CASH', 'SUCCESS', 'SEQ-CHECK-3') RETURNING id"
            )
        )
    assert new_id == 1


async def test_valid_small_file_keeps_exact_amounts_and_utc_times(
    empty_db: AsyncEngine, tmp_path: Path
) -> None:
    """Amounts are stored exactly (65.4 → 65.40) and naive times are taken as UTC."""
    await _load(empty_db, _csv(tmp_path, HEADER, *GOOD_ROWS))

    async with empty_db.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT id, amount, to_char(created_at AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD HH24:MI:SS') AS created FROM payments ORDER BY id"
                )
            )
        ).all()
    assert [(r.id, r.amount, r.created) for r in rows] == [
        (1, Decimal("99.01"), "2024-12-02 21:01:06"),
        (2, Decimal("53.09"), "2024-12-02 21:05:00"),
        (3, Decimal("65.40"), "2025-02-02 19:21:05"),
    ]


# Valid rows whose ids and trips no other test uses, so a partial load would show in the count.
BAD_ROWS = [
    "800001,8000101,99.01,CARD,FAILED,BAD-0001,2024-12-02 21:01:06",
    "800002,8000101,53.09,CARD,SUCCESS,BAD-0002,2024-12-02 21:05:00",
    "800003,8000103,65.4,UPI,PENDING,BAD-0003,2025-02-02T19:21:05",
]


def _replace_row(index: int, row: str) -> list[str]:
    """BAD_ROWS with one row replaced."""
    rows = list(BAD_ROWS)
    rows[index] = row
    return rows


MALFORMED = {
    "bad amount": (
        [HEADER, *_replace_row(2, "800003,8000103,12.x,UPI,PENDING,BAD-0003,2025-02-02 19:21:05")],
        4,
        "amount",
    ),
    "three decimals": (
        [
            HEADER,
            *_replace_row(1, "800002,8000102,53.091,CARD,SUCCESS,BAD-0002,2024-12-02 21:05:00"),
        ],
        3,
        "amount",
    ),
    "negative amount": (
        [
            HEADER,
            *_replace_row(1, "800002,8000102,-1.00,CARD,SUCCESS,BAD-0002,2024-12-02 21:05:00"),
        ],
        3,
        "amount",
    ),
    "unknown method": (
        [
            HEADER,
            *_replace_row(0, "800001,8000101,99.01,CHEQUE,FAILED,BAD-0001,2024-12-02 21:01:06"),
        ],
        2,
        "method",
    ),
    "unknown status": (
        [HEADER, *_replace_row(0, "800001,8000101,99.01,CARD,PAID,BAD-0001,2024-12-02 21:01:06")],
        2,
        "status",
    ),
    "bad date": (
        [HEADER, *_replace_row(2, "800003,8000103,65.40,UPI,PENDING,BAD-0003,2025-13-45 10:00")],
        4,
        "created_at",
    ),
    "non-numeric payment id": (
        [HEADER, *_replace_row(1, "two,8000102,53.09,CARD,SUCCESS,BAD-0002,2024-12-02 21:05:00")],
        3,
        "payment_id",
    ),
    "duplicate payment id": (
        [HEADER, *_replace_row(2, "800002,8000103,65.40,UPI,PENDING,BAD-0003,2025-02-02 19:21:05")],
        4,
        "payment_id",
    ),
    "two live payments for one trip": (
        [HEADER, *_replace_row(2, "800003,8000101,65.40,UPI,PENDING,BAD-0003,2025-02-02 19:21:05")],
        4,
        "trip_id",
    ),
    "wrong field count": (
        [HEADER, *_replace_row(1, "800002,8000102,53.09,CARD,SUCCESS,BAD-0002")],
        3,
        None,
    ),
    "missing column in header": (
        [
            "payment_id,trip_id,method,status,reference,created_at",
            "800001,8000101,CARD,FAILED,R1,2024-01-01",
        ],
        1,
        None,
    ),
}


@pytest.mark.parametrize(("lines", "line", "column"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_file_names_line_and_column_and_loads_nothing(
    engine: AsyncEngine,
    tmp_path: Path,
    lines: list[str],
    line: int,
    column: str | None,
) -> None:
    """A malformed row raises SeedFileError naming its line (and column); no row is loaded."""
    path = _csv(tmp_path, *lines)
    before = await _count(engine)

    with pytest.raises(SeedFileError) as caught:
        await _load(engine, path)

    error = caught.value
    assert (error.line, error.column) == (line, column)
    assert f"line {line}" in str(error)
    if column:
        assert f"column {column}" in str(error)
    assert "\n" not in str(error)
    assert await _count(engine) == before


async def test_missing_header_column_is_named_in_the_error(tmp_path: Path) -> None:
    """A header without `amount` is rejected with a message naming `amount`."""
    path = _csv(tmp_path, "payment_id,trip_id,method,status,reference,created_at")

    with pytest.raises(SeedFileError, match=r"line 1: header lacks amount"):
        parse_seed_file(path)


async def test_bad_row_after_good_rows_loads_none_of_them(
    empty_db: AsyncEngine, tmp_path: Path
) -> None:
    """Good rows before a bad one are not loaded: all or nothing."""
    path = _csv(
        tmp_path,
        HEADER,
        *GOOD_ROWS,
        "4,104,1.00,CARD,SUCCESS,RHP-T-0004,yesterday",
    )

    with pytest.raises(SeedFileError, match="line 5, column created_at"):
        await _load(empty_db, path)

    assert await _count(empty_db) == 0
    assert await _count(empty_db, "payment_events") == 0


async def test_row_conflicting_with_another_payment_in_the_database_is_rejected(
    empty_db: AsyncEngine, tmp_path: Path
) -> None:
    """A new payment id whose trip already has a live payment in the DB is an error, not a skip."""
    await _load(empty_db, _csv(tmp_path, HEADER, "1,301,10.00,CARD,SUCCESS,LIVE-1,2024-01-01"))
    clash = _csv(tmp_path, HEADER, "2,301,20.00,UPI,SUCCESS,LIVE-2,2024-01-02", name="clash.csv")

    with pytest.raises(SeedFileError, match="line 2"):
        await _load(empty_db, clash)

    assert await _count(empty_db) == 1


# --- the CLI (real console script, real database) ---


def _run_cli(tmp_path: Path, *args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run `payment-service ARGS` with only DATABASE_URL configured, from an empty directory."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "ALEMBIC_CONFIG": str(ROOT / "alembic.ini"),
    }
    return subprocess.run(
        [str(CLI), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_shared_fixture
async def test_cli_seed_loads_the_shared_fixture(
    empty_db: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """`payment-service seed --file <shared fixture>` exits 0 and reports 350 loaded."""
    result = _run_cli(tmp_path, "seed", "--file", str(SHARED_FIXTURE), database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert "350 rows, 350 loaded, 0 skipped" in result.stdout
    assert await _count(empty_db) == 350


async def test_cli_seed_with_malformed_file_fails_with_one_line(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """`payment-service seed --file <bad>` exits non-zero with one `error:` line; nothing loaded."""
    path = _csv(tmp_path, *MALFORMED["bad amount"][0], name="bad.csv")
    before = await _count(engine)

    result = _run_cli(tmp_path, "seed", "--file", str(path), database_url=database_url)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "line 4, column amount" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert await _count(engine) == before


def test_cli_migrate_with_unreachable_database_fails_with_one_line(tmp_path: Path) -> None:
    """`payment-service migrate` against a closed port exits non-zero with one `error:` line."""
    result = _run_cli(
        tmp_path, "migrate", database_url="postgresql://postgres@127.0.0.1:1/payments"
    )

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "127.0.0.1:1" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
