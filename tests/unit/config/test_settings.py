"""Configuration: typed loading from KINGEST_* variables, every problem at once, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from kingest.config.loading import load_settings, rdkafka_property_name
from kingest.config.redaction import REDACTED, effective_settings, redact_conninfo
from kingest.config.reference import reference_markdown
from kingest.config.settings import ConfigError, settings_fields

VALID = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
    "KINGEST_TOPICS": "ml-events, ml-inference",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://ingest:s3cr3t-pw@db.internal:5432/ml?sslmode=verify-full",
}


def problems_of(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return caught.value.problems


def test_defaults_follow_the_seed_consumer_settings() -> None:
    settings = load_settings(VALID)
    kafka = settings.kafka
    assert kafka.topics == ("ml-events", "ml-inference")
    assert kafka.assignment_strategy == "roundrobin"
    assert kafka.auto_offset_reset == "earliest"
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms) == (10_000, 3_000)
    assert settings.env == "dev"
    assert settings.log_format == "console"


def test_profile_sets_log_format_default_and_explicit_wins() -> None:
    assert load_settings({**VALID, "KINGEST_ENV": "prod"}).log_format == "json"
    explicit = load_settings({**VALID, "KINGEST_ENV": "prod", "KINGEST_LOG_FORMAT": "console"})
    assert explicit.log_format == "console"


def test_numbers_are_parsed_and_overrides_apply() -> None:
    settings = load_settings(
        {
            **VALID,
            "KINGEST_WRITERS": "8",
            "KINGEST_BATCH_SIZE": "10_000",
            "KINGEST_DRAIN_TIMEOUT_S": "12.5",
        }
    )
    assert settings.pipeline.writers == 8
    assert settings.pipeline.batch_size == 10_000
    assert settings.pipeline.drain_timeout_s == 12.5


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "no-port",
            "KINGEST_TOPICS": "ok,bad topic",
            "KINGEST_KAFKA_SESSION_TIMEOUT_MS": "ten seconds",
            "KINGEST_WRITERS": "0",
            "KINGEST_DRAIN_TIMEOUT_S": "nan",
            "KINGEST_ENV": "qa",
            "KINGEST_BACTH_SIZE": "100",
        }
    )
    text = "\n".join(problems)
    for expected in (
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS: 'no-port' is not host:port",
        "KINGEST_TOPICS: 'bad topic' is not a valid topic name",
        "KINGEST_KAFKA_SESSION_TIMEOUT_MS: expected an integer",
        "KINGEST_WRITERS: must be between 1 and 256",
        "KINGEST_DRAIN_TIMEOUT_S: expected a finite number",
        "KINGEST_ENV: must be one of dev, staging, prod",
        "KINGEST_BACTH_SIZE: unknown variable (did you mean KINGEST_BATCH_SIZE?)",
        "KINGEST_GROUP_ID: required, not set",
        "KINGEST_DATABASE_URL: required, not set",
    ):
        assert expected in text
    assert len(problems) == 9


def test_cross_field_rules() -> None:
    problems = problems_of(
        {**VALID, "KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS": "5000", "KINGEST_RETRY_MAX_S": "0.1"}
    )
    assert any(
        p.startswith("KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS: must be at most a third")
        for p in problems
    )
    assert any(p.startswith("KINGEST_RETRY_MAX_S") for p in problems)


def test_empty_value_means_default() -> None:
    assert load_settings({**VALID, "KINGEST_WRITERS": ""}).pipeline.writers == 4


def test_test_suite_variables_are_not_the_services() -> None:
    assert load_settings({**VALID, "KINGEST_TEST_SERVICES": "embedded"}).kafka.group_id == "kingest"


@pytest.mark.parametrize(
    ("variable", "prop"),
    [
        ("KINGEST_RDKAFKA_SECURITY_PROTOCOL", "security.protocol"),
        ("KINGEST_RDKAFKA_SASL_MECHANISMS", "sasl.mechanisms"),
        ("KINGEST_RDKAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
        ("KINGEST_RDKAFKA_SOME__ODD_NAME", "some_odd.name"),
    ],
)
def test_librdkafka_pass_through_names(variable: str, prop: str) -> None:
    assert rdkafka_property_name(variable) == prop
    assert load_settings({**VALID, variable: "x"}).kafka.properties == {prop: "x"}


def test_owned_properties_cannot_be_passed_through() -> None:
    problems = problems_of({**VALID, "KINGEST_RDKAFKA_ENABLE_AUTO_COMMIT": "true"})
    assert problems == [
        "KINGEST_RDKAFKA_ENABLE_AUTO_COMMIT: enable.auto.commit cannot be passed through: "
        "kingest commits offsets itself, once what is below them is stored"
    ]


def test_group_settings_kingest_validates_are_not_overridden_by_the_pass_through() -> None:
    # Each would silently replace a setting kingest checks (the max.poll.interval.ms that
    # must cover the drain, the session timeout the heartbeat is checked against...).
    problems = problems_of(
        {
            **VALID,
            "KINGEST_RDKAFKA_MAX_POLL_INTERVAL_MS": "1000",
            "KINGEST_RDKAFKA_SESSION_TIMEOUT_MS": "6000",
            "KINGEST_RDKAFKA_HEARTBEAT_INTERVAL_MS": "5000",
            "KINGEST_RDKAFKA_PARTITION_ASSIGNMENT_STRATEGY": "range",
            "KINGEST_RDKAFKA_AUTO_OFFSET_RESET": "latest",
            "KINGEST_RDKAFKA_GROUP_ID": "other",
            "KINGEST_RDKAFKA_BOOTSTRAP_SERVERS": "elsewhere:9092",
            "KINGEST_RDKAFKA_METADATA_BROKER_LIST": "elsewhere:9092",
            "KINGEST_RDKAFKA_ENABLE_AUTO_OFFSET_STORE": "true",
            "KINGEST_RDKAFKA_ISOLATION_LEVEL": "read_uncommitted",
            "KINGEST_WRITERS": "0",  # listed with them: every problem at once
        }
    )
    assert sorted(problems) == sorted(
        [
            "KINGEST_RDKAFKA_MAX_POLL_INTERVAL_MS: max.poll.interval.ms cannot be passed "
            "through: set KINGEST_KAFKA_MAX_POLL_INTERVAL_MS instead",
            "KINGEST_RDKAFKA_SESSION_TIMEOUT_MS: session.timeout.ms cannot be passed "
            "through: set KINGEST_KAFKA_SESSION_TIMEOUT_MS instead",
            "KINGEST_RDKAFKA_HEARTBEAT_INTERVAL_MS: heartbeat.interval.ms cannot be passed "
            "through: set KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS instead",
            "KINGEST_RDKAFKA_PARTITION_ASSIGNMENT_STRATEGY: partition.assignment.strategy "
            "cannot be passed through: set KINGEST_KAFKA_ASSIGNMENT_STRATEGY instead",
            "KINGEST_RDKAFKA_AUTO_OFFSET_RESET: auto.offset.reset cannot be passed "
            "through: set KINGEST_KAFKA_AUTO_OFFSET_RESET instead",
            "KINGEST_RDKAFKA_GROUP_ID: group.id cannot be passed through: "
            "set KINGEST_GROUP_ID instead",
            "KINGEST_RDKAFKA_BOOTSTRAP_SERVERS: bootstrap.servers cannot be passed through: "
            "set KINGEST_KAFKA_BOOTSTRAP_SERVERS instead",
            "KINGEST_RDKAFKA_METADATA_BROKER_LIST: metadata.broker.list cannot be passed "
            "through: set KINGEST_KAFKA_BOOTSTRAP_SERVERS instead",
            "KINGEST_RDKAFKA_ENABLE_AUTO_OFFSET_STORE: enable.auto.offset.store cannot be "
            "passed through: kingest commits offsets itself, once what is below them is "
            "stored",
            "KINGEST_RDKAFKA_ISOLATION_LEVEL: must be read_committed: messages of aborted "
            "transactions must not be stored",
            "KINGEST_WRITERS: must be between 1 and 256",
        ]
    )


def test_the_pass_through_may_restate_the_isolation_level_kingest_needs() -> None:
    settings = load_settings({**VALID, "KINGEST_RDKAFKA_ISOLATION_LEVEL": "read_committed"})
    assert settings.kafka.properties == {"isolation.level": "read_committed"}


def test_secrets_are_redacted_in_the_effective_configuration() -> None:
    settings = load_settings(
        {
            **VALID,
            "KINGEST_RDKAFKA_SASL_PASSWORD": "kafka-pw",
            "KINGEST_RDKAFKA_SASL_USERNAME": "svc-ingest",
            "KINGEST_RDKAFKA_SSL_KEY_PASSWORD": "key-pw",
        }
    )
    values = effective_settings(settings)
    rendered = repr(values)
    for secret in ("s3cr3t-pw", "kafka-pw", "key-pw"):
        assert secret not in rendered
    assert values["KINGEST_RDKAFKA_SASL_PASSWORD"] == REDACTED
    assert values["KINGEST_RDKAFKA_SASL_USERNAME"] == "svc-ingest"
    assert "db.internal" in values["KINGEST_DATABASE_URL"]


def test_a_malformed_database_url_does_not_echo_the_password() -> None:
    problems = problems_of({**VALID, "KINGEST_DATABASE_URL": "host=db password=hunter2 port"})
    assert problems == [
        "KINGEST_DATABASE_URL: not a valid libpq URL or key=value connection string"
    ]
    assert "hunter2" not in redact_conninfo("host=db password=hunter2 port")


def test_reference_lists_every_variable() -> None:
    reference = reference_markdown()
    assert reference.splitlines()[2].startswith("| `KINGEST_ENV` | `dev` |")
    for _, field in settings_fields():
        assert f"| `{field.metadata['env']}` |" in reference


def test_the_configuration_page_embeds_the_current_reference() -> None:
    page = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()
    start = page.index("<!-- config-reference:start -->\n") + len(
        "<!-- config-reference:start -->\n"
    )
    end = page.index("<!-- config-reference:end -->")
    assert page[start:end] == reference_markdown(), (
        "run `kingest config --reference` and paste it into docs/configuration.md"
    )


def test_the_command_line_variables_are_not_unknown_settings() -> None:
    """`kingest start --processes` reads them; every other command must accept them too."""
    environ = {**VALID, "KINGEST_PROCESSES": "2", "KINGEST_PROCESS_INDEX": "1"}
    assert load_settings(environ) == load_settings(VALID)
