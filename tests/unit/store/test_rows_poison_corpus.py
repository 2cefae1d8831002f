"""Every case of the poison corpus through RowBatch: the documented outcome, per case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kingest.store.event_ids import derive_event_id
from kingest.store.rows import RowBatch
from kingest.store.tables import FACT_TABLES
from tests.fakes import FakeRecord
from tests.poison_corpus import CORPUS_NOW, Outcome, PoisonCase, build_corpus, markdown_table

CORPUS = build_corpus()
DOC = Path(__file__).resolve().parents[3] / "docs" / "poison-messages.md"
TOPIC = "poison"
PARTITION = 0


def _records(cases: list[PoisonCase]) -> list[FakeRecord]:
    return [
        FakeRecord(
            case.value,
            offset=offset,
            topic=TOPIC,
            partition=PARTITION,
            key=case.key,
            headers=list(case.headers) or None,
        )
        for offset, case in enumerate(cases)
    ]


@pytest.fixture(scope="module")
def batch() -> RowBatch:
    """The whole corpus in one batch, offset = position in the corpus."""
    rows = RowBatch(now=CORPUS_NOW)
    rows.add_records(_records(CORPUS))
    return rows


def _rows_by_offset(rows: RowBatch) -> dict[int, tuple[str, dict[str, Any]]]:
    return {
        row["kafka_offset"]: (table.name, row) for table in FACT_TABLES for row in rows.rows(table)
    }


def test_case_names_are_unique() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("offset", "case"), list(enumerate(CORPUS)), ids=[case.name for case in CORPUS]
)
def test_case_has_its_documented_outcome_in_a_row_batch(
    batch: RowBatch, offset: int, case: PoisonCase
) -> None:
    rejections = {rejection.offset: rejection for rejection in batch.rejections}
    rows = _rows_by_offset(batch)
    expected = case.expected
    if expected.outcome is Outcome.DEAD_LETTER and expected.stage != "write":
        assert offset not in rows
        rejection = rejections[offset]
        assert (rejection.error_stage, rejection.error_class) == (
            expected.stage,
            expected.error_class,
        ), rejection.error_message
        # The dead letter carries the original message, byte for byte.
        assert (rejection.key, rejection.value, rejection.topic) == (case.key, case.value, TOPIC)
        return
    # Stored, duplicate (PostgreSQL ignores the second copy), or refused only by
    # PostgreSQL: validation lets each of them through as a row.
    assert offset not in rejections, rejections.get(offset)
    table, row = rows[offset]
    assert table == (expected.table or "inferences")
    event_id = case.event_id or derive_event_id(TOPIC, PARTITION, offset)
    assert row["event_id"] == event_id
    if case.stored_column is not None and expected.outcome is Outcome.STORED:
        column, value = case.stored_column
        assert row[column] == value


def test_every_message_is_accounted_for_once(batch: RowBatch) -> None:
    assert len(batch) == len(CORPUS)


def test_the_corpus_covers_every_decode_and_validation_error_class() -> None:
    """Each stable error class of the codec and the validator has a case."""
    classes = {case.expected.error_class for case in CORPUS}
    decode = {"empty_value", "truncated_wire_header", "unknown_message_index", "invalid_protobuf"}
    validate = {
        "missing_payload",
        "invalid_uuid",
        "missing_field",
        "timestamp_out_of_range",
        "too_long",
        "nul_character",
        "unknown_enum",
        "not_finite",
        "out_of_range",
    }
    assert decode | validate <= classes


def test_the_documentation_lists_the_corpus() -> None:
    """docs/poison-messages.md holds the table rendered from the corpus (regenerate with
    ``python -c 'from tests.poison_corpus import *; print(markdown_table(build_corpus()))'``)."""
    assert markdown_table(CORPUS) in DOC.read_text()
