-- Current-state tables, maintained by upserts from the fact tables' events.
--
-- Writes from concurrent writers may finish in any order, so every group of columns
-- carries the event time and event id it came from, and an upsert replaces a group
-- only when the incoming (occurred_at, event_id) is greater than the stored one. The
-- stored state is therefore the maximum over all events seen, whatever the order they
-- arrived in (the event_id breaks ties between events with the same timestamp).

-- training_runs ----------------------------------------------------------------------
CREATE TABLE kingest.training_runs (
    run_id            text PRIMARY KEY,
    -- status group: from the latest event of the run, started or finished
    status            text NOT NULL
        CONSTRAINT training_runs_status_check
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    status_at         timestamptz NOT NULL,
    status_event_id   uuid NOT NULL,
    -- start group: from the latest TrainingRunStarted event of the run
    started_at        timestamptz,
    start_event_id    uuid,
    correlation_id    text,
    experiment        text,
    model_name        text,
    framework         text,
    dataset           text,
    owner             text,
    gpu_count         bigint,
    hyperparameters   jsonb,
    -- finish group: from the latest TrainingRunFinished event of the run
    finished_at       timestamptz,
    finish_event_id   uuid,
    duration_seconds  double precision,
    summary_metrics   jsonb,
    error_message     text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX training_runs_status_idx ON kingest.training_runs (status, status_at);

COMMENT ON TABLE kingest.training_runs IS
    'Current state of each training run, upserted from training_run_starts and '
    'training_run_finishes events. Each column group (status, start, finish) holds the '
    'latest event of its kind by (event time, event id), so the row converges whatever '
    'the order the events were written in: a run whose finish arrived before its start '
    'still ends with the finish status and the start columns filled in.';
COMMENT ON COLUMN kingest.training_runs.run_id IS 'The training run.';
COMMENT ON COLUMN kingest.training_runs.status IS
    'running, succeeded, failed or cancelled: from the latest event of the run by '
    '(status_at, status_event_id).';
COMMENT ON COLUMN kingest.training_runs.status_at IS 'Event time of the event that set status.';
COMMENT ON COLUMN kingest.training_runs.status_event_id IS 'The event that set status.';
COMMENT ON COLUMN kingest.training_runs.started_at IS
    'Event time of the latest start event (NULL until one is stored).';
COMMENT ON COLUMN kingest.training_runs.start_event_id IS 'The latest start event.';
COMMENT ON COLUMN kingest.training_runs.correlation_id IS
    'Correlation id of the latest start event.';
COMMENT ON COLUMN kingest.training_runs.experiment IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.model_name IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.framework IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.dataset IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.owner IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.gpu_count IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.hyperparameters IS 'From the latest start event.';
COMMENT ON COLUMN kingest.training_runs.finished_at IS
    'Event time of the latest finish event (NULL while none is stored).';
COMMENT ON COLUMN kingest.training_runs.finish_event_id IS 'The latest finish event.';
COMMENT ON COLUMN kingest.training_runs.duration_seconds IS 'From the latest finish event.';
COMMENT ON COLUMN kingest.training_runs.summary_metrics IS 'From the latest finish event.';
COMMENT ON COLUMN kingest.training_runs.error_message IS 'From the latest finish event.';
COMMENT ON COLUMN kingest.training_runs.updated_at IS 'When kingest last changed the row.';

-- model_deployments ------------------------------------------------------------------
CREATE TABLE kingest.model_deployments (
    model_name      text NOT NULL,
    environment     text NOT NULL,
    version         text NOT NULL,
    endpoint        text,
    replicas        bigint NOT NULL,
    traffic_percent double precision NOT NULL,
    deployed_at     timestamptz NOT NULL,
    event_id        uuid NOT NULL,
    correlation_id  text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, environment)
);

COMMENT ON TABLE kingest.model_deployments IS
    'The current deployment of each model in each environment: the latest ModelDeployed '
    'event by (deployed_at, event_id); an older event written later does not replace it.';
COMMENT ON COLUMN kingest.model_deployments.model_name IS 'Deployed model.';
COMMENT ON COLUMN kingest.model_deployments.environment IS 'e.g. prod, staging, canary.';
COMMENT ON COLUMN kingest.model_deployments.version IS 'Currently deployed version.';
COMMENT ON COLUMN kingest.model_deployments.endpoint IS 'Serving endpoint.';
COMMENT ON COLUMN kingest.model_deployments.replicas IS 'Number of serving replicas.';
COMMENT ON COLUMN kingest.model_deployments.traffic_percent IS
    'Share of the environment''s traffic routed to this version, 0 to 100.';
COMMENT ON COLUMN kingest.model_deployments.deployed_at IS
    'Event time of the deployment event.';
COMMENT ON COLUMN kingest.model_deployments.event_id IS 'The deployment event.';
COMMENT ON COLUMN kingest.model_deployments.correlation_id IS
    'Correlation id of the deployment event.';
COMMENT ON COLUMN kingest.model_deployments.updated_at IS 'When kingest last changed the row.';
