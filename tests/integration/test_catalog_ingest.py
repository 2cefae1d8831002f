"""A team's own catalog end to end, on the session's broker and PostgreSQL.

The example catalog (``examples/llm-serving``, built with buf) is applied to a schema of
its own and ingested from an envelope topic and two typed topics, plain and framed. What
PostgreSQL holds is compared column by column with what the producer sent: the expected
values are computed here from the produced messages, by the type table of
docs/catalogs.md (decoded with classes of a descriptor pool of the test's own, not by
kingest's mapping). A catalog that was not applied is refused at start, and a catalog
evolves under concurrent producers of both versions without losing an event.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from psycopg import sql
from psycopg.rows import dict_row

from kingest.catalog import comment_ddl, create_index_ddl, create_table_ddl
from kingest.config.loading import load_settings
from kingest.deadletters import DeadLetterFilter, ReplayPlan, replay
from kingest.dev import records_from_descriptor_set
from kingest.pipeline.consumer import RunOutcome
from kingest.runtime.service import StartupError, check_database
from kingest.store import apply_migrations, apply_schema, plan_schema, write_plan
from tests.catalog_texts import compile_catalog
from tests.integration.support import InProcessKingest, all_committed, kingest_env, wait_for

pytestmark = pytest.mark.integration

TopicFactory = Callable[[int], str]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/llm-serving"
PARTITIONS = 2
#: The namespace of the event ids kingest derives from Kafka coordinates
#: (``kingest.store.event_ids``: fixed forever, or redeliveries would get new keys).
DERIVED_ID_NAMESPACE = uuid.UUID("a76e5044-6f7d-476d-84a6-2998463a6357")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: 2026-03-01T00:00:00Z: the Kafka timestamps of the produced records start here.
KAFKA_TIME_MS = 1_772_323_200_000

LLM = "llmserving.v1"
TOPIC_TYPES = {"gpu": f"{LLM}.GpuUtilizationSample", "datasets": f"{LLM}.DatasetVersionCreated"}

# --------------------------------------------------------------------------- messages


def message_classes(descriptor_set: bytes) -> dict[str, type[Message]]:
    """Every message class of a descriptor set, in a pool of its own."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
    return message_factory.GetMessages(list(files), pool=descriptor_pool.DescriptorPool())


def zigzag_varint(number: int) -> bytes:
    raw = (number << 1) ^ (number >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def framed(payload: bytes, schema_id: int, indexes: Sequence[int] | None) -> bytes:
    """The Confluent Schema Registry wire format: magic 0, the schema id, the message-index
    path (None: the short form of ``[0]``, a single 0), then the Protobuf payload."""
    if indexes is None:
        path = b"\x00"
    else:
        path = zigzag_varint(len(indexes)) + b"".join(zigzag_varint(i) for i in indexes)
    return b"\x00" + schema_id.to_bytes(4, "big") + path + payload


@dataclass
class Sent:
    """One produced Kafka record, and what kingest should make of it: a row of ``message``
    (as a consumer decodes it), or a dead letter of ``error_class``."""

    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    message: Message | None
    error_class: str | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = -1
    offset: int = -1

    @property
    def header_correlation_id(self) -> str:
        return next((v.decode() for k, v in self.headers if k == "correlation-id"), "")

    @property
    def derived_event_id(self) -> uuid.UUID:
        return uuid.uuid5(DERIVED_ID_NAMESPACE, f"{self.topic}/{self.partition}/{self.offset}")


def produce(bootstrap: str, records: Sequence[Sent]) -> None:
    """Produce ``records`` in order; each learns its partition and offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    failures: list[Any] = []

    def delivered_to(record: Sent) -> Callable[[Any, Any], None]:
        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(error)
            else:
                record.partition, record.offset = message.partition(), message.offset()

        return delivered

    for record in records:
        producer.produce(
            record.topic,
            key=record.key,
            value=record.value,
            headers=record.headers or None,
            timestamp=record.timestamp_ms,
            on_delivery=delivered_to(record),
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failures, failures


def end_offsets(records: Iterable[Sent]) -> dict[str, dict[int, int]]:
    ends: dict[str, dict[int, int]] = {}
    for record in records:
        assert record.offset >= 0, "not delivered"
        topic = ends.setdefault(record.topic, {})
        topic[record.partition] = max(topic.get(record.partition, 0), record.offset + 1)
    return ends


def wait_until_committed(
    bootstrap: str, group: str, records: Iterable[Sent], kingest: InProcessKingest
) -> None:
    ends = end_offsets(records)

    def committed() -> bool:
        if kingest.outcome is not None or kingest.error is not None:
            raise AssertionError(f"the pipeline stopped: {kingest.outcome} {kingest.error!r}")
        return all(
            all_committed(bootstrap, group, topic, offsets, PARTITIONS)
            for topic, offsets in ends.items()
        )

    wait_for(committed, timeout=60, what="every offset committed")


def timestamp(value: Message) -> datetime:
    seconds: int = value.seconds  # type: ignore[attr-defined]
    nanos: int = value.nanos  # type: ignore[attr-defined]
    return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


# ------------------------------------------------------- expected rows (docs/catalogs.md)

FINISH_REASONS = {1: "stop", 2: "length", 3: "tool_calls", 4: "content_filter"}
GUARDRAIL_ACTIONS = {1: "logged", 2: "redact", 3: "block"}
SEVERITIES = {1: "low", 2: "medium", 3: "high", 4: "critical"}


def as_json(message: Message) -> Any:
    """A nested message as a jsonb column holds it: the Protobuf JSON mapping, with the
    ``.proto`` field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def prompt_completions(p: Any) -> dict[str, Any]:
    return {
        "conversation_id": p.conversation_id,
        "model": p.model,
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.completion_tokens,
        "cached_prompt_tokens": p.cached_prompt_tokens,
        "latency": (
            timedelta(seconds=p.latency.seconds, microseconds=p.latency.nanos // 1000)
            if p.HasField("latency")
            else None
        ),
        "time_to_first_token_us": p.time_to_first_token_us,
        "cost_usd": p.cost_usd,
        "finish_reason": FINISH_REASONS[p.finish_reason],
        "temperature": p.temperature.value if p.HasField("temperature") else None,
        "sampling": as_json(p.sampling) if p.HasField("sampling") else None,
        "tool_calls": list(p.tool_calls),
        "labels": dict(p.labels),
        "streamed": p.streamed,
        "prompt_sha256": p.prompt_sha256 or None,
        "kv_cache_bytes": p.kv_cache_bytes,
        "conversation_turns": p.conversation_turns,
        "conversation_tokens": p.conversation_tokens,
        "conversation_cost_usd": p.conversation_cost_usd,
        "user_id": p.user_id or None,
        "api_key_id": p.api_key_id or None,
    }


def guardrail_hits(g: Any) -> dict[str, Any]:
    span = g.HasField("span")
    return {
        "conversation_id": g.conversation_id,
        "rule": g.rule,
        "action": GUARDRAIL_ACTIONS[g.action],
        "severity": SEVERITIES.get(g.severity),
        "score": g.score,
        "span_start": g.span.start if span else None,
        "span_end": g.span.end if span else None,
        "span_in_completion": g.span.in_completion if span else None,
    }


def feedback(f: Any) -> dict[str, Any]:
    return {
        "conversation_id": f.conversation_id,
        "prompt_event_id": f.prompt_event_id or None,
        "rating": f.rating,
        "comment": f.comment or None,
        "wants_follow_up": f.wants_follow_up,
        "attributes": as_json(f.attributes) if f.HasField("attributes") else None,
    }


def gpu_utilization_sample(s: Any) -> dict[str, Any]:
    return {
        "node": s.node or None,
        "gpu_index": s.gpu_index,
        "model": s.model or None,
        "utilization_percent": s.utilization_percent,
        "memory_used_bytes": s.memory_used_bytes,
        "temperature_celsius": s.temperature_celsius,
        "throttled": s.throttled,
    }


def dataset_version_created(d: Any) -> dict[str, Any]:
    return {
        "dataset_id": d.dataset_id or None,
        "version": d.version or None,
        "created_at": timestamp(d.created_at) if d.HasField("created_at") else None,
        "row_count": d.row_count,
        "size_bytes": d.size_bytes,
        "schema_fingerprint": d.schema_fingerprint or None,
        "columns": list(d.columns),
        "tags": dict(d.tags),
    }


#: Envelope member -> its table and the expected payload columns.
ENVELOPE_TABLES: dict[str, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    "prompt_completed": ("prompt_completions", prompt_completions),
    "guardrail_triggered": ("guardrail_hits", guardrail_hits),
    "feedback_received": ("feedback", feedback),
}
#: A typed topic's message -> its table (named after it) and the expected payload columns.
TOPIC_TABLES: dict[str, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    f"{LLM}.GpuUtilizationSample": ("gpu_utilization_sample", gpu_utilization_sample),
    f"{LLM}.DatasetVersionCreated": ("dataset_version_created", dataset_version_created),
}
#: How a stored value is read back for comparison: a ``real`` as the float32 it holds,
#: the ``numeric`` cost (a double cast to numeric) as a double.
READ_BACK: dict[str, Callable[[Any], Any]] = {
    "score": float32,
    "temperature_celsius": float32,
    "cost_usd": float,
}


@dataclass(frozen=True)
class Expected:
    table: str
    event_id: uuid.UUID
    row: dict[str, Any]
    message: Any


def expected_row(record: Sent) -> Expected:
    """The row of a valid record: kingest's columns, then the payload's."""
    message: Any = record.message
    if message.DESCRIPTOR.full_name == f"{LLM}.LlmEvent":
        member = message.WhichOneof("event")
        table, payload_columns = ENVELOPE_TABLES[member]
        payload = getattr(message, member)
        event_id = uuid.UUID(message.event_id) if message.event_id else record.derived_event_id
        occurred_at = timestamp(message.occurred_at)
        correlation_id = message.correlation_id or record.header_correlation_id or str(event_id)
        source = message.source
    else:
        table, payload_columns = TOPIC_TABLES[message.DESCRIPTOR.full_name]
        payload = message
        own_id = getattr(message, "event_id", "")
        event_id = uuid.UUID(own_id) if own_id else record.derived_event_id
        occurred_at = (
            timestamp(message.occurred_at)
            if "occurred_at" in message.DESCRIPTOR.fields_by_name
            and message.HasField("occurred_at")
            else EPOCH + timedelta(milliseconds=record.timestamp_ms)
        )
        correlation_id = record.header_correlation_id or str(event_id)
        source = getattr(message, "source", "")
    row = {
        "occurred_at": occurred_at,
        "correlation_id": correlation_id,
        "source": source,
        "kafka_topic": record.topic,
        "kafka_partition": record.partition,
        "kafka_offset": record.offset,
        **payload_columns(payload),
    }
    return Expected(table, event_id, row, payload)


def stored_rows(url: str, schema: str, table: str) -> dict[uuid.UUID, dict[str, Any]]:
    """A table's rows by event id, without ``ingested_at``, read back as compared."""
    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute(query).fetchall()
    stored = {}
    for row in rows:
        del row["ingested_at"]
        event_id = row.pop("event_id")
        stored[event_id] = {
            name: READ_BACK[name](value) if name in READ_BACK and value is not None else value
            for name, value in row.items()
        }
    return stored


def assert_rows_equal(
    table: str, stored: Mapping[uuid.UUID, dict[str, Any]], expected: Mapping[uuid.UUID, Any]
) -> None:
    assert set(stored) == set(expected), (
        f"{table}: {len(set(expected) - set(stored))} expected rows missing, "
        f"{len(set(stored) - set(expected))} unexpected"
    )
    differences = [
        f"{table} {event_id} {name}: stored {stored[event_id].get(name)!r}, expected {value!r}"
        for event_id, row in expected.items()
        for name, value in row.items()
        if stored[event_id].get(name, "<no column>") != value
    ]
    extra = {name for row in stored.values() for name in row} - {
        name for row in expected.values() for name in row
    }
    assert not extra, f"{table} has columns the test does not expect: {sorted(extra)}"
    assert not differences, "\n".join(differences[:20])


def dead_letters(url: str) -> dict[tuple[str, int, int], str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT kafka_topic, kafka_partition, kafka_offset, error_class"
            " FROM kingest.dead_letters"
        ).fetchall()
    return {(topic, partition, offset): error for topic, partition, offset, error in rows}


# ------------------------------------------------------------------------ the example


def buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    assert found, "buf is not installed: pip install -e '.[test]' (buf-bin)"
    return found


@dataclass(frozen=True)
class Catalog:
    path: Path
    raw: bytes
    classes: dict[str, type[Message]]


def build_catalog(output: Path, *paths: str) -> Catalog:
    """``buf build -o`` in the example's directory (``--path``: only those files)."""
    arguments = [argument for path in paths for argument in ("--path", path)]
    result = subprocess.run(
        [buf(), "build", "-o", str(output), *arguments],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    raw = output.read_bytes()
    return Catalog(output, raw, message_classes(raw))


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The example catalog as its README builds it: ``buf build -o catalog.binpb``."""
    return build_catalog(tmp_path_factory.mktemp("example") / "catalog.binpb")


@pytest.fixture(scope="module")
def typed_only(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The example's topics.proto alone: a catalog without an envelope."""
    output = tmp_path_factory.mktemp("typed") / "catalog.binpb"
    return build_catalog(output, "proto/llmserving/v1/topics.proto")


def example_env(
    catalog: Catalog, bootstrap: str, url: str, topics: Mapping[str, str], group: str
) -> dict[str, str]:
    """The settings of kingest on the example's topics: ``topics`` maps the roles of the
    topics consumed (``envelope``, and the typed ``gpu`` and ``datasets``) to their names."""
    return kingest_env(
        bootstrap,
        url,
        ",".join(topics.values()),
        group,
        KINGEST_CATALOG=str(catalog.path),
        KINGEST_DATABASE_SCHEMA="llm",
        KINGEST_TOPIC_TYPES=",".join(
            f"{topics[role]}:{message}" for role, message in TOPIC_TYPES.items() if role in topics
        ),
    )


def synthetic(catalog: Catalog, message: str, count: int, seed: int) -> list[tuple[bytes, Any]]:
    """``(key, message)`` pairs of plausible messages of the catalog."""
    decode = catalog.classes[message].FromString
    return [
        (key or b"", decode(value))
        for key, value in records_from_descriptor_set(catalog.raw, message, count, seed=seed)
    ]


def llm_event(catalog: Catalog, *, event_id: str, at: datetime | None, **member: Any) -> Any:
    """An LlmEvent with one member set from ``{member_name: {field: value}}``."""
    event: Any = catalog.classes[f"{LLM}.LlmEvent"](event_id=event_id, source="gateway/test")
    if at is not None:
        event.occurred_at.FromDatetime(at)
    ((name, fields),) = member.items()
    getattr(event, name).MergeFrom(catalog.classes[f"{LLM}.{PAYLOADS[name]}"](**fields))
    return event


PAYLOADS = {
    "prompt_completed": "PromptCompleted",
    "guardrail_triggered": "GuardrailTriggered",
    "feedback_received": "FeedbackReceived",
}


def prompt(conversation: str, model: str, turns: int, **more: Any) -> dict[str, Any]:
    return {
        "conversation_id": conversation,
        "model": model,
        "finish_reason": 1,
        "conversation_turns": turns,
        "conversation_tokens": 100 * turns,
        "conversation_cost_usd": 0.25 * turns,
        "prompt_tokens": 40 + turns,
        "completion_tokens": 60 + turns,
        **more,
    }


def envelope_records(catalog: Catalog, topic: str) -> list[Sent]:
    """LlmEvents, half plain and half framed (both index-path forms), some without an
    event id or correlation id; a tie and a late event for the state table; and the
    events that must become dead letters."""
    records: list[Sent] = []

    def add(key: bytes, event: Any, framing: int, error: str | None = None, **more: Any) -> None:
        """framing: 0 plain, 1 framed with the short index path, 2 with the long one."""
        payload = event.SerializeToString()
        value = (
            payload
            if framing == 0
            else framed(payload, 100 + len(records), None if framing == 1 else [0])
        )
        when = KAFKA_TIME_MS + 1000 * len(records)
        records.append(Sent(topic, key, value, when, event, error, **more))

    for index, (key, event) in enumerate(synthetic(catalog, f"{LLM}.LlmEvent", 90, seed=11)):
        headers = []
        if index % 9 == 4:
            event.ClearField("event_id")  # derived from the Kafka coordinates
        if index % 6 == 1:
            event.ClearField("correlation_id")  # taken from the header
            headers = [("correlation-id", f"flow-{index}".encode())]
        elif index % 10 == 7:
            event.ClearField("correlation_id")  # the event id stands in
        if index == 5:
            event.event_id = event.event_id.replace("-", "").upper()  # 32 hex digits
        # Odd: plain; even: framed, the index path [0] in the short and the long form.
        add(key, event, framing=0 if index % 2 else 1 + index % 4 // 2, headers=headers)

    # Two prompts of one conversation at the same instant: the greater event id wins,
    # though it comes first; then a prompt of an earlier time, which must not win.
    tie_at = datetime(2026, 2, 1, 12, 0, 0, 123456, tzinfo=UTC)
    key = b"tie-conversation"
    greater, lesser = (
        "f" * 8 + "-0000-4000-8000-" + "0" * 12,
        "0" * 8 + "-ffff-4fff-bfff-" + "f" * 12,
    )
    add(
        key,
        llm_event(
            catalog,
            event_id=greater,
            at=tie_at,
            prompt_completed=prompt("tie-conversation", "winner", 7, api_key_id="key-1"),
        ),
        framing=1,
    )
    add(
        key,
        llm_event(
            catalog,
            event_id=lesser,
            at=tie_at,
            prompt_completed=prompt("tie-conversation", "loser", 8, temperature={"value": 0.5}),
        ),
        framing=0,
    )
    add(
        key,
        llm_event(
            catalog,
            event_id=str(uuid.uuid4()),
            at=tie_at - timedelta(hours=1),
            prompt_completed=prompt("tie-conversation", "too-late", 9),
        ),
        framing=2,
    )

    at = datetime(2026, 2, 2, tzinfo=UTC)
    invalid = [
        (
            "missing_field",
            llm_event(catalog, event_id="", at=None, prompt_completed=prompt("bad", "m", 1)),
        ),
        (
            "missing_field",
            llm_event(
                catalog,
                event_id="",
                at=at,
                guardrail_triggered={"conversation_id": "bad", "rule": "r"},
            ),
        ),
        (
            "out_of_range",
            llm_event(
                catalog,
                event_id="",
                at=at,
                feedback_received={"conversation_id": "bad", "rating": 9},
            ),
        ),
        ("missing_payload", catalog.classes[f"{LLM}.LlmEvent"](event_id=str(uuid.uuid4()))),
    ]
    for error, event in invalid:
        add(b"bad", event, framing=0, error=error)
    unknown_path = framed(invalid[0][1].SerializeToString(), 1, [3])
    records.append(Sent(topic, b"bad", unknown_path, KAFKA_TIME_MS, None, "unknown_message_index"))
    return records


def typed_records(catalog: Catalog, gpu_topic: str, datasets_topic: str) -> list[Sent]:
    """GpuUtilizationSample and DatasetVersionCreated values on their typed topics, half
    framed with their index paths in topics.proto; some samples without occurred_at,
    some versions without event id; samples framed on the datasets topic."""
    records: list[Sent] = []
    gpu, datasets = TOPIC_TYPES["gpu"], TOPIC_TYPES["datasets"]
    for index, (key, sample) in enumerate(synthetic(catalog, gpu, 30, seed=12)):
        if index % 5 == 2:
            sample.ClearField("occurred_at")  # the Kafka timestamp stands in
        payload = sample.SerializeToString()
        value = payload if index % 2 else framed(payload, 7, None if index % 4 else [0])
        headers = [("correlation-id", b"agent-flow")] if index % 7 == 3 else []
        when = KAFKA_TIME_MS + 500 * index
        records.append(Sent(gpu_topic, key, value, when, sample, headers=headers))
    for index, (key, version) in enumerate(synthetic(catalog, datasets, 30, seed=13)):
        if index % 4 == 1:
            version.ClearField("event_id")
        payload = version.SerializeToString()
        value = payload if index % 2 else framed(payload, 8, [1])
        when = KAFKA_TIME_MS + 700 * index
        records.append(Sent(datasets_topic, key, value, when, version))
    # Another fact message of the same file, chosen by its framing's index path.
    for index, (key, sample) in enumerate(synthetic(catalog, gpu, 3, seed=14)):
        value = framed(sample.SerializeToString(), 9, [0])
        records.append(Sent(datasets_topic, key, value, KAFKA_TIME_MS + index, sample))
    payload = synthetic(catalog, datasets, 1, seed=15)[0][1].SerializeToString()
    records.append(
        Sent(
            datasets_topic,
            b"x",
            framed(payload, 8, [2]),
            KAFKA_TIME_MS,
            None,
            "unknown_message_index",
        )
    )
    return records


#: The topics of each shape of the example: its envelope topic, its typed topics (with a
#: catalog of topics.proto alone: a team without an envelope), or all three at once.
SHAPES = {
    "envelope": ("envelope",),
    "typed": ("gpu", "datasets"),
    "both": ("envelope", "gpu", "datasets"),
}


@pytest.mark.parametrize(
    "shape",
    [
        "envelope",
        "typed",
        "both",
    ],
)
def test_envelope_and_typed_topics_plain_and_framed_land_as_the_producer_sent_them(
    shape: str,
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: TopicFactory,
    example: Catalog,
    typed_only: Catalog,
) -> None:
    topics = {role: topic_factory(PARTITIONS) for role in SHAPES[shape]}
    catalog = typed_only if shape == "typed" else example
    env = example_env(catalog, kafka_bootstrap, database_url, topics, "llm-e2e")
    settings = load_settings(env)
    apply_migrations(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_schema(conn, settings.catalog)

    records = []
    if "envelope" in topics:
        records += envelope_records(example, topics["envelope"])
    if "gpu" in topics:
        records += typed_records(catalog, topics["gpu"], topics["datasets"])
    produce(kafka_bootstrap, records)
    with InProcessKingest(env) as kingest:
        wait_until_committed(kafka_bootstrap, "llm-e2e", records, kingest)
        assert kingest.stop() is RunOutcome.DRAINED

    valid = [expected_row(record) for record in records if record.error_class is None]
    assert len({(e.table, e.event_id) for e in valid}) == len(valid)  # one row each
    tables = [table for table, _ in ENVELOPE_TABLES.values()] if "envelope" in topics else []
    tables += [table for table, _ in TOPIC_TABLES.values()] if "gpu" in topics else []
    for table in tables:
        expected = {e.event_id: e.row for e in valid if e.table == table}
        assert expected, f"no message of {table} was produced"
        assert_rows_equal(table, stored_rows(database_url, "llm", table), expected)
    assert dead_letters(database_url) == {
        (r.topic, r.partition, r.offset): r.error_class for r in records if r.error_class
    }

    if "envelope" in topics:
        assert_conversation_totals(database_url, valid)


def assert_conversation_totals(database_url: str, valid: Sequence[Expected]) -> None:
    """conversation_totals holds, per conversation, the values of its greatest
    PromptCompleted by (occurred_at, event id), whatever the order they came in."""
    latest: dict[str, Expected] = {}
    for candidate in valid:
        if candidate.table != "prompt_completions":
            continue
        conversation = candidate.row["conversation_id"]
        held = latest.get(conversation)
        order = (candidate.row["occurred_at"], candidate.event_id)
        if held is None or order > (held.row["occurred_at"], held.event_id):
            latest[conversation] = candidate
    assert latest["tie-conversation"].row["model"] == "winner"
    expected_totals = {
        conversation: {
            "model": e.message.model,
            "turns": e.message.conversation_turns,
            "total_tokens": e.message.conversation_tokens,
            "total_cost_usd": e.message.conversation_cost_usd,
            "last_prompt_tokens": e.message.prompt_tokens,
            "last_completion_tokens": e.message.completion_tokens,
            "last_prompt_at": e.row["occurred_at"],
            "last_event_id": e.event_id,
        }
        for conversation, e in latest.items()
    }
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        totals = conn.execute("SELECT * FROM llm.conversation_totals").fetchall()
    stored_totals = {}
    for row in totals:
        del row["updated_at"]
        stored_totals[row.pop("conversation_id")] = row
    assert stored_totals == expected_totals


def test_a_catalog_that_was_not_applied_is_refused_at_start(
    any_database_url: str, example: Catalog
) -> None:
    topics = {"envelope": "llm-events", "gpu": "gpu-samples", "datasets": "datasets"}
    settings = load_settings(example_env(example, "127.0.0.1:9", any_database_url, topics, "g"))
    apply_migrations(any_database_url)
    with pytest.raises(StartupError) as refused:
        check_database(settings)
    assert refused.value.exit_code == 1
    message = str(refused.value)
    assert "run `kingest schema apply`" in message
    for table in ("prompt_completions", "conversation_totals", "gpu_utilization_sample"):
        assert f"llm.{table}" in message

    with psycopg.connect(any_database_url, autocommit=True) as conn:
        apply_schema(conn, settings.catalog)
    check_database(settings)  # what the message asked for is all it takes


# ------------------------------------------------------------------------- evolution

SHOP_V1 = """
syntax = "proto3";

package shop.v1;

import "google/protobuf/timestamp.proto";
import "kingest/options/v1/options.proto";

// Every event of the shop.
message ShopEvent {
  option (kingest.options.v1.table).envelope = true;

  string event_id = 1;
  string correlation_id = 2;
  google.protobuf.Timestamp occurred_at = 3 [(kingest.options.v1.column).required = true];
  string source = 4;

  oneof event {
    CartUpdated cart_updated = 10;
  }
}

// A cart changed.
message CartUpdated {
  // The cart.
  string cart_id = 1 [(kingest.options.v1.column).required = true];
  // Items in the cart.
  uint32 items = 2;
}
"""

SHOP_V2 = (
    SHOP_V1.replace(
        "  uint32 items = 2;\n",
        "  uint32 items = 2;\n"
        "  // The coupon applied, if any.\n"
        "  string coupon = 3;\n"
        "  // Discount of the coupon, in cents.\n"
        "  int64 discount_cents = 4;\n",
    ).replace(
        "    CartUpdated cart_updated = 10;\n",
        "    CartUpdated cart_updated = 10;\n    CheckoutCompleted checkout_completed = 11;\n",
    )
    + """
// A cart was paid for.
message CheckoutCompleted {
  // The cart.
  string cart_id = 1 [(kingest.options.v1.column).required = true];
  // Amount paid, in cents.
  int64 total_cents = 2;
}
"""
)


@dataclass(frozen=True)
class ShopVersion:
    catalog: Catalog
    env: dict[str, str]

    def event(self, event_id: str, index: int, **member: Any) -> Any:
        event: Any = self.catalog.classes["shop.v1.ShopEvent"](event_id=event_id)
        event.occurred_at.FromDatetime(datetime(2026, 4, 1, tzinfo=UTC) + timedelta(seconds=index))
        ((name, fields),) = member.items()
        message = "CartUpdated" if name == "cart_updated" else "CheckoutCompleted"
        getattr(event, name).MergeFrom(self.catalog.classes[f"shop.v1.{message}"](**fields))
        return event


def shop_version(
    directory: Path, source: str, bootstrap: str, url: str, topic: str, group: str
) -> ShopVersion:
    raw = compile_catalog(directory, source, "shop/v1/events.proto")
    path = directory / f"shop-{len(list(directory.glob('shop-*')))}.binpb"
    path.write_bytes(raw)
    env = kingest_env(
        bootstrap, url, topic, group, KINGEST_CATALOG=str(path), KINGEST_DATABASE_SCHEMA="shop"
    )
    return ShopVersion(Catalog(path, raw, message_classes(raw)), env)


def shop_records(version: ShopVersion, topic: str, prefix: str, count: int) -> list[Sent]:
    """Carts (and, from a v2 producer, coupons and checkouts) of ``count`` events."""
    records = []
    newer = (
        "checkout_completed"
        in version.catalog.classes["shop.v1.ShopEvent"].DESCRIPTOR.fields_by_name
    )
    for index in range(count):
        cart = f"{prefix}-cart-{index % 5}"
        if newer and index % 3 == 2:
            event = version.event(
                str(uuid.uuid4()),
                index,
                checkout_completed={"cart_id": cart, "total_cents": 1000 + index},
            )
        elif newer:
            event = version.event(
                str(uuid.uuid4()),
                index,
                cart_updated={
                    "cart_id": cart,
                    "items": index,
                    "coupon": f"SAVE{index}",
                    "discount_cents": 10 * index + 1,
                },
            )
        else:
            event = version.event(
                str(uuid.uuid4()), index, cart_updated={"cart_id": cart, "items": index}
            )
        records.append(
            Sent(topic, cart.encode(), event.SerializeToString(), KAFKA_TIME_MS + index, event)
        )
    return records


def shop_expected(records: Iterable[Sent]) -> dict[str, dict[uuid.UUID, dict[str, Any]]]:
    """Rows of the v2 tables: a v1 cart has no coupon (NULL) and a zero discount."""
    expected: dict[str, dict[uuid.UUID, dict[str, Any]]] = {
        "cart_updated": {},
        "checkout_completed": {},
    }
    for record in records:
        event: Any = record.message
        member = event.WhichOneof("event")
        payload = getattr(event, member)
        row = {"occurred_at": timestamp(event.occurred_at), "cart_id": payload.cart_id}
        if member == "cart_updated":
            fields = payload.DESCRIPTOR.fields_by_name
            row["items"] = payload.items
            row["coupon"] = (payload.coupon or None) if "coupon" in fields else None
            row["discount_cents"] = payload.discount_cents if "discount_cents" in fields else 0
        else:
            row["total_cents"] = payload.total_cents
        expected[member][uuid.UUID(event.event_id)] = row
    return expected


def stored_columns(url: str, table: str, columns: Sequence[str]) -> dict[uuid.UUID, dict[str, Any]]:
    query = sql.SQL("SELECT event_id, {} FROM shop.{}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
    )
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return {row.pop("event_id"): row for row in conn.execute(query).fetchall()}


def test_a_catalog_evolves_under_concurrent_producers_of_both_versions_losing_nothing(
    kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic, group = topic_factory(PARTITIONS), "shop-e2e"
    v1 = shop_version(tmp_path, SHOP_V1, kafka_bootstrap, database_url, topic, group)
    v2 = shop_version(tmp_path, SHOP_V2, kafka_bootstrap, database_url, topic, group)
    v1_catalog, v2_catalog = load_settings(v1.env).catalog, load_settings(v2.env).catalog
    apply_migrations(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_schema(conn, v1_catalog)

    # kingest on v1 while a producer already sends v2: its events are held back whole.
    before = [*shop_records(v1, topic, "old", 12), *shop_records(v2, topic, "early", 9)]
    produce(kafka_bootstrap, before)
    with InProcessKingest(v1.env) as kingest:
        wait_until_committed(kafka_bootstrap, group, before, kingest)
        assert kingest.stop() is RunOutcome.DRAINED
    ahead = before[12:]
    assert dead_letters(database_url) == {
        (r.topic, r.partition, r.offset): "unknown_fields" for r in ahead
    }

    with psycopg.connect(database_url, autocommit=True) as conn:
        plan = plan_schema(conn, v2_catalog)
        assert plan.breaking == ()
        added = [s for s in plan.statements if "shop.checkout_completed" not in s]
        assert added == [
            "ALTER TABLE shop.cart_updated ADD COLUMN coupon text",
            "COMMENT ON COLUMN shop.cart_updated.coupon IS 'The coupon applied, if any.'",
            "ALTER TABLE shop.cart_updated ADD COLUMN discount_cents bigint NOT NULL DEFAULT 0",
            "ALTER TABLE shop.cart_updated ALTER COLUMN discount_cents DROP DEFAULT",
            "COMMENT ON COLUMN shop.cart_updated.discount_cents IS "
            "'Discount of the coupon, in cents.'",
        ]
        checkout = v2_catalog.table("checkout_completed")
        comments = (comment_ddl(v2_catalog, checkout, c) for c in (None, *checkout.columns))
        assert [s for s in plan.statements if s not in added] == [
            create_table_ddl(v2_catalog, checkout),
            *(create_index_ddl(v2_catalog, checkout, index) for index in checkout.indexes),
            *filter(None, comments),
        ]
        apply_schema(conn, v2_catalog)
        assert plan_schema(conn, v2_catalog).holds_catalog

    summary = replay(
        ReplayPlan(
            destination="pipeline", selection=DeadLetterFilter(error_classes=("unknown_fields",))
        ),
        database_url=database_url,
        kafka_config={"bootstrap.servers": kafka_bootstrap},
        write_plan=write_plan(v2_catalog),
    )
    assert (summary.replayed, summary.stored, summary.still_failing) == (9, 9, 0)
    replayed = shop_expected(ahead)
    stored_carts = stored_columns(database_url, "cart_updated", ["coupon", "discount_cents"])
    for event_id, row in replayed["cart_updated"].items():
        assert stored_carts[event_id] == {
            "coupon": row["coupon"],
            "discount_cents": row["discount_cents"],
        }
        assert row["coupon"] is not None

    # kingest on v2 while a v1 and a v2 producer write at once.
    old_writes = shop_records(v1, topic, "v1", 60)
    new_writes = shop_records(v2, topic, "v2", 60)
    start = threading.Barrier(2)

    def producer(records: list[Sent]) -> None:
        start.wait(10)
        produce(kafka_bootstrap, records)

    with InProcessKingest(v2.env) as kingest:
        writers = [
            threading.Thread(target=producer, args=(records,))
            for records in (old_writes, new_writes)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        wait_until_committed(kafka_bootstrap, group, [*before, *old_writes, *new_writes], kingest)
        assert kingest.stop() is RunOutcome.DRAINED

    everything = shop_expected([*before, *old_writes, *new_writes])
    assert len(everything["checkout_completed"]) == 3 + 20
    for table, expected in everything.items():
        columns = sorted({name for row in expected.values() for name in row})
        assert_rows_equal(table, stored_columns(database_url, table, columns), expected)
    with psycopg.connect(database_url) as conn:
        outcomes = conn.execute(
            "SELECT last_replay_outcome, count(*) FROM kingest.dead_letters GROUP BY 1"
        ).fetchall()
    assert outcomes == [("stored", 9)]
