"""Differences between two introspected schemas, one readable line each."""

from __future__ import annotations

from dataclasses import replace

from kingest.store.introspect import LiveColumn, LiveSchema, LiveTable, schema_differences


def column(name: str, sql_type: str = "text", **changes: object) -> LiveColumn:
    base = LiveColumn(name=name, sql_type=sql_type, not_null=False, default=None, comment=None)
    return replace(base, **changes)  # type: ignore[arg-type]


def table(name: str, *columns: LiveColumn, **changes: object) -> LiveTable:
    base = LiveTable(
        name=name,
        columns={c.name: c for c in columns},
        constraints={f"{name}_pkey": "PRIMARY KEY (id)"},
        indexes={f"{name}_pkey": f"CREATE UNIQUE INDEX {name}_pkey ON <schema>.{name} (id)"},
        comment="A table.",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def schema(name: str, *tables: LiveTable) -> LiveSchema:
    return LiveSchema(name=name, tables={t.name: t for t in tables})


def test_schemas_alike_but_for_column_order_have_no_differences() -> None:
    left = schema("a", table("t", column("id", "bigint"), column("note")))
    right = schema("b", table("t", column("note"), column("id", "bigint")))
    assert schema_differences(left, right) == []


def test_every_kind_of_difference_is_one_line_naming_both_sides() -> None:
    left = schema(
        "a",
        table("gone", column("id")),
        table(
            "t",
            column("id", "bigint", not_null=True),
            column("kind", default="'x'::text", comment="The kind."),
            column("only_left"),
            comment="Left.",
            constraints={"t_pkey": "PRIMARY KEY (id)", "t_kind_check": "CHECK (kind = 'x')"},
            indexes={"t_kind_idx": "CREATE INDEX t_kind_idx ON <schema>.t USING btree (kind)"},
        ),
    )
    right = schema(
        "b",
        table("new", column("id")),
        table(
            "t",
            column("id", "integer", not_null=False),
            column("kind", default=None, comment="Another."),
            comment="Right.",
            constraints={"t_pkey": "PRIMARY KEY (id, kind)"},
            indexes={
                "t_kind_idx": "CREATE INDEX t_kind_idx ON <schema>.t USING hash (kind)",
                "t_extra_idx": "CREATE INDEX t_extra_idx ON <schema>.t USING btree (id)",
            },
        ),
    )
    assert schema_differences(left, right) == [
        "table gone: only in a",
        "table new: only in b",
        "table t: comment 'Left.' in a, 'Right.' in b",
        "column t.only_left: only in a",
        "column t.id: sql_type 'bigint' in a, 'integer' in b",
        "column t.id: not_null True in a, False in b",
        "column t.kind: default \"'x'::text\" in a, None in b",
        "column t.kind: comment 'The kind.' in a, 'Another.' in b",
        "constraint t.t_kind_check: only in a",
        "constraint t.t_pkey: 'PRIMARY KEY (id)' in a, 'PRIMARY KEY (id, kind)' in b",
        "index t.t_extra_idx: only in b",
        "index t.t_kind_idx: 'CREATE INDEX t_kind_idx ON <schema>.t USING btree (kind)' in a,"
        " 'CREATE INDEX t_kind_idx ON <schema>.t USING hash (kind)' in b",
    ]


def test_labels_and_a_table_selection_narrow_the_comparison() -> None:
    left = schema("kingest", table("t", column("id")), table("dead_letters", column("id")))
    right = schema("kingest", table("t", column("id", "uuid")))
    assert schema_differences(left, right, labels=("migrations", "catalog"), tables={"t"}) == [
        "column t.id: sql_type 'text' in migrations, 'uuid' in catalog"
    ]


def test_the_primary_key_is_read_from_the_constraints() -> None:
    assert table("t").primary_key == "PRIMARY KEY (id)"
    assert table("t", constraints={}).primary_key is None
