"""The container image, checked without a Docker engine: ops/Dockerfile's instructions
(parsed with ``dockerfile_parse``), its build context (.dockerignore), and its
HEALTHCHECK command run for real against a local HTTP server."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from kingest.config.loading import load_settings
from kingest.config.settings import settings_fields
from kingest.dev import free_port
from tests.unit.config.test_settings import VALID

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "ops" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

#: Where the builder installs kingest, and all that the runtime stage takes from it.
VENV = "/opt/venv"


# ------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, COPY, ...
    value: str  # everything after the instruction word, continuation lines joined


@dataclass(frozen=True)
class Stage:
    image: str  # the FROM image, ARGs substituted
    name: str | None  # FROM ... AS name
    instructions: tuple[Instruction, ...]  # after the FROM

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def one(self, name: str) -> Instruction:
        [instruction] = self.all(name)
        return instruction


@cache
def parser() -> DockerfileParser:
    parsed = DockerfileParser(path=str(DOCKERFILE))
    parsed.content  # noqa: B018 - read now: the parser opens the file lazily
    return parsed


@cache
def stages() -> tuple[Stage, ...]:
    """The build stages in order, each with its instructions."""
    parsed = parser()
    images = iter(parsed.parent_images)  # one per FROM, global ARGs substituted
    found: list[tuple[str, str | None, list[Instruction]]] = []
    for item in parsed.structure:
        name, value = item["instruction"], item["value"]
        if name == "FROM":
            words = value.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append((next(images), alias, []))
        elif found and name != "COMMENT":
            found[-1][2].append(Instruction(name, value))
    return tuple(Stage(image, alias, tuple(body)) for image, alias, body in found)


def final_stage() -> Stage:
    return stages()[-1]


def split_flags(value: str) -> tuple[dict[str, str], list[str]]:
    """``--from=builder --chown=1:1 a b`` -> ({"from": "builder", ...}, ["a", "b"])."""
    words = shlex.split(value)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, flag_value = words.pop(0)[2:].partition("=")
        flags[key] = flag_value
    return flags, words


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form instruction (a shell form fails the test)."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"not in exec form (a JSON array): {value}")
    assert isinstance(argv, list)
    assert all(isinstance(arg, str) for arg in argv)
    return argv


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]  # interval, timeout, start-period, retries
    argv: list[str]


def healthcheck() -> Healthcheck:
    value = final_stage().one("HEALTHCHECK").value
    options_text, separator, command = value.partition(" CMD ")
    assert separator, f"HEALTHCHECK without CMD: {value}"
    options, rest = split_flags(options_text)
    assert not rest, rest
    return Healthcheck(options, exec_form(command.strip()))


def duration_s(text: str) -> float:
    """A Docker or compose duration ("1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts, text
    assert "".join(number + unit for number, unit in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


def http_port_default() -> int:
    for _, field in settings_fields():
        if field.metadata["env"] == "KINGEST_HTTP_PORT":
            return int(field.default)
    raise AssertionError("no KINGEST_HTTP_PORT setting")


# ------------------------------------------------------------------------- .dockerignore


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern as a regex over a context-relative POSIX path.

    Docker's semantics (moby/patternmatcher): the pattern is cleaned like a path
    (trailing and leading slashes dropped), ``*`` and ``?`` do not cross ``/``,
    ``[...]`` is a character class and ``**`` spans any number of directories. Not
    handled, because .dockerignore uses none of it: backslash escapes and ranges with
    ``^`` negation inside brackets (the test fails on them rather than guess)."""
    pattern = posixpath.normpath(pattern).lstrip("/")
    assert "\\" not in pattern, f"escapes are not supported: {pattern}"
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            members = pattern[i + 1 : end]
            assert re.fullmatch(r"[\w.-]+", members), f"unsupported class: {pattern}"
            out.append(f"[{members}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception ``!``, regex) for each pattern line, in order."""
    rules = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, dockerignore_regex(line.removeprefix("!").strip())))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last rule matching the
    path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not negated
    return result


@cache
def context_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules(DOCKERIGNORE.read_text())


def in_context(path: Path) -> bool:
    return not excluded(path.relative_to(ROOT).as_posix(), context_rules())


def context_sources() -> list[str]:
    """Every COPY/ADD source taken from the build context (not from another stage)."""
    sources = []
    for stage in stages():
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, words = split_flags(instruction.value)
            if "from" not in flags:
                sources += words[:-1]  # the last word is the destination
    return sources


# ------------------------------------------------------------------------- stages


def test_there_is_a_builder_and_a_runtime_stage_on_one_pinned_slim_base() -> None:
    assert len(stages()) >= 2
    for stage in stages():
        assert re.fullmatch(
            r"python:3\.12\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", stage.image
        ), stage.image
    # The venv's python is a symlink into the base image's Python: the same in both.
    assert len({stage.image for stage in stages()}) == 1


def test_every_from_is_pinned_to_a_version() -> None:
    names = {stage.name for stage in stages()}
    for stage in stages():
        if stage.image in names:
            continue  # FROM an earlier stage
        repository, _, tag = stage.image.partition("@")[0].rpartition(":")
        assert repository, f"{stage.image} has no tag"
        assert tag != "latest", stage.image
        assert re.match(r"v?\d+\.\d+", tag), f"{stage.image} is not pinned to a version"


def test_the_builder_installs_the_kingest_wheel_into_the_venv() -> None:
    builder = stages()[0]
    assert builder.name, "the builder stage needs a name to copy from"
    run = " ".join(instruction.value for instruction in builder.all("RUN"))
    assert "pip wheel --no-deps" in run or "build --wheel" in run
    assert f"venv --without-pip {VENV}" in run or f"venv {VENV}" in run
    assert re.search(r"install \S*kingest-\S*\.whl", run)


def test_the_runtime_stage_copies_only_the_venv_from_the_builder() -> None:
    builder = stages()[0].name
    final = final_stage()
    assert not final.all("ADD")
    copies = final.all("COPY")
    assert copies, "the runtime stage copies nothing"
    for instruction in copies:
        flags, words = split_flags(instruction.value)
        assert flags.get("from") == builder, f"not from the builder: COPY {instruction.value}"
        *sources, _ = words
        assert all(source.rstrip("/") == VENV for source in sources), instruction.value


def test_the_runtime_stage_runs_as_a_fixed_non_root_user() -> None:
    final = final_stage()
    user = final.all("USER")[-1].value
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user} is not numeric uid:gid"
    uid, gid = int(match.group(1)), int(match.group(2))
    assert uid != 0
    assert gid != 0
    # ...and the user exists (libpq and getpass look it up).
    run = " ".join(instruction.value for instruction in final.all("RUN"))
    assert f"--uid {uid}" in run
    assert f"--gid {gid}" in run


def test_the_image_environment_is_a_valid_kingest_configuration() -> None:
    env = parser().envs  # of the final stage
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{VENV}/bin:")
    kingest_env = {name: value for name, value in env.items() if name.startswith("KINGEST_")}
    # VALID holds only the required settings, which no image can default.
    settings = load_settings({**VALID, **kingest_env})
    assert settings.http.host == "0.0.0.0"  # reachable from outside the container
    assert settings.log_format == "json"
    exposed = {
        int(port.split("/")[0]) for i in final_stage().all("EXPOSE") for port in i.value.split()
    }
    assert exposed == {settings.http.port}
    assert settings.http.port == http_port_default()


def test_the_container_runs_kingest_start_and_stops_on_sigterm() -> None:
    final = final_stage()
    entrypoint = exec_form(final.all("ENTRYPOINT")[-1].value)
    command = exec_form(final.all("CMD")[-1].value)
    assert entrypoint + command == ["kingest", "start"]
    assert "kingest" in tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert final.one("STOPSIGNAL").value == "SIGTERM"


def test_the_oci_labels_carry_the_version_build_argument() -> None:
    final = final_stage()
    assert any(re.fullmatch(r"VERSION(=.*)?", arg.value) for arg in final.all("ARG"))
    labels = " ".join(instruction.value for instruction in final.all("LABEL"))
    assert re.search(r"org\.opencontainers\.image\.version=\"?\$\{?VERSION\b", labels)
    for key in ("title", "description", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}" in parser().labels, key
    assert (
        parser().labels["org.opencontainers.image.licenses"]
        == (tomllib.loads(PYPROJECT.read_text())["project"]["license"])
    )


# ------------------------------------------------------------------------- build context


def test_dockerignore_matching_follows_docker() -> None:
    rules = dockerignore_rules("*\n!src\n**/__pycache__\n**/*.py[cod]\ndocs/*.md\n")
    assert excluded("README.md", rules)
    assert excluded("tests/unit/test_x.py", rules)
    assert not excluded("src", rules)
    assert not excluded("src/pkg/module.py", rules)
    assert excluded("src/pkg/__pycache__/module.cpython-312.pyc", rules)
    assert excluded("src/stray.pyc", rules)
    assert not excluded("src/stray.pyx", rules)
    later = dockerignore_rules("docs/*.md\n")
    assert excluded("docs/a.md", later)
    assert not excluded("docs/sub/a.md", later)  # `*` stays within one directory
    assert not excluded("other/docs/a.md", later)  # patterns are anchored at the root


def test_every_copy_source_is_in_the_build_context() -> None:
    sources = context_sources()
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert in_context(path), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            for file in path.rglob("*"):
                generated = "__pycache__" in file.parts or file.suffix == ".pyc"
                if file.is_file():
                    assert in_context(file) != generated, file.relative_to(ROOT)


def test_the_context_holds_everything_the_wheel_is_built_from() -> None:
    hatch = tomllib.loads(PYPROJECT.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    needed = {
        "pyproject.toml",
        project["readme"],
        *hatch["packages"],
        *hatch.get("force-include", {}),
    }
    copied = {source.rstrip("/") for source in context_sources()}
    assert needed <= copied, f"not copied into the builder: {sorted(needed - copied)}"
    for name in needed:
        assert in_context(ROOT / name), name


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".tox/py312/x",
        ".mypy_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        ".hypothesis/x",
        "dist/kingest.whl",
        "build/lib/x",
        "htmlcov/index.html",
        ".coverage",
        "tests/ops/test_container.py",
        "docs/kubernetes.md",
        "ops/local.env",
        "ops/Dockerfile",
        "kingest/__pycache__/cli.cpython-312.pyc",
    ],
)
def test_the_context_leaves_out_what_the_image_does_not_need(path: str) -> None:
    assert excluded(path, context_rules())


# ------------------------------------------------------------------------- healthcheck


def test_the_healthcheck_has_its_timing_and_uses_no_curl() -> None:
    check = healthcheck()
    for option in ("interval", "timeout", "start-period"):
        assert duration_s(check.options[option]) > 0, option
    assert int(check.options["retries"]) >= 1
    assert duration_s(check.options["timeout"]) < duration_s(check.options["interval"])
    assert check.argv[0] == "python", "curl and wget are not in the slim base"


class _Health(BaseHTTPRequestHandler):
    """Answers each GET with the next status the server was given."""

    server: _HealthServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        status = self.server.statuses.pop(0)
        body = b'{"ok": %s}\n' % (b"true" if status == 200 else b"false")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, statuses: list[int], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Health)
        self.statuses = statuses
        self.paths: list[str] = []


@contextmanager
def serving(server: _HealthServer) -> Iterator[_HealthServer]:
    """Serve on a thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(port: str | None) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's own command, with this interpreter as `python` and the given
    KINGEST_HTTP_PORT in an otherwise clean KINGEST_* environment."""
    argv = healthcheck().argv
    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    env = {name: value for name, value in os.environ.items() if not name.startswith("KINGEST_")}
    if port is not None:
        env["KINGEST_HTTP_PORT"] = port
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=15, check=False)


def test_the_healthcheck_passes_on_200_and_fails_on_503() -> None:
    with serving(_HealthServer([200, 503])) as server:
        port = str(server.server_address[1])
        healthy = run_healthcheck(port)
        unhealthy = run_healthcheck(port)
    assert healthy.returncode == 0, healthy.stderr
    assert unhealthy.returncode != 0
    assert "503" in unhealthy.stderr
    assert server.paths == ["/healthz", "/healthz"]


def test_the_healthcheck_fails_when_nothing_listens() -> None:
    result = run_healthcheck(str(free_port("127.0.0.1")))
    assert result.returncode != 0
    assert "refused" in result.stderr.lower()


def test_an_empty_port_variable_means_the_exposed_port() -> None:
    # kingest reads an empty KINGEST_HTTP_PORT as its default; so must the healthcheck.
    port = http_port_default()
    try:
        server = _HealthServer([200], port)
    except OSError:
        pytest.skip(f"port {port} is taken on this machine")
    with serving(server):
        result = run_healthcheck("")
    assert result.returncode == 0, result.stderr
    assert server.paths == ["/healthz"]
