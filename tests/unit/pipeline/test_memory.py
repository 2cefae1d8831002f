"""The arithmetic of the memory bound (kingest.pipeline.memory)."""

from __future__ import annotations

import pytest

from kingest.config.loading import load_settings
from kingest.config.settings import Settings
from kingest.kafka.consumer import FETCH_QUEUE_BACKOFF_MS, PREFETCH_POLLS, consumer_config
from kingest.pipeline.memory import (
    ALLOCATOR_SLACK,
    BASELINE_BYTES,
    COMPRESSION_RATIO,
    ENCODED_ROW_OVERHEAD,
    PYTHON_MESSAGE_OVERHEAD,
    RDKAFKA_MESSAGE_OVERHEAD,
    ROW_OVERHEAD,
    MemoryBudget,
    memory_budget,
    partition_unacked_bounds,
)

MIB = 1024 * 1024


def settings(**overrides: str) -> Settings:
    env = {
        "KINGEST_KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
        "KINGEST_TOPICS": "events",
        "KINGEST_GROUP_ID": "kingest",
        "KINGEST_DATABASE_URL": "postgresql://kingest@db/ml",
    }
    env.update(overrides)
    return load_settings(env)


def term(budget: MemoryBudget, name: str) -> int:
    (found,) = [t.nbytes for t in budget.terms if t.name == name]
    return found


# Small round numbers, so every term can be worked out by hand below.
SMALL = {
    "KINGEST_KAFKA_FETCH_QUEUE_KBYTES": "1024",  # 1 MiB of queued payload
    "KINGEST_RDKAFKA_QUEUED_MIN_MESSAGES": "1000",
    "KINGEST_RDKAFKA_MAX_PARTITION_FETCH_BYTES": "65536",
    "KINGEST_KAFKA_POLL_BATCH_SIZE": "100",
    "KINGEST_PARTITION_QUEUE_MESSAGES": "2000",
    "KINGEST_PARTITION_QUEUE_BYTES": "1048576",
    "KINGEST_BATCH_SIZE": "500",
    "KINGEST_WRITER_QUEUE_BATCHES": "3",
    "KINGEST_WRITERS": "2",
}


def test_each_term_is_its_bound_times_the_cost_of_a_message() -> None:
    budget = memory_budget(settings(**SMALL), partitions=4, message_bytes=1000)
    rdkafka_message = 1000 + RDKAFKA_MESSAGE_OVERHEAD
    python_message = 1000 + PYTHON_MESSAGE_OVERHEAD
    row = python_message + ROW_OVERHEAD + 1000
    written_row = row + 2 * (ENCODED_ROW_OVERHEAD + 1000)
    largest_batch = 500 + 100 - 1

    # queued: min(1000 messages, 1 MiB / 1000 B = 1049); responses: 4 x 64 KiB compressed
    responses = 4 * 65536
    overshoot = responses * COMPRESSION_RATIO // 1000 + 1
    assert term(budget, "librdkafka prefetch") == (1000 + overshoot) * rdkafka_message + responses
    # a mailbox pauses at min(2000 messages, 1 MiB / 1000 B = 1049); one poll may overshoot
    assert term(budget, "partition mailboxes") == (4 * 1049 + 100) * python_message
    assert term(budget, "open batches") == 4 * largest_batch * row
    assert term(budget, "writer queue") == 3 * largest_batch * row
    assert term(budget, "batches in flight") == 2 * (500 + largest_batch) * written_row
    assert term(budget, "baseline") == BASELINE_BYTES
    dynamic = budget.total_bytes - BASELINE_BYTES - term(budget, "allocator slack")
    assert term(budget, "allocator slack") == pytest.approx(dynamic * ALLOCATOR_SLACK, abs=1)
    assert budget.total_bytes == sum(t.nbytes for t in budget.terms)


def test_the_tighter_of_the_count_and_byte_bounds_applies() -> None:
    # 100-byte messages: the 2000-message bounds bind before the 1 MiB ones.
    small = memory_budget(settings(**SMALL), partitions=1, message_bytes=100)
    responses = 65536
    overshoot = responses * COMPRESSION_RATIO // 100 + 1
    expected_prefetch = (1000 + overshoot) * (100 + RDKAFKA_MESSAGE_OVERHEAD) + responses
    assert term(small, "librdkafka prefetch") == expected_prefetch
    assert term(small, "partition mailboxes") == (2000 + 100) * (100 + PYTHON_MESSAGE_OVERHEAD)


def test_partitions_grow_the_per_partition_terms_only() -> None:
    one = memory_budget(settings(), partitions=1)
    ten = memory_budget(settings(), partitions=10)
    for name in ("open batches",):
        assert term(ten, name) == 10 * term(one, name)
    for name in ("writer queue", "batches in flight", "baseline"):
        assert term(ten, name) == term(one, name)
    assert ten.total_bytes > one.total_bytes


def test_librdkafka_overrides_are_part_of_the_bound() -> None:
    default = memory_budget(settings(), partitions=8)
    smaller = memory_budget(
        settings(KINGEST_RDKAFKA_MAX_PARTITION_FETCH_BYTES="262144"), partitions=8
    )
    assert term(smaller, "librdkafka prefetch") < term(default, "librdkafka prefetch")


def test_a_fetch_response_is_never_bigger_than_the_prefetch_queue() -> None:
    config = consumer_config(settings(KINGEST_KAFKA_FETCH_QUEUE_KBYTES="4096"))
    assert config["fetch.max.bytes"] == 4096 * 1024
    assert consumer_config(settings())["fetch.max.bytes"] == 16 * MIB
    huge = consumer_config(settings(KINGEST_KAFKA_FETCH_QUEUE_KBYTES="1048576"))
    assert huge["fetch.max.bytes"] == 52_428_800  # librdkafka's default is the ceiling
    overridden = consumer_config(settings(KINGEST_RDKAFKA_FETCH_MAX_BYTES="1000000"))
    assert overridden["fetch.max.bytes"] == "1000000"


def test_the_bound_at_the_defaults_is_described_term_by_term() -> None:
    budget = memory_budget(settings(), partitions=8, message_bytes=200)
    text = budget.describe()
    for t in budget.terms:
        assert t.name in text
    assert f"{budget.total_mib:.1f} MiB" in text.splitlines()[-1]


@pytest.mark.parametrize(("partitions", "message_bytes"), [(0, 100), (1, 0)])
def test_nonsense_inputs_are_refused(partitions: int, message_bytes: int) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        memory_budget(settings(), partitions, message_bytes=message_bytes)


def test_the_prefetch_count_is_bounded_to_a_few_polls_and_refetched_quickly() -> None:
    config = consumer_config(settings(KINGEST_KAFKA_POLL_BATCH_SIZE="1000"))
    assert config["queued.min.messages"] == PREFETCH_POLLS * 1000
    assert config["fetch.queue.backoff.ms"] == FETCH_QUEUE_BACKOFF_MS < 1000
    budget = memory_budget(settings(KINGEST_KAFKA_POLL_BATCH_SIZE="1000"), partitions=1)
    assert f"{PREFETCH_POLLS * 1000:,} queued" in budget.describe()
    overridden = consumer_config(settings(KINGEST_RDKAFKA_QUEUED_MIN_MESSAGES="777"))
    assert overridden["queued.min.messages"] == "777"


def test_a_byte_bound_on_batches_caps_them_for_large_messages() -> None:
    # Without the process-wide bound, which would cap both alike.
    count_only = memory_budget(
        settings(**SMALL, KINGEST_BATCH_BYTES=str(1 << 30), KINGEST_IN_FLIGHT_BYTES="0"),
        partitions=4,
        message_bytes=100_000,
    )
    capped = memory_budget(
        settings(**SMALL, KINGEST_BATCH_BYTES="1048576", KINGEST_IN_FLIGHT_BYTES="0"),
        partitions=4,
        message_bytes=100_000,
    )
    # RowBatch counts 700 B + twice the payload per row: 1 MiB closes a batch at its 6th
    # row of 100 kB, so a batch holds at most 6 + 99 rows instead of 500 + 99.
    assert term(capped, "open batches") * 599 == term(count_only, "open batches") * 105
    assert capped.total_bytes < count_only.total_bytes


def test_the_unacknowledged_bounds_default_to_what_the_pipeline_holds_for_a_partition() -> None:
    # 0 (the default): a full mailbox and a poll, then the open batch, the writers' queue
    # and two batches per writer, each a batch and a poll: never reached in steady state.
    messages, nbytes = partition_unacked_bounds(settings(**SMALL))
    assert messages == 2000 + 100 + (3 + 2 * 2 + 1) * (500 + 100)
    assert nbytes == 1048576 + (3 + 2 * 2 + 1) * 8 * MIB
    explicit = settings(
        **SMALL,
        KINGEST_PARTITION_UNACKED_MESSAGES="700",
        KINGEST_PARTITION_UNACKED_BYTES="300000",
    )
    assert partition_unacked_bounds(explicit) == (700, 300000)


def test_a_tighter_unacknowledged_bound_caps_the_mailboxes() -> None:
    default = memory_budget(settings(**SMALL), partitions=4, message_bytes=1000)
    assert term(default, "partition mailboxes") == (4 * 1049 + 100) * (
        1000 + PYTHON_MESSAGE_OVERHEAD
    )
    by_count = memory_budget(
        settings(**SMALL, KINGEST_PARTITION_UNACKED_MESSAGES="700"),
        partitions=4,
        message_bytes=1000,
    )
    assert term(by_count, "partition mailboxes") == (4 * 700 + 100) * (
        1000 + PYTHON_MESSAGE_OVERHEAD
    )
    by_bytes = memory_budget(
        settings(**SMALL, KINGEST_PARTITION_UNACKED_BYTES="300000"),
        partitions=4,
        message_bytes=1000,
    )
    assert term(by_bytes, "partition mailboxes") == (4 * 300 + 100) * (
        1000 + PYTHON_MESSAGE_OVERHEAD
    )


def test_the_process_in_flight_bound_caps_what_the_stages_hold_together() -> None:
    # 8 partitions of 1000-byte messages at the defaults: the stages alone would allow
    # hundreds of MiB; 4 MiB in flight (a poll of 5,000 more) caps them together.
    stages = ("partition mailboxes", "open batches", "writer queue", "batches in flight")
    unbounded = memory_budget(settings(KINGEST_IN_FLIGHT_BYTES="0"), 8, message_bytes=1000)
    bounded = memory_budget(settings(KINGEST_IN_FLIGHT_BYTES=str(4 * MIB)), 8, message_bytes=1000)
    assert term(unbounded, "in-flight bound") == 0
    python_message = 1000 + PYTHON_MESSAGE_OVERHEAD
    written_row = python_message + ROW_OVERHEAD + 1000 + 2 * (ENCODED_ROW_OVERHEAD + 1000)
    messages = -(-4 * MIB // python_message) + 5000
    assert sum(term(bounded, name) for name in (*stages, "in-flight bound")) == (
        messages * written_row
    )
    assert f"{messages:,} messages" in bounded.describe()
    assert bounded.total_bytes < unbounded.total_bytes
    # A bound larger than the stages allow changes nothing.
    loose = memory_budget(settings(KINGEST_IN_FLIGHT_BYTES=str(1 << 40)), 8, message_bytes=1000)
    assert term(loose, "in-flight bound") == 0
    assert loose.total_bytes == unbounded.total_bytes
