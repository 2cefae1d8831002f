"""`kingest dlq` against a real broker and a real PostgreSQL: list, inspect, replay."""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner, Result

from kingest.cli.commands import app
from kingest.deadletters.publisher import DeadLetter, encode_headers
from kingest.deadletters.replay import ReplayPlan, replay
from kingest.dev import SyntheticStream, create_topic
from kingest.pipeline.consumer import RunOutcome
from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import Event, InferenceCompleted, InferenceStatus
from kingest.store.event_ids import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    derive_event_id,
    replay_digest,
)
from kingest.store.migrate import apply_migrations, migrations_dir
from kingest.store.rows import Rejection, RowBatch
from kingest.store.write import write_batch
from tests.integration.support import (
    InProcessKingest,
    all_committed,
    count_rows,
    kingest_env,
    stored_event_ids,
    wait_for,
)

pytestmark = pytest.mark.integration

TopicFactory = Callable[[int], str]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


# --------------------------------------------------------------------------- helpers


def inference(event_id: str = "", *, model: str = "resnet") -> bytes:
    """A valid InferenceCompleted event (valid today: it happened a minute ago)."""
    occurred = Timestamp(seconds=int(datetime.now(UTC).timestamp()) - 60)
    return encode_event(
        Event(
            event_id=event_id,
            correlation_id="",
            occurred_at=occurred,
            source="serving/gateway",
            inference_completed=InferenceCompleted(
                request_id=f"req-{uuid.uuid4().hex[:6]}",
                model_name=model,
                status=InferenceStatus.INFERENCE_STATUS_OK,
                latency_ms=12.5,
            ),
        )
    )


def rejection(topic: str, partition: int, offset: int, value: bytes, **fields: Any) -> Rejection:
    """A dead letter as the pipeline would have stored it (a write-stage failure of a
    message that is fine today, unless ``value`` is not)."""
    values: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": f"key-{offset}".encode(),
        "value": value,
        "headers": (("correlation-id", f"flow-{offset}".encode()), ("origin", None)),
        "kafka_timestamp_ms": 1_764_300_000_000 + offset,
        "error_stage": "write",
        "error_class": "QueryCanceled",
        "error_message": "canceling statement due to statement timeout",
        "sqlstate": "57014",
    }
    values.update(fields)
    return Rejection(**values)


def store_dead_letters(database_url: str, rejections: Iterable[Rejection]) -> None:
    batch = RowBatch()
    for item in rejections:
        batch.add_rejection(item)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert write_batch(conn, batch, consumer_group="ingest").dead_lettered == len(batch)


def dead_letter_rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT * FROM kingest.dead_letters ORDER BY id")
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def by_offset(database_url: str) -> dict[int, dict[str, Any]]:
    return {row["kafka_offset"]: row for row in dead_letter_rows(database_url)}


def invoke(runner: CliRunner, args: list[str], env: dict[str, str]) -> Result:
    return runner.invoke(app, ["dlq", *args], env=env)


def replay_json(runner: CliRunner, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = invoke(runner, ["replay", "--json", *args], env)
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def one_line_error(result: Result, expected: str) -> None:
    """Bad input: exit 2, a single line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"kingest dlq: {expected}"], result.stderr
    assert "Traceback" not in result.output


def read_topic(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Message]:
    """Every message of ``topic`` (manual assignment from the start), ``expected`` many."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}"}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: list[Message] = []
    try:

        def read_some() -> bool:
            found.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
            return len(found) >= expected

        wait_for(read_some, timeout=60, what=f"{expected} messages on {topic}")
        assert not consumer.consume(100, timeout=1.0), "more messages than expected"
    finally:
        consumer.close()
    return found


def produce_one_by_one(bootstrap: str, topic: str, messages: Iterable[dict[str, Any]]) -> None:
    """One message per produce request: Tansu's high watermark is only right that way."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for message in messages:
        producer.produce(topic, **message)
        assert producer.flush(30) == 0


# --------------------------------------------------------------------------- list, inspect


@pytest.mark.slow
def test_list_and_inspect_show_what_the_pipeline_dead_lettered(
    runner: CliRunner, kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(2)
    apply_migrations(database_url)
    good = SyntheticStream(seed=11, wire_format_share=0.0).take(20)
    bad_uuid = inference("not-a-uuid", model="bert")
    poison = [
        {"value": random.Random(3).randbytes(40), "partition": 0},  # invalid_protobuf
        {"value": b"", "partition": 1},  # empty_value
        {"value": bad_uuid, "partition": 1, "headers": [("correlation-id", b"flow-x")]},
    ]
    produce_one_by_one(
        kafka_bootstrap,
        topic,
        [
            *({"key": r.key, "value": r.value, "partition": i % 2} for i, r in enumerate(good)),
            *({"key": b"poison", **message} for message in poison),
        ],
    )
    env = kingest_env(kafka_bootstrap, database_url, topic, "dlq-list")
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, "dlq-list", topic, {0: 11, 1: 12}, 2),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED

    def listed(*args: str) -> list[dict[str, Any]]:
        result = invoke(runner, ["list", "--json", *args], env)
        assert result.exit_code == 0, result.output
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    everything = listed()
    assert len(everything) == 3
    assert [row["id"] for row in everything] == sorted(
        (row["id"] for row in everything), reverse=True
    )
    assert {row["error_class"] for row in everything} == {
        "invalid_protobuf",
        "empty_value",
        "invalid_uuid",
    }
    invalid = next(row for row in everything if row["error_class"] == "invalid_uuid")
    assert invalid["error_stage"] == "validate"
    assert invalid["event_type"] == "inference_completed"
    assert invalid["correlation_id"] == "flow-x"
    assert invalid["consumer_group"] == "dlq-list"
    assert (invalid["partition"], invalid["offset"]) == (1, 11)
    assert invalid["replay_count"] == 0
    assert invalid["last_replay_outcome"] is None

    assert {row["error_class"] for row in listed("--stage", "decode")} == {
        "invalid_protobuf",
        "empty_value",
    }
    two = listed("--error-class", "invalid_uuid", "--error-class", "empty_value")
    assert {row["error_class"] for row in two} == {"invalid_uuid", "empty_value"}
    assert [row["id"] for row in listed("--event-type", "inference_completed")] == [invalid["id"]]
    assert len(listed("--since", "1h", "--topic", topic)) == 3
    assert listed("--until", "1h") == []
    assert listed("--topic", "another-topic") == []
    assert listed("--since", "2000-01-01T00:00:00Z", "--until", "2999-01-01") == everything
    assert [row["id"] for row in listed("--limit", "1")] == [everything[0]["id"]]

    table = invoke(runner, ["list"], env)
    assert table.exit_code == 0, table.output
    assert "invalid_uuid" in table.stdout
    assert f"{topic}:1:11" in table.stdout
    summary = invoke(runner, ["list", "--summary", "--json"], env)
    groups = {(g["error_stage"], g["error_class"]): g["count"] for g in json.loads(summary.stdout)}
    assert groups == {
        ("decode", "invalid_protobuf"): 1,
        ("decode", "empty_value"): 1,
        ("validate", "invalid_uuid"): 1,
    }
    assert (
        "3 dead letters by stage and error class"
        in invoke(runner, ["list", "--summary"], env).stdout
    )

    shown = invoke(runner, ["inspect", str(invalid["id"])], env)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert f"dead letter {invalid['id']} from {topic}:1:11" in text
    assert "correlation-id: flow-x" in text
    assert f"value ({len(bad_uuid)} bytes)" in text
    assert "00000000  " in text  # the hex dump
    assert '"model_name": "bert"' in text  # the Event as JSON
    assert "still rejected at validate: invalid_uuid" in text
    by_coordinates = invoke(runner, ["inspect", f"{topic}:1:11"], env)
    assert by_coordinates.stdout == text
    as_json = json.loads(invoke(runner, ["inspect", "--json", str(invalid["id"])], env).stdout)
    assert as_json["verdict_now"]["error_class"] == "invalid_uuid"
    assert as_json["event"]["event_id"] == "not-a-uuid"
    assert as_json["headers"] == [{"key": "correlation-id", "value_base64": "Zmxvdy14"}]
    garbage = next(row for row in everything if row["error_class"] == "invalid_protobuf")
    undecodable = invoke(runner, ["inspect", str(garbage["id"])], env).stdout
    assert "value as an Event: does not decode" in undecodable
    assert "still rejected at decode: invalid_protobuf" in undecodable

    one_line_error(invoke(runner, ["inspect", "999999"], env), "no dead letter with id 999999")
    one_line_error(
        invoke(runner, ["inspect", f"{topic}:0:999"], env),
        f"no dead letter with {topic}:0:999",
    )
    one_line_error(
        invoke(runner, ["inspect", "what"], env),
        "'what' is neither a dead-letter id nor TOPIC:PARTITION:OFFSET coordinates",
    )
    one_line_error(
        invoke(runner, ["list", "--since", "yesterday"], env),
        "'yesterday' is not a time: use ISO 8601 (2026-11-28T04:00:00Z) or a relative time "
        "such as 30m, 2h, 7d",
    )
    one_line_error(
        invoke(runner, ["list", "--stage", "parse"], env),
        "--stage must be one of decode, validate, write, not 'parse'",
    )


def test_a_database_without_the_replay_columns_asks_for_a_migration(
    runner: CliRunner, database_url: str, tmp_path: Path
) -> None:
    older = tmp_path / "sql"
    older.mkdir()
    for migration in sorted(migrations_dir().glob("000[123]_*.sql")):
        shutil.copy(migration, older)
    apply_migrations(database_url, directory=older)
    result = invoke(runner, ["list", "--database-url", database_url], {})
    assert result.exit_code == 1
    assert "run `kingest migrate`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    unreachable = "postgresql://kingest:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    result = invoke(runner, ["inspect", "1", "--database-url", unreachable], {})
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- replay


def pipeline_fixture(database_url: str, topic: str) -> tuple[str, Rejection, Rejection, Rejection]:
    """Three dead letters: a fixed event with an id, one without, and garbage."""
    apply_migrations(database_url)
    event_id = str(uuid.uuid4())
    with_id = rejection(topic, 0, 10, inference(event_id))
    without_id = rejection(topic, 0, 11, inference(""), event_type="inference_completed")
    garbage = rejection(
        topic,
        1,
        12,
        b"\xff\xfe\xfd not protobuf",
        error_stage="decode",
        error_class="invalid_protobuf",
        sqlstate=None,
    )
    store_dead_letters(database_url, [with_id, without_id, garbage])
    return event_id, with_id, without_id, garbage


def test_replay_to_pipeline_stores_fixed_events_exactly_once_even_when_run_twice(
    runner: CliRunner, kafka_bootstrap: str, database_url: str
) -> None:
    topic = "orders"
    event_id, _, _, _ = pipeline_fixture(database_url, topic)
    env = kingest_env(kafka_bootstrap, database_url, topic, "dlq-pipeline")
    expected_ids = {event_id, derive_event_id(topic, 0, 11)}  # ORIGINAL coordinates

    first = replay_json(runner, ["--to", "pipeline"], env)
    assert (first["replayed"], first["stored"], first["duplicates"]) == (3, 2, 0)
    assert (first["still_failing"], first["skipped"]) == (1, 0)
    stored = stored_event_ids(database_url)
    assert set(stored) == expected_ids
    assert max(stored.values()) == 1
    rows = by_offset(database_url)
    for offset in (10, 11):
        assert rows[offset]["last_replay_outcome"] == "stored"
        assert rows[offset]["replay_count"] == 1
        assert rows[offset]["replayed_at"] is not None
        assert rows[offset]["attempts"] == 1
    failing = rows[12]
    assert failing["last_replay_outcome"] == "failed"
    assert failing["attempts"] == 2
    assert (failing["error_stage"], failing["error_class"]) == ("decode", "invalid_protobuf")

    # Again without --again: only the still-failing one is retried.
    second = replay_json(runner, ["--to", "pipeline"], env)
    assert (second["replayed"], second["still_failing"], second["skipped"]) == (1, 1, 2)
    assert by_offset(database_url)[12]["attempts"] == 3

    # With --again, the stored ones go through again: duplicates, still stored once.
    third = replay_json(runner, ["--to", "pipeline", "--again"], env)
    assert (third["replayed"], third["stored"], third["duplicates"]) == (3, 0, 2)
    stored = stored_event_ids(database_url)
    assert set(stored) == expected_ids
    assert max(stored.values()) == 1
    assert by_offset(database_url)[10]["replay_count"] == 2
    assert count_rows(database_url, "dead_letters") == 3
    text = invoke(runner, ["replay", "--to", "pipeline"], env)
    assert text.exit_code == 0, text.output
    assert "replayed 1 dead letters from table to pipeline" in text.stdout
    assert "skipped (already replayed; --again replays them): 2" in text.stdout


def test_replay_to_pipeline_isolates_a_row_postgresql_rejects(
    runner: CliRunner, kafka_bootstrap: str, database_url: str
) -> None:
    # An event validation accepts but PostgreSQL refuses (here: a CHECK constraint the
    # test adds) fails at write time: the batch is bisected down to it, the others are
    # stored, and it keeps its dead letter with the new error.
    apply_migrations(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE kingest.inferences ADD CONSTRAINT no_forbidden_model "
            "CHECK (model_name <> 'forbidden')"
        )
    topic = "orders"
    good = [rejection(topic, 0, offset, inference(str(uuid.uuid4()))) for offset in range(6)]
    refused = rejection(topic, 0, 6, inference(str(uuid.uuid4()), model="forbidden"))
    store_dead_letters(database_url, [*good[:3], refused, *good[3:]])
    env = kingest_env(kafka_bootstrap, database_url, topic, "dlq-bisect")
    summary = replay_json(runner, ["--to", "pipeline", "--stage", "write"], env)
    assert (summary["replayed"], summary["stored"], summary["still_failing"]) == (7, 6, 1)
    row = by_offset(database_url)[6]
    assert (row["last_replay_outcome"], row["attempts"]) == ("failed", 2)
    assert (row["error_stage"], row["sqlstate"]) == ("write", "23514")
    assert row["error_class"] == "CheckViolation"
    assert "no_forbidden_model" in row["error_message"]
    assert row["event_type"] == "inference_completed"
    assert len(stored_event_ids(database_url)) == 6


def test_a_dry_run_prints_what_it_would_replay_and_changes_nothing(
    runner: CliRunner, kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(2)
    _, _, _, _ = pipeline_fixture(database_url, topic)
    env = kingest_env(kafka_bootstrap, database_url, topic, "dlq-dry")
    before = dead_letter_rows(database_url)

    to_pipeline = invoke(runner, ["replay", "--to", "pipeline", "--dry-run"], env)
    assert to_pipeline.exit_code == 0, to_pipeline.output
    lines = to_pipeline.stdout.splitlines()
    assert sum(line.startswith("would replay ") for line in lines) == 3
    assert f"{topic}:0:11 (write/QueryCanceled) to pipeline: would be stored in inferences" in (
        to_pipeline.stdout
    )
    assert "would fail again (decode/invalid_protobuf)" in to_pipeline.stdout
    assert "dry run: would replay 3 dead letters from table to pipeline" in to_pipeline.stdout
    to_source = replay_json(runner, ["--to", "source", "--dry-run"], env)
    assert (to_source["replayed"], to_source["produced"], to_source["dry_run"]) == (3, 0, True)

    assert dead_letter_rows(database_url) == before
    assert stored_event_ids(database_url) == {}
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "dlq-dry-check"})
    try:
        for partition in (0, 1):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            assert high == low == 0
    finally:
        consumer.close()


@pytest.mark.slow
def test_replay_to_source_is_stored_once_by_the_running_pipeline(
    runner: CliRunner, kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(2)
    event_id, with_id, without_id, garbage = pipeline_fixture(database_url, topic)
    env = kingest_env(kafka_bootstrap, database_url, topic, "dlq-source")

    first = replay_json(runner, ["--to", "source", "--rate", "1000"], env)
    assert (first["replayed"], first["produced"], first["failed_deliveries"]) == (3, 3, 0)
    assert replay_json(runner, ["--to", "source"], env)["skipped"] == 3  # nothing left
    again = replay_json(runner, ["--to", "source", "--again"], env)
    assert again["produced"] == 3
    rows = by_offset(database_url)
    assert {(r["last_replay_outcome"], r["replay_count"]) for r in rows.values()} == {
        ("produced", 2)
    }

    # Two copies of each on the source topic, on the original partition, byte for byte,
    # with the original headers and headers naming the original message and binding it
    # to the content.
    messages = read_topic(kafka_bootstrap, topic, 2, expected=6)
    originals: dict[tuple[int | None, bytes | None], Rejection] = {
        (r.partition, r.value): r for r in (with_id, without_id, garbage)
    }
    for message in messages:
        original = originals[(message.partition(), message.value())]
        coordinates = (topic, original.partition, original.offset)
        assert message.key() == original.key
        assert message.offset() != original.offset  # a new message: only headers link them
        assert message.headers() == [
            *original.headers,
            (REPLAY_OF_HEADER, f"{topic}/{original.partition}/{original.offset}".encode()),
            (
                REPLAY_DIGEST_HEADER,
                replay_digest(coordinates, original.key, original.value).encode(),
            ),
        ]

    end_offsets = {0: 4, 1: 2}
    with InProcessKingest(env) as kingest:
        wait_for(
            lambda: all_committed(kafka_bootstrap, "dlq-source", topic, end_offsets, 2),
            timeout=90,
            what="every offset committed",
        )
        assert kingest.stop() is RunOutcome.DRAINED
    stored = stored_event_ids(database_url)
    assert set(stored) == {event_id, derive_event_id(topic, 0, 11)}
    assert max(stored.values()) == 1
    # The garbage failed again, twice, as new dead letters that still name the original.
    new = [row for row in dead_letter_rows(database_url) if row["kafka_offset"] < 10]
    assert len(new) == 2
    for row in new:
        headers = dict(zip(row["header_keys"], row["header_values"], strict=True))
        assert headers[REPLAY_OF_HEADER] == f"{topic}/1/12".encode()
        assert headers[REPLAY_DIGEST_HEADER] == (
            replay_digest((topic, 1, 12), garbage.key, garbage.value).encode()
        )


def test_replay_to_source_honours_the_rate_limit(
    kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(1)
    apply_migrations(database_url)
    count, rate = 12, 4.0
    store_dead_letters(
        database_url,
        [rejection(topic, 0, 100 + i, inference(str(uuid.uuid4()))) for i in range(count)],
    )
    fake_now = [1000.0]
    produced = [0]
    observed: list[tuple[float, int]] = []  # (fake seconds since start, produced so far)

    def sleep(seconds: float) -> None:
        observed.append((fake_now[0] - 1000.0, produced[0]))
        fake_now[0] += seconds

    def progress(replayed: int) -> None:
        produced[0] += replayed

    summary = replay(
        ReplayPlan(destination="source", rate=rate, batch_size=1),
        database_url=database_url,
        kafka_config={"bootstrap.servers": kafka_bootstrap},
        progress=progress,
        clock=lambda: fake_now[0],
        sleep=sleep,
    )
    assert summary.produced == count
    assert observed, "the limiter never waited"
    for elapsed, so_far in observed:
        assert so_far <= rate * elapsed + 1, (elapsed, so_far)
    assert fake_now[0] - 1000.0 == pytest.approx((count - 1) / rate)
    assert len(read_topic(kafka_bootstrap, topic, 1, expected=count)) == count


def test_replay_from_topic_reads_dead_letters_published_with_encode_headers(
    runner: CliRunner, kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(2)
    dlq_topic = f"{topic}.dlq"
    create_topic(kafka_bootstrap, dlq_topic, 1)
    apply_migrations(database_url)
    event_id = str(uuid.uuid4())
    at = datetime.now(UTC)
    letters = [
        DeadLetter(rejection(topic, 0, 5, inference("")), "ingest", 1, at),
        DeadLetter(rejection(topic, 1, 6, inference(event_id)), "ingest", 2, at),
        DeadLetter(
            rejection(
                topic,
                0,
                7,
                b"\xffjunk",
                error_stage="decode",
                error_class="invalid_protobuf",
                sqlstate=None,
            ),
            "ingest",
            1,
            at,
        ),
    ]
    messages = [
        {"key": d.rejection.key, "value": d.rejection.value, "headers": encode_headers(d)}
        for d in letters
    ]
    messages.insert(2, dict(messages[0]))  # the topic is at-least-once: a repeat
    messages.append({"key": b"stray", "value": b"not a dead letter"})
    produce_one_by_one(kafka_bootstrap, dlq_topic, messages)
    env = kingest_env(kafka_bootstrap, database_url, topic, "dlq-topic")

    dry = replay_json(runner, ["--from", "topic", "--to", "pipeline", "--dry-run"], env)
    assert (dry["replayed"], dry["repeated"], dry["not_dead_letters"]) == (3, 1, 1)
    assert count_rows(database_url, "dead_letters") == 0

    first = replay_json(runner, ["--from", "topic", "--to", "pipeline"], env)
    assert (first["replayed"], first["stored"], first["still_failing"]) == (3, 2, 1)
    assert (first["repeated"], first["not_dead_letters"]) == (1, 1)
    stored = stored_event_ids(database_url)
    assert set(stored) == {event_id, derive_event_id(topic, 0, 5)}
    rows = by_offset(database_url)
    assert set(rows) == {5, 6, 7}  # recorded in the table, the one ledger of replays
    assert rows[6]["attempts"] == 2  # as published
    assert rows[6]["consumer_group"] == "ingest"
    assert rows[5]["last_replay_outcome"] == "stored"
    assert (rows[7]["last_replay_outcome"], rows[7]["attempts"]) == ("failed", 2)

    second = replay_json(
        runner, ["--from", "topic", "--to", "pipeline", "--dlq-topic", dlq_topic], env
    )
    assert (second["replayed"], second["skipped"], second["still_failing"]) == (1, 2, 1)
    assert max(stored_event_ids(database_url).values()) == 1

    missing = invoke(runner, ["replay", "--from", "topic", "--dlq-topic", "no-such-dlq"], env)
    one_line_error(missing, "dead-letter topic 'no-such-dlq' does not exist")
