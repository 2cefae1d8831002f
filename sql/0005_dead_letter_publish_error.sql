-- Dead letters the dead-letter topic did not take.
--
-- With KINGEST_DEAD_LETTER_STORE=topic or both, a dead letter the topic cannot take (too
-- large for the producer or the topic, an authorization failure, a deleted topic, a
-- delivery error that outlasts KINGEST_DEAD_LETTER_PUBLISH_TIMEOUT_S) is kept here
-- instead, so that the stream goes on and nothing is lost; publish_error says why it is
-- not on the topic. With the table store as well, the row already written in the batch's
-- transaction gets the error.

ALTER TABLE kingest.dead_letters ADD COLUMN publish_error text;

COMMENT ON COLUMN kingest.dead_letters.publish_error IS
    'Why the dead letter is not on the dead-letter topic: the Kafka error of its last '
    'publication attempt (e.g. MSG_SIZE_TOO_LARGE: ...). NULL when it was published, or '
    'when dead letters go to the table only.';
