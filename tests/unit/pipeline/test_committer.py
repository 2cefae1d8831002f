"""The offset committer ignores acknowledgements from an assignment it no longer tracks.

A write can finish after its partition was revoked (the drain deadline passed) and even
after the partition was assigned again to this consumer under a new generation, whose
batches may start at the same offset. Such a late acknowledgement must move nothing:
applied to the new tracker it would mark a batch durable that is not (invariant 1
of docs/design.md).
The messages are applied through ``receive`` directly: this is the actor's pure logic.
"""

from __future__ import annotations

from kingest.pipeline.committer import OffsetCommitter
from kingest.pipeline.messages import Ack, Assigned, Register, Released

TP = ("events", 0)


def test_a_late_ack_does_not_move_the_next_assignment_of_the_partition() -> None:
    committer = OffsetCommitter()
    committer.receive(Assigned((TP,), 1))
    committer.receive(Register(TP, 1, 100, 199))
    committer.receive(Released((TP,), 1))  # revoked with batch 100..199 still in flight
    committer.receive(Assigned((TP,), 2))  # assigned again, redelivered from offset 100
    committer.receive(Register(TP, 2, 100, 499))
    committer.receive(Ack(TP, 1, 100))  # the old write finishes now
    assert committer.committable() == {}
    committer.receive(Ack(TP, 2, 100))
    assert committer.committable() == {TP: (2, 500)}


def test_a_late_ack_after_the_partition_left_creates_nothing() -> None:
    committer = OffsetCommitter()
    committer.receive(Assigned((TP,), 1))
    committer.receive(Register(TP, 1, 0, 9))
    committer.receive(Released((TP,), 1))
    committer.receive(Ack(TP, 1, 0))
    assert committer.committable() == {}


def test_releasing_an_old_generation_keeps_the_new_one() -> None:
    # Cooperative rebalancing: the release of generation 1 may be applied after the same
    # partition was assigned again under generation 2; it must not drop the new tracker.
    committer = OffsetCommitter()
    committer.receive(Assigned((TP,), 1))
    committer.receive(Assigned((TP,), 2))
    committer.receive(Released((TP,), 1))
    committer.receive(Register(TP, 2, 0, 9))
    committer.receive(Ack(TP, 2, 0))
    assert committer.committable() == {TP: (2, 10)}


def test_wait_drained_counts_only_the_current_generation() -> None:
    committer = OffsetCommitter()
    committer.receive(Assigned((TP,), 1))
    committer.receive(Register(TP, 1, 0, 9))
    assert not committer.wait_drained([TP], deadline=0)
    committer.receive(Released((TP,), 1))
    committer.receive(Assigned((TP,), 2))
    assert committer.wait_drained([TP], deadline=0)
