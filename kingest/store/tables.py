"""The typed tables kingest writes, and the SQL statements that write them.

Each fact table is described once here: its columns in the order the row buffers of
:mod:`kingest.store.rows` hold them, and how each column travels. A column travels as
one array parameter per batch (``unnest`` turns the arrays back into rows), so the
Python side never builds a value per row that PostgreSQL could build itself:

* timestamps travel as epoch microseconds (``int8``) and become ``timestamptz`` in
  SQL by exact integer arithmetic (no ``datetime`` objects, no float rounding);
* optional text travels as ``''`` and becomes NULL through ``NULLIF``;
* event ids travel as text and are parsed by PostgreSQL's ``uuid`` input (which accepts
  every form the validator does), maps as JSON text parsed by ``jsonb`` input.

The write plan is a fixed sequence of statements, one per table group, always in the
same order: concurrent writers then take row locks in the same order and cannot
deadlock on each other's tables. A statement inserts facts with
``ON CONFLICT (event_id) DO NOTHING`` (redelivery never creates a second row) and, for
the facts that feed a current-state table, upserts that table in the same statement.
The upserts are guarded by event time: a column group changes only when the incoming
``(occurred_at, event_id)`` is greater than the stored one, so state converges to the
latest event whatever the order writes finish in. A run's status and finish columns
compare ``(occurred_at, status rank, event_id)`` instead (:data:`RUN_STATUS_PRECEDENCE`):
at one event time a finish wins over a start and failed over cancelled over succeeded,
so neither the arrival order nor a random event id decides. Each statement first reduces the
batch to one row per key (``DISTINCT ON``), because ``ON CONFLICT DO UPDATE`` may not
touch a row twice, and feeds keys in sorted order, so two writers lock shared keys in
the same order.
"""

# The SQL below is assembled from this module's own constants (table and column names);
# no data ever reaches the SQL text, it travels as parameters.
# ruff: noqa: S608

from __future__ import annotations

import enum
from collections.abc import Iterator

import attrs

__all__ = [
    "ENVELOPE",
    "FACT_TABLES",
    "IMPORT_DEAD_LETTER",
    "INSERT_DEAD_LETTER",
    "INSERT_UNPUBLISHED_DEAD_LETTER",
    "RUN_STATUS_PRECEDENCE",
    "TABLES_BY_EVENT_TYPE",
    "WRITE_PLAN",
    "ColumnType",
    "Statement",
    "WriteColumn",
    "WriteTable",
    "iter_statement_tables",
]

SCHEMA = "kingest"


class ColumnType(enum.Enum):
    """How a column travels (the array type of its parameter) and lands (SQL expression).

    ``value`` is ``(parameter_array_type, sql_expression)``; the expression's ``{}`` is
    the unnested parameter.
    """

    TEXT = ("text[]", "{}")
    OPTIONAL_TEXT = ("text[]", "NULLIF({}, '')")
    UUID = ("uuid[]", "{}")
    JSONB = ("jsonb[]", "{}")
    INT8 = ("int8[]", "{}")
    INT4 = ("int4[]", "{}")
    FLOAT8 = ("float8[]", "{}")
    BOOL = ("bool[]", "{}")
    EPOCH_MICROS = ("int8[]", "'epoch'::timestamptz + {} * '1 microsecond'::interval")

    @property
    def array_type(self) -> str:
        return self.value[0]

    def expression(self, operand: str) -> str:
        return self.value[1].format(operand)


@attrs.frozen
class WriteColumn:
    name: str
    type: ColumnType


@attrs.frozen
class WriteTable:
    """An append-only fact table fed by one event type.

    ``columns`` is the buffer order of :class:`kingest.store.rows.RowBatch` (envelope
    first, then payload); the row buffer keeps the source Kafka record after them.
    """

    name: str
    event_type: str
    columns: tuple[WriteColumn, ...]

    @property
    def qualified_name(self) -> str:
        return f"{SCHEMA}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def copy_statement(self) -> str:
        """``COPY`` of every column, in buffer order, from a binary stream."""
        return (
            f"COPY {self.qualified_name} ({', '.join(self.column_names)}) "
            "FROM STDIN (FORMAT BINARY)"
        )


def _columns(*spec: tuple[str, ColumnType]) -> tuple[WriteColumn, ...]:
    return tuple(WriteColumn(name, column_type) for name, column_type in spec)


T = ColumnType

#: Columns every fact table starts with, in buffer order.
ENVELOPE = _columns(
    ("event_id", T.UUID),
    ("occurred_at", T.EPOCH_MICROS),
    ("correlation_id", T.TEXT),
    ("source", T.TEXT),
    ("kafka_topic", T.TEXT),
    ("kafka_partition", T.INT4),
    ("kafka_offset", T.INT8),
)

TRAINING_RUN_STARTS = WriteTable(
    "training_run_starts",
    "training_run_started",
    ENVELOPE
    + _columns(
        ("run_id", T.TEXT),
        ("experiment", T.OPTIONAL_TEXT),
        ("model_name", T.OPTIONAL_TEXT),
        ("framework", T.OPTIONAL_TEXT),
        ("dataset", T.OPTIONAL_TEXT),
        ("owner", T.OPTIONAL_TEXT),
        ("gpu_count", T.INT8),
        ("hyperparameters", T.JSONB),
    ),
)
TRAINING_RUN_FINISHES = WriteTable(
    "training_run_finishes",
    "training_run_finished",
    ENVELOPE
    + _columns(
        ("run_id", T.TEXT),
        ("status", T.TEXT),
        ("duration_seconds", T.FLOAT8),
        ("summary_metrics", T.JSONB),
        ("error_message", T.OPTIONAL_TEXT),
    ),
)
METRICS = WriteTable(
    "metrics",
    "metric_logged",
    ENVELOPE
    + _columns(
        ("run_id", T.TEXT),
        ("key", T.TEXT),
        ("value", T.FLOAT8),
        ("step", T.INT8),
        ("epoch", T.INT8),
    ),
)
MODEL_VERSIONS = WriteTable(
    "model_versions",
    "model_version_registered",
    ENVELOPE
    + _columns(
        ("model_name", T.TEXT),
        ("version", T.TEXT),
        ("run_id", T.OPTIONAL_TEXT),
        ("artifact_uri", T.OPTIONAL_TEXT),
        ("size_bytes", T.INT8),
        ("tags", T.JSONB),
    ),
)
DEPLOYMENTS = WriteTable(
    "deployments",
    "model_deployed",
    ENVELOPE
    + _columns(
        ("model_name", T.TEXT),
        ("version", T.TEXT),
        ("environment", T.TEXT),
        ("endpoint", T.OPTIONAL_TEXT),
        ("replicas", T.INT8),
        ("traffic_percent", T.FLOAT8),
    ),
)
INFERENCES = WriteTable(
    "inferences",
    "inference_completed",
    ENVELOPE
    + _columns(
        ("request_id", T.OPTIONAL_TEXT),
        ("model_name", T.TEXT),
        ("model_version", T.OPTIONAL_TEXT),
        ("environment", T.OPTIONAL_TEXT),
        ("latency_ms", T.FLOAT8),
        ("input_tokens", T.INT8),
        ("output_tokens", T.INT8),
        ("status", T.TEXT),
        ("error_code", T.OPTIONAL_TEXT),
    ),
)
EVALUATIONS = WriteTable(
    "evaluations",
    "evaluation_completed",
    ENVELOPE
    + _columns(
        ("evaluation_id", T.OPTIONAL_TEXT),
        ("model_name", T.TEXT),
        ("model_version", T.TEXT),
        ("dataset", T.OPTIONAL_TEXT),
        ("metrics", T.JSONB),
        ("passed", T.BOOL),
    ),
)
DRIFT_ALERTS = WriteTable(
    "drift_alerts",
    "data_drift_detected",
    ENVELOPE
    + _columns(
        ("model_name", T.TEXT),
        ("model_version", T.OPTIONAL_TEXT),
        ("feature", T.OPTIONAL_TEXT),
        ("method", T.OPTIONAL_TEXT),
        ("score", T.FLOAT8),
        ("threshold", T.FLOAT8),
        ("severity", T.OPTIONAL_TEXT),
    ),
)

#: Every fact table, in write order.
FACT_TABLES: tuple[WriteTable, ...] = (
    TRAINING_RUN_STARTS,
    TRAINING_RUN_FINISHES,
    METRICS,
    MODEL_VERSIONS,
    DEPLOYMENTS,
    INFERENCES,
    EVALUATIONS,
    DRIFT_ALERTS,
)
TABLES_BY_EVENT_TYPE: dict[str, WriteTable] = {table.event_type: table for table in FACT_TABLES}


@attrs.frozen
class Statement:
    """One statement of the write plan.

    Its parameters are the columns of ``fact_tables`` in order (one array each, empty
    arrays for a table without rows). It returns one row: the number of fact rows
    inserted per fact table, then the number of rows inserted or changed per state
    table.
    """

    fact_tables: tuple[WriteTable, ...]
    state_tables: tuple[str, ...]
    sql: str


# --- SQL generation ------------------------------------------------------------------


def _batch_select(table: WriteTable) -> str:
    """SELECT turning the table's array parameters into typed rows."""
    names = table.column_names
    expressions = ", ".join(
        f"{column.type.expression('u.' + column.name)} AS {column.name}" for column in table.columns
    )
    parameters = ", ".join(f"%b::{column.type.array_type}" for column in table.columns)
    return f"SELECT {expressions} FROM unnest({parameters}) AS u({', '.join(names)})"


def _insert_facts(table: WriteTable, source: str) -> str:
    names = ", ".join(table.column_names)
    return (
        f"INSERT INTO {table.qualified_name} ({names}) SELECT {names} FROM {source} "
        "ON CONFLICT (event_id) DO NOTHING RETURNING 1"
    )


#: Training run statuses from lowest to highest precedence: between two events of a run
#: at the same event time the higher status wins (a finish over a start; the worse
#: outcome of two finishes), and only between equal statuses the greater event id.
RUN_STATUS_PRECEDENCE: tuple[str, ...] = ("running", "succeeded", "cancelled", "failed")


def _status_rank(status: str) -> str:
    """SQL: the rank of the status expression in :data:`RUN_STATUS_PRECEDENCE` (NULL: 0)."""
    cases = " ".join(
        f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(RUN_STATUS_PRECEDENCE) if rank
    )
    return f"(CASE {status} {cases} ELSE 0 END)"


def _newer(
    new: str, old: str, *, at: str, event_id: str, rank: tuple[str, str] | None = None
) -> str:
    """SQL: the ``new`` side's (time[, rank], event id) is set and greater than the ``old``
    side's; ``rank`` is the pair of rank expressions of the new and the old side.

    A NULL time means "no event of this kind": never newer, and older than anything.
    """
    new_rank, old_rank = (f", {rank[0]}", f", {rank[1]}") if rank else ("", "")
    return (
        f"({new}.{at} IS NOT NULL AND ({old}.{at} IS NULL"
        f" OR ({new}.{at}{new_rank}, {new}.{event_id})"
        f" > ({old}.{at}{old_rank}, {old}.{event_id})))"
    )


def _guarded(columns: tuple[str, ...], guard: str) -> str:
    return ", ".join(
        f"{name} = CASE WHEN {guard} THEN EXCLUDED.{name} ELSE t.{name} END" for name in columns
    )


def _latest_per_key(source: str, keys: str, *, rank: str = "") -> str:
    then_rank = f"{rank} DESC, " if rank else ""
    return (
        f"SELECT DISTINCT ON ({keys}) * FROM {source} "
        f"ORDER BY {keys}, occurred_at DESC, {then_rank}event_id DESC"
    )


def _plain_statement(table: WriteTable) -> Statement:
    return Statement(
        fact_tables=(table,),
        state_tables=(),
        sql=(
            f"WITH stored AS ({_insert_facts(table, '(' + _batch_select(table) + ') AS b')}) "
            "SELECT count(*) FROM stored"
        ),
    )


_RUN_START_COLUMNS = (
    "started_at",
    "start_event_id",
    "correlation_id",
    "experiment",
    "model_name",
    "framework",
    "dataset",
    "owner",
    "gpu_count",
    "hyperparameters",
)
_RUN_FINISH_COLUMNS = (
    "finished_at",
    "finish_event_id",
    "finish_status",
    "duration_seconds",
    "summary_metrics",
    "error_message",
)
_RUN_STATUS_COLUMNS = ("status", "status_at", "status_event_id")


def _training_runs_statement() -> Statement:
    """Run starts and finishes, and the training_runs upsert, in one statement.

    One statement rather than one per event type: both feed the same training_runs
    rows, and locking them in two statements of one transaction could deadlock with a
    concurrent writer that holds them in the other order. The latest start and latest
    finish of each run are joined into one candidate row per run; its status group is
    whichever of the two is newer.

    Precedence (also in the table's comments, ``sql/0006_state_precedence.sql``): the
    status group and the finish group compare (event time, status rank, event id), the
    start group (event time, event id). The stored finish's rank is that of ``status``
    when the status group is that finish (as it is unless a later start superseded it),
    else of ``finish_status``.
    """
    stored_finish_status = (
        "CASE WHEN t.status_event_id = t.finish_event_id THEN t.status ELSE t.finish_status END"
    )
    start_is_newer = _newer(
        "s", "f", at="occurred_at", event_id="event_id", rank=("0", _status_rank("f.status"))
    )
    new_status = _newer(
        "EXCLUDED",
        "t",
        at="status_at",
        event_id="status_event_id",
        rank=(_status_rank("EXCLUDED.status"), _status_rank("t.status")),
    )
    new_start = _newer("EXCLUDED", "t", at="started_at", event_id="start_event_id")
    new_finish = _newer(
        "EXCLUDED",
        "t",
        at="finished_at",
        event_id="finish_event_id",
        rank=(_status_rank("EXCLUDED.finish_status"), _status_rank(stored_finish_status)),
    )
    all_columns = ("run_id", *_RUN_STATUS_COLUMNS, *_RUN_START_COLUMNS, *_RUN_FINISH_COLUMNS)
    sql = f"""
WITH starts AS MATERIALIZED ({_batch_select(TRAINING_RUN_STARTS)}),
finishes AS MATERIALIZED ({_batch_select(TRAINING_RUN_FINISHES)}),
starts_stored AS ({_insert_facts(TRAINING_RUN_STARTS, "starts")}),
finishes_stored AS ({_insert_facts(TRAINING_RUN_FINISHES, "finishes")}),
latest_start AS ({_latest_per_key("starts", "run_id")}),
latest_finish AS ({_latest_per_key("finishes", "run_id", rank=_status_rank("status"))}),
candidates AS (
    SELECT coalesce(s.run_id, f.run_id) AS run_id,
        CASE WHEN {start_is_newer} THEN 'running' ELSE f.status END AS status,
        CASE WHEN {start_is_newer} THEN s.occurred_at ELSE f.occurred_at END AS status_at,
        CASE WHEN {start_is_newer} THEN s.event_id ELSE f.event_id END AS status_event_id,
        s.occurred_at AS started_at, s.event_id AS start_event_id,
        s.correlation_id, s.experiment, s.model_name, s.framework, s.dataset, s.owner,
        s.gpu_count, s.hyperparameters,
        f.occurred_at AS finished_at, f.event_id AS finish_event_id,
        f.status AS finish_status, f.duration_seconds, f.summary_metrics, f.error_message
    FROM latest_start AS s FULL JOIN latest_finish AS f ON f.run_id = s.run_id
),
runs_changed AS (
    INSERT INTO {SCHEMA}.training_runs AS t ({", ".join(all_columns)})
    SELECT {", ".join(all_columns)} FROM candidates ORDER BY run_id
    ON CONFLICT (run_id) DO UPDATE SET
        {_guarded(_RUN_STATUS_COLUMNS, new_status)},
        {_guarded(_RUN_START_COLUMNS, new_start)},
        {_guarded(_RUN_FINISH_COLUMNS, new_finish)},
        updated_at = now()
    WHERE {new_status} OR {new_start} OR {new_finish}
    RETURNING 1
)
SELECT (SELECT count(*) FROM starts_stored), (SELECT count(*) FROM finishes_stored),
    (SELECT count(*) FROM runs_changed)"""
    return Statement(
        fact_tables=(TRAINING_RUN_STARTS, TRAINING_RUN_FINISHES),
        state_tables=("training_runs",),
        sql=sql,
    )


_DEPLOYMENT_COLUMNS = (
    "version",
    "endpoint",
    "replicas",
    "traffic_percent",
    "deployed_at",
    "event_id",
    "correlation_id",
)


def _deployments_statement() -> Statement:
    """Deployment facts and the model_deployments upsert (latest deployment wins)."""
    newer = _newer("EXCLUDED", "t", at="deployed_at", event_id="event_id")
    sql = f"""
WITH deployed AS MATERIALIZED ({_batch_select(DEPLOYMENTS)}),
deployed_stored AS ({_insert_facts(DEPLOYMENTS, "deployed")}),
latest AS ({_latest_per_key("deployed", "model_name, environment")}),
current_changed AS (
    INSERT INTO {SCHEMA}.model_deployments AS t
        (model_name, environment, {", ".join(_DEPLOYMENT_COLUMNS)})
    SELECT model_name, environment, version, endpoint, replicas, traffic_percent,
        occurred_at, event_id, correlation_id
    FROM latest
    ON CONFLICT (model_name, environment) DO UPDATE SET
        {", ".join(f"{name} = EXCLUDED.{name}" for name in _DEPLOYMENT_COLUMNS)},
        updated_at = now()
    WHERE {newer}
    RETURNING 1
)
SELECT (SELECT count(*) FROM deployed_stored), (SELECT count(*) FROM current_changed)"""
    return Statement(fact_tables=(DEPLOYMENTS,), state_tables=("model_deployments",), sql=sql)


#: The statements of one batch write, in their fixed order (dead letters come last).
WRITE_PLAN: tuple[Statement, ...] = (
    _training_runs_statement(),
    _plain_statement(METRICS),
    _plain_statement(MODEL_VERSIONS),
    _deployments_statement(),
    _plain_statement(INFERENCES),
    _plain_statement(EVALUATIONS),
    _plain_statement(DRIFT_ALERTS),
)

#: Dead letters: one row per rejected Kafka message; redelivery stores nothing new.
_DEAD_LETTER_COLUMNS = """
    kafka_topic, kafka_partition, kafka_offset, message_key, message_value,
    header_keys, header_values, kafka_timestamp, error_stage, error_class, error_message,
    sqlstate, event_id, event_type, correlation_id, consumer_group"""
_DEAD_LETTER_VALUES = """
    %s, %s, %s, %b, %b, %s::text[], %b::bytea[],
    'epoch'::timestamptz + %s::int8 * '1 millisecond'::interval,
    %s, %s, %s, %s, %s, %s, %s, %s"""

INSERT_DEAD_LETTER = f"""
INSERT INTO {SCHEMA}.dead_letters ({_DEAD_LETTER_COLUMNS}
) VALUES ({_DEAD_LETTER_VALUES}
)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING"""

#: A dead letter the dead-letter topic did not take, with why (the parameters of
#: :data:`INSERT_DEAD_LETTER`, then ``publish_error``). A row already stored for it (the
#: table store too, or a redelivery) gets the error.
INSERT_UNPUBLISHED_DEAD_LETTER = f"""
INSERT INTO {SCHEMA}.dead_letters ({_DEAD_LETTER_COLUMNS}, publish_error
) VALUES ({_DEAD_LETTER_VALUES}, %s
)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset)
DO UPDATE SET publish_error = EXCLUDED.publish_error"""

#: A dead letter read back from a dead-letter topic to be replayed (the parameters of
#: :data:`INSERT_DEAD_LETTER`, then its ``attempts`` and ``dead_lettered_at``). A row
#: already stored for it is left as it is: it holds the replay history.
IMPORT_DEAD_LETTER = f"""
INSERT INTO {SCHEMA}.dead_letters ({_DEAD_LETTER_COLUMNS}, attempts, dead_lettered_at
) VALUES ({_DEAD_LETTER_VALUES}, %s, %s
)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING"""


def iter_statement_tables() -> Iterator[WriteTable]:
    """Every fact table in the order the write plan writes them (for checks and tests)."""
    for statement in WRITE_PLAN:
        yield from statement.fact_tables
