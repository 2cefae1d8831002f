"""What the consumer loop consumed and does not yet know durable, per partition.

The loop records each poll of a partition when it hands the messages to the
partition's actor, and forgets whole polls once the committer reports their last
offset durable. The totals bound a partition's unacknowledged work (backpressure) and
the oldest poll's time is the unacknowledged age the metrics and health checks show;
both are read from other threads without a lock (see :func:`oldest_times`).
"""

from __future__ import annotations

from collections import deque

from kingest.kafka import TopicPartitionKey

__all__ = ["Unacknowledged", "oldest_times", "pending_messages"]


class Unacknowledged:
    """One partition's polls consumed and not yet known durable, oldest first: each poll's
    (last offset, time consumed, messages, bytes), the totals of messages and bytes, and
    the last offset handed to the partition's actor (kept when its poll is forgotten).

    Polls are forgotten whole once their last offset is committable, so the totals
    overstate what is unacknowledged by less than one poll of the partition.
    """

    __slots__ = ("dispatched", "messages", "nbytes", "polls")

    def __init__(self) -> None:
        self.polls: deque[tuple[int, float, int, int]] = deque()
        self.messages = 0
        self.nbytes = 0
        #: The last offset handed to the partition's actor (-1: none yet); the actor's
        #: ``received_offset`` behind it is its mailbox backlog.
        self.dispatched = -1

    def add(self, last: int, at: float, messages: int, nbytes: int) -> None:
        self.dispatched = last
        self.polls.append((last, at, messages, nbytes))
        self.messages += messages
        self.nbytes += nbytes

    def forget_below(self, offset: int) -> None:
        """Drop the polls whose messages are all below ``offset`` (now durable)."""
        polls = self.polls
        while polls and polls[0][0] < offset:
            _, _, messages, nbytes = polls.popleft()
            self.messages -= messages
            self.nbytes -= nbytes


def oldest_times(
    unacked: dict[TopicPartitionKey, Unacknowledged],
) -> dict[TopicPartitionKey, float]:
    """When each partition's oldest unacknowledged message was consumed. Called from
    other threads while the loop pops from the deques: an emptied one has none."""
    oldest = {}
    for tp, pending in unacked.items():
        try:
            oldest[tp] = pending.polls[0][1]
        except IndexError:
            continue
    return oldest


def pending_messages(pending: Unacknowledged | None) -> int:
    """Messages consumed and not yet known durable (read from other threads: a total
    the loop updates in one assignment)."""
    return 0 if pending is None else max(0, pending.messages)
