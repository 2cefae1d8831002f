"""Tracing set-up from the standard OTEL_* variables: defaults, every invalid value
reported as a configuration problem with the KINGEST_* ones, nothing secret shown."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kingest.cli.commands import app
from kingest.config.loading import load_settings
from kingest.config.otel import (
    TracingConfigError,
    describe_tracing,
    load_tracing_config,
    tracing_problems,
)
from kingest.config.settings import ConfigError
from kingest.telemetry.tracing import parse_traceparent

REQUIRED = {
    "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "KINGEST_TOPICS": "ml-events",
    "KINGEST_GROUP_ID": "kingest",
    "KINGEST_DATABASE_URL": "postgresql://kingest@db/ml",
}


def test_without_any_variable_tracing_is_off() -> None:
    config = load_tracing_config({})
    assert not config.enabled
    assert config.exporters_reason == "default: no OTLP endpoint variable is set"
    assert config.sampler == "parentbased_always_on"
    assert config.service_name == "kingest"


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
def test_an_otlp_endpoint_alone_turns_otlp_on(variable: str) -> None:
    config = load_tracing_config({variable: "http://collector:4318"})
    assert config.exporters == ("otlp",)
    assert config.exporters_reason == f"default: {variable} is set"
    assert config.protocol == "http/protobuf"


def test_endpoints_resolve_as_the_exporters_resolve_them() -> None:
    base = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}
    assert load_tracing_config(base).endpoint == "http://c:4318/v1/traces"
    grpc = {**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert load_tracing_config(grpc).endpoint == "http://c:4318/"
    traces = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:443/x"}
    assert load_tracing_config(traces).endpoint == "https://t:443/x"
    assert load_tracing_config({"OTEL_TRACES_EXPORTER": "otlp"}).endpoint == (
        "http://localhost:4318/v1/traces"
    )


def test_the_traces_protocol_overrides_the_general_one() -> None:
    config = load_tracing_config(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        }
    )
    assert config.protocol == "grpc"
    assert config.endpoint == "http://localhost:4317"


def test_explicit_none_console_and_lists() -> None:
    assert (
        load_tracing_config(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
        ).exporters
        == ()
    )
    assert load_tracing_config({"OTEL_TRACES_EXPORTER": "Console, otlp"}).exporters == (
        "console",
        "otlp",
    )
    disabled = load_tracing_config({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})
    assert not disabled.enabled


def test_sampler_and_ratio() -> None:
    config = load_tracing_config(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    )
    assert (config.sampler, config.sampler_ratio) == ("parentbased_traceidratio", 0.01)
    ratio_default = load_tracing_config({"OTEL_TRACES_SAMPLER": "traceidratio"})
    assert ratio_default.sampler_ratio == 1.0
    # The argument of a sampler that takes none is ignored, as the specification says.
    assert (
        load_tracing_config(
            {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "nonsense"}
        ).sampler_ratio
        is None
    )


def test_service_name_from_the_standard_variables() -> None:
    assert load_tracing_config({"OTEL_SERVICE_NAME": "ingest-a"}).service_name == "ingest-a"
    from_attributes = load_tracing_config(
        {"OTEL_RESOURCE_ATTRIBUTES": "service.name=ingest-b,deployment.environment=prod"}
    )
    assert from_attributes.service_name == "ingest-b"
    assert ("deployment.environment", "prod") in from_attributes.resource_attributes


INVALID = [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not supported"),
    ({"OTEL_TRACES_EXPORTER": "otlp,none"}, "OTEL_TRACES_EXPORTER: none cannot be combined"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'udp'"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: 'coll"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c/"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:99999"}, "has an invalid port"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "authorization"}, "OTEL_EXPORTER_OTLP_HEADERS: 1 entries"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT: 'soon'"),
    ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-1"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '-1'"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "OTEL_EXPORTER_OTLP_COMPRESSION: 'brotli'"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER: 'sometimes' is not supported"),
    (
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        "OTEL_TRACES_SAMPLER_ARG: '1.5' is not a ratio",
    ),
    (
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"},
        "OTEL_TRACES_SAMPLER_ARG: 'x' is not a ratio",
    ),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=ml,broken"}, "OTEL_RESOURCE_ATTRIBUTES: 'broken'"),
    ({"OTEL_SPAN_LINK_COUNT_LIMIT": "many"}, "OTEL_SPAN_LINK_COUNT_LIMIT: 'many'"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE: '0' is not a positive"),
]


@pytest.mark.parametrize(("environ", "expected"), INVALID)
def test_each_invalid_value_is_a_problem(environ: dict[str, str], expected: str) -> None:
    problems = tracing_problems(environ)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected) or expected in problems[0]
    with pytest.raises(TracingConfigError):
        load_tracing_config(environ)


def test_all_invalid_values_are_reported_at_once_with_the_kingest_ones() -> None:
    environ = {**REQUIRED, "KINGEST_WRITERS": "0"}
    for bad, _ in INVALID:
        if "OTEL_TRACES_EXPORTER" not in bad:
            environ.update(bad)
    environ["OTEL_TRACES_EXPORTER"] = "zipkin"
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    problems = caught.value.problems
    assert problems[0].startswith("KINGEST_WRITERS")
    reported = {problem.split(":")[0] for problem in problems}
    expected = {variable for bad, _ in INVALID for variable in bad} - {"OTEL_TRACES_SAMPLER"}
    # Both sampler cases set OTEL_TRACES_SAMPLER; the last one (a ratio sampler with a
    # bad argument) wins, so its problem is the argument's.
    assert expected <= reported


def test_kingest_start_exits_2_listing_the_tracing_problem() -> None:
    result = CliRunner().invoke(
        app, ["start"], env={**REQUIRED, "OTEL_TRACES_SAMPLER": "sometimes"}
    )
    assert result.exit_code == 2
    assert "OTEL_TRACES_SAMPLER: 'sometimes' is not supported" in result.output
    assert "Traceback" not in result.output


def test_kingest_config_shows_the_tracing_set_up_without_secrets() -> None:
    env = {
        **REQUIRED,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:pa55word@collector:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20t0ken,x-scope-orgid=tenant",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.05",
    }
    result = CliRunner().invoke(app, ["config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "pa55word" not in result.output
    assert "t0ken" not in result.output
    assert "tenant" not in result.output
    config = load_tracing_config(env)
    shown = describe_tracing(config)
    assert shown["OTEL_TRACES_EXPORTER"] == ("otlp (default: OTEL_EXPORTER_OTLP_ENDPOINT is set)")
    assert shown["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == (
        "https://user:**redacted**@collector:4318/v1/traces"
    )
    assert shown["OTEL_EXPORTER_OTLP_HEADERS"] == (
        "authorization=**redacted**,x-scope-orgid=**redacted**"
    )
    assert shown["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio (0.05)"
    assert '"OTEL_TRACES_SAMPLER": "parentbased_traceidratio (0.05)"' in result.output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", (True, True)),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", (True, False)),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03", (True, True)),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future", (True, True)),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", (False, False)),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", (False, False)),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", (False, False)),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", (False, False)),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01", (False, False)),
        ("00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01", (False, False)),
        ("garbage", (False, False)),
    ],
)
def test_traceparent_parsing(value: str | bytes, expected: tuple[bool, bool]) -> None:
    context = parse_traceparent(value)
    valid, sampled = expected
    assert (context is not None) is valid
    if context is not None:
        assert context.is_remote
        assert context.trace_flags.sampled is sampled
        assert f"{context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
