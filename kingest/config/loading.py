"""Loading: from an environment to one checked :class:`~kingest.config.settings.Settings`.

:func:`load_settings` is the only reader of the environment for configuration, and it
reports *every* problem at once, so that a deployment is fixed in one round rather than
one variable at a time. It works in passes:

1. the ``KINGEST_*`` strings are nested by setting path (:func:`_raw_from_environ`); an
   unknown variable is a problem (with the closest known name as a hint), an empty one
   means "use the default";
2. cattrs structures them into typed values with strict converters (``"1.5"`` is not an
   integer, ``"nan"`` not a number, ``"maybe"`` not a boolean), and each failure is
   mapped back to its variable;
3. each field's own check runs on every value that converts, even when others did not;
4. once every value is valid on its own, the rules that relate several settings run
   (:func:`_cross_field_problems`), the catalog's among them: it is loaded
   (:attr:`Settings.catalog <kingest.config.settings.Settings.catalog>`) and each of its
   problems is reported under the variable that can fix it;
5. the standard ``OTEL_*`` tracing variables are checked by :mod:`kingest.config.otel`.

Any problem raises :class:`~kingest.config.settings.ConfigError` listing them all, each
with the variable it came from (a variable may have several: one per bad entry of
``KINGEST_TOPIC_TYPES``, one per problem of the catalog). Any librdkafka property passes
through without code changes as ``KINGEST_RDKAFKA_<PROPERTY>``: the rest of the name is
lower-cased and each single underscore becomes a dot (``KINGEST_RDKAFKA_SASL_MECHANISMS`` ->
``sasl.mechanisms``); a double underscore stands for a literal underscore. The properties
kingest sets from its own variables, or must control itself (offset commits, the
isolation level), are refused there.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, get_args

import attrs
import cattrs
from cattrs.errors import ClassValidationError

from kingest.catalog import CatalogError
from kingest.config.otel import tracing_problems
from kingest.config.settings import (
    BadEntriesError,
    ConfigError,
    Settings,
    TopicTypes,
    dead_letter_topic,
    parse_topic_types,
    settings_fields,
)

ENV_PREFIX = "KINGEST_"
RDKAFKA_PREFIX = "KINGEST_RDKAFKA_"
#: Variables under this prefix belong to the test suite, not to the service.
TEST_PREFIX = "KINGEST_TEST_"
#: Variables of the command line (``kingest start --processes``) and of the processes
#: it supervises, read there rather than by :class:`Settings`.
COMMAND_VARIABLES = frozenset({"KINGEST_PROCESSES", "KINGEST_PROCESS_INDEX"})

#: librdkafka properties kingest sets from its own (checked) variables.
_SETTING_PROPERTIES = {
    "bootstrap.servers": "KINGEST_KAFKA_BOOTSTRAP_SERVERS",
    "metadata.broker.list": "KINGEST_KAFKA_BOOTSTRAP_SERVERS",  # librdkafka's alias
    "group.id": "KINGEST_GROUP_ID",
    "partition.assignment.strategy": "KINGEST_KAFKA_ASSIGNMENT_STRATEGY",
    "auto.offset.reset": "KINGEST_KAFKA_AUTO_OFFSET_RESET",
    "session.timeout.ms": "KINGEST_KAFKA_SESSION_TIMEOUT_MS",
    "heartbeat.interval.ms": "KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS",
    "max.poll.interval.ms": "KINGEST_KAFKA_MAX_POLL_INTERVAL_MS",
}
_COMMIT_PROPERTIES = ("enable.auto.commit", "enable.auto.offset.store")


def _pass_through_problem(prop: str, value: str) -> str | None:
    """Why ``KINGEST_RDKAFKA_*`` may not set ``prop`` to ``value``, if it may not: the
    consumer properties kingest sets and checks itself stay under their own variables."""
    if prop in _COMMIT_PROPERTIES:
        return (
            f"{prop} cannot be passed through: kingest commits offsets itself, once what is "
            "below them is stored"
        )
    variable = _SETTING_PROPERTIES.get(prop)
    if variable is not None:
        return f"{prop} cannot be passed through: set {variable} instead"
    if prop == "isolation.level" and value.strip() != "read_committed":
        return "must be read_committed: messages of aborted transactions must not be stored"
    return None


def rdkafka_properties(environ: Mapping[str, str]) -> dict[str, str]:
    """The librdkafka properties passed through by ``KINGEST_RDKAFKA_*`` variables (for a
    command that needs the Kafka settings alone, not the whole validated Settings)."""
    return {
        rdkafka_property_name(name): value
        for name, value in environ.items()
        if name.startswith(RDKAFKA_PREFIX) and len(name) > len(RDKAFKA_PREFIX)
    }


def rdkafka_property_name(variable: str) -> str:
    """``KINGEST_RDKAFKA_SSL_CA_LOCATION`` -> ``ssl.ca.location``."""
    raw = variable[len(RDKAFKA_PREFIX) :].lower()
    return ".".join(part.replace("\0", "_") for part in raw.replace("__", "\0").split("_"))


def _split_list(value: Any, _: type) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return tuple(item.strip() for item in str(value).split(",") if item.strip())


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _split_list)

    def strict_int(value: Any, _: type) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            return value
        text = str(value).strip().replace("_", "")
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(text)

    def strict_float(value: Any, _: type) -> float:
        try:
            result = float(str(value).strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"expected a finite number, got {value!r}")
        return result

    def strict_bool(value: Any, _: type) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")

    def topic_types(value: Any, _: type) -> TopicTypes:
        if isinstance(value, Mapping):
            return TopicTypes(dict(value))
        return parse_topic_types(str(value))

    converter.register_structure_hook(TopicTypes, topic_types)
    converter.register_structure_hook(bool, strict_bool)
    converter.register_structure_hook(int, strict_int)
    converter.register_structure_hook(float, strict_float)
    return converter


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_CONVERTER = _make_converter()


def _raw_from_environ(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Nest the ``KINGEST_*`` strings by setting path; report unknown variables."""
    raw: dict[str, Any] = {}
    known: dict[str, tuple[str, ...]] = {}
    for path, field in settings_fields():
        env = field.metadata["env"]
        if env.endswith("*"):
            continue
        known[env] = path
    problems: list[str] = []
    properties: dict[str, str] = {}
    for name, value in environ.items():
        if (
            not name.startswith(ENV_PREFIX)
            or name.startswith(TEST_PREFIX)
            or name in COMMAND_VARIABLES
        ):
            continue
        if name.startswith(RDKAFKA_PREFIX):
            if len(name) == len(RDKAFKA_PREFIX):
                problems.append(f"{name}: a librdkafka property name must follow the prefix")
            else:
                prop = rdkafka_property_name(name)
                problem = _pass_through_problem(prop, value)
                if problem:
                    problems.append(f"{name}: {problem}")
                properties[prop] = value
            continue
        field_path = known.get(name)
        if field_path is None:
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            problems.append(f"{name}: unknown variable{suggestion}")
            continue
        if value.strip() == "":
            continue  # an empty variable means "use the default"
        node = raw
        for part in field_path[:-1]:
            node = node.setdefault(part, {})
        node[field_path[-1]] = value
    raw.setdefault("kafka", {})["properties"] = properties
    raw.setdefault("database", {})
    return raw, problems


def _variable_for(path: str) -> str:
    """Map a cattrs error path like ``$.kafka.group_id`` to its environment variable."""
    parts = tuple(p for p in path.removeprefix("$").split(".") if p)
    for field_path, field in settings_fields():
        if field_path == parts[: len(field_path)]:
            return str(field.metadata["env"])
    return path


def _format_structure_error(error: BaseException, type_: Any) -> str:
    if isinstance(error, KeyError):
        return "required field missing"
    if isinstance(error, BadEntriesError):
        return _PROBLEM_SEPARATOR.join(error.problems)
    message = str(error)
    choices = get_args(type_)
    if choices and " not in literal " in message:
        return f"must be one of {', '.join(map(str, choices))}"
    if isinstance(error, ValueError) and message:
        return message
    return f"invalid value, expected {getattr(type_, '__name__', type_)}"


#: Joins the problems of one value (:class:`BadEntriesError`) in a cattrs error message.
_PROBLEM_SEPARATOR = "\n"


def _describe_structure_error(error: ClassValidationError) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    for message in cattrs.transform_error(error, format_exception=_format_structure_error):
        text, _, path = message.rpartition(" @ ")
        variable = _variable_for(path)
        problems.setdefault(
            variable,
            ["required, not set"]
            if text == "required field missing"
            else text.split(_PROBLEM_SEPARATOR),
        )
    return problems


def _leaf_values(raw: Mapping[str, Any]) -> Iterator[tuple[attrs.Attribute[Any], Any]]:
    for path, field in settings_fields():
        node: Any = raw
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            yield field, node


def _field_problems(raw: Mapping[str, Any], skip: set[str]) -> dict[str, list[str]]:
    """Run each field's own check on every value that converts (all problems at once)."""
    problems: dict[str, list[str]] = {}
    for field, value in _leaf_values(raw):
        env, check = field.metadata["env"], field.metadata["check"]
        if check is None or env in skip or field.type is None:
            continue
        try:
            typed = _CONVERTER.structure(value, field.type)
        except Exception:  # noqa: S112 - the structuring pass reports it
            continue
        problem = check(typed)
        if problem:
            problems[env] = [problem]
    return problems


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build and check :class:`Settings` from an environment; raise :class:`ConfigError`."""
    raw, problems = _raw_from_environ(environ)
    by_variable: dict[str, list[str]] = {}
    settings: Settings | None = None
    try:
        settings = _CONVERTER.structure(raw, Settings)
    except ClassValidationError as error:
        by_variable.update(_describe_structure_error(error))
    by_variable.update(_field_problems(raw, skip=set(by_variable)))
    if settings is not None and not by_variable:
        for variable, text in _cross_field_problems(settings):
            by_variable.setdefault(variable, []).append(text)
    problems += [f"{variable}: {text}" for variable, texts in by_variable.items() for text in texts]
    problems += tracing_problems(environ)  # the standard OTEL_* tracing variables
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def _cross_field_problems(settings: Settings) -> list[tuple[str, str]]:
    """Rules that relate several settings, as (variable, problem) pairs; run once every
    value is valid on its own."""
    kafka, pipeline = settings.kafka, settings.pipeline
    problems: list[tuple[str, str]] = []
    if kafka.heartbeat_interval_ms * 3 > kafka.session_timeout_ms:
        problems.append(
            (
                "KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS",
                "must be at most a third of KINGEST_KAFKA_SESSION_TIMEOUT_MS",
            )
        )
    if kafka.max_poll_interval_ms < max(kafka.session_timeout_ms, pipeline.drain_timeout_s * 1000):
        problems.append(
            (
                "KINGEST_KAFKA_MAX_POLL_INTERVAL_MS",
                "must be at least KINGEST_KAFKA_SESSION_TIMEOUT_MS and KINGEST_DRAIN_TIMEOUT_S",
            )
        )
    if pipeline.retry_max_s < pipeline.retry_initial_s:
        problems.append(("KINGEST_RETRY_MAX_S", "must be at least KINGEST_RETRY_INITIAL_S"))
    dead_letters = settings.dead_letters
    if dead_letters.to_topic:
        looping = [
            t for t in kafka.topics if dead_letter_topic(dead_letters.topic, t) in kafka.topics
        ]
        if looping:
            problems.append(
                (
                    "KINGEST_DEAD_LETTER_TOPIC",
                    f"the dead-letter topic of {', '.join(looping)} is a consumed topic",
                )
            )
    problems += _catalog_problems(settings)
    return problems


def _catalog_problems(settings: Settings) -> list[tuple[str, str]]:
    """The catalog must load, each typed topic must be consumed, and a consumed topic
    without a type of its own needs the catalog's envelope to be read."""
    topics, topic_types = settings.kafka.topics, settings.catalog_source.topic_types
    problems: list[tuple[str, str]] = []
    not_consumed = [topic for topic in topic_types if topic not in topics]
    if not_consumed:
        problems.append(
            (
                "KINGEST_TOPIC_TYPES",
                f"not in KINGEST_TOPICS, so never consumed: {', '.join(not_consumed)}",
            )
        )
    try:
        catalog = settings.catalog
    except CatalogError as error:
        return problems + [(_catalog_problem_variable(p), p) for p in error.problems]
    untyped = [topic for topic in topics if topic not in topic_types]
    if untyped and catalog.envelope is None:
        problems.append(
            (
                "KINGEST_TOPIC_TYPES",
                f"{', '.join(untyped)} consumed without a type, and the catalog has no "
                "envelope message to read them with: give each a type here, or use a "
                "catalog with an envelope",
            )
        )
    return problems


def _catalog_problem_variable(problem: str) -> str:
    """The variable that can fix one of the catalog's problems: the topic types for a
    problem of a topic, the catalog file for the rest."""
    return "KINGEST_TOPIC_TYPES" if problem.startswith("topic ") else "KINGEST_CATALOG"
