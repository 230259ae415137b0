"""Loading a payments CSV of the seed format, all or nothing.

The whole file is parsed and checked first (a bad row is reported with its line
and column, and nothing is loaded); then one transaction inserts the rows,
skipping any that already exist, and moves the id sequence past the largest id.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.models import Payment, PaymentEvent
from payment_service.models.enums import PaymentMethod, PaymentStatus

COLUMNS = ("payment_id", "trip_id", "amount", "method", "status", "reference", "created_at")
SEEDABLE_STATUSES = {PaymentStatus.SUCCESS, PaymentStatus.FAILED, PaymentStatus.PENDING}
MAX_AMOUNT = Decimal("9999999999.99")


class SeedFileError(ValueError):
    """A malformed seed file; names the line and column."""

    def __init__(self, path: Path, line: int, column: str | None, message: str) -> None:
        where = f"line {line}" + (f", column {column}" if column else "")
        super().__init__(f"{path}: {where}: {message}")
        self.line = line
        self.column = column


@dataclass(frozen=True)
class SeedReport:
    rows: int
    loaded: int
    skipped: int
    max_payment_id: int | None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _amount(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{raw!r} is not a decimal amount") from None
    if not value.is_finite() or value < 0 or value > MAX_AMOUNT:
        raise ValueError(f"{raw!r} is out of range")
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError(f"{raw!r} has more than two decimals")
    return value.quantize(Decimal("0.01"))


def _created_at(raw: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a date-time like 2024-01-31 12:00:00") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _choice(allowed: set[str]) -> Any:
    def parse(raw: str) -> str:
        value = raw.strip().upper()
        if value not in allowed:
            raise ValueError(f"{raw!r} is not one of {', '.join(sorted(allowed))}")
        return value

    return parse


def _reference(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 64:
        raise ValueError("must be 1..64 characters")
    return value


PARSERS: dict[str, Any] = {
    "payment_id": _positive_int,
    "trip_id": _positive_int,
    "amount": _amount,
    "method": _choice({m.value for m in PaymentMethod}),
    "status": _choice({s.value for s in SEEDABLE_STATUSES}),
    "reference": _reference,
    "created_at": _created_at,
}


def parse_seed_file(path: Path) -> list[dict[str, Any]]:
    """Parse and check every row; raise SeedFileError on the first problem."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SeedFileError(path, 0, None, f"cannot read file: {exc.strerror}") from None
    rows: list[dict[str, Any]] = []
    seen_ids: dict[int, int] = {}
    seen_refs: dict[str, int] = {}
    live_trips: dict[int, int] = {}
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise SeedFileError(path, 1, None, "the file is empty")
        header = [name.strip() for name in header]
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise SeedFileError(path, 1, None, f"header lacks {', '.join(missing)}")
        index = {name: header.index(name) for name in COLUMNS}
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise SeedFileError(
                    path, line, None, f"expected {len(header)} fields, found {len(record)}"
                )
            row: dict[str, Any] = {}
            for name in COLUMNS:
                try:
                    row[name] = PARSERS[name](record[index[name]])
                except ValueError as exc:
                    raise SeedFileError(path, line, name, str(exc)) from None
            for key, seen, column in (
                (row["payment_id"], seen_ids, "payment_id"),
                (row["reference"], seen_refs, "reference"),
            ):
                if key in seen:
                    raise SeedFileError(path, line, column, f"duplicate of line {seen[key]}")
                seen[key] = line
            if row["status"] != PaymentStatus.FAILED:
                if row["trip_id"] in live_trips:
                    raise SeedFileError(
                        path,
                        line,
                        "trip_id",
                        f"trip {row['trip_id']} already has a live payment on line "
                        f"{live_trips[row['trip_id']]}",
                    )
                live_trips[row["trip_id"]] = line
            row["_line"] = line
            rows.append(row)
    return rows


async def _check_against_database(
    session: AsyncSession, path: Path, rows: list[dict[str, Any]]
) -> None:
    """Rows that are new (by id) must not collide with other payments already stored.

    A row whose id exists is "already present" and skipped; a new id whose trip already
    has a live payment, or whose reference is taken, is an error naming its line.
    """
    existing = set(
        (
            await session.scalars(
                select(Payment.id).where(Payment.id.in_([row["payment_id"] for row in rows]))
            )
        ).all()
    )
    new_rows = [row for row in rows if row["payment_id"] not in existing]
    if not new_rows:
        return
    live_trips = {
        trip_id: payment_id
        for trip_id, payment_id in (
            await session.execute(
                select(Payment.trip_id, Payment.id).where(
                    Payment.status != PaymentStatus.FAILED.value,
                    Payment.trip_id.in_(
                        [row["trip_id"] for row in new_rows if row["status"] != "FAILED"]
                    ),
                )
            )
        ).all()
    }
    references = {
        reference: payment_id
        for reference, payment_id in (
            await session.execute(
                select(Payment.reference, Payment.id).where(
                    Payment.reference.in_([row["reference"] for row in new_rows])
                )
            )
        ).all()
    }
    for row in new_rows:
        line = row["_line"]
        if row["status"] != "FAILED" and row["trip_id"] in live_trips:
            raise SeedFileError(
                path,
                line,
                "trip_id",
                f"trip {row['trip_id']} already has live payment {live_trips[row['trip_id']]}",
            )
        if row["reference"] in references:
            raise SeedFileError(
                path,
                line,
                "reference",
                f"reference already used by payment {references[row['reference']]}",
            )


async def load_seed(session: AsyncSession, path: Path) -> SeedReport:
    """Insert the file's rows in the caller's transaction; rows whose id exists are skipped."""
    rows = parse_seed_file(path)
    await _check_against_database(session, path, rows)
    loaded_ids: list[int] = []
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        result = await session.execute(
            insert(Payment)
            .values(
                [
                    {
                        "id": row["payment_id"],
                        "trip_id": row["trip_id"],
                        "amount": row["amount"],
                        "method": row["method"],
                        "status": row["status"],
                        "reference": row["reference"],
                        "created_at": row["created_at"],
                        "updated_at": row["created_at"],
                    }
                    for row in chunk
                ]
            )
            .on_conflict_do_nothing(index_elements=[Payment.id])
            .returning(Payment.id, Payment.status, Payment.amount)
        )
        inserted = result.all()
        loaded_ids.extend(row.id for row in inserted)
        if inserted:
            await session.execute(
                insert(PaymentEvent).values(
                    [
                        {
                            "payment_id": row.id,
                            "event_type": "SEEDED",
                            "to_status": row.status,
                            "amount": row.amount,
                            "data": {"source": path.name},
                        }
                        for row in inserted
                    ]
                )
            )
    # The next id is max(id) + 1 (1 on an empty table): is_called=false makes
    # nextval return exactly the value set.
    await session.execute(
        text(
            "SELECT setval(pg_get_serial_sequence('payments', 'id'), "
            "COALESCE((SELECT max(id) FROM payments), 0) + 1, false)"
        )
    )
    max_id = await session.scalar(select(func.max(Payment.id)))
    return SeedReport(
        rows=len(rows),
        loaded=len(loaded_ids),
        skipped=len(rows) - len(loaded_ids),
        max_payment_id=max_id,
    )


SEED_DATA = Path(__file__).resolve().parents[1] / "seeds"
"""The seed CSVs shipped in the package (a checkout's seeds/*.csv link to them)."""


def default_seed_file() -> Path:
    """seeds/rhfd_payments.csv of the working directory, else the one in the package."""
    candidate = Path.cwd() / "seeds" / "rhfd_payments.csv"
    return candidate if candidate.is_file() else SEED_DATA / "rhfd_payments.csv"
