"""Values for a catalog's fields: guided by the name, kept within the type and the options."""

from __future__ import annotations

import random
import struct
import uuid

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

from kingest.dev.catalog_values import (
    DEFAULT_MAX_TEXT_LENGTH,
    ColumnRules,
    bound_problems,
    bytes_for,
    column_rules,
    number_for,
    short_id,
    text_for,
    truncated,
    uuid4,
)
from kingest.options.v1 import options_pb2

DRAWS = 400


def _fields(*specs: tuple[str, int, dict[str, object]]) -> dict[str, FieldDescriptor]:
    """Fields of one message ``test.v1.M``, each ``(name, type, column options)``."""
    message = descriptor_pb2.DescriptorProto(name="M")
    for number, (name, kind, column) in enumerate(specs, start=1):
        field = message.field.add(name=name, number=number, type=kind)
        if column:
            field.options.Extensions[options_pb2.column].MergeFrom(
                options_pb2.ColumnOptions(**column)
            )
    pool = DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(options_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="t.proto",
            package="test.v1",
            syntax="proto3",
            dependency=["kingest/options/v1/options.proto"],
            message_type=[message],
        )
    )
    return dict(pool.FindMessageTypeByName("test.v1.M").fields_by_name)


def _draw(field: FieldDescriptor, hint_name: str = "") -> list[float | int]:
    rng = random.Random(0)
    rules = column_rules(field)
    return [number_for(field, rules, rng, hint_name=hint_name) for _ in range(DRAWS)]


def test_column_options_are_read_and_absent_ones_default() -> None:
    fields = _fields(
        ("plain", FieldDescriptor.TYPE_STRING, {}),
        ("ruled", FieldDescriptor.TYPE_INT32, {"required": True, "gte": 1, "lt": 9}),
        ("short", FieldDescriptor.TYPE_STRING, {"max_length": 5, "role": 4}),
    )
    assert column_rules(fields["plain"]) == ColumnRules()
    assert column_rules(fields["ruled"]) == ColumnRules(required=True, gte=1, lt=9)
    assert column_rules(fields["short"]) == ColumnRules(max_length=5, role=4)
    assert ColumnRules().max_length == DEFAULT_MAX_TEXT_LENGTH


@pytest.mark.parametrize(
    ("kind", "column", "low", "high"),
    [
        (FieldDescriptor.TYPE_INT32, {"gte": -3, "lte": 3}, -3, 3),
        (FieldDescriptor.TYPE_SINT64, {"gte": 5, "lt": 8}, 5, 7),
        (FieldDescriptor.TYPE_UINT32, {"lt": 2.5}, 0, 2),
        (FieldDescriptor.TYPE_FIXED64, {"gte": 2**40}, 2**40, 2**64 - 1),
        (FieldDescriptor.TYPE_DOUBLE, {"gte": 0.25, "lte": 0.5}, 0.25, 0.5),
    ],
)
def test_numbers_stay_within_their_bounds(
    kind: int, column: dict[str, object], low: float, high: float
) -> None:
    values = _draw(_fields(("value", kind, column))["value"])
    assert all(low <= value <= high for value in values)
    assert len(set(values)) > 1


@pytest.mark.parametrize(("low", "high"), [(0.99999, 1.0), (-0.30001, -0.3), (0.0, 1e-9)])
def test_a_float_keeps_its_exclusive_bound_even_after_float32_rounding(
    low: float, high: float
) -> None:
    field = _fields(("score", FieldDescriptor.TYPE_FLOAT, {"gte": low, "lt": high}))["score"]
    values = _draw(field)
    assert all(low <= value < high for value in values)
    assert all(struct.unpack("<f", struct.pack("<f", value))[0] == value for value in values)


def test_the_name_suggests_the_range_and_bounds_move_it() -> None:
    fields = _fields(
        ("utilization_percent", FieldDescriptor.TYPE_DOUBLE, {}),
        ("prompt_tokens", FieldDescriptor.TYPE_UINT32, {}),
        ("cost_usd", FieldDescriptor.TYPE_DOUBLE, {}),
        ("queue_percent", FieldDescriptor.TYPE_INT32, {"gte": 1000}),
        ("drift_percent", FieldDescriptor.TYPE_INT32, {"lte": -1000}),
        ("rating", FieldDescriptor.TYPE_INT32, {"required": True, "gte": 0, "lte": 0}),
    )
    assert all(0 <= v <= 100 for v in _draw(fields["utilization_percent"]))
    assert all(1 <= v <= 4000 for v in _draw(fields["prompt_tokens"]))
    assert all(0 < v <= 2 for v in _draw(fields["cost_usd"]))
    # the hint is out of bounds: a hint-wide window at the nearest bound
    assert all(1000 <= v <= 1100 for v in _draw(fields["queue_percent"]))
    assert all(-1100 <= v <= -1000 for v in _draw(fields["drift_percent"]))
    # required, yet only zero is allowed: zero it is
    assert set(_draw(fields["rating"])) == {0}
    # a wrapper's value is guided by the wrapper field's name
    assert all(0 <= v <= 2 for v in _draw(fields["cost_usd"], hint_name="temperature"))


def test_a_required_number_is_not_zero_when_it_can_be_something_else() -> None:
    field = _fields(("count", FieldDescriptor.TYPE_UINT32, {"required": True, "lte": 1}))
    assert set(_draw(field["count"])) == {1}


def test_bounds_nothing_can_meet_are_described() -> None:
    fields = _fields(
        ("crossed", FieldDescriptor.TYPE_DOUBLE, {"gte": 2, "lte": 1}),
        ("empty", FieldDescriptor.TYPE_DOUBLE, {"gte": 1, "lt": 1}),
        ("fractional", FieldDescriptor.TYPE_INT64, {"gte": 0.1, "lte": 0.9}),
        ("unsigned", FieldDescriptor.TYPE_UINT64, {"lte": -1}),
        ("fine", FieldDescriptor.TYPE_DOUBLE, {"gte": 1, "lte": 1}),
    )
    problems = {name: bound_problems(f, column_rules(f)) for name, f in fields.items()}
    assert problems["crossed"] == [
        "test.v1.M.crossed: no value satisfies its bounds (gte 2, lte 1)"
    ]
    assert problems["empty"] == ["test.v1.M.empty: no value satisfies its bounds (gte 1, lt 1)"]
    assert problems["fractional"] == [
        "test.v1.M.fractional: no integer satisfies its bounds (gte 0.1, lte 0.9)"
    ]
    assert problems["unsigned"]
    assert problems["fine"] == []


def test_texts_follow_the_name_and_keep_to_max_length() -> None:
    rng = random.Random(1)
    assert "-" in text_for("model", rng)
    assert text_for("source", rng).count("/") == 1
    assert text_for("environment", rng) in {"prod", "staging", "canary", "dev"}
    assert text_for("model_version", rng).count(".") == 2
    assert text_for("artifact_uri", rng).startswith("https://")
    assert text_for("comment", rng).endswith(".")
    assert len(text_for("schema_fingerprint", rng)) == 16
    assert truncated("abcdefgh", ColumnRules(max_length=3)) == "abc"
    assert short_id("conversation_id", rng).startswith("conversation-")
    assert short_id("api_key_id", rng).startswith("api-key-")
    assert len(bytes_for("prompt_sha256", rng)) == 32
    assert 1 <= len(bytes_for("payload", rng)) <= 16


def test_uuids_are_version_4_and_reproducible() -> None:
    first = [uuid4(random.Random(3)) for _ in range(2)]
    assert first[0] == first[1]
    assert uuid.UUID(first[0]).version == 4
