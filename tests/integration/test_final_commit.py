"""The final offset commit of a shutdown (the one of a revoke is the same procedure):
it commits every durable offset the broker has not confirmed, also one whose
asynchronous commit is still in flight, and it waits for the coordinator no longer than
the drain deadline.

Both run on librdkafka's mock cluster, whose coordinator can answer an OffsetCommit
request late, or with an error (Tansu cannot be made to).
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from confluent_kafka import KafkaError

from kingest.dev import (
    MockKafkaCluster,
    SyntheticStream,
    committed_offsets,
    create_topic,
    produce_records,
)
from kingest.pipeline.consumer import CLOSE_AFTER_DEADLINE_S, RunOutcome
from kingest.store.migrate import apply_migrations
from tests.integration.support import InProcessKingest, kingest_env, stored_event_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Kafka API key of OffsetCommit requests.
OFFSET_COMMIT_API = 8
#: The mock cluster's only broker, the group coordinator.
COORDINATOR = 1
EVENTS = 50


def one_partition_stream(cluster: MockKafkaCluster, database_url: str) -> tuple[str, int, set[str]]:
    """A one-partition topic holding EVENTS events: (topic, its end offset, event ids)."""
    topic = f"kt-final-commit-{uuid.uuid4().hex[:8]}"
    create_topic(cluster.bootstrap_servers, topic, 1)
    apply_migrations(database_url)
    records = SyntheticStream(seed=23).take(EVENTS)
    report = produce_records(cluster.bootstrap_servers, topic, records, count=len(records))
    assert report.delivered == EVENTS
    return topic, report.end_offsets[0], {r.event_id for r in records}


def test_the_final_commit_includes_an_offset_whose_asynchronous_commit_is_in_flight(
    mock_cluster: MockKafkaCluster, database_url: str
) -> None:
    bootstrap = mock_cluster.bootstrap_servers
    topic, end, event_ids = one_partition_stream(mock_cluster, database_url)
    group = f"in-flight-{uuid.uuid4().hex[:8]}"
    # The whole stream is one write batch (one poll, a long linger), so the first offset
    # commit kingest sends is the one of the stream's end: the coordinator answers it
    # 3 s late, with an error.
    mock_cluster.push_broker_request_error_rtts(
        COORDINATOR, OFFSET_COMMIT_API, (KafkaError.OFFSET_METADATA_TOO_LARGE, 3000)
    )
    env = kingest_env(
        bootstrap,
        database_url,
        topic,
        group,
        KINGEST_BATCH_LINGER_MS="1000",
        KINGEST_KAFKA_SESSION_TIMEOUT_MS="30000",
    )
    tp = (topic, 0)
    with InProcessKingest(env) as kingest:
        pipeline = kingest.pipeline
        wait_for(
            lambda: pipeline._commits.committed().get(tp) == end,
            timeout=60,
            what="the asynchronous commit of the stream's end sent",
        )
        assert tp not in pipeline._commits.confirmed(), "the commit was answered already"
        # Stopped while that commit is in flight (it fails 3 s after it was sent).
        assert kingest.stop() is RunOutcome.DRAINED
    assert committed_offsets(bootstrap, group, topic, 1) == {0: end}
    stored = stored_event_ids(database_url)
    assert set(stored) == event_ids
    assert max(stored.values()) == 1


def test_a_final_commit_not_answered_by_the_drain_deadline_ends_as_drain_timeout(
    mock_cluster: MockKafkaCluster, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = mock_cluster.bootstrap_servers
    topic, end, _ = one_partition_stream(mock_cluster, database_url)
    group = f"slow-coordinator-{uuid.uuid4().hex[:8]}"
    drain_timeout_s = 2.0
    env = kingest_env(
        bootstrap,
        database_url,
        topic,
        group,
        KINGEST_DRAIN_TIMEOUT_S=str(drain_timeout_s),
        # No periodic commit: the final one is the only one that carries the offsets.
        KINGEST_COMMIT_INTERVAL_MS="600000",
        KINGEST_KAFKA_SESSION_TIMEOUT_MS="30000",
    )
    tp = (topic, 0)
    caplog.set_level(logging.INFO)
    with InProcessKingest(env) as kingest:
        pipeline = kingest.pipeline

        def durable() -> int:
            committer = pipeline._committer
            return committer.committable().get(tp, (0, -1))[1] if committer is not None else -1

        wait_for(
            lambda: durable() == end,
            timeout=60,
            what="the whole stream durable",
        )
        assert tp not in pipeline._commits.committed()
        # The coordinator answers the next OffsetCommit only after 15 s.
        mock_cluster.push_broker_request_error_rtts(
            COORDINATOR, OFFSET_COMMIT_API, (KafkaError.NO_ERROR, 15_000)
        )
        stopping = time.time()
        assert kingest.stop(timeout=120) is RunOutcome.DRAIN_TIMEOUT
        stopped = time.time()
    # Closing the consumer would wait for that commit's answer (up to socket.timeout.ms):
    # after the deadline it gets CLOSE_AFTER_DEADLINE_S, then the run ends without it.
    assert stopped - stopping < drain_timeout_s + CLOSE_AFTER_DEADLINE_S + 1.5
    deadline_passed = [r for r in caplog.records if "drain deadline passed" in r.getMessage()]
    assert deadline_passed, caplog.text
    assert deadline_passed[0].created - stopping < drain_timeout_s + 1.5, caplog.text
