"""jsonutil.dumps (orjson) writes exactly what the simplejson writer it replaced wrote."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest

from payment_service.jsonutil import _simplejson_dumps, dumps, loads, utc_timestamp
from payment_service.models.enums import PaymentMethod, PaymentStatus


class Colour(Enum):
    RED = "red"


TEXTS = ["", "a", "é€😀", '"\\/', "\x00\x1f\x7f", "\u2028\u2029", "line\nbreak\ttab", "<b>&</b>"]


def _scalar(rng: random.Random) -> Any:
    kind = rng.randrange(11)
    if kind == 0:
        return Decimal(rng.randrange(-(10**12), 10**12)) / 100
    if kind == 1:
        return Decimal(rng.choice(["0", "0.00", "1E+2", "-0.5", "12345678901234567890.123"]))
    if kind == 2:
        return rng.randrange(-(2**63), 2**63)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice(TEXTS) + str(rng.random())
    if kind == 5:
        moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**15))
        zone = rng.choice([UTC, None, timezone(timedelta(hours=5, minutes=30))])
        return moment.replace(tzinfo=zone) if zone is not UTC else moment
    if kind == 6:
        return date(2020, 1, 1) + timedelta(days=rng.randrange(5000))
    if kind == 7:
        return rng.choice([Colour.RED, PaymentStatus.SUCCESS, PaymentMethod.CARD])
    if kind == 8:
        return rng.choice([1.5, 0.1, 1e16, -(2**53)])
    if kind == 9:
        return rng.choice(TEXTS)
    return rng.randrange(10**6)


def _document(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.4:
        return _scalar(rng)
    if rng.random() < 0.5:
        return [_document(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(TEXTS) + str(i): _document(rng, depth + 1) for i in range(rng.randrange(6))}


def test_random_documents_encode_byte_for_byte_as_before() -> None:
    rng = random.Random(20261207)
    for _ in range(3000):
        document = _document(rng)
        assert dumps(document) == _simplejson_dumps(document), document


def test_money_stays_an_exact_number() -> None:
    body = dumps({"amount": Decimal("99.01"), "refunded": Decimal("100.00")})
    assert body == b'{"amount":99.01,"refunded":100.00}'
    assert loads(body) == {"amount": Decimal("99.01"), "refunded": Decimal("100.00")}


def test_floats_keep_their_value_though_small_exponents_are_spelt_shorter() -> None:
    # Money never floats (requests parse fractions as Decimal); a float elsewhere keeps
    # its value: orjson writes 1e-5 where simplejson wrote 1e-05.
    document = {"ratio": [-2.25e-7, 1e-05, 123456789012345680.0, 0.1]}
    assert loads(dumps(document)) == loads(_simplejson_dumps(document))
    assert dumps({"tiny": 1e-05}) == b'{"tiny":0.00001}'


@pytest.mark.parametrize(
    "document",
    [{"big": 2**64}, {1: "non-string key"}, [-(2**63) - 1], {"nested": {"k": [2**80]}}],
)
def test_what_orjson_refuses_is_still_written(document: Any) -> None:
    assert dumps(document) == _simplejson_dumps(document)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_a_decimal_that_is_no_number_is_refused(value: Decimal) -> None:
    with pytest.raises(ValueError):
        dumps({"amount": value})


def test_an_unknown_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 12, 2, 21, 1, 6),
        datetime(2024, 12, 2, 21, 1, 6, 123456, tzinfo=UTC),
        datetime(2024, 12, 2, 21, 1, 6, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=-7))),
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ],
)
def test_utc_timestamp_is_iso_8601_in_utc_with_z(moment: datetime) -> None:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    assert utc_timestamp(moment) == aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert utc_timestamp(moment).endswith("Z")
