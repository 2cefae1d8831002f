"""Files under ops/ stay in step with the code."""

from __future__ import annotations

from pathlib import Path

from kingest.config import effective_settings, load_settings

OPS = Path(__file__).parents[2] / "ops"


def read_env_file(path: Path) -> dict[str, str]:
    environ = {}
    for raw_line in path.read_text().splitlines():
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
