"""Kafka message headers as kingest reads them: never raising, and the few it uses.

confluent-kafka cannot decode the headers of a message whose header NAME is not UTF-8
(:class:`UnreadableHeaders`): every read of a message's headers goes through
:func:`message_headers` (one message) or :func:`unreadable_headers` (a poll), which
replace such headers with an empty, explained list instead of raising or crashing.

Headers kingest interprets: ``correlation-id`` (:func:`header_correlation_id`, the
correlation id of an event whose envelope has none) and the replay headers of a
replayed dead letter (:mod:`kingest.store.event_ids`). A dead letter keeps a message's
headers as ordered (name, bytes) pairs (:func:`header_tuple`).
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

from kingest.schema import MAX_INDEXED_IDENTIFIER_BYTES

__all__ = [
    "CORRELATION_ID_HEADER",
    "Headers",
    "UnreadableHeaders",
    "header_correlation_id",
    "header_pairs",
    "header_tuple",
    "message_headers",
    "unreadable_headers",
]

#: The Kafka header carrying a correlation id (used when the envelope has none).
CORRELATION_ID_HEADER: Final = "correlation-id"

#: Kafka headers as clients return them: a consumed message has a list of pairs with
#: bytes (or None) values; confluent_kafka's type stubs also admit a dict and str values.
Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]


class _HasHeaders(Protocol):
    def headers(self) -> Headers | None: ...


class UnreadableHeaders(list[tuple[str, bytes | None]]):
    """The headers of a message whose headers confluent-kafka cannot decode: none.

    A header NAME that is not UTF-8 (Go clients and ``kcat -H`` send any bytes) makes
    ``Message.headers()`` fail, and confluent-kafka gives no other access to them, so
    none of that message's headers can be read or kept. ``reason`` says so, with the
    bytes of the offending name when the error names them.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


#: ``record.headers()`` called through the generic call path, which raises the error
#: of a C method that returns a result with an exception set. confluent-kafka 2.16's
#: ``Message.headers()`` does that for a header name that is not UTF-8; a plain method
#: call, once CPython has specialised it, returns the half-built list instead (a
#: tuple in it holds NULL: unpacking it crashes the process) and leaves the exception
#: pending for whatever runs next.
_read_headers: Final = operator.methodcaller("headers")
#: At most this many bytes of an undecodable header name are quoted in the reason.
_SHOWN_NAME_BYTES: Final = 200


def message_headers(record: _HasHeaders) -> Headers | None:
    """``record.headers()``, never raising: every read of a Kafka message's headers.

    When confluent-kafka cannot decode them (see :class:`UnreadableHeaders`) the result
    is an empty :class:`UnreadableHeaders`, and it replaces the message's headers
    (``Message.set_headers``), so that any later read, ours or a library's, gets it
    rather than the broken list that a second ``headers()`` call would return.
    """
    try:
        headers: Headers | None = _read_headers(record)
    except (SystemError, UnicodeError) as error:
        return _unreadable(record, error)
    return headers


def unreadable_headers(
    records: Sequence[_HasHeaders],
) -> list[tuple[int, UnreadableHeaders]]:
    """The positions in ``records`` of the messages whose headers cannot be read, each
    with the :class:`UnreadableHeaders` that now replaces them (see
    :func:`message_headers`); reads every message's headers once, in C, so a poll
    without such a message costs one C call per message. A message already found
    unreadable is not found again."""
    found: list[tuple[int, UnreadableHeaders]] = []
    pending = iter(records)
    while True:
        try:
            deque(map(_read_headers, pending), maxlen=0)
            return found
        except (SystemError, UnicodeError) as error:
            # map took the failing message from the iterator before reading it.
            position = len(records) - operator.length_hint(pending) - 1
            found.append((position, _unreadable(records[position], error)))


def _unreadable(record: _HasHeaders, error: SystemError | UnicodeError) -> UnreadableHeaders:
    """Why ``record.headers()`` raised ``error``, set as the record's headers."""
    cause = error if isinstance(error, UnicodeDecodeError) else error.__cause__
    if isinstance(cause, UnicodeDecodeError) and isinstance(cause.object, bytes):
        detail = f"header name {cause.object[:_SHOWN_NAME_BYTES]!r} is not UTF-8"
    else:
        detail = f"{type(error).__name__}: {error}"
    unreadable = UnreadableHeaders(
        f"Kafka headers unreadable ({detail}); none of the message's headers kept"
    )
    set_headers = getattr(record, "set_headers", None)
    if set_headers is not None:
        set_headers(unreadable)
    return unreadable


def header_pairs(headers: Headers | None) -> Iterable[tuple[str, str | bytes | None]]:
    """``headers`` as (name, value) pairs in order, whichever form the client gave."""
    if not headers:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def header_correlation_id(record: _HasHeaders) -> str:
    """The ``correlation-id`` header, or ``""`` when absent or unusable.

    Unlike the envelope, a header is not validated, so one PostgreSQL would refuse (a
    NUL character; more than an indexed identifier's bytes) is ignored: the event then
    takes its event id as correlation id instead of failing its whole batch's write.
    """
    for key, value in header_pairs(message_headers(record)):
        if key == CORRELATION_ID_HEADER and value:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            if "\x00" in text or len(text.encode()) > MAX_INDEXED_IDENTIFIER_BYTES:
                return ""
            return text
    return ""


def header_tuple(headers: Headers | None) -> tuple[tuple[str, bytes | None], ...]:
    """Headers as stored in a dead letter: ordered pairs of key and bytes (or None)."""
    return tuple(
        (key, value.encode() if isinstance(value, str) else value)
        for key, value in header_pairs(headers)
    )
