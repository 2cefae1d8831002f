"""``kingest start``: pre-flight checks, signal handling and the pipeline's lifetime.

Exit codes (also in docs/failures.md):

=====  ==========================================================================
0      stopped on SIGTERM/SIGINT after draining: everything received was written and
       its offsets committed (or stopped during start-up: nothing was consumed)
1      runtime failure (a fatal Kafka error, a pipeline actor failed) or a start-up
       check failed (database or broker unreachable, schema not migrated, the database
       role lacks a privilege of docs/security.md, topic missing)
2      invalid configuration (every problem is listed)
3      stopped, but in-flight work was abandoned, or the final offset commit not
       confirmed, at the drain deadline (it will be redelivered; nothing is lost)
130    a second signal forced an immediate exit
=====  ==========================================================================
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Final

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from kingest.config import Settings, dead_letter_topic, redact_conninfo, safe_error_text
from kingest.kafka import client_config
from kingest.pipeline import Pipeline, RunOutcome
from kingest.runtime import early_stop
from kingest.runtime.exit_codes import EXIT_FORCED
from kingest.runtime.http import TelemetryServer
from kingest.store import MigrationError, catalog_gaps, first_line, pending_migrations

__all__ = ["StartupError", "check_database", "check_kafka", "run_service"]

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A pre-flight check failed; the message says what to fix."""

    #: The process exit code: 1, or 2 when the configuration itself is what is wrong.
    exit_code: int = int(RunOutcome.FAILED)


class ClientConfigError(StartupError):
    """librdkafka rejected a client property (a ``KINGEST_RDKAFKA_*`` name or value)."""

    exit_code = 2


def check_database(settings: Settings) -> None:
    """PostgreSQL is reachable with these credentials, every migration is applied, the
    catalog's tables and columns exist and the role may write them."""
    url = settings.database.url
    where = redact_conninfo(url)
    # libpq waits forever for a server that accepts the connection but never answers;
    # the writers' pool is bounded by the same setting.
    bounded = make_conninfo(url, connect_timeout=max(1, round(settings.database.connect_timeout_s)))
    try:
        pending = pending_migrations(bounded)
    except (psycopg.Error, MigrationError) as error:
        raise StartupError(
            f"cannot use PostgreSQL at {where}: {safe_error_text(error, url)}"
        ) from None
    if pending:
        raise StartupError(
            f"the database at {where} is missing migrations {', '.join(pending)}: "
            "run `kingest migrate` first"
        )
    catalog = settings.catalog
    try:
        with psycopg.connect(bounded, autocommit=True) as conn:
            gaps = catalog_gaps(conn, catalog)
            role, missing = _missing_privileges(conn, catalog.schema)
    except psycopg.Error as error:
        raise StartupError(
            f"cannot use PostgreSQL at {where}: {safe_error_text(error, url)}"
        ) from None
    if gaps:
        shown = ", ".join(gaps[:10]) + (f" and {len(gaps) - 10} more" if len(gaps) > 10 else "")
        raise StartupError(
            f"the database at {where} lacks the catalog's {shown}: run `kingest schema apply`"
        )
    if missing:
        raise StartupError(
            f"role {role} lacks privileges on the database at {where}: {'; '.join(missing)} "
            "(grant them as in docs/security.md, 'Least-privilege roles')"
        )


#: What the runtime role needs on every table of the schema (docs/security.md), and on
#: its sequences (dead_letters.id). A missing grant would otherwise surface only at the
#: first write, as a failed pipeline with the batch's events uncommitted.
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE")
_MISSING_PRIVILEGES = """
SELECT n.nspname || '.' || c.relname, p.privilege
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
CROSS JOIN unnest(%s::text[]) AS p(privilege)
WHERE n.nspname IN ('kingest', %s)
  AND CASE WHEN c.relkind IN ('r', 'p') THEN NOT has_table_privilege(c.oid, p.privilege) END
UNION ALL
SELECT n.nspname || '.' || c.relname, 'USAGE'
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname IN ('kingest', %s)
  AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE') END
ORDER BY 1, 2
"""


def _missing_privileges(conn: psycopg.Connection[Any], schema: str) -> tuple[str, list[str]]:
    """The current role, and ``"INSERT, UPDATE on kingest.x"`` for each table of
    kingest's schema and of the catalog's ``schema`` it lacks."""
    row = conn.execute("SELECT current_user").fetchone()
    role = str(row[0]) if row else "?"
    lacking: dict[str, list[str]] = {}
    rows = conn.execute(_MISSING_PRIVILEGES, (list(_TABLE_PRIVILEGES), schema, schema))
    for relation, privilege in rows:
        lacking.setdefault(relation, []).append(privilege)
    return role, [f"{', '.join(p)} on {relation}" for relation, p in lacking.items()]


class _ClientErrors:
    """What librdkafka reports while the check runs, kept for the failure message.

    Without a logger librdkafka writes its own lines straight to stderr (one per
    reconnect attempt, about twenty a second, outside the JSON log format); routed to a
    logger without handlers they are dropped, and the error callback keeps the reason
    (connection refused, authentication failed...) for the one message that matters.
    """

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []
        self.quiet_logger = logging.Logger("kingest.preflight.librdkafka")
        self.quiet_logger.addHandler(logging.NullHandler())

    def on_error(self, error: KafkaError) -> None:
        self.errors.append(error)

    def reason(self) -> str:
        """The most telling error seen: the last one that is not "all brokers down"."""
        for error in reversed(self.errors):
            if error.code() != KafkaError._ALL_BROKERS_DOWN:
                return f" (last client error: {error.str()})"
        return ""


def _kafka_error_text(error: KafkaException) -> str:
    """The human part of a KafkaException ("Failed to get metadata: ..."), not its repr."""
    if error.args and isinstance(error.args[0], KafkaError):
        return str(error.args[0].str())
    return first_line(error)


def check_kafka(settings: Settings, timeout_s: float = 15.0) -> None:
    """The brokers answer and every configured topic (and dead-letter topic) exists."""
    client_errors = _ClientErrors()
    config: dict[str, Any] = {
        **client_config(settings, "preflight"),
        "error_cb": client_errors.on_error,
        "logger": client_errors.quiet_logger,
    }
    try:
        # librdkafka checks every property here, the KINGEST_RDKAFKA_* ones included.
        admin = AdminClient(config)
    except KafkaException as error:
        raise ClientConfigError(
            f"invalid Kafka client configuration: {_kafka_error_text(error)} "
            "(KINGEST_RDKAFKA_<PROPERTY> sets a librdkafka property; see `kingest config`)"
        ) from None
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        admin.poll(0)  # serves the queued error callbacks
        raise StartupError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: "
            f"{_kafka_error_text(error)}{client_errors.reason()}"
        ) from None
    wanted = list(settings.kafka.topics)
    if settings.dead_letters.to_topic:
        wanted += [dead_letter_topic(settings.dead_letters.topic, t) for t in settings.kafka.topics]
    missing = [topic for topic in dict.fromkeys(wanted) if topic not in metadata.topics]
    if missing:
        raise StartupError(
            f"topics not found on {settings.kafka.bootstrap_servers}: {', '.join(missing)}"
        )


#: Allocations between young-generation collections, then collections between older ones.
#: Python's defaults (700, 10, 10) are tuned for programs whose objects mostly die at
#: once; here every message is an object that lives for a batch (tens of thousands at a
#: time), survives a few young collections and is promoted, which brings a full
#: collection of every live object every few tens of thousands of messages. Measured on
#: 1M events: the defaults cost about 4 us of CPU per event (a quarter of the process's
#: time); these thresholds leave about 0.3 us (docs/performance.md).
GC_THRESHOLDS: Final = (100_000, 50, 100)


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated and collect cycles in the rhythm of a stream.

    kingest's own data holds no reference cycles; the collector is still on, for those
    that error paths (tracebacks) create, only less often.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_service(settings: Settings, *, pipeline: Pipeline | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the process exit code.

    The signal handlers come first: a stop requested during the start-up (also while a
    check waits on a slow peer) ends it at once with exit 0, nothing consumed.
    """
    signals = _StopOnSignals()
    signals.install()
    try:
        return _run(settings, pipeline, signals)
    finally:
        signals.uninstall()


def _run(settings: Settings, pipeline: Pipeline | None, signals: _StopOnSignals) -> int:
    if signals.requested.is_set():  # before the handlers were in place (kingest.runtime.early_stop)
        log.info("kingest stopped: stop requested during start-up, nothing consumed")
        return int(RunOutcome.DRAINED)
    log.info(
        "kingest starting: topics=%s group=%s writers=%d",
        ",".join(settings.kafka.topics),
        settings.kafka.group_id,
        settings.pipeline.writers,
    )
    try:
        checked = _check_until_stopped(settings, signals.requested)
    except StartupError as error:
        log.error("%s", error)
        return error.exit_code
    if not checked:
        log.info("kingest stopped: stop requested during start-up, nothing consumed")
        return int(RunOutcome.DRAINED)
    pipeline = pipeline or Pipeline(settings)
    server: TelemetryServer | None = None
    if settings.http.enabled:
        try:
            server = TelemetryServer(pipeline, settings).start()
        except OSError as error:
            log.error(
                "cannot serve /metrics, /healthz and /readyz on %s:%d: %s "
                "(set KINGEST_HTTP_PORT, or KINGEST_HTTP_ENABLED=false)",
                settings.http.host,
                settings.http.port,
                error.strerror or error,
            )
            return int(RunOutcome.FAILED)
    # From here a stop drains the pipeline (one requested before it ran: it stops at
    # once, before joining the group).
    signals.attach(pipeline)
    tune_garbage_collector()
    try:
        outcome = pipeline.run()
    except KafkaException as error:
        log.error("fatal Kafka error: %s", error)
        return int(RunOutcome.FAILED)
    except psycopg.Error as error:
        log.error("cannot use PostgreSQL at %s: %s", redact_conninfo(settings.database.url), error)
        return int(RunOutcome.FAILED)
    finally:
        if server is not None:
            server.stop()
    log.info("kingest stopped: %s", outcome.name.lower())
    return int(outcome)


#: How often the wait for the start-up checks looks for a stop request.
_STOP_POLL_S = 0.05


def _check_until_stopped(settings: Settings, stop: threading.Event) -> bool:
    """Run the start-up checks; False when a stop was requested before they passed.

    The checks run on a daemon thread so that a stop does not wait for a peer that is
    slow to answer (libpq's connect timeout, the broker's metadata timeout): a check
    still waiting then is left behind, and ends with the process. Raises
    :class:`StartupError` when a check fails.
    """
    failure: list[StartupError] = []
    done = threading.Event()

    def check() -> None:
        try:
            check_database(settings)
            check_kafka(settings)
        except StartupError as error:
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=check, name="kingest-start-up-checks", daemon=True).start()
    while not done.wait(_STOP_POLL_S):
        if stop.is_set():
            return False
    if failure:
        raise failure[0]
    return not stop.is_set()


class _StopOnSignals:
    """First SIGTERM/SIGINT: drain and stop. Second: abandon in-flight work and exit now.

    Installed before the start-up checks, when there is no pipeline yet: a first signal
    then only sets :attr:`requested`, which ends the start-up; :meth:`attach` hands a
    request on to the pipeline.
    """

    def __init__(self) -> None:
        self._pipeline: Pipeline | None = None
        self._received = 0
        self._previous: dict[int, Any] = {}
        #: Set by the first signal.
        self.requested = threading.Event()

    def attach(self, pipeline: Pipeline) -> None:
        """Signals stop ``pipeline`` from now on (at once, if one came already)."""
        self._pipeline = pipeline
        if self.requested.is_set():
            pipeline.request_stop()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        for early in early_stop.take():  # a stop requested while `kingest start` started
            self._handle(early, None)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._received += 1
        name = signal.Signals(signum).name
        pipeline = self._pipeline
        if self._received == 1:
            if pipeline is None:
                log.info(
                    "%s received during start-up: stopping, nothing consumed "
                    "(send it again to exit at once)",
                    name,
                )
            else:
                log.info("%s received: draining (send it again to exit at once)", name)
            self.requested.set()
            if pipeline is not None:
                pipeline.request_stop()
            return
        log.warning("%s received again: exiting without waiting for in-flight work", name)
        if pipeline is not None:
            pipeline.abandon_in_flight()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_FORCED)
