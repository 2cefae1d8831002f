"""Kafka records of one message type of a catalog, for ``kingest produce --catalog`` and the demo.

:mod:`kingest.dev.catalog_synth` makes the messages; this module picks the message type
(the one asked for, else the catalog's envelope), keys each message as the catalog's
records are keyed, and frames its value as a Confluent Schema Registry serializer would
when a schema id is given: the index path is the message's own path in its ``.proto``
file, which is what a registry that holds that file expects.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kingest.dev.catalog_synth import (
    CatalogSynth,
    DescriptorSetPool,
    load_descriptor_set_pool,
    record_key,
)
from kingest.dev.catalog_values import CatalogSynthError
from kingest.schema import encode_message, message_index_path

__all__ = ["CatalogRecord", "CatalogStream", "default_message"]


@dataclass(frozen=True, slots=True)
class CatalogRecord:
    """One record of a catalog's message type (no headers: the value says it all)."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    #: Not tracked for catalog records (their event id, if any, is a field of the value).
    event_id: str = ""


def default_message(pool: DescriptorSetPool) -> str:
    """The catalog's envelope message, the type its envelope topics carry.

    Raises :class:`CatalogSynthError` listing the message types to choose from when the
    catalog has no envelope, or more than one.
    """
    envelopes = pool.envelope_names()
    if len(envelopes) == 1:
        return envelopes[0]
    known = "\n  ".join(pool.message_names()) or "(none)"
    reason = "no envelope message" if not envelopes else f"{len(envelopes)} envelope messages"
    raise CatalogSynthError(
        f"the catalog has {reason}: name the message type to produce; its message types:\n  {known}"
    )


class CatalogStream:
    """An endless stream of :class:`CatalogRecord` of one message type of a descriptor set.

    ``message`` is a full name (default: :func:`default_message`); ``schema_id`` frames
    every value in the wire format. ``base_time`` (Unix seconds, default now) is the first
    message's ``occurred_at``. The descriptor set and the message type are checked here,
    not at the first record: :class:`CatalogSynthError` lists every problem.
    """

    def __init__(
        self,
        source: Path | bytes,
        message: str | None = None,
        *,
        seed: int = 0,
        schema_id: int | None = None,
        base_time: float | None = None,
    ) -> None:
        pool = load_descriptor_set_pool(source)
        descriptor = pool.message_type(message.lstrip(".") if message else default_message(pool))
        self.message_name: str = descriptor.full_name
        self.schema_id = schema_id
        self.message_indexes = message_index_path(descriptor)
        start = time.time() if base_time is None else base_time
        self._synth = CatalogSynth(descriptor, random.Random(seed), base_time=start)

    def __iter__(self) -> Iterator[CatalogRecord]:
        synth, schema_id, indexes = self._synth, self.schema_id, self.message_indexes
        while True:
            message = synth.message()
            value = encode_message(message, schema_id=schema_id, message_indexes=indexes)
            yield CatalogRecord(record_key(message), value)

    def take(self, count: int) -> list[CatalogRecord]:
        """The next ``count`` records."""
        records = iter(self)
        return [next(records) for _ in range(count)]
