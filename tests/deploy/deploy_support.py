"""Parsers the deploy tests share: Dockerfile, .dockerignore, Compose interpolation,
PromQL metric names and the Prometheus text format.

Small on purpose: each handles the subset the project's own files use, and the tests
in this folder pin that subset on literal samples before trusting it on real files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# --- tools -----------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def find_tool(name: str, how: str) -> str:
    """Path of a command-line tool from PATH or the virtual environment.

    Missing: a failure under CI (CI=true), where `how` must have installed it, and a
    skip naming `how` on a developer's machine.
    """
    for candidate in (shutil.which(name), Path(sys.executable).parent / name):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    message = f"{name} is not installed; `{how}` installs it"
    if in_ci():
        pytest.fail(f"{message} (CI must run it before the tests)")
    pytest.skip(message)


# --- Dockerfile ------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    stage: int


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    stage_names: list[str] = field(default_factory=list)
    stage_bases: list[str] = field(default_factory=list)

    def in_stage(self, stage: int, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.stage == stage and i.keyword == keyword]

    @property
    def final_stage(self) -> int:
        return len(self.stage_bases) - 1

    def final(self, keyword: str) -> list[Instruction]:
        return self.in_stage(self.final_stage, keyword)

    def exec_form(self, keyword: str) -> list[str]:
        """The last ENTRYPOINT/CMD of the final stage, which must be in exec (JSON) form."""
        found = self.final(keyword)
        assert found, f"the final stage has no {keyword}"
        value = json.loads(found[-1].value)
        assert isinstance(value, list), f"{keyword} is not in exec form"
        return value

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """Options and the exec-form command of the final stage's HEALTHCHECK."""
        found = self.final("HEALTHCHECK")
        assert found, "the final stage has no HEALTHCHECK"
        options: dict[str, str] = {}
        rest = found[-1].value
        while rest.startswith("--"):
            option, _, rest = rest.partition(" ")
            key, _, value = option[2:].partition("=")
            options[key] = value
            rest = rest.lstrip()
        keyword, _, command = rest.partition(" ")
        assert keyword == "CMD", "HEALTHCHECK must run a command"
        return options, json.loads(command)

    def env(self, stage: int) -> dict[str, str]:
        """ENV values of one stage, in order (later ones win)."""
        values: dict[str, str] = {}
        for instruction in self.in_stage(stage, "ENV"):
            for token in shlex.split(instruction.value):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {token!r}: use the KEY=value form"
                values[key] = value
        return values

    def copies(self, stage: int) -> list[tuple[dict[str, str], list[str], str]]:
        """(flags, sources, destination) of every COPY in a stage."""
        result = []
        for instruction in self.in_stage(stage, "COPY"):
            tokens = shlex.split(instruction.value)
            flags = {}
            while tokens and tokens[0].startswith("--"):
                key, _, value = tokens.pop(0)[2:].partition("=")
                flags[key] = value
            *sources, destination = tokens
            result.append((flags, sources, destination))
        return result

    def workdir(self, stage: int) -> str:
        found = self.in_stage(stage, "WORKDIR")
        return found[-1].value if found else "/"


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuations joined and comments dropped; ARGs fill FROM."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append((current + line).strip())
        current = ""
    if current.strip():
        logical.append(current.strip())

    args: dict[str, str] = {}
    result = Dockerfile(instructions=[])
    stage = -1
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "ARG" and stage == -1:
            name, _, default = value.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            stage += 1
            tokens = value.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], tokens[0])
            result.stage_bases.append(base)
            lowered = [t.lower() for t in tokens]
            result.stage_names.append(tokens[lowered.index("as") + 1] if "as" in lowered else "")
        result.instructions.append(Instruction(keyword, value, stage))
    return result


def load_dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


# --- .dockerignore ---------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


@dataclass
class DockerIgnore:
    """The build-context filter of Docker (moby patternmatcher semantics, simplified).

    Patterns apply in order, the last match wins, `!` re-includes, and a pattern that
    matches a parent folder matches everything below it.
    """

    rules: list[tuple[bool, str, re.Pattern[str]]]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
            rules.append((negate, pattern, _pattern_regex(pattern)))
        return cls(rules)

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, _, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                result = not negate
        return result

    def _may_reinclude_below(self, folder: str) -> bool:
        return any(negate and pattern.startswith(folder + "/") for negate, pattern, _ in self.rules)

    def context_files(self, root: Path) -> list[str]:
        """Every file `docker build root` would send, as paths relative to root."""
        files = []
        for current, dirs, names in os.walk(root):
            rel_dir = os.path.relpath(current, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            keep = []
            for name in dirs:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if not self.excluded(rel) or self._may_reinclude_below(rel):
                    keep.append(name)
            dirs[:] = keep
            for name in names:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if not self.excluded(rel):
                    files.append(rel)
        return sorted(files)


def load_dockerignore() -> DockerIgnore:
    return DockerIgnore.parse((ROOT / ".dockerignore").read_text())


# --- Compose ---------------------------------------------------------------------

_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


class InterpolationError(ValueError):
    """A required `${VAR:?message}` variable has no value."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR:?error}, ..."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op == ":?" and not current:
            raise InterpolationError(f"{name}: {arg}")
        if op == "?" and current is None:
            raise InterpolationError(f"{name}: {arg}")
        return current or ""

    return _COMPOSE_VAR.sub(substitute, value)


def compose_variables(value: str) -> list[tuple[str, str | None]]:
    """(name, operator) of every variable a Compose value refers to."""
    return [
        (m["name"] or m["bare"], m["op"]) for m in _COMPOSE_VAR.finditer(value) if not m["escaped"]
    ]


def service_environment(service: Mapping[str, object]) -> dict[str, str]:
    """A service's `environment`, as a mapping whichever form the file uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    assert isinstance(env, dict)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


# --- PromQL and the Prometheus text format --------------------------------------

_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def promql_metric_names(expr: str) -> set[str]:
    """Names of the metrics a PromQL expression reads (functions and keywords left out)."""
    text = re.sub(r"\{[^}]*\}", " ", expr)
    text = _STRING.sub('""', text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # 1e3, 5m
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match[0].lower() in _PROMQL_WORDS:
            continue
        names.add(match[0])
    return names


def promql_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of every label matcher in an expression."""
    found = []
    for selector in _SELECTOR.finditer(expr):
        for matcher in _MATCHER.finditer(selector[2]):
            found.append((selector[1], matcher[1], matcher[2], matcher[3]))
    return found


@dataclass
class Exposition:
    """What a /metrics page offers: families with their types, and sample label sets."""

    types: dict[str, str]
    samples: dict[str, list[dict[str, str]]]

    @property
    def names(self) -> set[str]:
        """Every name a query may use: families' sample names, seen or implied by TYPE."""
        names = set(self.samples)
        for family, kind in self.types.items():
            names.add(family)
            if kind == "histogram":
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
            elif kind == "summary":
                names |= {f"{family}_sum", f"{family}_count"}
            elif kind == "counter" and not family.endswith("_total"):
                names.add(f"{family}_total")
        return names


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> Exposition:
    types: dict[str, str] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = dict(_LABEL.findall(match[2] or ""))
            samples.setdefault(match[1], []).append(labels)
    return Exposition(types, samples)


# --- monitoring files ------------------------------------------------------------


def dashboard_exprs(dashboard: Mapping[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of a Grafana dashboard, rows included."""

    def walk(panels: Iterable[Mapping[str, object]]) -> Iterable[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []) or []:  # type: ignore[union-attr]
                if target.get("expr"):
                    yield str(panel.get("title")), str(target["expr"])
            yield from walk(panel.get("panels", []) or [])  # type: ignore[arg-type]

    return list(walk(dashboard.get("panels", [])))  # type: ignore[arg-type]


def rule_exprs(rules_file: Mapping[str, object]) -> list[tuple[str, str]]:
    """(alert or record name, expr) of every rule of a Prometheus rule file."""
    found = []
    for group in rules_file["groups"]:  # type: ignore[index]
        for rule in group["rules"]:
            found.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return found


# --- .env.example ----------------------------------------------------------------

# Values that differ by design between a developer's machine and a container network.
NETWORK_SPECIFIC = {"DB_HOST", "DB_PORT", "DATABASE_URL"}


def env_example() -> dict[str, str]:
    """KEY=value lines of the committed .env.example."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def disagreements(defaults: Mapping[str, str], where: str) -> list[str]:
    """Where deploy defaults contradict .env.example: equal values, and for peer URLs
    the same port (the host is a container or Service name instead of localhost)."""
    example = env_example()
    problems = []
    for key, value in defaults.items():
        if key in NETWORK_SPECIFIC or key not in example or not example[key]:
            continue
        ours, theirs = value, example[key]
        if key.endswith("_URL"):
            ours, theirs = ours.rsplit(":", 1)[-1], theirs.rsplit(":", 1)[-1]
        if ours.lower() != theirs.lower():
            problems.append(f"{where}: {key}={value} but .env.example has {example[key]}")
    return problems
