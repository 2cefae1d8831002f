"""The envelope that carries one message through a mailbox."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry.context import Context

M = TypeVar("M")

__all__ = ["Envelope"]


@dataclass(slots=True)
class Envelope(Generic[M]):
    """A message plus what the receiver needs to know about its sending.

    `context` is the sender's OpenTelemetry context (trace context and correlation id)
    captured at `tell` time; `reply` is the future answering an `ask` (None for a
    tell); `enqueued_at` is the sender's `time.monotonic()`, so the receiver can
    measure how long the message waited in the queue.

    Envelopes are never modified after creation. The class is deliberately not
    `frozen`: a frozen dataclass's `__init__` costs several times more, and one
    envelope is built for every message sent.
    """

    message: M
    context: Context
    reply: Future[Any] | None
    enqueued_at: float
