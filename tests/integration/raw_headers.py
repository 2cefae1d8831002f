"""Produce a message whose header names are arbitrary bytes (not UTF-8), as Go clients
and ``kcat -H`` can: the Python Producer cannot (it takes header names as ``str``:
``bytes`` names are sent as their ``repr``, and a lone surrogate crashes it), so this
goes through librdkafka's C API (``rd_kafka_produceva``), on the library bundled with
confluent-kafka, as :mod:`kingest.dev.mock_cluster` does for the mock cluster."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kingest.dev.mock_cluster import _librdkafka

_VTYPE_TOPIC = 1
_VTYPE_PARTITION = 3
_VTYPE_VALUE = 4
_VTYPE_KEY = 5
_VTYPE_OPAQUE = 6
_VTYPE_MSGFLAGS = 7
_VTYPE_TIMESTAMP = 8
_VTYPE_HEADER = 9
_MSG_F_COPY = 0x2


class _Memory(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Value(ctypes.Union):
    _fields_ = [
        ("cstr", ctypes.c_char_p),
        ("i", ctypes.c_int),
        ("i32", ctypes.c_int32),
        ("i64", ctypes.c_int64),
        ("mem", _Memory),
        ("header", _Header),
        ("ptr", ctypes.c_void_p),
        ("_pad", ctypes.c_char * 64),
    ]


class _VU(ctypes.Structure):
    """librdkafka's ``rd_kafka_vu_t``: one typed argument of ``rd_kafka_produceva``."""

    _fields_ = [("vtype", ctypes.c_int), ("u", _Value)]


def _library() -> Any:
    lib = _librdkafka()
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VU), ctypes.c_size_t]
    lib.rd_kafka_flush.restype = ctypes.c_int
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_error_destroy.restype = None
    lib.rd_kafka_error_destroy.argtypes = [ctypes.c_void_p]
    return lib


def _message_arguments(
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[bytes, bytes | None]],
    timestamp_ms: int | None,
    *,
    opaque: int | None = None,
) -> tuple[Any, list[Any]]:
    """``rd_kafka_produceva``'s arguments for one message (librdkafka copies it): the
    ``rd_kafka_vu_t`` array, and what it points into, to keep referenced until the call
    returns. A ``None`` value or header value is a null pointer (no value)."""
    buffers: list[Any] = []
    arguments: list[_VU] = []

    def argument(vtype: int) -> _VU:
        item = _VU()
        item.vtype = vtype
        arguments.append(item)
        return item

    def memory(data: bytes | None) -> int | None:
        if data is None:
            return None
        buffer = ctypes.create_string_buffer(data, len(data))
        buffers.append(buffer)
        return ctypes.cast(buffer, ctypes.c_void_p).value

    argument(_VTYPE_TOPIC).u.cstr = topic.encode()
    argument(_VTYPE_PARTITION).u.i32 = partition
    item = argument(_VTYPE_VALUE)
    item.u.mem.ptr = memory(value)
    item.u.mem.size = len(value or b"")
    if key is not None:
        item = argument(_VTYPE_KEY)
        item.u.mem.ptr = memory(key)
        item.u.mem.size = len(key)
    argument(_VTYPE_MSGFLAGS).u.i = _MSG_F_COPY
    if timestamp_ms is not None:
        argument(_VTYPE_TIMESTAMP).u.i64 = timestamp_ms
    for name, header_value in headers:
        item = argument(_VTYPE_HEADER)
        item.u.header.name = name
        item.u.header.val = memory(header_value)
        item.u.header.size = len(header_value or b"")
    if opaque is not None:
        argument(_VTYPE_OPAQUE).u.ptr = opaque
    return (_VU * len(arguments))(*arguments), [arguments, buffers]


def produce_raw(
    bootstrap: str,
    topic: str,
    partition: int,
    value: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    timestamp_ms: int | None = None,
) -> None:
    """Produce one message and wait until librdkafka has nothing left to send.

    Header names are NUL-terminated C strings (any other byte is fine). Whether the
    broker stored the message is for the caller to check (watermarks, a consumer).
    """
    lib = _library()
    error = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    if lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), error, 512) != 0:
        lib.rd_kafka_conf_destroy(conf)
        raise RuntimeError(error.value.decode())
    handle = lib.rd_kafka_new(0, conf, error, 512)  # 0: RD_KAFKA_PRODUCER
    if not handle:
        raise RuntimeError(error.value.decode())
    try:
        array, _referenced = _message_arguments(
            topic, partition, None, value, headers, timestamp_ms
        )
        failure = lib.rd_kafka_produceva(handle, array, len(array))
        if failure:
            reason = lib.rd_kafka_error_string(failure).decode()
            lib.rd_kafka_error_destroy(failure)
            raise RuntimeError(f"produce failed: {reason}")
        if lib.rd_kafka_flush(handle, 30_000) != 0:
            raise RuntimeError("message not delivered within 30 s")
    finally:
        lib.rd_kafka_destroy(handle)


class _Message(ctypes.Structure):
    """librdkafka's ``rd_kafka_message_t``, as a delivery report hands it over."""

    _fields_ = [
        ("err", ctypes.c_int),
        ("rkt", ctypes.c_void_p),
        ("partition", ctypes.c_int32),
        ("payload", ctypes.c_void_p),
        ("len", ctypes.c_size_t),
        ("key", ctypes.c_void_p),
        ("key_len", ctypes.c_size_t),
        ("offset", ctypes.c_int64),
        ("opaque", ctypes.c_void_p),
    ]


_DeliveryReport = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_Message), ctypes.c_void_p)


class RawProducer:
    """A long-lived producer (``config``: librdkafka settings) of messages with arbitrary
    header names (see :func:`produce_raw`) that reports where each landed: ``produce``
    takes a callback, called from :meth:`poll` or :meth:`flush` with an error (None
    when delivered) and the message's offset, as confluent-kafka's ``on_delivery`` is."""

    def __init__(self, config: Mapping[str, str]) -> None:
        self._lib = lib = _library()
        lib.rd_kafka_conf_set_dr_msg_cb.restype = None
        lib.rd_kafka_conf_set_dr_msg_cb.argtypes = [ctypes.c_void_p, _DeliveryReport]
        lib.rd_kafka_poll.restype = ctypes.c_int
        lib.rd_kafka_poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.rd_kafka_err2str.restype = ctypes.c_char_p
        lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
        lib.rd_kafka_error_code.restype = ctypes.c_int
        lib.rd_kafka_error_code.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_err2name.restype = ctypes.c_char_p
        lib.rd_kafka_err2name.argtypes = [ctypes.c_int]
        error = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        for name, value in config.items():
            if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), error, 512) != 0:
                lib.rd_kafka_conf_destroy(conf)
                raise RuntimeError(error.value.decode())
        self._callbacks: dict[int, Callable[[str | None, int], None]] = {}
        self._next = 1
        # Kept referenced for as long as librdkafka may call it.
        self._report = _DeliveryReport(self._delivered)
        lib.rd_kafka_conf_set_dr_msg_cb(conf, self._report)
        self._handle = lib.rd_kafka_new(0, conf, error, 512)  # 0: RD_KAFKA_PRODUCER
        if not self._handle:
            raise RuntimeError(error.value.decode())

    def _delivered(self, _handle: int | None, message: Any, _opaque: int | None) -> None:
        report = message.contents
        callback = self._callbacks.pop(report.opaque or 0)
        failure = self._lib.rd_kafka_err2str(report.err).decode() if report.err else None
        callback(failure, report.offset)

    def produce(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[bytes, bytes | None]],
        callback: Callable[[str | None, int], None],
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        """Queue one message (librdkafka copies it); raise RuntimeError with
        librdkafka's error name (e.g. ``MSG_SIZE_TOO_LARGE``) when it refuses it."""
        number = self._next
        self._next += 1
        # ``number`` is handed back in the delivery report.
        array, _referenced = _message_arguments(
            topic, partition, key, value, headers, timestamp_ms, opaque=number
        )
        failure = self._lib.rd_kafka_produceva(self._handle, array, len(array))
        if failure:
            code = self._lib.rd_kafka_error_code(failure)
            reason = self._lib.rd_kafka_error_string(failure).decode()
            self._lib.rd_kafka_error_destroy(failure)
            raise RuntimeError(f"{self._lib.rd_kafka_err2name(code).decode()}: {reason}")
        self._callbacks[number] = callback

    def poll(self, timeout_s: float = 0) -> None:
        self._lib.rd_kafka_poll(self._handle, int(timeout_s * 1000))

    def flush(self, timeout_s: float) -> int:
        """Wait until every message is delivered (or failed); the number left over."""
        self._lib.rd_kafka_flush(self._handle, int(timeout_s * 1000))
        return len(self._callbacks)

    def close(self) -> None:
        self._lib.rd_kafka_destroy(self._handle)
