"""API keys and rate limits through the real CLI and real `serve` processes (SPEC §7a)."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from payment_service.auth.keys import KEY_PATTERN
from tests.e2e.conftest import StartProcess, hermetic_env, plain_url, run_cli, run_smoke_script
from tests.integration.test_rate_limits import REDIS_URL, needs_redis

READ = "/v1/payments?limit=1"


def _env(database: URL, **extra: str) -> dict[str, str]:
    return hermetic_env(DATABASE_URL=plain_url(database), LOG_LEVEL="WARNING", **extra)


async def _create_key(database: URL, cwd: Path, name: str, *args: str) -> str:
    result = await run_cli("api-keys", "create", "--name", name, *args, env=_env(database), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


async def test_api_keys_create_list_revoke(e2e_database: URL, tmp_path: Path) -> None:
    """create prints the key once, as its last line; list shows prefix and scopes, never
    the key; revoke marks it revoked; a name cannot get a second active key."""
    env = _env(e2e_database)
    created = await run_cli(
        "api-keys",
        "create",
        "--name",
        "trip-service",
        "--scope",
        "read",
        "--scope",
        "charge",
        "--rate-limit",
        "100/minute",
        env=env,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    key = lines[-1]
    match = KEY_PATTERN.match(key)
    assert match, key
    prefix, secret = match.group(1), match.group(2)
    assert len(secret) >= 43  # 256 random bits
    assert secret not in "\n".join(lines[:-1]) + created.stderr

    listed = await run_cli("api-keys", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.startswith("trip-service"))
    fields = row.split("\t")
    assert fields[1] == prefix and fields[2] == "read,charge" and fields[3] == "100/minute"
    assert fields[5] == "-"  # not revoked

    twice = await run_cli(
        "api-keys", "create", "--name", "trip-service", "--scope", "read", env=env, cwd=tmp_path
    )
    assert twice.returncode != 0 and "already has an active key" in twice.stderr

    revoked = await run_cli("api-keys", "revoke", "trip-service", env=env, cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked 1 key" in revoked.stdout
    after = await run_cli("api-keys", "list", env=env, cwd=tmp_path)
    row = next(line for line in after.stdout.splitlines() if line.startswith("trip-service"))
    assert row.split("\t")[5] != "-"

    unknown = await run_cli("api-keys", "revoke", "nobody", env=env, cwd=tmp_path)
    assert unknown.returncode != 0 and "no API client named" in unknown.stderr
    bad = await run_cli(
        "api-keys", "create", "--name", "x", "--scope", "admin", env=env, cwd=tmp_path
    )
    assert bad.returncode != 0 and "unknown scope" in bad.stderr


async def test_bootstrap_key_from_env_is_idempotent_and_works(
    e2e_database: URL, tmp_path: Path, start_service: StartProcess
) -> None:
    """`create --key-from-env VAR` (the migration Job's step) adds that exact key once,
    never prints it, and `serve` with AUTH_REQUIRED=true accepts it."""
    key = f"psk_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    env = _env(e2e_database, BOOTSTRAP_API_KEY=key)
    args = ("api-keys", "create", "--name", "trip-service", "--scope", "read")
    args += ("--scope", "charge", "--scope", "refund", "--key-from-env", "BOOTSTRAP_API_KEY")
    first = await run_cli(*args, env=env, cwd=tmp_path)
    second = await run_cli(*args, env=env, cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert "added" in first.stdout and "already present" in second.stdout
    secret = key.split("_", 2)[2]
    for result in (first, second):
        assert secret not in result.stdout + result.stderr

    service = await start_service(AUTH_REQUIRED="true")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        anonymous = await client.get(READ)
        keyed = await client.get(READ, headers={"Authorization": f"Bearer {key}"})
    assert anonymous.status_code == 401
    assert keyed.status_code == 200
    assert secret not in service.log_text()


async def test_rotating_x_forwarded_for_does_not_escape_the_limit(
    start_service: StartProcess,
) -> None:
    """The attack: a new X-Forwarded-For per request got a fresh budget (uvicorn trusted
    127.0.0.1). Now, with FORWARDED_ALLOW_IPS unset, 120 such requests get 40 x 200."""
    service = await start_service(RATE_LIMIT_ENABLED="true", RATE_LIMIT_READ_PER_MINUTE="40")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:
        codes = [
            (
                await client.get(READ, headers={"X-Forwarded-For": f"203.0.113.{i % 250}"})
            ).status_code
            for i in range(120)
        ]
    assert codes.count(200) == 40 and codes.count(429) == 80


async def test_forwarded_allow_ips_trusts_the_named_proxy(start_service: StartProcess) -> None:
    """Behind an ingress (FORWARDED_ALLOW_IPS=127.0.0.1) clients are told apart by their
    forwarded address instead of sharing the proxy's one bucket."""
    service = await start_service(
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_READ_PER_MINUTE="3",
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as client:

        async def codes(address: str) -> list[int]:
            headers = {"X-Forwarded-For": address}
            return [(await client.get(READ, headers=headers)).status_code for _ in range(4)]

        first, second = await codes("198.51.100.1"), await codes("198.51.100.2")
    assert first == [200, 200, 200, 429] and second == [200, 200, 200, 429]


@needs_redis
async def test_two_serve_processes_share_one_redis_budget(
    e2e_database: URL, tmp_path: Path, start_service: StartProcess
) -> None:
    """Two replicas on one REDIS_URL: of 90 concurrent requests with one key (budget
    30/minute) spread over both, the 200s sum to 30.

    A Redis call slower than its 0.25 s timeout fails open by design (counted in
    `rate_limit_backend_errors_total`); when either replica counted one, the round
    proves nothing and is repeated with a fresh key (a fresh budget).
    """
    shared = {
        "AUTH_REQUIRED": "true",
        "RATE_LIMIT_ENABLED": "true",
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"e2e-{uuid.uuid4().hex}",
    }
    first = await start_service(name="serve-a", **shared)
    second = await start_service(name="serve-b", **shared)
    async with httpx.AsyncClient(timeout=15) as client:

        async def backend_errors() -> float:
            total = 0.0
            for service in (first, second):
                metrics = (await client.get(service.base_url + "/metrics")).text
                match = re.search(r"^rate_limit_backend_errors_total (\S+)$", metrics, re.M)
                total += float(match.group(1)) if match else 0.0
            return total

        for round_no in range(3):
            key = await _create_key(
                e2e_database,
                tmp_path,
                f"shared-{round_no}",
                "--scope",
                "read",
                "--rate-limit",
                "30/minute",
            )
            headers = {"Authorization": f"Bearer {key}"}
            errors_before = await backend_errors()
            answers = await asyncio.gather(
                *(
                    client.get((first if i % 2 else second).base_url + READ, headers=headers)
                    for i in range(90)
                )
            )
            if await backend_errors() == errors_before:
                break
        else:
            pytest.fail("Redis timed out in every round: the shared budget could not be checked")
    codes = [answer.status_code for answer in answers]
    assert codes.count(200) == 30 and codes.count(429) == 60
    assert not re.search(re.escape(key.split("_", 2)[2]), first.log_text() + second.log_text())


async def test_smoke_script_with_a_key_passes_against_serve_that_requires_one(
    e2e_database: URL, tmp_path: Path, start_service: StartProcess
) -> None:
    """`make test-api` against `serve` (AUTH_REQUIRED=true): every check passes with
    API_KEY set, and the old anonymous calls are refused (the script fails without it)."""
    key = await _create_key(
        e2e_database, tmp_path, "smoke", "--scope", "read", "--scope", "charge", "--scope", "refund"
    )
    service = await start_service(AUTH_REQUIRED="true")
    output = await run_smoke_script(service, API_KEY=key)
    assert " 0 failed" in output
    with pytest.raises(AssertionError):
        await run_smoke_script(service)
    assert key.split("_", 2)[2] not in service.log_text()
