"""The sandbox is its own distribution (payment-service-sandbox, the `sandbox` extra).

Without it `payment-service sandbox` and `payment-service dev` say how to install it in
one line and exit 2; and payment_sandbox never imports the service, so it installs and
runs on its own. (tests/deploy/test_deploy_wheel.py checks the same hint from a wheel
installed without the extra.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import payment_sandbox
from payment_service.cli import SANDBOX_MISSING

# The console script's entry point, with the import of payment_sandbox failing as it
# does where the extra is not installed (None in sys.modules: ModuleNotFoundError).
WITHOUT_SANDBOX = (
    "import sys; sys.modules['payment_sandbox'] = None; sys.argv[0] = 'payment-service'; "
    "from payment_service.cli import main; main()"
)


def run_without_sandbox(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    keep = {"PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env["HOME"] = str(cwd)  # no .env, no embedded-PostgreSQL data of the developer's
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SANDBOX, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [("sandbox",), ("sandbox", "--trip-port", "0", "--no-such-option"), ("dev",)],
    ids=["sandbox", "sandbox-with-options", "dev"],
)
def test_missing_sandbox_is_one_line_and_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    """No traceback, nothing started: exit 2 and the install hint as the only output."""
    result = run_without_sandbox(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"error: {SANDBOX_MISSING}"], result.stderr
    assert result.stdout == ""
    assert "pip install 'payment-service[sandbox]'" in SANDBOX_MISSING
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "dev started something"


def test_other_commands_do_not_need_the_sandbox(tmp_path: Path) -> None:
    """`payment-service --help` still lists `sandbox`, marked as not installed."""
    result = run_without_sandbox("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not installed" in result.stdout


def test_payment_sandbox_imports_nothing_of_the_service() -> None:
    """payment-service depends on the sandbox (an extra), never the other way round."""
    package = Path(payment_sandbox.__file__).parent
    offenders = []
    for module in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{module.name}:{node.lineno} {name}"
                for name in names
                if name.partition(".")[0] == "payment_service"
            ]
    assert not offenders, offenders


def test_the_sandbox_ships_the_trips_it_serves_by_default() -> None:
    """Outside a checkout the Trip service serves the package's own rhfd_trips.csv."""
    shipped = Path(payment_sandbox.__file__).parent / "seeds" / "rhfd_trips.csv"
    assert shipped.is_file()
    checkout = Path(__file__).resolve().parents[2] / "seeds" / "rhfd_trips.csv"
    assert checkout.resolve() == shipped.resolve(), "seeds/rhfd_trips.csv links to the package"
