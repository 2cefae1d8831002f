"""write_batch against a real PostgreSQL: typed values, idempotency, convergence, poison."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kingest.schema.codec import encode_event
from kingest.schema.v1.events_pb2 import (
    DataDriftDetected,
    DriftSeverity,
    EvaluationCompleted,
    Event,
    InferenceCompleted,
    InferenceStatus,
    MetricLogged,
    ModelDeployed,
    ModelVersionRegistered,
    RunStatus,
    TrainingRunFinished,
    TrainingRunStarted,
)
from kingest.schema.validate import EventValidator, payload_of
from kingest.store.errors import ErrorKind, classify_db_error, is_schema_error, sqlstate_of
from kingest.store.event_ids import (
    REPLAY_DIGEST_HEADER,
    REPLAY_OF_HEADER,
    derive_event_id,
    replay_digest,
)
from kingest.store.migrate import apply_migrations
from kingest.store.rows import RowBatch
from kingest.store.write import WriteResult, write_batch
from tests.fakes import FakeRecord

pytestmark = pytest.mark.integration

NOW = 1_750_000_000.0
UTC = dt.UTC
BASE_SECONDS = 1_749_990_000
KAFKA_TIMESTAMP_MS = 1_749_999_999_001
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
OK = InferenceStatus.INFERENCE_STATUS_OK


def kafka_record(
    value: bytes | None,
    offset: int,
    *,
    partition: int | None = 0,
    key: bytes | None = None,
    headers: list[tuple[str, bytes | None]] | None = None,
) -> FakeRecord:
    """A consumed Kafka message of topic "events" (the KafkaRecord protocol)."""
    return FakeRecord(
        value,
        offset=offset,
        partition=partition,
        key=key,
        headers=headers,
        timestamp=(1, KAFKA_TIMESTAMP_MS),
    )


def eid(n: int) -> str:
    return str(uuid.UUID(int=n))


def at(seconds: int, micros: int = 0) -> Timestamp:
    return Timestamp(seconds=BASE_SECONDS + seconds, nanos=micros * 1000 + 999)


def when(seconds: int, micros: int = 0) -> dt.datetime:
    """The stored timestamptz of at(seconds, micros) (nanoseconds truncated)."""
    return dt.datetime.fromtimestamp(BASE_SECONDS + seconds, UTC).replace(microsecond=micros)


def message(n: int, *, occurred: Timestamp | None = None, **payload: Any) -> Event:
    return Event(
        event_id=eid(n),
        correlation_id=f"flow-{n}",
        occurred_at=occurred or at(n),
        source="test/writer",
        **payload,
    )


def batch(*events: Event | bytes, first_offset: int = 0) -> RowBatch:
    rows = RowBatch(now=NOW)
    rows.add_records(
        kafka_record(item if isinstance(item, bytes) else encode_event(item), first_offset + i)
        for i, item in enumerate(events)
    )
    return rows


@pytest.fixture
def conn(any_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    apply_migrations(any_database_url)
    with psycopg.connect(any_database_url, autocommit=True) as connection:
        yield connection


def select(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query.encode(), params).fetchall()


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_every_event_type_lands_with_its_typed_values(
    conn: psycopg.Connection[Any], use_copy: bool
) -> None:
    events = [
        message(
            1,
            occurred=at(1, 654_321),
            training_run_started=TrainingRunStarted(
                run_id="run-1",
                experiment="exp",
                model_name="llama",
                framework="jax",
                dataset="",
                owner="alice",
                gpu_count=2**32 - 1,
                hyperparameters={"lr": "0.001"},
            ),
        ),
        message(
            2,
            training_run_finished=TrainingRunFinished(
                run_id="run-1",
                status=RunStatus.RUN_STATUS_CANCELLED,
                duration_seconds=1.5,
                summary_metrics={"loss": 0.1},
            ),
        ),
        message(
            3,
            metric_logged=MetricLogged(
                run_id="run-1", key="loss", value=5e-324, step=2**63 - 1, epoch=2**32 - 1
            ),
        ),
        message(
            4,
            model_version_registered=ModelVersionRegistered(
                model_name="llama",
                version="7",
                artifact_uri="s3://m/7",
                size_bytes=2**62,
                tags={"stage": "rc"},
            ),
        ),
        message(
            5,
            model_deployed=ModelDeployed(
                model_name="llama",
                version="7",
                environment="prod",
                replicas=3,
                traffic_percent=100.0,
            ),
        ),
        message(
            6,
            inference_completed=InferenceCompleted(
                request_id="req-1",
                model_name="llama",
                model_version="7",
                environment="prod",
                latency_ms=0.1 + 0.2,  # 0.30000000000000004: exact binary round trip
                input_tokens=12,
                output_tokens=34,
                status=InferenceStatus.INFERENCE_STATUS_ERROR,
                error_code="oom",
            ),
        ),
        message(
            7,
            evaluation_completed=EvaluationCompleted(
                evaluation_id="ev-1",
                model_name="llama",
                model_version="7",
                dataset="mmlu",
                metrics={"acc": 0.5},
                passed=False,
            ),
        ),
        message(
            8,
            data_drift_detected=DataDriftDetected(
                model_name="llama",
                feature="age",
                method="psi",
                score=-0.0,
                threshold=0.2,
                severity=DriftSeverity.DRIFT_SEVERITY_UNSPECIFIED,
            ),
        ),
    ]
    rows = batch(*events)
    result = write_batch(conn, rows, use_copy=use_copy)
    plain_tables = ("metrics", "model_versions", "inferences", "evaluations", "drift_alerts")
    assert result.copied == (plain_tables if use_copy else ())
    assert result.inserted == {
        "training_run_starts": 1,
        "training_run_finishes": 1,
        "metrics": 1,
        "model_versions": 1,
        "deployments": 1,
        "inferences": 1,
        "evaluations": 1,
        "drift_alerts": 1,
    }
    assert (result.duplicates, result.dead_lettered) == (0, 0)
    assert result.state_changed == {"training_runs": 1, "model_deployments": 1}

    envelope = "event_id, occurred_at, correlation_id, source, kafka_topic, kafka_partition"

    def envelope_of(n: int, occurred: dt.datetime | None = None) -> tuple[Any, ...]:
        return (uuid.UUID(eid(n)), occurred or when(n), f"flow-{n}", "test/writer", "events", 0)

    assert select(
        conn,
        f"SELECT {envelope}, kafka_offset, run_id, experiment, model_name, framework, dataset,"
        " owner, gpu_count, hyperparameters FROM kingest.training_run_starts",
    ) == [
        (
            *envelope_of(1, when(1, 654_321)),
            0,
            "run-1",
            "exp",
            "llama",
            "jax",
            None,
            "alice",
            2**32 - 1,
            {"lr": "0.001"},
        )
    ]
    assert select(
        conn,
        f"SELECT {envelope}, run_id, status, duration_seconds, summary_metrics, error_message"
        " FROM kingest.training_run_finishes",
    ) == [(*envelope_of(2), "run-1", "cancelled", 1.5, {"loss": 0.1}, None)]
    assert select(
        conn, f"SELECT {envelope}, run_id, key, value, step, epoch FROM kingest.metrics"
    ) == [(*envelope_of(3), "run-1", "loss", 5e-324, 2**63 - 1, 2**32 - 1)]
    assert select(
        conn,
        f"SELECT {envelope}, model_name, version, run_id, artifact_uri, size_bytes, tags"
        " FROM kingest.model_versions",
    ) == [(*envelope_of(4), "llama", "7", None, "s3://m/7", 2**62, {"stage": "rc"})]
    assert select(
        conn,
        f"SELECT {envelope}, model_name, version, environment, endpoint, replicas,"
        " traffic_percent FROM kingest.deployments",
    ) == [(*envelope_of(5), "llama", "7", "prod", None, 3, 100.0)]
    assert select(
        conn,
        f"SELECT {envelope}, request_id, model_name, model_version, environment, latency_ms,"
        " input_tokens, output_tokens, status, error_code FROM kingest.inferences",
    ) == [
        (
            *envelope_of(6),
            "req-1",
            "llama",
            "7",
            "prod",
            0.1 + 0.2,
            12,
            34,
            "error",
            "oom",
        )
    ]
    assert select(
        conn,
        f"SELECT {envelope}, evaluation_id, model_name, model_version, dataset, metrics, passed"
        " FROM kingest.evaluations",
    ) == [(*envelope_of(7), "ev-1", "llama", "7", "mmlu", {"acc": 0.5}, False)]
    assert select(
        conn,
        f"SELECT {envelope}, model_name, model_version, feature, method, score, threshold,"
        " severity FROM kingest.drift_alerts",
    ) == [(*envelope_of(8), "llama", None, "age", "psi", -0.0, 0.2, None)]
    assert select(
        conn,
        "SELECT run_id, status, status_at, started_at, finished_at, gpu_count,"
        " summary_metrics FROM kingest.training_runs",
    ) == [("run-1", "cancelled", when(2), when(1, 654_321), when(2), 2**32 - 1, {"loss": 0.1})]
    assert select(
        conn,
        "SELECT model_name, environment, version, replicas, deployed_at, event_id"
        " FROM kingest.model_deployments",
    ) == [("llama", "prod", "7", 3, when(5), uuid.UUID(eid(5)))]


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_text_survives_whatever_characters_it_holds(
    conn: psycopg.Connection[Any], use_copy: bool
) -> None:
    awkward = [
        "",
        "NULL",
        "null",
        'say "hi"',
        "back\\slash",
        "\\",
        '"',
        '\\"',
        "{braces}",
        "a,b",
        "  padded  ",
        "tab\tand\nnewline",
        "ünïcödé ☃ 𝄞",
        "'single'",
    ]
    events = [
        message(
            i + 1,
            metric_logged=MetricLogged(run_id=text or "run", key=f"k{text}", value=float(i)),
        )
        for i, text in enumerate(awkward)
    ]
    result = write_batch(conn, batch(*events), use_copy=use_copy)
    assert result.copied == (("metrics",) if use_copy else ())
    stored = select(conn, "SELECT run_id, key FROM kingest.metrics ORDER BY value")
    assert stored == [(text or "run", f"k{text}") for text in awkward]


def test_writing_a_batch_twice_stores_each_event_once(conn: psycopg.Connection[Any]) -> None:
    events = [
        message(n, inference_completed=InferenceCompleted(model_name="m", status=OK))
        for n in range(1, 51)
    ]
    rows = batch(*events)
    first = write_batch(conn, rows)
    second = write_batch(conn, rows)
    assert first.inserted == {"inferences": 50}
    assert first.duplicates == 0
    assert (first.copied, first.copy_fallbacks) == (("inferences",), ())
    assert second.inserted == {"inferences": 0}
    assert second.duplicates == 50
    # The COPY met the stored rows (unique violation) and the INSERT path took over.
    assert (second.copied, second.copy_fallbacks) == ((), ("inferences",))
    assert select(conn, "SELECT count(*) FROM kingest.inferences") == [(50,)]


def test_a_partly_redelivered_batch_stores_only_the_new_events(
    conn: psycopg.Connection[Any],
) -> None:
    def inference(n: int) -> Event:
        return message(n, inference_completed=InferenceCompleted(model_name="m", status=OK))

    metric = message(100, metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    write_batch(conn, batch(*map(inference, range(1, 31))))
    result = write_batch(conn, batch(*map(inference, range(21, 41)), metric))
    assert result.inserted == {"inferences": 10, "metrics": 1}
    assert result.duplicates == 10
    # Only the table holding redelivered events fell back; the other was copied.
    assert (result.copied, result.copy_fallbacks) == (("metrics",), ("inferences",))
    stored = select(conn, "SELECT event_id FROM kingest.inferences ORDER BY event_id")
    assert stored == [(uuid.UUID(eid(n)),) for n in range(1, 41)]


def test_one_event_delivered_twice_in_a_batch_is_stored_once(
    conn: psycopg.Connection[Any],
) -> None:
    same = message(1, metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    result = write_batch(conn, batch(same, same))
    assert result.inserted == {"metrics": 1}
    assert result.duplicates == 1
    assert (result.copied, result.copy_fallbacks) == ((), ())  # COPY not even tried
    assert select(conn, "SELECT kafka_offset FROM kingest.metrics") == [(0,)]


def test_event_without_id_is_idempotent_through_its_derived_key(
    conn: psycopg.Connection[Any],
) -> None:
    anonymous = Event(occurred_at=at(1), metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    write_batch(conn, batch(anonymous, first_offset=40))
    again = write_batch(conn, batch(anonymous, first_offset=40))
    elsewhere = write_batch(conn, batch(anonymous, first_offset=41))
    assert (again.duplicates, elsewhere.duplicates) == (1, 0)
    stored = select(conn, "SELECT event_id, correlation_id FROM kingest.metrics ORDER BY 2")
    expected = sorted(derive_event_id("events", 0, offset) for offset in (40, 41))
    assert [str(row[0]) for row in stored] == expected
    assert [row[1] for row in stored] == expected


def test_different_events_without_id_with_the_same_replay_header_are_all_stored(
    conn: psycopg.Connection[Any],
) -> None:
    # Middleware forwarded one replay's headers onto other messages; only the replay
    # itself, whose digest matches its content, takes the original's key.
    def anonymous(value: float) -> bytes:
        return encode_event(
            Event(occurred_at=at(1), metric_logged=MetricLogged(run_id="r", key="k", value=value))
        )

    replayed = anonymous(1.0)
    digest = replay_digest(("events", 0, 7), None, replayed).encode()
    forwarded = [(REPLAY_OF_HEADER, b"events/0/7"), (REPLAY_DIGEST_HEADER, digest)]
    rows = RowBatch(now=NOW)
    rows.add_records(
        [
            kafka_record(replayed, 50, headers=forwarded),
            kafka_record(anonymous(2.0), 51, headers=forwarded),
            kafka_record(anonymous(3.0), 52, headers=forwarded),
            kafka_record(anonymous(4.0), 53, headers=forwarded[:1]),  # no digest at all
        ]
    )
    result = write_batch(conn, rows)
    assert (result.inserted, result.duplicates) == ({"metrics": 4}, 0)
    stored = select(conn, "SELECT value, event_id::text FROM kingest.metrics ORDER BY value")
    assert stored == [
        (1.0, derive_event_id("events", 0, 7)),
        (2.0, derive_event_id("events", 0, 51)),
        (3.0, derive_event_id("events", 0, 52)),
        (4.0, derive_event_id("events", 0, 53)),
    ]


# --- state tables ---------------------------------------------------------------------------


def run_started(n: int, seconds: int, *, run_id: str = "run-1") -> Event:
    return message(
        n,
        occurred=at(seconds),
        training_run_started=TrainingRunStarted(
            run_id=run_id, experiment="exp", model_name="llama", gpu_count=8
        ),
    )


def run_finished(n: int, seconds: int, status: RunStatus, *, run_id: str = "run-1") -> Event:
    return message(
        n,
        occurred=at(seconds),
        training_run_finished=TrainingRunFinished(
            run_id=run_id, status=status, duration_seconds=float(seconds)
        ),
    )


def run_state(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return select(
        conn,
        "SELECT run_id, status, status_at, status_event_id, started_at, experiment, gpu_count,"
        " finished_at, duration_seconds FROM kingest.training_runs ORDER BY run_id",
    )


FINAL_RUN = [("run-1", "failed", when(90), uuid.UUID(eid(2)), when(10), "exp", 8, when(90), 90.0)]


def test_run_started_alone_is_running(conn: psycopg.Connection[Any]) -> None:
    write_batch(conn, batch(run_started(1, 10)))
    assert run_state(conn) == [
        ("run-1", "running", when(10), uuid.UUID(eid(1)), when(10), "exp", 8, None, None)
    ]


def test_run_finished_before_started_arrived_ends_finished_in_separate_batches(
    conn: psycopg.Connection[Any],
) -> None:
    write_batch(conn, batch(run_finished(2, 90, RunStatus.RUN_STATUS_FAILED)))
    assert run_state(conn)[0][1] == "failed"
    result = write_batch(conn, batch(run_started(1, 10)))
    assert result.state_changed == {"training_runs": 1}  # the start columns filled in
    assert run_state(conn) == FINAL_RUN


def test_run_finished_before_started_ends_finished_in_one_batch(
    conn: psycopg.Connection[Any],
) -> None:
    write_batch(conn, batch(run_finished(2, 90, RunStatus.RUN_STATUS_FAILED), run_started(1, 10)))
    assert run_state(conn) == FINAL_RUN


def test_run_state_converges_whatever_the_write_order(conn: psycopg.Connection[Any]) -> None:
    events = [
        run_started(1, 10),
        run_finished(2, 90, RunStatus.RUN_STATUS_FAILED),
        run_started(3, 5),  # an older, redelivered-late start
        run_finished(4, 60, RunStatus.RUN_STATUS_SUCCEEDED),  # an older finish
    ]
    for event in reversed(events):
        write_batch(conn, batch(event))
    write_batch(conn, batch(*events))  # and all again, in one batch
    assert run_state(conn) == FINAL_RUN


def test_same_time_events_of_the_same_status_are_ordered_by_event_id(
    conn: psycopg.Connection[Any],
) -> None:
    low = finished(1, 50, RunStatus.RUN_STATUS_CANCELLED, duration=1.0)
    high = finished(2, 50, RunStatus.RUN_STATUS_CANCELLED, duration=2.0)
    write_batch(conn, batch(high))
    write_batch(conn, batch(low))
    assert run_state(conn)[0][1:4] == ("cancelled", when(50), uuid.UUID(eid(2)))
    assert run_state(conn)[0][-1] == 2.0


# At one event time (whole-second clocks; a run that fails as it starts) neither the
# arrival order nor the event ids, random UUIDs, may decide the state: a finish wins over
# a start, failed over cancelled over succeeded, and only then the greater event id.
SUCCEEDED, CANCELLED, FAILED = (
    RunStatus.RUN_STATUS_SUCCEEDED,
    RunStatus.RUN_STATUS_CANCELLED,
    RunStatus.RUN_STATUS_FAILED,
)
RANKED_STATUSES = [(SUCCEEDED, "succeeded"), (CANCELLED, "cancelled"), (FAILED, "failed")]
WRITE_MODES = pytest.mark.parametrize("together", [True, False], ids=["one-batch", "two-txns"])


def finished(
    n: int, seconds: int, status: RunStatus, *, run_id: str = "run-1", duration: float = 0.0
) -> Event:
    return message(
        n,
        occurred=at(seconds),
        training_run_finished=TrainingRunFinished(
            run_id=run_id, status=status, duration_seconds=duration
        ),
    )


def write_in_turn(
    conn: psycopg.Connection[Any], arrivals: list[list[Event]], *, together: bool
) -> None:
    """Write each list's events in its order: all in one batch (``together``), or the
    n-th event of every list in the n-th transaction."""
    if together:
        write_batch(conn, batch(*(event for events in arrivals for event in events)))
        return
    for turn in range(max(map(len, arrivals))):
        write_batch(conn, batch(*(events[turn] for events in arrivals if turn < len(events))))


def run_rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    rows = select(
        conn,
        "SELECT run_id, status, status_at, status_event_id, started_at, start_event_id,"
        " finished_at, finish_event_id, duration_seconds FROM kingest.training_runs",
    )
    return {row[0]: row[1:] for row in rows}


@WRITE_MODES
def test_a_finish_wins_over_a_start_at_the_same_time(
    conn: psycopg.Connection[Any], together: bool
) -> None:
    arrivals, expected = [], {}
    n = 0
    for finish_id_higher in (True, False):
        for start_first in (True, False):
            run_id = f"run-{n}"
            start_n, finish_n = (n + 1, n + 2) if finish_id_higher else (n + 2, n + 1)
            start = message(
                start_n,
                occurred=at(30),
                training_run_started=TrainingRunStarted(run_id=run_id, gpu_count=1),
            )
            finish = finished(finish_n, 30, FAILED, run_id=run_id, duration=0.5)
            arrivals.append([start, finish] if start_first else [finish, start])
            expected[run_id] = (
                "failed",
                when(30),
                uuid.UUID(eid(finish_n)),
                when(30),
                uuid.UUID(eid(start_n)),
                when(30),
                uuid.UUID(eid(finish_n)),
                0.5,
            )
            n += 10
    write_in_turn(conn, arrivals, together=together)
    assert run_rows(conn) == expected


@WRITE_MODES
def test_at_the_same_time_failed_wins_over_cancelled_over_succeeded(
    conn: psycopg.Connection[Any], together: bool
) -> None:
    arrivals, expected = [], {}
    n = 0
    for low in range(3):
        for high in range(low + 1, 3):
            for high_id_higher in (True, False):
                for high_first in (True, False):
                    run_id = f"run-{n}"
                    low_n, high_n = (n + 1, n + 2) if high_id_higher else (n + 2, n + 1)
                    loser = finished(low_n, 30, RANKED_STATUSES[low][0], run_id=run_id)
                    winner = finished(
                        high_n, 30, RANKED_STATUSES[high][0], run_id=run_id, duration=9.0
                    )
                    arrivals.append([winner, loser] if high_first else [loser, winner])
                    won = uuid.UUID(eid(high_n))
                    status = RANKED_STATUSES[high][1]
                    expected[run_id] = (status, when(30), won, None, None, when(30), won, 9.0)
                    n += 10
    # And the three at once, in the order that would favour each of the others.
    arrivals.append(
        [
            finished(n + 3, 30, SUCCEEDED, run_id="run-all"),
            finished(n + 2, 30, CANCELLED, run_id="run-all"),
            finished(n + 1, 30, FAILED, run_id="run-all", duration=9.0),
        ]
    )
    won = uuid.UUID(eid(n + 1))
    expected["run-all"] = ("failed", when(30), won, None, None, when(30), won, 9.0)
    write_in_turn(conn, arrivals, together=together)
    assert run_rows(conn) == expected


@WRITE_MODES
def test_same_time_finishes_of_a_restarted_run_keep_the_precedence(
    conn: psycopg.Connection[Any], together: bool
) -> None:
    # The status is the later restart's; the finish columns still take the failed one.
    arrivals, expected = [], {}
    for k, failed_first in enumerate((True, False)):
        run_id = f"run-{k}"
        succeeded = finished(10 * k + 2, 30, SUCCEEDED, run_id=run_id)  # the greater id
        failed = finished(10 * k + 1, 30, FAILED, run_id=run_id, duration=9.0)
        restart = message(
            10 * k + 3, occurred=at(40), training_run_started=TrainingRunStarted(run_id=run_id)
        )
        finishes = [failed, succeeded] if failed_first else [succeeded, failed]
        arrivals.append([finishes[0], restart, finishes[1]])
        restarted = uuid.UUID(eid(10 * k + 3))
        failed_id = uuid.UUID(eid(10 * k + 1))
        expected[run_id] = (
            "running",
            when(40),
            restarted,
            when(40),
            restarted,
            when(30),
            failed_id,
            9.0,
        )
    write_in_turn(conn, arrivals, together=together)
    assert run_rows(conn) == expected


@WRITE_MODES
def test_same_time_deployments_are_ordered_by_event_id(
    conn: psycopg.Connection[Any], together: bool
) -> None:
    # No deployment outranks another: the greater event id wins, whatever the order.
    arrivals = [
        [deployed(1, 20, "v1", "prod"), deployed(2, 20, "v2", "prod")],
        [deployed(4, 20, "v4", "staging"), deployed(3, 20, "v3", "staging")],
    ]
    write_in_turn(conn, arrivals, together=together)
    assert current_deployments(conn) == [
        ("prod", "v2", 2, when(20)),
        ("staging", "v4", 4, when(20)),
    ]


def deployed(n: int, seconds: int, version: str, environment: str = "prod") -> Event:
    return message(
        n,
        occurred=at(seconds),
        model_deployed=ModelDeployed(
            model_name="llama",
            version=version,
            environment=environment,
            replicas=n,
            traffic_percent=50.0,
        ),
    )


def current_deployments(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return select(
        conn,
        "SELECT environment, version, replicas, deployed_at FROM kingest.model_deployments"
        " ORDER BY environment",
    )


def test_an_older_deployment_does_not_replace_the_current_one(
    conn: psycopg.Connection[Any],
) -> None:
    write_batch(conn, batch(deployed(2, 20, "v2")))
    result = write_batch(conn, batch(deployed(1, 10, "v1")))
    assert result.inserted == {"deployments": 1}  # the fact is kept...
    assert result.state_changed == {"model_deployments": 0}  # ...the state is not changed
    assert current_deployments(conn) == [("prod", "v2", 2, when(20))]
    write_batch(
        conn, batch(deployed(3, 30, "v3"), deployed(4, 25, "v4"), deployed(5, 1, "s1", "staging"))
    )
    assert current_deployments(conn) == [("prod", "v3", 3, when(30)), ("staging", "s1", 5, when(1))]
    assert select(conn, "SELECT count(*) FROM kingest.deployments") == [(5,)]


def test_concurrent_writers_converge_and_store_each_event_once(any_database_url: str) -> None:
    apply_migrations(any_database_url)
    deployments = [deployed(n, n, f"v{n}") for n in range(1, 41)]
    runs = [run_started(100 + n, n, run_id=f"run-{n % 5}") for n in range(40)]
    metrics = [
        message(200 + n, metric_logged=MetricLogged(run_id="r", key="k", value=n))
        for n in range(200)
    ]
    everything = deployments + runs + metrics
    # Four writers, each with the whole set in a different order, split in batches.
    orders = [everything, everything[::-1], everything[1::2] + everything[::2], everything]
    start = threading.Barrier(len(orders))

    def write_all(events: list[Event]) -> list[WriteResult]:
        results = []
        with psycopg.connect(any_database_url, autocommit=True) as connection:
            start.wait()
            for first in range(0, len(events), 50):
                while True:
                    try:
                        results.append(write_batch(connection, batch(*events[first : first + 50])))
                        break
                    except psycopg.Error as error:  # a deadlock between writers: retry
                        if classify_db_error(error) is not ErrorKind.TRANSIENT:
                            raise
        return results

    with ThreadPoolExecutor(len(orders)) as pool:
        results = [r for f in [pool.submit(write_all, o) for o in orders] for r in f.result(120)]

    inserted = sum(sum(result.inserted.values()) for result in results)
    duplicates = sum(result.duplicates for result in results)
    assert inserted == len(everything)
    assert duplicates == len(everything) * (len(orders) - 1)
    with psycopg.connect(any_database_url) as connection:
        assert current_deployments(connection) == [("prod", "v40", 40, when(40))]
        started = select(
            connection, "SELECT run_id, started_at FROM kingest.training_runs ORDER BY 1"
        )
        assert started == [(f"run-{k}", when(35 + k)) for k in range(5)]
        assert select(connection, "SELECT count(*) FROM kingest.metrics") == [(200,)]


# --- dead letters and poison ----------------------------------------------------------------


def test_a_dead_letter_is_stored_once_with_the_original_message(
    conn: psycopg.Connection[Any],
) -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("correlation-id", b"flow-x"),
        ("no-value", None),
        ("bin\x00ary", b"\x00\xff"),
    ]
    poison = RowBatch(now=NOW)
    poison.add_records([kafka_record(b"\xff\xfe", 17, partition=2, key=b"\x01k", headers=headers)])
    good = message(1, metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    poison.add_records([kafka_record(encode_event(good), 18, partition=2)])
    first = write_batch(conn, poison, consumer_group="kingest-test")
    second = write_batch(conn, poison, consumer_group="kingest-test")
    assert (first.dead_lettered, second.dead_lettered) == (1, 0)
    assert (first.inserted, second.duplicates) == ({"metrics": 1}, 1)
    assert select(
        conn,
        "SELECT kafka_topic, kafka_partition, kafka_offset, message_key, message_value,"
        " header_keys, header_values, kafka_timestamp, error_stage, error_class, sqlstate,"
        " event_id, event_type, correlation_id, consumer_group, attempts"
        " FROM kingest.dead_letters",
    ) == [
        (
            "events",
            2,
            17,
            b"\x01k",
            b"\xff\xfe",
            ["correlation-id", "no-value", "bin\ufffdary"],
            [b"flow-x", None, b"\x00\xff"],
            EPOCH + dt.timedelta(milliseconds=KAFKA_TIMESTAMP_MS),
            "decode",
            "invalid_protobuf",
            None,
            None,
            None,
            "flow-x",
            "kingest-test",
            1,
        )
    ]


def test_invalid_event_dead_letter_names_the_event(conn: psycopg.Connection[Any]) -> None:
    # Two rules fail (latency_ms < 0, status UNSPECIFIED): the first in field order is named.
    invalid = message(1, inference_completed=InferenceCompleted(model_name="m", latency_ms=-1))
    result = write_batch(conn, batch(invalid))
    assert result.dead_lettered == 1
    assert select(
        conn,
        "SELECT error_stage, error_class, event_id, event_type, correlation_id"
        " FROM kingest.dead_letters",
    ) == [("validate", "out_of_range", eid(1), "inference_completed", "flow-1")]


@pytest.fixture
def validator_blind_to_postgres_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let through events only PostgreSQL refuses, to test the writer's own defence.

    The validator refuses NUL characters and oversized indexed identifiers itself
    (kingest/schema/validate.py), so a real stream reaches these paths only through what
    it cannot see (a correlation-id header); here every event passes unchecked.
    """

    def lenient(
        _self: EventValidator, event: Event, *_: object, **__: object
    ) -> tuple[str, Message, int]:
        return payload_of(event)

    monkeypatch.setattr(EventValidator, "validate", lenient)


def nul_inference(n: int) -> Event:
    """An event PostgreSQL text cannot hold (a NUL character)."""
    return message(n, inference_completed=InferenceCompleted(model_name="bad\x00model", status=OK))


def oversized_correlation_id(n: int) -> Event:
    """1024 characters (the validator's limit) but 4096 UTF-8 bytes: too big for a btree."""
    characters = "".join(chr(0x10000 + (i * 7919) % 0xFFFFF) for i in range(1024))
    poison = message(n, inference_completed=InferenceCompleted(model_name="m", status=OK))
    poison.correlation_id = characters
    return poison


def nul_in_map_key(n: int) -> Event:
    """A NUL in a map key: JSON escapes it as \\u0000, which jsonb refuses."""
    return message(
        n,
        evaluation_completed=EvaluationCompleted(
            model_name="m", model_version="1", metrics={"acc\x00": 1.0}
        ),
    )


@pytest.mark.parametrize(
    ("poison", "sqlstate"),
    [
        (nul_inference(1), "22021"),  # character_not_in_repertoire
        (nul_in_map_key(1), "22P05"),  # untranslatable_character
        (oversized_correlation_id(1), "54000"),  # program_limit_exceeded
    ],
    ids=["nul-in-text", "nul-in-jsonb", "index-row-too-large"],
)
@pytest.mark.usefixtures("validator_blind_to_postgres_limits")
def test_a_row_postgresql_rejects_raises_a_permanent_error(
    conn: psycopg.Connection[Any], poison: Event, sqlstate: str
) -> None:
    good = [
        message(n, inference_completed=InferenceCompleted(model_name="m", status=OK))
        for n in range(2, 6)
    ]
    rows = batch(*good[:2], poison, *good[2:])
    assert rows.rejection_count == 0  # the (blinded) validator lets it through
    with pytest.raises(psycopg.Error) as raised:
        write_batch(conn, rows)
    assert sqlstate_of(raised.value) == sqlstate
    assert classify_db_error(raised.value) is ErrorKind.PERMANENT
    assert not is_schema_error(raised.value)
    # Nothing of the batch was stored: the transaction rolled back as a whole.
    assert select(conn, "SELECT count(*) FROM kingest.inferences") == [(0,)]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def write_isolating(conn: psycopg.Connection[Any], rows: RowBatch) -> list[WriteResult]:
    """The writer's bisection, reduced to its bones: permanent errors split the batch."""
    try:
        return [write_batch(conn, rows)]
    except psycopg.Error as error:
        if classify_db_error(error) is not ErrorKind.PERMANENT:
            raise
        if rows.event_count <= 1:
            rejected = rows.as_rejected(
                error_class=type(error).__name__,
                error_message=str(error),
                sqlstate=sqlstate_of(error),
            )
            return [write_batch(conn, rejected)]
        first, second = rows.halves()
        return write_isolating(conn, first) + write_isolating(conn, second)


@pytest.mark.usefixtures("validator_blind_to_postgres_limits")
def test_bisecting_isolates_the_offending_row_and_dead_letters_it(
    conn: psycopg.Connection[Any],
) -> None:
    good = [
        message(n, inference_completed=InferenceCompleted(model_name="m", status=OK))
        for n in range(2, 12)
    ]
    rows = batch(*good[:6], nul_inference(1), *good[6:], b"\xff")  # and one undecodable
    results = write_isolating(conn, rows)
    assert sum(sum(r.inserted.values()) for r in results) == 10
    assert sum(r.dead_lettered for r in results) == 2
    assert select(conn, "SELECT count(*) FROM kingest.inferences") == [(10,)]
    assert select(
        conn,
        "SELECT kafka_offset, error_stage, error_class, sqlstate, event_id, event_type"
        " FROM kingest.dead_letters ORDER BY kafka_offset",
    ) == [
        (6, "write", "CharacterNotInRepertoire", "22021", eid(1), "inference_completed"),
        (11, "decode", "invalid_protobuf", None, None, None),
    ]
    (value,) = select(conn, "SELECT message_value FROM kingest.dead_letters WHERE kafka_offset = 6")
    assert value == (encode_event(nul_inference(1)),)


def test_a_record_without_coordinates_is_a_permanent_data_error(
    conn: psycopg.Connection[Any],
) -> None:
    """Not a message a consumer delivers, but it must not be retried forever either."""
    rows = RowBatch(now=NOW)
    good = message(1, metric_logged=MetricLogged(run_id="r", key="k", value=1.0))
    rows.add_records([kafka_record(encode_event(good), 0, partition=None)])
    # COPY sends the NULL and PostgreSQL refuses it (not-null violation); the INSERT
    # path cannot even encode it (data error). Permanent either way.
    with pytest.raises(
        (psycopg.DataError, psycopg.IntegrityError), match="kafka_partition"
    ) as raised:
        write_batch(conn, rows)
    assert classify_db_error(raised.value) is ErrorKind.PERMANENT
    with pytest.raises(psycopg.DataError, match="kafka_partition") as raised:
        write_batch(conn, rows, use_copy=False)
    assert classify_db_error(raised.value) is ErrorKind.PERMANENT


def test_an_unmigrated_database_is_a_schema_error(any_database_url: str) -> None:
    rows = batch(message(1, metric_logged=MetricLogged(run_id="r", key="k", value=1.0)))
    with (
        psycopg.connect(any_database_url, autocommit=True) as connection,
        pytest.raises(psycopg.Error) as raised,
    ):
        write_batch(connection, rows)
    assert is_schema_error(raised.value)
    assert classify_db_error(raised.value) is ErrorKind.PERMANENT


def test_refuses_a_connection_inside_a_transaction(conn: psycopg.Connection[Any]) -> None:
    rows = batch(message(1, metric_logged=MetricLogged(run_id="r", key="k", value=1.0)))
    with conn.transaction(), pytest.raises(RuntimeError, match="idle connection"):
        write_batch(conn, rows)
    assert select(conn, "SELECT count(*) FROM kingest.metrics") == [(0,)]


def test_an_empty_batch_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    assert write_batch(conn, RowBatch()) == WriteResult(
        inserted={}, dead_lettered=0, duplicates=0, state_changed={}
    )
