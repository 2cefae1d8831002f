"""Test doubles for pure-logic unit tests (never for network peers)."""

from __future__ import annotations


class FakeRecord:
    """A Kafka message as RowBatch sees it (the KafkaRecord protocol)."""

    def __init__(
        self,
        value: bytes | None,
        *,
        offset: int = 0,
        topic: str = "events",
        partition: int | None = 3,
        key: bytes | None = b"key",
        headers: list[tuple[str, bytes | None]] | None = None,
        timestamp: tuple[int, int] = (1, 1_749_999_000_500),
    ) -> None:
        self._value = value
        self._offset = offset
        self._topic = topic
        self._partition = partition
        self._key = key
        self._headers = headers
        self._timestamp = timestamp

    def topic(self) -> str | None:
        return self._topic

    def partition(self) -> int | None:
        return self._partition

    def offset(self) -> int | None:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def __len__(self) -> int:  # as confluent_kafka.Message: the value's length
        return len(self._value or b"")

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp
