"""The offset-commit actor: turns write acknowledgements into committable offsets.

Partition actors register each write batch (before handing it to the writers) and
writers acknowledge it once it is durable; both arrive through this actor's mailbox, so
a registration is always applied before its acknowledgement. The actor keeps one
:class:`PartitionOffsets` per owned partition and *generation* (the assignment epoch): an
acknowledgement from an earlier assignment of the same partition (a write that finished
after a rebalance took the partition away and gave it back) is ignored, so it can never
move the new owner's position.

The consumer loop, which alone talks to Kafka, reads :meth:`committable` and commits;
on revoke and shutdown it waits with :meth:`wait_drained` for in-flight batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from actors import Actor, Supervisor
from kingest.kafka import TopicPartitionKey
from kingest.pipeline.messages import (
    Ack,
    Assigned,
    Barrier,
    CommitterMessage,
    Register,
    Released,
)
from kingest.pipeline.offsets import PartitionOffsets
from kingest.pipeline.threads import COMMITTER_THREAD

__all__ = ["OffsetCommitter"]


class OffsetCommitter(Actor[CommitterMessage]):
    """Tracks contiguous acknowledgements per partition; see the module docstring."""

    def __init__(self, *, capacity: int = 100_000, supervisor: Supervisor | None = None) -> None:
        super().__init__(COMMITTER_THREAD, capacity=capacity, supervisor=supervisor)
        self._trackers: dict[TopicPartitionKey, tuple[int, PartitionOffsets]] = {}
        self._changed = threading.Condition()
        #: Per partition, (last offset, span context) of registered batches whose process
        #: span was sampled, until a commit covers them (the commit span links to them).
        self._batch_spans: dict[TopicPartitionKey, list[tuple[int, SpanContext]]] = {}

    def receive(self, message: CommitterMessage) -> Any:
        with self._changed:
            if isinstance(message, Ack):
                entry = self._trackers.get(message.tp)
                if (
                    entry is None
                    or entry[0] != message.generation
                    or not entry[1].ack(message.first)
                ):
                    return None  # a late completion from an earlier assignment
            elif isinstance(message, Register):
                entry = self._trackers.get(message.tp)
                if entry is not None and entry[0] == message.generation:
                    entry[1].register(message.first, message.last)
                    # Told inside the batch's span: the envelope brought its context.
                    span_context = trace.get_current_span().get_span_context()
                    if span_context.trace_flags.sampled:
                        self._batch_spans.setdefault(message.tp, []).append(
                            (message.last, span_context)
                        )
                return None
            elif isinstance(message, Assigned):
                for tp in message.tps:
                    self._trackers[tp] = (message.generation, PartitionOffsets())
                    self._batch_spans.pop(tp, None)
            elif isinstance(message, Released):
                for tp in message.tps:
                    entry = self._trackers.get(tp)
                    if entry is not None and entry[0] == message.generation:
                        del self._trackers[tp]
                        self._batch_spans.pop(tp, None)
            elif isinstance(message, Barrier):
                return True
            self._changed.notify_all()
        return None

    # ------------------------------------------------------------------ read side (any thread)

    def commit_links(self, offsets: Iterable[tuple[TopicPartitionKey, int]]) -> list[SpanContext]:
        """Span contexts of the sampled batches that committing ``offsets`` settles (each
        given once: they are forgotten here)."""
        links: list[SpanContext] = []
        with self._changed:
            for tp, offset in offsets:
                pending = self._batch_spans.get(tp)
                if not pending:
                    continue
                keep = [entry for entry in pending if entry[0] >= offset]
                links.extend(context for last, context in pending if last < offset)
                self._batch_spans[tp] = keep
        return links

    def committable(self) -> dict[TopicPartitionKey, tuple[int, int]]:
        """``{tp: (generation, next offset to commit)}`` for partitions with progress."""
        with self._changed:
            return {
                tp: (generation, tracker.committable)
                for tp, (generation, tracker) in self._trackers.items()
                if tracker.committable is not None
            }

    def unacked_batches(self) -> int:
        """Batches registered and not acknowledged yet, over every owned partition."""
        with self._changed:
            return sum(tracker.unacked_batches for _, tracker in self._trackers.values())

    def sync(self, timeout: float | None) -> bool:
        """Wait until everything told to this actor so far has been applied."""
        try:
            return bool(self.ask(Barrier(), timeout=timeout).result(timeout))
        except Exception:
            return False

    def wait_drained(self, tps: Iterable[TopicPartitionKey], deadline: float) -> bool:
        """Block until no batch of ``tps`` awaits acknowledgement, or ``deadline`` passes.

        Call :meth:`sync` first so that registrations still queued in the mailbox count.
        """
        wanted = list(tps)
        with self._changed:
            while True:
                busy = [
                    tp
                    for tp in wanted
                    if tp in self._trackers and not self._trackers[tp][1].drained
                ]
                remaining = deadline - time.monotonic()
                if not busy:
                    return True
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
