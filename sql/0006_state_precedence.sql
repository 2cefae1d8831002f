-- State precedence: which event sets a current-state column group when several events
-- of the same key carry the same event time (whole-second clocks; a run that fails as
-- it starts). Neither the order the events arrive in nor their event ids, which are
-- often random UUIDs, may decide what a state row says when the events themselves do.
--
-- training_runs, status group (status, status_at, status_event_id): the greatest event
--   of the run, started or finished, by (event time, status rank, event id), where the
--   rank is running 0 < succeeded 1 < cancelled 2 < failed 3. At one event time a
--   finish therefore wins over a start, and between two finishes the worse outcome
--   wins (a failure is never hidden behind a success reported in the same second).
-- training_runs, finish group (finished_at ... error_message, finish_status): the
--   greatest finish by the same (event time, status rank, event id), so at one time it
--   is the finish whose status the row shows.
-- training_runs, start group (started_at ... hyperparameters): the greatest start by
--   (event time, event id): starts carry no rank.
-- model_deployments: the greatest deployment by (deployed_at, event id): no deployment
--   outranks another, so at one event time the greater event id wins. It is arbitrary
--   but deterministic: the same events give the same row in any order.
--
-- The finish group gets the status its finish reported (finish_status), which decides
-- a tie between two finishes of a run whose status a later start has since taken.
-- Rows stored under the earlier rule, where the event id decided a tie, are repaired.

ALTER TABLE kingest.training_runs
    ADD COLUMN finish_status text
        CONSTRAINT training_runs_finish_status_check
        CHECK (finish_status IN ('succeeded', 'failed', 'cancelled'));

UPDATE kingest.training_runs AS t
SET finish_status = f.status
FROM kingest.training_run_finishes AS f
WHERE f.event_id = t.finish_event_id;

-- The finish of each run that the precedence picks among those at its finished_at.
WITH best AS (
    SELECT DISTINCT ON (f.run_id) f.*
    FROM kingest.training_run_finishes AS f
    JOIN kingest.training_runs AS r ON r.run_id = f.run_id AND r.finished_at = f.occurred_at
    ORDER BY f.run_id,
        CASE f.status WHEN 'succeeded' THEN 1 WHEN 'cancelled' THEN 2 WHEN 'failed' THEN 3
            ELSE 0 END DESC,
        f.event_id DESC
)
UPDATE kingest.training_runs AS t
SET finish_event_id = best.event_id, finish_status = best.status,
    duration_seconds = best.duration_seconds, summary_metrics = best.summary_metrics,
    error_message = best.error_message, updated_at = now()
FROM best
WHERE best.run_id = t.run_id AND best.event_id <> t.finish_event_id;

-- The status of each run whose finish outranks the event that set its status.
UPDATE kingest.training_runs AS t
SET status = t.finish_status, status_at = t.finished_at, status_event_id = t.finish_event_id,
    updated_at = now()
WHERE t.finish_status IS NOT NULL
  AND (t.finished_at,
       CASE t.finish_status WHEN 'succeeded' THEN 1 WHEN 'cancelled' THEN 2
           WHEN 'failed' THEN 3 ELSE 0 END,
       t.finish_event_id)
    > (t.status_at,
       CASE t.status WHEN 'succeeded' THEN 1 WHEN 'cancelled' THEN 2
           WHEN 'failed' THEN 3 ELSE 0 END,
       t.status_event_id);

COMMENT ON TABLE kingest.training_runs IS
    'Current state of each training run, upserted from training_run_starts and '
    'training_run_finishes events. Each column group (status, start, finish) holds the '
    'greatest event of its kind, so the row converges whatever the order the events were '
    'written in: a run whose finish arrived before its start still ends with the finish '
    'status and the start columns filled in. Status and finish groups order events by '
    '(event time, status rank, event id) with running < succeeded < cancelled < failed; '
    'the start group by (event time, event id).';
COMMENT ON COLUMN kingest.training_runs.status IS
    'running, succeeded, failed or cancelled: from the greatest event of the run by '
    '(status_at, status rank, status_event_id), the rank being running 0, succeeded 1, '
    'cancelled 2, failed 3: at one event time a finish wins over a start and the worse '
    'outcome over the better; the event id decides only between equal statuses.';
COMMENT ON COLUMN kingest.training_runs.started_at IS
    'Event time of the latest start event by (started_at, start_event_id) (NULL until '
    'one is stored): at one event time the greater event id wins.';
COMMENT ON COLUMN kingest.training_runs.finished_at IS
    'Event time of the greatest finish event by (finished_at, status rank of '
    'finish_status, finish_event_id) (NULL while none is stored).';
COMMENT ON COLUMN kingest.training_runs.finish_event_id IS
    'The greatest finish event (see finished_at).';
COMMENT ON COLUMN kingest.training_runs.finish_status IS
    'succeeded, failed or cancelled: the status the finish event of the finish group '
    'reported (status shows running instead when a later start superseded it).';

COMMENT ON TABLE kingest.model_deployments IS
    'The current deployment of each model in each environment: the latest ModelDeployed '
    'event by (deployed_at, event_id); an older event written later does not replace it. '
    'No deployment outranks another: at one deployed_at the greater event id wins, an '
    'arbitrary but deterministic choice (the same events give the same row in any order).';
