"""``kingest start``: pre-flight checks, signal handling and the pipeline's lifetime.

Exit codes (also in the README):

=====  ==========================================================================
0      stopped on SIGTERM/SIGINT after draining: everything received was written and
       its offsets committed
1      runtime failure (a fatal Kafka error, a pipeline actor failed) or a start-up
       check failed (database or broker unreachable, schema not migrated, topic missing)
2      invalid configuration (every problem is listed)
3      stopped, but in-flight work was abandoned at the drain deadline (it will be
       redelivered; nothing is lost)
130    a second signal forced an immediate exit
=====  ==========================================================================
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from kingest.config import Settings, dead_letter_topic, redact_conninfo
from kingest.pipeline.pipeline import Pipeline, RunOutcome
from kingest.store.errors import first_line
from kingest.store.migrate import MigrationError, pending_migrations

__all__ = ["EXIT_FORCED", "StartupError", "check_database", "check_kafka", "run_service"]

log = logging.getLogger(__name__)

EXIT_FORCED = 130


class StartupError(RuntimeError):
    """A pre-flight check failed; the message says what to fix."""


def check_database(settings: Settings) -> None:
    """PostgreSQL is reachable with these credentials and every migration is applied."""
    url = settings.database.url
    where = redact_conninfo(url)
    try:
        pending = pending_migrations(url)
    except (psycopg.Error, MigrationError) as error:
        raise StartupError(f"cannot use PostgreSQL at {where}: {first_line(error)}") from None
    if pending:
        raise StartupError(
            f"the database at {where} is missing migrations {', '.join(pending)}: "
            "run `kingest migrate` first"
        )


def check_kafka(settings: Settings, timeout_s: float = 15.0) -> None:
    """The brokers answer and every configured topic (and dead-letter topic) exists."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "client.id": settings.kafka.client_id,
        **settings.kafka.properties,  # security settings (SASL, TLS) apply here too
    }
    try:
        metadata = AdminClient(config).list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise StartupError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {first_line(error)}"
        ) from None
    wanted = list(settings.kafka.topics)
    if settings.dead_letters.to_topic:
        wanted += [dead_letter_topic(settings.dead_letters.topic, t) for t in settings.kafka.topics]
    missing = [topic for topic in dict.fromkeys(wanted) if topic not in metadata.topics]
    if missing:
        raise StartupError(
            f"topics not found on {settings.kafka.bootstrap_servers}: {', '.join(missing)}"
        )


def run_service(settings: Settings, *, pipeline: Pipeline | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the process exit code."""
    try:
        check_database(settings)
        check_kafka(settings)
    except StartupError as error:
        log.error("%s", error)
        return int(RunOutcome.FAILED)
    pipeline = pipeline or Pipeline(settings)
    signals = _StopOnSignals(pipeline)
    signals.install()
    log.info(
        "kingest starting: topics=%s group=%s writers=%d",
        ",".join(settings.kafka.topics),
        settings.kafka.group_id,
        settings.pipeline.writers,
    )
    try:
        outcome = pipeline.run()
    except KafkaException as error:
        log.error("fatal Kafka error: %s", error)
        return int(RunOutcome.FAILED)
    except psycopg.Error as error:
        log.error("cannot use PostgreSQL at %s: %s", redact_conninfo(settings.database.url), error)
        return int(RunOutcome.FAILED)
    finally:
        signals.uninstall()
    log.info("kingest stopped: %s", outcome.name.lower())
    return int(outcome)


class _StopOnSignals:
    """First SIGTERM/SIGINT: drain and stop. Second: abandon in-flight work and exit now."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._received = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._received += 1
        name = signal.Signals(signum).name
        if self._received == 1:
            log.info("%s received: draining (send it again to exit at once)", name)
            self._pipeline.request_stop()
            return
        log.warning("%s received again: exiting without waiting for in-flight work", name)
        self._pipeline.abandon_in_flight()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_FORCED)
