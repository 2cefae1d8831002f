"""Produce a message whose header names are arbitrary bytes (not UTF-8), as Go clients
and ``kcat -H`` can: the Python Producer cannot (it takes header names as ``str``:
``bytes`` names are sent as their ``repr``, and a lone surrogate crashes it), so this
goes through librdkafka's C API (``rd_kafka_produceva``), on the library bundled with
confluent-kafka, as :mod:`kingest.devstack` does for the mock cluster."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from kingest.devstack import _librdkafka

_VTYPE_TOPIC = 1
_VTYPE_PARTITION = 3
_VTYPE_VALUE = 4
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
    buffers: list[Any] = []
    arguments: list[_VU] = []

    def argument(vtype: int) -> _VU:
        item = _VU()
        item.vtype = vtype
        arguments.append(item)
        return item

    def memory(data: bytes) -> int | None:
        buffer = ctypes.create_string_buffer(data, len(data))
        buffers.append(buffer)
        return ctypes.cast(buffer, ctypes.c_void_p).value

    try:
        argument(_VTYPE_TOPIC).u.cstr = topic.encode()
        argument(_VTYPE_PARTITION).u.i32 = partition
        item = argument(_VTYPE_VALUE)
        item.u.mem.ptr = memory(value)
        item.u.mem.size = len(value)
        argument(_VTYPE_MSGFLAGS).u.i = _MSG_F_COPY
        if timestamp_ms is not None:
            argument(_VTYPE_TIMESTAMP).u.i64 = timestamp_ms
        for name, header_value in headers:
            item = argument(_VTYPE_HEADER)
            item.u.header.name = name
            item.u.header.val = memory(header_value)
            item.u.header.size = len(header_value)
        array = (_VU * len(arguments))(*arguments)
        failure = lib.rd_kafka_produceva(handle, array, len(arguments))
        if failure:
            reason = lib.rd_kafka_error_string(failure).decode()
            lib.rd_kafka_error_destroy(failure)
            raise RuntimeError(f"produce failed: {reason}")
        if lib.rd_kafka_flush(handle, 30_000) != 0:
            raise RuntimeError("message not delivered within 30 s")
    finally:
        lib.rd_kafka_destroy(handle)
