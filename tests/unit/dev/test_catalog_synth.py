"""Synthetic messages of any catalog: they parse back, keep the catalog's rules, repeat by seed."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import random
import uuid
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from kingest.dev.catalog_synth import (
    DEFAULT_BASE_TIME,
    MAX_DEPTH,
    CatalogSynth,
    load_descriptor_set_pool,
    messages_from_descriptor_set,
    record_key,
    records_from_descriptor_set,
)
from kingest.dev.catalog_values import CatalogSynthError
from kingest.options.v1 import options_pb2

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_PROTO = ROOT / "examples/llm-serving/proto"
BUILTIN_CATALOG = ROOT / "kingest/schema/v1/catalog.binpb"
PER_TYPE = 60


def _protoc_descriptor_set(tmp_path: Path) -> bytes:
    """The example catalog compiled by the pinned in-process protoc (as codegen does)."""
    previous = os.environ.get("GRPC_PYTHON_DISABLE_DYNAMIC_STUBS")
    os.environ["GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"] = "1"
    try:
        protoc = importlib.import_module("grpc_tools.protoc")
    finally:
        if previous is None:
            del os.environ["GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"]
        else:
            os.environ["GRPC_PYTHON_DISABLE_DYNAMIC_STUBS"] = previous
    output = tmp_path / "catalog.binpb"
    sources = sorted(
        p.relative_to(EXAMPLE_PROTO).as_posix() for p in EXAMPLE_PROTO.rglob("*.proto")
    )
    status = protoc.main(
        [
            "protoc",
            f"-I{EXAMPLE_PROTO}",
            f"-I{ROOT / 'proto'}",
            f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
            f"--descriptor_set_out={output}",
            "--include_imports",
            "--include_source_info",
            *sources,
        ]
    )
    assert status == 0
    return output.read_bytes()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _protoc_descriptor_set(tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="module", params=["example", "builtin"])
def catalog(request: pytest.FixtureRequest, example: bytes) -> bytes:
    return example if request.param == "example" else BUILTIN_CATALOG.read_bytes()


def _synth(catalog: bytes, name: str, seed: int = 1) -> CatalogSynth:
    descriptor = load_descriptor_set_pool(catalog).message_type(name)
    return CatalogSynth(descriptor, random.Random(seed))


# -- what the catalog's rules demand, checked field by field ----------------------------


def _column(field: FieldDescriptor) -> options_pb2.ColumnOptions:
    found: options_pb2.ColumnOptions = field.GetOptions().Extensions[options_pb2.column]
    return found


def _violations(message: Message, path: str = "") -> list[str]:
    """Every required field left empty, bound crossed or text too long, nested ones too."""
    problems: list[str] = []
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        where = f"{path}{field.name}"
        rules = _column(field)
        value = getattr(message, field.name)
        if field.is_repeated:
            if rules.required and not len(value):
                problems.append(f"{where}: required, empty")
            continue
        if field.message_type is not None:
            if rules.required and not message.HasField(field.name):
                problems.append(f"{where}: required, unset")
            if message.HasField(field.name):
                problems += _violations(value, f"{where}.")
            continue
        if rules.required and not value:
            problems.append(f"{where}: required, got {value!r}")
        if rules.HasField("gte") and value < rules.gte:
            problems.append(f"{where}: {value} < {rules.gte}")
        if rules.HasField("lte") and value > rules.lte:
            problems.append(f"{where}: {value} > {rules.lte}")
        if rules.HasField("lt") and value >= rules.lt:
            problems.append(f"{where}: {value} >= {rules.lt}")
        if isinstance(value, str) and len(value) > (rules.max_length or 1024):
            problems.append(f"{where}: {len(value)} characters")
    return problems


def test_every_message_type_yields_messages_that_parse_back_and_keep_the_rules(
    catalog: bytes,
) -> None:
    loaded = load_descriptor_set_pool(catalog)
    names = loaded.message_names()
    assert len(names) >= 8
    for name in names:
        synth = CatalogSynth(loaded.message_type(name), random.Random(5))
        for _ in range(PER_TYPE):
            message = synth.message()
            parsed = type(message).FromString(message.SerializeToString())
            assert parsed == message
            assert not _violations(message), (name, _violations(message))


def test_required_fields_are_set_even_where_the_type_would_allow_empty(example: bytes) -> None:
    messages = messages_from_descriptor_set(example, "llmserving.v1.FeedbackReceived", 300, 2)
    assert {m.rating for m in messages} == {1, 2, 3, 4, 5}  # gte 1, lte 5: the whole range
    assert all(m.conversation_id for m in messages)
    # comment is optional free text: sometimes empty, never over its max_length
    assert 0 < sum(not m.comment for m in messages) < 300
    assert max(len(m.comment) for m in messages) <= 2000


@pytest.mark.parametrize("name", ["llmserving.v1.LlmEvent", "kingest.schema.v1.Event"])
def test_the_same_seed_gives_the_same_bytes_and_another_seed_others(
    name: str, example: bytes
) -> None:
    catalog = example if name.startswith("llmserving") else BUILTIN_CATALOG.read_bytes()
    envelope = name
    first = list(records_from_descriptor_set(catalog, envelope, 200, seed=9))
    again = list(records_from_descriptor_set(catalog, envelope, 200, seed=9))
    other = list(records_from_descriptor_set(catalog, envelope, 200, seed=10))
    assert first == again
    assert first != other


def test_the_envelope_sets_one_member_of_its_oneof_each_in_turn(example: bytes) -> None:
    messages = messages_from_descriptor_set(example, "llmserving.v1.LlmEvent", 9, seed=3)
    members = [m.WhichOneof("event") for m in messages]
    assert members == ["prompt_completed", "guardrail_triggered", "feedback_received"] * 3
    for index, message in enumerate(messages):
        assert uuid.UUID(message.event_id).version == 4
        assert uuid.UUID(message.correlation_id).version == 4
        assert message.source
        millis = message.occurred_at.seconds * 1000 + message.occurred_at.nanos // 1_000_000
        assert millis == DEFAULT_BASE_TIME * 1000 + index
    assert len({m.event_id for m in messages}) == 9


def test_the_built_in_envelope_covers_every_event_type() -> None:
    events = messages_from_descriptor_set(BUILTIN_CATALOG, "kingest.schema.v1.Event", 16)
    assert len({event.WhichOneof("payload") for event in events}) == 8
    assert all(event.HasField("occurred_at") for event in events)


def test_keys_are_entity_ids_from_a_small_pool_so_they_repeat(example: bytes) -> None:
    synth = _synth(example, "llmserving.v1.LlmEvent")
    keys: Counter[bytes | None] = Counter()
    for _ in range(300):
        message = synth.message()
        payload = getattr(message, message.WhichOneof("event"))
        key = record_key(message)
        assert key == payload.conversation_id.encode()
        keys[key] += 1
    assert len(keys) <= 8
    assert min(keys.values()) > 1


def test_a_message_without_an_entity_id_has_no_key_unless_a_state_update_names_one(
    example: bytes,
) -> None:
    samples = records_from_descriptor_set(example, "llmserving.v1.GpuUtilizationSample", 5)
    assert {key for key, _ in samples} == {None}
    datasets = messages_from_descriptor_set(example, "llmserving.v1.DatasetVersionCreated", 5)
    assert [record_key(m) for m in datasets] == [m.dataset_id.encode() for m in datasets]
    deployments = messages_from_descriptor_set(
        BUILTIN_CATALOG, "kingest.schema.v1.ModelDeployed", 5
    )
    assert [record_key(m) for m in deployments] == [m.model_name.encode() for m in deployments]


def test_field_kinds_get_plausible_values(example: bytes) -> None:
    prompts = messages_from_descriptor_set(example, "llmserving.v1.PromptCompleted", 300, 4)
    assert {len(p.tool_calls) for p in prompts} == {0, 1, 2, 3}
    assert {len(p.labels) for p in prompts} == {0, 1, 2, 3}
    temperatures = [p.temperature.value for p in prompts if p.HasField("temperature")]
    assert 0 < len(temperatures) < 300  # a wrapper is now and then unset
    assert all(0 <= t <= 2 for t in temperatures)
    assert all(0 < p.latency.ToTimedelta().total_seconds() <= 5 for p in prompts)
    assert all(0 < p.cost_usd <= 2 for p in prompts)
    assert all(1 <= p.prompt_tokens <= 4000 for p in prompts)
    assert all(p.finish_reason != 0 for p in prompts)
    assert all(len(p.prompt_sha256) == 32 for p in prompts)
    assert {p.WhichOneof("caller") for p in prompts} == {"user_id", "api_key_id"}
    assert len({p.model for p in prompts}) <= 6
    feedback = messages_from_descriptor_set(example, "llmserving.v1.FeedbackReceived", 50)
    assert all(1 <= len(f.attributes.fields) <= 3 for f in feedback)
    samples = messages_from_descriptor_set(example, "llmserving.v1.GpuUtilizationSample", 50)
    assert all(0 <= s.utilization_percent <= 100 for s in samples)
    assert [s.occurred_at.ToMilliseconds() for s in samples] == [
        DEFAULT_BASE_TIME * 1000 + i for i in range(50)
    ]


def test_the_file_order_of_the_set_does_not_matter(example: bytes) -> None:
    shuffled = descriptor_pb2.FileDescriptorSet.FromString(example)
    files = list(shuffled.file)
    del shuffled.file[:]
    shuffled.file.extend(reversed([*files, files[0]]))  # reversed, and one file twice
    name = "llmserving.v1.LlmEvent"
    assert list(records_from_descriptor_set(shuffled.SerializeToString(), name, 20)) == list(
        records_from_descriptor_set(example, name, 20)
    )


# -- bad input: every problem listed ----------------------------------------------------


def test_a_set_without_its_imports_is_refused_with_each_missing_file(example: bytes) -> None:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(example)
    own = [f for f in descriptor_set.file if f.name == "llmserving/v1/events.proto"]
    lone = descriptor_pb2.FileDescriptorSet(file=own).SerializeToString()
    with pytest.raises(CatalogSynthError, match="--include_imports") as caught:
        load_descriptor_set_pool(lone)
    for dependency in own[0].dependency:
        assert f"imports {dependency}" in str(caught.value)


def test_an_unknown_message_type_is_refused_with_the_known_ones(example: bytes) -> None:
    with pytest.raises(CatalogSynthError, match=r"llmserving\.v1\.GpuUtilizationSample"):
        messages_from_descriptor_set(example, "llmserving.v1.Nope", 1)


def test_bytes_that_are_no_descriptor_set_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogSynthError, match="not a FileDescriptorSet"):
        load_descriptor_set_pool(b"\xff\xff\xff")
    with pytest.raises(CatalogSynthError, match="cannot read"):
        load_descriptor_set_pool(tmp_path / "absent.binpb")


def _catalog_with(example: bytes, *messages: descriptor_pb2.DescriptorProto) -> bytes:
    """The example's support files plus one file ``test/v1/t.proto`` of ``messages``."""
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(example)
    support = [f for f in descriptor_set.file if not f.name.startswith("llmserving/")]
    own = descriptor_pb2.FileDescriptorProto(
        name="test/v1/t.proto",
        package="test.v1",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "kingest/options/v1/options.proto"],
        message_type=messages,
    )
    return descriptor_pb2.FileDescriptorSet(file=[*support, own]).SerializeToString()


def _field(
    name: str, number: int, kind: int, type_name: str = "", **column: object
) -> descriptor_pb2.FieldDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto(name=name, number=number, type=kind)
    if type_name:
        field.type_name = type_name
    if column:
        field.options.Extensions[options_pb2.column].MergeFrom(options_pb2.ColumnOptions(**column))
    return field


def test_a_file_the_pool_rejects_is_named(example: bytes) -> None:
    dangling = descriptor_pb2.DescriptorProto(
        name="Dangling",
        field=[_field("other", 1, FieldDescriptor.TYPE_MESSAGE, ".test.v1.Missing")],
    )
    with pytest.raises(CatalogSynthError, match=r"test/v1/t\.proto: rejected"):
        load_descriptor_set_pool(_catalog_with(example, dangling))


def test_bounds_no_value_can_meet_are_refused_all_at_once(example: bytes) -> None:
    impossible = descriptor_pb2.DescriptorProto(
        name="Impossible",
        field=[
            _field("crossed", 1, FieldDescriptor.TYPE_DOUBLE, gte=10, lte=5),
            _field("between", 2, FieldDescriptor.TYPE_INT32, gte=0.2, lte=0.8),
            _field("below_zero", 3, FieldDescriptor.TYPE_UINT32, lt=0),
            _field("fine", 4, FieldDescriptor.TYPE_INT64, gte=-5, lt=-4),
        ],
    )
    loaded = load_descriptor_set_pool(_catalog_with(example, impossible))
    with pytest.raises(CatalogSynthError) as caught:
        CatalogSynth(loaded.message_type("test.v1.Impossible"), random.Random(0))
    text = str(caught.value)
    for name in ("crossed", "between", "below_zero"):
        assert f"test.v1.Impossible.{name}" in text
    assert "fine" not in text


def test_an_envelope_without_a_oneof_of_messages_is_refused(example: bytes) -> None:
    envelope = descriptor_pb2.DescriptorProto(
        name="Hollow", field=[_field("event_id", 1, FieldDescriptor.TYPE_STRING)]
    )
    envelope.options.Extensions[options_pb2.table].envelope = True
    loaded = load_descriptor_set_pool(_catalog_with(example, envelope))
    with pytest.raises(CatalogSynthError, match="envelope without a oneof"):
        CatalogSynth(loaded.message_type("test.v1.Hollow"), random.Random(0))


def test_envelope_fields_are_found_by_their_role_option(example: bytes) -> None:
    ping = descriptor_pb2.DescriptorProto(
        name="Ping", field=[_field("count", 1, FieldDescriptor.TYPE_UINT32)]
    )
    envelope = descriptor_pb2.DescriptorProto(
        name="Wrapper",
        field=[
            _field("id", 1, FieldDescriptor.TYPE_STRING, role=options_pb2.ROLE_EVENT_ID),
            _field(
                "at",
                2,
                FieldDescriptor.TYPE_MESSAGE,
                ".google.protobuf.Timestamp",
                role=options_pb2.ROLE_OCCURRED_AT,
            ),
            _field("origin", 3, FieldDescriptor.TYPE_STRING, role=options_pb2.ROLE_SOURCE),
            _field("ping", 4, FieldDescriptor.TYPE_MESSAGE, ".test.v1.Ping"),
        ],
        oneof_decl=[descriptor_pb2.OneofDescriptorProto(name="body")],
    )
    envelope.field[3].oneof_index = 0
    envelope.options.Extensions[options_pb2.table].envelope = True
    catalog = _catalog_with(example, ping, envelope)
    messages = messages_from_descriptor_set(catalog, "test.v1.Wrapper", 3, base_time=1000.0)
    for index, message in enumerate(messages):
        assert uuid.UUID(message.id).version == 4
        assert message.at.ToMilliseconds() == 1_000_000 + index
        assert "/" in message.origin  # a service/host source, not a random word
        assert message.HasField("ping")


def test_a_message_without_an_envelope_has_its_envelope_fields_by_role_too(
    example: bytes,
) -> None:
    sample = descriptor_pb2.DescriptorProto(
        name="Sample",
        field=[
            _field("ref", 1, FieldDescriptor.TYPE_STRING, role=options_pb2.ROLE_EVENT_ID),
            _field("trace", 2, FieldDescriptor.TYPE_STRING, role=options_pb2.ROLE_CORRELATION_ID),
            _field("node_id", 3, FieldDescriptor.TYPE_STRING),
        ],
    )
    catalog = _catalog_with(example, sample)
    messages = messages_from_descriptor_set(catalog, "test.v1.Sample", 40)
    assert all(uuid.UUID(m.ref).version == 4 for m in messages)
    assert 1 < len({m.trace for m in messages}) < 40  # a correlation id now and then reused
    assert len({m.node_id for m in messages}) <= 8
    assert [record_key(m) for m in messages] == [m.node_id.encode() for m in messages]


def test_recursive_messages_stop_at_the_depth_limit(example: bytes) -> None:
    node = descriptor_pb2.DescriptorProto(
        name="Node",
        field=[
            _field("child", 1, FieldDescriptor.TYPE_MESSAGE, ".test.v1.Node", required=True),
            _field("name", 2, FieldDescriptor.TYPE_STRING),
        ],
    )
    for root in messages_from_descriptor_set(_catalog_with(example, node), "test.v1.Node", 5):
        message, depth = root, 0
        while message.HasField("child"):
            message, depth = message.child, depth + 1
        assert depth == MAX_DEPTH + 1  # required: the last one set, but empty


def test_proto3_optional_fields_are_not_taken_for_a_oneof(example: bytes) -> None:
    both = descriptor_pb2.DescriptorProto(
        name="Both",
        field=[
            _field("first", 1, FieldDescriptor.TYPE_INT32),
            _field("second", 2, FieldDescriptor.TYPE_INT32),
        ],
        oneof_decl=[
            descriptor_pb2.OneofDescriptorProto(name="_first"),
            descriptor_pb2.OneofDescriptorProto(name="_second"),
        ],
    )
    for index, field in enumerate(both.field):
        field.oneof_index = index
        field.proto3_optional = True
    messages = messages_from_descriptor_set(_catalog_with(example, both), "test.v1.Both", 40)
    assert all(m.HasField("first") and m.HasField("second") for m in messages)
