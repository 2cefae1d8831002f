"""The bench's arithmetic and case planning (kingest/dev/benchmark.py,
kingest/dev/bench_figures.py, kingest/cli/bench.py)."""

from __future__ import annotations

import pytest
from rich.console import Console

from kingest.cli.bench import render
from kingest.dev import Options, benchmark, parse_sweep
from kingest.dev.bench_figures import TARGETS, median_min_max, percentile, target_checks
from kingest.dev.benchmark import cases


def test_percentiles_are_values_that_occurred_by_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_summary_is_median_min_and_max() -> None:
    assert median_min_max([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert median_min_max([1.0, 4.0])["median"] == 2.5


def test_sweeps_add_one_case_per_value_after_the_default() -> None:
    options = Options(
        partitions=8,
        settings={"KINGEST_BATCH_SIZE": "5000"},
        sweeps=[parse_sweep("partitions=4,16"), parse_sweep("KINGEST_WRITERS=2, 8")],
    )
    found = cases(options)
    assert [case.name for case in found] == [
        "default",
        "partitions=4",
        "partitions=16",
        "KINGEST_WRITERS=2",
        "KINGEST_WRITERS=8",
    ]
    assert [case.partitions for case in found] == [8, 4, 16, 8, 8]
    assert found[3].settings == {"KINGEST_BATCH_SIZE": "5000", "KINGEST_WRITERS": "2"}


@pytest.mark.parametrize("text", ["writers=2", "partitions=0", "KINGEST_WRITERS=", "partitions"])
def test_a_malformed_sweep_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--sweep"):
        parse_sweep(text)


def test_the_table_shows_medians_ranges_ratio_and_latency() -> None:
    def case(rate: float) -> dict[str, object]:
        figures = {
            "events_per_s": rate,
            "seconds": 1.0,
            "cpu_us_per_event": 10.0,
            "peak_rss_mib": 100.0,
            "broker_cpu_us_per_event": 1.5,
            "postgres_cpu_us_per_event": 9.0,
        }
        summary = {key: median_min_max([value]) for key, value in figures.items()}
        return {"runs": [figures], "summary": summary, "ratio_to_baseline": rate / 20_000}

    results = {
        "cases": {"default": case(60_000), "baseline": case(20_000)},
        "latency": {
            "rate": 5000,
            "runs": [
                {"events": 150_000, "p50_ms": 90, "p95_ms": 150, "p99_ms": 180, "max_ms": 240},
                {"events": 150_000, "p50_ms": 95, "p95_ms": 170, "p99_ms": 260, "max_ms": 300},
            ],
        },
    }
    console = Console(width=200, record=True)
    console.print(render(results))
    text = console.export_text()
    assert "60,000 (60,000-60,000)" in text
    assert "3.00" in text
    assert "1.00" in text
    assert "run 1 (150,000 events): p50 90 ms, p95 150 ms, p99 180 ms, max 240 ms" in text
    assert "run 2 (150,000 events): p50 95 ms, p95 170 ms, p99 260 ms, max 300 ms" in text
    # Every target is stated with its figures and verdict (one latency run is over 250 ms).
    assert "target throughput: 3.00 x baseline (bound >= 2): met" in text
    assert "target p99 latency: 180.00, 260.00 ms, every run (bound <= 250): NOT met" in text
    assert "by thread" not in text  # no case logged its CPU by thread


def test_the_caption_shows_kingests_cpu_by_thread_role_per_case() -> None:
    figures = {"events_per_s": 50_000.0, "cpu_us_per_event": 10.0, "peak_rss_mib": 100.0}
    figures |= {"postgres_cpu_us_per_event": 9.0, "broker_cpu_us_per_event": 1.0}
    roles = {"partitions": 5.04, "writers": 2.96, "loop": 1.5, "committer": 0.0}
    figures |= {f"cpu_us_per_event_{role}": value for role, value in roles.items()}
    summary = {key: median_min_max([value]) for key, value in figures.items()}
    results = {"cases": {"default": {"runs": [figures], "summary": summary}}}
    console = Console(width=200, record=True)
    console.print(render(results))
    text = console.export_text()
    line = "default: kingest CPU us/event by thread: partitions 5.0, writers 3.0, loop 1.5"
    assert line + ", committer 0.0" in text


def _summary(**medians: float) -> dict[str, object]:
    return {"summary": {key: median_min_max([value]) for key, value in medians.items()}}


def test_targets_are_ratios_to_the_baseline_of_the_same_bench() -> None:
    results = {
        "cases": {
            "default": _summary(
                events_per_s=80_000,
                cpu_us_per_event=8.0,
                peak_rss_mib=200.0,
                memory_bound_mib=380.0,
            ),
            "baseline": _summary(events_per_s=40_000, cpu_us_per_event=10.0, peak_rss_mib=160.0),
        },
        "latency": {"runs": [{"p99_ms": 240.0}, {"p99_ms": 251.0}, {"p99_ms": 100.0}]},
    }
    checks = {check.target.name: check for check in target_checks(results)}
    assert [check.target for check in checks.values()] == list(TARGETS)
    assert checks["CPU per event"].values == (0.8,)
    assert checks["CPU per event"].met  # the bound itself is met
    assert checks["peak RSS"].values == (1.25,)
    assert checks["peak RSS"].met
    assert checks["throughput"].values == (2.0,)
    assert checks["throughput"].met
    assert checks["memory bound"].values == (1.9,)
    assert checks["memory bound"].met
    # One run over the bound fails the latency target, whatever the others measured.
    assert checks["p99 latency"].values == (240.0, 251.0, 100.0)
    assert not checks["p99 latency"].met


def test_targets_need_the_baseline_and_miss_by_the_smallest_margin() -> None:
    assert target_checks({"cases": {"default": _summary(events_per_s=1.0)}}) == []
    results = {
        "cases": {
            "default": _summary(events_per_s=79_999, cpu_us_per_event=8.01, peak_rss_mib=201.0),
            "baseline": _summary(events_per_s=40_000, cpu_us_per_event=10.0, peak_rss_mib=160.0),
        }
    }
    checks = target_checks(results)
    # Without a logged bound or a latency case those targets are not claimed.
    assert [check.target.name for check in checks] == ["CPU per event", "peak RSS", "throughput"]
    assert not any(check.met for check in checks)


class PacedClock:
    """The paced producer's clock and client: time passes only while it polls."""

    def __init__(self) -> None:
        self.now = 0.0
        self.polls: list[float] = []
        self.produced: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        self.now += timeout
        return 0

    def produce(self, *args: object, **kwargs: object) -> None:
        self.produced.append(self.now)

    def flush(self, timeout: float) -> int:
        return 0


def test_the_paced_producer_waits_in_whole_milliseconds_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At 5,000/s the messages are 0.2 ms apart: a poll of less than a millisecond is a
    # poll(0), and a loop of those spun a core the measured processes needed.
    clock = PacedClock()
    monkeypatch.setattr(benchmark.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(benchmark, "Producer", lambda config: clock)
    benchmark._produce_paced("broker:9092", "t", 5000, 0.1, lambda *_: None, label="l")
    assert len(clock.produced) == 500
    assert min(clock.polls) >= 0.001
    assert len(clock.polls) <= 100  # one wait per millisecond at most
    # Every message is sent when due or up to a millisecond early, never later.
    due = [index / 5000 for index in range(500)]
    assert all(-0.001 < sent - at <= 1e-9 for sent, at in zip(clock.produced, due, strict=True))
