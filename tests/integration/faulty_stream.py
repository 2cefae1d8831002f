"""A stream with poison and duplicates mixed in, and the checks that prove nothing of it
was lost or doubled: shared by the fault tests and the rebalance tests.

:class:`FaultyStreamProducer` records where every message landed, so that the checks can
compare PostgreSQL and the dead-letter table with what the broker really holds.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count as count_from

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from kingest.dev.demo import committed_offsets, committed_total
from kingest.dev.synth import SyntheticRecord, SyntheticStream
from kingest.schema.codec import decode_event, encode_event
from kingest.schema.v1.events_pb2 import Event, RunStatus
from tests.integration.support import stored_event_ids, wait_for

#: Partitions of every topic the fault and rebalance tests use.
PARTITIONS = 6
RecordProperty = Callable[[str, object], None]

# ---------------------------------------------------------------------------- the stream


@dataclass
class ProducedStream:
    """What a :class:`FaultyStreamProducer` delivered, to compare with what was stored."""

    records: list[SyntheticRecord] = field(default_factory=list)
    #: (partition, offset) of every delivered second copy of a record.
    duplicates: set[tuple[int, int]] = field(default_factory=set)
    #: (partition, offset) of every delivered poison message.
    poison: set[tuple[int, int]] = field(default_factory=set)
    #: (partition, offset) -> event_id of every delivered valid record (either copy).
    events_at: dict[tuple[int, int], str] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)
    delivered: int = 0
    failed: int = 0

    @property
    def valid_ids(self) -> set[str]:
        return {record.event_id for record in self.records}


def undecodable_value(rng: random.Random) -> bytes:
    """Bytes that are no Protobuf ``Event``: an invalid tag (wire type 7) then noise."""
    return b"\x0f" + rng.randbytes(rng.randint(0, 48))


def invalid_event_value(rng: random.Random) -> bytes:
    """A well-formed ``Event`` that validation rejects (bad id, no payload, bad time)."""
    event = Event(event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    flavour = rng.randrange(3)
    if flavour == 0:
        event.event_id = "not-a-uuid"
    if flavour != 1:
        event.training_run_started.run_id = "poison-run"
    event.occurred_at.seconds = 1_000 if flavour == 2 else int(time.time())
    return encode_event(event)


class FaultyStreamProducer:
    """Produces a synthetic stream at a steady rate with poison and duplicates mixed in.

    Runs on its own thread until it has produced ``minimum`` messages *and*
    :meth:`finish` was called, so a test that interrupts kingest always has new events
    to make progress with. ``poison_share`` of the messages are undecodable bytes or
    invalid events; ``duplicate_share`` are a record produced again (same key, value,
    event_id) a little after its first copy.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        seed: int,
        minimum: int,
        rate: float,
        poison_share: float = 0.0,
        duplicate_share: float = 0.0,
    ) -> None:
        self.stream = ProducedStream()
        self.produced = 0
        self._bootstrap = bootstrap
        self._topic = topic
        self._seed = seed
        self._minimum = minimum
        self._rate = rate
        self._poison_share = poison_share
        self._duplicate_share = duplicate_share
        self._finish = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="faulty-producer", daemon=True)
        self._thread.start()

    def _items(self) -> Iterator[tuple[bytes, bytes, list[tuple[str, str | bytes | None]], str]]:
        """(key, value, headers, kind) forever: kind is a record's event_id, or "poison",
        or the event_id prefixed with "duplicate:" for the second copy of a record."""
        rng = random.Random(f"{self._seed}/faults")
        records = iter(SyntheticStream(seed=self._seed))
        recent: list[SyntheticRecord] = []
        while True:
            roll = rng.random()
            if roll < self._poison_share:
                value = undecodable_value(rng) if rng.random() < 0.5 else invalid_event_value(rng)
                yield f"poison-{rng.randrange(1000)}".encode(), value, [], "poison"
            elif roll < self._poison_share + self._duplicate_share and recent:
                again = rng.choice(recent)
                yield again.key, again.value, list(again.headers), f"duplicate:{again.event_id}"
            else:
                record = next(records)
                self.stream.records.append(record)
                recent.append(record)
                if len(recent) > 2_000:
                    del recent[:1_000]
                yield record.key, record.value, list(record.headers), record.event_id

    def _on_delivery(self, kind: str) -> Callable[[KafkaError | None, Message], None]:
        stream = self.stream

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                stream.failed += 1
                return
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            stream.delivered += 1
            stream.end_offsets[partition] = max(stream.end_offsets.get(partition, 0), offset + 1)
            if kind == "poison":
                stream.poison.add((partition, offset))
                return
            if kind.startswith("duplicate:"):
                stream.duplicates.add((partition, offset))
            stream.events_at[partition, offset] = kind.removeprefix("duplicate:")

        return delivered

    def _run(self) -> None:
        try:
            producer = Producer({"bootstrap.servers": self._bootstrap, "linger.ms": 5})
            start = time.monotonic()
            items = self._items()
            for index in count_from():
                # Decide before taking the next item: taking it records it as produced.
                if index >= self._minimum and self._finish.is_set():
                    break
                key, value, headers, kind = next(items)
                # An absolute schedule: message i leaves at start + i / rate.
                while (wait := start + index / self._rate - time.monotonic()) > 0:
                    producer.poll(min(wait, 0.05))
                producer.produce(
                    self._topic,
                    key=key,
                    value=value,
                    headers=list(headers),
                    on_delivery=self._on_delivery(kind),
                )
                self.produced = index + 1
                if index % 200 == 0:
                    producer.poll(0)
            assert producer.flush(60) == 0, "messages left undelivered"
        except BaseException as error:
            self._error = error
            raise

    def finish(self, timeout: float = 180) -> ProducedStream:
        """Stop once ``minimum`` messages are produced; wait for their delivery."""
        self._finish.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producer did not finish"
        if self._error is not None:
            raise self._error
        assert self.stream.failed == 0, "some messages were not delivered"
        return self.stream


# ---------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class ExactlyOnce:
    """What PostgreSQL holds compared with what was produced."""

    checked: int
    lost: int
    duplicated: int
    dead_letters: int


def check_exactly_once(url: str, stream: ProducedStream) -> ExactlyOnce:
    """Invariants 2 and 5 (docs/design.md): each valid event stored once, each poison message
    dead-lettered once (by coordinates), nothing else stored."""
    stored = stored_event_ids(url)
    expected = stream.valid_ids
    lost = len(expected - set(stored))
    duplicated = sum(n - 1 for n in stored.values() if n > 1)
    assert lost == 0, f"{lost} valid events lost"
    assert duplicated == 0, f"{duplicated} extra rows for already stored events"
    assert set(stored) == expected, "rows for events that were never produced"
    assert len(stored) == len(expected)
    with psycopg.connect(url) as conn:
        coordinates = Counter(
            conn.execute("SELECT kafka_partition, kafka_offset FROM kingest.dead_letters")
        )
    assert set(coordinates) == stream.poison, "dead letters differ from the poison produced"
    assert max(coordinates.values(), default=1) == 1
    return ExactlyOnce(len(expected), lost, duplicated, sum(coordinates.values()))


def assert_committed_are_durable(
    url: str, bootstrap: str, group: str, topic: str, stream: ProducedStream
) -> int:
    """Invariant 1 (docs/design.md) for a stream with duplicates: every message below each
    committed offset is durable, i.e. its event is stored or it is a dead letter at its coordinates.

    (``support.assert_committed_are_stored`` asks for a row *at* each offset, which a
    stream with duplicates cannot give: of two copies of an event only the one written
    first keeps its offset, and writes finish out of order.) Returns the number of
    committed messages checked.
    """
    committed = committed_offsets(bootstrap, group, topic, PARTITIONS)
    stored_ids = set(stored_event_ids(url))
    with psycopg.connect(url) as conn:
        dead_letters = set(
            conn.execute("SELECT kafka_partition, kafka_offset FROM kingest.dead_letters")
        )
    events_at = dict(stream.events_at)
    checked = 0
    for partition, offset in committed.items():
        missing = []
        for at in ((partition, o) for o in range(max(offset, 0))):
            event_id = events_at.get(at)
            if at not in dead_letters and (event_id is None or event_id not in stored_ids):
                missing.append(at[1])
        checked += max(offset, 0)
        assert not missing, (
            f"partition {partition}: committed {offset} but {len(missing)} messages below it "
            f"are not stored, e.g. offsets {missing[:5]}"
        )
    return checked


def expected_training_runs(records: list[SyntheticRecord]) -> dict[str, tuple[str, str]]:
    """``{run_id: (status, status_event_id)}`` as the events say: the latest start or
    finish of each run by (event time, event id) decides its status."""
    latest: dict[str, tuple[tuple[int, int, str], str]] = {}
    for record in records:
        if record.event_type not in ("training_run_started", "training_run_finished"):
            continue
        event = decode_event(record.value)
        if record.event_type == "training_run_started":
            run_id, status = event.training_run_started.run_id, "running"
        else:
            finished = event.training_run_finished
            run_id = finished.run_id
            status = RunStatus.Name(finished.status).removeprefix("RUN_STATUS_").lower()
        at = (event.occurred_at.seconds, event.occurred_at.nanos // 1000, event.event_id)
        if run_id not in latest or latest[run_id][0] < at:
            latest[run_id] = (at, status)
    return {run_id: (status, at[2]) for run_id, (at, status) in latest.items()}


def stored_training_runs(url: str) -> dict[str, tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT run_id, status, status_event_id::text FROM kingest.training_runs"
        ).fetchall()
    return {run_id: (status, event_id) for run_id, status, event_id in rows}


def report(record_property: RecordProperty, title: str, **figures: object) -> None:
    """Print the test's figures (for ``pytest -s``) and attach them to the report."""
    print(f"\n[{title}] " + ", ".join(f"{name}={value}" for name, value in figures.items()))
    for name, value in figures.items():
        record_property(name, value)


def committed(bootstrap: str, group: str, topic: str) -> int:
    return committed_total(bootstrap, group, topic, PARTITIONS)


def wait_until_committed(
    bootstrap: str, group: str, topic: str, above: int, *, timeout: float, what: str
) -> None:
    """Wait until the group's committed offsets add up to more than ``above``."""
    wait_for(lambda: committed(bootstrap, group, topic) > above, timeout=timeout, what=what)
