-- Catalogs applied to this database: one row per `kingest schema apply` that changed
-- something (tables created, columns added, comments updated) or recorded a new catalog.
--
-- The descriptor set is kept whole, not only its digest: the next apply compares the new
-- catalog with the latest one applied to the same schema (a field number reused, a type
-- changed, a field or table removed), and that needs the old messages, not just the
-- knowledge that they were different. topic_types is the topic -> message mapping the
-- catalog was loaded with, part of what decides which messages are tables.

CREATE TABLE kingest.catalogs (
    id             bigserial PRIMARY KEY,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    schema_name    text NOT NULL,
    digest         text NOT NULL,
    descriptor_set bytea NOT NULL,
    topic_types    jsonb NOT NULL DEFAULT '{}',
    applied_ddl    text NOT NULL
);

COMMENT ON TABLE kingest.catalogs IS
    'Catalogs (compiled Protobuf descriptor sets) applied to this database by '
    '`kingest schema apply`, one row per apply that changed or recorded something; the '
    'latest row of a schema is what the next apply checks compatibility against.';
COMMENT ON COLUMN kingest.catalogs.id IS 'Surrogate key, in apply order.';
COMMENT ON COLUMN kingest.catalogs.applied_at IS 'When the catalog was applied.';
COMMENT ON COLUMN kingest.catalogs.schema_name IS 'The schema the catalog''s tables live in.';
COMMENT ON COLUMN kingest.catalogs.digest IS 'SHA-256 (hex) of descriptor_set.';
COMMENT ON COLUMN kingest.catalogs.descriptor_set IS
    'The catalog as applied: a serialized google.protobuf.FileDescriptorSet.';
COMMENT ON COLUMN kingest.catalogs.topic_types IS
    'Topic -> full message name the catalog was loaded with (a JSON object, {} when the '
    'catalog has an envelope message).';
COMMENT ON COLUMN kingest.catalogs.applied_ddl IS
    'The statements the apply ran, separated by blank lines (empty when the database '
    'already held the catalog and only the record was new).';
