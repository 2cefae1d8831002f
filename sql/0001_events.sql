-- Append-only fact tables: one row per event, one table per kind of fact.
--
-- Every fact table starts with the same envelope columns. `event_id` is the idempotency
-- key: the producer's UUID, or one kingest derives from the Kafka coordinates when the
-- producer sent none, so a redelivered message never creates a second row
-- (INSERT ... ON CONFLICT (event_id) DO NOTHING).
--
-- Enumerations are stored as short lowercase text guarded by a CHECK constraint rather
-- than as PostgreSQL enum types: a CHECK constraint can be replaced inside the
-- transaction of a later migration (an enum value can be added but never removed or
-- renamed, and a value added in a transaction cannot be used before it commits), and
-- the text is what people type in queries. Unsigned 32-bit Protobuf fields are bigint,
-- because int would overflow above 2^31 - 1. Protobuf maps are jsonb. Optional text
-- fields that the producer left empty are NULL.
--
-- Indexes serve the queries people run (per model over time, per run and step, per
-- correlation id) and nothing more: each one costs insert throughput.

CREATE SCHEMA IF NOT EXISTS kingest;
COMMENT ON SCHEMA kingest IS
    'kingest: AI/ML pipeline events ingested from Kafka (facts, current state, dead letters).';

-- training_run_starts ----------------------------------------------------------------
CREATE TABLE kingest.training_run_starts (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    run_id          text NOT NULL,
    experiment      text,
    model_name      text,
    framework       text,
    dataset         text,
    owner           text,
    gpu_count       bigint NOT NULL,
    hyperparameters jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX training_run_starts_run_id_idx
    ON kingest.training_run_starts (run_id, occurred_at);
CREATE INDEX training_run_starts_correlation_id_idx
    ON kingest.training_run_starts (correlation_id);

-- training_run_finishes --------------------------------------------------------------
CREATE TABLE kingest.training_run_finishes (
    event_id         uuid PRIMARY KEY,
    occurred_at      timestamptz NOT NULL,
    correlation_id   text NOT NULL,
    source           text NOT NULL,
    kafka_topic      text NOT NULL,
    kafka_partition  int NOT NULL,
    kafka_offset     bigint NOT NULL,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    run_id           text NOT NULL,
    status           text NOT NULL
        CONSTRAINT training_run_finishes_status_check
        CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    duration_seconds double precision NOT NULL,
    summary_metrics  jsonb NOT NULL DEFAULT '{}',
    error_message    text
);
CREATE INDEX training_run_finishes_run_id_idx
    ON kingest.training_run_finishes (run_id, occurred_at);
CREATE INDEX training_run_finishes_correlation_id_idx
    ON kingest.training_run_finishes (correlation_id);

-- metrics ----------------------------------------------------------------------------
CREATE TABLE kingest.metrics (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    run_id          text NOT NULL,
    key             text NOT NULL,
    value           double precision NOT NULL,
    step            bigint NOT NULL,
    epoch           bigint NOT NULL
);
CREATE INDEX metrics_run_id_key_step_idx ON kingest.metrics (run_id, key, step);
CREATE INDEX metrics_correlation_id_idx ON kingest.metrics (correlation_id);

-- model_versions ---------------------------------------------------------------------
CREATE TABLE kingest.model_versions (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    model_name      text NOT NULL,
    version         text NOT NULL,
    run_id          text,
    artifact_uri    text,
    size_bytes      bigint NOT NULL,
    tags            jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX model_versions_model_name_occurred_at_idx
    ON kingest.model_versions (model_name, occurred_at);
CREATE INDEX model_versions_correlation_id_idx ON kingest.model_versions (correlation_id);

-- deployments ------------------------------------------------------------------------
CREATE TABLE kingest.deployments (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    model_name      text NOT NULL,
    version         text NOT NULL,
    environment     text NOT NULL,
    endpoint        text,
    replicas        bigint NOT NULL,
    traffic_percent double precision NOT NULL
);
CREATE INDEX deployments_model_name_occurred_at_idx
    ON kingest.deployments (model_name, occurred_at);
CREATE INDEX deployments_correlation_id_idx ON kingest.deployments (correlation_id);

-- inferences -------------------------------------------------------------------------
CREATE TABLE kingest.inferences (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    request_id      text,
    model_name      text NOT NULL,
    model_version   text,
    environment     text,
    latency_ms      double precision NOT NULL,
    input_tokens    bigint NOT NULL,
    output_tokens   bigint NOT NULL,
    status          text NOT NULL
        CONSTRAINT inferences_status_check CHECK (status IN ('ok', 'error', 'timeout')),
    error_code      text
);
CREATE INDEX inferences_model_name_occurred_at_idx
    ON kingest.inferences (model_name, occurred_at);
CREATE INDEX inferences_correlation_id_idx ON kingest.inferences (correlation_id);

-- evaluations ------------------------------------------------------------------------
CREATE TABLE kingest.evaluations (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    evaluation_id   text,
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    dataset         text,
    metrics         jsonb NOT NULL DEFAULT '{}',
    passed          boolean NOT NULL
);
CREATE INDEX evaluations_model_name_occurred_at_idx
    ON kingest.evaluations (model_name, occurred_at);
CREATE INDEX evaluations_correlation_id_idx ON kingest.evaluations (correlation_id);

-- drift_alerts -----------------------------------------------------------------------
CREATE TABLE kingest.drift_alerts (
    event_id        uuid PRIMARY KEY,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    source          text NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    model_name      text NOT NULL,
    model_version   text,
    feature         text,
    method          text,
    score           double precision NOT NULL,
    threshold       double precision NOT NULL,
    severity        text
        CONSTRAINT drift_alerts_severity_check CHECK (severity IN ('low', 'medium', 'high'))
);
CREATE INDEX drift_alerts_model_name_occurred_at_idx
    ON kingest.drift_alerts (model_name, occurred_at);
CREATE INDEX drift_alerts_correlation_id_idx ON kingest.drift_alerts (correlation_id);

-- Documentation: the envelope columns, identical on every fact table -----------------
DO $$
DECLARE
    fact_table text;
BEGIN
    FOREACH fact_table IN ARRAY ARRAY[
        'training_run_starts', 'training_run_finishes', 'metrics', 'model_versions',
        'deployments', 'inferences', 'evaluations', 'drift_alerts'
    ] LOOP
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.event_id IS %L$c$, fact_table,
            'Idempotency key: the producer''s event_id, or a UUIDv5 derived from '
            'kafka_topic/kafka_partition/kafka_offset when the producer sent none. '
            'A redelivered event is never stored twice.');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.occurred_at IS %L$c$, fact_table,
            'When the fact happened at its source (event time, microsecond precision).');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.correlation_id IS %L$c$, fact_table,
            'Ties together the events of one logical operation: the envelope '
            'correlation_id, else the correlation-id Kafka header, else the event_id.');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.source IS %L$c$, fact_table,
            'The emitting system, e.g. trainer/gpu-node-17 (empty when not given).');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.kafka_topic IS %L$c$, fact_table,
            'Kafka topic the event was consumed from.');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.kafka_partition IS %L$c$, fact_table,
            'Kafka partition the event was consumed from.');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.kafka_offset IS %L$c$, fact_table,
            'Kafka offset of the first delivery that stored this row.');
        EXECUTE format($c$COMMENT ON COLUMN kingest.%I.ingested_at IS %L$c$, fact_table,
            'When kingest stored the row (start of the writing transaction).');
    END LOOP;
END
$$;

COMMENT ON TABLE kingest.training_run_starts IS
    'One row per TrainingRunStarted event: a training run began.';
COMMENT ON COLUMN kingest.training_run_starts.run_id IS 'The training run.';
COMMENT ON COLUMN kingest.training_run_starts.experiment IS 'Experiment the run belongs to.';
COMMENT ON COLUMN kingest.training_run_starts.model_name IS 'Model being trained.';
COMMENT ON COLUMN kingest.training_run_starts.framework IS 'e.g. pytorch, jax, xgboost.';
COMMENT ON COLUMN kingest.training_run_starts.dataset IS 'Training dataset.';
COMMENT ON COLUMN kingest.training_run_starts.owner IS
    'Who launched the run (a user or a service account).';
COMMENT ON COLUMN kingest.training_run_starts.gpu_count IS 'GPUs allocated to the run.';
COMMENT ON COLUMN kingest.training_run_starts.hyperparameters IS
    'Hyperparameters as a JSON object of strings ({} when none).';

COMMENT ON TABLE kingest.training_run_finishes IS
    'One row per TrainingRunFinished event: a training run ended, with its summary metrics.';
COMMENT ON COLUMN kingest.training_run_finishes.run_id IS 'The training run.';
COMMENT ON COLUMN kingest.training_run_finishes.status IS 'succeeded, failed or cancelled.';
COMMENT ON COLUMN kingest.training_run_finishes.duration_seconds IS
    'Wall-clock duration of the run in seconds.';
COMMENT ON COLUMN kingest.training_run_finishes.summary_metrics IS
    'Final metrics as a JSON object of numbers ({} when none).';
COMMENT ON COLUMN kingest.training_run_finishes.error_message IS
    'Why the run failed (NULL when not given).';

COMMENT ON TABLE kingest.metrics IS
    'One row per MetricLogged event: a scalar metric logged by a run at a step.';
COMMENT ON COLUMN kingest.metrics.run_id IS 'The training run that logged the metric.';
COMMENT ON COLUMN kingest.metrics.key IS 'Metric name, e.g. loss, accuracy, learning_rate.';
COMMENT ON COLUMN kingest.metrics.value IS 'Metric value.';
COMMENT ON COLUMN kingest.metrics.step IS 'Training step the value belongs to.';
COMMENT ON COLUMN kingest.metrics.epoch IS 'Training epoch the value belongs to.';

COMMENT ON TABLE kingest.model_versions IS
    'One row per ModelVersionRegistered event: a model version entered the registry.';
COMMENT ON COLUMN kingest.model_versions.model_name IS 'Registered model.';
COMMENT ON COLUMN kingest.model_versions.version IS 'Version of the model.';
COMMENT ON COLUMN kingest.model_versions.run_id IS
    'Training run that produced the version (NULL when unknown).';
COMMENT ON COLUMN kingest.model_versions.artifact_uri IS 'Where the model artifact is stored.';
COMMENT ON COLUMN kingest.model_versions.size_bytes IS 'Artifact size in bytes.';
COMMENT ON COLUMN kingest.model_versions.tags IS 'Registry tags as a JSON object of strings.';

COMMENT ON TABLE kingest.deployments IS
    'One row per ModelDeployed event: a model version was rolled out to an environment. '
    'kingest.model_deployments holds the current deployment of each model and environment.';
COMMENT ON COLUMN kingest.deployments.model_name IS 'Deployed model.';
COMMENT ON COLUMN kingest.deployments.version IS 'Deployed version.';
COMMENT ON COLUMN kingest.deployments.environment IS 'e.g. prod, staging, canary.';
COMMENT ON COLUMN kingest.deployments.endpoint IS 'Serving endpoint (NULL when not given).';
COMMENT ON COLUMN kingest.deployments.replicas IS 'Number of serving replicas.';
COMMENT ON COLUMN kingest.deployments.traffic_percent IS
    'Share of the environment''s traffic routed to this version, 0 to 100.';

COMMENT ON TABLE kingest.inferences IS
    'One row per InferenceCompleted event: one inference request was served.';
COMMENT ON COLUMN kingest.inferences.request_id IS 'The inference request.';
COMMENT ON COLUMN kingest.inferences.model_name IS 'Model that served the request.';
COMMENT ON COLUMN kingest.inferences.model_version IS 'Version that served the request.';
COMMENT ON COLUMN kingest.inferences.environment IS 'Environment that served the request.';
COMMENT ON COLUMN kingest.inferences.latency_ms IS 'Serving latency in milliseconds.';
COMMENT ON COLUMN kingest.inferences.input_tokens IS 'Input tokens (0 for non-LLM models).';
COMMENT ON COLUMN kingest.inferences.output_tokens IS 'Output tokens (0 for non-LLM models).';
COMMENT ON COLUMN kingest.inferences.status IS 'ok, error or timeout.';
COMMENT ON COLUMN kingest.inferences.error_code IS 'Error code when status is not ok.';

COMMENT ON TABLE kingest.evaluations IS
    'One row per EvaluationCompleted event: a model version was evaluated on a dataset.';
COMMENT ON COLUMN kingest.evaluations.evaluation_id IS 'The evaluation.';
COMMENT ON COLUMN kingest.evaluations.model_name IS 'Evaluated model.';
COMMENT ON COLUMN kingest.evaluations.model_version IS 'Evaluated version.';
COMMENT ON COLUMN kingest.evaluations.dataset IS 'Evaluation dataset.';
COMMENT ON COLUMN kingest.evaluations.metrics IS 'Evaluation metrics as a JSON object of numbers.';
COMMENT ON COLUMN kingest.evaluations.passed IS 'Whether the version passed the evaluation.';

COMMENT ON TABLE kingest.drift_alerts IS
    'One row per DataDriftDetected event: a monitor found a model''s input distribution '
    'drifting.';
COMMENT ON COLUMN kingest.drift_alerts.model_name IS 'Monitored model.';
COMMENT ON COLUMN kingest.drift_alerts.model_version IS 'Monitored version.';
COMMENT ON COLUMN kingest.drift_alerts.feature IS 'Input feature that drifted.';
COMMENT ON COLUMN kingest.drift_alerts.method IS 'Drift statistic, e.g. psi, ks, wasserstein.';
COMMENT ON COLUMN kingest.drift_alerts.score IS 'Value of the drift statistic.';
COMMENT ON COLUMN kingest.drift_alerts.threshold IS 'Alerting threshold of the monitor.';
COMMENT ON COLUMN kingest.drift_alerts.severity IS
    'low, medium or high (NULL when the monitor did not say).';
