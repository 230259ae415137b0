"""Settings: the seed's variable names, DATABASE_URL precedence, `.env`, and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from payment_service.settings import ConfigurationError, Settings, load_settings

SEED_NAMES = (
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_PASS",
    "SERVICE_PORT",
    "TRIP_SERVICE_URL",
    "NOTIFICATION_SERVICE_URL",
    "RIDER_SERVICE_URL",
    "DRIVER_SERVICE_URL",
    "LOG_LEVEL",
    "RATE_LIMIT_ENABLED",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the developer's shell or `.env` leaks in: every name unset, cwd empty."""
    for name in {*Settings.model_fields, "database_url"}:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_seed_variable_names_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every variable name of the seed service sets its setting."""
    values = {
        "DB_HOST": "db.internal",
        "DB_PORT": "6543",
        "DB_NAME": "rides",
        "DB_USER": "payer",
        "DB_PASS": "hunter2",
        "SERVICE_PORT": "9000",
        "TRIP_SERVICE_URL": "http://trips:8081/",
        "NOTIFICATION_SERVICE_URL": "http://notify:8084",
        "RIDER_SERVICE_URL": "https://riders.example",
        "DRIVER_SERVICE_URL": "http://drivers:8085",
        "LOG_LEVEL": "debug",
        "RATE_LIMIT_ENABLED": "false",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert settings.db_host == "db.internal"
    assert settings.db_port == 6543
    assert settings.db_name == "rides"
    assert settings.db_user == "payer"
    assert settings.db_pass is not None
    assert settings.db_pass.get_secret_value() == "hunter2"
    assert settings.service_port == 9000
    assert settings.trip_service_url == "http://trips:8081"
    assert settings.notification_service_url == "http://notify:8084"
    assert settings.rider_service_url == "https://riders.example"
    assert settings.driver_service_url == "http://drivers:8085"
    assert settings.log_level == "DEBUG"
    assert settings.rate_limit_enabled is False


def test_seed_defaults_are_db_port_5433_and_service_port_8082() -> None:
    """With nothing set, DB_PORT is 5433 and SERVICE_PORT is 8082 as in the seed service."""
    settings = load_settings()

    assert settings.db_port == 5433
    assert settings.service_port == 8082


def test_db_parts_build_an_asyncpg_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASS make the asyncpg URL of the database."""
    for name, value in {
        "DB_HOST": "db.internal",
        "DB_PORT": "6543",
        "DB_NAME": "rides",
        "DB_USER": "payer",
        "DB_PASS": "hunter2",
    }.items():
        monkeypatch.setenv(name, value)

    url = load_settings().configured_database_url

    assert url is not None
    assert url.render_as_string(hide_password=False) == (
        "postgresql+asyncpg://payer:hunter2@db.internal:6543/rides"
    )


def test_database_url_wins_over_db_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_URL, when set, is used and the DB_* parts are ignored."""
    monkeypatch.setenv("DB_HOST", "ignored-host")
    monkeypatch.setenv("DB_NAME", "ignored_db")
    monkeypatch.setenv("DB_PASS", "ignored-pass")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:pw@primary:5432/payments")

    url = load_settings().configured_database_url

    assert url is not None
    assert url.render_as_string(hide_password=False) == (
        "postgresql+asyncpg://app:pw@primary:5432/payments"
    )


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2"])
def test_postgres_urls_are_normalised_to_asyncpg(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """postgres:// and postgresql:// (any driver) URLs are pinned to the asyncpg driver."""
    monkeypatch.setenv("DATABASE_URL", f"{scheme}://app:pw@primary:5432/payments")

    url = load_settings().configured_database_url

    assert url is not None
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database, url.username) == (
        "primary",
        5432,
        "payments",
        "app",
    )


def test_dotenv_file_in_the_working_directory_is_read(clean_environment: Path) -> None:
    """A `.env` file in the working directory sets values like the environment does."""
    (clean_environment / ".env").write_text(
        "DB_HOST=from-dotenv\nSERVICE_PORT=9100\nLOG_LEVEL=warning\n", encoding="utf-8"
    )

    settings = load_settings()

    assert settings.db_host == "from-dotenv"
    assert settings.service_port == 9100
    assert settings.log_level == "WARNING"


def test_environment_wins_over_dotenv(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable in the environment beats the same name in `.env`."""
    (clean_environment / ".env").write_text("SERVICE_PORT=9100\n", encoding="utf-8")
    monkeypatch.setenv("SERVICE_PORT", "9200")

    assert load_settings().service_port == 9200


def test_no_password_has_a_default() -> None:
    """Neither DB_PASS nor a default URL carries a password when none is configured."""
    settings = load_settings()

    assert settings.db_pass is None
    assert settings.database_url is None
    assert Settings.model_fields["db_pass"].default is None
    assert Settings.model_fields["database_url"].default is None


def test_db_parts_without_password_give_a_url_without_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DB_HOST alone gives a URL with no password rather than an invented one."""
    monkeypatch.setenv("DB_HOST", "db.internal")

    url = load_settings().configured_database_url

    assert url is not None
    assert url.password is None


def test_nothing_configured_means_embedded_database() -> None:
    """With no DATABASE_URL and no DB_* names, the service uses an embedded PostgreSQL."""
    settings = load_settings()

    assert settings.uses_embedded_database is True
    assert settings.configured_database_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "postgresql://a@h/db"), ("DB_HOST", "h"), ("DB_NAME", "payments")],
)
def test_any_database_setting_turns_off_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """DATABASE_URL or any DB_* name means a configured database, not the embedded one."""
    monkeypatch.setenv(name, value)

    assert load_settings().uses_embedded_database is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "mysql://app:pw@db/payments"),
        ("DATABASE_URL", "postgresql://app:pw@db:notaport/payments"),
        ("DB_PORT", "0"),
        ("DB_PORT", "70000"),
        ("DB_PORT", "abc"),
        ("SERVICE_PORT", "0"),
        ("SERVICE_PORT", "70000"),
        ("LOG_LEVEL", "LOUD"),
        ("RATE_LIMIT_ENABLED", "maybe"),
        ("TRIP_SERVICE_URL", "trips:8081"),
        ("NOTIFICATION_SERVICE_URL", "ftp://notify"),
        ("RIDER_SERVICE_URL", "riders"),
        ("DRIVER_SERVICE_URL", "tcp://drivers:8085"),
    ],
)
def test_invalid_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """An invalid value raises ConfigurationError: one line that names the variable."""
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "\n" not in message
    assert name in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def test_invalid_database_url_error_does_not_echo_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broken DATABASE_URL is reported without repeating the password in it."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cr3t-pw@db:notaport/payments")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert "s3cr3t-pw" not in str(caught.value)


def test_several_invalid_values_are_reported_together_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two bad variables are both named, still on a single line."""
    monkeypatch.setenv("DB_PORT", "0")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "\n" not in message
    assert "DB_PORT" in message
    assert "LOG_LEVEL" in message


@pytest.mark.parametrize("source", ["DB_PASS", "DATABASE_URL"])
def test_password_never_appears_in_repr_or_str(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """The database password is hidden in repr() and str() of Settings."""
    secret = "s3cr3t-pw"
    if source == "DB_PASS":
        monkeypatch.setenv("DB_HOST", "db")
        monkeypatch.setenv("DB_PASS", secret)
    else:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{secret}@db/payments")

    settings = load_settings()

    assert secret not in repr(settings)
    assert secret not in str(settings)
    assert secret not in str(settings.configured_database_url)
    assert secret not in repr(settings.configured_database_url)


def test_every_setting_is_in_the_readme_table() -> None:
    """Each Settings field appears, as its environment name, in README's configuration table."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])}

    missing = sorted(
        name.upper() for name in Settings.model_fields if name.upper() not in documented
    )
    assert missing == []
