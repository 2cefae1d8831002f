"""A writer that finishes a transaction after the offset committer stopped.

At a drain deadline the pipeline stops its actors while a writer may still be inside a
transaction; when that transaction commits, the acknowledgement finds the committer
stopped. Nothing more will be committed in that run (the offsets are redelivered and
the idempotent write makes that harmless), so the writer must not fail: a failure
there turned an orderly drain timeout (exit 3) into a crash (exit 1).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from actors import ActorStopped
from kingest.pipeline.messages import Ack, WriteBatch
from kingest.pipeline.writer import WriterActor
from kingest.schema.v1.events_pb2 import MetricLogged
from kingest.store.migrate import apply_migrations
from kingest.store.rows import RowBatch
from kingest.telemetry.stats import PipelineStats
from tests.unit.store.test_rows import NOW, event, record


def test_an_acknowledgement_the_stopped_committer_refuses_is_not_a_failure(
    database_url: str,
) -> None:
    apply_migrations(database_url)
    rows = RowBatch(now=NOW)
    rows.add_records(
        [
            record(
                event(
                    event_id=f"00000000-0000-4000-8000-{offset:012d}",
                    metric_logged=MetricLogged(run_id="run-1", key="loss", value=0.5, step=offset),
                ),
                offset=offset,
            )
            for offset in range(3)
        ]
    )
    batch = WriteBatch(tp=("events", 3), generation=1, first_offset=0, message_count=3, rows=rows)
    refused: list[Ack] = []

    def stopped_committer(ack: Ack) -> None:
        refused.append(ack)
        raise ActorStopped("actor 'offset-committer' is stopped")

    pool: ConnectionPool[Any] = ConnectionPool(database_url, min_size=1, max_size=1, open=True)
    try:
        writer = WriterActor(
            0,
            pool=pool,
            ack=stopped_committer,
            stats=PipelineStats(),
            batch_size=10,
            retry_initial_s=0.01,
            retry_max_s=0.1,
            abandon=threading.Event(),
        )
        writer.receive(batch)  # raised ActorStopped before
    finally:
        pool.close()
    assert refused == [Ack(("events", 3), 1, 0)]
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT kafka_offset FROM kingest.metrics ORDER BY kafka_offset"
        ).fetchall()
    assert stored == [(0,), (1,), (2,)]
