"""Files under ops/ stay in step with the code."""

from __future__ import annotations

from pathlib import Path

from kingest.config.loading import load_settings
from kingest.config.redaction import effective_settings
from tests.unit.config.test_settings import VALID

OPS = Path(__file__).parents[2] / "ops"


def read_env_file(path: Path) -> dict[str, str]:
    return read_env_file_text(path.read_text())


def read_env_file_text(text: str) -> dict[str, str]:
    environ = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            environ[name] = value
    return environ


def test_example_environment_is_a_valid_configuration() -> None:
    settings = load_settings(read_env_file(OPS / "kingest.env.example"))
    assert settings.env == "prod"
    assert settings.kafka.properties["security.protocol"] == "SASL_SSL"
    shown = effective_settings(settings)
    assert "change-me" not in repr(shown)


def test_the_example_shows_the_real_defaults_where_it_says_so() -> None:
    lines = (OPS / "kingest.env.example").read_text().split("(defaults shown)\n", 1)[1]
    shown = read_env_file_text(lines.split("\n\n", 1)[0])
    assert shown, "no defaults shown"
    defaults = load_settings(VALID)  # the required settings only
    for name, value in shown.items():
        assert load_settings({**VALID, name: value}) == defaults, f"{name}={value}"
