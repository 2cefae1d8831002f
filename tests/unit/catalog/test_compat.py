"""Breaking changes between two catalogs compiled from small .proto files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kingest.catalog import Catalog, load_catalog
from kingest.catalog.compat import Incompatibility, catalog_incompatibilities
from tests.catalog_texts import ORDERS_V1, compile_catalog


def catalog(tmp_path: Path, *replacements: tuple[str, str]) -> Catalog:
    source = ORDERS_V1
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    return load_catalog(compile_catalog(tmp_path, source), schema="acme")


def findings(tmp_path: Path, *replacements: tuple[str, str]) -> list[Incompatibility]:
    return catalog_incompatibilities(catalog(tmp_path), catalog(tmp_path, *replacements))


def rules(found: list[Incompatibility]) -> list[tuple[str, str | None, tuple[str, ...]]]:
    return [(f.rule, f.table, f.columns) for f in found]


def test_the_same_catalog_breaks_nothing(tmp_path: Path) -> None:
    assert catalog_incompatibilities(catalog(tmp_path), catalog(tmp_path)) == []


def test_new_fields_messages_and_tables_break_nothing(tmp_path: Path) -> None:
    found = findings(
        tmp_path,
        ("Channel channel = 4;", "Channel channel = 4;\n  string coupon = 5;"),
        (
            "OrderPlaced order_placed = 10;",
            "OrderPlaced order_placed = 10;\n    OrderShipped order_shipped = 11;",
        ),
        ("enum Channel {", "message OrderShipped { string order_id = 1; }\n\nenum Channel {"),
        ("CHANNEL_STORE = 2;", "CHANNEL_STORE = 2;\n  CHANNEL_PHONE = 3;"),
    )
    assert found == []


def test_a_field_whose_type_changes(tmp_path: Path) -> None:
    found = findings(tmp_path, ("int64 amount_cents = 3;", "double amount_cents = 3;"))
    assert rules(found) == [("FIELD_SAME_TYPE", "order_placed", ("amount_cents",))]
    assert "acme.v1.OrderPlaced.amount_cents (number 3) changed type from int64 to double" in str(
        found[0]
    )
    assert "To proceed: add a new field with a new number" in str(found[0])
    # The state column the fact column sets changes with it: one finding for both.
    assert found[0].affects == {("order_placed", "amount_cents"), ("orders", "amount_cents")}


def test_a_field_number_reused_with_another_name(tmp_path: Path) -> None:
    found = findings(tmp_path, ("int64 amount_cents = 3;", "int64 total_cents = 3;"))
    assert rules(found) == [("FIELD_SAME_NAME", "order_placed", ("amount_cents",))]
    assert "is now named 'total_cents'" in found[0].message


def test_a_field_removed_without_reserving_it(tmp_path: Path) -> None:
    found = findings(tmp_path, ("int64 amount_cents = 3;", ""))
    assert rules(found) == [("FIELD_NO_DELETE", "order_placed", ("amount_cents",))]
    assert 'reserved 3; reserved "amount_cents";' in found[0].remedy


def test_a_field_removed_and_reserved_still_leaves_its_column(tmp_path: Path) -> None:
    found = findings(
        tmp_path, ("int64 amount_cents = 3;", 'reserved 3;\n  reserved "amount_cents";')
    )
    # The fact column and the state column it sets.
    assert rules(found) == [
        ("COLUMN_NO_DELETE", "order_placed", ("amount_cents",)),
        ("COLUMN_NO_DELETE", "orders", ("amount_cents",)),
    ]
    assert "ALTER TABLE acme.order_placed DROP COLUMN amount_cents" in found[0].remedy


def test_a_field_changed_cardinality(tmp_path: Path) -> None:
    found = findings(tmp_path, ("string shop = 2", "repeated string shop = 2"))
    assert [f.rule for f in found][:1] == ["FIELD_SAME_CARDINALITY"]


def test_a_json_name_change(tmp_path: Path) -> None:
    found = findings(
        tmp_path, ("int64 amount_cents = 3;", 'int64 amount_cents = 3 [json_name = "amount"];')
    )
    assert rules(found) == [("FIELD_SAME_JSON_NAME", "order_placed", ("amount_cents",))]


def test_an_envelope_member_removed_names_its_table(tmp_path: Path) -> None:
    found = findings(tmp_path, ("OrderPlaced order_placed = 10;", "OrderPlaced order_placed = 12;"))
    assert rules(found) == [("FIELD_NO_DELETE", "order_placed", ())]


def test_a_table_no_longer_in_the_catalog(tmp_path: Path) -> None:
    found = findings(
        tmp_path, ("= {\n    updates:", '= {\n    name: "placed_orders"\n    updates:')
    )
    assert rules(found) == [("TABLE_NO_DELETE", "order_placed", ())]
    assert "DROP TABLE acme.order_placed" in found[0].remedy


def test_a_state_table_whose_key_changed(tmp_path: Path) -> None:
    found = findings(tmp_path, ('key: ["order_id"]', 'key: ["shop", "order_id"]'))
    assert ("TABLE_SAME_KEY", "orders", ()) in rules(found)


def test_an_enum_value_removed(tmp_path: Path) -> None:
    found = findings(tmp_path, ("  CHANNEL_STORE = 2;\n", ""))
    assert rules(found) == [
        ("ENUM_VALUE_NO_DELETE", None, ()),
        ("COLUMN_CHECK_NO_NARROWING", "order_placed", ("channel",)),
        ("COLUMN_CHECK_NO_NARROWING", "orders", ("channel",)),
    ]
    assert "no longer accepts 'store'" in found[1].message
    # Reserving the value satisfies the wire; the stored rows still hold its label.
    found = findings(
        tmp_path, ("  CHANNEL_STORE = 2;\n", '  reserved 2;\n  reserved "CHANNEL_STORE";\n')
    )
    assert [f.rule for f in found] == ["COLUMN_CHECK_NO_NARROWING"] * 2


def test_an_enum_value_renamed(tmp_path: Path) -> None:
    found = findings(tmp_path, ("CHANNEL_STORE = 2;", "CHANNEL_SHOP = 2;"))
    assert [f.rule for f in found][:1] == ["ENUM_VALUE_SAME_NAME"]


@pytest.mark.parametrize(
    ("field", "number", "reserved", "breaks"),
    [
        ("amount_cents", 3, 'reserved 3; reserved "amount_cents";', False),
        ("amount_cents", 3, "reserved 3;", True),
        ("amount_cents", 3, 'reserved "amount_cents";', True),
    ],
)
def test_a_removed_field_is_reserved_only_by_both_number_and_name(
    tmp_path: Path, field: str, number: int, reserved: str, breaks: bool
) -> None:
    found = findings(tmp_path, (f"int64 {field} = {number};", reserved))
    assert ("FIELD_NO_DELETE" in [f.rule for f in found]) is breaks


def test_a_field_moved_into_a_oneof(tmp_path: Path) -> None:
    found = findings(
        tmp_path, ("int64 amount_cents = 3;", "oneof price {\n    int64 amount_cents = 3;\n  }")
    )
    assert "FIELD_SAME_ONEOF" in [f.rule for f in found]
