"""The synthetic stream: reproducible, realistic where kingest cares, valid throughout."""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from kingest.dev.synth import WIRE_FORMAT_SCHEMA_ID, SyntheticRecord, SyntheticStream
from kingest.schema.codec import decode_event, split_wire_format
from kingest.schema.v1.events_pb2 import Event, InferenceStatus, RunStatus
from kingest.schema.validate import validate_event

BASE_TIME = 1_760_000_000.0
SAMPLE = 20_000
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")


@pytest.fixture(scope="module")
def records() -> list[SyntheticRecord]:
    return SyntheticStream(seed=7, base_time=BASE_TIME).take(SAMPLE)


@pytest.fixture(scope="module")
def events(records: list[SyntheticRecord]) -> list[Event]:
    return [decode_event(record.value) for record in records]


def test_same_seed_and_base_time_give_the_same_bytes() -> None:
    first = SyntheticStream(seed=3, base_time=BASE_TIME).take(2000)
    second = SyntheticStream(seed=3, base_time=BASE_TIME).take(2000)
    assert first == second


def test_iterating_twice_replays_the_stream() -> None:
    stream = SyntheticStream(seed=3)
    assert stream.take(500) == stream.take(1000)[:500]


def test_different_seeds_give_different_streams() -> None:
    first = SyntheticStream(seed=1, base_time=BASE_TIME).take(100)
    second = SyntheticStream(seed=2, base_time=BASE_TIME).take(100)
    assert {r.event_id for r in first}.isdisjoint(r.event_id for r in second)


def test_framing_share_does_not_change_the_events() -> None:
    plain = SyntheticStream(seed=4, base_time=BASE_TIME, wire_format_share=0.0).take(300)
    framed = SyntheticStream(seed=4, base_time=BASE_TIME, wire_format_share=1.0).take(300)
    assert [decode_event(r.value) for r in plain] == [decode_event(r.value) for r in framed]
    assert all(r.value[0] != 0 for r in plain)
    assert all(split_wire_format(r.value)[:2] == (WIRE_FORMAT_SCHEMA_ID, (0,)) for r in framed)


def test_wire_format_share_is_honoured(records: list[SyntheticRecord]) -> None:
    framed = sum(1 for r in records if r.value[0] == 0)
    assert 0.08 < framed / SAMPLE < 0.12


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_share_outside_unit_interval_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="wire_format_share"):
        SyntheticStream(wire_format_share=share)


def test_every_event_is_valid_and_matches_its_record(
    records: list[SyntheticRecord], events: list[Event]
) -> None:
    for record, event in zip(records, events, strict=True):
        validate_event(event, now=BASE_TIME)
        assert record.event_id == event.event_id
        assert record.event_type == event.WhichOneof("payload")
        assert event.correlation_id
        assert event.source


def test_event_ids_are_unique_uuid4(records: list[SyntheticRecord]) -> None:
    ids = [r.event_id for r in records]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_event_mix(records: list[SyntheticRecord]) -> None:
    shares = {kind: n / SAMPLE for kind, n in Counter(r.event_type for r in records).items()}
    assert 0.57 < shares["inference_completed"] < 0.63
    assert 0.25 < shares["metric_logged"] < 0.45
    # Every kind of event occurs, the rare ones included.
    assert len(shares) == len(Event.DESCRIPTOR.oneofs_by_name["payload"].fields)


def test_occurred_at_starts_at_base_time_and_never_goes_back(events: list[Event]) -> None:
    times = [e.occurred_at.seconds + e.occurred_at.nanos / 1e9 for e in events]
    assert BASE_TIME <= times[0] < BASE_TIME + 1
    assert all(a <= b for a, b in pairwise(times))
    assert times[-1] - times[0] < SAMPLE * 0.001
    assert all(e.occurred_at.nanos % 1000 == 0 for e in events)  # whole microseconds


def test_keys_follow_the_entity(records: list[SyntheticRecord], events: list[Event]) -> None:
    for record, event in zip(records, events, strict=True):
        kind = record.event_type
        payload = getattr(event, kind)
        if kind in {"training_run_started", "training_run_finished", "metric_logged"}:
            expected = payload.run_id
        elif kind == "inference_completed":
            expected = payload.request_id
        else:
            expected = payload.model_name
        assert record.key == expected.encode()


def test_headers(records: list[SyntheticRecord], events: list[Event]) -> None:
    with_correlation = with_traceparent = 0
    for record, event in zip(records, events, strict=True):
        headers = dict(record.headers)
        if "correlation-id" in headers:
            with_correlation += 1
            assert headers["correlation-id"].decode() == event.correlation_id
        if "traceparent" in headers:
            with_traceparent += 1
            match = TRACEPARENT.fullmatch(headers["traceparent"].decode())
            assert match is not None
            assert int(match[1], 16) != 0
            assert int(match[2], 16) != 0
    assert 0.25 < with_correlation / SAMPLE < 0.35
    assert 0.15 < with_traceparent / SAMPLE < 0.25


def test_training_runs_have_a_coherent_lifecycle(events: list[Event]) -> None:
    lifecycle: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        kind = event.WhichOneof("payload")
        if kind in {"training_run_started", "metric_logged", "training_run_finished"}:
            lifecycle[getattr(event, kind).run_id].append(event)
    finished_runs = 0
    statuses: Counter[int] = Counter()
    for run_events in lifecycle.values():
        kinds = [e.WhichOneof("payload") for e in run_events]
        if kinds[0] != "training_run_started" or kinds[-1] != "training_run_finished":
            continue  # cut off by the start or the end of the sample
        finished_runs += 1
        assert len({e.correlation_id for e in run_events}) == 1
        finished = run_events[-1].training_run_finished
        statuses[finished.status] += 1
        assert (finished.status == RunStatus.RUN_STATUS_FAILED) == bool(finished.error_message)
        steps = [e.metric_logged.step for e in run_events[1:-1]]
        assert steps == sorted(steps)
        losses = [e.metric_logged.value for e in run_events[1:-1] if e.metric_logged.key == "loss"]
        if finished.status == RunStatus.RUN_STATUS_SUCCEEDED:
            assert losses[-1] < losses[0]
    assert finished_runs >= 20
    assert statuses[RunStatus.RUN_STATUS_SUCCEEDED] > finished_runs / 2


def test_registered_versions_come_from_successful_runs(events: list[Event]) -> None:
    succeeded = {
        e.training_run_finished.run_id
        for e in events
        if e.WhichOneof("payload") == "training_run_finished"
        and e.training_run_finished.status == RunStatus.RUN_STATUS_SUCCEEDED
    }
    registered = [e for e in events if e.WhichOneof("payload") == "model_version_registered"]
    assert registered
    assert all(e.model_version_registered.run_id in succeeded for e in registered)


def test_inference_looks_like_serving_traffic(events: list[Event]) -> None:
    inferences = [e.inference_completed for e in events if e.HasField("inference_completed")]
    ok = [i for i in inferences if i.status == InferenceStatus.INFERENCE_STATUS_OK]
    assert 0.97 < len(ok) / len(inferences) < 0.995
    llm = [i for i in ok if i.model_name.endswith("-llm")]
    classic = [i for i in ok if not i.model_name.endswith("-llm")]
    assert all(i.input_tokens > 0 and i.output_tokens > 0 for i in llm)
    assert all(i.input_tokens == 0 and i.output_tokens == 0 for i in classic)
    median = sorted(i.latency_ms for i in classic)[len(classic) // 2]
    assert 3.0 < median < 50.0
    llm_median = sorted(i.latency_ms for i in llm)[len(llm) // 2]
    assert llm_median > 10 * median
    failed = [i for i in inferences if i.status != InferenceStatus.INFERENCE_STATUS_OK]
    assert all(i.error_code for i in failed)
    assert len({i.request_id for i in inferences}) == len(inferences)
