"""The settings: every ``KINGEST_*`` variable as a typed, checked, documented field.

Each setting is a field of a frozen attrs class whose metadata carries its environment
variable, a one-line description, whether its value is a secret and a check of its value
(:func:`_setting`). That one declaration is what the loader reads
(:mod:`kingest.config.loading`), what ``kingest config`` prints with secrets hidden
(:mod:`kingest.config.redaction`) and what the reference table of docs/configuration.md
is generated from (:mod:`kingest.config.reference`), so a new setting is added in one
place only and cannot be forgotten by any of them. :func:`settings_fields` walks the
classes in the order of that table.

A check takes the typed value and returns why it is wrong, or ``None``: checks of single
values live here beside their fields; rules that relate several settings are the
loader's, run once every value is valid on its own. A value that is a list of entries
(``KINGEST_TOPIC_TYPES``) is parsed by a function here that raises :class:`BadEntriesError`
naming every bad entry, each reported as a problem of its own. :class:`ConfigError` is
what loading raises, with every problem at once.

The catalog the settings describe (``KINGEST_CATALOG``, ``KINGEST_TOPIC_TYPES``,
``KINGEST_DATABASE_SCHEMA``) is :attr:`Settings.catalog`: loaded the first time it is
asked for (by the loader's cross-field rules, which report its problems) and kept with
that :class:`Settings` instance, so the service gets the checked one without reading the
file again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NewType

import attrs
from psycopg.conninfo import conninfo_to_dict

from kingest.catalog import Catalog, load_catalog

Profile = Literal["dev", "staging", "prod"]
LogFormat = Literal["console", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
AssignmentStrategy = Literal["roundrobin", "range", "cooperative-sticky"]
OffsetReset = Literal["earliest", "latest", "error"]
DeadLetterStore = Literal["table", "topic", "both"]

#: ``KINGEST_TOPIC_TYPES`` parsed: topic -> full name of the message type it carries.
TopicTypes = NewType("TopicTypes", Mapping[str, str])

Check = Callable[[Any], str | None]


def _setting(
    env: str,
    doc: str,
    default: Any = attrs.NOTHING,
    *,
    secret: bool = False,
    check: Check | None = None,
    shown_default: str | None = None,
) -> Any:
    """A configuration field: its variable, its description and an optional value check.

    ``shown_default`` is how the reference shows a default that is not a value one could
    write (``None`` standing for "the built-in catalog"...)."""
    metadata = {
        "env": env,
        "doc": doc,
        "secret": secret,
        "check": check,
        "shown_default": shown_default,
    }
    return attrs.field(default=default, metadata=metadata)


class BadEntriesError(ValueError):
    """A value with several independent problems (one per bad entry), each reported."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


def _is_topic_name(name: str) -> bool:
    """Kafka's rule for topic names (letters, digits, '.', '_', '-'; not "." or "..")."""
    return _TOPIC_NAME.fullmatch(name) is not None and name not in (".", "..")


def _check_topics(value: tuple[str, ...]) -> str | None:
    if not value:
        return "at least one topic is required"
    bad = [t for t in value if not _is_topic_name(t)]
    return f"{', '.join(map(repr, bad))} is not a valid topic name" if bad else None


def _check_dead_letter_topic(value: str) -> str | None:
    if _is_topic_name(dead_letter_topic(value, "events")):
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


def _check_catalog_file(value: Path | None) -> str | None:
    """The descriptor set must be a file kingest can open (its content is the catalog's
    to judge, in the cross-field rules)."""
    if value is None:
        return None
    if not value.exists():
        return f"{str(value)!r}: no such file (build one with `buf build -o catalog.binpb`)"
    try:
        with value.open("rb"):
            pass
    except OSError as exc:
        return f"{str(value)!r} cannot be read: {exc.strerror}"
    return None


def _check_schema_name(value: str) -> str | None:
    if not _SQL_IDENTIFIER.fullmatch(value):
        return f"{value!r} is not a lowercase SQL identifier ([a-z_][a-z0-9_]*, 63 at most)"
    if value.startswith("pg_"):
        return f"{value!r}: PostgreSQL reserves the pg_ prefix for system schemas"
    return None


def parse_topic_types(value: str) -> TopicTypes:
    """``"gpu:llm.v1.GpuSample,runs:llm.v1.Run"`` -> ``{"gpu": "llm.v1.GpuSample", ...}``.

    Entries are separated by commas (blanks around an entry are ignored, as in
    ``KINGEST_TOPICS``); each is ``topic:package.Message``. Raises :class:`BadEntriesError`
    naming every bad entry: no colon, an empty or invalid topic or type, a blank inside
    an entry, a topic listed twice.
    """
    types: dict[str, str] = {}
    problems: list[str] = []
    for entry in (item.strip() for item in value.split(",")):
        if not entry:
            continue
        if re.search(r"\s", entry):
            problems.append(f"{entry!r} contains a blank")
            continue
        topic, colon, message = entry.partition(":")
        if not colon:
            problems.append(f"{entry!r} is not topic:package.Message (no colon)")
        elif not topic or not message:
            problems.append(
                f"{entry!r} is not topic:package.Message (empty {'topic' if not topic else 'type'})"
            )
        elif not _is_topic_name(topic):
            problems.append(f"{topic!r} is not a valid topic name")
        elif not _MESSAGE_NAME.fullmatch(message):
            problems.append(f"{message!r} is not a full message name (package.Message)")
        elif topic in types:
            problems.append(f"topic {topic} is listed twice")
        else:
            types[topic] = message
    if problems:
        raise BadEntriesError(problems)
    return TopicTypes(types)


def topic_types_text(types: Mapping[str, str]) -> str:
    """The inverse of :func:`parse_topic_types` (how ``kingest config`` shows it)."""
    return ",".join(f"{topic}:{message}" for topic, message in types.items())


_HOST_PORT = re.compile(r"[^\s:/,]+:\d{1,5}")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SQL_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MESSAGE_NAME = re.compile(r"\.?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


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
    schema: str = _setting(
        "KINGEST_DATABASE_SCHEMA",
        "PostgreSQL schema of the catalog's tables (a lowercase SQL identifier).",
        "kingest",
        check=_check_schema_name,
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
class CatalogSource:
    """Which Protobuf messages are tables: the catalog's descriptor set, and the topics
    that each carry one message type rather than the catalog's envelope."""

    file: Path | None = _setting(
        "KINGEST_CATALOG",
        "Descriptor set of the catalog's .proto files (`buf build -o catalog.binpb`): its "
        "messages are the tables kingest writes. Unset: the built-in AI/ML catalog.",
        None,
        check=_check_catalog_file,
        shown_default="built-in",
    )
    topic_types: TopicTypes = _setting(
        "KINGEST_TOPIC_TYPES",
        "Topics that each carry one message type, as topic:package.Message,... (each "
        "message is a table of its own, no envelope needed). Each must be in "
        "KINGEST_TOPICS; a consumed topic not listed carries the catalog's envelope.",
        attrs.Factory(dict),
        shown_default="none",
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
    in_flight_bytes: int = _setting(
        "KINGEST_IN_FLIGHT_BYTES",
        "Message bytes the whole process may hold consumed and not yet durable: over "
        "it the consumer loop stops taking messages from the client (whose own bounded "
        "prefetch keeps them) until writes catch up; after a second of that it pauses the "
        "partitions instead. 0: no process-wide bound.",
        16 * 1024 * 1024,
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
    catalog_source: CatalogSource = attrs.Factory(CatalogSource)
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

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog of ``catalog_source`` in ``database.schema``, loaded once per
        :class:`Settings` (:func:`~kingest.config.load_settings` has already loaded and
        checked it); raises :class:`~kingest.catalog.CatalogError` listing its problems."""
        source = self.catalog_source
        return load_catalog(
            source.file, schema=self.database.schema, topic_types=source.topic_types
        )


for _cls in (
    KafkaSettings,
    DatabaseSettings,
    CatalogSource,
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


def dead_letter_topic(template: str, source_topic: str) -> str:
    """The dead-letter topic of ``source_topic``: ``"{topic}.dlq"`` -> ``"events.dlq"``."""
    return template.replace("{topic}", source_topic)
