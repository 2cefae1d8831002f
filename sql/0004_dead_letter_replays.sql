-- Dead-letter replays: what `kingest dlq replay` did with each dead letter.
--
-- A dead letter stays in the table after it is replayed: it is the record of what went
-- wrong, and the replay columns say what was done about it. `kingest dlq replay` skips
-- dead letters whose last replay succeeded (stored, or produced back to the source
-- topic) unless asked to replay them again; one whose replay failed again stays
-- pending, with attempts + 1 and the new error in the error_* columns.

ALTER TABLE kingest.dead_letters
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replay_count int NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_outcome text
        CONSTRAINT dead_letters_last_replay_outcome_check
        CHECK (last_replay_outcome IN ('stored', 'produced', 'failed'));

COMMENT ON COLUMN kingest.dead_letters.replayed_at IS
    'When `kingest dlq replay` last replayed this dead letter; NULL if never.';
COMMENT ON COLUMN kingest.dead_letters.replay_count IS
    'How many times `kingest dlq replay` replayed this dead letter (dry runs excluded).';
COMMENT ON COLUMN kingest.dead_letters.last_replay_outcome IS
    'Outcome of the last replay: stored (written by the replay itself, or already stored), '
    'produced (sent back to its source topic, for the running pipeline to store), or '
    'failed (rejected again; the error_* columns then hold the new error). NULL if never '
    'replayed.';
