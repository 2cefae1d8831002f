import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kingest.options.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELLED: _ClassVar[RunStatus]

class InferenceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INFERENCE_STATUS_UNSPECIFIED: _ClassVar[InferenceStatus]
    INFERENCE_STATUS_OK: _ClassVar[InferenceStatus]
    INFERENCE_STATUS_ERROR: _ClassVar[InferenceStatus]
    INFERENCE_STATUS_TIMEOUT: _ClassVar[InferenceStatus]

class DriftSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_SEVERITY_UNSPECIFIED: _ClassVar[DriftSeverity]
    DRIFT_SEVERITY_LOW: _ClassVar[DriftSeverity]
    DRIFT_SEVERITY_MEDIUM: _ClassVar[DriftSeverity]
    DRIFT_SEVERITY_HIGH: _ClassVar[DriftSeverity]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELLED: RunStatus
INFERENCE_STATUS_UNSPECIFIED: InferenceStatus
INFERENCE_STATUS_OK: InferenceStatus
INFERENCE_STATUS_ERROR: InferenceStatus
INFERENCE_STATUS_TIMEOUT: InferenceStatus
DRIFT_SEVERITY_UNSPECIFIED: DriftSeverity
DRIFT_SEVERITY_LOW: DriftSeverity
DRIFT_SEVERITY_MEDIUM: DriftSeverity
DRIFT_SEVERITY_HIGH: DriftSeverity

class Event(_message.Message):
    __slots__ = ("event_id", "correlation_id", "occurred_at", "source", "training_run_started", "training_run_finished", "metric_logged", "model_version_registered", "model_deployed", "inference_completed", "evaluation_completed", "data_drift_detected")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_RUN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_RUN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    METRIC_LOGGED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    MODEL_DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    DATA_DRIFT_DETECTED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    correlation_id: str
    occurred_at: _timestamp_pb2.Timestamp
    source: str
    training_run_started: TrainingRunStarted
    training_run_finished: TrainingRunFinished
    metric_logged: MetricLogged
    model_version_registered: ModelVersionRegistered
    model_deployed: ModelDeployed
    inference_completed: InferenceCompleted
    evaluation_completed: EvaluationCompleted
    data_drift_detected: DataDriftDetected
    def __init__(self, event_id: _Optional[str] = ..., correlation_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., training_run_started: _Optional[_Union[TrainingRunStarted, _Mapping]] = ..., training_run_finished: _Optional[_Union[TrainingRunFinished, _Mapping]] = ..., metric_logged: _Optional[_Union[MetricLogged, _Mapping]] = ..., model_version_registered: _Optional[_Union[ModelVersionRegistered, _Mapping]] = ..., model_deployed: _Optional[_Union[ModelDeployed, _Mapping]] = ..., inference_completed: _Optional[_Union[InferenceCompleted, _Mapping]] = ..., evaluation_completed: _Optional[_Union[EvaluationCompleted, _Mapping]] = ..., data_drift_detected: _Optional[_Union[DataDriftDetected, _Mapping]] = ...) -> None: ...

class TrainingRunStarted(_message.Message):
    __slots__ = ("run_id", "experiment", "model_name", "framework", "dataset", "owner", "gpu_count", "hyperparameters")
    class HyperparametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    experiment: str
    model_name: str
    framework: str
    dataset: str
    owner: str
    gpu_count: int
    hyperparameters: _containers.ScalarMap[str, str]
    def __init__(self, run_id: _Optional[str] = ..., experiment: _Optional[str] = ..., model_name: _Optional[str] = ..., framework: _Optional[str] = ..., dataset: _Optional[str] = ..., owner: _Optional[str] = ..., gpu_count: _Optional[int] = ..., hyperparameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TrainingRunFinished(_message.Message):
    __slots__ = ("run_id", "status", "duration_seconds", "summary_metrics", "error_message")
    class SummaryMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    duration_seconds: float
    summary_metrics: _containers.ScalarMap[str, float]
    error_message: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., duration_seconds: _Optional[float] = ..., summary_metrics: _Optional[_Mapping[str, float]] = ..., error_message: _Optional[str] = ...) -> None: ...

class MetricLogged(_message.Message):
    __slots__ = ("run_id", "key", "value", "step", "epoch")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    value: float
    step: int
    epoch: int
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[float] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ModelVersionRegistered(_message.Message):
    __slots__ = ("model_name", "version", "run_id", "artifact_uri", "size_bytes", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    run_id: str
    artifact_uri: str
    size_bytes: int
    tags: _containers.ScalarMap[str, str]
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., run_id: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., size_bytes: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelDeployed(_message.Message):
    __slots__ = ("model_name", "version", "environment", "endpoint", "replicas", "traffic_percent")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    environment: str
    endpoint: str
    replicas: int
    traffic_percent: float
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., environment: _Optional[str] = ..., endpoint: _Optional[str] = ..., replicas: _Optional[int] = ..., traffic_percent: _Optional[float] = ...) -> None: ...

class InferenceCompleted(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "environment", "latency_ms", "input_tokens", "output_tokens", "status", "error_code")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: str
    environment: str
    latency_ms: float
    input_tokens: int
    output_tokens: int
    status: InferenceStatus
    error_code: str
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., environment: _Optional[str] = ..., latency_ms: _Optional[float] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., status: _Optional[_Union[InferenceStatus, str]] = ..., error_code: _Optional[str] = ...) -> None: ...

class EvaluationCompleted(_message.Message):
    __slots__ = ("evaluation_id", "model_name", "model_version", "dataset", "metrics", "passed")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    model_name: str
    model_version: str
    dataset: str
    metrics: _containers.ScalarMap[str, float]
    passed: bool
    def __init__(self, evaluation_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., dataset: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., passed: _Optional[bool] = ...) -> None: ...

class DataDriftDetected(_message.Message):
    __slots__ = ("model_name", "model_version", "feature", "method", "score", "threshold", "severity")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    feature: str
    method: str
    score: float
    threshold: float
    severity: DriftSeverity
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., feature: _Optional[str] = ..., method: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., severity: _Optional[_Union[DriftSeverity, str]] = ...) -> None: ...
