"""A deterministic synthetic stream of the events an ML platform emits.

Used by the benchmarks, the demo and the tests, so it has to look like production
traffic where that matters to kingest (the event mix, the keys that decide partitions,
the ordering of one entity's events, message sizes, headers) and has to be reproducible
(the same seed and base time give the same bytes, so a test can compare what it produced
with what was stored).

The simulation keeps a small model catalogue and a handful of concurrent training runs:

* a **training run** starts, logs metrics step by step (loss falling, accuracy rising,
  a cosine learning-rate schedule) and finishes: mostly succeeded, some failed with an
  error message, some cancelled. Its events share the run's correlation id and are keyed
  by the run id, so they land on one partition in order;
* most successful runs lead to a **model version registration** and an **evaluation**
  (same correlation id as the run); a passed evaluation starts a **deployment** flow
  (staging, then a canary share, then prod; one correlation id per rollout). These are
  keyed by the model name;
* **inference** is about 60 % of all events: LLMs with token counts and latency that
  grows with the output, classic models with millisecond latency, a few errors and
  timeouts; the version served follows the deployments (canary traffic included). Each
  request is its own flow, keyed by its request id;
* now and then a monitor reports **data drift** on a deployed model.

Every event has a UUIDv4 ``event_id`` drawn from the seeded generator. ``occurred_at``
starts at ``base_time`` and advances 0.5 ms per event (a platform emitting 2,000 events
per second), so a million events span about eight minutes after ``base_time``.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

from kingest.schema import encode_event, event_type
from kingest.schema.v1.events_pb2 import (
    DataDriftDetected,
    DriftSeverity,
    EvaluationCompleted,
    Event,
    InferenceCompleted,
    InferenceStatus,
    MetricLogged,
    ModelDeployed,
    ModelVersionRegistered,
    RunStatus,
    TrainingRunFinished,
    TrainingRunStarted,
)

__all__ = ["WIRE_FORMAT_SCHEMA_ID", "SyntheticRecord", "SyntheticStream"]

#: Schema id written into the values framed in the Confluent wire format.
WIRE_FORMAT_SCHEMA_ID: Final = 1
#: Simulated time between two consecutive events.
EVENT_SPACING_SECONDS: Final = 0.0005

_INFERENCE_SHARE: Final = 0.60
_DRIFT_SHARE: Final = 0.002
#: Share of draws that emit a pending registry/evaluation/rollout event, if any is queued
#: (more than the runs create, so the queue never grows).
_FOLLOW_UP_SHARE: Final = 0.05
_CORRELATION_HEADER_SHARE: Final = 0.3
_TRACEPARENT_SHARE: Final = 0.2
_CONCURRENT_RUNS: Final = 6

# Enum members, looked up once: attribute access on the enum wrappers is slow.
_INFERENCE_STATUS_OK: Final = InferenceStatus.INFERENCE_STATUS_OK
_INFERENCE_STATUS_ERROR: Final = InferenceStatus.INFERENCE_STATUS_ERROR
_INFERENCE_STATUS_TIMEOUT: Final = InferenceStatus.INFERENCE_STATUS_TIMEOUT
_DRIFT_SEVERITY_LOW: Final = DriftSeverity.DRIFT_SEVERITY_LOW
_DRIFT_SEVERITY_MEDIUM: Final = DriftSeverity.DRIFT_SEVERITY_MEDIUM
_DRIFT_SEVERITY_HIGH: Final = DriftSeverity.DRIFT_SEVERITY_HIGH
_RUN_STATUS_SUCCEEDED: Final = RunStatus.RUN_STATUS_SUCCEEDED
_RUN_STATUS_FAILED: Final = RunStatus.RUN_STATUS_FAILED
_RUN_STATUS_CANCELLED: Final = RunStatus.RUN_STATUS_CANCELLED

_UUID_VERSION_MASK: Final = ~((0xF << 76) | (0x3 << 62))
_UUID_V4_BITS: Final = (0x4 << 76) | (0x2 << 62)


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    """One Kafka record to produce: the key decides the partition, the value is the event."""

    key: bytes
    value: bytes
    event_id: str
    event_type: str
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class _Model:
    """A model of the catalogue and its rollout state, which inference follows."""

    name: str
    is_llm: bool
    framework: str
    dataset: str
    artifact_file: str
    median_latency_ms: float
    features: tuple[str, ...]
    latest_version: int = 3
    prod_version: str = "3"
    canary_version: str = ""
    canary_percent: float = 0.0


def _catalogue() -> list[_Model]:
    # fmt: off
    return [
        _Model("support-assistant-llm", True, "pytorch", "support-tickets-2025q3",
               "model.safetensors", 0.0, ("prompt_length", "language", "topic")),
        _Model("code-review-llm", True, "pytorch", "pull-requests-v7",
               "model.safetensors", 0.0, ("diff_size", "language", "repo_age_days")),
        _Model("doc-summarizer-llm", True, "jax", "internal-docs-2025",
               "checkpoint.orbax", 0.0, ("document_length", "language")),
        _Model("fraud-detector", False, "xgboost", "card-transactions-90d",
               "model.ubj", 6.0, ("amount", "merchant_category", "hour_of_day")),
        _Model("churn-predictor", False, "xgboost", "subscriptions-2025q2",
               "model.ubj", 9.0, ("tenure_days", "plan", "support_contacts")),
        _Model("product-ranker", False, "pytorch", "clickstream-30d",
               "model.onnx", 22.0, ("query_length", "session_depth", "device")),
        _Model("image-moderation-vit", False, "jax", "moderation-images-v3",
               "checkpoint.orbax", 38.0, ("image_brightness", "aspect_ratio")),
        _Model("search-embedder", False, "pytorch", "query-logs-60d",
               "model.onnx", 14.0, ("query_length", "language")),
    ]
    # fmt: on


_OWNERS: Final = (
    "alice@ml.example.com",
    "bhavin@ml.example.com",
    "chen@ml.example.com",
    "svc-retrain-pipeline",
    "svc-nightly-finetune",
)
_FAILURE_MESSAGES: Final = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 3; 79.15 GiB total capacity)",
    "NCCL watchdog timeout: collective ALLREDUCE ran for 1800000 ms",
    "dataset shard 17 failed checksum verification",
    "loss became NaN at step {step}; gradient norm 3.4e+09",
    "worker 5 exited with code 137 (OOMKilled)",
)
_INFERENCE_ERRORS: Final = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE")
_EVAL_DATASETS: Final = ("holdout-2025q3", "golden-set-v4", "adversarial-v2")
_DRIFT_METHODS: Final = (("psi", 0.2), ("ks", 0.1), ("wasserstein", 0.05))


@dataclass(slots=True)
class _Flow:
    """What the events of one logical operation share."""

    correlation_id: str
    trace_id: int


@dataclass(slots=True)
class _Run:
    """A training run in progress."""

    run_id: str
    model: _Model
    flow: _Flow
    source: str
    total_steps: int
    steps_per_epoch: int
    stop_at: int  # the step at which it ends (earlier than total_steps if it fails)
    outcome: RunStatus
    initial_loss: float
    final_accuracy: float
    learning_rate: float
    step: int = 0
    pending_metrics: list[str] = field(default_factory=list)
    last_loss: float = 0.0
    best_accuracy: float = 0.0
    started: bool = False


# A follow-up event of some flow: (key, flow, source, builds the payload-bearing event).
_FollowUp = tuple[str, _Flow, str, Callable[[], Event]]


class _Simulation:
    """Generates the events one after the other; all randomness comes from one seeded RNG."""

    def __init__(self, seed: int, base_time: float) -> None:
        self._rng = random.Random(seed)
        self._clock = base_time
        self._models = _catalogue()
        # Inference traffic is skewed towards a few busy models, as in production.
        weights = (6, 2, 2, 8, 2, 6, 3, 5)
        self._traffic = [m for m, w in zip(self._models, weights, strict=True) for _ in range(w)]
        self._runs: list[_Run] = []
        self._follow_ups: deque[_FollowUp] = deque()

    # -- identifiers ---------------------------------------------------------------------

    def uuid4(self) -> str:
        value = (self._rng.getrandbits(128) & _UUID_VERSION_MASK) | _UUID_V4_BITS
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def new_flow(self, correlation_id: str | None = None) -> _Flow:
        trace_id = self._rng.getrandbits(128) or 1
        return _Flow(correlation_id or self.uuid4(), trace_id)

    # -- the event mix -------------------------------------------------------------------

    def next_event(self) -> tuple[str, _Flow, Event]:
        """The next ``(key, flow, event)``; ``occurred_at`` is set by the caller."""
        self._clock += EVENT_SPACING_SECONDS
        draw = self._rng.random()
        if draw < _INFERENCE_SHARE:
            return self._inference()
        if draw < _INFERENCE_SHARE + _DRIFT_SHARE:
            return self._drift()
        if self._follow_ups and draw < _INFERENCE_SHARE + _DRIFT_SHARE + _FOLLOW_UP_SHARE:
            key, flow, source, build = self._follow_ups.popleft()
            event = build()
            event.source = source
            return key, flow, event
        return self._advance_run()

    @property
    def clock(self) -> float:
        return self._clock

    # -- inference -----------------------------------------------------------------------

    def _inference(self) -> tuple[str, _Flow, Event]:
        rng = self._rng
        model = self._traffic[int(rng.random() * len(self._traffic))]
        environment, version = "prod", model.prod_version
        if model.canary_version and rng.random() * 100.0 < model.canary_percent:
            environment, version = "canary", model.canary_version
        request_id = f"req-{rng.getrandbits(64):016x}"
        outcome = rng.random()
        input_tokens = output_tokens = 0
        error_code = ""
        if outcome < 0.985:
            status = _INFERENCE_STATUS_OK
            if model.is_llm:
                input_tokens = min(int(rng.lognormvariate(6.4, 0.8)), 32_000)
                output_tokens = min(int(rng.lognormvariate(5.2, 0.7)) + 1, 4_096)
                # Time to first token, then a roughly constant time per generated token.
                latency = rng.lognormvariate(5.5, 0.5) + output_tokens * rng.uniform(14.0, 24.0)
            else:
                latency = model.median_latency_ms * rng.lognormvariate(0.0, 0.45)
        elif outcome < 0.996:
            status = _INFERENCE_STATUS_ERROR
            error_code = _INFERENCE_ERRORS[int(rng.random() * len(_INFERENCE_ERRORS))]
            latency = rng.uniform(1.0, 50.0)
        else:
            status = _INFERENCE_STATUS_TIMEOUT
            error_code = "DEADLINE_EXCEEDED"
            latency = (30_000.0 if model.is_llm else 1_000.0) + rng.uniform(0.0, 5.0)
        event = Event(
            source=f"serving/gateway-{int(rng.random() * 6)}",
            inference_completed=InferenceCompleted(
                request_id=request_id,
                model_name=model.name,
                model_version=version,
                environment=environment,
                latency_ms=round(latency, 3),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                status=status,
                error_code=error_code,
            ),
        )
        return request_id, self.new_flow(request_id), event

    # -- monitoring ----------------------------------------------------------------------

    def _drift(self) -> tuple[str, _Flow, Event]:
        rng = self._rng
        model = self._models[int(rng.random() * len(self._models))]
        method, threshold = _DRIFT_METHODS[int(rng.random() * len(_DRIFT_METHODS))]
        ratio = 1.0 + rng.expovariate(1.2)
        severity = (
            _DRIFT_SEVERITY_LOW
            if ratio < 1.5
            else _DRIFT_SEVERITY_MEDIUM
            if ratio < 2.5
            else _DRIFT_SEVERITY_HIGH
        )
        event = Event(
            source="monitor/drift-watch",
            data_drift_detected=DataDriftDetected(
                model_name=model.name,
                model_version=model.prod_version,
                feature=model.features[int(rng.random() * len(model.features))],
                method=method,
                score=round(threshold * ratio, 5),
                threshold=threshold,
                severity=severity,
            ),
        )
        return model.name, self.new_flow(), event

    # -- training runs -------------------------------------------------------------------

    def _advance_run(self) -> tuple[str, _Flow, Event]:
        if len(self._runs) < _CONCURRENT_RUNS:
            self._runs.append(self._plan_run())
        rng = self._rng
        run = self._runs[int(rng.random() * len(self._runs))]
        if not run.started:
            run.started = True
            return run.run_id, run.flow, self._run_started(run)
        if not run.pending_metrics:
            if run.step >= run.stop_at:
                self._runs.remove(run)
                return run.run_id, run.flow, self._run_finished(run)
            run.step += 1
            run.pending_metrics.append("loss")
            if run.step % 5 == 0:
                run.pending_metrics.append("accuracy")
            if run.step % 10 == 0:
                run.pending_metrics.append("learning_rate")
        return run.run_id, run.flow, self._metric(run, run.pending_metrics.pop())

    def _plan_run(self) -> _Run:
        rng = self._rng
        model = self._models[int(rng.random() * len(self._models))]
        total_steps = rng.randint(20, 150)
        outcome_draw = rng.random()
        if outcome_draw < 0.85:
            outcome, stop_at = _RUN_STATUS_SUCCEEDED, total_steps
        elif outcome_draw < 0.95:
            outcome, stop_at = _RUN_STATUS_FAILED, rng.randint(1, total_steps)
        else:
            outcome, stop_at = _RUN_STATUS_CANCELLED, rng.randint(1, total_steps)
        return _Run(
            run_id=f"{rng.getrandbits(128):032x}",
            model=model,
            flow=self.new_flow(),
            source=f"trainer/gpu-node-{rng.randint(1, 48):02d}",
            total_steps=total_steps,
            steps_per_epoch=rng.choice((10, 25, 50)),
            stop_at=stop_at,
            outcome=outcome,
            initial_loss=rng.uniform(2.0, 7.0),
            final_accuracy=rng.uniform(0.78, 0.97),
            learning_rate=rng.choice((1e-4, 3e-4, 1e-3)),
        )

    def _run_started(self, run: _Run) -> Event:
        rng = self._rng
        model = run.model
        return Event(
            source=run.source,
            training_run_started=TrainingRunStarted(
                run_id=run.run_id,
                experiment=f"{model.name}/{model.dataset}",
                model_name=model.name,
                framework=model.framework,
                dataset=model.dataset,
                owner=rng.choice(_OWNERS),
                gpu_count=rng.choice((1, 2, 4, 8, 8, 16)),
                hyperparameters={
                    "learning_rate": f"{run.learning_rate:g}",
                    "batch_size": str(rng.choice((32, 64, 128, 256))),
                    "optimizer": rng.choice(("adamw", "adafactor", "sgd")),
                    "max_steps": str(run.total_steps),
                    "seed": str(rng.getrandbits(16)),
                },
            ),
        )

    def _metric(self, run: _Run, key: str) -> Event:
        rng = self._rng
        progress = run.step / run.total_steps
        if key == "loss":
            value = run.initial_loss * math.exp(-3.0 * progress) + 0.05 + rng.gauss(0.0, 0.02)
            value = max(value, 0.001)
            run.last_loss = value
        elif key == "accuracy":
            value = run.final_accuracy * (1.0 - math.exp(-4.0 * progress)) + rng.gauss(0.0, 0.01)
            value = min(max(value, 0.0), 1.0)
            run.best_accuracy = max(run.best_accuracy, value)
        else:  # cosine learning-rate schedule
            value = run.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        return Event(
            source=run.source,
            metric_logged=MetricLogged(
                run_id=run.run_id,
                key=key,
                value=round(value, 6),
                step=run.step,
                epoch=run.step // run.steps_per_epoch,
            ),
        )

    def _run_finished(self, run: _Run) -> Event:
        rng = self._rng
        error_message = ""
        if run.outcome == _RUN_STATUS_FAILED:
            template = _FAILURE_MESSAGES[int(rng.random() * len(_FAILURE_MESSAGES))]
            error_message = template.format(step=run.step)
        summary = {"final_loss": round(run.last_loss, 6), "steps": float(run.step)}
        if run.best_accuracy:
            summary["best_accuracy"] = round(run.best_accuracy, 6)
        if run.outcome == _RUN_STATUS_SUCCEEDED and rng.random() < 0.8:
            self._schedule_registration(run)
        return Event(
            source=run.source,
            training_run_finished=TrainingRunFinished(
                run_id=run.run_id,
                status=run.outcome,
                duration_seconds=round(run.step * rng.uniform(2.0, 30.0), 3),
                summary_metrics=summary,
                error_message=error_message,
            ),
        )

    # -- registry, evaluation, rollout ---------------------------------------------------

    def _schedule_registration(self, run: _Run) -> None:
        rng = self._rng
        model = run.model
        model.latest_version += 1
        version = str(model.latest_version)
        size = rng.lognormvariate(23.4 if model.is_llm else 16.0, 0.4)
        registered = ModelVersionRegistered(
            model_name=model.name,
            version=version,
            run_id=run.run_id,
            artifact_uri=f"s3://ml-artifacts/{model.name}/v{version}/{model.artifact_file}",
            size_bytes=int(size),
            tags={
                "framework": model.framework,
                "dataset": model.dataset,
                "git_sha": f"{rng.getrandbits(28):07x}",
            },
        )
        self._follow_ups.append(
            (
                model.name,
                run.flow,
                "registry/model-registry",
                lambda: Event(model_version_registered=registered),
            )
        )
        self._follow_ups.append(
            (model.name, run.flow, "eval/harness", lambda: self._evaluation(model, version))
        )

    def _evaluation(self, model: _Model, version: str) -> Event:
        rng = self._rng
        quality = rng.uniform(0.7, 0.97)
        if model.is_llm:
            metrics = {
                "exact_match": round(quality - 0.2, 4),
                "rouge_l": round(quality - 0.1, 4),
                "toxicity_rate": round(rng.uniform(0.0, 0.02), 5),
            }
        else:
            metrics = {
                "accuracy": round(quality, 4),
                "f1": round(quality - rng.uniform(0.0, 0.05), 4),
                "auc": round(min(quality + 0.03, 0.999), 4),
            }
        passed = quality >= 0.75
        if passed:
            self._schedule_rollout(model, version)
        return Event(
            evaluation_completed=EvaluationCompleted(
                evaluation_id=self.uuid4(),
                model_name=model.name,
                model_version=version,
                dataset=rng.choice(_EVAL_DATASETS),
                metrics=metrics,
                passed=passed,
            )
        )

    def _schedule_rollout(self, model: _Model, version: str) -> None:
        flow = self.new_flow()
        canary_percent = self._rng.choice((5.0, 10.0, 20.0))
        for environment, replicas, traffic in (
            ("staging", 1, 100.0),
            ("canary", 2, canary_percent),
            ("prod", 8, 100.0),
        ):
            self._follow_ups.append(
                (
                    model.name,
                    flow,
                    "deployer/rollout-controller",
                    self._deployment(model, version, environment, replicas, traffic),
                )
            )

    def _deployment(
        self, model: _Model, version: str, environment: str, replicas: int, traffic: float
    ) -> Callable[[], Event]:
        def build() -> Event:
            # Inference follows the rollout from the moment its event is emitted.
            if environment == "canary":
                model.canary_version, model.canary_percent = version, traffic
            elif environment == "prod":
                model.prod_version, model.canary_version, model.canary_percent = version, "", 0.0
            return Event(
                model_deployed=ModelDeployed(
                    model_name=model.name,
                    version=version,
                    environment=environment,
                    endpoint=f"https://serving.ml.example.com/{environment}/{model.name}",
                    replicas=replicas + int(self._rng.random() * replicas),
                    traffic_percent=traffic,
                )
            )

        return build


class SyntheticStream:
    """An infinite, reproducible stream of ``SyntheticRecord``.

    Iterating twice gives the same records: the stream is a description, each iterator
    replays it from the start. ``base_time`` (Unix seconds, default: the time of
    construction) is the ``occurred_at`` of the first event. ``wire_format_share`` of
    the values are framed in the Confluent wire format (schema id 1), the rest are
    plain Protobuf.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        wire_format_share: float = 0.1,
        base_time: float | None = None,
    ) -> None:
        if not 0.0 <= wire_format_share <= 1.0:
            raise ValueError(f"wire_format_share must be within [0, 1], got {wire_format_share}")
        self.seed = seed
        self.wire_format_share = wire_format_share
        self.base_time = time.time() if base_time is None else base_time

    def __iter__(self) -> Iterator[SyntheticRecord]:
        simulation = _Simulation(self.seed, self.base_time)
        # Framing and headers draw from their own generator, so changing their shares
        # does not change the events themselves.
        rng = random.Random(f"{self.seed}/envelope")
        chance = rng.random
        wire_share = self.wire_format_share
        while True:
            key, flow, event = simulation.next_event()
            event.event_id = simulation.uuid4()
            event.correlation_id = flow.correlation_id
            seconds, fraction = divmod(simulation.clock, 1.0)
            occurred_at = event.occurred_at
            occurred_at.seconds = int(seconds)
            # Whole microseconds: what a PostgreSQL timestamptz stores, so they round-trip.
            occurred_at.nanos = int(fraction * 1e6) * 1000
            headers: list[tuple[str, bytes]] = []
            if chance() < _CORRELATION_HEADER_SHARE:
                headers.append(("correlation-id", flow.correlation_id.encode()))
            if chance() < _TRACEPARENT_SHARE:
                span_id = rng.getrandbits(64) or 1
                traceparent = f"00-{flow.trace_id:032x}-{span_id:016x}-01"
                headers.append(("traceparent", traceparent.encode()))
            schema_id = WIRE_FORMAT_SCHEMA_ID if chance() < wire_share else None
            yield SyntheticRecord(
                key=key.encode(),
                value=encode_event(event, schema_id=schema_id),
                event_id=event.event_id,
                event_type=event_type(event),
                headers=headers,
            )

    def take(self, n: int) -> list[SyntheticRecord]:
        """The first ``n`` records of the stream."""
        return list(islice(self, n))
