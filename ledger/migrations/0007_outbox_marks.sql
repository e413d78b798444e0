-- The ledger's high-water mark per outbox stream: the highest stream entry id the ledger writer
-- committed from it (applied or found already there), kept in the same transaction as the
-- records. A writer taking or holding a partition compares it with the stream in Redis: a
-- stream whose consumer group never delivered this id and which does not hold it lost history
-- the ledger has (a replica promoted before it had every write), and the partition is fenced
-- (its epoch marker removed) until `boxoffice restore`. Restore moves each stream's ids up to
-- its mark, so a restored stream passes. One row per partition: a primary-key read is the
-- whole cost of a check.
CREATE TABLE outbox_marks (
    stream     text        PRIMARY KEY,
    last_ms    bigint      NOT NULL CHECK (last_ms >= 0),
    last_n     bigint      NOT NULL CHECK (last_n >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE outbox_marks IS
    'Per outbox stream, the highest entry id (<last_ms>-<last_n>) the ledger writer committed.';
