"""Generate the project's own seed data: ``rhfd_payments.csv`` and ``rhfd_trips.csv``.

Why this exists: the upstream dataset (``../shared/fixtures/rhfd_payments.csv``) must
not be copied into the project, yet the service, its sandbox Trip service, the tests
and the benchmarks need realistic data in the same format. This script produces it
deterministically (``random.Random(20251003)``, stdlib only), so running

    python seeds/generate.py

rewrites both files byte-identically every time.

Payments (``rhfd_payments.csv``, 350 rows, same columns and value ranges as upstream):

* payment ids 2..335 are first attempts, one per trip, with ``payment_id == trip_id``;
* payment 1 is ``1,336,99.01,CARD,SUCCESS,...``: the seed document refunds 50.00 of
  payment 1 and charges trip 1, so payment 1 must be refundable and trip 1 unpaid;
* payment ids 336..350 are retries: each belongs to a trip whose first attempt FAILED
  and is a later SUCCESS or PENDING payment for the same amount (a trip has at most
  one payment whose status is not FAILED);
* status counts: 71 SUCCESS, 145 FAILED, 134 PENDING (as upstream);
* CASH only appears on SUCCESS payments (the gateway simulator never fails cash).

Trips (``rhfd_trips.csv``, served by the sandbox Trip service), by id range:

* 1           COMPLETED, unpaid, rider 101, driver 201, ``total_fare`` 99.01: the trip the
  seed document charges (``{"trip_id": 1, "rider_id": 101, "driver_id": 201, ...}``);
* 2..336      COMPLETED, paid: ``total_fare`` equals the amount of the trip's payment;
* 1001..1200  COMPLETED, unpaid, with ``total_fare`` (computed with the trip's own
  ``base_fare``, which is not always 5.00, so ``total_fare`` must win);
* 1201..1300  COMPLETED, unpaid, empty ``total_fare`` and ``base_fare`` 5.00: the
  service computes ``(5.00 + distance_km x 2.50) x surge_multiplier``, half-up to cents;
* 2001..2030  ONGOING, 2031..2060 CANCELLED, 2061..2080 REQUESTED (empty ``total_fare``).
"""

from __future__ import annotations

import csv
import random
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

SEED = 20251003
HERE = Path(__file__).resolve().parent
PAYMENTS_FILE = HERE / "rhfd_payments.csv"
TRIPS_FILE = HERE / "rhfd_trips.csv"

PAYMENT_HEADER = ["payment_id", "trip_id", "amount", "method", "status", "reference", "created_at"]
TRIP_HEADER = [
    "trip_id",
    "rider_id",
    "driver_id",
    "status",
    "distance_km",
    "base_fare",
    "surge_multiplier",
    "total_fare",
]

PAID_TRIPS = 335
RETRIES = 15
# Status counts of the first attempts (payment 1's SUCCESS included) and the retries.
FIRST_ATTEMPT_STATUSES = {"SUCCESS": 61, "FAILED": 145, "PENDING": 129}
# The seed document's examples: charge trip 1 for rider 101 / driver 201, refund payment 1.
SEED_DOC_TRIP = (1, 101, 201, Decimal("37.6"), Decimal("1.0"), Decimal("99.01"))
PAYMENT_1_TRIP = PAID_TRIPS + 1
RETRY_STATUSES = {"SUCCESS": 10, "PENDING": 5}

UNPAID_WITH_FARE = range(1001, 1201)
UNPAID_WITHOUT_FARE = range(1201, 1301)
ONGOING = range(2001, 2031)
CANCELLED = range(2031, 2061)
REQUESTED = range(2061, 2081)

CENT = Decimal("0.01")
BASE_FARE = Decimal("5.00")
RATE_PER_KM = Decimal("2.50")
SURGES = [Decimal("1.0"), Decimal("1.2"), Decimal("1.5"), Decimal("2.0")]
SURGE_WEIGHTS = [60, 20, 12, 8]
CITY_BASE_FARES = [Decimal("4.00"), Decimal("5.00"), Decimal("6.50")]
MIN_AMOUNT_CENTS = 1200
MAX_AMOUNT_CENTS = 27500
START = datetime(2023, 1, 1)
END = datetime(2025, 7, 30, 23, 59, 59)  # first attempts; retries follow within hours
REF_ALPHABET = string.ascii_uppercase + string.digits


@dataclass
class Payment:
    payment_id: int
    trip_id: int
    amount: Decimal
    method: str
    status: str
    reference: str
    created_at: datetime

    def row(self) -> list[str]:
        return [
            str(self.payment_id),
            str(self.trip_id),
            str(self.amount),
            self.method,
            self.status,
            self.reference,
            self.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]


def fare(base_fare: Decimal, distance_km: Decimal, surge: Decimal) -> Decimal:
    """The service's fare formula, rounded half-up to cents."""
    return ((base_fare + distance_km * RATE_PER_KM) * surge).quantize(CENT, ROUND_HALF_UP)


def random_amount(rng: random.Random) -> Decimal:
    return (Decimal(rng.randint(MIN_AMOUNT_CENTS, MAX_AMOUNT_CENTS)) / 100).quantize(CENT)


def random_time(rng: random.Random) -> datetime:
    span = int((END - START).total_seconds())
    return START + timedelta(seconds=rng.randint(0, span))


def random_method(rng: random.Random, status: str) -> str:
    if status == "SUCCESS":
        return rng.choices(["CARD", "UPI", "WALLET", "CASH"], weights=[35, 30, 20, 15])[0]
    return rng.choices(["CARD", "UPI", "WALLET"], weights=[40, 35, 25])[0]


def new_reference(rng: random.Random, when: datetime, used: set[str]) -> str:
    while True:
        ref = f"RHP{when:%Y%m%d}-" + "".join(rng.choices(REF_ALPHABET, k=6))
        if ref not in used:
            used.add(ref)
            return ref


def expand(counts: dict[str, int]) -> list[str]:
    return [status for status, n in counts.items() for _ in range(n)]


def make_payments(rng: random.Random) -> list[Payment]:
    statuses = expand(FIRST_ATTEMPT_STATUSES)
    statuses.remove("SUCCESS")  # payment 1 is fixed below
    rng.shuffle(statuses)
    statuses.insert(0, "SUCCESS")

    used: set[str] = set()
    payments: list[Payment] = []
    for payment_id, status in enumerate(statuses, start=1):
        when = random_time(rng)
        if payment_id == 1:
            trip_id, amount, method = PAYMENT_1_TRIP, Decimal("99.01"), "CARD"
        else:
            trip_id, amount, method = payment_id, random_amount(rng), random_method(rng, status)
        ref = new_reference(rng, when, used)
        payments.append(Payment(payment_id, trip_id, amount, method, status, ref, when))

    failed_trips = [p.trip_id for p in payments if p.status == "FAILED"]
    retried = sorted(rng.sample(failed_trips, RETRIES))
    retry_statuses = expand(RETRY_STATUSES)
    rng.shuffle(retry_statuses)
    for payment_id, (trip_id, status) in enumerate(
        zip(retried, retry_statuses, strict=True), start=PAID_TRIPS + 1
    ):
        first = payments[trip_id - 1]  # trip_id == payment_id for every FAILED first attempt
        when = first.created_at + timedelta(seconds=rng.randint(120, 3 * 3600))
        ref = new_reference(rng, when, used)
        method = random_method(rng, status)
        payments.append(Payment(payment_id, trip_id, first.amount, method, status, ref, when))
    return payments


def paid_trip_fare(payments: list[Payment]) -> dict[int, Decimal]:
    """Per trip: the amount of its live (non-FAILED) payment, else of its last one."""
    fares: dict[int, Decimal] = {}
    live: set[int] = set()
    for p in sorted(payments, key=lambda p: (p.created_at, p.payment_id)):
        if p.trip_id in live:
            continue
        fares[p.trip_id] = p.amount
        if p.status != "FAILED":
            live.add(p.trip_id)
    return fares


def trip_row(
    trip_id: int,
    rng: random.Random,
    status: str,
    distance_km: Decimal,
    base_fare: Decimal,
    surge: Decimal,
    total_fare: Decimal | None,
) -> list[str]:
    return [
        str(trip_id),
        str(rng.randint(1, 120)),
        str(rng.randint(1, 60)),
        status,
        str(distance_km),
        str(base_fare),
        str(surge),
        "" if total_fare is None else str(total_fare),
    ]


def random_distance(rng: random.Random) -> Decimal:
    return (Decimal(rng.randint(5, 400)) / 10).quantize(Decimal("0.1"))  # 0.5..40.0


def random_surge(rng: random.Random) -> Decimal:
    return rng.choices(SURGES, weights=SURGE_WEIGHTS)[0]


def paid_trip_row(trip_id: int, total: Decimal, rng: random.Random) -> list[str]:
    # Pick a surge that gives a plausible distance, then derive the distance from the fare.
    candidates = [
        s for s in SURGES if Decimal("0.5") <= (total / s - BASE_FARE) / RATE_PER_KM <= 60
    ]
    weights = [SURGE_WEIGHTS[SURGES.index(s)] for s in candidates]
    surge = rng.choices(candidates, weights=weights)[0]
    distance = ((total / surge - BASE_FARE) / RATE_PER_KM).quantize(Decimal("0.1"))
    return trip_row(trip_id, rng, "COMPLETED", distance, BASE_FARE, surge, total)


def make_trips(rng: random.Random, payments: list[Payment]) -> list[list[str]]:
    fares = paid_trip_fare(payments)
    payment_1_fare = fares.pop(PAYMENT_1_TRIP)
    # Trip 1 was paid before payment 1 moved to trip 336: it still takes the draws of
    # that row (discarded) and trip 336 draws last, so every other row stays as it was.
    paid_trip_row(1, Decimal("99.01"), rng)
    trip_id, rider_id, driver_id, distance, surge, total = SEED_DOC_TRIP
    row = [trip_id, rider_id, driver_id, "COMPLETED", distance, BASE_FARE, surge, total]
    rows: list[list[str]] = [[str(value) for value in row]]
    for trip_id, total in sorted(fares.items()):
        rows.append(paid_trip_row(trip_id, total, rng))

    for trip_id in UNPAID_WITH_FARE:
        distance, surge = random_distance(rng), random_surge(rng)
        base = rng.choice(CITY_BASE_FARES)
        total = fare(base, distance, surge)
        rows.append(trip_row(trip_id, rng, "COMPLETED", distance, base, surge, total))

    for trip_id in UNPAID_WITHOUT_FARE:
        distance, surge = random_distance(rng), random_surge(rng)
        rows.append(trip_row(trip_id, rng, "COMPLETED", distance, BASE_FARE, surge, None))

    for ids, status in ((ONGOING, "ONGOING"), (CANCELLED, "CANCELLED"), (REQUESTED, "REQUESTED")):
        for trip_id in ids:
            distance, surge = random_distance(rng), random_surge(rng)
            rows.append(trip_row(trip_id, rng, status, distance, BASE_FARE, surge, None))
    rows.append(paid_trip_row(PAYMENT_1_TRIP, payment_1_fare, rng))
    return sorted(rows, key=lambda row: int(row[0]))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    rng = random.Random(SEED)
    payments = make_payments(rng)
    trips = make_trips(rng, payments)
    write_csv(PAYMENTS_FILE, PAYMENT_HEADER, [p.row() for p in payments])
    write_csv(TRIPS_FILE, TRIP_HEADER, trips)
    print(f"wrote {len(payments)} payments to {PAYMENTS_FILE.name}")
    print(f"wrote {len(trips)} trips to {TRIPS_FILE.name}")


if __name__ == "__main__":
    main()
