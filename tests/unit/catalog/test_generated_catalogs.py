"""Random catalogs (``tests.catalog_strategies``) load, each field a column of the type
(and NULL-ability) the type table of ``kingest/catalog/types.py`` promises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from kingest.catalog import ENVELOPE_COLUMNS, load_catalog
from tests.catalog_strategies import (
    FULL_NAME,
    TABLE,
    CatalogSpec,
    catalog_specs,
    compile_spec,
    expected_not_null,
    expected_sql_types,
    proto_source,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=catalog_specs())
def test_every_field_is_a_column_of_the_promised_type(spec: CatalogSpec) -> None:
    catalog = load_catalog(compile_spec(spec), schema="gen", topic_types={"t": FULL_NAME})
    (table,) = catalog.fact_tables
    assert table.name == TABLE
    assert table.columns[: len(ENVELOPE_COLUMNS)] == ENVELOPE_COLUMNS
    derived = {column.name: column.sql_type for column in table.payload_columns}
    assert list(derived.items()) == list(expected_sql_types(spec).items()), proto_source(spec)
    not_null = {column.name: column.not_null for column in table.payload_columns}
    wrong = {
        name: not_null[name]
        for name, expected in expected_not_null(spec).items()
        if expected is not None and not_null[name] != expected
    }
    assert not wrong, f"NOT NULL: {wrong}\n{proto_source(spec)}"
