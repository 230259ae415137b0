"""The bench's SQL capture keeps a request's own statements and nothing else."""

from __future__ import annotations

from bench.sqllog import Statement, _without_dispatcher


def test_the_dispatcher_and_the_drivers_introspection_are_left_out() -> None:
    statements = [
        Statement(1, "WITH live AS (SELECT 1) SELECT 1"),  # a request's autocommit statement
        Statement(2, "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false)"),
        Statement(2, "WITH RECURSIVE typeinfo_tree(oid) AS (SELECT 1) SELECT 1"),
        Statement(2, "SELECT set_config('jit', $1, false)"),
        Statement(2, "WITH moved AS (UPDATE payments SET status = $1) SELECT 1"),
        Statement(3, "WITH due AS (SELECT id FROM notification_outbox FOR UPDATE SKIP LOCKED)"),
        Statement(3, "UPDATE notification_outbox SET status = 'DELIVERED'"),
        Statement(4, "BEGIN ISOLATION LEVEL READ COMMITTED;"),
        Statement(4, "SELECT 2"),
        Statement(4, "COMMIT;"),
        Statement(5, "BEGIN ISOLATION LEVEL READ COMMITTED;"),  # cut off by the window
        Statement(5, "SELECT 3"),
    ]
    kept = [s.sql for s in _without_dispatcher(statements)]
    assert kept == [
        "WITH live AS (SELECT 1) SELECT 1",
        "WITH moved AS (UPDATE payments SET status = $1) SELECT 1",
        "BEGIN ISOLATION LEVEL READ COMMITTED;",
        "SELECT 2",
        "COMMIT;",
    ]
