"""Dead letters on a Kafka topic: the message layout, publishing, and reading back.

A dead letter goes to the ``kingest.dead_letters`` table (in the same transaction as
the rows around it), to a dead-letter topic, or to both (``KINGEST_DEAD_LETTER_STORE``).
On the topic, a dead letter is the original message, byte for byte, plus headers:

* key and value: the original ones; the Kafka timestamp: the original one when it
  falls in the years 1-9999 (else none: the time of publication), and in any case the
  original value in the ``kingest.dlq.source.timestamp`` header;
* headers: the original headers first, in order, then ``kingest.dlq.*`` headers with
  the source coordinates and the reason (UTF-8 text values, see :data:`HEADERS`);
* ``traceparent``, last: the W3C trace context of the dead-lettering work when there
  is one (an original ``traceparent`` stays where it was, among the original headers).

kingest's block always starts with ``kingest.dlq.source.topic``, so
:func:`decode_message` gives back the original headers unchanged: those before the last
header of that name (an original header may have any name, kingest's included).

The topic is at-least-once: a crash between the publication and the offset commit
publishes the dead letter again on redelivery. Consumers of the topic deduplicate by
the source coordinates (``kingest.dlq.source.*``), which are unique per message; the
table is exactly-once (unique on the same coordinates).

A dead letter the topic cannot take never stalls the stream: each failed publication
is a :class:`PublishFailure`, permanent when it can never succeed
(:func:`is_permanent_publish_error`: too large, invalid, not authorized...). The writer
keeps permanent failures, and the others once the publish budget is spent, in
``kingest.dead_letters`` with the error (``publish_error``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from opentelemetry import propagate

from kingest.config import dead_letter_topic
from kingest.store import Headers, Rejection, header_tuple, storable_timestamp_ms
from kingest.telemetry import tracing

__all__ = [
    "HEADERS",
    "DeadLetter",
    "DeadLetterPublishError",
    "DeadLetterPublisher",
    "NotADeadLetterError",
    "PublishFailure",
    "confirming_producer",
    "dead_letter_topic",
    "decode_message",
    "encode_headers",
    "is_permanent_publish_error",
]

log = logging.getLogger(__name__)

SOURCE_TOPIC: Final = "kingest.dlq.source.topic"
SOURCE_PARTITION: Final = "kingest.dlq.source.partition"
SOURCE_OFFSET: Final = "kingest.dlq.source.offset"
SOURCE_TIMESTAMP: Final = "kingest.dlq.source.timestamp"
CONSUMER_GROUP: Final = "kingest.dlq.consumer.group"
ERROR_STAGE: Final = "kingest.dlq.error.stage"
ERROR_CLASS: Final = "kingest.dlq.error.class"
ERROR_MESSAGE: Final = "kingest.dlq.error.message"
SQLSTATE: Final = "kingest.dlq.sqlstate"
ATTEMPTS: Final = "kingest.dlq.attempts"
DEAD_LETTERED_AT: Final = "kingest.dlq.time"
EVENT_ID: Final = "kingest.dlq.event.id"
EVENT_TYPE: Final = "kingest.dlq.event.type"
CORRELATION_ID: Final = "kingest.dlq.correlation.id"
TRACEPARENT: Final = "traceparent"

#: Every header kingest adds, with its meaning (the header table of docs/dead-letters.md).
HEADERS: Final = {
    SOURCE_TOPIC: "topic the message was consumed from",
    SOURCE_PARTITION: "its partition (decimal)",
    SOURCE_OFFSET: "its offset (decimal)",
    SOURCE_TIMESTAMP: "its Kafka timestamp in epoch milliseconds, when it had one",
    CONSUMER_GROUP: "consumer group that dead-lettered it",
    ERROR_STAGE: "decode, validate or write",
    ERROR_CLASS: "stable reason code, e.g. invalid_protobuf or a PostgreSQL error name",
    ERROR_MESSAGE: "human-readable reason",
    SQLSTATE: "PostgreSQL SQLSTATE, for write-stage failures",
    ATTEMPTS: "deliveries that ended in this dead letter (decimal)",
    DEAD_LETTERED_AT: "when it was dead-lettered (ISO 8601, UTC)",
    EVENT_ID: "the event's event_id as sent, when the value decoded",
    EVENT_TYPE: "payload kind, e.g. inference_completed, when the value decoded",
    CORRELATION_ID: "correlation id from the envelope or header, when known",
    TRACEPARENT: "W3C trace context of the work that dead-lettered it",
}


class NotADeadLetterError(ValueError):
    """A message on a dead-letter topic lacks kingest's source headers."""


#: Kafka errors a dead letter meets every time it is published again: the message
#: itself is refused (too large for the producer or the topic, invalid), or the producer
#: may not write the topic. The writer keeps such dead letters in the table at once.
_PERMANENT_PUBLISH_ERRORS: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
        KafkaError._INVALID_TYPE,
    }
)


def is_permanent_publish_error(error: KafkaError) -> bool:
    """True when publishing the same dead letter again cannot succeed: an error of the
    message or of the producer's rights, or a fatal error (the producer is unusable)."""
    return error.code() in _PERMANENT_PUBLISH_ERRORS or error.fatal()


@attrs.frozen
class PublishFailure:
    """One dead letter the broker did not confirm, and why."""

    rejection: Rejection
    #: The Kafka error name (e.g. MSG_SIZE_TOO_LARGE), or no_delivery_report.
    reason: str
    #: ``reason: the error's text``, for logs and the table's publish_error.
    detail: str
    permanent: bool

    @classmethod
    def of(cls, rejection: Rejection, error: KafkaError | None) -> PublishFailure:
        if error is None:
            reason = "no_delivery_report"
            return cls(rejection, reason, f"{reason}: no delivery report in time", False)
        reason = str(error.name())
        return cls(rejection, reason, f"{reason}: {error.str()}", is_permanent_publish_error(error))


class DeadLetterPublishError(RuntimeError):
    """Some dead letters were not confirmed by the broker; ``failures`` says why, each."""

    def __init__(self, message: str, failures: Sequence[PublishFailure], reason: str) -> None:
        super().__init__(message)
        self.failures = list(failures)
        #: The Kafka error name of the last failed delivery (e.g. _MSG_TIMED_OUT).
        self.reason = reason

    @property
    def unconfirmed(self) -> list[Rejection]:
        """The dead letters not confirmed, in the order they were given."""
        return [failure.rejection for failure in self.failures]


@attrs.frozen
class DeadLetter:
    """A dead letter as published: the rejected message and where it was rejected."""

    rejection: Rejection
    consumer_group: str | None
    attempts: int
    dead_lettered_at: datetime


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def encode_headers(
    dead_letter: DeadLetter, traceparent: str | None = None
) -> list[tuple[str, bytes | None]]:
    """The headers of ``dead_letter`` on the topic: original ones, then kingest's."""
    rejection = dead_letter.rejection
    optional = {
        SOURCE_TIMESTAMP: None
        if rejection.kafka_timestamp_ms is None
        else str(rejection.kafka_timestamp_ms),
        CONSUMER_GROUP: dead_letter.consumer_group,
        SQLSTATE: rejection.sqlstate,
        EVENT_ID: rejection.event_id,
        EVENT_TYPE: rejection.event_type,
        CORRELATION_ID: rejection.correlation_id,
        TRACEPARENT: traceparent,
    }
    return [
        *rejection.headers,
        (SOURCE_TOPIC, _text(rejection.topic)),  # first of kingest's block (see module doc)
        (SOURCE_PARTITION, _text(str(rejection.partition))),
        (SOURCE_OFFSET, _text(str(rejection.offset))),
        (ERROR_STAGE, _text(rejection.error_stage)),
        (ERROR_CLASS, _text(rejection.error_class)),
        (ERROR_MESSAGE, _text(rejection.error_message)),
        (ATTEMPTS, _text(str(dead_letter.attempts))),
        (DEAD_LETTERED_AT, _text(dead_letter.dead_lettered_at.isoformat())),
        *((name, _text(value)) for name, value in optional.items() if value is not None),
    ]


def decode_message(key: bytes | None, value: bytes | None, headers: Headers | None) -> DeadLetter:
    """Read a dead letter back from a message of a dead-letter topic."""
    pairs = header_tuple(headers)
    # The LAST one: the original headers before kingest's block may use its names too.
    start = next((i for i in reversed(range(len(pairs))) if pairs[i][0] == SOURCE_TOPIC), None)
    if start is None:
        raise NotADeadLetterError(f"not a kingest dead letter: no {SOURCE_TOPIC} header")
    ours = {name: (raw or b"").decode("utf-8", "surrogateescape") for name, raw in pairs[start:]}
    try:
        partition = int(ours[SOURCE_PARTITION])
        offset = int(ours[SOURCE_OFFSET])
        attempts = int(ours.get(ATTEMPTS, "1"))
        timestamp = int(ours[SOURCE_TIMESTAMP]) if SOURCE_TIMESTAMP in ours else None
        at = ours.get(DEAD_LETTERED_AT)
        dead_lettered_at = datetime.fromisoformat(at) if at else datetime.fromtimestamp(0, UTC)
    except (KeyError, ValueError) as error:
        raise NotADeadLetterError(f"malformed kingest dead-letter headers: {error}") from None
    rejection = Rejection(
        topic=ours[SOURCE_TOPIC],
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=pairs[:start],
        kafka_timestamp_ms=timestamp,
        error_stage=ours.get(ERROR_STAGE, ""),
        error_class=ours.get(ERROR_CLASS, ""),
        error_message=ours.get(ERROR_MESSAGE, ""),
        sqlstate=ours.get(SQLSTATE),
        event_id=ours.get(EVENT_ID),
        event_type=ours.get(EVENT_TYPE),
        correlation_id=ours.get(CORRELATION_ID),
    )
    return DeadLetter(
        rejection=rejection,
        consumer_group=ours.get(CONSUMER_GROUP),
        attempts=attempts,
        dead_lettered_at=dead_lettered_at,
    )


def current_traceparent() -> str | None:
    """The W3C traceparent of the current OpenTelemetry context, if it has a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def confirming_producer(config: Mapping[str, Any], delivery_timeout_s: float) -> Producer:
    """A producer for messages that must not be lost or doubled: idempotent, ``acks=all``,
    and a delivery report for every message within ``delivery_timeout_s`` (the
    dead-letter topic; dead letters replayed to their source topic)."""
    return Producer(
        {
            **config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
        }
    )


class _Deliveries:
    """Delivery reports of one :meth:`DeadLetterPublisher.publish` call (any thread)."""

    def __init__(self, expected: int) -> None:
        self._lock = threading.Lock()
        self.pending = expected
        self.confirmed: set[int] = set()
        #: The error of each message not delivered, in the order the reports came.
        self.errors: dict[int, KafkaError] = {}

    def callback(self, index: int) -> Any:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            with self._lock:
                self.pending -= 1
                if error is None:
                    self.confirmed.add(index)
                else:
                    self.errors[index] = error

        return on_delivery

    def refused(self, index: int, error: KafkaError) -> None:
        """``produce()`` refused message ``index`` at once: no report will come."""
        with self._lock:
            self.pending -= 1
            self.errors[index] = error


class DeadLetterPublisher:
    """Publishes dead letters and returns only once the broker confirmed every one.

    One idempotent producer (``acks=all``) shared by all writers; each call waits for
    the delivery reports of its own messages, serving callbacks by polling. A message
    the broker did not confirm, or that ``produce()`` refused at once (too large for
    ``message.max.bytes``), raises :class:`DeadLetterPublishError` with a
    :class:`PublishFailure` each; the caller retries those that may succeed later with
    backoff for at most :attr:`budget_s`, keeps the others in the table, and the source
    offsets are not acknowledged meanwhile, so nothing is lost.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        topic_template: str,
        consumer_group: str | None,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        self._producer = confirming_producer(config, delivery_timeout_s)
        self._template = topic_template
        self._group = consumer_group
        self._timeout_s = delivery_timeout_s + 5.0
        #: How long the caller retries a dead letter that may succeed later.
        self.budget_s = delivery_timeout_s

    def topic_for(self, source_topic: str) -> str:
        return dead_letter_topic(self._template, source_topic)

    def publish(self, rejections: Sequence[Rejection], *, attempts: int = 1) -> None:
        """Publish ``rejections``; raise :class:`DeadLetterPublishError` with the rest.

        The publication is a PRODUCER span (when tracing is on); its context is the
        ``traceparent`` header of every dead letter it publishes.
        """
        if not rejections:
            return
        topics = [self.topic_for(rejection.topic) for rejection in rejections]
        with tracing.dead_letter_span(topics, len(rejections), self._group):
            self._publish(rejections, attempts)

    def _publish(self, rejections: Sequence[Rejection], attempts: int) -> None:
        now = datetime.now(UTC)
        traceparent = current_traceparent()
        deliveries = _Deliveries(len(rejections))
        for index, rejection in enumerate(rejections):
            dead_letter = DeadLetter(rejection, self._group, attempts, now)
            try:
                self._produce(
                    self.topic_for(rejection.topic),
                    key=rejection.key,
                    value=rejection.value,
                    headers=encode_headers(dead_letter, traceparent),
                    # A timestamp outside the years 1-9999 is left out (0: librdkafka
                    # stamps the time of publication): brokers refuse far-future ones
                    # (message.timestamp.after.max.ms) and time-based retention would
                    # never delete them; the raw value is in kingest.dlq.source.timestamp.
                    timestamp=storable_timestamp_ms(rejection.kafka_timestamp_ms) or 0,
                    on_delivery=deliveries.callback(index),
                )
            except KafkaException as refused:
                deliveries.refused(index, refused.args[0])
        deadline = time.monotonic() + self._timeout_s
        while deliveries.pending > 0 and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if len(deliveries.confirmed) < len(rejections):
            failures = [
                PublishFailure.of(r, deliveries.errors.get(i))
                for i, r in enumerate(rejections)
                if i not in deliveries.confirmed
            ]
            error = next(reversed(deliveries.errors.values()), None)  # the last reported
            reason = error.str() if error is not None else "no delivery report in time"
            raise DeadLetterPublishError(
                f"{len(failures)} of {len(rejections)} dead letters not confirmed by "
                f"the broker: {reason}",
                failures,
                reason=str(error.name()) if error is not None else "no_delivery_report",
            )

    def _produce(self, topic: str, **kwargs: Any) -> None:
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve delivery reports

    def close(self, timeout_s: float = 10.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("%d dead-letter messages still unconfirmed at close", remaining)
