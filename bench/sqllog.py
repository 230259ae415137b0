"""The service's own SQL, read from PostgreSQL's log, and the check of the pgbench scripts.

With an embedded server (whose log file we can read) the bench switches
`log_statement = 'all'` on for a moment (ALTER SYSTEM + pg_reload_conf, so the
service's already-open pool connections log too), sends one request of each kind,
switches it off again and parses what the log shows for the `payment-service`
connections. The outbox dispatcher polls on the same connections: transactions
that touch the outbox with `SKIP LOCKED` or `UPDATE notification_outbox` are its
own and are left out, as is asyncpg's once-per-connection type introspection.

Each request's statements become one list of normalised SQL texts (placeholders
`$n`, pgbench's `:var` and `NULL` parameters all read `?`, whitespace collapsed),
which is how `bench/pgbench/*.sql` are compared with what the service really sends.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_START = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(?P<pid>\d+)\] (?P<app>[^@\s]*)@(?P<db>\S*) "
    r"(?P<level>[A-Z]+):\s+(?P<text>.*)$"
)
LOG_LINE_PREFIX = "%m [%p] %a@%d "
APPLICATION_NAME = "payment-service"
PARAM = re.compile(r"\$(\d+)")
DISPATCHER_MARKERS = ("SKIP LOCKED", "UPDATE notification_outbox")
DRIVER_MARKERS = ("typeinfo_tree", "set_config('jit'")
"""asyncpg's type introspection (JIT off, the type tree, JIT back): sent once per
connection, the first time a statement uses a type it has not seen (arrays here)."""


@dataclass
class Statement:
    pid: int
    sql: str
    parameters: str = ""

    @property
    def normalized(self) -> str:
        return normalize(self.sql, self.null_params())

    def null_params(self) -> set[str]:
        return {m.group(1) for m in re.finditer(r"\$(\d+) = NULL", self.parameters)}


@dataclass
class Capture:
    """Statements of one request, in the order the server ran them."""

    name: str
    statements: list[Statement] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        return len(self.statements)

    def texts(self) -> list[str]:
        return [statement.normalized for statement in self.statements]

    def as_json(self) -> dict[str, object]:
        return {
            "round_trips": self.round_trips,
            "statements": [
                {"sql": " ".join(s.sql.split()), "parameters": s.parameters}
                for s in self.statements
            ],
        }


def normalize(sql: str, null_params: set[str] | None = None) -> str:
    """One comparable form: whitespace collapsed, no trailing `;`, every parameter `?`."""
    null_params = null_params or set()
    text = " ".join(sql.split()).rstrip(";").strip()
    text = PARAM.sub(lambda m: "NULL" if m.group(1) in null_params else "?", text)
    text = re.sub(r"(?<![:\w]):[A-Za-z_]\w*", "?", text)  # pgbench :variables (not ::casts)
    text = re.sub(r"\bNULL(?=::)", "?", text)
    return text


def script_statements(path: Path) -> list[str]:
    """The SQL commands of a pgbench script, normalised (meta-commands and comments skipped)."""
    statements: list[str] = []
    current: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith(("--", "\\"))):
            continue
        gset = re.search(r"\\[ga]set\b.*$", line)
        if gset:
            current.append(line[: gset.start()])
            statements.append(normalize("\n".join(current)))
            current = []
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append(normalize("\n".join(current)))
            current = []
    if current and "".join(current).strip():
        statements.append(normalize("\n".join(current)))
    return statements


def script_defines(path: Path) -> dict[str, str]:
    """`-- @define name=value` lines of a pgbench script (passed as `-D name=value`)."""
    defines = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^--\s*@define\s+(\w+)=(.*)$", line)
        if match:
            defines[match.group(1)] = match.group(2)
    return defines


def parse_log(text: str) -> list[Statement]:
    """Statements the `payment-service` connections ran, minus the outbox dispatcher's."""
    entries: list[tuple[int, str, str, str]] = []  # pid, app, level, text
    for line in text.splitlines():
        match = ENTRY_START.match(line)
        if match:
            entries.append((int(match["pid"]), match["app"], match["level"], match["text"]))
        elif entries and line.startswith("\t"):
            pid, app, level, body = entries[-1]
            entries[-1] = (pid, app, level, body + "\n" + line)
    statements: list[Statement] = []
    for pid, app, level, body in entries:
        if app != APPLICATION_NAME:
            continue
        if level == "LOG":
            match = re.match(r"^(?:statement|execute [^:]+):\s(.*)$", body, re.DOTALL)
            if match:
                statements.append(Statement(pid, match.group(1)))
        elif level == "DETAIL" and body.startswith("Parameters:") and statements:
            for statement in reversed(statements):
                if statement.pid == pid:
                    statement.parameters = body.removeprefix("Parameters:").strip()
                    break
    return _without_dispatcher(statements)


def _without_dispatcher(statements: list[Statement]) -> list[Statement]:
    """Keep whole transactions (BEGIN .. COMMIT/ROLLBACK per backend, or one statement
    outside any, as autocommit reads send) that are not the outbox dispatcher's, nor the
    driver's one-off introspection, nor cut off by the capture window."""
    transactions: list[list[Statement]] = []
    open_by_pid: dict[int, list[Statement]] = {}
    for statement in statements:
        verb = statement.sql.strip().rstrip(";").split(None, 1)[0].upper()
        if verb != "BEGIN" and statement.pid not in open_by_pid:
            transactions.append([statement])  # autocommit (or the tail of a cut-off one)
            continue
        if verb == "BEGIN":
            open_by_pid[statement.pid] = []
            transactions.append(open_by_pid[statement.pid])
        open_by_pid[statement.pid].append(statement)
        if verb in {"COMMIT", "ROLLBACK"}:
            del open_by_pid[statement.pid]
    keep: set[int] = set()
    for tx in transactions:
        first = tx[0].sql.strip().rstrip(";").upper()
        last = tx[-1].sql.strip().rstrip(";").upper()
        single = len(tx) == 1 and first.split(None, 1)[0] not in {"BEGIN", "COMMIT", "ROLLBACK"}
        complete = single or (first.startswith("BEGIN") and last in {"COMMIT", "ROLLBACK"})
        dispatcher = any(marker in s.sql for s in tx for marker in DISPATCHER_MARKERS)
        driver = any(marker in s.sql for s in tx for marker in DRIVER_MARKERS)
        if complete and not dispatcher and not driver:
            keep.update(id(s) for s in tx)
    return [s for s in statements if id(s) in keep]


class StatementLog:
    """Turn statement logging on for the server, run requests, read back their SQL."""

    def __init__(self, log_file: Path, admin: Callable[..., None]) -> None:
        self.log_file = log_file
        self.admin = admin  # admin(*statements): runs SQL as a superuser

    def __enter__(self) -> StatementLog:
        self.admin(
            "ALTER SYSTEM SET log_statement = 'all'",
            f"ALTER SYSTEM SET log_line_prefix = '{LOG_LINE_PREFIX}'",
            "SELECT pg_reload_conf()",
        )
        time.sleep(0.5)  # backends apply the reload at their next command
        return self

    def __exit__(self, *exc: object) -> None:
        self.admin(
            "ALTER SYSTEM RESET log_statement",
            "ALTER SYSTEM RESET log_line_prefix",
            "SELECT pg_reload_conf()",
        )

    def capture(self, name: str, action: Callable[[], None], settle: float = 0.15) -> Capture:
        """Run `action` (one request) and return the statements the log shows for it."""
        start = self.log_file.stat().st_size
        action()
        time.sleep(settle)
        with self.log_file.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", errors="replace")
        return Capture(name, parse_log(text))


@dataclass
class ScriptCheck:
    script: str
    scenario: str
    matches: bool
    script_statements: int
    service_statements: int
    differences: list[str]

    def as_json(self) -> dict[str, object]:
        return {
            "script": self.script,
            "scenario": self.scenario,
            "matches": self.matches,
            "script_statements": self.script_statements,
            "service_statements": self.service_statements,
            "differences": self.differences,
        }


def check_script(script: Path, capture: Capture) -> ScriptCheck:
    """Compare a pgbench script with the statements the service sent for one request."""
    import difflib

    expected = capture.texts()
    actual = script_statements(script)
    differences = [
        line
        for line in difflib.unified_diff(
            expected, actual, "service log", script.name, lineterm="", n=0
        )
        if not line.startswith(("---", "+++", "@@"))
    ]
    return ScriptCheck(
        script=script.name,
        scenario=capture.name,
        matches=expected == actual,
        script_statements=len(actual),
        service_statements=len(expected),
        differences=differences,
    )
