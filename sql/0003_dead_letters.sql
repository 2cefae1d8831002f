-- Dead letters: Kafka messages kingest could not store as facts.
--
-- A poison message must never block its partition, so it is recorded here, with
-- everything needed to inspect or replay it, in the same transaction as the batch it
-- came with; the partition's offset then moves past it. The Kafka coordinates are
-- unique, so a redelivered poison message is stored once (ON CONFLICT DO NOTHING).

CREATE TABLE kingest.dead_letters (
    id               bigserial PRIMARY KEY,
    kafka_topic      text NOT NULL,
    kafka_partition  int NOT NULL,
    kafka_offset     bigint NOT NULL,
    message_key      bytea,
    message_value    bytea,
    header_keys      text[] NOT NULL DEFAULT '{}',
    header_values    bytea[] NOT NULL DEFAULT '{}',
    kafka_timestamp  timestamptz,
    error_stage      text NOT NULL
        CONSTRAINT dead_letters_error_stage_check
        CHECK (error_stage IN ('decode', 'validate', 'write')),
    error_class      text NOT NULL,
    error_message    text NOT NULL,
    sqlstate         text,
    event_id         text,
    event_type       text,
    correlation_id   text,
    consumer_group   text,
    attempts         int NOT NULL DEFAULT 1,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_kafka_coordinates_key
        UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX dead_letters_dead_lettered_at_idx ON kingest.dead_letters (dead_lettered_at);
CREATE INDEX dead_letters_error_class_idx ON kingest.dead_letters (error_class);

COMMENT ON TABLE kingest.dead_letters IS
    'Kafka messages that could not be stored as facts (undecodable, invalid, or rejected '
    'by PostgreSQL), with their original key, value and headers and the reason. One row '
    'per Kafka message: a redelivered poison message is not stored again.';
COMMENT ON COLUMN kingest.dead_letters.id IS 'Surrogate key, in dead-lettering order.';
COMMENT ON COLUMN kingest.dead_letters.kafka_topic IS 'Source topic of the message.';
COMMENT ON COLUMN kingest.dead_letters.kafka_partition IS 'Source partition of the message.';
COMMENT ON COLUMN kingest.dead_letters.kafka_offset IS 'Source offset of the message.';
COMMENT ON COLUMN kingest.dead_letters.message_key IS 'Original message key, byte for byte.';
COMMENT ON COLUMN kingest.dead_letters.message_value IS
    'Original message value, byte for byte.';
COMMENT ON COLUMN kingest.dead_letters.header_keys IS
    'Original header keys, in order (header_values holds the value at the same index).';
COMMENT ON COLUMN kingest.dead_letters.header_values IS
    'Original header values, in order (NULL elements for headers without a value).';
COMMENT ON COLUMN kingest.dead_letters.kafka_timestamp IS
    'Kafka message timestamp (create or log-append time; NULL when the broker gave none).';
COMMENT ON COLUMN kingest.dead_letters.error_stage IS
    'Where the message failed: decode (not an Event), validate (an Event that breaks a '
    'rule) or write (PostgreSQL rejected its row).';
COMMENT ON COLUMN kingest.dead_letters.error_class IS
    'Short stable reason code, e.g. invalid_protobuf, missing_field, or a PostgreSQL '
    'error name such as character_not_in_repertoire.';
COMMENT ON COLUMN kingest.dead_letters.error_message IS 'Human-readable reason.';
COMMENT ON COLUMN kingest.dead_letters.sqlstate IS
    'PostgreSQL SQLSTATE for write-stage failures, else NULL.';
COMMENT ON COLUMN kingest.dead_letters.event_id IS
    'The event_id string as sent (it may be invalid), when the value decoded.';
COMMENT ON COLUMN kingest.dead_letters.event_type IS
    'Payload kind, e.g. inference_completed, when the value decoded.';
COMMENT ON COLUMN kingest.dead_letters.correlation_id IS
    'Correlation id from the envelope or the correlation-id header, when known.';
COMMENT ON COLUMN kingest.dead_letters.consumer_group IS
    'Kafka consumer group that dead-lettered the message.';
COMMENT ON COLUMN kingest.dead_letters.attempts IS
    'Deliveries of this message that ended in a dead letter: 1 when written by the '
    'consumer (redeliveries are not stored again); tools that retry dead letters may '
    'increment it.';
COMMENT ON COLUMN kingest.dead_letters.dead_lettered_at IS
    'When kingest stored the dead letter.';
