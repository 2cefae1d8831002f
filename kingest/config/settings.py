"""Configuration from ``KINGEST_*`` environment variables.

Every setting is a field of an attrs class carrying its environment variable name and a
one-line description in its metadata, so the loader, ``kingest config`` and the reference
table of docs/configuration.md all come from one place. Loading happens in two passes so
that *every* problem is reported at once:

1. cattrs structures the raw strings into typed values (type errors, missing variables);
2. :func:`check_settings` checks ranges and cross-field rules on the typed result.

Either pass raises :class:`ConfigError` listing each problem with the variable it came
from. Any librdkafka property passes through without code changes as
``KINGEST_RDKAFKA_<PROPERTY>``: the rest of the name is lower-cased and each single
underscore becomes a dot (``KINGEST_RDKAFKA_SASL_MECHANISMS`` -> ``sasl.mechanisms``); a
double underscore stands for a literal underscore.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

import attrs
import cattrs
from cattrs.errors import ClassValidationError
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ENV_PREFIX = "KINGEST_"
RDKAFKA_PREFIX = "KINGEST_RDKAFKA_"
#: Variables under this prefix belong to the test suite, not to the service.
TEST_PREFIX = "KINGEST_TEST_"
#: Variables of the command line (``kingest start --processes``) and of the processes
#: it supervises, read there rather than by :class:`Settings`.
COMMAND_VARIABLES = frozenset({"KINGEST_PROCESSES", "KINGEST_PROCESS_INDEX"})
REDACTED = "**redacted**"

Profile = Literal["dev", "staging", "prod"]
LogFormat = Literal["console", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
AssignmentStrategy = Literal["roundrobin", "range", "cooperative-sticky"]
OffsetReset = Literal["earliest", "latest", "error"]
DeadLetterStore = Literal["table", "topic", "both"]

# librdkafka properties whose values are secrets (matched on the property name).
_SECRET_PROPERTY = re.compile(r"(password|secret|jaas|token|\.pem$|private)", re.IGNORECASE)
# libpq parameters whose values are secrets, whatever the libpq linked: the password,
# the passphrase of the TLS key, the OAuth client secret and the SCRAM keys (which
# libpq marks as debug options, not as secrets, but which log in like a password).
_SECRET_CONNINFO_PARAMETERS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)


Check = Callable[[Any], str | None]


def _setting(
    env: str,
    doc: str,
    default: Any = attrs.NOTHING,
    *,
    secret: bool = False,
    check: Check | None = None,
) -> Any:
    """A configuration field: its variable, its description and an optional value check."""
    metadata = {"env": env, "doc": doc, "secret": secret, "check": check}
    return attrs.field(default=default, metadata=metadata)


def _between(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _at_least(low: int) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low}"

    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be positive"


def _check_bootstrap(value: str) -> str | None:
    bad = [s for s in (p.strip() for p in value.split(",")) if not _HOST_PORT.fullmatch(s)]
    return f"{', '.join(map(repr, bad))} is not host:port" if bad else None


def _check_topics(value: tuple[str, ...]) -> str | None:
    if not value:
        return "at least one topic is required"
    bad = [t for t in value if not _TOPIC_NAME.fullmatch(t) or t in (".", "..")]
    return f"{', '.join(map(repr, bad))} is not a valid topic name" if bad else None


def _check_dead_letter_topic(value: str) -> str | None:
    example = value.replace("{topic}", "events")
    if _TOPIC_NAME.fullmatch(example) and example not in (".", ".."):
        return None
    return (
        f"{value!r} is not a valid topic name (letters, digits, '.', '_', '-'; "
        "{topic} stands for the source topic)"
    )


def _check_not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be blank"


def _check_conninfo(value: str) -> str | None:
    try:
        params = conninfo_to_dict(value)
    except Exception:  # libpq's message may quote parts of the string, password included
        return "not a valid libpq URL or key=value connection string"
    return None if params else "must not be empty"


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


_HOST_PORT = re.compile(r"[^\s:/,]+:\d{1,5}")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
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


@attrs.frozen
class KafkaSettings:
    """How to reach Kafka and how the consumer behaves in its group."""

    bootstrap_servers: str = _setting(
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS",
        "Comma-separated host:port list of Kafka brokers.",
        check=_check_bootstrap,
    )
    topics: tuple[str, ...] = _setting(
        "KINGEST_TOPICS", "Comma-separated topics to consume.", check=_check_topics
    )
    group_id: str = _setting(
        "KINGEST_GROUP_ID", "Consumer group id shared by all instances.", check=_check_not_blank
    )
    client_id: str = _setting(
        "KINGEST_KAFKA_CLIENT_ID", "client.id sent to the brokers.", "kingest"
    )
    assignment_strategy: AssignmentStrategy = _setting(
        "KINGEST_KAFKA_ASSIGNMENT_STRATEGY",
        "partition.assignment.strategy: roundrobin, range or cooperative-sticky.",
        "roundrobin",
    )
    auto_offset_reset: OffsetReset = _setting(
        "KINGEST_KAFKA_AUTO_OFFSET_RESET",
        "Where a group without a committed offset starts: earliest, latest or error.",
        "earliest",
    )
    session_timeout_ms: int = _setting(
        "KINGEST_KAFKA_SESSION_TIMEOUT_MS",
        "session.timeout.ms of the group membership.",
        10_000,
        check=_between(1_000, 3_600_000),
    )
    heartbeat_interval_ms: int = _setting(
        "KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS",
        "heartbeat.interval.ms; at most a third of the session timeout.",
        3_000,
        check=_positive,
    )
    max_poll_interval_ms: int = _setting(
        "KINGEST_KAFKA_MAX_POLL_INTERVAL_MS",
        "max.poll.interval.ms; at least the session timeout and the drain timeout.",
        300_000,
        check=_between(1_000, 86_400_000),
    )
    poll_batch_size: int = _setting(
        "KINGEST_KAFKA_POLL_BATCH_SIZE",
        "Most messages taken from the client per poll.",
        5_000,
        check=_between(1, 100_000),
    )
    fetch_queue_kbytes: int = _setting(
        "KINGEST_KAFKA_FETCH_QUEUE_KBYTES",
        "queued.max.messages.kbytes: bound of librdkafka's prefetch queue.",
        16_384,
        check=_between(64, 2_097_151),
    )
    commit_interval_ms: int = _setting(
        "KINGEST_COMMIT_INTERVAL_MS",
        "How often contiguous acknowledged offsets are committed.",
        1_000,
        check=_between(10, 600_000),
    )
    properties: Mapping[str, str] = _setting(
        "KINGEST_RDKAFKA_*",
        "Any librdkafka property: KINGEST_RDKAFKA_SECURITY_PROTOCOL=SASL_SSL sets "
        "security.protocol (an underscore is a dot, a double underscore an underscore). "
        "Refused (exit 2): a property set by one of the variables above (bootstrap.servers, "
        "group.id, partition.assignment.strategy, auto.offset.reset, session.timeout.ms, "
        "heartbeat.interval.ms, max.poll.interval.ms: set that variable), "
        "enable.auto.commit and enable.auto.offset.store (kingest commits itself), and "
        "isolation.level other than read_committed.",
        attrs.Factory(dict),
    )


@attrs.frozen
class DatabaseSettings:
    """How to reach PostgreSQL."""

    url: str = _setting(
        "KINGEST_DATABASE_URL",
        "libpq URL or key=value string (add sslmode=verify-full for TLS).",
        secret=True,
        check=_check_conninfo,
    )
    statement_timeout_ms: int = _setting(
        "KINGEST_DATABASE_STATEMENT_TIMEOUT_MS",
        "statement_timeout of writer sessions (0 = none).",
        60_000,
        check=_at_least(0),
    )
    connect_timeout_s: float = _setting(
        "KINGEST_DATABASE_CONNECT_TIMEOUT_S",
        "Seconds to wait for a new connection.",
        10.0,
        check=_positive,
    )
    copy: bool = _setting(
        "KINGEST_DATABASE_COPY",
        "Write plain fact tables with binary COPY, falling back to INSERT ... ON CONFLICT "
        "when a batch holds redelivered events (true or false; false: always INSERT).",
        True,
    )
    prepared_statements: bool = _setting(
        "KINGEST_DATABASE_PREPARED_STATEMENTS",
        "Prepare the writers' statements on the server (true or false). Set false behind "
        "a connection pooler in transaction mode (PgBouncer before 1.21, or without "
        "max_prepared_statements), where a session's prepared statements do not outlive "
        "a transaction; kingest turns them off by itself the first time it meets one.",
        True,
    )


@attrs.frozen
class PipelineSettings:
    """Batching, concurrency and the bounds that keep memory flat."""

    writers: int = _setting(
        "KINGEST_WRITERS",
        "Number of DB-writer actors, each with its own connection.",
        4,
        check=_between(1, 256),
    )
    batch_size: int = _setting(
        "KINGEST_BATCH_SIZE",
        "Messages a partition gathers into one write batch before it flushes.",
        5_000,
        check=_between(1, 1_000_000),
    )
    batch_bytes: int = _setting(
        "KINGEST_BATCH_BYTES",
        "Estimated memory of a write batch at which a partition flushes it even if it "
        "holds fewer than KINGEST_BATCH_SIZE messages (bounds batches of large messages).",
        8 * 1024 * 1024,
        check=_at_least(65_536),
    )
    batch_linger_ms: int = _setting(
        "KINGEST_BATCH_LINGER_MS",
        "Longest a partition holds a batch that is not full.",
        50,
        check=_between(0, 60_000),
    )
    writer_queue_batches: int = _setting(
        "KINGEST_WRITER_QUEUE_BATCHES",
        "Bound of the writers' shared queue, in batches.",
        8,
        check=_between(1, 10_000),
    )
    partition_queue_messages: int = _setting(
        "KINGEST_PARTITION_QUEUE_MESSAGES",
        "Queued messages per partition before it is paused on the consumer.",
        10_000,
        check=_at_least(1),
    )
    partition_queue_bytes: int = _setting(
        "KINGEST_PARTITION_QUEUE_BYTES",
        "Queued message bytes per partition before it is paused on the consumer.",
        16 * 1024 * 1024,
        check=_at_least(65_536),
    )
    partition_unacked_messages: int = _setting(
        "KINGEST_PARTITION_UNACKED_MESSAGES",
        "Messages per partition consumed and not yet durable (queued, batched, being "
        "written or retried) before it is paused on the consumer; resumed at half. 0: "
        "what the pipeline can hold for one partition, KINGEST_PARTITION_QUEUE_MESSAGES + "
        "poll + (KINGEST_WRITER_QUEUE_BATCHES + 2 x KINGEST_WRITERS + 1) x (batch + poll).",
        0,
        check=_at_least(0),
    )
    partition_unacked_bytes: int = _setting(
        "KINGEST_PARTITION_UNACKED_BYTES",
        "Message bytes per partition consumed and not yet durable before it is paused on "
        "the consumer; resumed at half. 0: KINGEST_PARTITION_QUEUE_BYTES + "
        "(KINGEST_WRITER_QUEUE_BATCHES + 2 x KINGEST_WRITERS + 1) x KINGEST_BATCH_BYTES.",
        0,
        check=_at_least(0),
    )
    drain_timeout_s: float = _setting(
        "KINGEST_DRAIN_TIMEOUT_S",
        "On shutdown or revoke, how long in-flight work may take to finish.",
        30.0,
        check=_positive,
    )
    retry_initial_s: float = _setting(
        "KINGEST_RETRY_INITIAL_S",
        "First backoff after a transient database error.",
        0.2,
        check=_positive,
    )
    retry_max_s: float = _setting(
        "KINGEST_RETRY_MAX_S",
        "Longest backoff between retries of a transient error.",
        10.0,
        check=_positive,
    )
    retry_budget: int = _setting(
        "KINGEST_RETRY_BUDGET",
        "Attempts of one write that fails with a transient error other than an outage "
        "(deadlock, lock or statement timeout, a trigger's RAISE, an unknown SQLSTATE) "
        "before the batch is split and a row still failing is dead-lettered as "
        "retries_exhausted. Outages are retried forever.",
        5,
        check=_between(1, 1_000),
    )
    trace_message_spans: int = _setting(
        "KINGEST_TRACE_MESSAGE_SPANS",
        "With tracing on, most per-message spans one batch records for messages whose "
        "traceparent is sampled, spread over the batch (0: none); the batch span links "
        "them all either way.",
        16,
        check=_between(0, 1_000_000),
    )


@attrs.frozen
class DeadLetterSettings:
    """Where messages that cannot be stored as facts go (see docs/dead-letters.md)."""

    store: DeadLetterStore = _setting(
        "KINGEST_DEAD_LETTER_STORE",
        "Where dead letters go: table (kingest.dead_letters, in the batch's own "
        "transaction), topic, or both.",
        "table",
    )
    topic: str = _setting(
        "KINGEST_DEAD_LETTER_TOPIC",
        "Dead-letter topic when the store includes topic; {topic} stands for the source "
        "topic. The topic must exist.",
        "{topic}.dlq",
        check=_check_dead_letter_topic,
    )
    publish_timeout_s: float = _setting(
        "KINGEST_DEAD_LETTER_PUBLISH_TIMEOUT_S",
        "Time budget of a dead letter on the topic: the producer's delivery timeout, and "
        "how long failed publications are retried. A dead letter the topic cannot take "
        "(too large, not authorized, or still failing after the budget) is kept in "
        "kingest.dead_letters with the error in publish_error.",
        30.0,
        check=_at_least(1),
    )

    @property
    def to_table(self) -> bool:
        return self.store in ("table", "both")

    @property
    def to_topic(self) -> bool:
        return self.store in ("topic", "both")


@attrs.frozen
class LogSettings:
    """Log output; defaults depend on the profile."""

    level: LogLevel | None = _setting(
        "KINGEST_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR (default INFO).", None
    )
    format: LogFormat | None = _setting(
        "KINGEST_LOG_FORMAT", "console or json (default: console in dev, json otherwise).", None
    )


@attrs.frozen
class HttpSettings:
    """The HTTP endpoints: Prometheus metrics, liveness and readiness."""

    enabled: bool = _setting(
        "KINGEST_HTTP_ENABLED",
        "Serve /metrics, /healthz and /readyz (true or false).",
        True,
    )
    host: str = _setting(
        "KINGEST_HTTP_HOST",
        "Address the HTTP endpoints listen on (0.0.0.0: every interface).",
        "0.0.0.0",  # noqa: S104 - probes and scrapes come from outside the container
        check=_check_not_blank,
    )
    port: int = _setting(
        "KINGEST_HTTP_PORT",
        "Port of the HTTP endpoints (0: any free port, logged at start).",
        9464,
        check=_between(0, 65_535),
    )
    loop_stall_s: float = _setting(
        "KINGEST_HEALTH_LOOP_STALL_S",
        "/healthz fails when the consumer loop has not polled for this long (keep it above "
        "KINGEST_DRAIN_TIMEOUT_S: a drain does not poll).",
        60.0,
        check=_positive,
    )
    max_unacked_age_s: float = _setting(
        "KINGEST_HEALTH_MAX_UNACKED_AGE_S",
        "/readyz fails when a consumed message has not been stored for this long.",
        300.0,
        check=_positive,
    )
    max_fetch_stall_s: float = _setting(
        "KINGEST_HEALTH_MAX_FETCH_STALL_S",
        "/readyz fails when an assigned partition that has messages to fetch and that "
        "kingest has not paused has not been fetched for this long.",
        60.0,
        check=_positive,
    )
    lag_interval_s: float = _setting(
        "KINGEST_LAG_INTERVAL_S",
        "How often end and committed offsets are read from the broker for the lag gauge.",
        5.0,
        check=_positive,
    )


@attrs.frozen
class Settings:
    """The whole effective configuration of one kingest process."""

    kafka: KafkaSettings
    database: DatabaseSettings
    pipeline: PipelineSettings = attrs.Factory(PipelineSettings)
    dead_letters: DeadLetterSettings = attrs.Factory(DeadLetterSettings)
    log: LogSettings = attrs.Factory(LogSettings)
    http: HttpSettings = attrs.Factory(HttpSettings)
    env: Profile = _setting("KINGEST_ENV", "Deployment profile: dev, staging or prod.", "dev")

    @property
    def log_level(self) -> str:
        return self.log.level or "INFO"

    @property
    def log_format(self) -> str:
        return self.log.format or ("console" if self.env == "dev" else "json")


for _cls in (
    KafkaSettings,
    DatabaseSettings,
    PipelineSettings,
    DeadLetterSettings,
    LogSettings,
    HttpSettings,
    Settings,
):
    attrs.resolve_types(_cls)


class ConfigError(Exception):
    """The environment does not describe a valid configuration; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------- loading


def _env_fields(
    cls: type, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], attrs.Attribute[Any]]]:
    """Yield (path, field) for every leaf setting of ``cls``, depth first."""
    fields = attrs.fields(cls)
    for field in fields:  # a class's own settings first (KINGEST_ENV heads the reference)
        if "env" in field.metadata:
            yield (*path, field.name), field
    for field in fields:
        if "env" not in field.metadata and isinstance(field.type, type) and attrs.has(field.type):
            yield from _env_fields(field.type, (*path, field.name))


def settings_fields() -> list[tuple[tuple[str, ...], attrs.Attribute[Any]]]:
    """Every setting with its path in :class:`Settings` (used by docs and ``kingest config``)."""
    return list(_env_fields(Settings))


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
    for path, field in _env_fields(Settings):
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
    for field_path, field in _env_fields(Settings):
        if field_path == parts[: len(field_path)]:
            return str(field.metadata["env"])
    return path


def _format_structure_error(error: BaseException, type_: Any) -> str:
    if isinstance(error, KeyError):
        return "required field missing"
    message = str(error)
    choices = get_args(type_)
    if choices and " not in literal " in message:
        return f"must be one of {', '.join(map(str, choices))}"
    if isinstance(error, ValueError) and message:
        return message
    return f"invalid value, expected {getattr(type_, '__name__', type_)}"


def _describe_structure_error(error: ClassValidationError) -> dict[str, str]:
    problems: dict[str, str] = {}
    for message in cattrs.transform_error(error, format_exception=_format_structure_error):
        text, _, path = message.rpartition(" @ ")
        variable = _variable_for(path)
        problems.setdefault(
            variable, "required, not set" if text == "required field missing" else text
        )
    return problems


def _leaf_values(raw: Mapping[str, Any]) -> Iterator[tuple[attrs.Attribute[Any], Any]]:
    for path, field in _env_fields(Settings):
        node: Any = raw
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            yield field, node


def _field_problems(raw: Mapping[str, Any], skip: set[str]) -> dict[str, str]:
    """Run each field's own check on every value that converts (all problems at once)."""
    problems: dict[str, str] = {}
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
            problems[env] = problem
    return problems


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build and check :class:`Settings` from an environment; raise :class:`ConfigError`."""
    raw, problems = _raw_from_environ(environ)
    by_variable: dict[str, str] = {}
    settings: Settings | None = None
    try:
        settings = _CONVERTER.structure(raw, Settings)
    except ClassValidationError as error:
        by_variable.update(_describe_structure_error(error))
    by_variable.update(_field_problems(raw, skip=set(by_variable)))
    if settings is not None and not by_variable:
        by_variable.update(_cross_field_problems(settings))
    problems += [f"{variable}: {text}" for variable, text in by_variable.items()]
    # The standard OTEL_* tracing variables (imported here: otel uses this module).
    from kingest.config.otel import tracing_problems  # noqa: PLC0415

    problems += tracing_problems(environ)
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def dead_letter_topic(template: str, source_topic: str) -> str:
    """The dead-letter topic of ``source_topic``: ``"{topic}.dlq"`` -> ``"events.dlq"``."""
    return template.replace("{topic}", source_topic)


def _cross_field_problems(settings: Settings) -> dict[str, str]:
    """Rules that relate several settings; run once every value is valid on its own."""
    kafka, pipeline = settings.kafka, settings.pipeline
    problems: dict[str, str] = {}
    if kafka.heartbeat_interval_ms * 3 > kafka.session_timeout_ms:
        problems["KINGEST_KAFKA_HEARTBEAT_INTERVAL_MS"] = (
            "must be at most a third of KINGEST_KAFKA_SESSION_TIMEOUT_MS"
        )
    if kafka.max_poll_interval_ms < max(kafka.session_timeout_ms, pipeline.drain_timeout_s * 1000):
        problems["KINGEST_KAFKA_MAX_POLL_INTERVAL_MS"] = (
            "must be at least KINGEST_KAFKA_SESSION_TIMEOUT_MS and KINGEST_DRAIN_TIMEOUT_S"
        )
    if pipeline.retry_max_s < pipeline.retry_initial_s:
        problems["KINGEST_RETRY_MAX_S"] = "must be at least KINGEST_RETRY_INITIAL_S"
    dead_letters = settings.dead_letters
    if dead_letters.to_topic:
        looping = [
            t for t in kafka.topics if dead_letter_topic(dead_letters.topic, t) in kafka.topics
        ]
        if looping:
            problems["KINGEST_DEAD_LETTER_TOPIC"] = (
                f"the dead-letter topic of {', '.join(looping)} is a consumed topic"
            )
    return problems


# --------------------------------------------------------------------------- redaction


@cache
def secret_conninfo_parameters() -> frozenset[str]:
    """The libpq parameters whose values are secrets: ours, and those the linked libpq
    itself marks as secrets (``PQconndefaults`` display character ``*``)."""
    try:
        marked = {
            option.keyword.decode()
            for option in pq.Conninfo.get_defaults()
            if option.dispchar == b"*"
        }
    except Exception:  # a libpq without PQconndefaults: ours are the known ones
        marked = set()
    return _SECRET_CONNINFO_PARAMETERS | marked


def conninfo_secrets(conninfo: str) -> list[str]:
    """Every secret value of a connection string, as libpq reads it and, in a URL, as
    written there (percent-encoded), longest first; raises when it does not parse."""
    names = secret_conninfo_parameters()
    secrets = {
        str(value) for name, value in conninfo_to_dict(conninfo).items() if name in names and value
    }
    if conninfo.startswith(("postgresql://", "postgres://")):
        try:
            url = urlsplit(conninfo)
            written = [url.password or ""]
        except ValueError:  # libpq took it, urllib does not: the read values remain
            url, written = None, []
        if url is not None:
            for item in url.query.split("&"):
                name, _, value = item.partition("=")
                if unquote(name) in names:
                    written.append(value)
        secrets.update(value for value in written if value)
    return sorted(secrets, key=len, reverse=True)


def redact_conninfo(url: str) -> str:
    """The connection string with every secret parameter (password, sslpassword...)
    replaced; never raises."""
    try:
        params = conninfo_to_dict(url)
    except Exception:
        return REDACTED
    for name in secret_conninfo_parameters().intersection(params):
        params[name] = REDACTED
    return make_conninfo("", **params)


def safe_error_text(error: BaseException, conninfo: str) -> str:
    """The first line of ``error`` (raised while using ``conninfo``), safe to print.

    libpq quotes the connection string, or the token it could not parse, in some parse
    errors (``invalid percent-encoded token: "pa%zzss"``), password included. When the
    string does not parse, only a generic description is returned; otherwise every
    secret parameter's value (:func:`conninfo_secrets`) is blanked wherever it appears.
    """
    try:
        secrets = conninfo_secrets(conninfo)
    except Exception:
        return "not a valid libpq URL or key=value connection string"
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_property(name: str, value: str) -> str:
    """The value of a librdkafka property, hidden when its name marks it as a secret."""
    return REDACTED if _SECRET_PROPERTY.search(name) else value


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The configuration as ``{variable: value}`` with every secret redacted."""
    result: dict[str, Any] = {}
    for path, field in _env_fields(Settings):
        value: Any = settings
        for part in path:
            value = getattr(value, part)
        env = field.metadata["env"]
        if env == "KINGEST_RDKAFKA_*":
            for name, prop in sorted(value.items()):
                result[f"KINGEST_RDKAFKA_{name.replace('_', '__').replace('.', '_').upper()}"] = (
                    redact_property(name, prop)
                )
            continue
        if env == "KINGEST_DATABASE_URL":
            value = redact_conninfo(value)
        elif isinstance(value, tuple):
            value = ",".join(value)
        result[env] = value
    result["KINGEST_LOG_LEVEL"] = settings.log_level
    result["KINGEST_LOG_FORMAT"] = settings.log_format
    return result


def reference_markdown() -> str:
    """The configuration reference as a Markdown table (embedded in docs/configuration.md)."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for _, field in _env_fields(Settings):
        default = field.default
        if default is attrs.NOTHING:
            shown = "required"
        elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            shown = ""
        elif default is None:
            shown = "by profile"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default}`"
        lines.append(f"| `{field.metadata['env']}` | {shown} | {field.metadata['doc']} |")
    return "\n".join(lines) + "\n"
