"""A catalog's tables on a real PostgreSQL: identical to the migrations, evolved additively,
breaking changes refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from kingest.catalog import (
    Catalog,
    catalog_ddl,
    comment_ddl,
    create_index_ddl,
    create_table_ddl,
    load_catalog,
)
from kingest.cli.commands import app
from kingest.store.introspect import introspect_schema, schema_differences
from kingest.store.migrate import MIGRATION_LOCK_KEY, apply_migrations
from kingest.store.schema_plan import SchemaPlanError, apply_schema, plan_schema
from tests.catalog_texts import ORDERS_V1, compile_catalog

pytestmark = pytest.mark.integration


def orders(tmp_path: Path, *replacements: tuple[str, str]) -> Catalog:
    source = ORDERS_V1
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    return load_catalog(compile_catalog(tmp_path, source), schema="acme")


def recorded(conn: psycopg.Connection[Any], schema: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT digest, applied_ddl FROM kingest.catalogs WHERE schema_name = %s ORDER BY id",
        (schema,),
    ).fetchall()
    return [(str(digest), str(ddl)) for digest, ddl in rows]


def test_the_builtin_catalog_makes_exactly_the_migrated_tables(any_database_url: str) -> None:
    apply_migrations(any_database_url)
    builtin = load_catalog()
    with psycopg.connect(any_database_url, autocommit=True) as conn:
        migrated = introspect_schema(conn, "kingest")
        with conn.transaction():
            for statement in catalog_ddl(load_catalog(schema="catalog_check")):
                conn.execute(statement.encode())
        derived = introspect_schema(conn, "catalog_check")
        names = {table.name for table in builtin.tables}
        assert names <= set(migrated.tables)
        assert set(derived.tables) == names
        assert (
            schema_differences(migrated, derived, labels=("migrations", "catalog"), tables=names)
            == []
        )

        plan = plan_schema(conn, builtin)
        assert (plan.statements, plan.breaking) == ((), ())
        assert plan.holds_catalog
        assert not plan.recorded
        # Applying records the catalog once, without running anything.
        apply_schema(conn, builtin)
        apply_schema(conn, builtin)
        assert recorded(conn, "kingest") == [(builtin.digest, "")]
        assert plan_schema(conn, builtin).recorded
        # The plan left no scratch schema behind.
        schemas = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'kingest_plan_%'"
        ).fetchone()
        assert schemas == (0,)


def test_a_catalog_evolves_by_additions_only(any_database_url: str, tmp_path: Path) -> None:
    apply_migrations(any_database_url)
    v1 = orders(tmp_path)
    v2 = orders(
        tmp_path,
        (
            "Channel channel = 4;",
            "Channel channel = 4;\n  // A coupon code.\n  string coupon = 5;\n"
            "  // Items ordered.\n  uint32 quantity = 6;",
        ),
        (
            "OrderPlaced order_placed = 10;",
            "OrderPlaced order_placed = 10;\n    OrderShipped order_shipped = 11;",
        ),
        (
            "enum Channel {",
            "// An order left.\nmessage OrderShipped { string order_id = 1; }\n\nenum Channel {",
        ),
        ("CHANNEL_STORE = 2;", "CHANNEL_STORE = 2;\n  CHANNEL_PHONE = 3;"),
    )
    with psycopg.connect(any_database_url, autocommit=True) as conn:
        first = apply_schema(conn, v1)
        assert first.statements == tuple(catalog_ddl(v1))
        assert plan_schema(conn, v1).holds_catalog
        conn.execute(
            "INSERT INTO acme.order_placed (event_id, occurred_at, correlation_id, source,"
            " kafka_topic, kafka_partition, kafka_offset, order_id, shop, amount_cents,"
            " channel) VALUES (gen_random_uuid(), now(), 'c', 's', 't', 0, 0, 'o1', 'shop',"
            " 100, 'web')"
        )

        plan = plan_schema(conn, v2)
        shipped = v2.table("order_shipped")
        widened = "CHECK ((channel = ANY (ARRAY['web'::text, 'store'::text, 'phone'::text])))"
        expected = [
            "ALTER TABLE acme.order_placed DROP CONSTRAINT order_placed_channel_check, "
            f"ADD CONSTRAINT order_placed_channel_check {widened}",
            "ALTER TABLE acme.order_placed ADD COLUMN coupon text",
            "COMMENT ON COLUMN acme.order_placed.coupon IS 'A coupon code.'",
            # A number field: the rows stored before it get the zero value old messages
            # held, and new rows must say (as the catalog's column, without a default).
            "ALTER TABLE acme.order_placed ADD COLUMN quantity bigint NOT NULL DEFAULT 0",
            "ALTER TABLE acme.order_placed ALTER COLUMN quantity DROP DEFAULT",
            "COMMENT ON COLUMN acme.order_placed.quantity IS 'Items ordered.'",
            create_table_ddl(v2, shipped),
            *(create_index_ddl(v2, shipped, index) for index in shipped.indexes),
            *filter(None, (comment_ddl(v2, shipped, c) for c in (None, *shipped.columns))),
            "ALTER TABLE acme.orders DROP CONSTRAINT orders_channel_check, "
            f"ADD CONSTRAINT orders_channel_check {widened}",
            "ALTER TABLE acme.orders ADD COLUMN coupon text",
            "ALTER TABLE acme.orders ADD COLUMN quantity bigint NOT NULL DEFAULT 0",
            "ALTER TABLE acme.orders ALTER COLUMN quantity DROP DEFAULT",
        ]
        assert list(plan.statements) == expected
        assert plan.breaking == ()

        apply_schema(conn, v2)
        assert plan_schema(conn, v2).holds_catalog
        assert [digest for digest, _ in recorded(conn, "acme")] == [v1.digest, v2.digest]
        assert recorded(conn, "acme")[1][1] == "".join(f"{s};\n" for s in expected)
        stored = conn.execute("SELECT quantity, coupon FROM acme.order_placed").fetchall()
        assert stored == [(0, None)]
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute(
                "INSERT INTO acme.order_placed (event_id, occurred_at, correlation_id, source,"
                " kafka_topic, kafka_partition, kafka_offset, order_id, shop, amount_cents)"
                " VALUES (gen_random_uuid(), now(), 'c', 's', 't', 0, 1, 'o2', 'shop', 1)"
            )


BREAKING = {
    "FIELD_SAME_TYPE": [("int64 amount_cents = 3;", "double amount_cents = 3;")],
    "FIELD_SAME_NAME": [("int64 amount_cents = 3;", "int64 total_cents = 3;")],
    "FIELD_NO_DELETE": [("int64 amount_cents = 3;", "")],
    # The message's table renamed: the old one would no longer be written.
    "TABLE_NO_DELETE": [("= {\n    updates:", '= {\n    name: "placed_orders"\n    updates:')],
    "TABLE_SAME_KEY": [('key: ["order_id"]', 'key: ["shop", "order_id"]')],
    "COLUMN_CHECK_NO_NARROWING": [("  CHANNEL_STORE = 2;\n", "")],
}


def test_breaking_changes_are_refused_each_with_its_reason(
    any_database_url: str, tmp_path: Path
) -> None:
    apply_migrations(any_database_url)
    v1 = orders(tmp_path)
    with psycopg.connect(any_database_url, autocommit=True) as conn:
        apply_schema(conn, v1)
        before = introspect_schema(conn, "acme")
        for rule, replacements in BREAKING.items():
            with pytest.raises(SchemaPlanError) as refused:
                apply_schema(conn, orders(tmp_path, *replacements))
            assert refused.value.plan is not None
            assert rule in [f.rule for f in refused.value.plan.breaking], rule
            assert f"[{rule}] To proceed:" in str(refused.value)
        assert schema_differences(before, introspect_schema(conn, "acme")) == []
        assert len(recorded(conn, "acme")) == 1

        # Without a recorded catalog the database itself still refuses what would break.
        conn.execute("DELETE FROM kingest.catalogs")
        retyped = plan_schema(conn, orders(tmp_path, *BREAKING["FIELD_SAME_TYPE"]))
        assert [(f.rule, f.table) for f in retyped.breaking] == [
            ("COLUMN_SAME_TYPE", "order_placed"),
            ("COLUMN_SAME_TYPE", "orders"),
        ]
        assert "order_placed.amount_cents is bigint in the database, double precision in" in str(
            retyped.breaking[0]
        )
        required = orders(
            tmp_path,
            (
                "Channel channel = 4;",
                "Channel channel = 4;\n  string coupon = 5 "
                "[(kingest.options.v1.column).required = true];",
            ),
        )
        assert [f.rule for f in plan_schema(conn, required).breaking] == [
            "COLUMN_NOT_NULL_WITHOUT_DEFAULT"
        ] * 2


def test_a_removal_done_by_hand_is_no_longer_refused(any_database_url: str, tmp_path: Path) -> None:
    apply_migrations(any_database_url)
    reserved = orders(
        tmp_path, ("int64 amount_cents = 3;", 'reserved 3;\n  reserved "amount_cents";')
    )
    with psycopg.connect(any_database_url, autocommit=True) as conn:
        apply_schema(conn, orders(tmp_path))
        refused = [(f.rule, f.table) for f in plan_schema(conn, reserved).breaking]
        assert refused == [("COLUMN_NO_DELETE", "order_placed"), ("COLUMN_NO_DELETE", "orders")]
        conn.execute("ALTER TABLE acme.order_placed DROP COLUMN amount_cents")
        refused = [(f.rule, f.table) for f in plan_schema(conn, reserved).breaking]
        assert refused == [("COLUMN_NO_DELETE", "orders")]
        conn.execute("ALTER TABLE acme.orders DROP COLUMN amount_cents")
        assert apply_schema(conn, reserved).statements == ()
        assert len(recorded(conn, "acme")) == 2


def test_the_schema_commands(database_url: str, tmp_path: Path) -> None:
    apply_migrations(database_url)
    runner = CliRunner()
    env = {"KINGEST_DATABASE_URL": database_url}
    catalog_file = tmp_path / "orders.binpb"
    catalog_file.write_bytes(compile_catalog(tmp_path, ORDERS_V1))

    plan = runner.invoke(
        app, ["schema", "plan", "--catalog", str(catalog_file), "--schema", "acme"], env=env
    )
    assert plan.exit_code == 0, plan.output
    assert plan.output.startswith("CREATE SCHEMA IF NOT EXISTS")
    apply = runner.invoke(
        app,
        ["schema", "apply"],
        env={**env, "KINGEST_CATALOG": str(catalog_file), "KINGEST_DATABASE_SCHEMA": "acme"},
    )
    assert apply.exit_code == 0, apply.output
    assert "recorded catalog" in apply.output
    # A topic typed with a message the envelope already has adds no table.
    typed = {**env, "KINGEST_TOPIC_TYPES": "placed:acme.v1.OrderPlaced"}
    again = runner.invoke(
        app, ["schema", "plan", "--catalog", str(catalog_file), "--schema", "acme"], env=typed
    )
    assert again.output == "the database already holds the catalog\n"

    catalog_file.write_bytes(
        compile_catalog(tmp_path, ORDERS_V1.replace("int64 amount_cents", "double amount_cents"))
    )
    refused = runner.invoke(
        app, ["schema", "apply", "--catalog", str(catalog_file), "--schema", "acme"], env=env
    )
    assert refused.exit_code == 1
    assert "refused" in refused.output
    assert "FIELD_SAME_TYPE" in refused.output

    catalog_file.write_bytes(b"not a descriptor set")
    bad = runner.invoke(
        app,
        ["schema", "plan", "--catalog", str(catalog_file), "--topic-types", "no-colon"],
        env=env,
    )
    assert bad.exit_code == 2
    assert "--topic-types: 'no-colon' is not topic:package.Message" in bad.output
    assert "Traceback" not in bad.output


def test_apply_refuses_to_run_without_its_preconditions(database_url: str, tmp_path: Path) -> None:
    v1 = orders(tmp_path)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Before `kingest migrate` there is nowhere to record the catalog.
        assert "run `kingest migrate`" in " ".join(plan_schema(conn, v1).notes)
        with pytest.raises(SchemaPlanError, match="run `kingest migrate` before applying"):
            apply_schema(conn, v1)
        assert introspect_schema(conn, "acme").exists is False
    with psycopg.connect(database_url) as conn, pytest.raises(ValueError, match="autocommit"):
        apply_schema(conn, v1)

    apply_migrations(database_url)
    with (
        psycopg.connect(database_url, autocommit=True) as holder,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        with pytest.raises(SchemaPlanError, match="held the migration lock"):
            apply_schema(conn, v1, lock_timeout_s=0.1)
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        apply_schema(conn, v1)

        # A recorded catalog this version cannot load is noted, not held against the next.
        conn.execute(
            "UPDATE kingest.catalogs SET digest = 'unreadable', descriptor_set = 'garbage'"
        )
        plan = plan_schema(conn, v1)
        assert plan.holds_catalog
        assert "no longer loads" in " ".join(plan.notes)


def test_the_schema_commands_report_an_unreachable_database(tmp_path: Path) -> None:
    url = "postgresql://kingest:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    result = CliRunner().invoke(app, ["schema", "plan", "--database-url", url])
    assert result.exit_code == 1
    assert "kingest schema plan failed" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output
