"""Contiguous acknowledgement tracking: the committable offset never passes a gap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.pipeline.offsets import OffsetRangeError, PartitionOffsets


def test_nothing_committable_before_the_first_ack() -> None:
    offsets = PartitionOffsets()
    offsets.register(0, 9)
    assert offsets.committable is None
    assert offsets.oldest_pending == 0
    assert not offsets.drained


def test_out_of_order_acks_commit_only_the_contiguous_prefix() -> None:
    offsets = PartitionOffsets()
    for first in (0, 10, 20):
        offsets.register(first, first + 9)
    assert offsets.ack(10)
    assert offsets.committable is None
    assert offsets.ack(0)
    assert offsets.committable == 20
    assert offsets.ack(20)
    assert offsets.committable == 30
    assert offsets.drained


def test_gaps_between_ranges_are_allowed() -> None:
    # Compacted topics and transaction markers leave holes in a partition's offsets.
    offsets = PartitionOffsets()
    offsets.register(5, 7)
    offsets.register(12, 12)
    offsets.ack(5)
    assert offsets.committable == 8
    offsets.ack(12)
    assert offsets.committable == 13


def test_unknown_and_repeated_acks_change_nothing() -> None:
    offsets = PartitionOffsets()
    offsets.register(0, 4)
    assert not offsets.ack(3)
    assert offsets.ack(0)
    assert not offsets.ack(0)
    assert offsets.committable == 5


@pytest.mark.parametrize(("first", "last"), [(-1, 3), (5, 4)])
def test_invalid_ranges_are_rejected(first: int, last: int) -> None:
    with pytest.raises(OffsetRangeError):
        PartitionOffsets().register(first, last)


def test_ranges_must_follow_each_other() -> None:
    offsets = PartitionOffsets()
    offsets.register(10, 19)
    with pytest.raises(OffsetRangeError):
        offsets.register(15, 30)
    with pytest.raises(OffsetRangeError):
        offsets.register(0, 5)


@st.composite
def registered_ranges(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Increasing, non-overlapping ranges with random sizes and gaps."""
    ranges = []
    offset = draw(st.integers(0, 1000))
    for _ in range(draw(st.integers(1, 40))):
        offset += draw(st.integers(0, 3))  # gap
        size = draw(st.integers(1, 50))
        ranges.append((offset, offset + size - 1))
        offset += size
    return ranges


@given(data=st.data(), ranges=registered_ranges())
def test_committable_is_one_past_the_longest_acked_prefix(
    data: st.DataObject, ranges: list[tuple[int, int]]
) -> None:
    offsets = PartitionOffsets()
    for first, last in ranges:
        offsets.register(first, last)
    order = data.draw(st.permutations(range(len(ranges))))
    acked: set[int] = set()
    previous: int | None = None
    for index in order:
        # Acknowledge some ranges twice, as a redelivered completion would.
        offsets.ack(ranges[index][0])
        if data.draw(st.booleans()):
            offsets.ack(ranges[index][0])
        acked.add(index)
        prefix = 0
        while prefix < len(ranges) and prefix in acked:
            prefix += 1
        expected = ranges[prefix - 1][1] + 1 if prefix else None
        assert offsets.committable == expected
        # Invariant 1 (docs/design.md): everything below the committable offset is acknowledged.
        if offsets.committable is not None:
            below = [i for i, (_, last) in enumerate(ranges) if last < offsets.committable]
            assert set(below) <= acked
        # Monotonic: the position never moves back.
        if previous is not None:
            assert offsets.committable is not None
            assert offsets.committable >= previous
        previous = offsets.committable
    assert offsets.drained
    assert offsets.committable == ranges[-1][1] + 1
