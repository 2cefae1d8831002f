"""Dead letters: messages kingest cannot store, kept with the reason, and brought back.

Contract: a dead letter is the original key, value and headers plus why and where it
failed (stage, class, message, SQLSTATE, source coordinates). It goes to the
``kingest.dead_letters`` table in the writer's transaction and/or to the dead-letter
topic (:class:`DeadLetterPublisher`: a publication that fails says which dead letters and
why, :class:`DeadLetterPublishError`). Stored dead letters are listed, inspected and
replayed to the source topic (:func:`replay`), marked so that a replayed event is never
stored twice.

* :mod:`kingest.deadletters.publisher`: the dead-letter topic (headers, publication);
* :mod:`kingest.deadletters.stored`: reading, filtering, inspecting and replaying the
  table's dead letters (the logic of ``kingest dlq``).
"""

from __future__ import annotations

from kingest.deadletters.publisher import (
    DeadLetterPublisher,
    DeadLetterPublishError,
    PublishFailure,
)
from kingest.deadletters.stored import (
    DeadLetterFilter,
    DlqError,
    DlqInputError,
    ReplayPlan,
    ReplaySummary,
    StoredDeadLetter,
    count_to_replay,
    get_dead_letter,
    hexdump,
    judge_now,
    list_dead_letters,
    parse_reference,
    parse_time,
    replay,
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
