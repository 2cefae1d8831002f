"""Decoding and encoding of event values: plain Protobuf and the Confluent wire format."""

from __future__ import annotations

import pickle

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from kingest.schema.codec import (
    DecodeError,
    MessageDecoder,
    decode_event,
    encode_event,
    encode_message,
    message_index_path,
    split_wire_format,
)
from kingest.schema.v1.events_pb2 import (
    Event,
    InferenceCompleted,
    InferenceStatus,
    TrainingRunStarted,
)


def _event() -> Event:
    event = Event(
        event_id="0b1c7a5e-8a4c-4e6b-9f0e-2f1f4a5b6c7d",
        correlation_id="req-1",
        source="serving/gateway-0",
        inference_completed=InferenceCompleted(
            request_id="req-1",
            model_name="fraud-detector",
            latency_ms=4.5,
            status=InferenceStatus.INFERENCE_STATUS_OK,
        ),
    )
    event.occurred_at.seconds = 1_760_000_000
    return event


def _framed(schema_id: int, index_bytes: bytes, payload: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + index_bytes + payload


def test_plain_value_round_trips() -> None:
    event = _event()
    value = encode_event(event)
    assert value[0] != 0
    assert value == event.SerializeToString()
    assert decode_event(value) == event


def test_wire_format_uses_the_one_byte_short_form_for_index_zero() -> None:
    event = _event()
    value = encode_event(event, schema_id=42)
    assert value[:6] == b"\x00\x00\x00\x00\x2a\x00"
    assert value[6:] == event.SerializeToString()
    assert decode_event(value) == event


def test_explicit_index_array_naming_event_decodes() -> None:
    payload = _event().SerializeToString()
    value = _framed(7, b"\x02\x00", payload)  # count 1 (zigzag 2), index 0
    assert split_wire_format(value)[:2] == (7, (0,))
    assert decode_event(value) == _event()


def test_split_wire_format_of_plain_value_is_identity() -> None:
    value = encode_event(_event())
    assert split_wire_format(value) == (None, (), value)


def test_split_wire_format_reads_schema_id_indexes_and_payload() -> None:
    payload = _event().SerializeToString()
    value = encode_event(_event(), schema_id=2**31 - 1, message_indexes=(300, 2))
    schema_id, indexes, rest = split_wire_format(value)
    assert schema_id == 2**31 - 1
    assert indexes == (300, 2)
    assert bytes(rest) == payload


@pytest.mark.parametrize("indexes", [(1,), (0, 0), (2, 1)])
def test_other_message_index_paths_are_rejected(indexes: tuple[int, ...]) -> None:
    value = encode_event(_event(), schema_id=1, message_indexes=indexes)
    with pytest.raises(DecodeError) as caught:
        decode_event(value)
    assert caught.value.error_class == "unknown_message_index"


@pytest.mark.parametrize("value", [None, b""])
def test_missing_or_empty_value_is_rejected(value: bytes | None) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(value)
    assert caught.value.error_class == "empty_value"


def test_framed_value_without_payload_is_rejected_as_empty() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(_framed(1, b"\x00", b""))
    assert caught.value.error_class == "empty_value"


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        (b"\x00", "truncated_wire_header"),
        (b"\x00\x00\x00\x01", "truncated_wire_header"),
        (b"\x00\x00\x00\x00\x01", "truncated_wire_header"),
        (_framed(1, b"\x80", b""), "truncated_wire_header"),  # varint continues past end
        (_framed(1, b"\x04\x00", b""), "truncated_wire_header"),  # 2 indexes, 1 present
        (_framed(1, b"\x01\x00\x0a", b""), "invalid_message_indexes"),  # count -1
        (_framed(1, b"\x7e\x00", b"\x0a\x00"), "truncated_wire_header"),  # count 63
        (_framed(1, b"\xff" * 11, b"\x0a\x00"), "invalid_message_indexes"),  # overlong
        (b"\xff\xff\xff", "invalid_protobuf"),
        (_framed(1, b"\x00", b"\xff\xff\xff"), "invalid_protobuf"),
    ],
)
def test_malformed_values_get_a_stable_error_class(value: bytes, error_class: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(value)
    assert caught.value.error_class == error_class


def test_invalid_utf8_in_a_string_field_fails_decoding() -> None:
    value = Event(source="gateway-\x01").SerializeToString().replace(b"\x01", b"\xff")
    with pytest.raises(DecodeError) as caught:
        decode_event(value)
    assert caught.value.error_class == "invalid_protobuf"


def test_invalid_utf8_in_a_map_key_fails_decoding() -> None:
    event = Event(training_run_started=TrainingRunStarted(hyperparameters={"\x01": "v"}))
    value = event.SerializeToString().replace(b"\x01", b"\xfe")
    with pytest.raises(DecodeError) as caught:
        decode_event(value)
    assert caught.value.error_class == "invalid_protobuf"


ERROR_CLASSES = {
    "empty_value",
    "truncated_wire_header",
    "invalid_message_indexes",
    "unknown_message_index",
    "invalid_protobuf",
}


def _outcome(value: bytes) -> str:
    """``"event"`` or the error class; any other exception escapes and fails the test."""
    try:
        decode_event(value)
    except DecodeError as exc:
        return exc.error_class
    return "event"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(value: bytes) -> None:
    assert _outcome(value) in {"event", *ERROR_CLASSES}


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=12), st.binary(max_size=200))
def test_random_wire_format_framing_raises_only_decode_error(header: bytes, rest: bytes) -> None:
    assert _outcome(b"\x00" + header + rest) in {"event", *ERROR_CLASSES}


def test_encoding_is_deterministic_for_maps() -> None:
    forward = TrainingRunStarted(run_id="r", hyperparameters={f"k{i}": "v" for i in range(20)})
    backward = TrainingRunStarted(
        run_id="r", hyperparameters={f"k{i}": "v" for i in reversed(range(20))}
    )
    assert encode_event(Event(training_run_started=forward)) == encode_event(
        Event(training_run_started=backward)
    )


@pytest.mark.parametrize("schema_id", [-1, 2**31])
def test_schema_id_outside_int32_range_is_refused(schema_id: int) -> None:
    with pytest.raises(ValueError, match="schema id"):
        encode_event(_event(), schema_id=schema_id)


def test_decode_error_survives_pickling() -> None:
    error = DecodeError("invalid_protobuf", "bad bytes")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error_class, str(copy)) == ("invalid_protobuf", "bad bytes")


# Any message, not only Event: the messages of descriptor.proto have a fixed layout in their
# file (FileDescriptorSet first, DescriptorProto third with ExtensionRange and ReservedRange
# nested), so their index paths are known without a catalog.
_RANGE = descriptor_pb2.DescriptorProto.ReservedRange(start=3, end=7)
_RANGE_PATH = (2, 1)


def _decoder_of(*classes: type[Message]) -> MessageDecoder:
    return MessageDecoder(classes[0], {message_index_path(c.DESCRIPTOR): c for c in classes})


def test_message_index_path_follows_nesting_in_the_file() -> None:
    assert message_index_path(descriptor_pb2.FileDescriptorSet.DESCRIPTOR) == (0,)
    assert message_index_path(descriptor_pb2.DescriptorProto.DESCRIPTOR) == (2,)
    assert message_index_path(_RANGE.DESCRIPTOR) == _RANGE_PATH
    assert message_index_path(Event.DESCRIPTOR) == (0,)


def test_any_message_round_trips_plain() -> None:
    value = encode_message(_RANGE)
    assert value == _RANGE.SerializeToString(deterministic=True)
    assert split_wire_format(value) == (None, (), value)
    assert _decoder_of(descriptor_pb2.DescriptorProto.ReservedRange).decode(value) == _RANGE


def test_framed_message_carries_its_own_index_path_by_default() -> None:
    value = encode_message(_RANGE, schema_id=42)
    assert value == _framed(42, bytes([4, 4, 2]), _RANGE.SerializeToString())
    schema_id, indexes, payload = split_wire_format(value)
    assert (schema_id, indexes, bytes(payload)) == (42, _RANGE_PATH, _RANGE.SerializeToString())
    decoder = _decoder_of(
        descriptor_pb2.FileDescriptorSet,
        descriptor_pb2.DescriptorProto,
        descriptor_pb2.DescriptorProto.ReservedRange,
    )
    decoded = decoder.decode(value)
    assert type(decoded) is descriptor_pb2.DescriptorProto.ReservedRange
    assert decoded == _RANGE


def test_framed_first_message_uses_the_short_form() -> None:
    files = descriptor_pb2.FileDescriptorSet(file=[descriptor_pb2.FileDescriptorProto(name="a")])
    value = encode_message(files, schema_id=7)
    assert value == _framed(7, b"\x00", files.SerializeToString())
    assert _decoder_of(descriptor_pb2.FileDescriptorSet).decode(value) == files


def test_explicit_message_indexes_override_the_messages_own_path() -> None:
    value = encode_message(_RANGE, schema_id=1, message_indexes=[5, 0, 3])
    assert split_wire_format(value)[1] == (5, 0, 3)


def test_encode_event_is_encode_message_with_index_zero() -> None:
    event = _event()
    assert encode_event(event, schema_id=9) == encode_message(event, schema_id=9)
    assert encode_event(event, schema_id=9, message_indexes=[1]) == encode_message(
        event, schema_id=9, message_indexes=[1]
    )


@pytest.mark.parametrize("schema_id", [-1, 2**31])
def test_encode_message_refuses_a_schema_id_outside_int32(schema_id: int) -> None:
    with pytest.raises(ValueError, match="schema id"):
        encode_message(_RANGE, schema_id=schema_id)
