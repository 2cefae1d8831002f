"""The baseline of ``kingest bench``: a plain consume-write-commit loop, in its own process.

A throughput figure means little alone, so the bench runs, beside kingest, the simplest
correct program doing the same job and reports kingest's events/s as a ratio to it. The
loop reads the same topic into a fresh database: consume up to :data:`BASELINE_POLL`
messages, map them with kingest's own decoding (so that the ratio measures the pipeline
and the write path, not the decoder), write them with kingest's own
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` statements (one per fact
table; those of training runs and deployments also keep their state tables, as kingest
does) with psycopg's list adaptation, commit the transaction, then commit the offsets
synchronously. One thread, no overlap: that is what kingest's actors improve on.

It runs as its own process, like kingest, so that its CPU and peak RSS are its own:
``python -c "from kingest.dev.baseline import baseline_main; baseline_main()" BOOTSTRAP
TOPIC GROUP URL EVENTS`` (or ``python -m kingest.dev.baseline`` with the same
arguments) prints one JSON line with its events, seconds (first message to last
commit), CPU seconds and peak RSS in bytes.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any, Final

import psycopg
from confluent_kafka import Consumer

from kingest.dev.services import FAST_GROUP_SETTINGS
from kingest.store import INSERT_DEAD_LETTER, WRITE_PLAN, RowBatch, dead_letter_params

__all__ = ["BASELINE_POLL", "baseline_loop", "baseline_main"]

#: Messages the loop asks for per poll (and so, at most, per transaction).
BASELINE_POLL: Final = 5000


def baseline_loop(bootstrap: str, topic: str, group: str, url: str, events: int) -> dict[str, Any]:
    """The plain loop; returns its events, seconds (first message to last commit)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP_SETTINGS,
        }
    )
    consumer.subscribe([topic])
    done, first = 0, None
    with psycopg.connect(url) as conn:
        while done < events:
            messages = [m for m in consumer.consume(BASELINE_POLL, 1.0) if m.error() is None]
            if not messages:
                continue
            first = first or time.monotonic()
            rows = RowBatch()
            rows.add_records(messages)
            with conn.cursor() as cursor:
                # kingest's own statements, parameters adapted by psycopg from the lists.
                counts = rows.counts_by_type
                for statement in WRITE_PLAN:
                    if any(table.event_type in counts for table in statement.fact_tables):
                        params = [c for t in statement.fact_tables for c in rows.columns(t)]
                        cursor.execute(statement.sql, params)
                if rows.rejection_count:
                    cursor.executemany(
                        INSERT_DEAD_LETTER, [dead_letter_params(r, group) for r in rows.rejections]
                    )
            conn.commit()
            consumer.commit(asynchronous=False)
            done += len(messages)
    seconds = time.monotonic() - (first or time.monotonic())
    consumer.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "events": done,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss": usage.ru_maxrss * 1024,
    }


def baseline_main() -> None:
    """Entry point of the baseline's own process (argv: bootstrap topic group url events)."""
    bootstrap, topic, group, url, events = sys.argv[1:6]
    print(json.dumps(baseline_loop(bootstrap, topic, group, url, int(events))), flush=True)


if __name__ == "__main__":
    baseline_main()
