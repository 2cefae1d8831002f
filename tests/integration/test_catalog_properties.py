"""Random catalogs on a real PostgreSQL: their DDL applies, and a random message of the
table's type round-trips through RowBatch and write_batch to the values the type table
promises (computed in ``tests.catalog_strategies``, not by kingest's mapping).

What the properties once found broken is pinned by the explicit examples at the end.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from kingest.catalog import (
    Catalog,
    CatalogError,
    catalog_ddl,
    load_catalog,
    message_class,
    quote_identifier,
)
from kingest.store import (
    RowBatch,
    apply_migrations,
    derive_event_id,
    write_batch,
    write_plan,
)
from tests.catalog_strategies import (
    FULL_NAME,
    KAFKA_TIME,
    TABLE,
    CatalogSpec,
    catalog_specs,
    compile_spec,
    expected_columns,
    expected_envelope,
    expected_sql_types,
    message_values,
    poisoned,
    proto_source,
    same_value,
)
from tests.catalog_support import compile_catalog
from tests.fakes import FakeRecord

pytestmark = pytest.mark.integration

NOW = 1_750_000_000.0
#: The envelope columns read back before the payload's (kafka_offset first, to order by).
ENVELOPE = ("kafka_offset", "event_id", "occurred_at", "correlation_id", "source")
#: Features the round trip leaves out (none: every feature is generated).
BROKEN: frozenset[str] = frozenset()


@pytest.fixture
def migrated_url(any_database_url: str) -> str:
    """A fresh database with kingest's own tables (the dead letters go there)."""
    apply_migrations(any_database_url)
    return any_database_url


_PLANS: dict[str, Any] = {}


def write_plan_of(catalog: Catalog) -> Any:
    if catalog.digest + catalog.schema not in _PLANS:
        _PLANS[catalog.digest + catalog.schema] = write_plan(catalog)
    return _PLANS[catalog.digest + catalog.schema]


def _round_trip(
    conn: psycopg.Connection[Any], catalog: Catalog, values: list[bytes], topic: str
) -> tuple[RowBatch, list[tuple[Any, ...]], list[str]]:
    for statement in catalog_ddl(catalog):
        conn.execute(statement.encode())
    batch = RowBatch(now=NOW, plan=write_plan_of(catalog))
    batch.add_records(
        FakeRecord(value, topic=topic, offset=offset) for offset, value in enumerate(values)
    )
    write_batch(conn, batch)
    (table,) = catalog.fact_tables
    names = [column.name for column in table.payload_columns]
    selected = ", ".join([*ENVELOPE, *map(quote_identifier, names)])
    rows = conn.execute(
        f"SELECT {selected} FROM {quote_identifier(catalog.schema)}.{TABLE} ORDER BY 1"
    ).fetchall()
    return batch, rows, names


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), spec=catalog_specs(exclude=BROKEN))
def test_a_random_message_round_trips(
    migrated_url: str, data: st.DataObject, spec: CatalogSpec
) -> None:
    schema = f"g{uuid.uuid4().hex[:12]}"
    try:
        catalog = load_catalog(compile_spec(spec), schema=schema, topic_types={schema: FULL_NAME})
    except CatalogError as error:
        # Flattening can make two columns one name (field a_a beside a flattened a.a):
        # refused with that reason, a valid answer that leaves nothing to round-trip.
        if not all("two columns are named" in p for p in error.problems):
            raise
        reject()
    cls = message_class(catalog, FULL_NAME)
    # An all-default message is empty bytes: test_an_all_default_message_is_a_row.
    # Events that share an event_id are one row: not what this property is about.
    messages = data.draw(
        st.lists(
            message_values(spec, cls).filter(lambda m: m.ByteSize()),
            min_size=1,
            max_size=3,
            unique_by=lambda m: str(uuid.UUID(m.event_id)) if spec.roles and m.event_id else id(m),
        )
    )
    # Some messages are spoilt: each must become a dead letter of the expected class.
    spoilt = {
        offset: error_class
        for offset, message in enumerate(messages)
        if data.draw(st.booleans(), label=f"spoil {offset}")
        and (error_class := data.draw(poisoned(spec, message))) is not None
    }
    for error_class in spoilt.values():
        event(f"dead letter: {error_class}")
    types = expected_sql_types(spec)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        batch, rows, names = _round_trip(
            conn, catalog, [m.SerializeToString() for m in messages], schema
        )
        rejected = {r.offset: (r.error_stage, r.error_class) for r in batch.rejections}
        assert rejected == {o: ("validate", c) for o, c in spoilt.items()}, proto_source(spec)
        dead_letters = conn.execute(
            "SELECT kafka_offset, error_class FROM kingest.dead_letters WHERE kafka_topic = %s",
            (schema,),
        ).fetchall()
        assert dict(dead_letters) == spoilt
        stored = [n for n in range(len(messages)) if n not in spoilt]
        assert [row[0] for row in rows] == stored
        for offset, row in zip(stored, rows, strict=True):
            parsed = cls.FromString(messages[offset].SerializeToString())
            expected = expected_columns(spec, parsed)
            got = dict(zip(names, row[len(ENVELOPE) :], strict=True))
            wrong = {
                name: (got[name], expected[name])
                for name in names
                if not same_value(types[name], got[name], expected[name])
            }
            derived = derive_event_id(schema, 3, offset)
            envelope = (
                expected_envelope(parsed, derived)
                if spec.roles
                else {"event_id": derived, "occurred_at": KAFKA_TIME, "correlation_id": derived}
                | {"source": ""}
            )
            got_envelope = dict(zip(ENVELOPE[1:], row[1 : len(ENVELOPE)], strict=True))
            got_envelope["event_id"] = str(got_envelope["event_id"])
            if got_envelope != envelope:
                wrong["envelope"] = (got_envelope, envelope)
            assert not wrong, f"(got, expected) {wrong}\n{proto_source(spec)}{parsed}"


# --- findings: minimal examples of what the properties found broken ------------------

COLOR = "enum Color { COLOR_UNSPECIFIED = 0; COLOR_RED = 1; }\n"


def _catalog(tmp_path: Path, body: str, *imports: str) -> Catalog:
    """A catalog of one ``.proto`` file whose message ``ex.v1.M`` is topic ``ex``'s type."""
    header = 'syntax = "proto3";\npackage ex.v1;\n'
    header += "".join(f'import "{name}";\n' for name in imports)
    raw = compile_catalog(tmp_path, {"ex/v1/m.proto": header + body})
    return load_catalog(raw, schema="ex", topic_types={"ex": "ex.v1.M"})


def _batch(catalog: Catalog, *messages: Any) -> RowBatch:
    batch = RowBatch(now=NOW, plan=write_plan_of(catalog))
    batch.add_records(
        FakeRecord(m.SerializeToString(), topic="ex", offset=n) for n, m in enumerate(messages)
    )
    return batch


def _stored_row(
    url: str, catalog: Catalog, message: Any, *columns: str, use_copy: bool = True
) -> tuple[Any, ...]:
    """``columns`` of the row ``message`` makes, written by :func:`write_batch`."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for statement in catalog_ddl(catalog):
            conn.execute(statement.encode())
        batch = _batch(catalog, message)
        assert batch.rejections == []
        write_batch(conn, batch, use_copy=use_copy)
        selected = ", ".join(map(quote_identifier, columns))
        row = conn.execute(f"SELECT {selected} FROM ex.m").fetchone()
    assert row is not None
    return tuple(row)


def _stored(url: str, catalog: Catalog, message: Any, column: str) -> Any:
    """``column`` of the row ``message`` makes."""
    return _stored_row(url, catalog, message, column)[0]


def _new(catalog: Catalog) -> Any:
    return message_class(catalog, "ex.v1.M")()


def test_write_batch_writes_the_rows_of_the_batchs_own_catalog(
    any_database_url: str, tmp_path: Path
) -> None:
    catalog = _catalog(tmp_path, "message M { int64 n = 1; }")
    message = _new(catalog)
    message.n = 7
    with psycopg.connect(any_database_url, autocommit=True) as conn:
        for statement in catalog_ddl(catalog):
            conn.execute(statement.encode())
        result = write_batch(conn, _batch(catalog, message))
        assert result.inserted == {"m": 1}
        assert conn.execute("SELECT n FROM ex.m").fetchall() == [(7,)]


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_write_batch_sends_the_columns_cast_in_sql(
    any_database_url: str, tmp_path: Path, use_copy: bool
) -> None:
    catalog = _catalog(tmp_path, "message M { optional int64 n = 1; uint64 u = 2; }")
    message = _new(catalog)
    message.n, message.u = 7, 2**64 - 1
    stored = _stored_row(any_database_url, catalog, message, "n", "u", use_copy=use_copy)
    assert stored == (7, 2**64 - 1)


def test_a_bytes_column_round_trips(any_database_url: str, tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, "message M { bytes b = 1; }")
    message = _new(catalog)
    message.b = b"\x01\xff"
    assert _stored(any_database_url, catalog, message, "b") == b"\x01\xff"


def test_a_flattened_message_of_plain_scalars_is_a_row(tmp_path: Path) -> None:
    catalog = _catalog(
        tmp_path,
        "message In { int32 a = 1; }\n"
        "message M { In in = 1 [(kingest.options.v1.column).flatten = true]; }",
        "kingest/options/v1/options.proto",
    )
    message = _new(catalog)
    message.SetInParent()
    getattr(message, "in").a = 3
    batch = _batch(catalog, message)
    assert (batch.event_count, batch.rejections) == (1, [])


def test_a_flattened_map_of_an_unset_message_is_storable(
    any_database_url: str, tmp_path: Path
) -> None:
    catalog = _catalog(
        tmp_path,
        "message In { map<string, string> tags = 1; }\n"
        "message M { In in = 1 [(kingest.options.v1.column).flatten = true]; int32 n = 2; }",
        "kingest/options/v1/options.proto",
    )
    message = _new(catalog)
    message.n = 1
    assert _stored(any_database_url, catalog, message, "in_tags") in (None, {})


def test_a_struct_holding_nan_is_dead_lettered(tmp_path: Path) -> None:
    catalog = _catalog(
        tmp_path, "message M { google.protobuf.Struct s = 1; }", "google/protobuf/struct.proto"
    )
    message = _new(catalog)
    message.s["x"] = math.nan
    assert [r.error_class for r in _batch(catalog, message).rejections] == ["not_finite"]


def test_a_nan_wrapper_is_dead_lettered(tmp_path: Path) -> None:
    catalog = _catalog(
        tmp_path,
        "message M { google.protobuf.DoubleValue d = 1; }",
        "google/protobuf/wrappers.proto",
    )
    message = _new(catalog)
    message.d.value = math.nan
    assert [r.error_class for r in _batch(catalog, message).rejections] == ["not_finite"]


def test_an_all_default_message_is_a_row(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, "message M { int32 n = 1; }")
    batch = _batch(catalog, _new(catalog))
    assert (batch.event_count, batch.rejections) == (1, [])


def test_a_far_timestamp_keeps_its_microseconds(any_database_url: str, tmp_path: Path) -> None:
    catalog = _catalog(
        tmp_path,
        "message M { google.protobuf.Timestamp t = 1; }",
        "google/protobuf/timestamp.proto",
    )
    message = _new(catalog)
    message.t.seconds, message.t.nanos = 253_402_300_799, 999_999_000
    expected = dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)
    assert _stored(any_database_url, catalog, message, "t") == expected


def test_a_negative_duration_is_truncated_like_a_positive_one(
    any_database_url: str, tmp_path: Path
) -> None:
    catalog = _catalog(
        tmp_path,
        "message M { google.protobuf.Duration d = 1; }",
        "google/protobuf/duration.proto",
    )
    message = _new(catalog)
    message.d.seconds, message.d.nanos = -1, -500
    assert _stored(any_database_url, catalog, message, "d") == dt.timedelta(seconds=-1)


@pytest.mark.parametrize(
    ("value_type", "value", "expected"),
    [
        ("Color", 1, "red"),  # an enum's label, as in an enum column
        ("int64", 2**62, 2**62),  # a JSON number (jsonb's numeric is exact)
        ("float", 0.1, 0.10000000149011612),  # the float32 value, as a double
    ],
    ids=["enum", "int64", "float"],
)
def test_a_map_of_scalars_is_json_as_json_writes_them(
    any_database_url: str, tmp_path: Path, value_type: str, value: Any, expected: Any
) -> None:
    catalog = _catalog(tmp_path, COLOR + f"message M {{ map<string, {value_type}> m = 1; }}")
    message = _new(catalog)
    message.m["k"] = value
    assert _stored(any_database_url, catalog, message, "m") == {"k": expected}


def test_an_array_beside_a_column_named_like_its_elements_keeps_its_own(
    any_database_url: str, tmp_path: Path
) -> None:
    # The SQL unpacking an array once named its elements "e": a payload column "e"
    # stood in for them (an enum array read [0] where the timestamp "e" was 0).
    catalog = _catalog(tmp_path, COLOR + "message M { repeated Color a = 1; int64 e = 2; }")
    message = _new(catalog)
    message.a.extend([0, 1])
    message.e = 5
    assert _stored(any_database_url, catalog, message, "a") == ["unspecified", "red"]


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_a_repeated_uint64_is_a_numeric_array(
    any_database_url: str, tmp_path: Path, use_copy: bool
) -> None:
    # fixed64 "e" is also the name the array's unpacking once gave its elements.
    catalog = _catalog(tmp_path, "message M { repeated fixed64 e = 1; repeated uint64 u = 2; }")
    message = _new(catalog)
    message.e.extend([0, 2**64 - 1])
    message.u.append(5)
    stored = _stored_row(any_database_url, catalog, message, "e", "u", use_copy=use_copy)
    assert stored == ([0, 2**64 - 1], [5])
