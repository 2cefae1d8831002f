"""The event schema: generated Protobuf classes, decoding and semantic validation.

``kingest.schema.v1.events_pb2`` is generated from ``proto/kingest/schema/v1/events.proto``
(``python -m kingest.schema.codegen`` regenerates it); the names below are what the rest
of kingest uses.
"""

from kingest.schema.codec import (
    DecodeError,
    MessageDecoder,
    catalog_classes,
    catalog_decoders,
    decode_event,
    encode_event,
    encode_message,
    message_index_path,
    split_wire_format,
)
from kingest.schema.rules import attribute_read
from kingest.schema.v1.events_pb2 import Event
from kingest.schema.validate import (
    MAX_INDEXED_IDENTIFIER_BYTES,
    EventValidator,
    ValidationError,
    builtin_validator,
    event_type,
    validate_event,
    validate_payload,
)

__all__ = [
    "MAX_INDEXED_IDENTIFIER_BYTES",
    "DecodeError",
    "Event",
    "EventValidator",
    "MessageDecoder",
    "ValidationError",
    "attribute_read",
    "builtin_validator",
    "catalog_classes",
    "catalog_decoders",
    "decode_event",
    "encode_event",
    "encode_message",
    "event_type",
    "message_index_path",
    "split_wire_format",
    "validate_event",
    "validate_payload",
]
