"""Records of a catalog's message type: the envelope by default, keyed, plain or framed."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message

from kingest.dev.catalog_stream import CatalogStream, default_message
from kingest.dev.catalog_synth import load_descriptor_set_pool, record_key
from kingest.dev.catalog_values import CatalogSynthError
from kingest.schema import MessageDecoder, split_wire_format
from tests.catalog_support import EXAMPLE_PROTO, compile_example_catalog
from tests.catalog_texts import compile_catalog

BUILTIN_CATALOG = Path(__file__).resolve().parents[3] / "kingest/schema/v1/catalog.binpb"
TOPICS_PROTO = EXAMPLE_PROTO / "llmserving/v1/topics.proto"
BASE_TIME = 1_770_000_000.0


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_example_catalog(tmp_path_factory.mktemp("example"))


def _class_of(catalog: Path | bytes, name: str) -> type[Message]:
    return message_factory.GetMessageClass(load_descriptor_set_pool(catalog).message_type(name))


def test_the_default_message_is_the_catalogs_envelope(example: Path) -> None:
    assert default_message(load_descriptor_set_pool(example)) == "llmserving.v1.LlmEvent"
    builtin = load_descriptor_set_pool(BUILTIN_CATALOG)
    assert default_message(builtin) == "kingest.schema.v1.Event"
    assert CatalogStream(example).message_name == "llmserving.v1.LlmEvent"


def test_a_catalog_without_envelope_has_no_default_and_lists_its_messages(
    tmp_path: Path,
) -> None:
    topics_only = compile_catalog(tmp_path, TOPICS_PROTO.read_text(), TOPICS_PROTO.name)
    with pytest.raises(CatalogSynthError) as caught:
        CatalogStream(topics_only)
    message = str(caught.value)
    assert "no envelope message" in message
    assert "llmserving.v1.GpuUtilizationSample" in message
    assert "llmserving.v1.DatasetVersionCreated" in message


def test_an_unknown_message_lists_the_catalogs_messages(example: Path) -> None:
    with pytest.raises(CatalogSynthError, match=r"'acme.Nope'[\s\S]*llmserving.v1.LlmEvent"):
        CatalogStream(example, "acme.Nope")


@pytest.mark.parametrize("name", ["llmserving.v1.LlmEvent", ".llmserving.v1.GpuUtilizationSample"])
def test_plain_records_parse_as_the_message_and_are_keyed_by_it(example: Path, name: str) -> None:
    cls = _class_of(example, name.lstrip("."))
    records = CatalogStream(example, name, seed=3, base_time=BASE_TIME).take(50)
    for record in records:
        assert split_wire_format(record.value)[0] is None
        message = cls.FromString(record.value)
        assert record.key == record_key(message)
        assert record.headers == []
    if name == "llmserving.v1.LlmEvent":  # its events are keyed by conversation
        assert all(record.key for record in records)


def test_framed_records_carry_the_schema_id_and_the_messages_path(example: Path) -> None:
    name = "llmserving.v1.DatasetVersionCreated"  # the second message of topics.proto
    cls = _class_of(example, name)
    plain = CatalogStream(example, name, seed=5, base_time=BASE_TIME).take(20)
    framed = CatalogStream(example, name, seed=5, schema_id=31, base_time=BASE_TIME).take(20)
    decoder = MessageDecoder(_class_of(example, "llmserving.v1.GpuUtilizationSample"), {(1,): cls})
    for bare, wrapped in zip(plain, framed, strict=True):
        schema_id, indexes, payload = split_wire_format(wrapped.value)
        assert (schema_id, indexes, bytes(payload)) == (31, (1,), bare.value)
        assert decoder.decode(wrapped.value) == cls.FromString(bare.value)
        assert wrapped.key == bare.key


def test_the_same_seed_and_base_time_give_the_same_records(example: Path) -> None:
    first = CatalogStream(example, seed=9, base_time=BASE_TIME).take(30)
    again = CatalogStream(example, seed=9, base_time=BASE_TIME).take(30)
    other = CatalogStream(example, seed=10, base_time=BASE_TIME).take(30)
    assert first == again
    assert first != other
