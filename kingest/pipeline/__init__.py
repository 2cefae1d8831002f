"""The pipeline: Kafka messages in, idempotent PostgreSQL rows out, offsets committed.

Contract (the invariants of docs/design.md): one ordered partition actor per assigned
partition turns messages into write batches; a bounded pool of writer actors writes them,
each in one transaction, bisecting to dead-letter only the rows that cannot be written;
the offset committer commits a partition's offset only past a contiguous run of
acknowledged batches, so nothing is committed before it is durable. :class:`Pipeline`
runs the consumer loop that ties them together; :meth:`Pipeline.run` returns a
:class:`RunOutcome`.

* :mod:`kingest.pipeline.consumer`: the consumer loop (assignments, backpressure);
* :mod:`kingest.pipeline.polling`: one poll, taken from the client and split by partition;
* :mod:`kingest.pipeline.commits`: the loop's offset commits (periodic and final);
* :mod:`kingest.pipeline.unacked`: the loop's record of work consumed, not yet durable;
* :mod:`kingest.pipeline.fetching`: the loop's record of fetching (stalled partitions);
* :mod:`kingest.pipeline.resources`: the connection pool, dead-letter producer, close;
* :mod:`kingest.pipeline.partition`: the partition actor;
* :mod:`kingest.pipeline.writer`: the writer actors;
* :mod:`kingest.pipeline.observe`: each actor's one telemetry object (counters, histograms
  and spans behind intention-revealing methods);
* :mod:`kingest.pipeline.committer` and :mod:`kingest.pipeline.offsets`: contiguous
  acknowledgements;
* :mod:`kingest.pipeline.memory`: the memory bound per assignment;
* :mod:`kingest.pipeline.threads`: the actors' thread names, and CPU seconds by role;
* :mod:`kingest.pipeline.messages`: the messages the actors exchange.
"""

from __future__ import annotations

from kingest.pipeline.consumer import Pipeline, RunOutcome
from kingest.pipeline.threads import ROLES as THREAD_ROLES

__all__ = ["THREAD_ROLES", "Pipeline", "RunOutcome"]
