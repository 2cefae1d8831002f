"""The consumer loop's assignment callback (every partition it is given is resumed) and
its process-wide in-flight bound (hold off, then pause, then resume at half).

librdkafka keeps a partition's pause flag across a rebalance, and kingest forgets its own
pause record of a partition it releases: a partition paused by backpressure and handed
back would never be fetched again unless the assignment resumes it. The consumer here
only records the calls (the integration tests in test_rebalance.py run a real broker).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message, TopicPartition

from actors import Actor, ActorSystem, Pool
from kingest.config.loading import load_settings
from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.consumer import IN_FLIGHT_PAUSE_S, Pipeline
from kingest.pipeline.messages import WriteBatch
from kingest.pipeline.partition import MESSAGE_OVERHEAD_BYTES, records_size
from kingest.pipeline.polling import POLL_TIMEOUT_S, by_partition, next_messages
from kingest.pipeline.unacked import Unacknowledged
from tests.unit.config.test_settings import VALID


class Discard(Actor[WriteBatch]):
    def receive(self, message: WriteBatch) -> Any:
        return None


class RecordingConsumer:
    """Records pause and resume calls as (call, [(topic, partition), ...])."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", [(p.topic, p.partition) for p in partitions]))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", [(p.topic, p.partition) for p in partitions]))


def give_actors(pipeline: Pipeline, system: ActorSystem) -> None:
    """The committer and a writer pool that discards, as :meth:`Pipeline.run` spawns them."""
    pipeline._committer = system.spawn(OffsetCommitter())
    pipeline._writers = system.spawn(Pool("writers", lambda i: Discard(f"w{i}"), 1, capacity=4))


def test_every_assignment_resumes_the_partitions_it_gives() -> None:
    pipeline = Pipeline(load_settings(VALID))
    consumer: Any = RecordingConsumer()
    both = [TopicPartition("events", 0), TopicPartition("events", 1)]
    with ActorSystem("assign-test") as system:
        give_actors(pipeline, system)
        pipeline._on_assign(consumer, both)
        assert consumer.calls == [("resume", [("events", 0), ("events", 1)])]
        # Backpressure paused partition 0; a rebalance takes both partitions away
        # (kingest forgets its pause record) and gives them back.
        pipeline._paused.add(("events", 0))
        pipeline._on_revoke(consumer, both)
        assert not pipeline._paused
        consumer.calls.clear()
        pipeline._on_assign(consumer, both)
        assert consumer.calls == [("resume", [("events", 0), ("events", 1)])]
        # Incremental: an empty assignment resumes nothing, an added partition is resumed
        # and the partitions kept (and their pause state) are left alone.
        pipeline._paused.add(("events", 1))
        consumer.calls.clear()
        pipeline._on_assign(consumer, [])
        pipeline._on_assign(consumer, [TopicPartition("events", 2)])
        assert consumer.calls == [("resume", [("events", 2)])]
        state = {p.tp: p for p in pipeline.state().partitions}
        assert sorted(state) == [("events", 0), ("events", 1), ("events", 2)]
        assert [state[tp].paused for tp in sorted(state)] == [False, True, False]
        assert all(p.fetched_at is not None for p in state.values())
        pipeline._on_revoke(consumer, [*both, TopicPartition("events", 2)])


class NothingDurable:
    """A committer stand-in that has seen nothing become durable yet."""

    def __init__(self) -> None:
        self.durable: dict[tuple[str, int], tuple[int, int]] = {}

    def committable(self) -> dict[tuple[str, int], tuple[int, int]]:
        return dict(self.durable)


def test_the_in_flight_bound_holds_off_the_loop_then_pauses_and_resumes_at_half() -> None:
    settings = load_settings({**VALID, "KINGEST_IN_FLIGHT_BYTES": "1000"})
    pipeline = Pipeline(settings)
    consumer: Any = RecordingConsumer()
    both = [TopicPartition("events", 0), TopicPartition("events", 1)]
    with ActorSystem("in-flight-test") as system:
        give_actors(pipeline, system)
        pipeline._on_assign(consumer, both)
        generation = pipeline._generation
        consumer.calls.clear()
        durable = NothingDurable()
        pipeline._committer = durable  # type: ignore[assignment]
        # Under the bound: the loop polls.
        pipeline._unacked[("events", 0)] = Unacknowledged()
        pipeline._unacked[("events", 0)].add(9, 0.0, 10, 600)
        assert not pipeline._holding_off()
        # Over it: the loop takes no messages, and nothing is paused (the client keeps
        # what it prefetched).
        pipeline._unacked[("events", 1)] = Unacknowledged()
        pipeline._unacked[("events", 1)].add(9, 0.0, 10, 600)
        assert pipeline._holding_off()
        pipeline._apply_backpressure(consumer)
        assert consumer.calls == []
        # Held off for the whole grace: every partition is paused and the loop polls on
        # (rebalances are served only while it polls).
        assert pipeline._held_since is not None
        pipeline._held_since -= IN_FLIGHT_PAUSE_S
        assert not pipeline._holding_off()
        pipeline._apply_backpressure(consumer)
        assert consumer.calls == [("pause", [("events", 0), ("events", 1)])]
        consumer.calls.clear()
        # Partition 0's messages became durable: 600 of 1000 bytes remain, over half.
        durable.durable[("events", 0)] = (generation, 10)
        pipeline._apply_backpressure(consumer)
        assert consumer.calls == []
        assert not pipeline._holding_off()
        assert pipeline._held_since is None
        # Partition 1's too: both resume.
        durable.durable[("events", 1)] = (generation, 10)
        pipeline._apply_backpressure(consumer)
        assert consumer.calls == [("resume", [("events", 0), ("events", 1)])]
        pipeline._committer = system.spawn(OffsetCommitter())
        pipeline._on_lost(consumer, both)


def test_no_in_flight_bound_never_holds_off() -> None:
    pipeline = Pipeline(load_settings({**VALID, "KINGEST_IN_FLIGHT_BYTES": "0"}))
    pipeline._unacked[("events", 0)] = Unacknowledged()
    pipeline._unacked[("events", 0)].add(9, 0.0, 10, 1 << 40)
    assert not pipeline._holding_off()
    assert not pipeline._held_too_long()


class QueuedConsumer:
    """A client holding ``queued`` messages (arriving ones come through ``poll``)."""

    def __init__(self, queued: list[str], arriving: list[str]) -> None:
        self.queued = queued
        self.arriving = arriving
        self.calls: list[tuple[Any, ...]] = []

    def consume(self, num_messages: int, timeout: float) -> list[str]:
        self.calls.append(("consume", num_messages, timeout))
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken

    def poll(self, timeout: float) -> str | None:
        self.calls.append(("poll", timeout))
        if not self.arriving:
            return None
        first, *rest = self.arriving
        self.arriving = []
        self.queued.extend(rest)
        return first


def test_the_loop_takes_what_the_client_holds_without_waiting_for_a_full_batch() -> None:
    # Messages held: taken at once, however few (consume(n, t) would wait out t for n).
    held: Any = QueuedConsumer(["a", "b"], [])
    assert list(map(str, next_messages(held, 5000))) == ["a", "b"]
    assert held.calls == [("consume", 5000, 0)]
    # None held: wait for the first to arrive, then take what came with it.
    arriving: Any = QueuedConsumer([], ["c", "d", "e"])
    assert list(map(str, next_messages(arriving, 5000))) == ["c", "d", "e"]
    assert arriving.calls == [("consume", 5000, 0), ("poll", POLL_TIMEOUT_S), ("consume", 4999, 0)]
    # Nothing arrives within the poll timeout; and a batch of one is the first alone.
    idle: Any = QueuedConsumer([], [])
    assert not next_messages(idle, 5000)
    single: Any = QueuedConsumer([], ["f", "g"])
    assert list(map(str, next_messages(single, 1))) == ["f"]
    assert single.calls == [("consume", 1, 0), ("poll", POLL_TIMEOUT_S)]


def _message(topic: str, partition: int, offset: int) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, value=b"v")


def _offsets(groups: dict[tuple[str, int], list[Message]]) -> dict[tuple[str, int], list[int]]:
    return {tp: [m.offset() for m in group] for tp, group in groups.items()}


def test_a_poll_is_grouped_by_partition_in_offset_order_across_runs() -> None:
    # Runs of one partition come back separated by another's (fetch after fetch).
    poll = [_message("a", p, o) for p, o in [(0, 5), (0, 6), (1, 9), (0, 7), (1, 10), (2, 1)]]
    assert _offsets(by_partition(poll, "a")) == {
        ("a", 0): [5, 6, 7],
        ("a", 1): [9, 10],
        ("a", 2): [1],
    }
    assert _offsets(by_partition(poll)) == _offsets(by_partition(poll, "a"))


def test_without_a_single_topic_partitions_of_different_topics_are_kept_apart() -> None:
    poll = [_message("a", 0, 1), _message("b", 0, 1), _message("a", 0, 2)]
    assert _offsets(by_partition(poll)) == {("a", 0): [1, 2], ("b", 0): [1]}


def test_the_pipeline_groups_by_partition_only_when_it_subscribes_to_one_topic() -> None:
    assert Pipeline(load_settings(VALID))._only_topic is None  # two topics
    one = load_settings({**VALID, "KINGEST_TOPICS": "ml-events"})
    assert Pipeline(one)._only_topic == "ml-events"


def test_records_size_counts_values_keys_and_the_per_message_overhead() -> None:
    records = [
        Message(topic="t", partition=0, offset=0, key=b"kk", value=b"abc"),
        Message(topic="t", partition=0, offset=1, key=None, value=None),
    ]
    assert records_size(records) == 2 * MESSAGE_OVERHEAD_BYTES + 3 + 2
