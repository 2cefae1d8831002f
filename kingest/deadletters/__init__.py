"""Dead letters: messages kingest cannot store, kept with the reason, and brought back.

Contract: a dead letter is the original key, value and headers plus why and where it
failed (stage, class, message, SQLSTATE, source coordinates). It goes to the
``kingest.dead_letters`` table in the writer's transaction and/or to the dead-letter
topic (:class:`DeadLetterPublisher`: a publication that fails says which dead letters and
why, :class:`DeadLetterPublishError`). Stored dead letters are listed, inspected and
replayed to the source topic (:func:`replay`), marked so that a replayed event is never
stored twice.

* :mod:`kingest.deadletters.publisher`: the dead-letter topic (headers, publication);
* :mod:`kingest.deadletters.stored`: the stored dead letters (table and topic), the
  user's times, references and filters, listing and summaries;
* :mod:`kingest.deadletters.inspect`: hex dumps, and what the pipeline would do with a
  dead letter today (:func:`judge_now`);
* :mod:`kingest.deadletters.replay`: replaying to the source topic or straight through
  the pipeline (:class:`ReplayPlan`, :func:`replay`).

Together they are the logic of ``kingest dlq``.
"""

from __future__ import annotations

from kingest.deadletters.inspect import hexdump, judge_now
from kingest.deadletters.publisher import (
    DeadLetterPublisher,
    DeadLetterPublishError,
    PublishFailure,
)
from kingest.deadletters.replay import ReplayPlan, ReplaySummary, count_to_replay, replay
from kingest.deadletters.stored import (
    DeadLetterFilter,
    DlqError,
    DlqInputError,
    StoredDeadLetter,
    get_dead_letter,
    list_dead_letters,
    parse_reference,
    parse_time,
    summarize,
)

__all__ = [
    "DeadLetterFilter",
    "DeadLetterPublishError",
    "DeadLetterPublisher",
    "DlqError",
    "DlqInputError",
    "PublishFailure",
    "ReplayPlan",
    "ReplaySummary",
    "StoredDeadLetter",
    "count_to_replay",
    "get_dead_letter",
    "hexdump",
    "judge_now",
    "list_dead_letters",
    "parse_reference",
    "parse_time",
    "replay",
    "summarize",
]
