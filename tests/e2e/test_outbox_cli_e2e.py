"""`payment-service outbox list|requeue` through the real console script (SPEC §6)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.conftest import insert_payment
from tests.e2e.conftest import hermetic_env, plain_url, run_cli

SECRET_IN_PAYLOAD = "tok_card_4242_do_not_print"
HEADER = "ID\tEVENT_ID\tTYPE\tPAYMENT_ID\tSTATUS\tATTEMPTS\tNEXT_ATTEMPT\tLAST_ERROR"


async def add_messages(engine: AsyncEngine, statuses: list[str]) -> list[tuple[int, str]]:
    """One outbox row per status (FAILED ones with an error); (id, event_id) oldest first."""
    async with AsyncSession(engine) as session, session.begin():
        payment_id = await insert_payment(session)
        made = []
        for status in statuses:
            row = (
                await session.execute(
                    text(
                        "INSERT INTO notification_outbox "
                        "(message_type, payment_id, payload, status, attempts, last_error) "
                        "VALUES ('payment', :p, CAST(:payload AS jsonb), :s, :a, :e) "
                        "RETURNING id, event_id"
                    ),
                    {
                        "p": payment_id,
                        "payload": f'{{"card_token": "{SECRET_IN_PAYLOAD}"}}',
                        "s": status,
                        "a": 25 if status == "FAILED" else 1,
                        "e": "the Notification service answered 503"
                        if status == "FAILED"
                        else None,
                    },
                )
            ).one()
            made.append((row.id, str(row.event_id)))
        return made


async def status_of(engine: AsyncEngine, message_id: int) -> tuple[str, int, bool]:
    """(status, attempts, due now) of one row."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT status, attempts, next_attempt_at <= now() AS due "
                    "FROM notification_outbox WHERE id = :i"
                ),
                {"i": message_id},
            )
        ).one()
    return row.status, row.attempts, row.due


async def test_list_shows_each_message_without_its_payload(
    e2e_database: URL, e2e_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Every message with event id, status, attempts and error; `--status` filters; no payload."""
    (failed, failed_event), (delivered, _), (pending, _) = await add_messages(
        e2e_engine, ["FAILED", "DELIVERED", "PENDING"]
    )
    env = hermetic_env(DATABASE_URL=plain_url(e2e_database), LOG_LEVEL="WARNING")

    listed = await run_cli("outbox", "list", env=env, cwd=tmp_path)
    only_failed = await run_cli("outbox", "list", "--status", "FAILED", env=env, cwd=tmp_path)
    limited = await run_cli("outbox", "list", "--limit", "1", env=env, cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == HEADER
    by_id = {int(line.split("\t")[0]): line.split("\t") for line in lines[1:]}
    assert set(by_id) == {failed, delivered, pending}
    assert by_id[failed][1:3] == [failed_event, "payment"]
    assert by_id[failed][4:6] == ["FAILED", "25"]
    assert by_id[failed][7] == "the Notification service answered 503"
    assert by_id[pending][6] != "-" and by_id[delivered][6] == "-"  # only PENDING is due again
    assert SECRET_IN_PAYLOAD not in listed.stdout + listed.stderr
    assert only_failed.returncode == 0
    assert [line.split("\t")[0] for line in only_failed.stdout.splitlines()[1:]] == [str(failed)]
    assert len(limited.stdout.splitlines()) == 2  # header and the newest row


async def test_requeue_by_id_and_all_failed(
    e2e_database: URL, e2e_engine: AsyncEngine, tmp_path: Path
) -> None:
    """FAILED -> PENDING, attempts 0, due now; the count is printed; other statuses untouched."""
    (first, _), (second, _), (third, _), (delivered, _) = await add_messages(
        e2e_engine, ["FAILED", "FAILED", "FAILED", "DELIVERED"]
    )
    env = hermetic_env(DATABASE_URL=plain_url(e2e_database), LOG_LEVEL="WARNING")

    one = await run_cli("outbox", "requeue", str(first), env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "requeued 1 message(s)"
    assert await status_of(e2e_engine, first) == ("PENDING", 0, True)
    assert (await status_of(e2e_engine, second))[0] == "FAILED"

    rest = await run_cli("outbox", "requeue", "--all-failed", env=env, cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.strip() == "requeued 2 message(s)"
    for message_id in (second, third):
        assert await status_of(e2e_engine, message_id) == ("PENDING", 0, True)

    not_failed = await run_cli("outbox", "requeue", str(delivered), env=env, cwd=tmp_path)
    assert not_failed.returncode == 1
    assert "requeued 0 message(s)" in not_failed.stdout
    assert str(delivered) in not_failed.stderr
    assert (await status_of(e2e_engine, delivered))[0] == "DELIVERED"

    neither = await run_cli("outbox", "requeue", env=env, cwd=tmp_path)
    assert neither.returncode == 2
    assert "--all-failed" in neither.stderr
