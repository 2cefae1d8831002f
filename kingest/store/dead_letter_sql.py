"""The statements that store dead letters in ``kingest.dead_letters``.

Dead letters live in kingest's own schema (created by the migrations), whatever schema
a catalog's tables are in. Their parameters: :func:`kingest.store.write.dead_letter_params`.
"""

# The SQL below is assembled from this module's own constants; data travels as parameters.
# ruff: noqa: S608

from __future__ import annotations

__all__ = [
    "IMPORT_DEAD_LETTER",
    "INSERT_DEAD_LETTER",
    "INSERT_UNPUBLISHED_DEAD_LETTER",
    "SCHEMA",
]

#: kingest's own schema: the migrations, the dead letters, the applied catalogs.
SCHEMA = "kingest"

#: Dead letters: one row per rejected Kafka message; redelivery stores nothing new.
_DEAD_LETTER_COLUMNS = """
    kafka_topic, kafka_partition, kafka_offset, message_key, message_value,
    header_keys, header_values, kafka_timestamp, error_stage, error_class, error_message,
    sqlstate, event_id, event_type, correlation_id, consumer_group"""
_DEAD_LETTER_VALUES = """
    %s, %s, %s, %b, %b, %s::text[], %b::bytea[],
    'epoch'::timestamptz + %s::int8 * '1 millisecond'::interval,
    %s, %s, %s, %s, %s, %s, %s, %s"""

INSERT_DEAD_LETTER = f"""
INSERT INTO {SCHEMA}.dead_letters ({_DEAD_LETTER_COLUMNS}
) VALUES ({_DEAD_LETTER_VALUES}
)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING"""

#: A dead letter the dead-letter topic did not take, with why (the parameters of
#: :data:`INSERT_DEAD_LETTER`, then ``publish_error``). A row already stored for it (the
#: table store too, or a redelivery) gets the error.
INSERT_UNPUBLISHED_DEAD_LETTER = f"""
INSERT INTO {SCHEMA}.dead_letters ({_DEAD_LETTER_COLUMNS}, publish_error
) VALUES ({_DEAD_LETTER_VALUES}, %s
)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset)
DO UPDATE SET publish_error = EXCLUDED.publish_error"""

#: A dead letter read back from a dead-letter topic to be replayed (the parameters of
#: :data:`INSERT_DEAD_LETTER`, then its ``attempts`` and ``dead_lettered_at``). A row
#: already stored for it is left as it is: it holds the replay history.
IMPORT_DEAD_LETTER = f"""
INSERT INTO {SCHEMA}.dead_letters ({_DEAD_LETTER_COLUMNS}, attempts, dead_lettered_at
) VALUES ({_DEAD_LETTER_VALUES}, %s, %s
)
ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING"""
