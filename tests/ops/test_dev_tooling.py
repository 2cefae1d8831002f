"""The repository keeps itself honest: tox, pre-commit, the Makefile and pyproject.toml
run the same checks with the same thresholds, and the CHANGELOG names the version the
package carries."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import kingest

ROOT = Path(__file__).parents[2]
COVERAGE_FLOOR = 85


def tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return parser


def commands(section: configparser.SectionProxy) -> list[str]:
    return [line.strip() for line in section["commands"].splitlines() if line.strip()]


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_tox_has_the_whole_matrix() -> None:
    config = tox()
    envs = {name.strip() for name in config["tox"]["env_list"].split(",")}
    assert {"py311", "py312", "py313", "lint", "type", "coverage", "wheel"} <= envs
    assert commands(config["testenv:lint"]) == [
        "ruff check .",
        "ruff format --check .",
        "lint-imports",
    ]
    assert commands(config["testenv:type"]) == ["mypy"]
    assert f"--cov-fail-under={COVERAGE_FLOOR}" in config["testenv:coverage"]["commands"]
    assert "KINGEST_TEST_INSTALLED_BIN" in config["testenv:wheel"]["set_env"]


def test_mypy_is_strict_over_both_packages_and_coverage_is_enforced() -> None:
    tools = pyproject()["tool"]
    assert isinstance(tools, dict)
    assert tools["mypy"]["strict"] is True
    assert set(tools["mypy"]["packages"]) == {"kingest", "actors"}
    assert tools["coverage"]["report"]["fail_under"] == COVERAGE_FLOOR
    make_test = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert make_test, "Makefile has no test target"
    assert f"--cov-fail-under={COVERAGE_FLOOR}" in make_test.group(1)


def test_pre_commit_runs_the_linters_of_tox_with_the_projects_tools() -> None:
    path = ROOT / ".pre-commit-config.yaml"
    checked = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    hooks = [hook for repo in yaml.safe_load(path.read_text())["repos"] for hook in repo["hooks"]]
    entries = {
        hook["entry"].removeprefix(".venv/bin/").replace(" --force-exclude", "") for hook in hooks
    }
    config = tox()
    wanted = {line.removesuffix(" .") for line in commands(config["testenv:lint"])}
    wanted |= set(commands(config["testenv:type"]))
    assert wanted <= entries


def test_the_changelog_names_the_packaged_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, re.M)
    assert headings[0] == ("Unreleased", "")
    version, date = headings[1]
    assert version == kingest.__version__
    assert date, "a released version carries its date"
    for released, day in headings[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", released), released
        assert day, released
